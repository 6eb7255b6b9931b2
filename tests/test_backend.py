"""The backend layer: primitives the standard lacks, RNG, validation rules."""

from __future__ import annotations

import numpy as np
import pytest

import randla
from randla import _backend as B
from randla import _validate as V
from randla.testing import matrix


@pytest.mark.parametrize("lower", [True, False])
@pytest.mark.parametrize("left", [True, False])
def test_solve_triangular(backend, lower, left):
    rng = np.random.default_rng(0)
    T = np.tril(rng.standard_normal((6, 6))) + 4 * np.eye(6)
    T = T if lower else T.T
    T_noisy = T + (np.triu(np.ones((6, 6)), 1) if lower else np.tril(np.ones((6, 6)), -1))  # ignored half
    Bm = rng.standard_normal((6, 3)) if left else rng.standard_normal((3, 6))
    X = B.solve_triangular(backend.asarray(T_noisy), backend.asarray(Bm), lower=lower, left=left)
    X = backend.to_numpy(X)
    np.testing.assert_allclose(T @ X if left else X @ T, Bm, atol=1e-12)


def test_lu(backend):
    A0 = matrix(12, 5, dtype="float64", rng=0).A
    PL, U = B.lu(backend.asarray(A0))
    PL, U = backend.to_numpy(PL), backend.to_numpy(U)
    np.testing.assert_allclose(PL @ U, A0, atol=1e-12)
    np.testing.assert_array_equal(np.triu(U), U)
    assert np.abs(PL).max() <= 1 + 1e-12  # partial pivoting bounds the multipliers
    # PL is a row permutation of a unit lower-trapezoidal matrix
    rows = np.argmax(np.abs(PL) == 1.0, axis=0)
    assert len(set(rows.tolist())) == 5


def test_lu_fallback_matches_scipy():
    import scipy.linalg

    A0 = matrix(9, 4, rng=2).A
    PL, U = B._lu_fallback(A0, B.namespace(A0))
    pl_ref, u_ref = scipy.linalg.lu(A0, permute_l=True)
    np.testing.assert_allclose(PL, pl_ref, atol=1e-12)
    np.testing.assert_allclose(U, u_ref, atol=1e-12)


def test_cholesky_upper_and_lower(backend):
    G0 = np.array([[4.0, 2 + 1j], [2 - 1j, 3.0]])
    G = backend.asarray(G0)
    R = backend.to_numpy(B.cholesky(G, upper=True))
    L = backend.to_numpy(B.cholesky(G, upper=False))
    np.testing.assert_allclose(R.conj().T @ R, G0, atol=1e-12)
    np.testing.assert_allclose(L @ L.conj().T, G0, atol=1e-12)
    np.testing.assert_allclose(np.triu(R), R)
    np.testing.assert_allclose(np.tril(L), L)


def test_qr_pivoted(backend):
    A0 = matrix(10, 7, spectrum="exponential", decay=0.5, rng=0).A
    Q, R, perm = B.qr_pivoted(backend.asarray(A0))
    Q, R, perm = (backend.to_numpy(x) for x in (Q, R, perm))
    np.testing.assert_allclose(A0[:, perm], Q @ R, atol=1e-12)
    assert sorted(perm.tolist()) == list(range(7))
    assert np.all(np.diff(np.abs(np.diag(R))) <= 1e-12)


def test_rng_is_native_and_reproducible(backend):
    like = backend.asarray(np.zeros((1, 1)))
    a = B.normal((5, 3), xp=backend.xp, dtype=backend.xp.float64, device=B.device(like), rng=4)
    assert type(a) is type(like) and a.dtype == backend.xp.float64
    b = B.normal((5, 3), xp=backend.xp, dtype=backend.xp.float64, device=B.device(like), rng=4)
    np.testing.assert_array_equal(backend.to_numpy(a), backend.to_numpy(b))
    c = B.normal((5, 3), xp=backend.xp, dtype=backend.xp.float64, device=B.device(like), rng=5)
    assert not np.array_equal(backend.to_numpy(a), backend.to_numpy(c))
    i = B.integers(7, (100,), xp=backend.xp, device=B.device(like), rng=0)
    i = backend.to_numpy(i)
    assert i.min() >= 0 and i.max() < 7


