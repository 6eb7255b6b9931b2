"""``scipy.linalg.interpolative``'s interface, implemented with randla.

A thin translation layer for ``tests/test_scipy_interpolative.py``, which runs the
cases of SciPy's own test suite for that module against randla: every function maps
to the randla counterpart listed in :mod:`randla.interpolative`'s docstring. The
translation is the whole of this file: SciPy overloads one argument as rank (``>= 1``)
or tolerance (``< 1``) and changes its number of results accordingly, returns the
skeleton as the first ``k`` entries of a full permutation ``idx`` with the other
columns' coefficients ``proj`` (``k x (n - k)``), and ``V`` instead of ``Vh``.
``rand=False`` selects randla's deterministic CPQR where SciPy has one.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse.linalg as spla

import randla


def _is_rank(eps_or_k):
    return eps_or_k >= 1


def _operator(A):
    return isinstance(A, spla.LinearOperator)


def _to_scipy(idx, T):
    """randla's ``(idx, T)`` -> SciPy's ``(idx_full, proj)``."""
    idx = np.asarray(idx, dtype=np.int64)
    rest = np.setdiff1d(np.arange(T.shape[1]), idx)
    return np.concatenate([idx, rest]), np.asarray(T)[:, rest]


def interp_decomp(A, eps_or_k, rand=True, rng=None):
    method = "randomized" if rand or _operator(A) else "cpqr"
    if _is_rank(eps_or_k):
        idx, T = randla.interp_decomp(A, int(eps_or_k), method=method, rng=rng)
        return _to_scipy(idx, T)
    idx, T = randla.interp_decomp(A, rtol=eps_or_k, method=method, rng=rng)
    return (len(idx), *_to_scipy(idx, T))


def reconstruct_interp_matrix(idx, proj):
    k = proj.shape[0]
    P = np.zeros((k, len(idx)), dtype=proj.dtype)
    P[:, idx[:k]] = np.eye(k, dtype=proj.dtype)
    P[:, idx[k:]] = proj
    return P


def reconstruct_skel_matrix(A, k, idx):
    return A[:, idx[:k]]


def reconstruct_matrix_from_id(B, idx, proj):
    return B @ reconstruct_interp_matrix(idx, proj)


def id_to_svd(B, idx, proj):
    U, S, Vh = randla.id_to_svd(B, reconstruct_interp_matrix(idx, proj))
    return U, S, Vh.conj().T


def svd(A, eps_or_k, rand=True, rng=None):
    if rand or _operator(A):
        if _is_rank(eps_or_k):
            U, S, Vh = randla.rsvd(A, int(eps_or_k), q=1, rng=rng)
        else:
            U, S, Vh = randla.rsvd(A, rtol=eps_or_k, norm="2", q=1, rng=rng)
    else:
        if _is_rank(eps_or_k):
            idx, T = randla.interp_decomp(A, int(eps_or_k), method="cpqr")
        else:
            idx, T = randla.interp_decomp(A, rtol=eps_or_k, method="cpqr")
        U, S, Vh = randla.id_to_svd(A[:, np.asarray(idx)], T)
    return U, S, Vh.conj().T


def estimate_spectral_norm(A, its=20, rng=None):
    return float(randla.spectral_norm(A, steps=its, rng=rng))


def estimate_spectral_norm_diff(A, B, its=20, rng=None):
    return float(randla.spectral_norm(spla.aslinearoperator(A) - spla.aslinearoperator(B), steps=its, rng=rng))


def estimate_rank(A, eps, rng=None):
    return randla.estimate_rank(A, eps, rng=rng)
