"""Every kernel gives the same answer, up to scale, on a scaled problem.

A matrix times ``1e200`` or ``1e-200`` (float64), ``1e30`` or ``1e-30`` (float32) is the
same problem; so is one whose columns differ in norm by many orders of magnitude. The
reference is the unscaled run on the same backend: the normalized errors (``1`` is
optimal) must agree, and must stay within each method's known bound. Squared norms,
Gram matrices and unguarded sums over/underflow long before such data does.
"""

from __future__ import annotations

import numpy as np
import pytest

import randla
from randla.testing import matrix

# (dtype, scale): both ends of each dtype's range, and 1 as the reference
SCALES = [("float64", 1e200), ("float64", 1e-200), ("float32", 1e30), ("float32", 1e-30)]
K = 5


def _problem(dtype, *, columns=False):
    """A 40 x 30 matrix with sigma_i = 1/i; ``columns``: its columns rescaled by
    10^U(-6, 6) (float64) or 10^U(-3, 3) (float32), a graded but well-posed problem."""
    A, _ = matrix(40, 30, spectrum="polynomial", decay=1.0, rng=0)
    if columns:
        spread = 6 if dtype == "float64" else 3
        A = A * 10.0 ** np.random.default_rng(1).uniform(-spread, spread, 30)[None, :]
    return A


def _cases(columns=False):
    """``(dtype, scale, A0, s)``: ``A0`` float64 unscaled, ``s`` its singular values."""
    for dtype, scale in SCALES:
        A0 = _problem(dtype, columns=columns)
        yield dtype, scale, A0, np.linalg.svd(A0, compute_uv=False)


def _scaled(backend, A0, dtype, scale):
    return backend.asarray((A0 * scale).astype(dtype))


def _err(A0, approx_over_scale, s, k=K):
    return np.linalg.norm(A0 - approx_over_scale, 2) / s[k]


def _same(got, ref, dtype):
    """Normalized errors agree: a rescaled problem may round differently, not worse."""
    tol = 1e-6 if dtype == "float64" else 2e-2
    assert abs(got - ref) <= tol * max(ref, 1.0), (got, ref)


def _check_equivariant(backend, columns, run, error, bound):
    """``error(backend, run(A), A0, s, scale)`` is the same for ``A0`` and ``A0 * scale``
    and below ``bound``, for every (dtype, scale) case."""
    for dtype, scale, A0, s in _cases(columns):
        ref = error(backend, run(backend.asarray(A0.astype(dtype))), A0, s, 1.0)
        got = error(backend, run(_scaled(backend, A0, dtype, scale)), A0, s, scale)
        _same(got, ref, dtype)
        assert got < bound


def _svd_error(backend, res, A0, s, scale):
    U, S, Vh = (np.asarray(backend.to_numpy(x), dtype=np.complex128 if np.iscomplexobj(backend.to_numpy(x))
                           else np.float64) for x in res)
    assert np.all(np.isfinite(U)) and np.all(np.isfinite(S)) and np.all(np.isfinite(Vh))
    return _err(A0, (U * (S / scale)) @ Vh, s)


SVDS = {
    "rsvd": lambda A: randla.rsvd(A, K, rng=0),
    "rsvd_q2_lu": lambda A: randla.rsvd(A, K, q=2, stabilizer="lu", rng=0),
    "rsvd_q1_none": lambda A: randla.rsvd(A, K, q=1, stabilizer="none", rng=0),
    "rsi": lambda A: randla.rsi(A, K, rng=0),
    "rsi_qr": lambda A: randla.rsi(A, K, stabilizer="qr", rng=0),
    "block_krylov": lambda A: randla.block_krylov_svd(A, K, q=1, rng=0),
}


@pytest.mark.parametrize("columns", [False, True], ids=["uniform", "graded_columns"])
@pytest.mark.parametrize("method", list(SVDS))
def test_svd_family(backend, method, columns):
    # bound: HMT Thm 10.6 at k = 5, p = 10 on sigma_i = 1/i is ~4
    _check_equivariant(backend, columns, SVDS[method], _svd_error, 10)


def _qr_error(backend, res, A0, s, scale, k=K):
    Q, R, perm = (backend.to_numpy(x) for x in res)
    perm = np.asarray(perm)
    assert sorted(perm.tolist()) == list(range(A0.shape[1]))
    Rk = np.asarray(R, dtype=np.float64)[:k] / scale
    return _err(A0[:, perm], np.asarray(Q, dtype=np.float64)[:, :k] @ Rk, s, k)


