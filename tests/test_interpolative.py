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