def test_generator_advances():
    g = np.random.default_rng(0)
    a = B.normal((3,), xp=B.namespace(np.zeros(1)), dtype=np.float64, device="cpu", rng=g)
    b = B.normal((3,), xp=B.namespace(np.zeros(1)), dtype=np.float64, device="cpu", rng=g)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("bad", [1.5, "x", True, np.random.RandomState(0)])
def test_bad_rng(bad):
    with pytest.raises(TypeError, match="rng must be"):
        B.as_generator(bad)


def test_negative_seed_names_rng():
    with pytest.raises(ValueError, match="rng must be a non-negative int seed, got -1"):
        B.as_generator(-1)


def test_mH_and_at_set(backend):
    x0 = np.array([[1 + 2j, 3], [4, 5j]])
    x = backend.asarray(x0)
    np.testing.assert_array_equal(backend.to_numpy(B.mH(x)), x0.conj().T)
    y = B.at_set(x, (0, 1), 7)
    assert backend.to_numpy(y)[0, 1] == 7
    np.testing.assert_array_equal(backend.to_numpy(x), x0)  # never in place


def test_dtype_rule(backend):
    xp = backend.xp
    A, xp2 = V.as_matrix(backend.asarray(np.ones((3, 2), dtype=np.int32)))
    assert A.dtype == xp.float64
    A, _ = V.as_matrix(backend.asarray(np.ones((3, 2), dtype=np.complex64)))
    assert A.dtype == xp.complex64


def test_check_helpers():
    assert V.check_rank(3, (5, 4)) == 3
    assert V.check_rank(np.int64(2), (5, 4)) == 2
    with pytest.raises(ValueError, match="1 <= k <= min"):
        V.check_rank(5, (5, 4))
    assert V.check_rtol(0.1) == 0.1
    for bad in ("a", "0.1", True):  # a numeric string was accepted
        with pytest.raises(TypeError, match="rtol must be a float"):
            V.check_rtol(bad)
    with pytest.raises(ValueError, match="rtol must be in"):
        V.check_rtol(0.0)


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("shape", [(40, 7), (3, 40, 7), (2, 2, 12, 5)])
def test_rdiv_upper(backend, dtype, shape):
    """``Y R^{-1}`` for a stack of well-conditioned upper-triangular ``R`` (Cholesky factors)."""
    if backend.name == "dask" and len(shape) > 2:
        pytest.skip("Dask input is 2-D only")
    rng = np.random.default_rng(0)
    Y0 = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        Y0 = Y0 + 1j * rng.standard_normal(shape)
    Y0 = Y0.astype(dtype)
    Yw = Y0.astype(np.complex128 if dtype.startswith("complex") else np.float64)
    R0 = np.swapaxes(np.linalg.cholesky(np.swapaxes(Yw, -1, -2).conj() @ Yw), -1, -2).conj()
    X = backend.to_numpy(B.rdiv_upper(backend.asarray(Y0), backend.asarray(R0)))
    assert X.shape == Y0.shape and X.dtype == Y0.dtype
    # Y R^{-1} has orthonormal columns when R is the Cholesky factor of Y^H Y
    G = np.swapaxes(X, -1, -2).conj() @ X
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(G, np.broadcast_to(np.eye(shape[-1]), G.shape), atol=tol)


def test_rdiv_upper_large_panel_takes_the_inverse_route(monkeypatch):
    """Both NumPy routes (one TRSM; trtri + GEMM beyond the size limit) agree."""
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((2, 60, 9)).astype(np.float32)
    Yw = Y.astype(np.float64)
    R = np.swapaxes(np.linalg.cholesky(np.swapaxes(Yw, -1, -2) @ Yw), -1, -2)
    small = B.rdiv_upper(Y, R)
    monkeypatch.setattr(B, "_TRSM_MAX_FLOPS", 0)
    large = B.rdiv_upper(Y, R)
    np.testing.assert_allclose(large, small, atol=1e-5)


def test_single_threaded_blas_restores_and_nests():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import scipy.linalg  # noqa: F401  (its BLAS is listed too)

    before = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
              if lib["user_api"] == "blas"}
    with B.scipy_blas_single_threaded():
        with B.single_threaded_blas():
            with B.single_threaded_blas():
                inside = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                          if lib["user_api"] == "blas"}
    after = {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info()
             if lib["user_api"] == "blas"}
    assert all(n == 1 for n in inside.values())
    assert after == before


