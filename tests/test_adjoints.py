"""QR/LQ adjoints (randla.adjoints) on every backend.

References: torch autograd of ``torch.linalg.qr`` (double precision, on the host) and
central finite differences; the two formulas of seed 001 (eq. 3.3 and eq. 3.8) must
agree to rounding; reverse and forward mode must be transposes of each other.
"""

from __future__ import annotations

import numpy as np
import pytest

from randla import _backend as B
from randla.adjoints import LQTangents, QRTangents, lq_jvp, lq_vjp, qr_jvp, qr_vjp

SHAPES = [(6, 4), (5, 5), (4, 7)]  # tall, square, wide
DTYPES = [np.float32, np.float64, np.complex64, np.complex128]
METHODS = ["3.3", "3.8"]


def _rand(rng, shape, dtype):
    x = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        x = x + 1j * rng.standard_normal(shape)
    return x.astype(dtype)


def _rtol(dtype):
    return 2e-4 if dtype in (np.float32, np.complex64) else 1e-10


def _qr(A):
    Q, R = np.linalg.qr(A)
    return Q, R


def _lq(A):
    Qt, Rt = np.linalg.qr(np.conj(np.swapaxes(A, -1, -2)))
    return np.conj(np.swapaxes(Rt, -1, -2)), np.conj(np.swapaxes(Qt, -1, -2))


def _close(got, want, dtype):
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=0, atol=_rtol(dtype) * scale * 10)


def _torch_reference_vjp(A, dF1, dF2, *, lq=False):
    """Cotangent of A by torch autograd through torch.linalg.qr, in double precision."""
    torch = pytest.importorskip("torch")
    wide = np.complex128 if np.iscomplexobj(A) else np.float64
    t = torch.tensor(A.astype(wide), requires_grad=True)
    if lq:
        Qh, Rh = torch.linalg.qr(t.mH)
        outs = (Rh.mH, Qh.mH)
    else:
        outs = tuple(torch.linalg.qr(t))
    (g,) = torch.autograd.grad(outs, (t,), (torch.tensor(dF1.astype(wide)), torch.tensor(dF2.astype(wide))))
    return g.resolve_conj().numpy()


def _torch_reference_jvp(A, dA, *, lq=False):
    torch = pytest.importorskip("torch")
    wide = np.complex128 if np.iscomplexobj(A) else np.float64

    def f(a):
        if lq:
            Qh, Rh = torch.linalg.qr(a.mH)
            return Rh.mH, Qh.mH
        return tuple(torch.linalg.qr(a))

    _, tangents = torch.func.jvp(f, (torch.tensor(A.astype(wide)),), (torch.tensor(dA.astype(wide)),))
    return tuple(t.resolve_conj().numpy() for t in tangents)


SLOW = ("jax", "dask")  # compile or graph-build per call: one real and one complex dtype suffice


def _skip_slow(backend, dtype):
    if backend.name in SLOW and dtype in (np.float64, np.complex64):
        pytest.skip(f"{backend.name}: float32 and complex128 cover both code paths")


def _call(backend, f, *args, **kwargs):
    """``f(*args, **kwargs)``; on JAX under ``jax.jit`` (the kernels must trace, and one
    compilation is much cheaper than compiling every eager operation)."""
    if backend.name == "jax":
        import jax

        return jax.jit(lambda *a: f(*a, **kwargs))(*args)
    return f(*args, **kwargs)


def _check_out(backend, out, like, dtype):
    assert B.backend_name(B.namespace(out)) == B.backend_name(backend.xp)
    assert out.dtype == like.dtype
    assert B.device(out) == B.device(like)
    return backend.to_numpy(out)


# ----------------------------------------------------------------------------------
# against torch autograd, every backend
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_qr_vjp_matches_torch_autograd(backend, shape, dtype, method):
    _skip_slow(backend, dtype)
    rng = np.random.default_rng(0)
    A = _rand(rng, shape, dtype)
    Q, R = _qr(A)
    dQ, dR = _rand(rng, Q.shape, dtype), _rand(rng, R.shape, dtype)
    want = _torch_reference_vjp(A, dQ, np.triu(dR))
    Qb, Rb = backend.asarray(Q), backend.asarray(R)
    got = _call(backend, qr_vjp, Qb, Rb, backend.asarray(dQ), backend.asarray(dR), method=method)
    assert tuple(got.shape) == shape
    _close(_check_out(backend, got, Qb, dtype), want, dtype)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