QRS = {
    "cpqr_partial": lambda A: randla.cpqr(A, K),
    "cpqr_full": lambda A: randla.cpqr(A),
    "rcpqr": lambda A: randla.rcpqr(A, K, rng=0),
    "srrqr": lambda A: randla.srrqr(A, K),
}


@pytest.mark.parametrize("columns", [False, True], ids=["uniform", "graded_columns"])
@pytest.mark.parametrize("method", list(QRS))
def test_pivoted_qr(backend, method, columns):
    _check_equivariant(backend, columns, QRS[method], _qr_error, 10)


def test_cpqr_pivots_are_not_the_identity(backend):
    # at 1e-200 every squared column norm underflowed to zero: the pivots came out 0, 1, 2, ...
    A0 = _problem("float64")[:, ::-1] * np.arange(1, 31)[None, :]  # the largest column last
    for dtype, scale in SCALES:
        perm = backend.to_numpy(randla.cpqr(_scaled(backend, A0, dtype, scale), K).perm)
        ref = backend.to_numpy(randla.cpqr(backend.asarray(A0.astype(dtype)), K).perm)
        np.testing.assert_array_equal(np.asarray(perm)[:K], np.asarray(ref)[:K])


def _id_error(backend, res, A0, s, axis):
    idx, T = (backend.to_numpy(x) for x in res)
    idx, T = np.asarray(idx), np.asarray(T, dtype=np.float64)
    approx = A0[:, idx] @ T if axis == 1 else T @ A0[idx, :]
    return _err(A0, approx, s)


@pytest.mark.parametrize("columns", [False, True], ids=["uniform", "graded_columns"])
@pytest.mark.parametrize(("method", "axis"), [("cpqr", 1), ("srrqr", 1), ("randomized", 1), ("cpqr", 0)])
def test_interp_decomp(backend, method, axis, columns):
    def run(A):
        return randla.interp_decomp(A, K, axis=axis, method=method, rng=0)

    def error(backend, res, A0, s, scale):
        return _id_error(backend, res, A0, s, axis)

    _check_equivariant(backend, columns, run, error, np.sqrt(1 + 4 * K * (30 - K)) * 4)


@pytest.mark.parametrize("method", randla.interpolative.SELECT_METHODS)
def test_column_select(backend, method):
    for dtype, scale, A0, s in _cases():
        def err(A, A0=A0, s=s):
            idx = np.asarray(backend.to_numpy(randla.column_select(A, K, method=method, rng=0)))
            C = A0[:, idx]
            return _err(A0, C @ np.linalg.lstsq(C, A0, rcond=None)[0], s)

        _same(err(_scaled(backend, A0, dtype, scale)), err(backend.asarray(A0.astype(dtype))), dtype)


def test_two_sided_id_and_cur(backend):
    for dtype, scale, A0, s in _cases():
        rows, cols, X, Z = (np.asarray(backend.to_numpy(x)) for x in randla.two_sided_id(_scaled(backend, A0, dtype,
                                                                                                    scale), K))
        assert _err(A0, X.astype(np.float64) @ A0[np.ix_(rows, cols)] @ Z.astype(np.float64), s) < 50
        rows, cols, U = (np.asarray(backend.to_numpy(x)) for x in randla.cur(_scaled(backend, A0, dtype, scale), K))
        assert _err(A0, A0[:, cols] @ (U.astype(np.float64) * scale) @ A0[rows, :], s) < 50


SLOW_ON_DASK = "eager loops recompute Dask's growing graph (minutes per case); the Dask paths are covered elsewhere"


@pytest.mark.skip_backend("dask", reason=SLOW_ON_DASK)
@pytest.mark.parametrize("norm", ["fro", "2"])
def test_adaptive_range_finder(backend, norm):
    for dtype, scale, A0, s in _cases():
        def rank_and_error(A, A0=A0):
            Q = np.asarray(backend.to_numpy(randla.adaptive_range_finder(A, 0.05, block_size=4, norm=norm, rng=0)),
                           dtype=np.float64)
            R = A0 - Q @ (Q.T @ A0)
            return Q.shape[1], np.linalg.norm(R, "fro" if norm == "fro" else 2)

        r_ref, e_ref = rank_and_error(backend.asarray(A0.astype(dtype)))
        r, e = rank_and_error(_scaled(backend, A0, dtype, scale))
        assert r == r_ref and r > 0
        bound = 0.05 * (np.linalg.norm(A0) if norm == "fro" else s[0])
        assert e <= bound * (1 + 1e-3)


