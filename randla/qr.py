"""Rank-revealing QR: column-pivoted QR, randomized CPQR and strong RRQR.

Three ways to pick ``k`` well-conditioned columns of ``A`` together with an
orthonormal basis of their span:

* :func:`cpqr` -- Businger-Golub greedy pivoting [BG1965]. NumPy calls LAPACK
  ``geqp3``, JAX its native pivoted QR; every other backend (torch, CuPy,
  array-api-strict) and every partial factorisation (``k`` small) runs a
  left-looking, reorthogonalised Gram-Schmidt version that reads ``A`` once per
  pivot and never forms the trailing matrix.
* :func:`rcpqr` -- randomized CPQR: pivots chosen by QRCP of a small sketch
  ``Omega A``, then a Cholesky-QR of the chosen columns preconditioned by the
  sketch's triangular factor (CQRRPT [MBM2024]; blocked as in HQRRP [MOHvdG2017]).
  All heavy work is matrix-matrix products; only the ``(k + p) x n`` sketch meets
  a pivoting loop, which is the GPU-portable pivoted QR.
* :func:`srrqr` -- strong rank-revealing QR [GE1996, Alg. 4]: starts from
  :func:`cpqr` and swaps a selected with an unselected column while that grows
  ``|det R11|`` by more than ``f``, updating the factors after each swap in
  ``O((m + n) k)`` work plus one product ``q^H A`` (no refactorisation).

All return a :class:`PivotedQR` ``(Q, R, perm)`` with ``A[:, perm] ~= Q @ R``,
``Q`` of orthonormal columns and ``R[:, :k]`` upper triangular.

Pivot selection is eager: the loops read pivot indices (a device-to-host copy of
a length-``n`` vector per pivot). Dask arrays, where each read would recompute a
growing graph, are gathered to the host first for :func:`cpqr` and
:func:`srrqr`; :func:`rcpqr` computes the sketch and the chosen columns and
keeps ``R = Q^H A`` lazy.

References
----------
.. [BG1965] P. Businger and G. H. Golub, "Linear least squares solutions by
   Householder transformations", Numer. Math. 7 (1965).
.. [GE1996] M. Gu and S. C. Eisenstat, "Efficient algorithms for computing a
   strong rank-revealing QR factorization", SIAM J. Sci. Comput. 17 (1996).
.. [MOHvdG2017] P.-G. Martinsson, G. Quintana-Orti, N. Heavner and R. van de
   Geijn, "Householder QR factorization with randomization for column pivoting
   (HQRRP)", SIAM J. Sci. Comput. 39 (2017).
.. [MBM2024] M. Melnichenko, O. Balabanov, R. Murray et al., "CholeskyQR with
   randomization and pivoting for tall matrices (CQRRPT)", arXiv:2311.08316.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import _scale as _S
from . import _validate as V

__all__ = ["PivotedQR", "cpqr", "rcpqr", "srrqr"]


class PivotedQR(NamedTuple):
    """Pivoted QR ``A[:, perm] ~= Q @ R``.

    ``Q`` is ``m x k`` with orthonormal columns, ``R`` is ``k x n`` with
    ``R[:, :k]`` upper triangular, ``perm`` is a permutation of ``range(n)``
    (integer array) whose first ``k`` entries are the selected columns.
    """

    Q: Any
    R: Any
    perm: Any


# ----------------------------------------------------------------------------------
# small helpers (all namespace-generic)
# ----------------------------------------------------------------------------------


def _set(x, idx, value):
    """``x[idx] = value`` on an array this module owns (in place where the backend can)."""
    import array_api_extra as xpx

    return xpx.at(x, idx).set(value, copy=None)


def _triu(xp, x):
    """Upper triangle by a mask (Dask's ``triu`` warns on complex input)."""
    r, c = x.shape
    dev = B.device(x)
    mask = xp.arange(r, device=dev)[:, None] <= xp.arange(c, device=dev)[None, :]
    return xp.where(mask, x, xp.zeros_like(x))


def _abs2(xp, x):
    if xp.isdtype(x.dtype, "complex floating"):
        return xp.real(x) ** 2 + xp.imag(x) ** 2
    return x * x


def _perm_array(perm, like):
    return B.from_numpy(np.asarray(perm, dtype=np.int64), like=like)


def _host_lazy(A):
    """Lazy arrays (Dask) go to the host: a pivot loop would recompute the graph per pivot."""
    if B.is_lazy(A):
        return B.to_numpy(A), True
    return A, False


def _conj(xp, x):
    return xp.conj(x) if xp.isdtype(x.dtype, "complex floating") else x


def _back(res, like):
    return PivotedQR(*(B.from_numpy(np.asarray(x), like=like) for x in res))


def _check_k(k, shape, *, allow_none):
    if k is None:
        if allow_none:
            return None
        raise ValueError("k must be given")
    return V.check_rank(k, shape)


# ----------------------------------------------------------------------------------
# CPQR
# ----------------------------------------------------------------------------------


def cpqr(A, k=None, *, rtol=None, check_finite=True):
    r"""Column-pivoted QR (Businger-Golub), full or stopped after ``k`` pivots.

    Computes a permutation ``perm``, ``Q`` with orthonormal columns and an upper
    trapezoidal ``R`` such that

    .. math:: A_{:, \pi} = Q R, \qquad |R_{jj}| = \max_{l \ge j}
              \| (I - Q_{:, :j} Q_{:, :j}^H) a_{\pi_l} \|_2,

    i.e. each pivot is the column with the largest residual norm [BG1965],
    [GVL2013, Alg. 5.4.1]. With ``k`` the factorisation stops after ``k`` pivots
    (partial QRCP): ``Q`` is ``m x k``, ``R`` is ``k x n`` and
    ``A[:, perm] - Q @ R`` is the unfactored trailing block (its norm is the
    rank-``k`` error).

    Parameters
    ----------
    A : (m, n) array
    k : int, optional
        Number of pivots, ``1 <= k <= min(m, n)``; default ``min(m, n)``.
    rtol : float, optional
        Also stop as soon as the unfactored part is small,
        ``||A[:, perm] - Q @ R||_F <= rtol * ||A||_F`` (at least one pivot is
        kept); ``k`` then caps the rank.
    check_finite : bool, default True
        Reject NaN/Inf (one pass over ``A``).

    Returns
    -------
    PivotedQR
        ``(Q, R, perm)``: ``Q`` (m x r), ``R`` (r x n), ``perm`` (n,) int64,
        ``r = k`` unless ``rtol`` stopped earlier.

    Notes
    -----
    Backends: NumPy runs LAPACK ``geqp3`` (SciPy) for full factorisations and
    for ``k > min(m, n) / 2``, JAX always its native pivoted QR (truncated;
    an eager loop would recompile per shape); everything else runs
    the portable left-looking loop: per pivot one product ``q^H A`` and a
    twice-applied Gram-Schmidt projection of the pivot column (CGS2), with
    residual norms downdated and recomputed exactly when cancellation has eaten
    half their digits (the LAPACK ``xLAQPS`` safeguard). Cost ``2 m n k`` flops
    (memory-bound matrix-vector products) plus ``2 m k^2``, so partial QRCP costs
    ``k / min(m, n)`` of a full one. Dask input is gathered to the host. For
    large matrices on accelerators prefer :func:`rcpqr`.

    References
    ----------
    .. [GVL2013] G. H. Golub and C. F. Van Loan, Matrix Computations, 4th ed.,
       Sec. 5.4.2.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.qr import cpqr
    >>> A = np.random.default_rng(0).standard_normal((8, 6))
    >>> Q, R, perm = cpqr(A, 3)
    >>> Q.shape, R.shape
    ((8, 3), (3, 6))
    >>> bool(np.allclose(Q.T @ Q, np.eye(3)))
    True
    >>> bool(np.allclose(A[:, perm[:3]], Q @ R[:, :3]))
    True
    """
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = _check_k(k, A.shape, allow_none=True)
    rtol = None if rtol is None else V.check_rtol(rtol)
    like = A
    A, lazy = _host_lazy(A)
    xp = B.namespace(A)
    res = _cpqr(A, xp, k, rtol)
    return _back(res, like) if lazy else res


def _cpqr(A, xp, k, rtol):
    m, n = A.shape
    kmax = min(m, n) if k is None else k
    native = B.has_pivoted_qr(xp)
    if native and (k is None or 2 * k > min(m, n) or B.prefers_whole_matrix_kernels(xp)):
        Q, R, perm = B.qr_pivoted(A)
        r = kmax
        if rtol is not None:
            r = min(kmax, _rank_from_rows(B.to_numpy(_triu(xp, R)), rtol))
        perm = xp.astype(B.from_numpy(np.asarray(B.to_numpy(perm), dtype=np.int64), like=A), xp.int64)
        return PivotedQR(Q[:, :r], _triu(xp, R[:r, :]), perm)
    # the loop squares column norms on the host: bring A into a safe range first
    A, c = _S.unit_scale(A)
    Q, R, perm = _cpqr_loop(A, xp, kmax, rtol)
    return PivotedQR(Q, _S.unscale(R, c), perm)


def _rank_from_rows(R, rtol):
    """Smallest ``r >= 1`` with ``||R[r:, r:]||_F <= rtol ||R||_F`` (``R`` upper, host)."""
    amax = float(np.max(np.abs(R), initial=0.0))
    rows2 = np.sum(np.abs(R / amax if amax > 0 else R) ** 2, axis=1)  # scaled: no over/underflow
    tail = np.concatenate([np.cumsum(rows2[::-1])[::-1], [0.0]])
    ok = np.nonzero(tail <= rtol**2 * tail[0])[0]
    return max(1, int(ok[0]))


def _cgs2(xp, Qj, v):
    """Project ``v`` twice onto the complement of ``range(Qj)``; returns ``(v, Qj^H v)``."""
    h = B.mH(Qj) @ v
    v = v - Qj @ h
    h2 = B.mH(Qj) @ v
    return v - Qj @ h2, h + h2


def _cpqr_loop(A, xp, kmax, rtol, *, Q=None, R=None, selected=None):
    """Left-looking partial QRCP with CGS2 (eager), optionally continuing a start.

    Keeps ``Q`` (m x kmax) and the rows ``R[j, :] = q_j^H A`` in *original* column
    order; ``selected`` lists the chosen columns in pivot order.
    """
    m, n = A.shape
    dev, dt = B.device(A), A.dtype
    rdt = B.real_dtype(xp, dt)
    u = B.eps(xp, dt)
    j0 = 0 if selected is None else len(selected)
    Qn = xp.zeros((m, kmax), dtype=dt, device=dev)
    Rn = xp.zeros((kmax, n), dtype=dt, device=dev)
    if j0:
        Qn = _set(Qn, (slice(None), slice(0, j0)), Q[:, :j0])
        Rn = _set(Rn, (slice(0, j0), slice(None)), R[:j0, :])
    Q, R = Qn, Rn
    selected = [] if selected is None else list(selected)
    # residual norms^2 on the host: the loop reads them anyway, and host float64
    # bookkeeping is free of device round-trips per column
    full2 = B.to_numpy(xp.sum(_abs2(xp, A), axis=0)).astype(np.float64)
    norms2 = full2.copy()
    if j0:
        norms2 -= np.sum(np.abs(B.to_numpy(R[:j0, :])) ** 2, axis=0)
        norms2 = _recompute(A, xp, Q[:, :j0], R[:j0, :], norms2, np.arange(n), rdt)
    ref2 = norms2.copy()
    noise2 = (u * max(m, n)) ** 2 * float(full2.max(initial=0.0))
    mask = np.zeros(n, dtype=bool)
    mask[selected] = True
    total2 = float(full2.sum())
    r = kmax
    for j in range(j0, kmax):
        cand = np.where(mask, -1.0, norms2)
        p = int(np.argmax(cand))
        if rtol is not None and j > 0 and float(np.sum(norms2[~mask])) <= rtol**2 * total2:
            r = j
            break
        a = A[:, p]
        if j:
            v, h = _cgs2(xp, Q[:, :j], a)
        else:
            v = a
        nv = B.scalar(xp.linalg.vector_norm(v))
        if cand[p] <= noise2 or nv <= math.sqrt(noise2) or nv == 0.0:
            # numerically rank-deficient: continue Q with a unit vector orthogonal
            # to it (the row of Q with the least weight has a residual >= 1 - j/m)
            w = B.to_numpy(xp.sum(_abs2(xp, Q[:, :j]), axis=1)) if j else np.zeros(m)
            e = xp.astype(B.from_numpy((np.arange(m) == int(np.argmin(w))).astype(np.float64), like=A), dt)
            v = _cgs2(xp, Q[:, :j], e)[0] if j else e
            v = _cgs2(xp, Q[:, :j], v)[0] if j else v
            nv = B.scalar(xp.linalg.vector_norm(v))
        q = v / xp.asarray(nv, dtype=rdt, device=dev)
        row = _conj(xp, q) @ A
        Q = _set(Q, (slice(None), j), q)
        R = _set(R, (j, slice(None)), row)
        selected.append(p)
        mask[p] = True
        norms2 = norms2 - np.abs(B.to_numpy(row)) ** 2
        # xLAQPS safeguard: recompute where downdating lost half the digits
        lost = (~mask) & (norms2 <= math.sqrt(u) * ref2) & (ref2 > noise2)
        if lost.any():
            cols = np.nonzero(lost)[0]
            norms2 = _recompute(A, xp, Q[:, : j + 1], R[: j + 1, :], norms2, cols, rdt)
            ref2[cols] = norms2[cols]
        norms2 = np.maximum(norms2, 0.0)
    Q, R = Q[:, :r], R[:r, :]
    rest = [c for c in range(n) if not mask[c]] + [c for c in selected[r:]]
    perm = np.asarray(selected[:r] + rest, dtype=np.int64)
    pd = _perm_array(perm, A)
    R = B.take(R, perm, axis=1)
    R = xp.concat([_triu(xp, R[:, :r]), R[:, r:]], axis=1)
    return PivotedQR(Q, R, pd)


def _recompute(A, xp, Q, R, norms2, cols, rdt):
    """Exact residual norms^2 of columns ``cols``: ``||A[:, c] - Q R[:, c]||^2``."""
    if len(cols) == 0:
        return norms2
    res = B.take(A, cols, axis=1) - Q @ B.take(R, cols, axis=1)
    out = norms2.copy()
    out[cols] = B.to_numpy(xp.sum(_abs2(xp, res), axis=0)).astype(np.float64)
    return out


# ----------------------------------------------------------------------------------
# randomized CPQR
# ----------------------------------------------------------------------------------


def _cholqr_precond(C, Rs):
    """Orthonormal ``Q`` and ``R`` with ``C = Q R``, preconditioned by ``Rs``.

    ``M = C Rs^{-1}`` is well conditioned when ``Rs`` is the R factor of a
    subspace embedding of ``C`` [MBM2024, Alg. 1]; two Cholesky-QR passes then
    give orthonormality to working precision. Falls back to Householder QR of
    ``C`` when ``Rs`` is numerically singular or a Cholesky factorisation fails
    (rank-deficient or badly sketched ``C``). Eager: reads whether it failed.
    """
    xp = B.namespace(C)
    m, b = C.shape
    u = B.eps(xp, C.dtype)
    d = np.abs(B.to_numpy(xp.linalg.diagonal(Rs)))
    if d.size and d.min() > 1e3 * u * max(m, b) * d.max() and m >= b:
        try:
            M = B.solve_triangular(Rs, C, lower=False, left=False)
            Rtot = Rs
            for _ in range(2):
                (M,) = B.persist(M)  # read below: evaluated once (Dask)
                G = B.mH(M) @ M
                with B.single_threaded_blas():
                    Rc = B.cholesky(G, upper=True)
                if not bool(np.all(np.isfinite(B.to_numpy(Rc)))):
                    raise ValueError("non-finite Cholesky factor")
                M = B.solve_triangular(Rc, M, lower=False, left=False)
                Rtot = Rc @ Rtot
            return M, _triu(xp, Rtot)
        except Exception:  # noqa: BLE001 - LinAlgError differs per backend
            pass
    Q, R = B.qr(C)
    return Q, R


def _sketch_rows(A, d, rng):
    xp = B.namespace(A)
    m = A.shape[0]
    Om = B.normal((d, m), xp=xp, dtype=B.real_dtype(xp, A.dtype), device=B.device(A), rng=rng)
    if Om.dtype != A.dtype:
        Om = xp.astype(Om, A.dtype)
    return Om


def _row_sketch(A, l, q, rng):
    """``(S, Y)`` with ``Y = S A`` (``l x n``): ``S = Omega`` Gaussian for ``q = 0``,
    else ``S = Z^H`` with ``Z`` an orthonormal basis of ``(A A^H)^q A Omega^H``
    (re-orthonormalised after every product) [HMT2011, Alg. 4.4].
    """
    S = _sketch_rows(A, l, rng)
    Y = S @ A
    for _ in range(q):  # every further pass reads A afresh (Dask: see _backend.pass_product)
        W = B.qr(B.mH(Y))[0]  # n x l
        Z = B.qr(B.pass_product(A, W))[0]  # m x l
        S = B.mH(Z)
        Y = B.pass_product(A, S, left=True)
    return S, Y


def rcpqr(A, k=None, *, p=10, q=0, block_size=256, rng=None, check_finite=True):
    r"""Randomized column-pivoted QR: pivots from a sketch, QR by Cholesky-QR.

    For each block of ``b`` pivots: QRCP of the (downdated) sketch
    ``Y = Omega A`` (``Omega`` Gaussian, ``(b + p) x m``) selects columns ``J``
    and gives ``Y[:, J] = Q_s R_s``; the selected columns, projected against the
    previous blocks, are factored as ``C = (C R_s^{-1}) R_s`` by Cholesky-QR of
    the well-conditioned ``C R_s^{-1}`` (Householder QR if that fails); the block
    row ``R_b = Q_b^H A`` follows and the sketch is downdated,
    ``Y <- Y - (Omega Q_b) R_b`` [MOHvdG2017, Alg. 4], [MBM2024, Alg. 1].

    Parameters
    ----------
    A : (m, n) array
    k : int, optional
        Number of pivots; default ``min(m, n)``.
    p : int, default 10
        Oversampling of the sketch (rows beyond the block size).
    q : int, default 0
        Power iterations for the sketch, ``Y = Omega (A A^H)^q A`` with
        re-orthonormalisation; each costs two more passes over ``A`` and
        sharpens the pivots on slowly decaying spectra.
    block_size : int, default 256
        Pivots chosen per sketch QRCP; ``k <= block_size`` takes one block.
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    PivotedQR
        ``(Q, R, perm)`` with ``Q`` (m x k), ``R`` (k x n), ``A[:, perm] ~= Q @ R``.

    Notes
    -----
    Cost for ``k <= block_size``: one sketch ``2 m n (k + p)``, QRCP of a
    ``(k + p) x n`` matrix (host or native), ``2 m k^2`` for Cholesky-QR and
    ``2 m n k`` for ``R = Q^H A`` -- all matrix-matrix products, two passes over
    ``A``. The pivots are those of QRCP on the sketch, which matches QRCP on
    ``A`` in quality up to the embedding distortion, not index for index.
    Every backend. Dask: the call computes the sketch (one pass over ``A``) and
    the chosen columns ``A[:, J]`` (one pass; they and ``Q`` are kept in memory,
    in the cluster's under ``distributed``); ``R = Q^H A`` is returned lazy (one
    more pass when computed).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.qr import rcpqr
    >>> A = np.random.default_rng(0).standard_normal((50, 40))
    >>> Q, R, perm = rcpqr(A, 10, rng=0)
    >>> bool(np.allclose(Q.T @ Q, np.eye(10)))
    True
    >>> bool(np.allclose(A[:, perm[:10]], Q @ R[:, :10]))
    True
    """
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = min(m, n) if k is None else V.check_rank(k, A.shape)
    p = V.check_count(p, "p")
    q = V.check_count(q, "q")
    block_size = V.check_count(block_size, "block_size", minimum=1)
    return _rcpqr(A, xp, k, p, q, block_size, B.as_generator(rng))


def _rcpqr(A, xp, k, p, q, block_size, gen, rtol=None, candidates=None):
    """Blocked randomized CPQR (see :func:`rcpqr`).

    With ``candidates = c`` (>= the block size) each block instead (i) rescales
    the sketch's columns to the *exact* residual norms of ``A``'s columns
    (known from the rows of ``R`` computed so far), so the first pivot of every
    block is the true Businger-Golub pivot, (ii) takes the first ``c`` sketch
    pivots as candidates, and (iii) chooses the block's pivots by exact CPQR of
    those candidates' residuals (through the ``c x c`` R factor of their
    Householder QR, so only a small matrix is pivoted on the host). The sketch
    has ``c + p`` rows. This costs the same ``2 m n k`` for ``R`` as one big
    block, plus ``2 m c (k + c)`` per block, and its pivots follow CPQR on
    ``A`` closely where a single sketch QRCP does not (slowly decaying spectra,
    whose residual norms a ``(k + p)``-row sketch estimates with a relative
    error of order ``(k + p - j)^{-1/2}`` at step ``j``).
    """
    m, n = A.shape
    b = min(k, block_size)
    if candidates is not None:
        candidates = max(candidates, b)
    Om, Y = _row_sketch(A, min((b if candidates is None else candidates) + p, m), q, gen)
    Om, Y = B.persist(Om, Y)  # read below and downdated per block (Dask: evaluated once)
    # the bookkeeping squares norms on the host: bring A into a safe range (judged on
    # its sketch, which has A's magnitude: no extra pass) by an exact power of two
    A, c = _S.unit_scale(A, ref=Y)
    Y = _S.unscale(Y, 1.0 / c)
    if rtol is not None or candidates is not None:
        full2 = _column_norms2(xp, A)  # one pass over A
    if rtol is not None:
        normA2, used2 = float(full2.sum()), 0.0
    if candidates is not None:
        g2 = full2.copy()
    Qs, Rs_rows = [], []
    remaining = np.arange(n)
    chosen: list[int] = []
    while len(chosen) < k:
        bc = min(b, k - len(chosen))
        Qp = _concat(xp, Qs, axis=1)
        Yr = B.take(Y, remaining, axis=1) if chosen else Y
        if candidates is not None:
            Yr = _rescale_to(xp, Yr, g2[remaining], full2[remaining], math.sqrt(B.eps(xp, A.dtype)))
            pv, Qb = _candidate_block(A, xp, Yr, remaining, bc, candidates, Qp)
        else:
            pv, Qb = _sketched_block(A, xp, Yr, remaining, bc, Qp)
        Rb = B.mH(Qb) @ A
        if len(chosen) + bc < k or rtol is not None:  # read below (Dask: evaluated once)
            Qb, Rb = B.persist(Qb, Rb)
        Qs.append(Qb)
        Rs_rows.append(Rb)
        chosen.extend(int(j) for j in remaining[pv[:bc]])
        remaining = np.delete(remaining, pv[:bc])
        more = len(chosen) < k
        if candidates is not None and more:
            g2 -= _column_norms2(np, B.to_numpy(Rb))
        if rtol is not None:
            rows2 = _column_norms2(np, B.to_numpy(Rb).T)
            used2 += float(rows2.sum())
            t = _rtol_cut(A, xp, Qs, Rs_rows, rows2, normA2, used2, rtol, last=not more)
            if t is not None:  # the tolerance is met t pivots into this block
                Qs[-1], Rs_rows[-1] = Qs[-1][:, :t], Rs_rows[-1][:t, :]
                cut = len(chosen) - bc + t
                remaining = np.concatenate([np.asarray(chosen[cut:], dtype=np.int64), remaining])
                chosen = chosen[:cut]
                break
        if more:  # downdate the sketch [MOHvdG2017, Alg. 4]; read next block (Dask: evaluated once)
            (Y,) = B.persist(Y - (Om @ Qb) @ Rb)
    return _assemble(xp, A, Qs, Rs_rows, chosen, remaining, c)


def _concat(xp, blocks, *, axis):
    """Concatenation of a list of blocks (``None`` for an empty list)."""
    if not blocks:
        return None
    return blocks[0] if len(blocks) == 1 else xp.concat(blocks, axis=axis)


def _column_norms2(xp, X):
    """Squared column norms as a host float64 vector (``X`` already in a safe range)."""
    return B.to_numpy(xp.sum(_abs2(xp, X), axis=0)).astype(np.float64)


def _sketched_block(A, xp, Yr, remaining, bc, Qp):
    """Pivots of the block from QRCP of the sketch ``Yr``; the chosen columns, projected
    against the previous blocks ``Qp``, orthonormalised by Cholesky-QR preconditioned
    with the sketch's triangular factor [MBM2024, Alg. 1]. Returns ``(pv, Qb)``."""
    with B.single_threaded_blas():  # a small matrix: threads only add waiting
        _, Rsk, pv = B.qr_pivoted(Yr)
    pv = np.asarray(B.to_numpy(pv), dtype=np.int64)
    (C,) = B.persist(B.take(A, remaining[pv[:bc]], axis=1))  # read repeatedly (Dask: one pass)
    if Qp is not None:
        C = _cgs2(xp, Qp, C)[0]
    if Rsk.shape[0] >= bc:
        Rs = Rsk[:bc, :bc]
    else:  # sketch shorter than the block (m small): no preconditioner
        Rs = xp.zeros((bc, bc), dtype=A.dtype, device=B.device(A))
    if Rs.dtype != A.dtype:
        Rs = xp.astype(Rs, A.dtype)
    Qb, _ = _cholqr_precond(C, Rs)
    if Qp is not None:  # keep the block orthogonal to the previous ones after rounding
        Qb, _ = _cholqr_precond(_cgs2(xp, Qp, Qb)[0], xp.eye(bc, dtype=A.dtype, device=B.device(A)))
    return pv, Qb


def _candidate_block(A, xp, Yr, remaining, bc, candidates, Qp):
    """Pivots of the block by exact CPQR among the first ``candidates`` sketch pivots:
    Householder QR of the candidates' residuals, QRCP of its small R factor. Returns
    ``(pv, Qb)`` with ``pv`` the sketch pivots reordered by that choice."""
    with B.single_threaded_blas():  # a small matrix: threads only add waiting
        _, _, pv = B.qr_pivoted(Yr)
    pv = np.asarray(B.to_numpy(pv), dtype=np.int64)
    cand = pv[: min(candidates, remaining.size)]
    (C,) = B.persist(B.take(A, remaining[cand], axis=1))  # read repeatedly (Dask: one pass)
    with B.single_threaded_blas():  # m x c panels: too thin for threads to pay on a busy machine
        if Qp is not None:
            C = _cgs2(xp, Qp, C)[0]
        Qc, Rc = B.qr(C)
        Q2, _, p2 = B.qr_pivoted(Rc)
        p2 = np.asarray(B.to_numpy(p2), dtype=np.int64)
        Q2 = Q2[:, :bc]
        Qb = Qc @ (Q2 if Q2.dtype == A.dtype else xp.astype(Q2, A.dtype))
        if Qp is not None:  # keep the block orthogonal to the previous ones after rounding
            Qb = B.qr(_cgs2(xp, Qp, Qb)[0])[0]
    return np.concatenate([cand[p2], pv[cand.size:]]), Qb


def _rtol_cut(A, xp, Qs, Rs_rows, rows2, normA2, used2, rtol, *, last):
    """Pivots of the newest block after which ``||A P - Q R||_F <= rtol ||A||_F``
    (``None`` if not reached and more blocks may follow; the whole block if ``last``).

    The residual before the block's row ``t`` is the residual after the block plus
    the energy of its rows ``t:``. After the block it is ``||A||_F^2 - sum ||R_i||_F^2``,
    or, where that subtraction would cancel (``rtol^2 < 1e3 eps``), the exact
    ``||A - Q R||_F^2`` (one more pass).
    """
    if rtol**2 < 1e3 * B.eps(xp, A.dtype):
        end2 = B.scalar(xp.sum(_abs2(xp, A - _concat(xp, Qs, axis=1) @ _concat(xp, Rs_rows, axis=0))))
    else:
        end2 = max(normA2 - used2, 0.0)
    after = end2 + np.concatenate([np.cumsum(rows2[::-1])[::-1][1:], [0.0]])
    ok = np.nonzero(after <= rtol**2 * normA2)[0]
    if ok.size:
        return int(ok[0]) + 1
    return rows2.size if last else None


def _assemble(xp, A, Qs, Rs_rows, chosen, remaining, c):
    """``PivotedQR`` from the blocks: ``R`` in pivot order, its leading block upper
    triangular, scaled back by ``c``."""
    k = len(chosen)
    Q = _concat(xp, Qs, axis=1)
    R = _concat(xp, Rs_rows, axis=0)
    perm = np.concatenate([np.asarray(chosen, dtype=np.int64), remaining])
    R = B.take(R, perm, axis=1)
    R = xp.concat([_triu(xp, R[:, :k]), R[:, k:]], axis=1)
    return PivotedQR(Q, _S.unscale(R, c), _perm_array(perm, A))


def _rescale_to(xp, Y, g2, full2, sqrt_u):
    """Scale column ``j`` of the sketch ``Y`` to norm ``sqrt(g2[j])`` (exact residual
    norms of ``A``'s columns), except where ``g2`` lost its digits to cancellation
    (``g2 <= sqrt(eps) full2``: the sketch's own estimate is kept there)."""
    yn = np.sqrt(B.to_numpy(xp.sum(_abs2(xp, Y), axis=0)).astype(np.float64))
    ok = (g2 > sqrt_u * full2) & (yn > 0)
    scale = np.where(ok, np.sqrt(np.where(ok, g2, 0.0)) / np.where(ok, yn, 1.0), 1.0)
    rdt = B.real_dtype(xp, Y.dtype)
    return Y * xp.astype(B.from_numpy(scale, like=Y), rdt)[None, :]


# ----------------------------------------------------------------------------------
# strong RRQR
# ----------------------------------------------------------------------------------


def _givens(a, b):
    """Unitary ``G`` (2 x 2) with ``G @ [a, b] = [r, 0]``, ``r = sqrt(|a|^2 + |b|^2) >= 0``."""
    r = math.hypot(abs(a), abs(b))
    if r == 0.0:
        return np.eye(2), 0.0
    return np.array([[np.conj(a) / r, np.conj(b) / r], [-b / r, a / r]]), r


def srrqr(A, k, *, f=2.0, max_swaps=None, check_finite=True):
    r"""Strong rank-revealing QR of Gu and Eisenstat.

    Returns a partial pivoted QR ``A[:, perm] = Q [R11 R12] + E`` whose
    ``k``-column selection satisfies, with ``R22`` the trailing block
    (``||R22|| = ||E||``),

    .. math:: \max_{ij} |(R_{11}^{-1} R_{12})_{ij}| \le f, \quad
              \sigma_i(R_{11}) \ge \frac{\sigma_i(A)}{\sqrt{1 + f^2 k (n-k)}}, \quad
              \sigma_j(R_{22}) \le \sigma_{k+j}(A) \sqrt{1 + f^2 k (n-k)}.

    Starts from :func:`cpqr` with ``k`` pivots and, while some pair ``(i, j)``
    has :math:`|(R_{11}^{-1}R_{12})_{ij}|^2 + (\gamma_j / \omega_i)^2 > f^2`
    (``gamma_j`` the residual norm of unselected column ``j``, ``1/omega_i`` the
    norm of row ``i`` of ``R11^{-1}``), swaps selected column ``i`` with
    unselected column ``j``; each swap multiplies ``|det R11|`` by more than
    ``f`` [GE1996, Alg. 4 and Sec. 4.2].

    Parameters
    ----------
    A : (m, n) array
    k : int
        Number of selected columns, ``1 <= k <= min(m, n)``.
    f : float, default 2.0
        Bound on the interpolation coefficients, ``f > 1``.
    max_swaps : int, optional
        Safety cap on swaps (default ``10 * n + 100``; each swap grows
        ``|det R11|`` by ``f``, so the theoretical count is ``O(k log_f n)``).
    check_finite : bool, default True

    Returns
    -------
    PivotedQR
        ``(Q, R, perm)``: ``Q`` (m x k), ``R = [R11 R12]`` (k x n).

    Notes
    -----
    A swap moves column ``i`` to the end of ``R11`` (Givens rotations restore
    triangularity), brings in column ``j`` with one projection
    ``q_j^H A`` (the new row of ``R22`` in the direction of the incoming
    residual), applies one more Givens rotation and updates ``R11^{-1}``,
    ``R11^{-1} R12`` and the residual norms by rank-one formulas: ``O(k (n+k))``
    host work and ``O(m (n + k^2))`` device work per swap, against the initial
    ``O(m n k)`` of the partial QRCP. If ``A`` has numerical rank ``r < k``, the
    swaps act on the leading ``r`` pivots and the remaining ``k - r`` follow by
    CPQR. The swap loop is eager (host bookkeeping in float64/complex128 on
    ``k x n`` arrays; Dask input is gathered to the host).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.qr import srrqr
    >>> from randla.testing import kahan
    >>> K = kahan(40)
    >>> Q, R, perm = srrqr(K, 39, f=1.5)
    >>> T = np.linalg.solve(R[:, :39], R[:, 39:])
    >>> bool(np.abs(T).max() <= 1.5)
    True
    """
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = V.check_rank(k, A.shape)
    if isinstance(f, bool) or not isinstance(f, (int, float, np.floating, np.integer)):
        raise TypeError(f"f must be a float, got {type(f).__name__}")
    f = float(f)
    if not f > 1.0 or not math.isfinite(f):
        raise ValueError(f"f must be a finite number > 1, got {f!r}")
    max_swaps = 10 * n + 100 if max_swaps is None else V.check_count(max_swaps, "max_swaps")
    like = A
    A, lazy = _host_lazy(A)
    xp = B.namespace(A)
    res = _srrqr(A, xp, k, f, max_swaps)
    return _back(res, like) if lazy else res


def _srrqr(A, xp, k, f, max_swaps):
    # the swaps square entries of R and R11^{-1} on the host: work in a safe range
    A, c = _S.unit_scale(A)
    Q, R, perm = _srrqr_scaled(A, xp, k, f, max_swaps)
    return PivotedQR(Q, _S.unscale(R, c), perm)


def _srrqr_scaled(A, xp, k, f, max_swaps):
    m, n = A.shape
    Q, R, perm = _cpqr(A, xp, k, None)
    if k == n:
        return PivotedQR(Q, R, perm)
    Rh = B.to_numpy(R)
    hdt = np.complex128 if np.iscomplexobj(Rh) else np.float64
    Rh = Rh.astype(hdt)
    perm_h = np.asarray(B.to_numpy(perm), dtype=np.int64)
    d = np.abs(np.diagonal(Rh[:, :k]))
    u = B.eps(xp, A.dtype)
    tol = u * max(m, n) * (d[0] if d.size else 0.0)
    r = int(np.count_nonzero(d > tol * 10)) if d[0] > 0 else 0
    if r == 0:
        return PivotedQR(Q, R, perm)
    if r < k:
        # numerical rank r < k: swap on the leading r pivots, then let CPQR pick
        # the remaining k - r (they span rounding noise)
        Qr, Rr = Q[:, :r], Rh[:r, :]
        Qr, Rr, perm_h, nsw = _swap_loop(A, xp, Qr, Rr, perm_h, r, f, max_swaps)
        Rorig = np.empty_like(Rr)
        Rorig[:, perm_h] = Rr
        Rd = xp.astype(B.from_numpy(Rorig, like=A), A.dtype)
        res = _cpqr_loop(A, xp, k, None, Q=Qr, R=Rd, selected=list(perm_h[:r]))
        Q2, R2, perm2 = res
        return PivotedQR(Q2, xp.astype(R2, A.dtype), perm2)
    Q, Rh, perm_h, _ = _swap_loop(A, xp, Q, Rh, perm_h, k, f, max_swaps)
    Rh = np.concatenate([np.triu(Rh[:, :k]), Rh[:, k:]], axis=1)
    Rd = xp.astype(B.from_numpy(Rh, like=A), A.dtype)
    return PivotedQR(Q, Rd, _perm_array(perm_h, A))


def _swap_loop(A, xp, Q, Rt, perm, k, f, max_swaps):
    """Gu-Eisenstat swaps on ``A[:, perm] ~= Q [R11 R12]`` (``Rt`` host, ``Q`` device)."""
    m, n = A.shape
    import scipy.linalg as sl

    dt = A.dtype
    hdt = Rt.dtype
    u = B.eps(xp, dt)
    Rt = Rt.copy()
    perm = perm.copy()
    R11 = np.triu(Rt[:, :k])
    Rinv = sl.solve_triangular(R11, np.eye(k, dtype=hdt), lower=False)
    AB = Rinv @ Rt[:, k:]
    # exact residual norms of the unselected columns
    res = B.take(A, perm[k:], axis=1) - Q @ xp.astype(B.from_numpy(Rt[:, k:], like=A), dt)
    gamma = np.sqrt(B.to_numpy(xp.sum(_abs2(xp, res), axis=0)).astype(np.float64))
    gref = gamma.copy()
    f2 = f * f
    swaps = 0
    while swaps < max_swaps:
        w2 = np.sum(np.abs(Rinv) ** 2, axis=1)  # 1 / omega_i^2
        crit = np.abs(AB) ** 2 + w2[:, None] * (gamma**2)[None, :]
        i, j = np.unravel_index(int(np.argmax(crit)), crit.shape)
        if not crit[i, j] > f2 * (1.0 + 8 * u):
            break
        swaps += 1
        # 1. cyclic shift: selected column i -> last position, retriangularize
        order = np.r_[np.arange(i), np.arange(i + 1, k), i]
        Rt[:, :k] = Rt[:, order]
        perm[:k] = perm[order]
        AB = AB[order, :]
        Rinv = Rinv[order, :]
        W = np.eye(k - i, dtype=hdt)
        for l in range(i, k - 1):
            G, rr = _givens(Rt[l, l], Rt[l + 1, l])
            Rt[l : l + 2, :] = G @ Rt[l : l + 2, :]
            Rt[l + 1, l] = 0.0
            Rt[l, l] = rr
            Rinv[:, l : l + 2] = Rinv[:, l : l + 2] @ G.conj().T
            W[:, l - i : l - i + 2] = W[:, l - i : l - i + 2] @ G.conj().T
        if k - 1 > i:
            Wd = xp.astype(B.from_numpy(W, like=A), dt)
            Q = _set(Q, (slice(None), slice(i, k)), Q[:, i:k] @ Wd)
        Rinv = np.triu(Rinv)
        # 2. unselected column j -> first unselected position
        corder = np.r_[j, np.arange(j), np.arange(j + 1, n - k)]
        Rt[:, k:] = Rt[:, k + corder]
        perm[k:] = perm[k + corder]
        AB = AB[:, corder]
        gamma, gref = gamma[corder], gref[corder]
        # 3. residual of the incoming column and R22's row along it
        a = A[:, int(perm[k])]
        v, h = _cgs2(xp, Q, a - Q @ xp.astype(B.from_numpy(Rt[:, k], like=A), dt))
        Rt[:, k] = Rt[:, k] + B.to_numpy(h)
        nu = B.scalar(xp.linalg.vector_norm(v))
        if nu > u * max(m, n) * abs(Rt[0, 0]):
            qn = v / xp.asarray(nu, dtype=B.real_dtype(xp, dt), device=B.device(A))
            c2 = B.to_numpy(_conj(xp, qn) @ B.take(A, perm[k + 1 :], axis=1)).astype(hdt)
        else:
            nu, qn, c2 = 0.0, None, np.zeros(n - k - 1, dtype=hdt)
        # 4. swap columns k-1 and k, one Givens rotation on (mu, nu)
        mu = Rt[k - 1, k]
        g1 = Rt[k - 1, k - 1]
        gbar = math.hypot(abs(mu), nu)
        b1 = Rt[: k - 1, k - 1].copy()
        b2 = Rt[: k - 1, k].copy()
        c1 = Rt[k - 1, k + 1 :].copy()
        newrow = (np.conj(mu) * c1 + nu * c2) / gbar
        resrow = (-nu * c1 + mu * c2) / gbar
        out_r = np.conj(mu) * g1 / gbar  # outgoing column's entry in the new row k
        Ainv = Rinv[: k - 1, : k - 1]
        u_vec = -g1 * Rinv[: k - 1, k - 1]  # A^{-1} b1
        vv = AB[: k - 1, 0] + u_vec * AB[k - 1, 0]  # A^{-1} b2
        AinvB = AB[: k - 1, 1:] + np.outer(u_vec, AB[k - 1, 1:])
        # factors
        Rt[: k - 1, k - 1], Rt[: k - 1, k] = b2, b1
        Rt[k - 1, : k - 1] = 0.0
        Rt[k - 1, k - 1] = gbar
        Rt[k - 1, k] = out_r
        Rt[k - 1, k + 1 :] = newrow
        perm[k - 1], perm[k] = perm[k], perm[k - 1]
        qk = Q[:, k - 1]
        qk_new = qk * xp.asarray(mu / gbar, dtype=dt, device=B.device(A))
        if qn is not None:
            qk_new = qk_new + qn * xp.asarray(nu / gbar, dtype=B.real_dtype(xp, dt), device=B.device(A))
        Q = _set(Q, (slice(None), k - 1), qk_new)
        # R11^{-1}
        Rinv_new = np.zeros_like(Rinv)
        Rinv_new[: k - 1, : k - 1] = Ainv
        Rinv_new[: k - 1, k - 1] = -vv / gbar
        Rinv_new[k - 1, k - 1] = 1.0 / gbar
        Rinv = Rinv_new
        # R11^{-1} R12
        AB_new = np.empty_like(AB)
        AB_new[: k - 1, 0] = u_vec - vv * (out_r / gbar)
        AB_new[: k - 1, 1:] = AinvB - np.outer(vv, newrow / gbar)
        AB_new[k - 1, 0] = out_r / gbar
        AB_new[k - 1, 1:] = newrow / gbar
        AB = AB_new
        # residual norms
        g_rest2 = gamma[1:] ** 2 - np.abs(c2) ** 2 + np.abs(resrow) ** 2
        gamma = np.concatenate([[nu * abs(g1) / gbar], np.sqrt(np.maximum(g_rest2, 0.0))])
        gref[0] = gamma[0]
        lost = np.nonzero(gamma**2 <= math.sqrt(u) * gref**2)[0]
        lost = lost[lost > 0]
        if lost.size:
            Rc = xp.astype(B.from_numpy(Rt[:, k + lost], like=A), dt)
            resid = B.take(A, perm[k + lost], axis=1) - Q @ Rc
            gamma[lost] = np.sqrt(B.to_numpy(xp.sum(_abs2(xp, resid), axis=0)).astype(np.float64))
            gref[lost] = gamma[lost]
    return Q, Rt, perm, swaps