def test_lq_vjp_matches_torch_autograd(backend, shape, dtype, method):
    rng = np.random.default_rng(1)
    A = _rand(rng, shape, dtype)
    L, Q = _lq(A)
    dL, dQ = _rand(rng, L.shape, dtype), _rand(rng, Q.shape, dtype)
    want = _torch_reference_vjp(A, np.tril(dL), dQ, lq=True)
    Lb = backend.asarray(L)
    got = _call(backend, lq_vjp, Lb, backend.asarray(Q), backend.asarray(dL), backend.asarray(dQ), method=method)
    _close(_check_out(backend, got, Lb, dtype), want, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
def test_qr_and_lq_jvp_match_torch_forward_ad(backend, shape, dtype):
    _skip_slow(backend, dtype)
    rng = np.random.default_rng(2)
    A, dA = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
    Q, R = _qr(A)
    tQ, tR = _torch_reference_jvp(A, dA)
    Qb = backend.asarray(Q)
    got = _call(backend, qr_jvp, Qb, backend.asarray(R), backend.asarray(dA))
    assert isinstance(got, QRTangents)
    _close(_check_out(backend, got.dQ, Qb, dtype), tQ, dtype)
    _close(_check_out(backend, got.dR, Qb, dtype), tR, dtype)

    L, Q = _lq(A)
    tL, tQ = _torch_reference_jvp(A, dA, lq=True)
    Lb = backend.asarray(L)
    got = _call(backend, lq_jvp, Lb, backend.asarray(Q), backend.asarray(dA))
    assert isinstance(got, LQTangents)
    _close(_check_out(backend, got.dL, Lb, dtype), tL, dtype)
    _close(_check_out(backend, got.dQ, Lb, dtype), tQ, dtype)


@pytest.mark.parametrize("shape", [(2, 6, 4), (3, 5, 5), (2, 2, 4, 7)])
@pytest.mark.skip_backend("dask", reason="Dask's linalg.solve and matmul here are 2-D only")
def test_batched_equals_loop(backend, shape):
    rng = np.random.default_rng(3)
    A = _rand(rng, shape, np.complex128)
    Q, R = _qr(A)
    dQ, dR = _rand(rng, Q.shape, np.complex128), _rand(rng, R.shape, np.complex128)
    dA = _rand(rng, shape, np.complex128)
    got = backend.to_numpy(_call(backend, qr_vjp, *(backend.asarray(x) for x in (Q, R, dQ, dR))))
    tQ, tR = _call(backend, qr_jvp, *(backend.asarray(x) for x in (Q, R, dA)))
    L, Ql = _lq(A)
    dL, dQl = _rand(rng, L.shape, np.complex128), _rand(rng, Ql.shape, np.complex128)
    got_lq = backend.to_numpy(_call(backend, lq_vjp, *(backend.asarray(x) for x in (L, Ql, dL, dQl))))
    for idx in np.ndindex(*shape[:-2]):
        np.testing.assert_allclose(got[idx], qr_vjp(Q[idx], R[idx], dQ[idx], dR[idx]), atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(tQ)[idx], qr_jvp(Q[idx], R[idx], dA[idx]).dQ, atol=1e-12)
        np.testing.assert_allclose(backend.to_numpy(tR)[idx], qr_jvp(Q[idx], R[idx], dA[idx]).dR, atol=1e-12)
        want_lq = lq_vjp(L[idx], Ql[idx], dL[idx], dQl[idx])
        np.testing.assert_allclose(got_lq[idx], want_lq, atol=1e-12)


# ----------------------------------------------------------------------------------
# mathematics on NumPy: finite differences, 3.3 == 3.8, transposition, structure
# ----------------------------------------------------------------------------------


def _gauge_invariant_loss(rng, shape, dtype, *, lq=False):
    """A real loss of the factors invariant under Q -> Q D, R -> D^H R (D diagonal unitary).

    Returns ``(loss(F1, F2), cotangents(F1, F2))`` with F = (Q, R) or (L, Q).
    """
    m, n = shape
    k = min(m, n)
    W1 = _rand(rng, shape, dtype)
    w = rng.standard_normal(k)
    W2 = rng.standard_normal((m, k) if lq else (k, n))
    W3 = _rand(rng, (n, n) if lq else (m, m), dtype)

    def loss(F1, F2):
        if lq:
            L, Q = F1, F2
            return float(np.real(np.sum(np.conj(W1) * ((L * w) @ Q))) + np.sum(W2 * np.abs(L) ** 2)
                         + np.real(np.sum(np.conj(W3) * (Q.conj().T @ Q))))
        Q, R = F1, F2
        return float(np.real(np.sum(np.conj(W1) * ((Q * w) @ R))) + np.sum(W2 * np.abs(R) ** 2)
                     + np.real(np.sum(np.conj(W3) * (Q @ Q.conj().T))))

    def cotangents(F1, F2):
        # d/dconj convention: for Re sum(conj(W) * f(X)) the cotangent of X is the chain rule
        if lq:
            L, Q = F1, F2
            dL = (W1 @ Q.conj().T) * w + 2 * W2 * L
            dQ = (L * w).conj().T @ W1 + Q @ (W3 + W3.conj().T)
            return dL.astype(dtype), dQ.astype(dtype)
        Q, R = F1, F2
        dQ = (W1 @ R.conj().T) * w + (W3 + W3.conj().T) @ Q
        dR = (Q * w).conj().T @ W1 + 2 * W2 * R
        return dQ.astype(dtype), dR.astype(dtype)

    return loss, cotangents


@pytest.mark.parametrize("lq", [False, True], ids=["qr", "lq"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
def test_vjp_matches_finite_differences(shape, dtype, method, lq):
    rng = np.random.default_rng(4)
    A = _rand(rng, shape, dtype)
    E = _rand(rng, shape, dtype)
    factor = _lq if lq else _qr
    loss, cotangents = _gauge_invariant_loss(rng, shape, dtype, lq=lq)
    F1, F2 = factor(A)
    vjp = lq_vjp if lq else qr_vjp
    G = vjp(F1, F2, *cotangents(F1, F2), method=method)
    h = 1e-6
    fd = (loss(*factor(A + h * E)) - loss(*factor(A - h * E))) / (2 * h)
    assert abs(np.real(np.vdot(G, E)) - fd) <= 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("lq", [False, True], ids=["qr", "lq"])
@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
def test_jvp_matches_finite_differences(shape, dtype, lq):
    rng = np.random.default_rng(5)
    A, E = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
    factor = _lq if lq else _qr
    h = 1e-6
    plus, minus = factor(A + h * E), factor(A - h * E)
    got = (lq_jvp if lq else qr_jvp)(*factor(A), E)
    for t, p, q in zip(got, plus, minus, strict=True):
        np.testing.assert_allclose(t, (p - q) / (2 * h), atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", [(30, 20), (20, 20), (20, 21), (20, 36)])
def test_eq33_and_eq38_agree_to_rounding(shape, dtype):
    rng = np.random.default_rng(6)
    Q, R = _qr(_rand(rng, shape, dtype))
    dQ, dR = _rand(rng, Q.shape, dtype), _rand(rng, R.shape, dtype)
    for args in ((dQ, dR), (None, dR), (dQ, None)):
        a = qr_vjp(Q, R, *args, method="3.3")
        b = qr_vjp(Q, R, *args, method="3.8")
        assert np.linalg.norm(a - b) <= 1e-13 * np.linalg.norm(a) * np.linalg.cond(R[:, : min(shape)])


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("shape", SHAPES)
def test_vjp_is_transpose_of_jvp(shape, dtype):
    """Re<dA_bar, dA> = Re<dQ_bar, dQ> + Re<dR_bar, dR> for QR and LQ."""
    rng = np.random.default_rng(7)
    A, dA = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
    for factor, vjp, jvp, lower in ((_qr, qr_vjp, qr_jvp, False), (_lq, lq_vjp, lq_jvp, True)):
        F1, F2 = factor(A)
        c1, c2 = _rand(rng, F1.shape, dtype), _rand(rng, F2.shape, dtype)
        c1, c2 = (np.tril(c1), c2) if lower else (c1, np.triu(c2))
        t1, t2 = jvp(F1, F2, dA)
        lhs = np.real(np.vdot(vjp(F1, F2, c1, c2), dA))
        rhs = np.real(np.vdot(c1, t1) + np.vdot(c2, t2))
        assert lhs == pytest.approx(rhs, rel=1e-11, abs=1e-11)


@pytest.mark.parametrize("shape", SHAPES)
def test_none_cotangents_and_ignored_triangle(shape):
    rng = np.random.default_rng(8)
    dtype = np.complex128
    Q, R = _qr(_rand(rng, shape, dtype))
    dQ, dR = _rand(rng, Q.shape, dtype), _rand(rng, R.shape, dtype)
    both = qr_vjp(Q, R, dQ, dR)
    np.testing.assert_allclose(qr_vjp(Q, R, dQ, None) + qr_vjp(Q, R, None, dR), both, atol=1e-12)
    np.testing.assert_allclose(qr_vjp(Q, R, np.zeros_like(dQ), dR), qr_vjp(Q, R, None, dR), atol=1e-14)
    zero = qr_vjp(Q, R, None, None)
    assert zero.shape == shape and zero.dtype == dtype and not np.any(zero)
    # entries of dR below the diagonal do not matter: R is structurally zero there
    junk = np.tril(_rand(rng, R.shape, dtype), -1)
    np.testing.assert_allclose(qr_vjp(Q, R, dQ, dR + junk), both, atol=1e-12)
    L, Ql = _lq(_rand(rng, shape, dtype))
    dL = _rand(rng, L.shape, dtype)
    np.testing.assert_allclose(lq_vjp(L, Ql, dL + np.triu(_rand(rng, L.shape, dtype), 1), None),
                               lq_vjp(L, Ql, dL, None), atol=1e-12)
    assert not np.any(lq_vjp(L, Ql, None, None))


def test_jvp_structure_and_scaling():
    rng = np.random.default_rng(9)
    for shape in SHAPES:
        A = _rand(rng, shape, np.complex128)
        Q, R = _qr(A)
        dQ, dR = qr_jvp(Q, R, _rand(rng, shape, np.complex128))
        assert np.allclose(np.tril(dR, -1), 0)
        assert np.allclose(np.imag(np.diagonal(dR)), 0)  # the real diagonal of R stays real
        C = Q.conj().T @ dQ
        if shape[0] <= shape[1]:  # Q square: Q^H dQ is skew-Hermitian
            assert np.allclose(C + C.conj().T, 0)
        dQ, dR = qr_jvp(Q, R, 3 * A)
        assert np.allclose(dQ, 0) and np.allclose(dR, 3 * R)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(10)
    A = _rand(rng, (5, 7), np.complex128)
    Q, R = _qr(A)
    dQ, dR = _rand(rng, Q.shape, np.complex128), _rand(rng, R.shape, np.complex128)
    copies = [x.copy() for x in (Q, R, dQ, dR, A)]
    for method in METHODS:
        qr_vjp(Q, R, dQ, dR, method=method)
    qr_jvp(Q, R, A)
    lq_vjp(R.conj().T, Q.conj().T, dR.conj().T, dQ.conj().T)
    for x, c in zip((Q, R, dQ, dR, A), copies, strict=True):
        np.testing.assert_array_equal(x, c)


# ----------------------------------------------------------------------------------
# rank deficiency
# ----------------------------------------------------------------------------------


def _singular_tall():
    A = np.arange(1.0, 13.0).reshape(4, 3)
    A[:, 0] = 0.0  # first column zero: R[0, 0] == 0 exactly
    return _qr(A)


def test_singular_R_raises_by_default():
    Q, R = _singular_tall()
    assert R[0, 0] == 0
    with pytest.raises(ValueError, match="R has a zero on its diagonal"):
        qr_vjp(Q, R, None, np.ones_like(R))
    L, Ql = R.T, Q.T
    with pytest.raises(ValueError, match="L has a zero on its diagonal"):
        lq_vjp(L, Ql, np.ones_like(L), None)


def test_singular_R_unchecked_is_never_silently_finite():
    Q, R = _singular_tall()
    import scipy.linalg

    with pytest.raises(scipy.linalg.LinAlgError):
        qr_vjp(Q, R, None, np.ones_like(R), check_singular=False)
    torch = pytest.importorskip("torch")
    dA = qr_vjp(torch.asarray(Q), torch.asarray(R), None, torch.ones(R.shape, dtype=torch.float64),
                check_singular=False)
    assert not bool(torch.isfinite(dA).all())


def test_lazy_arrays_are_not_checked():
    da = pytest.importorskip("dask.array")
    Q, R = _singular_tall()
    out = qr_vjp(da.from_array(Q), da.from_array(R), None, da.from_array(np.eye(3)))
    assert isinstance(out, da.Array)  # nothing computed yet
    Qs, Rs = np.linalg.qr(np.random.default_rng(0).standard_normal((2, 5, 3)))
    with pytest.raises(ValueError, match="Q has batch dimensions"):  # was an error from inside Dask's LU
        qr_vjp(da.from_array(Qs), da.from_array(Rs), None, da.from_array(Rs))


# ----------------------------------------------------------------------------------
# argument errors
# ----------------------------------------------------------------------------------


def test_errors_name_the_argument():
    rng = np.random.default_rng(11)
    Q, R = _qr(rng.standard_normal((6, 4)))
    dQ, dR = rng.standard_normal(Q.shape), rng.standard_normal(R.shape)
    with pytest.raises(ValueError, match="dQ must have the shape of Q"):
        qr_vjp(Q, R, dQ[:, :3], dR)
    with pytest.raises(ValueError, match="dR must have the shape of R"):
        qr_vjp(Q, R, dQ, dR.T[:3])
    with pytest.raises(TypeError, match="dR must have the dtype of R"):
        qr_vjp(Q, R, dQ, dR.astype(np.float32))
    with pytest.raises(TypeError, match="dQ must have the dtype of Q"):
        qr_vjp(Q, R, dQ.astype(np.complex128), dR)
    with pytest.raises(TypeError, match="dQ has dtype"):
        qr_vjp(Q, R, dQ.astype(np.int64), dR)
    with pytest.raises(TypeError, match="Q and R must have one dtype"):
        qr_vjp(Q.astype(np.float32), R, None, None)
    with pytest.raises(TypeError, match="R has dtype"):
        qr_vjp(Q, R.astype(np.int32), None, None)
    with pytest.raises(ValueError, match="reduced factors"):
        qr_vjp(Q, R[:3], None, None)
    with pytest.raises(ValueError, match="reduced factors"):
        qr_vjp(np.eye(6), np.eye(6, 4), None, None)  # full, not reduced, QR
    with pytest.raises(ValueError, match="at least 2-D"):
        qr_vjp(Q[:, 0], R, None, None)
    with pytest.raises(ValueError, match="batch dimensions"):
        qr_vjp(np.stack([Q, Q]), R, None, None)
    with pytest.raises(ValueError, match="method must be one of"):
        qr_vjp(Q, R, dQ, dR, method="3.5")
    with pytest.raises(TypeError, match="check_singular must be True or False"):
        qr_vjp(Q, R, dQ, dR, check_singular=1)
    with pytest.raises(TypeError, match="must be arrays of one array-API library"):
        qr_vjp(Q.tolist(), R, dQ, dR)
    with pytest.raises(ValueError, match="dA must have the shape of A"):
        qr_jvp(Q, R, dQ[:, :3])
    with pytest.raises(TypeError, match="dA must have the dtype of Q"):
        qr_jvp(Q, R, dQ.astype(np.float32))
    with pytest.raises(TypeError, match="dA must be an array"):
        qr_jvp(Q, R, None)
    L, Ql = R.T, Q.T
    with pytest.raises(ValueError, match="dL must have the shape of L"):
        lq_vjp(L, Ql, dQ, None)
    with pytest.raises(ValueError, match="dA must have the shape of A = L @ Q"):
        lq_jvp(L, Ql, dQ)


def test_mixed_libraries_are_rejected():
    torch = pytest.importorskip("torch")
    Q, R = _qr(np.random.default_rng(12).standard_normal((6, 4)))
    with pytest.raises(TypeError, match="one array-API library"):
        qr_vjp(Q, torch.asarray(R), None, None)