@pytest.mark.skip_backend("dask", reason=SLOW_ON_DASK)
def test_rsvd_to_a_tolerance(backend):
    for dtype, scale, A0, _ in _cases():
        U, S, Vh = (np.asarray(backend.to_numpy(x)) for x in randla.rsvd(_scaled(backend, A0, dtype, scale),
                                                                          rtol=0.05, rng=0))
        approx = (U.astype(np.float64) * (S.astype(np.float64) / scale)) @ Vh.astype(np.float64)
        assert np.linalg.norm(A0 - approx) <= 0.05 * np.linalg.norm(A0) * (1 + 1e-3)


@pytest.mark.skip_backend("dask", reason=SLOW_ON_DASK)
def test_estimators(backend):
    for dtype, scale, A0, s in _cases():
        A = _scaled(backend, A0, dtype, scale)
        tol = 1e-5 if dtype == "float64" else 1e-3
        np.testing.assert_allclose(float(backend.to_numpy(randla.spectral_norm(A, rng=0))) / scale, s[0], rtol=tol)
        Q = randla.range_finder(A, K, rng=0)
        Qn = np.asarray(backend.to_numpy(Q), dtype=np.float64)
        bound = float(backend.to_numpy(randla.posterior_error_estimate(A, Q, rng=1))) / scale
        assert np.linalg.norm(A0 - Qn @ (Qn.T @ A0), 2) <= bound < np.inf
        U, S, Vh = np.linalg.svd(A0)
        args = [backend.asarray(x.astype(dtype)) for x in (U[:, :K], S[:K] * scale, Vh[:K])]
        err = randla.normalized_error(A, *args, method="lanczos", rng=0)
        np.testing.assert_allclose(err, 1.0, rtol=tol)


