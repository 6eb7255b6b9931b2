"""The engines behind :func:`randla.interpolative.interp_decomp`.

Every method ends the same way: a pivoted ``R`` (``k x n``, pivot order, ``R11``
upper triangular) gives ``T[:, perm] = [I, R11^{-1} R12]`` (:func:`id_from_qr`).
They differ in how the pivots and ``R`` are found:

* dense ``"cpqr"`` / ``"srrqr"`` / ``"randomized"`` (:data:`DENSE`): a (partial)
  pivoted QR of ``A`` itself (:mod:`randla.qr`);
* matrix-free (:func:`operator_id`): pivots from QRCP of the row sketch
  ``Y = Omega^H (A A^H)^q A``, then the chosen columns ``C = A E_J`` (one product)
  and ``R = Q_C^H A`` (one product with ``A^H``), so ``T`` holds the least-squares
  coefficients of ``A`` on its own columns, as in the dense randomized method.
"""

from __future__ import annotations

import numpy as np

from . import _backend as B
from . import _validate as V
from . import qr as _qr
from ._scale import unit_scale
from .sketch import gaussian

__all__ = ["DENSE", "id_from_qr", "operator_id", "default_rtol"]


def _leading_rank(d, tol):
    """Length of the leading run of ``d > tol`` (``d`` host, may be empty)."""
    small = np.nonzero(~(d > tol))[0]
    return int(small[0]) if small.size else d.size


def id_from_qr(R, perm, k, xp, like):
    """``(idx, T)`` with ``T[:, perm] = [I, R11^+ R12]`` from a pivoted ``R`` (k x n).

    Where ``R11`` is singular to working precision (a pivot ``|R_jj| <= u |R_11|``,
    ``u`` the unit roundoff: the matrix has exact rank ``r < k``), the coefficients
    come from its leading ``r x r`` block and the remaining ``k - r`` skeleton columns
    get zero weight: bounded ``T``, same error. Every pivot above that takes part,
    however small: the pivoting bounds ``|R12[j, :]| <= |R_jj|``, so the solve stays
    bounded, and the ID reaches the accuracy of its pivoted QR (a rank threshold
    ``10 u max(m, n) |R_11|``, as for a numerical rank, left up to a fifth of the
    columns of a 1000 x 200 float32 matrix at ``k = 100`` unused: 8.7e-4 against
    the QR's 1.3e-4). ``like`` gives namespace, device and dtype.
    """
    n = R.shape[1]
    dt = like.dtype
    dev = B.device(like)
    R = R[:k, :]
    if R.dtype != dt:
        R = xp.astype(R, dt)
    (R,) = B.persist(R)  # its diagonal is read, T is made from it (Dask: evaluated once)
    R, _ = unit_scale(R)  # T = R11^+ R12 is scale-free; a subnormal R11 would overflow the solve
    d = np.abs(B.to_numpy(xp.linalg.diagonal(R[:, :k])))
    u = B.eps(xp, dt)
    r = _leading_rank(d, u * d[0]) if d.size and d[0] > 0 else 0
    eye = xp.eye(k, dtype=dt, device=dev)
    if k == n:
        Tp = eye
    elif r == 0:
        Tp = xp.concat([eye, xp.zeros((k, n - k), dtype=dt, device=dev)], axis=1)
    else:
        W = B.solve_triangular(R[:r, :r], R[:r, k:], lower=False)
        if r < k:
            W = xp.concat([W, xp.zeros((k - r, n - k), dtype=dt, device=dev)], axis=0)
        Tp = xp.concat([eye, W], axis=1)
    perm_h = np.asarray(B.to_numpy(perm), dtype=np.int64)
    T = B.take(Tp, np.argsort(perm_h), axis=1)
    return _qr._perm_array(perm_h[:k], like), T


def default_rtol(xp, dtype, shape):
    """The numerical-rank tolerance used when neither ``k`` nor ``rtol`` is given."""
    return max(shape) * B.eps(xp, dtype)


