"""Invariants of cpqr, rcpqr and srrqr on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg as sl

import randla
from randla.qr import cpqr, rcpqr, srrqr
from randla.testing import kahan, matrix

DTYPES = ["float64", "float32", "complex128"]


def _eps(dtype):
    return float(np.finfo(np.dtype(dtype)).eps)


def _tol(dtype, c=10.0):
    return c * _eps(dtype) ** 0.75


def _check_factorization(backend, A_np, res, k, dtype):
    """AP = QR on the selected columns, residual = trailing block, Q orthonormal, R triangular."""
    xp = backend.xp
    Q, R, perm = res
    assert B_namespace(Q) is B_namespace(R)
    Qn, Rn, pn = backend.to_numpy(Q), backend.to_numpy(R), backend.to_numpy(perm)
    m, n = A_np.shape
    assert Qn.shape == (m, k) and Rn.shape == (k, n) and pn.shape == (n,)
    assert Qn.dtype == np.dtype(dtype) and Rn.dtype == np.dtype(dtype)
    assert np.issubdtype(pn.dtype, np.integer)
    assert sorted(pn.tolist()) == list(range(n))
    assert np.array_equal(Rn[:, :k], np.triu(Rn[:, :k]))
    nA = np.linalg.norm(A_np, 2)
    tol = _tol(dtype)
    assert np.linalg.norm(Qn.conj().T @ Qn - np.eye(k), 2) <= tol * math.sqrt(k)
    AP = A_np[:, pn]
    assert np.linalg.norm(AP[:, :k] - Qn @ Rn[:, :k], 2) <= tol * max(nA, np.finfo(np.float64).tiny)
    # the unfactored block is orthogonal to Q: R holds Q^H A exactly
    assert np.linalg.norm(Qn.conj().T @ AP - Rn, 2) <= tol * max(nA, 1e-300)
    del xp
    return Qn, Rn, pn


def B_namespace(x):
    from randla._backend import namespace

    return namespace(x)


def _mat(m, n, dtype, spectrum="exponential", rng=0, **kw):
    A, s = matrix(m, n, spectrum=spectrum, dtype=dtype, rng=rng, **kw)
    return A, np.asarray(s, dtype=np.float64)


# ----------------------------------------------------------------------------------
# cpqr
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "k"), [("float64", None), ("complex128", None), ("float64", 6),
                                         ("float32", 6), ("complex128", 6)])
def test_cpqr_invariants(backend, dtype, k):
    A_np, s = _mat(30, 22, dtype, decay=0.2)
    A = backend.asarray(A_np)
    res = cpqr(A, k)
    kk = 22 if k is None else k
    Qn, Rn, pn = _check_factorization(backend, A_np, res, kk, dtype)
    assert B_namespace(res.Q) is B_namespace(A)
    if k is None:
        assert np.linalg.norm(A_np[:, pn] - Qn @ Rn, 2) <= _tol(dtype) * s[0]
    else:
        # the rank-k residual is within a modest factor of the optimum
        err = np.linalg.norm(A_np[:, pn] - Qn @ Rn, 2)
        assert err <= math.sqrt(kk * (22 - kk) + 1) * 2 ** kk * s[kk]
        assert err >= s[kk] * (1 - 1e-3)
    # diagonal of R is non-increasing in modulus (greedy pivoting)
    d = np.abs(np.diag(Rn[:, :kk]))
    assert np.all(d[1:] <= d[:-1] * (1 + 1e-4))


def test_cpqr_pivots_agree_with_geqp3(backend):
    rng = np.random.default_rng(1)
    G = rng.standard_normal((40, 25))
    scales = 2.0 ** -np.arange(25)
    A_np = (G / np.linalg.norm(G, axis=0)) * scales
    A_np = A_np[:, rng.permutation(25)]
    _, _, p_ref = sl.qr(A_np, mode="economic", pivoting=True)
    for k in (8, None):
        perm = backend.to_numpy(cpqr(backend.asarray(A_np), k).perm)
        kk = 25 if k is None else k
        assert perm[:kk].tolist() == p_ref[:kk].tolist()


def test_cpqr_wide_and_rtol(backend):
    A_np, s = _mat(12, 30, "float64", spectrum="low_rank", rank=4)
    Q, R, perm = cpqr(backend.asarray(A_np), rtol=1e-10)
    Rn, pn = backend.to_numpy(R), backend.to_numpy(perm)
    assert Rn.shape == (4, 30)
    assert np.linalg.norm(A_np[:, pn] - backend.to_numpy(Q) @ Rn) <= 1e-10 * np.linalg.norm(A_np)


@pytest.mark.parametrize("k", [3, 6])
def test_cpqr_rank_deficient_and_zero(backend, k):
    A_np, _ = _mat(20, 15, "float64", spectrum="low_rank", rank=3)
    for M in (A_np, np.zeros((20, 15))):
        res = cpqr(backend.asarray(M), k)
        Qn, Rn, pn = _check_factorization(backend, M, res, k, "float64")
        assert np.all(np.isfinite(Rn))
        assert np.linalg.norm(M[:, pn] - Qn @ Rn, 2) <= 1e-12 * max(1.0, np.linalg.norm(M, 2))


def test_cpqr_portable_path_matches_geqp3_factorization():
    # NumPy partial path (k small) runs the portable loop; compare with geqp3
    A_np, _ = _mat(60, 50, "float64", decay=0.05)
    Q, R, perm = cpqr(A_np, 5)
    Q0, R0, p0 = sl.qr(A_np, mode="economic", pivoting=True)
    assert perm[:5].tolist() == p0[:5].tolist()
    assert np.allclose(np.abs(np.diag(R[:, :5])), np.abs(np.diag(R0))[:5], rtol=1e-10)


# ----------------------------------------------------------------------------------
# randomized CPQR
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_rcpqr_invariants(backend, dtype):
    A_np, s = _mat(40, 30, dtype, spectrum="polynomial", decay=2.0)
    k = 8
    res = rcpqr(backend.asarray(A_np), k, rng=3)
    Qn, Rn, pn = _check_factorization(backend, A_np, res, k, dtype)
    err = np.linalg.norm(A_np[:, pn] - Qn @ Rn, 2)
    assert err <= 10 * math.sqrt(k * (30 - k) + 1) * s[k]
    # diagonal of R comparable to geqp3's
    _, R0, _ = sl.qr(A_np, mode="economic", pivoting=True)
    ratio = np.abs(np.diag(Rn[:, :k])) / np.abs(np.diag(R0))[:k]
    assert ratio.min() >= 0.2


@pytest.mark.parametrize("candidates", [None, 8])
def test_rcpqr_rank_deficient_over_several_blocks(backend, candidates):
    """Blocks after the rank is exhausted have zero residuals: Q stays orthonormal
    (their Householder QR gave unit vectors that ignored the earlier blocks:
    ||Q^H Q - I||_F = 2.1, with A P = Q R still exact)."""
    A_np = np.zeros((80, 60))
    A_np[:, :2] = np.random.default_rng(0).standard_normal((80, 2))
    for M in (A_np, np.zeros((80, 60))):
        res = rcpqr(backend.asarray(M), 12, block_size=4, rng=0) if candidates is None else \
            _rcpqr_candidates(backend.asarray(M), 12, candidates)
        Qn, Rn, pn = (backend.to_numpy(x) for x in res)
        assert np.linalg.norm(Qn.T @ Qn - np.eye(12)) < 1e-10
        assert np.linalg.norm(M[:, pn] - Qn @ Rn) <= 1e-12 * max(1.0, np.linalg.norm(M))


def _rcpqr_candidates(A, k, candidates):
    from randla import _backend as B
    from randla.qr import _rcpqr

    return _rcpqr(A, B.namespace(A), k, 10, 0, 4, B.as_generator(0), candidates=candidates)


def test_rcpqr_blocked_full(backend):
    A_np, s = _mat(30, 24, "float64", decay=0.3)
    res = rcpqr(backend.asarray(A_np), block_size=9, p=4, rng=0)
    Qn, Rn, pn = _check_factorization(backend, A_np, res, 24, "float64")
    assert np.linalg.norm(A_np[:, pn] - Qn @ Rn, 2) <= _tol("float64") * s[0]


def test_rcpqr_seeded_reproducible(backend):
    A_np, _ = _mat(30, 25, "float64", spectrum="polynomial", decay=0.5)
    A = backend.asarray(A_np)
    p1 = backend.to_numpy(rcpqr(A, 6, rng=11).perm)
    p2 = backend.to_numpy(rcpqr(A, 6, rng=np.random.default_rng(11)).perm)
    assert p1.tolist() == p2.tolist()


def test_rcpqr_power_iteration_and_degenerate(backend):
    A_np, _ = _mat(25, 20, "float64", spectrum="low_rank", rank=3)
    for M in (A_np, np.zeros((25, 20))):
        res = rcpqr(backend.asarray(M), 6, q=1, rng=0)
        Qn, Rn, pn = _check_factorization(backend, M, res, 6, "float64")
        assert np.linalg.norm(M[:, pn] - Qn @ Rn, 2) <= 1e-12 * max(1.0, np.linalg.norm(M, 2))


# ----------------------------------------------------------------------------------
# strong RRQR
# ----------------------------------------------------------------------------------


def _srrqr_bounds(A_np, res_np, k, f, slack=1e-6):
    Qn, Rn, pn = res_np
    n = A_np.shape[1]
    s = np.linalg.svd(A_np, compute_uv=False)
    R11 = Rn[:, :k]
    W = np.linalg.solve(R11, Rn[:, k:])
    bound = math.sqrt(1 + f * f * k * (n - k))
    assert np.abs(W).max() <= f * (1 + slack)
    s11 = np.linalg.svd(R11, compute_uv=False)
    assert np.all(s11 >= s[:k] / bound * (1 - slack))
    E = A_np[:, pn] - Qn @ Rn  # = Q_perp R22
    s22 = np.linalg.svd(E, compute_uv=False)[: min(A_np.shape) - k]
    assert np.all(s22 <= s[k : k + s22.size] * bound * (1 + slack) + 1e-13 * s[0])


def test_srrqr_repairs_kahan(backend):
    n, k, f = 48, 47, 1.5
    K = kahan(n)
    res = srrqr(backend.asarray(K), k, f=f)
    res_np = _check_factorization(backend, K, res, k, "float64")
    _srrqr_bounds(K, res_np, k, f)
    s = np.linalg.svd(K, compute_uv=False)
    smin_srrqr = np.linalg.svd(res_np[1][:, :k], compute_uv=False)[-1]
    _, R0, _ = sl.qr(K, mode="economic", pivoting=True)
    smin_cpqr = np.linalg.svd(R0[:k, :k], compute_uv=False)[-1]
    assert smin_cpqr < 1e-4 * s[k - 1]  # CPQR misses the gap ...
    assert smin_srrqr >= 0.5 * s[k - 1]  # ... strong RRQR finds it


@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
def test_srrqr_bounds_random(backend, dtype):
    A_np, _ = _mat(30, 26, dtype, spectrum="polynomial", decay=1.0, rng=4)
    k, f = 7, 1.05  # f close to 1 forces swaps
    res = srrqr(backend.asarray(A_np), k, f=f)
    res_np = _check_factorization(backend, A_np, res, k, dtype)
    slack = 1e-3 if dtype == "float32" else 1e-6
    _srrqr_bounds(A_np.astype(np.complex128 if "complex" in dtype else np.float64), res_np, k, f, slack)


@pytest.mark.parametrize("dtype", ["float32", "complex64"])
def test_srrqr_bound_holds_for_small_single_precision_pivots(backend, dtype):
    """Pivots below ``10 u max(m, n) |R_11|`` (1.2e-4 here) were taken as rounding noise
    and kept in CPQR's order without swaps, though far above float32's rounding:
    ``max |R11^{-1} R12|`` came out 1.30 for ``f = 1.01``."""
    A_np, _ = _mat(200, 120, dtype, spectrum="exponential", decay=0.1, rng=0)
    k, f = 43, 1.01  # sigma_44 / sigma_1 = 5e-5
    res = srrqr(backend.asarray(A_np), k, f=f)
    R = backend.to_numpy(res.R).astype(np.complex128)
    T = sl.solve_triangular(R[:, :k], R[:, k:])
    assert np.abs(T).max() <= f * (1 + 1e-3)


def test_srrqr_rank_deficient_and_zero(backend):
    A_np, _ = _mat(20, 16, "float64", spectrum="low_rank", rank=3)
    for M in (A_np, np.zeros((20, 16))):
        res = srrqr(backend.asarray(M), 5)
        Qn, Rn, pn = _check_factorization(backend, M, res, 5, "float64")
        assert np.all(np.isfinite(Rn))
        assert np.linalg.norm(M[:, pn] - Qn @ Rn, 2) <= 1e-12 * max(1.0, np.linalg.norm(M, 2))


def test_srrqr_k_equals_n():
    A_np, _ = _mat(12, 5, "float64")
    Q, R, perm = srrqr(A_np, 5)
    assert np.allclose(A_np[:, perm], Q @ R)


# ----------------------------------------------------------------------------------
# contract: no mutation, dtypes, bad input
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [cpqr, rcpqr, srrqr])
def test_input_not_modified(fn):
    A_np, _ = _mat(20, 15, "float64", decay=0.3)
    A = A_np.copy()
    A.setflags(write=False)
    fn(A, 4)
    assert np.array_equal(A, A_np)
    B = A_np.copy()
    fn(B, 4)
    assert np.array_equal(B, A_np)


def test_integer_input_promoted():
    A = np.arange(30).reshape(6, 5) % 7
    Q, R, perm = cpqr(A, 3)
    assert Q.dtype == np.float64


@pytest.mark.parametrize("fn", [cpqr, rcpqr, srrqr])
def test_bad_input(fn):
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="k"):
        fn(A, 0)
    with pytest.raises(ValueError, match="k"):
        fn(A, 5)
    with pytest.raises(TypeError, match="k"):
        fn(A, 2.5)
    with pytest.raises(ValueError, match="A"):
        fn(np.ones(4), 1)
    with pytest.raises(ValueError, match="A"):
        fn(np.full((3, 3), np.nan), 1)
    with pytest.raises(TypeError, match="A"):
        fn([[1.0, 2.0]], 1)
    with pytest.raises(TypeError, match="A"):
        fn(np.ones((3, 3), dtype=np.float16), 1)


def test_bad_options():
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="f"):
        srrqr(A, 2, f=1.0)
    with pytest.raises(TypeError, match="f"):
        srrqr(A, 2, f="2")
    with pytest.raises(ValueError, match="rtol"):
        cpqr(A, rtol=1.5)
    with pytest.raises(ValueError, match="p"):
        rcpqr(A, 2, p=-1)
    with pytest.raises(TypeError, match="rng"):
        rcpqr(A, 2, rng="seed")


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize(("m", "n", "k"), [(8, 6, 3), (6, 8, 4), (7, 7, 7)])
def test_pivoted_factors_differentiate_with_torch(dtype, m, n, k):
    """Gradients through the pivoted QRs and the ID built on them, given the pivots,
    against finite differences (torch.autograd.gradcheck); the values are those of the
    call without gradients. The loops wrote their factors in place: backward raised
    (cpqr, interp_decomp), or R came out without a gradient (srrqr)."""
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    dt = getattr(torch, dtype)
    A = torch.randn(m, n, dtype=dt, generator=gen, requires_grad=True)
    calls = {
        "cpqr": lambda X: randla.cpqr(X, k)[:2],
        "srrqr": lambda X: randla.srrqr(X, min(k, n - 1) if k < n else k)[:2],
        "interp_decomp": lambda X: randla.interp_decomp(X, min(k, 3))[1:],
        "two_sided_id": lambda X: randla.two_sided_id(X, min(k, 3))[2:],
    }
    for name, call in calls.items():
        outs = call(A)
        for x, y in zip(outs, call(A.detach()), strict=True):
            assert x.requires_grad and torch.equal(x.detach(), y), name
        weights = [torch.randn(x.shape, dtype=x.dtype, generator=gen) for x in outs]

        def loss(X, call=call, weights=weights):
            return sum((w.conj() * x).sum().real for w, x in zip(weights, call(X), strict=True))

        assert torch.autograd.gradcheck(loss, (A,), eps=1e-6, atol=1e-5), name
