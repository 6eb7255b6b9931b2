"""SciPy's test cases for ``scipy.linalg.interpolative``, run against randla.

The cases (matrices, tolerances, parametrisations and assertions) are those of
``scipy/linalg/tests/test_interpolative.py`` (SciPy 1.17), rewritten here against the
translation layer ``tests/_scipy_interpolative_shim.py``, which maps each SciPy function
to its randla counterpart. One case differs by design and is marked: SciPy rejects
float32 input, randla computes in float32.
"""

from __future__ import annotations

import _scipy_interpolative_shim as sid
import numpy as np
import pytest
import scipy.linalg
from scipy.sparse.linalg import aslinearoperator

EPS = 1e-12
N = 300
# (rand, matrix-free) combinations SciPy exercises for the ID and the SVD
VARIANTS = [(False, False), (True, False), (True, True)]


@pytest.fixture(params=[np.float64, np.complex128], ids=["float64", "complex128"])
def hilbert(request):
    return scipy.linalg.hilbert(N).astype(request.param)


@pytest.fixture
def gen():
    return np.random.default_rng(1718313768084012)


def _rank_at(A, eps):
    """Index of the first singular value below ``eps`` (the rank SciPy's cases use)."""
    s = np.linalg.svd(A, compute_uv=False)
    small = np.flatnonzero(s < eps)
    return int(small[0]) if small.size else A.shape[0]


def _close(A, B):
    np.testing.assert_allclose(B, A, rtol=EPS, atol=1e-8)


@pytest.mark.parametrize(("rand", "matrix_free"), VARIANTS)
def test_id_to_precision(hilbert, gen, rand, matrix_free):
    X = aslinearoperator(hilbert) if matrix_free else hilbert
    k, idx, proj = sid.interp_decomp(X, EPS, rand=rand, rng=gen)
    _close(hilbert, sid.reconstruct_matrix_from_id(hilbert[:, idx[:k]], idx, proj))


@pytest.mark.parametrize(("rand", "matrix_free"), VARIANTS)
def test_id_to_rank(hilbert, gen, rand, matrix_free):
    k = _rank_at(hilbert, EPS)
    X = aslinearoperator(hilbert) if matrix_free else hilbert
    idx, proj = sid.interp_decomp(X, k, rand=rand, rng=gen)
    _close(hilbert, sid.reconstruct_matrix_from_id(hilbert[:, idx[:k]], idx, proj))


def test_skeleton_and_interpolation_matrices(hilbert, gen):
    k = _rank_at(hilbert, EPS)
    idx, proj = sid.interp_decomp(hilbert, k, rand=False, rng=gen)
    skel = sid.reconstruct_skel_matrix(hilbert, k, idx)
    _close(hilbert[:, idx[:k]], skel)
    _close(hilbert, skel @ sid.reconstruct_interp_matrix(idx, proj))


@pytest.mark.parametrize(("rand", "matrix_free"), VARIANTS)
def test_svd_to_precision(hilbert, gen, rand, matrix_free):
    X = aslinearoperator(hilbert) if matrix_free else hilbert
    U, S, V = sid.svd(X, EPS, rand=rand, rng=gen)
    _close(hilbert, (U * S) @ V.conj().T)


@pytest.mark.parametrize(("rand", "matrix_free"), VARIANTS)
def test_svd_to_rank(hilbert, gen, rand, matrix_free):
    k = _rank_at(hilbert, EPS)
    X = aslinearoperator(hilbert) if matrix_free else hilbert
    U, S, V = sid.svd(X, k, rand=rand, rng=gen)
    _close(hilbert, (U * S) @ V.conj().T)


def test_id_to_svd(hilbert):
    k = _rank_at(hilbert, EPS)
    idx, proj = sid.interp_decomp(hilbert, k, rand=False)
    U, S, V = sid.id_to_svd(hilbert[:, idx[:k]], idx, proj)
    _close(hilbert, (U * S) @ V.conj().T)


def test_spectral_norm(hilbert, gen):
    expected = scipy.linalg.svdvals(hilbert)[0]
    np.testing.assert_allclose(sid.estimate_spectral_norm(hilbert, rng=gen), expected, rtol=1e-6, atol=1e-8)


def test_spectral_norm_of_a_difference(hilbert, gen):
    other = hilbert.copy()
    other[:, 0] *= 1.2
    expected = scipy.linalg.svdvals(hilbert - other)[0]
    got = sid.estimate_spectral_norm_diff(hilbert, other, rng=gen)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)


def _rank_cases(hilbert):
    small = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=hilbert.dtype)
    for M in (hilbert, small):
        tol = 1e-9
        yield M, tol, np.linalg.matrix_rank(M, scipy.linalg.norm(M, 2) * tol)


def test_rank_of_arrays(hilbert, gen):
    for M, tol, exact in _rank_cases(hilbert):
        assert exact <= sid.estimate_rank(M, tol, rng=gen) <= exact + 10


def test_rank_of_operators(hilbert, gen):
    for M, tol, exact in _rank_cases(hilbert):
        assert exact - 4 <= sid.estimate_rank(aslinearoperator(M), tol, rng=gen) <= exact + 4


@pytest.mark.xfail(strict=True, raises=pytest.fail.Exception,
                   reason="SciPy rejects float32; randla computes in float32 by design (DESIGN.md)")
def test_float32_is_rejected():
    A = scipy.linalg.hilbert(5).astype(np.float32)
    with pytest.raises(ValueError):
        sid.interp_decomp(A, 1e-6, rand=False)


def test_rank_larger_than_the_matrix():
    with pytest.raises(ValueError):
        sid.svd(np.ones((4, 3)), 4)


def test_full_rank_matrix():
    A = np.random.default_rng(1234).random((16, 8))
    k, idx, proj = sid.interp_decomp(A, 1e-12)
    assert k == A.shape[1]
    np.testing.assert_allclose(sid.reconstruct_skel_matrix(A, k, idx) @ sid.reconstruct_interp_matrix(idx, proj), A)
    idx, proj = sid.interp_decomp(A, k)
    np.testing.assert_allclose(sid.reconstruct_skel_matrix(A, k, idx) @ sid.reconstruct_interp_matrix(idx, proj), A)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
@pytest.mark.parametrize("rand", [True, False])
@pytest.mark.parametrize("eps_or_k", [1, 0.1])
def test_input_is_not_modified(dtype, rand, eps_or_k):
    # SciPy gh-9793: a transposed (Fortran-ordered) view was overwritten
    A = np.array([[-1, -1, -1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 0, 1, 0, 0],
                  [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]], dtype=dtype)
    before = A.copy()
    sid.interp_decomp(A.T, eps_or_k, rand=rand)
    np.testing.assert_array_equal(A, before)


def test_svd_shapes_of_an_operator():
    # SciPy gh-22451
    gen = np.random.default_rng(1744580941832515)
    for shape, k in (((7, 5), 3), ((4, 9), 2)):
        U, S, V = sid.svd(aslinearoperator(gen.uniform(size=shape)), k)
        assert U.shape == (shape[0], k) and S.shape == (k,) and V.shape == (shape[1], k)