def test_svd_of_a_stack(backend):
    A0 = np.random.default_rng(0).standard_normal((2, 3, 9, 6)).astype(np.float32)
    A = backend.asarray(A0)
    if backend.name == "dask":
        pytest.skip("Dask's SVD is 2-D")
    U, S, Vh = (backend.to_numpy(x) for x in B.svd(A))
    assert U.shape == (2, 3, 9, 6) and S.shape == (2, 3, 6) and Vh.shape == (2, 3, 6, 6)
    np.testing.assert_allclose(S, np.linalg.svd(A0, compute_uv=False), rtol=1e-5)
    np.testing.assert_allclose((U * S[..., None, :]) @ Vh, A0, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_try_cholesky_of_a_stack(backend, dtype):
    """Matrix by matrix: the factors of a positive definite stack, ``None`` as soon as one
    matrix is not positive definite."""
    if backend.name == "dask":
        pytest.skip("Dask input is 2-D only")
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((2, 3, 30, 8))
    if dtype.startswith("complex"):
        Y = Y + 1j * rng.standard_normal(Y.shape)
    G0 = (np.swapaxes(Y, -1, -2).conj() @ Y).astype(dtype)
    R = backend.to_numpy(B.try_cholesky(backend.asarray(G0)))
    assert R.shape == G0.shape and R.dtype == G0.dtype
    np.testing.assert_array_equal(np.tril(R, -1), 0)
    tol = 1e-4 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.swapaxes(R, -1, -2).conj() @ R, G0, rtol=0, atol=tol * np.abs(G0).max())
    bad = G0.copy()
    bad[1, 2, 3, 3] = -1.0  # one indefinite matrix in the stack
    assert B.try_cholesky(backend.asarray(bad)) is None


def test_jax_with_float64_off_as_by_default():
    """JAX's default configuration has no float64: the kernels' float64 Gram matrices of
    float32 data were truncated to float32 (with a warning) and rsi, rsvd with power
    steps, block Krylov and range_finder returned NaN for ordinary decaying spectra."""
    jax = pytest.importorskip("jax")
    A, _ = matrix(300, 200, spectrum="exponential", decay=0.2, rng=0)
    A = np.asarray(A, dtype=np.float32)
    calls = {"rsi": lambda X: randla.rsi(X, 10, rng=0).S, "rsvd": lambda X: randla.rsvd(X, 10, q=1, rng=0).S,
             "block_krylov_svd": lambda X: randla.block_krylov_svd(X, 10, rng=0).S,
             "spectral_norm": lambda X: randla.spectral_norm(X, rng=0)}
    with jax.enable_x64(False):
        J = jax.numpy.asarray(A)
        assert J.dtype == jax.numpy.float32
        for name, call in calls.items():
            got = call(J)
            assert got.dtype == jax.numpy.float32, name
            np.testing.assert_allclose(np.asarray(got), np.asarray(call(A)), rtol=1e-5, err_msg=name)
        Q = np.asarray(randla.range_finder(J, 10, q=2, rng=0))
        assert np.isfinite(Q).all() and np.allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-5)
        assert not jax.config.read("jax_enable_x64")


def test_jax_integer_input_with_float64_off_gives_float32():
    """Integer input is promoted to the float the caller's JAX makes: float32 with
    float64 off (it came back float64, which the caller's JAX truncates with a warning
    at every use)."""
    jax = pytest.importorskip("jax")
    with jax.enable_x64(False):
        A = jax.numpy.arange(12).reshape(4, 3)
        U, S, Vh = randla.rsvd(A, 2, rng=0)
        assert U.dtype == S.dtype == Vh.dtype == jax.numpy.float32
        np.testing.assert_allclose(np.asarray((U * S) @ Vh), np.arange(12.0).reshape(4, 3), atol=1e-4)
        Q, R, _ = randla.cpqr(jax.numpy.ones((4, 3), dtype=bool))
        assert Q.dtype == R.dtype == jax.numpy.float32
        assert not jax.config.read("jax_enable_x64")


