"""Blocked randomized QB to a tolerance: the engine of the fixed-accuracy range finder.

``A ~= Q B`` with ``Q`` (m x r) orthonormal and ``B = Q^H A``; blocks of ``b`` columns
are added until the error meets ``rtol`` in the Frobenius or the spectral norm, and the
rank ``r`` is then cut to the column.

Each block is one randomized range finder on the residual ``E = (I - Q Q^H) A``:
``Y = E Omega`` (one pass), ``q`` power iterations on ``E`` (two passes each),
``Q_i = orth(Y)`` re-orthogonalised against ``Q``, ``B_i = Q_i^H A`` (one pass)
[YGL2018, Alg. 4]. The SVD of the small ``B_i`` rotates the block so that its
directions come in decreasing order of energy.

Frobenius norm
    ``||A - Q B||_F^2 = ||A||_F^2 - sum_i ||B_i||_F^2`` exactly, so the rank is cut to the
    column from the rotated block's energies [YGL2018]. Where that subtraction would
    cancel (``rtol^2 < 1e3 eps``), the residual of a dense ``A`` is recomputed exactly
    once the downdated value reaches the noise level.
Spectral norm
    No identity gives ``||A - Q B||_2``; the singular values of ``B_i`` are Ritz values
    of the residual, lower bounds on its singular values. Blocks are added until one has
    at least half of its Ritz values below the tolerance (the block went past the
    cut-off with room to spare). One more pass then refines all of them at once:
    ``A V`` with ``V`` the right singular vectors of the whole ``B`` is half a power
    iteration on the whole basis, its singular values are Ritz values of ``A`` at least
    as large as those of ``B`` and its left singular vectors a better basis; the rank is
    the number of them above ``rtol ||A||_2 / 1.1``. The factor 1.1 covers the Ritz
    values' lag behind the singular values on slowly decaying spectra (measured:
    ``sigma_i = i^-1/2`` at ``q = 1`` is the worst case of the spectra tried).
    The cut is then checked: a basis that is not the exact top singular subspace
    leaves more than ``sigma_(r+1)`` behind, and on dense spectra the cut's error
    came out a few per cent above the tolerance (up to 22 % with blocks of 1-4).
    Ten Golub-Kahan-Lanczos steps on ``(I - Q Q^H) A`` estimate its norm; columns
    are added while the estimate exceeds the tolerance, and blocks once the basis
    is used up.
    The HMT a-posteriori bound ``10 sqrt(2/pi) max_i ||E w_i||`` [HMT2011, Eq. 4.3]
    is not used: ``||E w||`` measures ``||E||_F``, so on slow decays it asks for ten
    times the rank.

References
----------
.. [YGL2018] W. Yu, Y. Gu, Y. Li, "Efficient randomized algorithms for the fixed-
   precision low-rank matrix approximation", SIMAX 39(3), 2018.
.. [HMT2011] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
   randomness", SIAM Review 53(2), 2011.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validate as V
from ._scale import unit_scale
from .estimate import _lanczos_norm
from .sketch import _apply as _sketch_apply

__all__ = ["adaptive_qb", "NORMS"]

RITZ_SAFETY = 1.1  # the spectral cut is made at rtol ||A||_2 / RITZ_SAFETY


@B.scipy_pool_scoped
def adaptive_qb(A, rtol, *, block_size, q, max_rank, norm, rng, check_finite, need_b=True):
    """``(Q, B)`` with ``||A - Q B|| <= rtol ||A||`` in ``norm`` (see the module notes).

    ``B`` is ``None`` when ``need_b`` is false (the spectral path then saves a pass).
    """
    op, c0 = _unit_operand(V.as_operand(A, check_finite=check_finite))
    rtol = V.check_rtol(rtol)
    b = V.check_count(block_size, "block_size", minimum=1)
    q = V.check_count(q, "q")
    run = NORMS[V.check_choice(norm, "norm", NORMS)]
    m, n = op.shape
    max_rank = min(m, n) if max_rank is None else V.check_rank(max_rank, op.shape, "max_rank")
    if norm == "fro" and not (op.dense or hasattr(op.A, "data")):
        raise ValueError("norm='fro' needs the entries of A; use norm='2' for a LinearOperator")
    gen = B.as_generator(rng)
    with V.quiet_nonfinite(check_finite):
        Y = _sketch_apply(op, min(b, max_rank), "gaussian", gen)
    if check_finite:  # a LinearOperator's entries cannot be scanned: its products are
        V.check_finite_through(Y, op)
    (Y,) = B.persist(Y)  # read for the scale, used by the first block (Dask: evaluated once)
    sop, c = _scaled(op, Y)
    Q, Bm = run(sop, Y / c, rtol, b, q, max_rank, gen, need_b, op, c)
    return Q, (None if Bm is None else Bm * (c * c0))


def _unit_operand(op):
    """``(op / c, c)``: a dense ``A`` divided by the power of two of
    :func:`randla._scale.unit_scale`, so that its products are formed at a normal scale
    (those of subnormal entries keep a few bits: a rank-6 float32 matrix at 2^-140 came
    out rank 30 at rtol 1e-3, and missed it); other operands as they are (their
    products are rescaled afterwards by :func:`_scaled`)."""
    if not op.dense:
        return op, 1.0
    A, c = unit_scale(op.A)
    if c == 1.0:
        return op, 1.0
    matmat, rmatmat = B.products(A)
    return op._replace(A=A, matmat=matmat, rmatmat=rmatmat), c


def _scaled(op, Y):
    """The operand divided by ``c``, a power of two near ``max |Y|`` for a sketch ``Y``
    of it: exact, and it keeps squared norms and Gram matrices representable for data
    at any scale (the products of ``A`` themselves do not overflow where ``A`` does not).
    """
    xp = op.xp
    amax = B.scalar(xp.max(xp.abs(Y)))
    c = 2.0 ** math.floor(math.log2(amax)) if amax > 0 and math.isfinite(amax) else 1.0
    if c == 1.0:
        return op, 1.0
    return op._replace(matmat=lambda X: op.matmat(X) / c, rmatmat=lambda X: op.rmatmat(X) / c), c


def _deflate(xp, Y, Q):
    """``(I - Q Q^H) Y`` applied twice ("twice is enough"); ``Q`` may be ``None``."""
    if Q is None:
        return Y
    for _ in range(2):
        Y = Y - Q @ (B.mH(Q) @ Y)
    return Y


def _block(op, Y, Q, q):
    """The next block from its sketch ``Y = A Omega``: power iterations on the residual
    ``(I - Q Q^H) A``, re-orthogonalised against ``Q``; returns ``(Q_i, B_i, s_i)``
    rotated by the SVD of ``B_i = Q_i^H A`` (``s_i`` its singular values, host)."""
    xp = op.xp
    Y = _deflate(xp, Y, Q)
    for _ in range(q):
        Y = _deflate(xp, op.matmat(_panel_qr(op.rmatmat(_panel_qr(Y)))), Q)
    Qi = _panel_qr(_deflate(xp, _panel_qr(Y), Q))
    Ub, Sb, Vbh = B.svd(B.mH(op.rmatmat(Qi)))
    # the stopping test and later blocks read these (Dask: evaluated once, kept in memory)
    Qi, Bi, Sb = B.persist(Qi @ Ub, Sb[:, None] * Vbh, Sb)
    return Qi, Bi, np.asarray(B.to_numpy(Sb), dtype=np.float64)


def _panel_qr(Y):
    """``Q`` of the QR of a block; one BLAS thread for a small one (``m b^2 <= 2^25``),
    where threads only wait for each other on a busy machine (600 x 32 at load 3 on two
    cores: up to 0.17 s against 0.9 ms)."""
    m, b = Y.shape
    if m * b * b > B._TRSM_MAX_FLOPS:
        return B.qr(Y)[0]
    with B.single_threaded_blas(Y):
        return B.qr(Y)[0]


def _next_block(op, Y, Q, b, q, max_rank, gen):
    """The next block (see :func:`_block`); the first one from the sketch ``Y`` already
    taken, later ones from a fresh Gaussian sketch of ``b`` columns (fewer at
    ``max_rank``)."""
    if Q is not None:
        Y = _sketch_apply(op, min(b, max_rank - Q.shape[1]), "gaussian", gen)
    return _block(op, Y, Q, q)


def _grow(xp, Q, Bm, Qi, Bi):
    if Q is None:
        return Qi, Bi
    return xp.concat([Q, Qi], axis=1), xp.concat([Bm, Bi], axis=0)


def _qb_fro(op, Y, rtol, b, q, max_rank, gen, need_b, orig, c):
    """Blocks until ``||A - Q B||_F <= rtol ||A||_F``, cut to the column [YGL2018, Alg. 4]."""
    xp = op.xp
    entries = orig.A if orig.dense else xp.asarray(orig.A.data)
    total = B.scalar(xp.sum(xp.abs(entries / c) ** 2))
    target = rtol**2 * total
    noise = 1e3 * B.eps(xp, op.dtype) * total  # below this the downdated E is rounding
    Q = Bm = None
    E = total
    while _rank(Q) < max_rank:
        Qi, Bi, s = _next_block(op, Y, Q, b, q, max_rank, gen)
        energies = s**2
        E -= float(energies.sum())
        if orig.dense and target < noise and E <= noise:  # recompute where it cancels
            Qa, Ba = _grow(xp, Q, Bm, Qi, Bi)
            E = B.scalar(xp.sum(xp.abs(entries / c - Qa @ Ba) ** 2))
        if E <= target:
            tail = energies[::-1].cumsum()[::-1]  # tail[j] = sum_{i >= j} energies
            keep = int((tail > target - E).sum())  # energy target - E may be left out
            if Q is None and total > 0:  # rounding (rtol^2 total can round up to total) leaves A itself out
                keep = max(keep, 1)
            return _grow(xp, Q, Bm, Qi[:, :keep], Bi[:keep, :])
        Q, Bm = _grow(xp, Q, Bm, Qi, Bi)
    return Q, Bm


def _rank(Q):
    return 0 if Q is None else Q.shape[1]


def _qb_spectral(op, Y, rtol, b, q, max_rank, gen, need_b, orig, c):
    """Blocks until one has half its Ritz values below ``rtol ||A||_2``, then one pass
    ``A V`` refines the Ritz values of the whole basis, the rank is cut there and the
    cut is checked by a Lanczos estimate of the residual (more columns, or more
    blocks, where it fails)."""
    xp = op.xp
    Q = Bm = None
    tol = None
    while True:
        while _rank(Q) < max_rank:
            Qi, Bi, s = _next_block(op, Y, Q, b, q, max_rank, gen)
            bj = s.size
            if tol is None:
                tol = rtol * s[0] / RITZ_SAFETY  # s[0] <= ||A||_2: a conservative tolerance
            Q, Bm = _grow(xp, Q, Bm, Qi, Bi)
            if np.count_nonzero(s > tol) <= bj - max(1, bj // 2):
                break
        # one pass: Ritz values of A on the row space of B, and their left vectors
        Vh = B.svd(Bm)[2]
        Q = Bm = None  # not read again: freed before the m x r product and its SVD
        U2, S2, _ = B.svd(op.matmat(B.mH(Vh)))
        U2, S2 = B.persist(U2, S2)  # S2 is read, U2 returned (Dask: evaluated once)
        s2 = np.asarray(B.to_numpy(S2), dtype=np.float64)
        r = min(int(np.count_nonzero(s2 > rtol * s2[0] / RITZ_SAFETY)), max_rank)
        r = _checked_cut(op, U2, r, rtol * s2[0], max_rank, gen)
        if r is not None or _rank(U2) >= max_rank:
            break
        # the whole basis misses the tolerance: go on from it
        Q, Bm = U2, B.mH(op.rmatmat(U2))
    Q = U2[:, :max_rank if r is None else r]
    return Q, (B.mH(op.rmatmat(Q)) if need_b else None)


# Lanczos steps of the residual check of the spectral cut (two single-vector passes each)
CHECK_STEPS = 10
# The check accepts a cut whose Lanczos estimate is at most tol / CHECK_SAFETY: ten steps
# underestimate a residual with many clustered singular values by up to about 2 %
# (4000 x 1000, sigma_i = i^-1/2, rtol 0.05: 36 of 40 float32 runs 0.2-2.2 % over rtol).
CHECK_SAFETY = 1.05


def _checked_cut(op, U, r, tol, max_rank, gen):
    """The smallest rank ``j >= r`` of the orthonormal basis ``U`` whose residual
    ``||(I - U_j U_j^H) A||_2``, estimated by :data:`CHECK_STEPS` Lanczos steps, is at
    most ``tol``; ``None`` where no ``j`` up to ``U``'s width (or ``max_rank``) is.

    Ritz values bound the singular values from below, and a basis cut where they
    cross the tolerance leaves, on dense spectra, an error a few per cent above it
    (600 runs on 40 x 60 to 200 x 150 matrices, blocks of 1 to 32: 34 misses, by up
    to 22 %). The Lanczos estimate is a lower bound as well, but of the residual
    itself, and tight to a few per cent after :data:`CHECK_STEPS` steps; the cut must
    meet ``tol / CHECK_SAFETY``.

    The residual does not grow with ``j`` (the bases are nested), so ``j`` is found by
    steps that double from ``r`` and then bisection: ``O(log(j - r))`` checks, not
    ``j - r`` (4000 x 1000, ``sigma_i = i^-1/2``, float32: 46 checks, 500 passes).
    """
    if tol <= 0:  # a zero A: nothing to capture
        return r
    full, stop = min(op.shape), min(_rank(U), max_rank)

    def met(j):
        estimate = B.scalar(_lanczos_norm(_projected_out(op, U[:, :j]), CHECK_STEPS, gen))
        return j >= full or CHECK_SAFETY * estimate <= tol

    if met(r):
        return r
    lo, step = r, 1  # lo misses the tolerance
    while True:
        if lo >= stop:
            return None
        hi = min(lo + step, stop)
        if met(hi):
            break
        lo, step = hi, 2 * step
    while hi - lo > 1:  # lo misses, hi meets
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if met(mid) else (mid, hi)
    return hi


def _projected_out(op, Q):
    """The operand ``(I - Q Q^H) A`` (products only: one pass with ``A`` each)."""

    def matmat(X):
        Y = op.matmat(X)
        return Y - Q @ (B.mH(Q) @ Y)

    def rmatmat(X):
        return op.rmatmat(X - Q @ (B.mH(Q) @ X))

    return op._replace(matmat=matmat, rmatmat=rmatmat, dense=False)


NORMS = {"fro": _qb_fro, "2": _qb_spectral}
