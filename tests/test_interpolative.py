"""Interpolative decompositions, CUR and column selection on every backend."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randla._backend import namespace
from randla.interpolative import column_select, cur, interp_decomp, two_sided_id
from randla.testing import matrix

METHODS = ["cpqr", "srrqr", "randomized"]


def _mat(m, n, dtype="float64", spectrum="exponential", rng=0, **kw):
    A, s = matrix(m, n, spectrum=spectrum, dtype=dtype, rng=rng, **kw)
    return A, np.asarray(s, dtype=np.float64)


def _err2(A, B):
    return np.linalg.norm(A - B, 2)


@pytest.mark.parametrize(("method", "axis"), [("cpqr", 1), ("srrqr", 0), ("randomized", 1), ("randomized", 0)])
def test_id_identity_and_error(backend, method, axis):
    A_np, s = _mat(28, 22, decay=0.15)
    k = 6
    A = backend.asarray(A_np)
    idx, T = interp_decomp(A, k, axis=axis, method=method, rng=0)
    assert namespace(T) is namespace(A)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T)
    assert idx_n.shape == (k,) and len(set(idx_n.tolist())) == k
    assert T_n.dtype == A_np.dtype
    if axis == 1:
        assert T_n.shape == (k, 22)
        assert np.array_equal(T_n[:, idx_n], np.eye(k))  # exactly
        approx = A_np[:, idx_n] @ T_n
    else:
        assert T_n.shape == (28, k)
        assert np.array_equal(T_n[idx_n, :], np.eye(k))
        approx = T_n @ A_np[idx_n, :]
    n = A_np.shape[1 if axis == 1 else 0]
    err = _err2(A_np, approx)
    assert s[k] * (1 - 1e-6) <= err <= math.sqrt(1 + 4 * k * (n - k)) * 4 * s[k]


@pytest.mark.parametrize(("dtype", "method"), [("float32", "cpqr"), ("complex128", "srrqr"),
                                               ("float32", "randomized"), ("complex128", "randomized")])
def test_id_dtypes(backend, dtype, method):
    A_np, s = _mat(20, 16, dtype=dtype, decay=0.3)
    idx, T = interp_decomp(backend.asarray(A_np), 5, method=method, rng=1)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T)
    assert T_n.dtype == np.dtype(dtype)
    assert np.array_equal(T_n[:, idx_n], np.eye(5))
    assert _err2(A_np, A_np[:, idx_n] @ T_n) <= 50 * s[5] + 1e-4 * s[0] * (dtype == "float32")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_id_reaches_the_accuracy_of_its_pivoted_qr(backend, method, dtype):
    """Every skeleton column with a pivot above rounding takes part: a rank threshold
    of ``10 u max(m, n) |R_11|`` gave 21 of 100 float32 skeleton columns zero weight
    (error 8.7e-4 against the same pivots' 1.3e-4) and capped float64 at about
    1e-12, whatever ``k`` or ``rtol`` asked for."""
    rate, k = (10, 100) if dtype == "float32" else (5, 145)  # sigma_i = e^{-i / rate}
    A_np, s = _mat(400, 160, dtype=dtype, decay=1 / (rate * math.log(10)))
    A64 = A_np.astype(np.float64)
    idx, T = interp_decomp(backend.asarray(A_np), k, method=method, rng=0)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T).astype(np.float64)
    unused = int(np.sum(np.abs(T_n).sum(axis=1) == 1))  # rows of T that are only the identity
    assert unused == 0
    assert _err2(A64, A64[:, idx_n] @ T_n) <= 10 * s[k] + 30 * np.finfo(dtype).eps * s[0]
    rtol = 1e-4 if dtype == "float32" else 1e-13
    idx, T = interp_decomp(backend.asarray(A_np), rtol=rtol, method=method, rng=0)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T).astype(np.float64)
    if method != "randomized":  # the rank of a sketch is an estimate
        assert np.linalg.norm(A64 - A64[:, idx_n] @ T_n) <= rtol * np.linalg.norm(A64) * 1.01


def _torch_grads_agree(f, ref, A0):
    """``f``'s torch gradient passes gradcheck (float64) and equals that of ``ref``, an
    independent formula for the same (gauge-invariant) output."""
    import torch

    assert torch.autograd.gradcheck(f, (A0.clone().requires_grad_(),))
    W = torch.randn(f(A0).shape, dtype=A0.dtype, generator=torch.Generator().manual_seed(1))
    A = A0.clone().requires_grad_()
    got, want = (torch.autograd.grad((g(A) * W).sum(), A)[0] for g in (f, ref))
    assert (got - want).abs().max().item() <= 1e-10 * want.abs().max().item()


@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize(("shape", "k"), [((8, 6), 3), ((22, 20), 18)])
def test_randomized_id_torch_gradient(axis, shape, k):
    """The block bases of the randomized ID multiplied a Q factor from SciPy's pivoted QR
    (a host constant for torch): T's gradient was off by 0.025 at scale 0.24 (8 x 6,
    k = 3) while gradcheck of the cpqr ID passed. T is the least-squares coefficient
    matrix of the chosen indices (fixed by the seed)."""
    torch = pytest.importorskip("torch")
    A0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    idx = interp_decomp(A0, k, axis=axis, method="randomized", rng=0).idx

    def T(A):
        return interp_decomp(A, k, axis=axis, method="randomized", rng=0).T

    def T_ref(A):
        if axis == 1:
            return torch.linalg.lstsq(A[:, idx], A).solution
        return torch.linalg.lstsq(A[idx, :].mT, A.mT).solution.mT

    _torch_grads_agree(T, T_ref, A0)


def test_srrqr_id_coefficients_bounded(backend):
    A_np, _ = _mat(24, 20, spectrum="polynomial", decay=1.0, rng=3)
    idx, T = interp_decomp(backend.asarray(A_np), 6, method="srrqr", f=1.2)
    assert np.abs(backend.to_numpy(T)).max() <= 1.2 * (1 + 1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_rtol_picks_rank(backend, method):
    A_np, _ = _mat(30, 24, spectrum="low_rank", rank=5)
    A = backend.asarray(A_np)
    idx, T = interp_decomp(A, rtol=1e-8, method=method, rng=0)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T)
    assert len(idx_n) == 5
    assert _err2(A_np, A_np[:, idx_n] @ T_n) <= 1e-10
    # no k, no rtol: the numerical rank
    idx, _ = interp_decomp(A, method=method, rng=0)
    assert backend.to_numpy(idx).shape == (5,)
    # the tolerance is honoured on a full-rank matrix (Frobenius, relative)
    B_np, _ = _mat(30, 24, spectrum="polynomial", decay=1.0)
    idx, T = interp_decomp(backend.asarray(B_np), rtol=0.1, method=method, rng=0)
    idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T)
    assert np.linalg.norm(B_np - B_np[:, idx_n] @ T_n) <= 0.1 * np.linalg.norm(B_np) * (1 + 1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_degenerate_input(backend, method):
    A_np, _ = _mat(16, 12, spectrum="low_rank", rank=3)
    for M in (A_np, np.zeros((16, 12))):
        idx, T = interp_decomp(backend.asarray(M), 5, method=method, rng=0)
        idx_n, T_n = backend.to_numpy(idx), backend.to_numpy(T)
        assert np.all(np.isfinite(T_n)) and np.array_equal(T_n[:, idx_n], np.eye(5))
        assert _err2(M, M[:, idx_n] @ T_n) <= 1e-12
    idx, T = interp_decomp(backend.asarray(np.zeros((6, 4))), rtol=0.5, method=method, rng=0)
    assert backend.to_numpy(idx).shape == (1,)


def test_two_sided_and_cur(backend):
    A_np, _ = _mat(18, 14, spectrum="low_rank", rank=4, rng=5)
    A = backend.asarray(A_np)
    rows, cols, X, Z = two_sided_id(A, 4)
    r, c = backend.to_numpy(rows), backend.to_numpy(cols)
    Xn, Zn = backend.to_numpy(X), backend.to_numpy(Z)
    assert np.array_equal(Xn[r, :], np.eye(4)) and np.array_equal(Zn[:, c], np.eye(4))
    assert _err2(A_np, Xn @ A_np[np.ix_(r, c)] @ Zn) <= 1e-11
    rows, cols, U = cur(A, 4, method="randomized", rng=0)
    r, c, Un = backend.to_numpy(rows), backend.to_numpy(cols), backend.to_numpy(U)
    assert _err2(A_np, A_np[:, c] @ Un @ A_np[r, :]) <= 1e-11


@pytest.mark.parametrize("method", ["cpqr", "randomized"])
def test_cur_torch_gradient(method):
    """The reciprocal singular values in CUR's pseudo-inverses were formed on the host and
    re-entered torch's graph detached: U's gradient was off by 0.23 at scale 0.17."""
    torch = pytest.importorskip("torch")
    A0 = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    rows, cols, _ = cur(A0, 3, method=method, rng=0)

    def U(A):
        return cur(A, 3, method=method, rng=0).U

    def U_ref(A):
        return torch.linalg.pinv(A[:, cols]) @ A @ torch.linalg.pinv(A[rows, :])

    _torch_grads_agree(U, U_ref, A0)


def test_two_sided_error_bounded():
    A_np, s = _mat(40, 30, spectrum="polynomial", decay=1.5, rng=2)
    rows, cols, X, Z = two_sided_id(A_np, 8, method="srrqr")
    assert _err2(A_np, X @ A_np[np.ix_(rows, cols)] @ Z) <= 200 * s[8]
    rows, cols, U = cur(A_np, 8)
    assert _err2(A_np, A_np[:, cols] @ U @ A_np[rows, :]) <= 200 * s[8]


@pytest.mark.parametrize("method", ["cpqr", "srrqr", "randomized", "gks", "randomized_gks"])
def test_column_select(backend, method):
    A_np, s = _mat(26, 20, spectrum="polynomial", decay=1.0, rng=6)
    k = 5
    idx = column_select(backend.asarray(A_np), k, method=method, rng=0)
    idx_n = backend.to_numpy(idx)
    assert idx_n.shape == (k,) and len(set(idx_n.tolist())) == k
    C = A_np[:, idx_n]
    err = _err2(A_np, C @ np.linalg.lstsq(C, A_np, rcond=None)[0])
    assert s[k] * (1 - 1e-8) <= err <= math.sqrt(1 + 4 * k * (20 - k)) * s[k]


def test_seeded_reproducible():
    A_np, _ = _mat(30, 25, spectrum="polynomial", decay=0.5)
    i1, T1 = interp_decomp(A_np, 6, method="randomized", rng=7)
    i2, T2 = interp_decomp(A_np, 6, method="randomized", rng=np.random.default_rng(7))
    assert np.array_equal(i1, i2) and np.array_equal(T1, T2)
    j1 = column_select(A_np, 6, method="randomized_gks", rng=3)
    j2 = column_select(A_np, 6, method="randomized_gks", rng=3)
    assert np.array_equal(j1, j2)


def test_input_not_modified():
    A_np, _ = _mat(20, 15, decay=0.3)
    for fn in (lambda A: interp_decomp(A, 4, method="srrqr"), lambda A: interp_decomp(A, 4, axis=0),
               lambda A: interp_decomp(A, rtol=1e-3, method="randomized", rng=0),
               lambda A: cur(A, 4), lambda A: column_select(A, 4, method="gks")):
        A = A_np.copy()
        fn(A)
        assert np.array_equal(A, A_np)


def test_bad_input():
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="axis"):
        interp_decomp(A, 2, axis=2)
    with pytest.raises(ValueError, match="method"):
        interp_decomp(A, 2, method="svd")
    with pytest.raises(ValueError, match="method"):
        column_select(A, 2, method="lu")
    with pytest.raises(ValueError, match="rtol"):
        interp_decomp(A, rtol=0.0)
    with pytest.raises(ValueError, match="k"):
        interp_decomp(A, 5)
    with pytest.raises(ValueError, match="k"):
        interp_decomp(A, 5, axis=0)  # row ID: k <= min(m, n) too
    with pytest.raises(TypeError, match="k"):
        column_select(A, None)
    with pytest.raises(ValueError, match="A"):
        interp_decomp(np.ones(3), 1)
    with pytest.raises(ValueError, match="A"):
        cur(np.array([[1.0, np.inf]]), 1)
    with pytest.raises(ValueError, match="q"):
        interp_decomp(A, 2, method="randomized", q=-1)


# ----------------------------------------------------------------------------------
# matrix-free input, id_to_svd, estimate_rank
# ----------------------------------------------------------------------------------


def _operators(A):
    import scipy.sparse
    import scipy.sparse.linalg as spla

    return {"linear_operator": spla.aslinearoperator(A), "sparse": scipy.sparse.csr_array(A)}


@pytest.mark.parametrize("fmt", ["linear_operator", "sparse"])
@pytest.mark.parametrize("axis", [1, 0])
@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
def test_matrix_free_id_by_rank(fmt, axis, dtype):
    A_np, s = _mat(60, 45, spectrum="polynomial", decay=1.0, dtype=dtype, rng=4)
    k = 8
    idx, T = interp_decomp(_operators(A_np)[fmt], k, axis=axis, method="randomized", q=1, rng=0)
    assert idx.shape == (k,) and T.dtype == A_np.dtype
    if axis == 1:
        assert np.array_equal(T[:, idx], np.eye(k))
        err = _err2(A_np, A_np[:, idx] @ T)
    else:
        assert np.array_equal(T[idx, :], np.eye(k))
        err = _err2(A_np, T @ A_np[idx, :])
    # T is the least-squares fit on the chosen columns: as accurate as the dense method
    dense = interp_decomp(A_np, k, axis=axis, method="randomized", q=1, rng=0)
    dense_err = _err2(A_np, A_np[:, dense.idx] @ dense.T if axis == 1 else dense.T @ A_np[dense.idx, :])
    assert s[k] * (1 - 1e-4) <= err <= 3 * max(dense_err, s[k])


@pytest.mark.parametrize("fmt", ["linear_operator", "sparse"])
def test_matrix_free_id_by_tolerance(fmt):
    A_np, s = _mat(80, 60, spectrum="exponential", decay=0.2, rng=1)
    for rtol in (1e-3, 1e-8):
        idx, T = interp_decomp(_operators(A_np)[fmt], rtol=rtol, method="randomized", rng=0)
        err = np.linalg.norm(A_np - A_np[:, idx] @ T)
        # rank: within a few of the Frobenius-optimal one; error: the tolerance, with the
        # ID's factor sqrt(1 + ||T||^2) and the sketch's estimate as slack
        tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])
        r_opt = int(np.sum(tail > rtol * np.linalg.norm(A_np)))
        assert r_opt - 2 <= len(idx) <= r_opt + 6
        assert err <= 10 * rtol * np.linalg.norm(A_np)
    # an exactly low-rank operator: the rank, not more
    L_np, _ = _mat(50, 40, spectrum="low_rank", rank=6)
    idx, T = interp_decomp(_operators(L_np)[fmt], rtol=1e-10, method="randomized", rng=0)
    assert len(idx) == 6 and _err2(L_np, L_np[:, idx] @ T) <= 1e-10


def test_matrix_free_id_needs_the_randomized_method():
    ops = _operators(np.ones((6, 5)))
    for op in ops.values():
        with pytest.raises(ValueError, match="method='randomized'"):
            interp_decomp(op, 2)
    bad = np.ones((6, 5))
    bad[2, 3] = np.nan
    for op in _operators(bad).values():
        with pytest.raises(ValueError, match="NaN or Inf"):
            interp_decomp(op, 2, method="randomized", rng=0)


def test_matrix_free_id_reproducible():
    A_np, _ = _mat(40, 30, spectrum="polynomial", decay=1.0)
    op = _operators(A_np)["linear_operator"]
    a = interp_decomp(op, rtol=1e-4, method="randomized", rng=3)
    b = interp_decomp(op, rtol=1e-4, method="randomized", rng=np.random.default_rng(3))
    assert np.array_equal(a.idx, b.idx) and np.array_equal(a.T, b.T)


@pytest.mark.parametrize("axis", [1, 0])
def test_id_to_svd(backend, axis):
    from randla import id_to_svd

    A_np, s = _mat(30, 24, spectrum="low_rank", rank=5, dtype="complex128")
    A = backend.asarray(A_np)
    idx, T = interp_decomp(A, 5, axis=axis)
    i = backend.to_numpy(idx)
    C, W = (backend.asarray(A_np[:, i]), T) if axis == 1 else (T, backend.asarray(A_np[i, :]))
    U, S, Vh = id_to_svd(C, W)
    assert namespace(U) is namespace(A)
    U, S, Vh = (backend.to_numpy(x) for x in (U, S, Vh))
    np.testing.assert_allclose(S, s[:5], rtol=1e-10)
    np.testing.assert_allclose(U.conj().T @ U, np.eye(5), atol=1e-12)
    np.testing.assert_allclose(Vh @ Vh.conj().T, np.eye(5), atol=1e-12)
    np.testing.assert_allclose((U * S) @ Vh, A_np, atol=1e-12)
    with pytest.raises(ValueError, match="share k"):
        id_to_svd(C, backend.asarray(np.ones((3, 4), dtype=A_np.dtype)))


def test_estimate_rank():
    import scipy.sparse.linalg as spla

    from randla import estimate_rank

    for spectrum, decay in (("exponential", 0.1), ("polynomial", 2.0)):
        A_np, s = _mat(120, 90, spectrum=spectrum, decay=decay, rng=2)
        for rtol in (1e-2, 1e-6):
            exact = int(np.sum(s > rtol * s[0]))
            for X in (A_np, spla.aslinearoperator(A_np)):
                assert exact <= estimate_rank(X, rtol, rng=0) <= max(1.2 * exact, exact + 2)
    assert estimate_rank(np.zeros((5, 4)), 0.1) == 0


def test_cur_of_tiny_and_huge_matrices():
    """The core U = C^+ A R^+ scales as 1 / A: it is computed for A divided by a power
    of two. Subnormal A (1e-310) gave an all-NaN U with an overflow warning; where U
    itself cannot be represented, a ValueError says so."""
    gen = np.random.default_rng(0)
    A0 = gen.standard_normal((6, 3)) @ gen.standard_normal((3, 4))
    for scale, dtype in [(1e-300, np.float64), (1e300, np.float64), (1e-30, np.float32), (1e30, np.float32)]:
        A = (A0 * scale).astype(dtype)
        rows, cols, U = cur(A, 3, rng=0)
        As, Us = A.astype(np.float64) / scale, U.astype(np.float64) * scale
        assert np.linalg.norm(As[:, cols] @ Us @ As[rows] - As) <= 1e3 * np.finfo(dtype).eps * np.linalg.norm(As)
    for scale, dtype in [(1e-310, np.float64), (1e-39, np.float32)]:
        with pytest.raises(ValueError, match="core U of its CUR overflows"):
            cur((A0 * scale).astype(dtype), 3, rng=0)


def test_matrix_free_id_meets_the_tolerance():
    """The sketch's residual underestimates the ID's as the rank nears the sketch's rows
    (150 x 100 Gaussian, rtol 1e-2: error 9 x rtol before); the ID is checked by probes."""
    from scipy.sparse.linalg import aslinearoperator

    for seed in range(3):
        A = np.random.default_rng(seed).standard_normal((150, 100))
        for rtol in (0.3, 1e-2):
            idx, T = interp_decomp(aslinearoperator(A), rtol=rtol, method="randomized", rng=seed)
            assert np.linalg.norm(A - A[:, np.asarray(idx)] @ T) <= rtol * np.linalg.norm(A)
