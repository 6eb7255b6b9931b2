"""Randomized SVD family on every backend, against NumPy's exact SVD and known bounds."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as spla

import randla
from randla import _backend as B
from randla.testing import matrix

METHODS = {
    "rsvd": lambda A, k, **kw: randla.rsvd(A, k, **kw),
    "rsvd_q1_lu": lambda A, k, **kw: randla.rsvd(A, k, q=1, stabilizer="lu", **kw),
    "rsi": lambda A, k, **kw: randla.rsi(A, k, **kw),
    "rsi_qr": lambda A, k, **kw: randla.rsi(A, k, stabilizer="qr", **kw),
    "block_krylov": lambda A, k, **kw: randla.block_krylov_svd(A, k, q=1, **kw),
}
# Expected bounds on the normalized spectral error ||A - A_k|| / sigma_{k+1} for the
# test spectrum below (polynomial decay 1, k = 8, p = 10): HMT Thm 10.6 gives about
# 1 + sqrt(k/(p-1)) + e sqrt(k+p)/p * tail/sigma_{k+1} for q = 0, which is ~ 6 here;
# power iterations bring it near 1.
BOUND = {"rsvd": 6.0, "rsvd_q1_lu": 1.5, "rsi": 1.1, "rsi_qr": 1.1, "block_krylov": 1.15}


def _tol(dtype):
    return 50 * np.finfo(dtype).eps ** 0.75


def _check_svd(backend, A, res, k, dtype):
    xp = backend.xp
    U, S, Vh = res
    assert isinstance(res, randla.SVDResult)
    for x in (U, S, Vh):
        assert type(x) is type(A)
    assert U.shape == (A.shape[0], k) and S.shape == (k,) and Vh.shape == (k, A.shape[1])
    assert U.dtype == A.dtype and Vh.dtype == A.dtype
    assert S.dtype == (xp.float32 if A.dtype in (xp.float32, xp.complex64) else xp.float64)
    U, S, Vh = (backend.to_numpy(x) for x in (U, S, Vh))
    tol = _tol(dtype)
    assert np.abs(U.conj().T @ U - np.eye(k)).max() < tol * np.sqrt(k)
    assert np.abs(Vh @ Vh.conj().T - np.eye(k)).max() < tol * np.sqrt(k)
    assert np.all(np.diff(S) <= tol * S[0]) and np.all(S >= 0)
    return U, S, Vh


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex128"])
@pytest.mark.parametrize("shape", [(90, 60), (50, 80)])
def test_accuracy_against_exact_svd(backend, method, dtype, shape):
    A0, s = matrix(*shape, spectrum="polynomial", decay=1.0, dtype=dtype, rng=1)
    A = backend.asarray(A0)
    k = 8
    errs = []
    for seed in range(3):
        res = METHODS[method](A, k, rng=seed)
        U, S, Vh = _check_svd(backend, A, res, k, A0.dtype)
        errs.append(np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[k])
        # singular values never exceed the true ones (Q^H A is a compression of A)
        assert np.all(S <= s[:k] * (1 + _tol(A0.dtype)))
    assert np.median(errs) < BOUND[method]
    assert min(errs) >= 1 - _tol(A0.dtype)


@pytest.mark.parametrize("stabilizer", ["cholqr", "qr", "lu", "none"])
def test_range_finder_stabilizers(backend, stabilizer):
    A0, s = matrix(80, 60, spectrum="exponential", decay=0.2, rng=0)
    A = backend.asarray(A0)
    Q = randla.range_finder(A, 10, q=1, stabilizer=stabilizer, rng=0)
    assert Q.shape == (80, 20) and Q.dtype == A.dtype
    Q = backend.to_numpy(Q)
    assert np.abs(Q.T @ Q - np.eye(20)).max() < 1e-12
    err = np.linalg.norm(A0 - Q @ (Q.T @ A0), 2)
    assert s[20] * (1 - 1e-12) <= err < 3 * s[10]


def test_float32_power_iteration_is_stable(backend):
    """Unnormalised power iteration diverges in float32 on fast decay; ours must not."""
    A0, s = matrix(120, 100, spectrum="exponential", decay=0.15, dtype="float32", rng=0)
    A = backend.asarray(A0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(A, 10, q=4, rng=0))
    assert np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[10] < 1.5


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("shape", [(300, 200), (200, 300)])
def test_double_precision_power_iteration_resolves_fast_decay(backend, dtype, shape):
    """sigma_i = e^{-i/2}, k = 60 (sigma_(k+1) = 1e-13 sigma_1): the shifted Cholesky-QR
    between passes had no wider Gram matrix in float64 and left every direction weaker
    than about 1e-8 sigma_1 to rounding, so power steps made the error worse (1e3
    sigma_(k+1) at q = 1, 3e4 at q = 2, 1.0 at q = 0); on every backend, Dask too."""
    A0, s = matrix(*shape, spectrum="exponential", decay=0.5 / np.log(10), dtype=dtype, rng=0)
    A = backend.asarray(A0)
    for q in (1, 2):
        for func in (randla.rsi, randla.rsvd):
            U, S, Vh = (backend.to_numpy(x) for x in func(A, 60, q=q, rng=0))
            assert np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[60] < 2, (func.__name__, q)
        Q = backend.to_numpy(randla.range_finder(A, 50, q=q, rng=0))  # 60 columns
        assert np.linalg.norm(A0 - Q @ (Q.conj().T @ A0), 2) / s[60] < 2


def test_same_seed_same_result(backend):
    A = backend.asarray(matrix(60, 40, rng=0).A)
    a = [backend.to_numpy(x) for x in randla.rsvd(A, 5, q=1, rng=7)]
    b = [backend.to_numpy(x) for x in randla.rsvd(A, 5, q=1, rng=7)]
    c = [backend.to_numpy(x) for x in randla.rsvd(A, 5, q=1, rng=np.random.default_rng(7))]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # a Generator seeded alike draws the same seed for the backend generator
    np.testing.assert_array_equal(a[1], c[1])


def test_input_not_modified(backend):
    A0 = matrix(40, 30, dtype="float64", rng=0).A
    A = backend.asarray(A0)
    randla.rsvd(A, 5, q=2, stabilizer="lu", rng=0)
    randla.block_krylov_svd(A, 5, rng=0)
    randla.adaptive_range_finder(A, 0.1, rng=0)
    np.testing.assert_array_equal(backend.to_numpy(A), A0)


@pytest.mark.parametrize("sketch", randla.sketch.METHODS)
def test_every_sketch_finds_an_exactly_low_rank_range(backend, sketch):
    A0, s = matrix(50, 40, spectrum="low_rank", rank=5, dtype="complex128", rng=0)
    A = backend.asarray(A0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsvd(A, 5, p=3, sketch=sketch, rng=0))
    np.testing.assert_allclose(S, s[:5], rtol=1e-10)
    np.testing.assert_allclose((U * S) @ Vh, A0, atol=1e-10)


def test_oversampling_is_clipped(backend):
    A0, s = matrix(12, 9, rng=0)
    A = backend.asarray(A0)
    Q = randla.range_finder(A, 8, p=10, rng=0)
    assert Q.shape == (12, 9)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsvd(A, 9, p=10, rng=0))
    np.testing.assert_allclose(S, s, rtol=1e-10)


def test_zero_matrix(backend):
    A = backend.asarray(np.zeros((20, 15)))
    lu = randla.rsvd(A, 4, q=1, stabilizer="lu", solver="randomized", rng=0)  # torch's LU of a zero sketch raised
    for res in (randla.rsvd(A, 4, q=1, rng=0), randla.rsi(A, 4, rng=0), randla.block_krylov_svd(A, 4, rng=0), lu):
        U, S, Vh = (backend.to_numpy(x) for x in res)
        assert np.all(np.isfinite(U)) and np.all(np.isfinite(Vh))
        np.testing.assert_array_equal(S, 0)
        np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-12)


def test_rank_below_k(backend):
    A0, s = matrix(30, 20, spectrum="low_rank", rank=3, rng=0)
    lu = randla.rsvd(backend.asarray(A0), 6, q=1, stabilizer="lu", solver="randomized", rng=0)  # singular LU
    S = backend.to_numpy(lu[1])
    np.testing.assert_allclose(S[:3], s[:3], rtol=1e-10)
    assert np.all(S[3:] < 1e-12)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(backend.asarray(A0), 6, rng=0))
    np.testing.assert_allclose(S[:3], s[:3], rtol=1e-10)
    assert np.all(S[3:] < 1e-12)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=1e-10)
    np.testing.assert_allclose((U * S) @ Vh, A0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-150, 1e150])
def test_extreme_scale(backend, scale):
    A0, s = matrix(30, 20, spectrum="exponential", decay=0.3, rng=0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(backend.asarray(A0 * scale), 4, rng=0))
    np.testing.assert_allclose(S, s[:4] * scale, rtol=1e-8)


def test_float32_extreme_scale(backend):
    A0, s = matrix(30, 20, spectrum="exponential", decay=0.3, dtype="float32", rng=0)
    for scale in (1e-18, 1e18):
        U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(backend.asarray(A0 * np.float32(scale)), 4, rng=0))
        np.testing.assert_allclose(S, s[:4] * scale, rtol=1e-4)


@pytest.mark.parametrize("norm", ["fro", "2"])
def test_adaptive_range_finder_meets_rtol(backend, norm):
    A0, s = matrix(100, 80, spectrum="exponential", decay=0.05, rng=0)
    A = backend.asarray(A0)
    rtol = 1e-2
    Q = randla.adaptive_range_finder(A, rtol, block_size=8, norm=norm, rng=0)
    assert Q.dtype == A.dtype
    Q = backend.to_numpy(Q)
    r = Q.shape[1]
    np.testing.assert_allclose(Q.T @ Q, np.eye(r), atol=1e-10)
    R = A0 - Q @ (Q.T @ A0)
    if norm == "fro":
        assert np.linalg.norm(R) <= rtol * np.linalg.norm(A0) * (1 + 1e-8)
        # the optimal rank for this Frobenius target, and a little slack
        tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])
        r_opt = int(np.sum(tail > rtol * np.linalg.norm(A0)))
        assert r_opt <= r <= r_opt + 4
    else:
        assert np.linalg.norm(R, 2) <= rtol * s[0]
        r_opt = int(np.sum(s > rtol * s[0]))  # the smallest rank that meets the tolerance
        assert r_opt <= r <= 1.5 * r_opt


def _issue_matrix(kind):
    """The 600 x 400 matrices on which the HMT stopping rule asked for 320 and 400 columns."""
    if kind == "step":  # sigma = 1 up to index 100, 1e-4 after
        U, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((600, 400)))
        V, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((400, 400)))
        s = np.where(np.arange(400) < 100, 1.0, 1e-4)
        return (U * s) @ V.T, s
    decay = {"inv": 1.0, "inv_sqrt": 0.5, "inv_square": 2.0}.get(kind)
    if decay is not None:
        return matrix(600, 400, spectrum="polynomial", decay=decay, rng=0)
    return matrix(600, 400, spectrum="exponential", decay=0.05, rng=0)


@pytest.mark.parametrize(("kind", "rtol"), [("step", 1e-2), ("inv", 1e-2), ("inv", 1e-1), ("inv_sqrt", 1e-1),
                                            ("inv_square", 1e-3), ("exponential", 1e-2), ("exponential", 1e-6)])
def test_spectral_tolerance_finds_the_right_rank(kind, rtol):
    """Rank <= 1.5 x the optimal one for the spectral tolerance, tolerance met."""
    A, s = _issue_matrix(kind)
    r_opt = int(np.sum(s > rtol * s[0]))
    for seed in range(2):
        Q = randla.adaptive_range_finder(A, rtol, norm="2", rng=seed)
        assert np.linalg.norm(A - Q @ (Q.T @ A), 2) <= rtol * s[0]
        assert r_opt <= Q.shape[1] <= 1.5 * r_opt
    U, S, Vh = randla.rsvd(A, rtol=rtol, norm="2", q=1, rng=0)
    assert np.linalg.norm(A - (U * S) @ Vh, 2) <= rtol * s[0]


def _dense_spectra(m, n):
    """Matrices with dense spectra near the tolerances paired with them."""
    gen = np.random.default_rng(7)
    U, _ = np.linalg.qr(gen.standard_normal((m, n)))
    V, _ = np.linalg.qr(gen.standard_normal((n, n)))
    i = np.arange(1, n + 1.0)
    return [((U * s) @ V.T, s, rtol) for s, rtol in [(0.9**i, 0.3), (1 / i, 0.1), (1 / i, 0.03), (i**-0.5, 0.3)]]


@pytest.mark.parametrize("block_size", [1, 2, 4])
def test_spectral_tolerance_met_with_small_blocks(block_size):
    """Small blocks on small matrices with dense spectra: a cut where the Ritz values
    cross the tolerance left errors up to 1.2 x rtol (34 of 600 runs); the Lanczos
    check of the residual adds columns until it is met."""
    for m, n in [(100, 80), (200, 150)]:
        for A, s, rtol in _dense_spectra(m, n):
            r_opt = int(np.sum(s > rtol * s[0]))
            for seed in range(2):
                Q = randla.adaptive_range_finder(A, rtol, norm="2", block_size=block_size, rng=seed)
                assert np.linalg.norm(A - Q @ (Q.T @ A), 2) <= rtol * s[0]
                assert r_opt <= Q.shape[1] <= 1.5 * r_opt


def test_spectral_tolerance_check_on_every_backend(backend):
    """The same check through every namespace (a case the Ritz cut missed by 17 %)."""
    A, s, rtol = _dense_spectra(100, 80)[1]
    Q = backend.to_numpy(randla.adaptive_range_finder(backend.asarray(A), rtol, norm="2", block_size=2, rng=1))
    assert np.linalg.norm(A - Q @ (Q.T @ A), 2) <= rtol * s[0]
    assert 9 <= Q.shape[1] <= 12


def test_spectral_tolerance_from_products_alone():
    A, s = _issue_matrix("inv")
    Q = randla.adaptive_range_finder(spla.aslinearoperator(A), 1e-2, norm="2", rng=0)
    assert 99 <= Q.shape[1] <= 1.5 * 99
    assert np.linalg.norm(A - Q @ (Q.T @ A), 2) <= 1e-2 * s[0]


@pytest.mark.parametrize("rtol", [1e-9, 1e-12])
def test_frobenius_tolerance_below_the_cancellation_limit(rtol):
    """``||A||_F^2 - sum ||B_i||_F^2`` cancels below rtol ~ sqrt(eps): recomputed exactly."""
    A, s = matrix(300, 200, spectrum="exponential", decay=0.05, rng=0)
    Q = randla.adaptive_range_finder(A, rtol, rng=0)
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])
    r_opt = int(np.sum(tail > rtol * np.linalg.norm(A)))
    assert np.linalg.norm(A - Q @ (Q.T @ A)) <= rtol * np.linalg.norm(A)
    assert r_opt <= Q.shape[1] <= r_opt + 2


def test_rsvd_with_rtol(backend):
    A0, s = matrix(70, 50, spectrum="exponential", decay=0.1, dtype="complex128", rng=0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsvd(backend.asarray(A0), rtol=1e-3, rng=0))
    assert np.linalg.norm(A0 - (U * S) @ Vh) <= 1e-3 * np.linalg.norm(A0) * (1 + 1e-8)
    # top singular values are off by O(residual^2 / sigma_i) at most
    np.testing.assert_allclose(S[:5], s[:5], rtol=1e-5)


def test_adaptive_zero_matrix(backend):
    A = backend.asarray(np.zeros((10, 8)))
    Q = randla.adaptive_range_finder(A, 0.1, rng=0)
    assert Q.shape == (10, 0)


@pytest.mark.parametrize("fmt", ["linear_operator", "sparse"])
@pytest.mark.parametrize("func", ["range_finder", "rsvd", "rsi", "block_krylov_svd"])
def test_matrix_free(fmt, func):
    A0, s = matrix(60, 40, spectrum="exponential", decay=0.2, rng=0)
    op = spla.aslinearoperator(A0) if fmt == "linear_operator" else scipy.sparse.csr_array(A0)
    out, ref = (getattr(randla, func)(X, 6, rng=0) for X in (op, A0))
    # same seed, same sketch: the same basis (range finder) or factors, up to rounding
    if func == "range_finder":
        np.testing.assert_allclose(out @ out.T, ref @ ref.T, atol=1e-8)
    else:
        np.testing.assert_allclose(out.S, ref.S, rtol=1e-10)
        np.testing.assert_allclose(out.U @ out.U.T, ref.U @ ref.U.T, atol=1e-8)


def test_sparse_integer_input_is_promoted():
    A = scipy.sparse.random_array((40, 30), density=0.3, random_state=0, dtype=np.float64)
    A = (A * 10).astype(np.int64)
    U, S, Vh = randla.rsvd(A, 5, q=2, rng=0)
    assert U.dtype == np.float64
    # a random sparse matrix has a flat spectrum: q=2 gets the top five within 1%
    np.testing.assert_allclose(S, np.linalg.svd(A.toarray(), compute_uv=False)[:5], rtol=1e-2)


def test_integer_and_bool_input_promoted_to_float64(backend):
    A = backend.asarray(np.arange(30, dtype=np.int64).reshape(6, 5) % 7)
    U, S, Vh = randla.rsvd(A, 2, rng=0)
    assert U.dtype == backend.xp.float64
    B = backend.asarray(np.eye(5, dtype=bool))
    assert randla.rsvd(B, 2, rng=0).U.dtype == backend.xp.float64


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(k=0), ValueError, "k must satisfy"),
        (dict(k=11), ValueError, "k must satisfy"),
        (dict(k=2.5), TypeError, "k must be an int"),
        (dict(k=True), TypeError, "k must be an int"),
        (dict(k=2, p=-1), ValueError, "p must be >= 0"),
        (dict(k=2, q=-1), ValueError, "q must be >= 0"),
        (dict(k=2, stabilizer="householder"), ValueError, "stabilizer must be one of"),
        (dict(k=2, sketch="cauchy"), ValueError, "sketch must be one of"),
        (dict(k=2, rng="seed"), TypeError, "rng must be None, an int seed"),
        (dict(), TypeError, "exactly one of k"),
        (dict(k=2, rtol=0.1), TypeError, "exactly one of k"),
        (dict(rtol=1.5), ValueError, "rtol must be in"),
    ],
)
def test_bad_arguments(backend, kwargs, exc, match):
    A = backend.asarray(np.ones((12, 10)))
    with pytest.raises(exc, match=match):
        randla.rsvd(A, **kwargs)


def test_bad_arrays(backend):
    xp = backend.xp
    with pytest.raises(ValueError, match="A must be 2-D"):
        randla.rsvd(backend.asarray(np.ones(5)), 1)
    with pytest.raises(ValueError, match="must not be empty"):
        randla.rsvd(backend.asarray(np.ones((0, 4))), 1)
    if not backend.lazy:
        bad = np.ones((5, 4))
        bad[1, 2] = np.nan
        with pytest.raises(ValueError, match="NaN or Inf"):
            randla.rsi(backend.asarray(bad), 2)
    if hasattr(xp, "float16"):
        with pytest.raises(TypeError, match="float16"):
            randla.rsvd(backend.asarray(np.ones((5, 4), dtype=np.float16)), 2)
    with pytest.raises(TypeError, match="array-API"):
        randla.rsvd([[1.0, 2.0], [3.0, 4.0]], 1)


def test_check_finite_opt_out():
    bad = np.ones((6, 5))
    bad[0, 0] = np.inf
    # the scan is skipped: LAPACK sees the Inf (garbage in, garbage out), no ValueError
    with np.errstate(invalid="ignore"), pytest.raises(np.linalg.LinAlgError):
        randla.rsvd(bad, 2, rng=0, check_finite=False)


def test_rsi_rejects_non_orthonormalising_stabilizer():
    with pytest.raises(ValueError, match="stabilizer"):
        randla.rsi(np.ones((5, 4)), 2, stabilizer="lu")


def test_dask_stays_lazy():
    da = pytest.importorskip("dask.array")
    A = da.from_array(matrix(60, 40, rng=0).A, chunks=(20, 40))
    U, S, Vh = randla.rsi(A, 5, rng=0)
    assert isinstance(U, da.Array) and isinstance(S, da.Array)


def test_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    A0, s = matrix(60, 40, spectrum="exponential", decay=0.2, rng=0)
    f = jax.jit(lambda A: randla.rsi(A, 5, rng=0, check_finite=False))
    U, S, Vh = f(jnp.asarray(A0))
    np.testing.assert_allclose(np.asarray(S), s[:5], rtol=1e-8)


def test_torch_float32_stays_float32():
    torch = pytest.importorskip("torch")
    A0, s = matrix(50, 30, spectrum="exponential", decay=0.2, dtype="float32", rng=0)
    U, S, Vh = randla.rsi(torch.from_numpy(A0), 5, rng=0)
    assert U.dtype == torch.float32 and S.dtype == torch.float32
    np.testing.assert_allclose(S.numpy(), s[:5], rtol=1e-4)


def test_torch_complex_factors_leave_through_numpy():
    """No lazily conjugated views in the result: ``.numpy()`` works on every factor."""
    torch = pytest.importorskip("torch")
    A0, s = matrix(60, 40, spectrum="polynomial", decay=1.0, dtype="complex64", rng=0)
    U, S, Vh = (x.numpy() for x in randla.rsi(torch.from_numpy(A0), 5, rng=0, solver="randomized"))
    np.testing.assert_allclose(S, s[:5], rtol=1e-3)
    assert np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[5] < 1.5


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_single_precision_routes_agree_with_the_float64_routes(monkeypatch, backend, dtype):
    """The single-precision stabiliser and eigensolver (taken where their tests pass)
    give what the float64 Gram routes give; fast decay sends them to float64."""
    import randla.svd as svd_module

    taken = []
    single = svd_module._single_cholqr
    monkeypatch.setattr(svd_module, "_single_cholqr", lambda Y: taken.append(single(Y) is not None) or single(Y))
    A0, s = matrix(200, 150, spectrum="polynomial", decay=0.5, dtype=dtype, rng=0)
    A = backend.asarray(A0)
    fast = [backend.to_numpy(x) for x in randla.rsi(A, 30, rng=0, solver="randomized")]
    if not backend.lazy:
        assert taken and all(taken)
    taken.clear()
    B0, _ = matrix(120, 100, spectrum="exponential", decay=0.5, dtype=dtype, rng=0)
    randla.rsi(backend.asarray(B0), 10, rng=0, solver="randomized")
    assert not any(taken)  # sigma_20 / sigma_1 = e^-10: the pivot test refuses single precision
    monkeypatch.setattr(svd_module, "_single_cholqr", lambda Y: None)
    monkeypatch.setattr(svd_module, "_SINGLE_EIGH", 2.0)  # no eigenvalue ratio reaches it: float64 eigh
    wide = [backend.to_numpy(x) for x in randla.rsi(A, 30, rng=0, solver="randomized")]
    np.testing.assert_allclose(fast[1], wide[1], rtol=1e-4)
    for U, _, Vh in (fast, wide):
        assert np.abs(U.conj().T @ U - np.eye(30)).max() < 1e-4
        assert np.abs(Vh @ Vh.conj().T - np.eye(30)).max() < 1e-4
    errs = [np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[30] for U, S, Vh in (fast, wide)]
    assert errs[0] < 1.2 and abs(errs[0] - errs[1]) < 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float64", "complex64"])
@pytest.mark.parametrize(("shape", "k", "decay"), [((160, 120), 25, 0.5), ((300, 200), 60, 1.0)],
                         ids=["flat", "moderately-graded"])
def test_skipped_stabilizer_keeps_the_result(monkeypatch, backend, dtype, shape, k, decay):
    """Power steps that skip the stabiliser of ``Y`` (taken where ``A^H Y`` is well
    conditioned; in single precision up to ``cond(A^H Y)`` near 1e4 through the float64
    Gram route) give the factors that a stabiliser after every pass gives."""
    import randla.svd as svd_module

    taken = []
    skip = svd_module._skip_stabilized_rmatmat
    monkeypatch.setattr(svd_module, "_skip_stabilized_rmatmat",
                        lambda op, Y: taken.append(skip(op, Y)) or taken[-1])
    A0, s = matrix(*shape, spectrum="polynomial", decay=decay, dtype=dtype, rng=0)
    A = backend.asarray(A0)
    skipped = [backend.to_numpy(x) for x in randla.rsi(A, k, q=2, rng=0, solver="randomized")]
    if not backend.lazy:
        assert len(taken) == 2 and all(z is not None for z in taken)
    monkeypatch.setattr(svd_module, "_skip_stabilized_rmatmat", lambda op, Y: None)
    every = [backend.to_numpy(x) for x in randla.rsi(A, k, q=2, rng=0, solver="randomized")]
    tol = 1e-4 if dtype in ("float32", "complex64") else 1e-10
    np.testing.assert_allclose(skipped[1], every[1], rtol=tol)
    # the same subspaces: the rank-k projectors agree
    for a, b in ((skipped[0], every[0]), (skipped[2].conj().T, every[2].conj().T)):
        assert np.linalg.norm(a @ a.conj().T - b @ b.conj().T, 2) < 100 * tol
    U, S, Vh = skipped
    assert np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[k] < 1.2


def test_skip_is_not_tried_where_a_refusal_would_cost_most(monkeypatch):
    """On ``A`` with more than ``_SKIP_WIDTH`` columns per sketch column in both
    orientations the stabiliser of ``Y`` is always taken (a refused skip would
    repeat a product much dearer than the Cholesky-QR it saves); a wide ``A`` is
    factored as ``A^H``, so the rule reads its shorter side."""
    import randla.svd as svd_module

    calls = []
    monkeypatch.setattr(svd_module, "_skip_stabilized_rmatmat", lambda op, Y: calls.append(op.shape))
    A, s = matrix(150, 400, spectrum="polynomial", decay=0.5, dtype="float32", rng=0)
    for M in (A, A.T):
        U, S, Vh = randla.rsi(M, 10, q=2, rng=0, solver="randomized")
        assert np.linalg.norm(M - (U * S) @ Vh, 2) / s[10] < 1.2
    assert calls == []
    A = A[:60]
    for M in (A, A.T):
        randla.rsi(M, 10, q=2, rng=0, solver="randomized")
    assert calls == [(400, 60), (400, 60)]  # tried once per call, refused (the patch returns None)


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_wide_input_is_factored_through_its_adjoint(backend, dtype):
    """rsi with power steps on a wide ``A`` returns the adjoint of the factors of
    ``A^H`` (same ``rng``; not on Dask, whose fused passes keep the orientation), close
    to the exact truncated SVD."""
    A0, s = matrix(70, 260, spectrum="polynomial", decay=1.0, dtype=dtype, rng=1)
    A, AH = backend.asarray(A0), backend.asarray(np.ascontiguousarray(A0.conj().T))
    k = 8
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(A, k, q=1, rng=3, solver="randomized"))
    U2, S2, Vh2 = (backend.to_numpy(x) for x in randla.rsi(AH, k, q=1, rng=3, solver="randomized"))
    tol = 1e-4 if dtype == "float32" else 1e-10
    if backend.name != "dask":  # Dask's fused passes read A once per pass in either orientation
        np.testing.assert_allclose(S, S2, rtol=tol)
        np.testing.assert_allclose((U * S) @ Vh, ((U2 * S2) @ Vh2).conj().T, atol=tol * s[0])
    np.testing.assert_allclose(S, s[:k], rtol=0.05)
    assert np.linalg.norm(A0 - (U * S) @ Vh, 2) / s[k] < 1.5


def test_skipped_stabilizer_is_refused_where_it_would_lose_accuracy():
    """Graded ``A^H Y`` (fast decay; ``sigma_i = i^-2``, whose ``cond(A^H Y)`` near 1e7
    is beyond the float64 Gram route's bound too) and a product that overflows float32
    are refused (no warning either way), and rsi then keeps every stabiliser."""
    import randla.svd as svd_module
    from randla._validate import as_operand

    graded, s = matrix(150, 120, spectrum="exponential", decay=0.5, dtype="float32", rng=0)
    quadratic, _ = matrix(300, 200, spectrum="polynomial", decay=2.0, dtype="float32", rng=0)
    rng = np.random.default_rng(0)
    huge = np.full((40, 30), 1e30, dtype=np.float32) + rng.standard_normal((40, 30)).astype(np.float32)
    for A, l in ((graded, 12), (quadratic, 70), (huge, 12)):
        Y = A @ rng.standard_normal((A.shape[1], l)).astype(np.float32)
        assert svd_module._skip_stabilized_rmatmat(as_operand(A), Y) is None
    U, S, Vh = randla.rsi(graded, 10, rng=0, solver="randomized")
    assert np.linalg.norm(graded - (U * S) @ Vh, 2) / s[10] < 1.2


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e12, 1e19, 1e30, 1e37])
def test_single_precision_at_any_scale(backend, dtype, scale):
    """Single-precision data far from unit scale (products that overflow or underflow
    without the stabilisers' rescaling, tall and wide): the same error as at unit
    scale, and no warning (the suite runs with warnings as errors)."""
    A0, s = matrix(150, 100, spectrum="polynomial", decay=0.5, dtype=dtype, rng=0)
    real = np.float32
    for M0 in (A0, A0.T):
        ref = randla.rsi(M0, 10, rng=0, solver="randomized")
        e_ref = np.linalg.norm(M0 - (ref.U * ref.S) @ ref.Vh, 2) / s[10]
        M = backend.asarray(M0 * real(scale))
        for f in (randla.rsi, randla.block_krylov_svd):
            U, S, Vh = (backend.to_numpy(x) for x in f(M, 10, rng=0, solver="randomized"))
            err = np.linalg.norm(M0.astype(np.complex128) - (U * (S / scale)) @ Vh, 2) / s[10]
            assert err < 1.1 * e_ref + 0.05, (f.__name__, err, e_ref)


def test_nan_found_through_the_sketch_for_every_sketch():
    bad = np.ones((8, 6))
    bad[3, 4] = np.nan
    for sketch in randla.sketch.METHODS:
        with pytest.raises(ValueError, match="NaN or Inf"):
            randla.rsvd(bad, 2, sketch=sketch, rng=0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        randla.rsi(scipy.sparse.csr_array(bad), 2, rng=0)


def test_overflow_is_not_called_nan():
    big = np.full((6, 5), 3e38, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"), pytest.raises(ValueError, match="overflow"):
        randla.rsvd(big, 2, rng=0)


# ----------------------------------------------------------------------------------
# stacks (..., m, n)
# ----------------------------------------------------------------------------------


def _stack(shape, dtype, rng=0):
    """A stack of test matrices with known, different spectra; returns (A, s)."""
    lead, (m, n) = shape[:-2], shape[-2:]
    count = int(np.prod(lead))
    mats = [matrix(m, n, spectrum="exponential", decay=0.1 + 0.05 * i, dtype=dtype, rng=rng + i) for i in range(count)]
    A = np.stack([a for a, _ in mats]).reshape(shape)
    s = np.stack([s for _, s in mats]).reshape(*lead, min(m, n))
    return A, s


@pytest.mark.parametrize("func", ["rsvd", "rsi"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "complex128"])
@pytest.mark.parametrize("shape", [(3, 50, 40), (2, 2, 30, 45)])
def test_stack_matches_per_matrix_svd(backend, func, dtype, shape):
    """Stacked factors: each matrix's against numpy.linalg.svd, and against an unbatched call."""
    A0, s = _stack(shape, dtype)
    A = backend.asarray(A0)
    k = 6
    if backend.name == "dask":
        with pytest.raises(ValueError, match="Dask"):
            getattr(randla, func)(A, k, q=1, rng=0)
        return
    res = getattr(randla, func)(A, k, q=1, rng=0, solver="randomized")
    assert isinstance(res, randla.SVDResult)
    U, S, Vh = (backend.to_numpy(x) for x in res)
    lead = shape[:-2]
    assert U.shape == (*lead, shape[-2], k) and S.shape == (*lead, k) and Vh.shape == (*lead, k, shape[-1])
    assert U.dtype == A0.dtype and Vh.dtype == A0.dtype and S.dtype == np.finfo(A0.dtype).dtype
    tol = _tol(A0.dtype)
    flat = [x.reshape(-1, *x.shape[len(lead):]) for x in (A0, U, S, Vh, s)]
    for a, u, sv, vh, ex in zip(*flat, strict=True):
        rtol = 1e-3 if dtype == "float32" else 1e-6
        np.testing.assert_allclose(sv, np.linalg.svd(a, compute_uv=False)[:k], rtol=rtol)
        assert np.abs(u.conj().T @ u - np.eye(k)).max() < tol * np.sqrt(k)
        assert np.abs(vh @ vh.conj().T - np.eye(k)).max() < tol * np.sqrt(k)
        assert np.linalg.norm(a - (u * sv) @ vh, 2) / ex[k] < 1.1
        # one test matrix for the stack: matrix i is what a call of its own gets
        if backend.name in ("numpy", "numpy_readonly", "torch", "jax"):
            one = getattr(randla, func)(backend.asarray(a), k, q=1, rng=0, solver="randomized")
            np.testing.assert_allclose(backend.to_numpy(one.S), sv, rtol=50 * np.finfo(a.dtype).eps ** 0.75)


def test_stack_range_finder(backend):
    A0, s = _stack((3, 60, 40), "float64")
    A = backend.asarray(A0)
    if backend.name == "dask":
        with pytest.raises(ValueError, match="Dask"):
            randla.range_finder(A, 8, rng=0)
        return
    Q = backend.to_numpy(randla.range_finder(A, 8, q=1, rng=0))
    assert Q.shape == (3, 60, 18)
    for a, qb, ex in zip(A0, Q, s, strict=True):
        np.testing.assert_allclose(qb.T @ qb, np.eye(18), atol=1e-12)
        assert np.linalg.norm(a - qb @ (qb.T @ a), 2) < 3 * ex[8]


@pytest.mark.skip_backend("dask", reason="stacks are refused on Dask (test_stack_range_finder)")
def test_stack_with_the_lu_stabiliser(backend):
    """stabilizer="lu" on stacks: torch, JAX and the array-API fallback factored one
    matrix only (an unpacking error); each matrix is what its own call gets."""
    A0, s = _stack((3, 60, 40), "float64")
    A = backend.asarray(A0)
    S = backend.to_numpy(randla.rsvd(A, 6, q=1, stabilizer="lu", rng=0).S)
    Q = backend.to_numpy(randla.range_finder(A, 6, q=1, stabilizer="lu", rng=0))
    for i, (a, ex) in enumerate(zip(A0, s, strict=True)):
        one = backend.to_numpy(randla.rsvd(backend.asarray(a), 6, q=1, stabilizer="lu", rng=0).S)
        np.testing.assert_allclose(S[i], one, rtol=1e-10)
        Qi = np.linalg.qr(Q[i])[0]
        assert np.linalg.norm(a - Qi @ (Qi.T @ a), 2) < 3 * ex[6]


def test_stack_is_reproducible_and_sketched_once():
    A0, _ = _stack((4, 40, 30), "float32")
    a = randla.rsi(A0, 5, rng=3, solver="randomized")
    b = randla.rsi(A0, 5, rng=np.random.default_rng(3), solver="randomized")
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # the stack draws one n x l test matrix: the generator advances as for one matrix
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    randla.rsi(A0, 5, rng=g1, solver="randomized")
    randla.rsi(A0[0], 5, rng=g2, solver="randomized")
    assert g1.integers(1 << 30) == g2.integers(1 << 30)


@pytest.mark.parametrize("call", [
    lambda A, g: randla.rsi(A, 5, rng=g, solver="randomized"),
    lambda A, g: randla.rsvd(A, 5, q=1, rng=g, solver="randomized"),
    lambda A, g: (randla.range_finder(A, 5, q=1, rng=g),),
    lambda A, g: randla.block_krylov_svd(A, 5, q=1, rng=g, solver="randomized"),
    lambda A, g: randla.rsvd(A, 5, rng=g, solver="full"),
], ids=["rsi", "rsvd", "range_finder", "block_krylov_svd", "full"])
def test_a_numpy_stack_is_cut_into_parts_that_run_at_once(monkeypatch, call, request):
    """A NumPy stack runs as one part per thread of NumPy's BLAS pool, each part on a
    thread of its own (MiniLM's three stacks on two cores: 1.25x as fast); matrix i
    gets what a call of its own gets, the caller's generator advances as by one
    call, every part runs in the caller's context (NumPy's errstate), and a pool
    limited to one thread (the caller's choice) is one part."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import randla.svd as svd_module

    threads, errstates = [], []
    for name in ("_first_sketch", "_full_svd"):
        real = getattr(svd_module, name)

        def spy(*args, _real=real, **kwargs):
            threads.append(threading.get_ident())
            errstates.append(np.geterr()["divide"])
            return _real(*args, **kwargs)

        monkeypatch.setattr(svd_module, name, spy)
    full = request.node.callspec.id == "full"
    monkeypatch.setattr(B, "_CUT_WORK", 1)  # these small matrices are cut too
    monkeypatch.setattr(B, "_CUT_MATRICES", 1)
    A0, _ = _stack((5, 40, 30), "float64")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        g = np.random.default_rng(7)
        with np.errstate(divide="ignore"):
            out = call(A0, g)
        # the exact SVD (SciPy's gesdd holds the GIL) is not cut
        assert len(set(threads)) == (1 if full else 2), "the stack ran as one part"
        assert set(errstates) == {"ignore"}, "a part ran outside the caller's errstate"
        for i in range(5):
            one = call(A0[i], 7)
            for x, y in zip(out, one, strict=True):
                np.testing.assert_allclose(np.abs(x[i]), np.abs(y), rtol=1e-7, atol=1e-9)
        g1 = np.random.default_rng(7)
        call(A0[0], g1)
        assert g.integers(1 << 30) == g1.integers(1 << 30)
    threads.clear()
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        call(A0, 7)
    assert len(set(threads)) == 1


def test_a_part_of_a_stack_raises_as_the_whole_stack_did(monkeypatch):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    monkeypatch.setattr(B, "_CUT_WORK", 1)
    monkeypatch.setattr(B, "_CUT_MATRICES", 1)
    A0, _ = _stack((4, 40, 30), "float32")
    A0[3, 5, 5] = np.nan
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"), pytest.raises(ValueError, match="finite"):
        randla.rsi(A0, 5, rng=0)
    with pytest.raises(ValueError, match="k"):
        randla.rsi(A0, 31, rng=0)


def test_a_stack_off_the_main_thread_or_too_small_is_one_part(monkeypatch):
    """Off the main thread the BLAS pools cannot be set (process-wide): no cut; nor
    where a part would hold fewer than three matrices or too little work (there the
    cut was slower)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(limits=2, user_api="blas"):
        assert B.stack_parts(np.zeros((12, 20, 20)), 5) == 1
        assert B.stack_parts(np.zeros((4, 384, 384)), 163) == 1
        assert B.stack_parts(np.zeros((6, 384, 384)), 163) == 2
        monkeypatch.setattr(B, "_CUT_WORK", 1)
        monkeypatch.setattr(B, "_CUT_MATRICES", 1)
        A0, _ = _stack((4, 40, 30), "float64")
        assert B.stack_parts(A0, 15) == 2
        parts = []
        worker = threading.Thread(target=lambda: parts.append(B.stack_parts(A0, 15)))
        worker.start()
        worker.join()
    assert parts == [1]


def test_stack_rejects_rtol_and_operators():
    A0, _ = _stack((2, 20, 15), "float64")
    with pytest.raises(ValueError, match="2-D"):
        randla.rsvd(A0, rtol=0.1)
    with pytest.raises(ValueError, match="2-D"):
        randla.adaptive_range_finder(A0, 0.1)


# ----------------------------------------------------------------------------------
# size-aware dispatch and the randomized path's degenerate cases
# ----------------------------------------------------------------------------------


def test_full_solver_is_exact_and_draws_like_the_sketch(backend):
    A0, s = matrix(40, 30, spectrum="polynomial", decay=1.0, rng=0)
    A = backend.asarray(A0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(A, 20, rng=0, solver="full"))
    np.testing.assert_allclose(S, s[:20], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(A0 - (U * S) @ Vh, 2), s[20], rtol=1e-8)
    # "auto" takes the exact path for a sketch of 30 of 30 columns: identical result
    auto = [backend.to_numpy(x) for x in randla.rsi(A, 20, rng=0)]
    for x, y in zip(auto, (U, S, Vh), strict=True):
        np.testing.assert_array_equal(x, y)
    # rng advances exactly as the randomized path's sketch advances it, wide A too (which
    # the randomized path sketches through A^H: it drew an n x l test matrix instead)
    Aw = backend.asarray(np.ascontiguousarray(A0[:, :25].T))  # 25 x 40
    for X in (A, Aw):
        g1, g2 = np.random.default_rng(9), np.random.default_rng(9)
        randla.rsi(X, 20, rng=g1, solver="full")
        randla.rsi(X, 20, rng=g2, solver="randomized")
        assert g1.integers(1 << 30) == g2.integers(1 << 30)
    # and a wide A gives the adjoint factors of the same call on A^H, as the randomized path
    # does (not on Dask: A^H's chunks are not those of A transposed, and TSQR follows them)
    if backend.name == "dask":
        return
    AwH = backend.asarray(A0[:, :25].copy())
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(Aw, 20, rng=0, solver="full"))
    U2, S2, Vh2 = (backend.to_numpy(x) for x in randla.rsi(AwH, 20, rng=0, solver="full"))
    np.testing.assert_allclose(U, Vh2.T, atol=1e-12)
    np.testing.assert_allclose(S, S2, rtol=1e-12)


def test_auto_solver_keeps_compression_ranks_randomized(monkeypatch):
    """alpha = 0.4 on a square matrix (sketch 42 % of it at q = 2) stays randomized, and
    so does a sketch of 50 % (the randomized path was faster up to about 60 %)."""
    import randla.svd as svd_module

    called = []
    monkeypatch.setattr(svd_module, "_full_svd", lambda *a, **k: called.append(1))
    A0, _ = matrix(100, 100, rng=0)
    randla.rsi(A0, 32, rng=0)
    assert not called
    randla.rsi(A0, 40, rng=0)  # 50 %
    assert not called
    randla.rsi(A0, 50, rng=0)  # 60 % at q = 2: exact
    assert called


def test_block_krylov_takes_the_exact_svd_once_its_space_fills_the_range(monkeypatch, backend):
    """(q + 1) l >= min(m, n): the Krylov space is the range of A, the answer the exact SVD."""
    import randla.svd as svd_module

    A0, s = matrix(60, 40, spectrum="polynomial", decay=1.0, rng=0)
    A = backend.asarray(A0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.block_krylov_svd(A, 10, p=4, q=2, rng=0))  # 3 * 14 >= 40
    np.testing.assert_allclose(S, s[:10], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(A0 - (U * S) @ Vh, 2), s[10], rtol=1e-8)
    R = [backend.to_numpy(x) for x in randla.block_krylov_svd(A, 10, p=4, q=2, rng=0, solver="randomized")]
    np.testing.assert_allclose(R[1], s[:10], rtol=1e-6)
    called = []
    monkeypatch.setattr(svd_module, "_full_svd", lambda *a, **k: called.append(1))
    randla.block_krylov_svd(A0, 10, p=2, q=2, rng=0)  # 3 * 12 < 40: randomized
    assert not called
    with pytest.raises(ValueError, match="solver must be one of"):
        randla.block_krylov_svd(A0, 10, solver="lapack")


def test_bad_solver():
    with pytest.raises(ValueError, match="solver must be one of"):
        randla.rsi(np.ones((5, 4)), 2, solver="lapack")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_randomized_path_degenerate_input(backend, dtype):
    """Zero matrix, rank below k and extreme scales on the randomized path itself
    (the size-aware dispatch would send these small cases to the exact SVD)."""
    tol = 1e-5 if dtype == "float32" else 1e-10
    A = backend.asarray(np.zeros((30, 20), dtype=dtype))
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(A, 6, rng=0, solver="randomized"))
    np.testing.assert_array_equal(S, 0)
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=tol)
    A0, s = matrix(40, 30, spectrum="low_rank", rank=3, dtype=dtype, rng=0)
    U, S, Vh = (backend.to_numpy(x) for x in randla.rsi(backend.asarray(A0), 6, rng=0, solver="randomized"))
    np.testing.assert_allclose(S[:3], s[:3], rtol=tol)
    assert np.all(S[3:] < tol * s[0])
    np.testing.assert_allclose(U.T @ U, np.eye(6), atol=tol)
    np.testing.assert_allclose((U * S) @ Vh, A0, atol=tol * s[0])
    A0, s = matrix(40, 30, spectrum="exponential", decay=0.3, dtype=dtype, rng=0)
    for scale in ((1e-18, 1e18) if dtype == "float32" else (1e-150, 1e150)):
        A = backend.asarray(A0 * np.asarray(scale, dtype=dtype))
        S = backend.to_numpy(randla.rsi(A, 4, rng=0, solver="randomized").S)
        np.testing.assert_allclose(S, s[:4] * scale, rtol=1e-4 if dtype == "float32" else 1e-8)


