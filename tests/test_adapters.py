"""Differentiable QR/LQ adapters: randla.torch.qr/lq and randla.jax.qr/lq.

Against torch's and JAX's own QR derivatives, finite differences
(``torch.autograd.gradcheck``/``gradgradcheck``, ``jax.test_util.check_grads``) with
gauge-invariant losses for complex input.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

SHAPES = [(6, 4), (5, 5), (4, 7)]


def _rand(rng, shape, complex_):
    x = rng.standard_normal(shape)
    return x + 1j * rng.standard_normal(shape) if complex_ else x


def test_import_randla_imports_neither_torch_nor_jax():
    code = ("import sys, randla, randla.adjoints; "
            "assert 'torch' not in sys.modules and 'jax' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------


def _torch_loss(torch, shape, dtype, *, lq, seed=0):
    """A real loss invariant under Q -> Q D, R -> D^H R (resp. L -> L D^H, Q -> D Q)."""
    import randla.torch as rt

    g = torch.Generator().manual_seed(seed)
    m, n = shape
    k = min(m, n)
    W1 = torch.randn(shape, dtype=dtype, generator=g)
    w = torch.randn(k, dtype=torch.float64, generator=g).to(dtype)
    W2 = torch.randn((m, k) if lq else (k, n), dtype=torch.float64, generator=g)
    W3 = torch.randn((n, n) if lq else (m, m), dtype=dtype, generator=g)

    def loss(A):
        if lq:
            L, Q = rt.lq(A)
            return ((W1.conj() * ((L * w) @ Q)).real.sum() + (W2 * L.abs() ** 2).sum()
                    + (W3.conj() * (Q.mH @ Q)).real.sum())
        Q, R = rt.qr(A)
        return ((W1.conj() * ((Q * w) @ R)).real.sum() + (W2 * R.abs() ** 2).sum()
                + (W3.conj() * (Q @ Q.mH)).real.sum())

    return loss


@pytest.mark.parametrize("lq", [False, True], ids=["qr", "lq"])
@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_gradcheck_and_gradgradcheck(shape, complex_, lq):
    torch = pytest.importorskip("torch")
    dtype = torch.complex128 if complex_ else torch.float64
    A = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = _torch_loss(torch, shape, dtype, lq=lq)
    assert torch.autograd.gradcheck(loss, (A,), check_forward_ad=True)
    assert torch.autograd.gradgradcheck(loss, (A,))


@pytest.mark.parametrize("method", ["3.3", "3.8"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64", "complex128"])
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 5)])
def test_torch_qr_matches_native_autograd(shape, dtype, method):
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(2)
    A = torch.randn(shape, dtype=dt, generator=g, requires_grad=True)
    Q, R = rt.qr(A, method=method)
    Qn, Rn = torch.linalg.qr(A)
    assert torch.equal(Q, Qn) and torch.equal(R, Rn)
    gQ, gR = torch.randn(Q.shape, dtype=dt, generator=g), torch.randn(R.shape, dtype=dt, generator=g)
    (mine,) = torch.autograd.grad((Q, R), (A,), (gQ, gR), retain_graph=True)
    (native,) = torch.autograd.grad((Qn, Rn), (A,), (gQ, gR), retain_graph=True)
    assert mine.dtype == A.dtype and mine.device == A.device
    tol = 1e-4 if dtype in ("float32", "complex64") else 1e-11
    torch.testing.assert_close(mine, native, rtol=tol, atol=tol * float(native.abs().max()))
    # only one output used: the other cotangent arrives as None
    (only_r,) = torch.autograd.grad(R.real.sum() if R.is_complex() else R.sum(), (A,))
    (only_rn,) = torch.autograd.grad(Rn.real.sum() if Rn.is_complex() else Rn.sum(), (A,))
    torch.testing.assert_close(only_r, only_rn, rtol=tol, atol=tol * float(only_rn.abs().max()))


@pytest.mark.parametrize("shape", SHAPES)
def test_torch_lq_factors_and_forward_mode(shape):
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    A = torch.randn(shape, dtype=torch.complex128, generator=torch.Generator().manual_seed(3))
    L, Q = rt.lq(A)
    k = min(shape)
    assert L.shape == (shape[0], k) and Q.shape == (k, shape[1])
    torch.testing.assert_close(L @ Q, A)
    torch.testing.assert_close(Q @ Q.mH, torch.eye(k, dtype=A.dtype))
    assert torch.all(torch.triu(L, 1) == 0) and torch.all(L.diagonal().imag == 0)
    assert not L.is_conj() and not Q.is_conj()
    # forward mode: jvp of LQ equals that of the QR of A^H, conjugate-transposed
    dA = torch.randn(shape, dtype=A.dtype, generator=torch.Generator().manual_seed(4))
    _, (dL, dQ) = torch.func.jvp(lambda a: tuple(rt.lq(a)), (A,), (dA,))
    _, (dQh, dRh) = torch.func.jvp(lambda a: tuple(torch.linalg.qr(a)), (A.mH,), (dA.mH,))
    torch.testing.assert_close(dL, dRh.mH)
    torch.testing.assert_close(dQ, dQh.mH)


def test_torch_vmap_and_batches():
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    A = torch.randn((3, 5, 4), dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(a):
        return rt.qr(a).R.diagonal().abs().log().sum()

    batched = torch.func.vmap(torch.func.grad(f))(A)
    looped = torch.stack([torch.func.grad(f)(a) for a in A])
    torch.testing.assert_close(batched, looped)
    # log|det R| = log|det A| for square A: gradient A^{-T}
    S = A[:, :4, :]
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(f))(S), torch.linalg.inv(S).mT)


def test_torch_lq_vmap_batched_gradients_and_complex_vmap():
    """vmap of lq (an in-place copy into an unbatched tensor failed), batched cotangents
    through wide QR and tall LQ (torch.concat has no batching rule), and vmap of a
    complex gradient without a batching-rule warning (conj_physical)."""
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    gen = torch.Generator().manual_seed(3)
    A = torch.randn((2, 3, 4), dtype=torch.float64, generator=gen)
    torch.testing.assert_close(torch.func.vmap(lambda a: rt.lq(a).L)(A), torch.stack([rt.lq(a).L for a in A]))
    for shape, f in (((3, 4), lambda a: rt.qr(a).R), ((4, 3), lambda a: rt.lq(a).L)):
        for dtype in (torch.float64, torch.complex128):
            X = torch.randn(shape, dtype=dtype, generator=gen, requires_grad=True)
            assert torch.autograd.gradcheck(f, (X,), check_batched_grad=True)
    Ac = torch.randn((2, 3, 3), dtype=torch.complex128, generator=gen)
    ours = torch.func.vmap(torch.func.grad(lambda a: rt.qr(a).R.real.sum()))(Ac)
    native = torch.func.vmap(torch.func.grad(lambda a: torch.linalg.qr(a).R.real.sum()))(Ac)
    torch.testing.assert_close(ours, native)


def test_torch_singular_gives_nonfinite_gradient():
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    A = torch.arange(1.0, 13.0, dtype=torch.float64).reshape(4, 3)
    A[:, 0] = 0
    A.requires_grad_(True)
    rt.qr(A).R.sum().backward()
    assert not bool(torch.isfinite(A.grad).all())


def test_torch_errors():
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    with pytest.raises(TypeError, match="A must be a torch.Tensor"):
        rt.qr(np.eye(3))
    with pytest.raises(ValueError, match="A must be at least 2-D"):
        rt.lq(torch.ones(3))
    with pytest.raises(TypeError, match="A has dtype"):
        rt.qr(torch.ones((3, 3), dtype=torch.int64))
    with pytest.raises(ValueError, match="A must not be empty"):
        rt.qr(torch.ones((0, 3)))
    with pytest.raises(ValueError, match="method must be"):
        rt.qr(torch.ones((3, 3)), method="walther")


# ----------------------------------------------------------------------------------
# JAX
# ----------------------------------------------------------------------------------


@pytest.fixture
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    return jax


def _jax_loss(jnp, rng, shape, complex_, factor, *, lq, gauge_free=True):
    m, n = shape
    k = min(m, n)
    W1 = jnp.asarray(_rand(rng, shape, complex_))
    w = jnp.asarray(rng.standard_normal(k))
    W2 = jnp.asarray(rng.standard_normal((m, k) if lq else (k, n)))
    W3 = jnp.asarray(_rand(rng, (n, n) if lq else (m, m), complex_))
    W4 = jnp.asarray(_rand(rng, (m, k) if lq else (k, n), complex_))

    def H(x):
        return jnp.conj(jnp.swapaxes(x, -1, -2))

    def loss(A):
        F1, F2 = factor(A)
        if lq:
            L, Q = F1, F2
            out = (jnp.sum(jnp.conj(W1) * ((L * w) @ Q)).real + jnp.sum(W2 * jnp.abs(L) ** 2)
                   + jnp.sum(jnp.conj(W3) * (H(Q) @ Q)).real)
            return out if gauge_free else out + jnp.sum(jnp.conj(W4) * L).real
        Q, R = F1, F2
        out = (jnp.sum(jnp.conj(W1) * ((Q * w) @ R)).real + jnp.sum(W2 * jnp.abs(R) ** 2)
               + jnp.sum(jnp.conj(W3) * (Q @ H(Q))).real)
        return out if gauge_free else out + jnp.sum(jnp.conj(W4) * R).real

    return loss


# Each case compiles the derivatives of a fresh loss (seconds each): a covering subset
# of shape x field x factorisation x rule, order 2 on one case.
CHECK_GRADS_CASES = [
    ((6, 4), False, False, "vjp", 1),
    ((5, 5), True, False, "vjp", 1),
    ((4, 7), False, False, "vjp", 1),
    ((4, 7), True, False, "vjp", 2),
    ((6, 4), True, False, "jvp", 1),
    ((4, 7), False, False, "jvp", 1),
    ((6, 4), True, True, "vjp", 1),
    ((4, 7), False, True, "vjp", 1),
    ((4, 7), True, True, "jvp", 1),
]


@pytest.mark.parametrize(("shape", "complex_", "lq", "rule", "order"), CHECK_GRADS_CASES)
def test_jax_check_grads(jax, shape, complex_, lq, rule, order):
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import randla.jax as rj

    rng = np.random.default_rng(6)
    A = jnp.asarray(_rand(rng, shape, complex_))
    factor = (lambda a: rj.lq(a, rule=rule)) if lq else (lambda a: rj.qr(a, rule=rule))
    loss = _jax_loss(jnp, rng, shape, complex_, factor, lq=lq)
    modes = ["rev"] if rule == "vjp" else ["fwd", "rev"]
    check_grads(jax.jit(loss), (A,), order=order, modes=modes, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("method", ["3.3", "3.8"])
@pytest.mark.parametrize(("shape", "dtype"), [
    ((6, 4), "float32"), ((6, 4), "complex128"), ((5, 5), "float64"), ((5, 5), "complex64"),
    ((4, 7), "float32"), ((4, 7), "complex128"), ((2, 4, 7), "float64"), ((2, 4, 7), "complex128"),
])
def test_jax_grad_matches_native_under_jit(jax, shape, dtype, method):
    """jax.grad through randla.jax.qr equals jax.grad through jnp.linalg.qr (JAX's
    conjugate convention for complex), also for losses that depend on the phase convention."""
    import jax.numpy as jnp

    import randla.jax as rj

    rng = np.random.default_rng(7)
    complex_ = dtype.startswith("complex")
    A = jnp.asarray(_rand(rng, shape, complex_), dtype=getattr(jnp, dtype))
    native = _jax_loss(jnp, np.random.default_rng(8), shape[-2:], complex_,
                       lambda a: jnp.linalg.qr(a), lq=False, gauge_free=False)
    mine = _jax_loss(jnp, np.random.default_rng(8), shape[-2:], complex_,
                     lambda a: rj.qr(a, method=method), lq=False, gauge_free=False)
    g_mine = jax.jit(jax.grad(mine))(A)
    g_native = jax.jit(jax.grad(native))(A)
    assert g_mine.dtype == A.dtype
    tol = 2e-4 if dtype in ("float32", "complex64") else 1e-11
    np.testing.assert_allclose(np.asarray(g_mine), np.asarray(g_native), rtol=0,
                               atol=tol * float(jnp.max(jnp.abs(g_native))))
    if method == "3.3":  # forward rule, transposed by JAX
        fwd = _jax_loss(jnp, np.random.default_rng(8), shape[-2:], complex_,
                        lambda a: rj.qr(a, rule="jvp"), lq=False, gauge_free=False)
        np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(fwd))(A)), np.asarray(g_native), rtol=0,
                                   atol=tol * float(jnp.max(jnp.abs(g_native))))


@pytest.mark.parametrize("lq", [False, True], ids=["qr", "lq"])
@pytest.mark.parametrize(("shape", "complex_"), [((6, 4), False), ((4, 7), True)])
def test_jax_vjp_takes_numpy_cotangents(jax, shape, complex_, lq):
    """``jax.vjp``'s pullback accepts NumPy cotangents, as it does for ``jnp.linalg.qr``
    (so ``check_grads`` in reverse mode runs on the function itself)."""
    import jax.numpy as jnp
    from jax.test_util import check_grads

    import randla.jax as rj

    rng = np.random.default_rng(10)
    A = jnp.asarray(_rand(rng, shape, complex_))
    mine = rj.lq if lq else rj.qr

    def native(a):
        if not lq:
            return tuple(jnp.linalg.qr(a))
        Qh, Rh = jnp.linalg.qr(jnp.conj(a.T))
        return jnp.conj(Rh.T), jnp.conj(Qh.T)

    out, pull = jax.vjp(lambda a: tuple(mine(a)), A)
    cts = tuple(_rand(rng, o.shape, complex_) for o in out)  # NumPy arrays
    _, pull_native = jax.vjp(native, A)
    (got,), (want,) = pull(cts), pull_native(tuple(jnp.asarray(c) for c in cts))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=0, atol=1e-10 * float(jnp.max(jnp.abs(want))))
    check_grads(lambda a: tuple(mine(a)), (A,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


def test_jax_lq_factors_vmap_and_jvp(jax):
    import jax.numpy as jnp

    import randla.jax as rj

    rng = np.random.default_rng(9)
    A = jnp.asarray(_rand(rng, (3, 4, 6), True))
    L, Q = jax.jit(jax.vmap(rj.lq))(A)
    np.testing.assert_allclose(np.asarray(L @ Q), np.asarray(A), atol=1e-12)
    assert np.all(np.asarray(jnp.triu(L, 1)) == 0) and np.all(np.asarray(jnp.diagonal(L, axis1=-2, axis2=-1)).imag == 0)
    dA = jnp.asarray(_rand(rng, (3, 4, 6), True))
    _, (dL, dQ) = jax.jvp(lambda a: tuple(rj.lq(a, rule="jvp")), (A,), (dA,))
    _, (dQh, dRh) = jax.jvp(lambda a: tuple(jnp.linalg.qr(a)), (jnp.conj(jnp.swapaxes(A, -1, -2)),),
                            (jnp.conj(jnp.swapaxes(dA, -1, -2)),))
    np.testing.assert_allclose(np.asarray(dL), np.asarray(jnp.conj(jnp.swapaxes(dRh, -1, -2))), atol=1e-10)
    np.testing.assert_allclose(np.asarray(dQ), np.asarray(jnp.conj(jnp.swapaxes(dQh, -1, -2))), atol=1e-10)


def test_jax_errors(jax):
    import jax.numpy as jnp

    import randla.jax as rj

    with pytest.raises(TypeError, match="A must be a JAX array"):
        rj.qr([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="A must be at least 2-D"):
        rj.qr(jnp.ones(3))
    with pytest.raises(TypeError, match="A has dtype"):
        rj.lq(jnp.ones((3, 3), dtype=jnp.int32))
    with pytest.raises(ValueError, match="rule must be"):
        rj.qr(jnp.eye(3), rule="both")
    with pytest.raises(ValueError, match="applies to rule='vjp' only"):
        rj.qr(jnp.eye(3), rule="jvp", method="3.8")
    with pytest.raises(ValueError, match="method must be"):
        rj.lq(jnp.eye(3), method="3.7")