# ----------------------------------------------------------------------------------
# dense methods: (A, xp, k, rtol, p, q, f, gen) -> (idx, T); k caps the rank when
# rtol is given and is None when only rtol is
# ----------------------------------------------------------------------------------


def _cap(A, k):
    return min(A.shape) if k is None else k


def _cpqr_id(A, xp, k, rtol, p, q, f, gen):
    _, R, perm = _qr._cpqr(A, xp, _cap(A, k), rtol)
    return id_from_qr(R, perm, R.shape[0], xp, A)


def _srrqr_id(A, xp, k, rtol, p, q, f, gen):
    if rtol is not None:  # the rank from CPQR, the columns from sRRQR at that rank
        k = _qr._cpqr(A, xp, _cap(A, k), rtol).R.shape[0]
    _, R, perm = _qr._srrqr(A, xp, k, f, 10 * A.shape[1] + 100)
    return id_from_qr(R, perm, k, xp, A)


def _id_blocking(k):
    """Block size and candidates per block of the randomized ID's pivoted QR.

    One QRCP of a ``(k + p)``-row sketch picks columns whose ID error exceeds
    CPQR's on slowly decaying spectra (``sigma_i = i^-0.5``, 2000 x 2000,
    ``k = 200``: 2.32 vs 2.08 times ``sigma_{k+1}``), and neither a longer
    sketch (``l = 3k``: 2.25) nor sRRQR swaps on the sketch close the gap: the
    sketch's residual-norm estimates are too coarse for the greedy choice.
    Blocks of ``k / 8`` pivots, each starting from the exact residual norms and
    choosing by exact CPQR among ``2b`` sketch candidates (see
    ``randla.qr._rcpqr``), follow CPQR on ``A`` much more closely (same
    matrix: 2.14; 4096 x 1024, ``k = 128``: 1.98 vs CPQR's 2.02, medians over
    three seeds, benchmarks/compare_qr.py) at the same ``2 m n k`` flops for
    ``R`` plus one thin pass over ``A`` per block. The blocked, downdated
    sketch is that of HQRRP [MOHvdG2017]; smaller blocks track CPQR better
    and cost more passes.
    """
    b = min(k, max(16, -(-k // 8)))
    return b, 2 * b


def _randomized_id(A, xp, k, rtol, p, q, f, gen):
    if rtol is not None:  # blocked randomized CPQR that stops at ||A P - Q R||_F <= rtol ||A||_F
        _, R, perm = _qr._rcpqr(A, xp, _cap(A, k), p, q, 64, gen, rtol=rtol)
        return id_from_qr(R, perm, R.shape[0], xp, A)
    b, c = _id_blocking(k)
    _, R, perm = _qr._rcpqr(A, xp, k, p, q, b, gen, candidates=c)
    return id_from_qr(R, perm, k, xp, A)


DENSE = {"cpqr": _cpqr_id, "srrqr": _srrqr_id, "randomized": _randomized_id}


# ----------------------------------------------------------------------------------
# matrix-free: LinearOperator and sparse input
# ----------------------------------------------------------------------------------


def _row_sketch(op, l, q, gen, check_finite):
    """``Y = Omega^H (A A^H)^q A`` (``l x n``) from products, re-orthonormalised
    between them [HMT2011, Alg. 4.4]; checked for NaN/Inf (a LinearOperator's entries
    cannot be scanned)."""
    m, n = op.shape
    Om = gaussian(m, l, like=V.operand_like(op), rng=gen)
    with V.quiet_nonfinite(check_finite):
        Yh = op.rmatmat(Om)  # A^H Omega, n x l
    if check_finite:
        V.check_finite_through(Yh, op)
    for _ in range(q):
        Yh = op.rmatmat(B.qr(op.matmat(B.qr(Yh)[0]))[0])
    return B.mH(Yh)


def _sketch_rank(Y, rtol, l_max):
    """Rank for ``rtol`` read from the sketch's QRCP (Frobenius, relative), or
    ``None`` if the sketch is too short to tell (fewer than 5 spare rows)."""
    with B.single_threaded_blas():
        R = B.qr_pivoted(Y)[1]
    r = _qr._rank_from_rows(np.triu(np.asarray(B.to_numpy(R))), rtol)
    return r if r + 5 <= Y.shape[0] or Y.shape[0] >= l_max else None


def _columns(op, J):
    """``A[:, J]`` from one product with unit vectors."""
    n = op.shape[1]
    E = np.zeros((n, len(J)), dtype=op.dtype)
    E[np.asarray(J), np.arange(len(J))] = 1
    return op.matmat(E)


def _skeleton(op, Y, k):
    """``(idx, T, C)``: the ID of rank ``k`` with the pivots of the sketch ``Y``'s QRCP,
    and its columns ``C = A[:, idx]``."""
    with B.single_threaded_blas():
        perm = np.asarray(B.qr_pivoted(Y)[2], dtype=np.int64)
    C = _columns(op, perm[:k])
    Qc, _ = B.qr(C)
    R = B.take(B.mH(op.rmatmat(Qc)), perm, axis=1)  # Q_C^H A in pivot order; R[:, :k] = R_C
    R = np.concatenate([np.triu(R[:, :k]), R[:, k:]], axis=1)
    return (*id_from_qr(R, perm, k, np, np.zeros((1, 1), dtype=op.dtype)), C)


# Gaussian probes of the residual that check an ID by tolerance, and the fraction of
# rtol^2 their estimate must meet (the 1 % quantile of chi^2_32 / 32 is 0.51)
PROBES = 32
SAFETY = 0.5


def _meets(op, probe, C, T, rtol):
    """Whether ``||A - C T||_F <= rtol ||A||_F`` by the probes ``(Omega, A Omega)``:
    ``E[||E Omega||_F^2] = PROBES ||E||_F^2`` for a Gaussian ``Omega`` [HMT2011, Sec. 4.3],
    for the residual ``E`` and for ``A`` alike."""
    Om, Z = probe
    Z2 = float(np.sum(np.abs(Z) ** 2))
    E2 = float(np.sum(np.abs(Z - C @ (T @ Om)) ** 2))
    rounding = (100 * B.eps(np, op.dtype)) ** 2 * Z2  # the probes' own rounding
    return E2 <= max(SAFETY * rtol**2 * Z2, rounding)


def operator_id(op, k, rtol, p, q, gen, check_finite):
    """Column ID of a matrix-free operand: ``(idx, T)`` (NumPy, the operand's dtype).

    By rank: one sketch of ``k + p`` rows. By tolerance: the sketch doubles (fresh
    Gaussian rows) until its QRCP finds the rank with 5 rows to spare and the ID at
    that rank meets ``rtol`` on :data:`PROBES` Gaussian probes of its residual. The
    sketch's own residual is no such check: its QRCP fits the pivots to the sketch,
    and it is 0 at a rank equal to its rows (150 x 100 Gaussian, ``rtol = 1e-2``:
    the ID's error was a median 9.4 times ``rtol``).
    """
    m, n = op.shape
    cap = min(m, n) if k is None else k
    if rtol is None:
        return _skeleton(op, _row_sketch(op, min(k + p, m, n), q, gen, check_finite), k)[:2]
    l = min(max(2 * p, 16), m, n)
    Y = _row_sketch(op, l, q, gen, check_finite)
    probe, low = None, 0  # low: past a rank the probes showed too small
    while True:
        r = _sketch_rank(Y, rtol, min(m, n))
        if r is not None:
            k = min(max(r, low), cap)
            idx, T, C = _skeleton(op, Y, k)
            if probe is None:
                Om = np.asarray(gaussian(n, PROBES, like=np.zeros((1, 1), dtype=op.dtype), rng=gen))
                probe = Om, op.matmat(Om)
            if k >= cap or _meets(op, probe, C, T, rtol):
                return idx, T
            low = k + max(1, k // 16)  # geometric: few retries, 1/16 overshoot at most
            if Y.shape[0] >= min(m, n):  # the sketch is whole: only the rank can grow
                continue
        l = min(2 * l, m, n)
        Y = np.concatenate([Y, _row_sketch(op, l - Y.shape[0], q, gen, False)], axis=0)