@pytest.mark.parametrize("call", [
    lambda A: randla.estimate_rank(A, 1e-3, rng=0),
    lambda A: randla.rsvd(A, rtol=1e-3, rng=0),
    lambda A: randla.adaptive_range_finder(A, 1e-3, rng=0),
    lambda A: randla.rcpqr(A, 5, rng=0),
], ids=["estimate_rank", "rsvd_rtol", "adaptive_range_finder", "rcpqr"])
def test_kernels_that_interleave_numpy_and_scipy_hold_scipys_pool(monkeypatch, call):
    """The searches to a tolerance and the randomized QRCP run with SciPy's BLAS pool on
    one thread for the whole call, as the fixed-rank SVDs do (two busy cores:
    estimate_rank of a 2000 x 1000 matrix 3.0x, rsvd(rtol) 2.4x and rcpqr of a
    300 x 300 float32 one 1.4-2.3x as fast as with both pools threaded)."""
    entered = []
    scope = B.scipy_blas_single_threaded

    def spy(like=None):
        entered.append(like)
        return scope(like)

    monkeypatch.setattr(B, "scipy_blas_single_threaded", spy)
    A = np.random.default_rng(0).standard_normal((60, 40))
    call(A)
    assert entered and entered[0] is A


def test_products_of_a_complex_matrix_do_not_copy_it(backend):
    """``A^H X`` for complex ``A`` is ``conj(A^T conj(X))``: the adjoint product is exact and, on
    NumPy, allocates about the thin blocks only (a conjugated copy of ``A`` made
    ``rsi`` of a complex64 8192 x 4096 matrix peak at 1.13x ``A`` more memory, now 0.13x)."""
    import tracemalloc

    rng = np.random.default_rng(3)
    A0 = (rng.standard_normal((1024, 512)) + 1j * rng.standard_normal((1024, 512))).astype(np.complex64)
    X0 = (rng.standard_normal((1024, 8)) + 1j * rng.standard_normal((1024, 8))).astype(np.complex64)
    A, X = backend.asarray(A0), backend.asarray(X0)
    matmat, rmatmat = B.products(A)
    want = A0.astype(np.complex128).conj().T @ X0.astype(np.complex128)
    np.testing.assert_allclose(backend.to_numpy(rmatmat(X)), want, rtol=0, atol=1e-4 * np.abs(want).max())
    if backend.name == "numpy":
        tracemalloc.start()
        try:
            B.products(A0)[1](X0)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.1 * A0.nbytes


def test_scipy_operands_compute_in_the_array_api_numpy_namespace():
    """Sparse and ``LinearOperator`` input run in array_api_compat's NumPy namespace, as a
    dense NumPy ``A`` does. With NumPy's own, ``spectral_norm`` and ``estimate_rank`` of
    such input raised ``TypeError`` on NumPy 2.0 (its ``np.astype`` refuses the NumPy
    scalars that reductions return; 2.1 accepts them)."""
    import scipy.sparse
    import scipy.sparse.linalg as spla

    A0 = np.random.default_rng(0).standard_normal((50, 30))
    for A in (scipy.sparse.csr_array(A0), spla.aslinearoperator(A0)):
        op = V.as_operand(A)
        assert op.xp is B.namespace(A0)
        np.testing.assert_allclose(randla.spectral_norm(A, rng=0), np.linalg.norm(A0, 2), rtol=1e-6)


def test_a_randla_call_leaves_other_threads_free_to_limit_blas():
    """threadpoolctl (3.8 and later) lets only one thread at a time set a process-wide
    OpenBLAS pool, until its scopes end: randla's scopes hand that control back, so
    a worker thread's ``threadpool_limits(1)`` still takes effect after a call (it
    silently did nothing: the main thread kept control for good)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    import threading

    def limited_in_a_thread():
        seen = []

        def run():
            with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
                seen.extend(lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                            if lib["user_api"] == "blas")

        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
        return seen

    randla.rsi(np.random.default_rng(0).standard_normal((300, 200)), 10, rng=0)
    randla.rsi(np.random.default_rng(0).standard_normal((8, 200, 150)).astype(np.float32), 60, rng=0)
    seen = limited_in_a_thread()
    assert seen and set(seen) == {1}