def test_sketch(backend):
    for dtype, scale, A0, _ in _cases():
        for method in randla.sketch.METHODS:
            Y = np.asarray(backend.to_numpy(randla.sketch.sketch(_scaled(backend, A0, dtype, scale), 8,
                                                                 method=method, rng=0)), dtype=np.float64)
            ref = np.asarray(backend.to_numpy(randla.sketch.sketch(backend.asarray(A0.astype(dtype)), 8,
                                                                   method=method, rng=0)), dtype=np.float64)
            np.testing.assert_allclose(Y / scale, ref, rtol=1e-4 if dtype == "float32" else 1e-10,
                                       atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("shape", [(7, 4), (4, 4), (3, 6)])
def test_qr_lq_adjoints(backend, shape):
    """``dA(Q, cR, dQ, c dR) = c dA(Q, R, dQ/c^2, dR)``: the gradient of ``||R||^2 / 2`` is
    ``A`` at every scale (it overflowed at 1e200 and vanished at 1e-200)."""
    A0 = np.random.default_rng(0).standard_normal(shape)
    for dtype, scale in SCALES:
        A = (A0 * scale).astype(dtype)
        Q, R = np.linalg.qr(A)
        tol = 1e-12 if dtype == "float64" else 1e-4
        for method in randla.adjoints.METHODS:
            dA = backend.to_numpy(randla.qr_vjp(backend.asarray(Q), backend.asarray(R), None, backend.asarray(R),
                                                method=method))
            np.testing.assert_allclose(np.asarray(dA, dtype=np.float64) / scale, A0, atol=tol * 10)
            L, Qt = R.T, Q.T
            dA = backend.to_numpy(randla.lq_vjp(backend.asarray(L), backend.asarray(Qt), backend.asarray(L), None,
                                                method=method))
            np.testing.assert_allclose(np.asarray(dA, dtype=np.float64).T / scale, A0, atol=tol * 10)
        dQ, dR = (backend.to_numpy(x) for x in randla.qr_jvp(backend.asarray(Q), backend.asarray(R),
                                                              backend.asarray(A)))
        np.testing.assert_allclose(np.asarray(dR, dtype=np.float64) / scale, np.asarray(R, dtype=np.float64) / scale,
                                   atol=tol * 10)
        assert np.abs(np.asarray(dQ, dtype=np.float64)).max() < tol * 100


# ----------------------------------------------------------------------------------
# beyond the normal range: every entry subnormal; singular values above the dtype's max
# ----------------------------------------------------------------------------------

_SUBNORMAL = [("float32", 1e-40), ("float64", 1e-310)]


def _as(lib, X):
    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(X)
    return X


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize(("dtype", "scale"), _SUBNORMAL)
def test_subnormal_matrices(lib, dtype, scale):
    """A matrix whose entries are all subnormal is still the same problem: the SVD
    family's reciprocals of its singular values overflowed (float32: warnings, Inf in
    ``Vh``, eigh failures) and the ID's triangular solve gave NaN."""
    A0 = _problem(dtype) / np.abs(_problem(dtype)).max()
    s = np.linalg.svd(A0, compute_uv=False)
    A = _as(lib, (A0 * scale).astype(dtype))
    assert np.abs(np.asarray(A)).max() < np.finfo(dtype).smallest_normal
    for name in ("rsvd", "rsi", "block_krylov"):
        res = [np.asarray(x) for x in SVDS[name](A)]
        assert all(np.isfinite(x).all() for x in res), name
        err = np.linalg.norm(A0 - (res[0] * (res[1] / scale)) @ res[2], 2) / s[K]
        assert err < 2.0, (name, err)  # as at unit scale (normalized error ~1)
    for method in ("cpqr", "srrqr", "randomized"):  # randomized: rcpqr's sketch became Inf
        idx, T = randla.interp_decomp(A, K, method=method, rng=0)
        idx, T = np.asarray(idx), np.asarray(T, dtype=np.float64)
        assert np.isfinite(T).all()
        assert np.linalg.norm(A0 - A0[:, idx] @ T, 2) < 30 * s[K]


@pytest.mark.parametrize("method", ["rsvd", "rsi", "block_krylov"])
def test_singular_values_above_the_dtype_range_are_an_error(method):
    """Finite float32 data whose singular values exceed float32's range: the randomized
    paths warned and returned Inf; now the exact path's error."""
    A = np.full((60, 40), 1e37, dtype=np.float32)  # sigma_1 = 4.9e38
    with pytest.raises(ValueError, match="singular values overflow"):
        SVDS[method](A)


@pytest.mark.parametrize("method", ["rsvd", "rsi", "block_krylov"])
def test_float64_singular_values_above_the_range_are_an_error(method):
    """The same in float64 (full rank: the certified Cholesky-QR route, whose ``R`` was
    scaled back before its SVD): an overflow warning and LAPACK's "SVD did not
    converge"; just inside the range the values are those at unit scale."""
    gen = np.random.default_rng(0)
    U, _ = np.linalg.qr(gen.standard_normal((400, 60)))
    V, _ = np.linalg.qr(gen.standard_normal((300, 60)))
    A = (U * 0.7 ** np.arange(60)) @ V.T
    A /= np.abs(A).max()  # sigma_1 = 37: the sketch stays finite where sigma_1 does not
    with pytest.raises(ValueError, match="singular values overflow float64"):
        SVDS[method](A * 1e307)
    S = np.asarray(SVDS[method](A * 2.0**1017)[1])  # 1.4e306: as at unit scale
    np.testing.assert_allclose(S / 2.0**1017, np.asarray(SVDS[method](A)[1]), rtol=1e-12)


def test_norms_above_the_dtype_range_are_an_error():
    """The same for the tolerance-driven rsvd (returned S = [inf]) and spectral_norm
    (an overflow warning and Inf)."""
    A = np.full((60, 40), 1e37, dtype=np.float32)
    with pytest.raises(ValueError, match="singular values overflow"):
        randla.rsvd(A, rtol=0.1, rng=0)
    with pytest.raises(ValueError, match="norm overflows"):
        randla.spectral_norm(A, rng=0)
    np.testing.assert_allclose(float(randla.spectral_norm(A / 10, rng=0)), np.sqrt(2400) * 1e36, rtol=1e-5)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_column_norms_above_the_dtype_range(lib, dtype):
    """Finite entries whose column norms exceed the dtype: the ID is scale-free and stays
    exact (it returned zero weights: error 1-2 times A); the pivoted QRs, whose R cannot
    be represented, raise (returned Inf or NaN in R)."""
    X = np.array([[1.0, 0.0, 1.0], [1.0, 1.0, 2.0], [1.0, -1.0, 0.0], [1.0, 1.0, 2.0]])  # rank 2
    big = 0.4 * np.finfo(dtype).max
    A = X.astype(dtype) * np.asarray(big, dtype=dtype)
    if lib == "torch":
        torch = pytest.importorskip("torch")
        A = torch.from_numpy(A)
    for method in ("cpqr", "srrqr", "randomized"):
        idx, T = randla.interp_decomp(A, 2, method=method, rng=0)
        idx, T = np.asarray(idx), np.asarray(T, dtype=np.float64)
        assert np.abs(X - X[:, idx] @ T).max() <= 1e-5
    for qr in (lambda: randla.cpqr(A, 2), lambda: randla.srrqr(A, 2), lambda: randla.rcpqr(A, 2, rng=0)):
        with pytest.raises(ValueError, match="R overflows"):
            qr()


def test_cpqr_rtol_where_column_norms_overflow(backend):
    """Finite float64 entries, one column's norm near 1e309: with ``rtol`` too, the
    "R overflows" error (was a bare IndexError and an overflow warning from LAPACK's
    Inf in R on NumPy; on JAX, A / 2^1023 is A times a subnormal reciprocal that XLA
    flushes to zero, and R came out 0)."""
    A = np.random.default_rng(0).standard_normal((50, 30)) * 1e307
    A[:, 3] = 1.5e308
    for rtol in (None, 1e-4):
        with pytest.raises(ValueError, match="R overflows"):
            randla.cpqr(backend.asarray(A), rtol=rtol)


@pytest.mark.skip_backend("jax", reason="XLA flushes subnormal numbers to zero")
def test_cpqr_rtol_on_subnormal_single_precision(backend):
    """A rank-6 float32 matrix at 2^-140 (subnormal entries): ``rtol`` finds the rank of
    the same, exactly rescaled, values at unit scale (LAPACK's geqp3 ran in subnormal
    arithmetic and gave rank 22 at rtol 1e-3)."""
    rng = np.random.default_rng(0)
    A0 = rng.standard_normal((50, 6)) @ np.diag(np.logspace(0, -2, 6)) @ rng.standard_normal((6, 30))
    A = (A0 * 2.0**-70 * 2.0**-70).astype(np.float32)
    unit = (A.astype(np.float64) * 2.0**140).astype(np.float32)  # exact
    for rtol in (1e-3, 1e-4):
        k = randla.cpqr(backend.asarray(A), rtol=rtol).R.shape[0]
        assert k == randla.cpqr(backend.asarray(unit), rtol=rtol).R.shape[0]
    assert randla.cpqr(backend.asarray(A), rtol=1e-3).R.shape[0] == 6


@pytest.mark.skip_backend("jax", reason="XLA flushes subnormal numbers to zero")
def test_rank_to_a_tolerance_on_subnormal_single_precision(backend):
    """A rank-6 float32 matrix at 2^-140: the tolerance-driven kernels find the rank of
    the same values at unit scale (products formed in subnormal arithmetic kept a few
    bits: rsvd rank 30 with error 2.8e-3 at rtol 1e-3, estimate_rank 29,
    adaptive_range_finder 30)."""
    rng = np.random.default_rng(0)
    A0 = rng.standard_normal((50, 6)) @ np.diag(np.logspace(0, -2, 6)) @ rng.standard_normal((6, 30))
    A = (A0 * 2.0**-70 * 2.0**-70).astype(np.float32)
    Au = A.astype(np.float64) * 2.0**140  # exact
    Ab = backend.asarray(A)
    U, S, Vh = (backend.to_numpy(x).astype(np.float64) for x in randla.rsvd(Ab, rtol=1e-3, rng=0))
    assert S.size == 6
    assert np.linalg.norm(Au - (U * (S * 2.0**140)) @ Vh) <= 1e-3 * np.linalg.norm(Au)
    assert randla.estimate_rank(Ab, 1e-3, rng=0) == 6
    assert randla.adaptive_range_finder(Ab, 1e-3, rng=0).shape[1] == 6