def test_jax_jit_stack():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    A0, s = _stack((3, 60, 40), "float64")
    f = jax.jit(lambda A: randla.rsi(A, 5, rng=0, check_finite=False, solver="randomized"))
    U, S, Vh = f(jnp.asarray(A0))
    assert U.shape == (3, 60, 5)
    np.testing.assert_allclose(np.asarray(S), s[:, :5], rtol=1e-6)


def test_fixed_accuracy_reads_values_of_a_tensor_that_requires_grad():
    """The loops read norms as Python floats; from a tensor that requires grad that
    warned (an error under -W error)."""
    torch = pytest.importorskip("torch")
    A0, s = matrix(60, 40, spectrum="exponential", rng=0)
    A = torch.from_numpy(A0).requires_grad_()
    for norm in ("fro", "2"):
        Q = randla.adaptive_range_finder(A, 1e-3, norm=norm, rng=0)
        ref = randla.adaptive_range_finder(torch.from_numpy(A0), 1e-3, norm=norm, rng=0)
        assert Q.shape == ref.shape
        torch.testing.assert_close(Q.detach(), ref)


def test_a_stack_member_keeps_its_product_next_to_a_rank_deficient_one():
    """The route of a stack is decided for all its matrices: with a rank-3 neighbour,
    A0's basis vectors may flip sign (documented), but its spans, singular values and
    U S Vh are those of the unbatched call."""
    gen = np.random.default_rng(0)
    A0 = gen.standard_normal((60, 40))
    A1 = gen.standard_normal((60, 3)) @ gen.standard_normal((3, 40))
    k = 8
    for f in (randla.rsi, randla.rsvd):
        U, S, Vh = f(np.stack([A0, A1]), k, rng=0, **({"solver": "randomized"} if f is randla.rsi else {}))
        u, s, vh = f(A0, k, rng=0, **({"solver": "randomized"} if f is randla.rsi else {}))
        np.testing.assert_allclose(S[0], s, rtol=1e-12)
        np.testing.assert_allclose((U[0] * S[0]) @ Vh[0], (u * s) @ vh, atol=1e-12)
    Q = randla.range_finder(np.stack([A0, A1]), k, q=1, rng=0)
    q = randla.range_finder(A0, k, q=1, rng=0)
    np.testing.assert_allclose(Q[0] @ Q[0].T, q @ q.T, atol=1e-12)


def test_rsvd_rtol_just_below_one_keeps_a_nonzero_matrix(backend):
    """``rtol = 1 - 1e-16`` on a nonzero float32 ``A``: ``rtol^2 ||A||_F^2`` rounds up to
    ``||A||_F^2``, and the cut kept nothing (rank 0, error ``||A||_F > rtol ||A||_F``)."""
    if backend.lazy:
        pytest.skip("the tolerance-driven path reads values")
    rng = np.random.default_rng(0)
    V, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    A0 = rng.standard_normal((40, 30)) @ np.diag(np.logspace(0, -6, 30)) @ V
    U, S, Vh = randla.rsvd(backend.asarray(A0.astype(np.float32)), rtol=1 - 1e-16, rng=0)
    assert S.shape[0] >= 1
