"""Rank-revealing QR: column-pivoted QR, randomized CPQR and strong RRQR.

Three ways to pick ``k`` well-conditioned columns of ``A`` together with an
orthonormal basis of their span:

* :func:`cpqr` -- Businger-Golub greedy pivoting [BG1965]_. NumPy calls LAPACK
  ``geqp3``, JAX its native pivoted QR; every other backend (torch, CuPy,
  array-api-strict) and every partial factorisation (``k`` small) runs a
  left-looking, reorthogonalised Gram-Schmidt version that reads ``A`` once per
  pivot and never forms the trailing matrix.
* :func:`rcpqr` -- randomized CPQR: pivots chosen by QRCP of a small sketch
  ``Omega A``, then a Cholesky-QR of the chosen columns preconditioned by the
  sketch's triangular factor (CQRRPT [MBM2024]_; blocked as in HQRRP [MOHvdG2017]_).
  All heavy work is matrix-matrix products; only the ``(k + p) x n`` sketch meets
  a pivoting loop, which is the GPU-portable pivoted QR.
* :func:`srrqr` -- strong rank-revealing QR ([GE1996]_, Alg. 4): starts from
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


def _host_lazy(A, check_finite=False):
    """Lazy arrays (Dask) go to the host: a pivot loop would recompute the graph per pivot.

    ``check_finite``: the host copy is scanned for NaN/Inf (the check that
    :func:`randla._validate.as_matrix` skips on lazy arrays, here at no extra pass).
    """
    if B.is_lazy(A):
        A = B.to_numpy(A)
        if check_finite:
            V.check_finite_array(A)
        return A, True
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


@B.wide_floats
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
    A torch tensor that requires grad gets ``Q`` and ``R`` that differentiate as the
    factors of ``A[:, perm]`` for the pivots found (which are piecewise constant):
    the loop runs on ``A.detach()`` and the derivative of ``A[:, perm[:k]] = Q R11``,
    ``R = Q^H A[:, perm]`` is attached to its values (one more QR of ``m x k``). The
    same holds for :func:`srrqr` and the IDs built on them.

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
    V.check_eager("cpqr", "the pivots", A=A, rtol=rtol)
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = _check_k(k, A.shape, allow_none=True)
    rtol = None if rtol is None else V.check_rtol(rtol)
    like = A
    A, lazy = _host_lazy(A, check_finite)
    xp = B.namespace(A)
    res = _finite_r(_cpqr(A, xp, k, rtol), check_finite)
    return _back(res, like) if lazy else res


def _finite_r(res, checked):
    """``res`` itself; a ``ValueError`` where ``A`` was checked finite and ``R`` is not
    (its column norms overflow the dtype, as for entries near its largest value). A
    lazy ``R`` is not read (that would compute it)."""
    xp = B.namespace(res.R)
    if checked and not B.is_lazy(res.R) and not bool(xp.all(xp.isfinite(res.R))):
        raise ValueError(f"A is finite but R overflows {res.R.dtype} (column norms beyond the largest value); "
                         f"rescale A")
    return res


def _unscaled(R, c):
    """``R * c`` back from a kernel's scaled ``A``, quietly: an ``R`` beyond the dtype is
    reported by :func:`_finite_r`."""
    with V.quiet_nonfinite():
        return _S.unscale(R, c)


def _with_grad(res, A):
    """``res`` (pivots and factors of the detached ``A``) with gradients to ``A``: the
    pivoting loops write their factors in place and read ``R`` on the host, so they run
    on ``A.detach()``; the values stay theirs, the derivative is that of the
    differentiable recomputation given the pivots, ``A[:, perm[:k]] = Q R11``
    (Householder, diagonal of ``R11`` made real positive as the loops make it) and
    ``R = Q^H A[:, perm]``, attached as ``value + (f - f.detach())``."""
    xp = B.namespace(A)
    k = res.Q.shape[1]
    Ap = B.take(A, B.to_numpy(res.perm), axis=1)
    Q, R11 = xp.linalg.qr(Ap[:, :k])
    d = xp.linalg.diagonal(R11)
    ad = xp.abs(d)
    phase = d / xp.where(ad > 0, ad, xp.ones_like(ad))
    phase = xp.where(ad > 0, phase, xp.ones_like(phase))
    Q = Q * phase[None, :]
    R = B.mH(Q) @ Ap
    R = xp.concat([_triu(xp, R[:, :k]), R[:, k:]], axis=1)
    Q0, R0 = (xp.astype(x, A.dtype) for x in (res.Q, res.R))
    return PivotedQR(Q0 + (Q - Q.detach()), R0 + (R - R.detach()), res.perm)


def _cpqr(A, xp, k, rtol):
    if B.requires_grad(A):
        return _with_grad(_cpqr(A.detach(), xp, k, rtol), A)
    m, n = A.shape
    kmax = min(m, n) if k is None else k
    native = B.has_pivoted_qr(xp)
    # both paths square column norms, and LAPACK's geqp3 loses digits on subnormal
    # columns: bring A into a safe range first
    A, c = _S.unit_scale(A)
    if native and (k is None or 2 * k > min(m, n) or B.prefers_whole_matrix_kernels(xp)):
        Q, R, perm = B.qr_pivoted(A)
        r = kmax
        if rtol is not None:
            r = min(kmax, _rank_from_rows(B.to_numpy(_triu(xp, R)), rtol))
        perm = xp.astype(B.from_numpy(np.asarray(B.to_numpy(perm), dtype=np.int64), like=A), xp.int64)
        return PivotedQR(Q[:, :r], _unscaled(_triu(xp, R[:r, :]), c), perm)
    Q, R, perm = _cpqr_loop(A, xp, kmax, rtol)
    return PivotedQR(Q, _unscaled(R, c), perm)


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
        v = _cgs2(xp, Q[:, :j], A[:, p])[0] if j else A[:, p]
        nv = B.scalar(xp.linalg.vector_norm(v))
        if cand[p] <= noise2 or nv <= math.sqrt(noise2) or nv == 0.0:
            v, nv = _unit_complement(A, xp, Q[:, :j])  # numerically rank-deficient
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
    rest = [c for c in range(n) if not mask[c]] + [c for c in selected[r:]]
    return _assemble(xp, A, [Q[:, :r]], [R[:r, :]], selected[:r], np.asarray(rest, dtype=np.int64), 1.0)


def _unit_complement(A, xp, Qj):
    """``(v, ||v||)``: a vector orthogonal to ``range(Qj)`` to continue ``Q`` where the
    remaining columns are numerically zero: the unit vector of the row of ``Qj`` with
    the least weight (its residual is at least ``1 - j / m``), projected twice."""
    m, j = Qj.shape
    w = B.to_numpy(xp.sum(_abs2(xp, Qj), axis=1)) if j else np.zeros(m)
    e = xp.astype(B.from_numpy((np.arange(m) == int(np.argmin(w))).astype(np.float64), like=A), A.dtype)
    v = _cgs2(xp, Qj, _cgs2(xp, Qj, e)[0])[0] if j else e
    return v, B.scalar(xp.linalg.vector_norm(v))


def _departure(xp, Qp, Qb):
    """``||Qb^H Qb - I||_F + ||Qp^H Qb||_F``: how far ``[Qp, Qb]`` is from orthonormal
    columns, given orthonormal ``Qp``."""
    eye = xp.eye(Qb.shape[1], dtype=Qb.dtype, device=B.device(Qb))
    err = B.scalar(xp.linalg.matrix_norm(B.mH(Qb) @ Qb - eye))
    return err + B.scalar(xp.linalg.matrix_norm(B.mH(Qp) @ Qb))


def _orthonormal_to(A, xp, Qp, Qb):
    """``[Qp, Qb]`` with orthonormal columns, given a block ``Qb`` factored after its
    columns were projected against ``Qp``.

    ``Qb`` itself when ``||Qb^H Qb - I||_F + ||Qp^H Qb||_F`` is within rounding
    (``eps (j + b)`` for ``j + b`` columns; 10-50 ``eps`` on full-rank inputs, so
    one check replaces a second projection). Else ``Qb`` is projected against ``Qp``
    once more and re-factored; if that is still not orthonormal to ``sqrt(eps)``,
    it is rebuilt column by column against ``Qp`` and its own earlier columns, a
    column with nothing left of it (the residual of an exactly rank-deficient ``A``,
    which QR turns into unit vectors that ignore ``Qp``) replaced by a unit vector
    orthogonal to all of them."""
    b = Qb.shape[1]
    eps = B.eps(xp, Qb.dtype)
    if _departure(xp, Qp, Qb) <= eps * (Qp.shape[1] + b):
        return Qb
    Qb = B.qr(_cgs2(xp, Qp, Qb)[0])[0]
    if _departure(xp, Qp, Qb) <= math.sqrt(eps):
        return Qb
    basis = Qp
    for i in range(b):
        v = _cgs2(xp, basis, Qb[:, i:i + 1])[0]
        nv = B.scalar(xp.linalg.vector_norm(v))
        if nv < 0.5:
            v, nv = _unit_complement(A, xp, basis)
            v = xp.reshape(v, (-1, 1))
        basis = xp.concat([basis, v / nv], axis=1)
    return basis[:, Qp.shape[1]:]


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


def _row_sketch(A, Om, q):
    """``(S, Y)`` with ``Y = S A`` (``l x n``): ``S = Omega`` Gaussian for ``q = 0``,
    else ``S = Z^H`` with ``Z`` an orthonormal basis of ``(A A^H)^q A Omega^H``
    (re-orthonormalised after every product) [HMT2011, Alg. 4.4].
    """
    S = Om
    Y = S @ A
    for _ in range(q):  # every further pass reads A afresh (Dask: see _backend.pass_product)
        W = B.qr(B.mH(Y))[0]  # n x l
        Z = B.qr(B.pass_product(A, W))[0]  # m x l
        S = B.mH(Z)
        Y = B.pass_product(A, S, left=True)
    return S, Y


@B.wide_floats
@B.scipy_pool_scoped
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
    V.check_eager("rcpqr", "the pivots", A=A)
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = min(m, n) if k is None else V.check_rank(k, A.shape)
    p = V.check_count(p, "p")
    q = V.check_count(q, "q")
    block_size = V.check_count(block_size, "block_size", minimum=1)
    return _finite_r(_rcpqr(A, xp, k, p, q, block_size, B.as_generator(rng)), check_finite)


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
    Om0 = _sketch_rows(A, min((b if candidates is None else candidates) + p, m), gen)
    with V.quiet_nonfinite():  # an overflowing sketch is detected below
        Om, Y = B.persist(*_row_sketch(A, Om0, q))  # read below, downdated per block (Dask: evaluated once)
    # the bookkeeping squares norms on the host: bring A into a safe range (judged on
    # its sketch, which has A's magnitude: no extra pass) by an exact power of two
    if bool(xp.all(xp.isfinite(Y))):
        A, c = _S.unit_scale(A, ref=Y)
        if c != 1.0:  # Y / c, not Y * (1 / c): 1 / c is Inf where c is subnormal
            Y = Y / xp.asarray(c, dtype=B.real_dtype(xp, Y.dtype), device=B.device(Y))
    else:  # entries near the dtype's largest value: the sketch of A / c, same draw
        A, c = _S.unit_scale(A)
        Om, Y = B.persist(*_row_sketch(A, Om0, q))
        if not bool(xp.all(xp.isfinite(Y))):  # |A / c| <= 1 cannot overflow: A has NaN/Inf
            raise ValueError("A contains NaN or Inf")
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
        Qb = _orthonormal_to(A, xp, Qp, Qb)
    return pv, Qb


def _candidate_block(A, xp, Yr, remaining, bc, candidates, Qp):
    """Pivots of the block by exact CPQR among the first ``candidates`` sketch pivots:
    Householder QR of the candidates' residuals, QRCP of its small R factor. Returns
    ``(pv, Qb)`` with ``pv`` the sketch pivots reordered by that choice.

    Only the pivots come from the QRCP (on the host for most backends): the block's
    basis is ``Q_c`` times the Q factor of the chosen columns of ``R_c``, recomputed
    in ``A``'s namespace, so that autograd sees it."""
    with B.single_threaded_blas():  # a small matrix: threads only add waiting
        _, _, pv = B.qr_pivoted(Yr)
    pv = np.asarray(B.to_numpy(pv), dtype=np.int64)
    cand = pv[: min(candidates, remaining.size)]
    (C,) = B.persist(B.take(A, remaining[cand], axis=1))  # read repeatedly (Dask: one pass)
    with B.single_threaded_blas():  # m x c panels: too thin for threads to pay on a busy machine
        if Qp is not None:
            C = _cgs2(xp, Qp, C)[0]
        Qc, Rc = B.qr(C)
        _, _, p2 = B.qr_pivoted(Rc)
        p2 = np.asarray(B.to_numpy(p2), dtype=np.int64)
        Q2, _ = B.qr(B.take(Rc, p2[:bc], axis=1))  # the QRCP's leading bc columns of Q
        Qb = Qc @ Q2
        if Qp is not None:  # keep the block orthogonal to the previous ones after rounding
            Qb = _orthonormal_to(A, xp, Qp, Qb)
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
    R = _unscaled(R, c)
    return PivotedQR(Q, R, _perm_array(perm, A))


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


def _check_f(f):
    """The sRRQR bound: a finite number > 1."""
    f = V.check_real(f, "f")
    if not f > 1.0 or not math.isfinite(f):
        raise ValueError(f"f must be a finite number > 1, got {f!r}")
    return f


def _givens(a, b):
    """Unitary ``G`` (2 x 2) with ``G @ [a, b] = [r, 0]``, ``r = sqrt(|a|^2 + |b|^2) >= 0``."""
    r = math.hypot(abs(a), abs(b))
    if r == 0.0:
        return np.eye(2), 0.0
    return np.array([[np.conj(a) / r, np.conj(b) / r], [-b / r, a / r]]), r


@B.wide_floats
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
    triangularity; they are accumulated in a small host matrix ``W`` with
    ``Q = Q_b W``), brings in column ``j`` with one projection ``q_j^H A`` (the
    new row of ``R22`` in the direction of the incoming residual), applies one
    more Givens rotation and updates ``R11^{-1}``, ``R11^{-1} R12`` and the
    residual norms by rank-one formulas: ``O(k (n + k))`` host work and
    ``O(m (n + k))`` device work per swap, against the initial ``O(m n k)`` of
    the partial QRCP. After a swap that grew ``|det R11|`` by more than
    ``1 / sqrt(eps)`` (a nearly singular ``R11``, as CPQR leaves on a Kahan
    matrix) the rank-one updates would have cancelled every digit, and
    ``R11^{-1}`` is recomputed instead. If ``A`` has numerical rank ``r < k``,
    the swaps act on the leading ``r`` pivots and the remaining ``k - r`` (which
    span rounding noise) follow by pivoted QR of the projected remainder; the
    bounds above then hold for the leading ``r`` columns only, and the entries of
    ``R11^{-1} R12`` in the trailing rows are ratios of rounding errors, of any
    size (an exact rank-6 90 x 70 matrix at ``k = 10``: 1.2 to 21 in float64,
    up to 200 in float32, depending on the backend). :func:`~randla.interpolative.interp_decomp` with
    ``method="srrqr"`` gives those columns zero weight, so its ``T`` keeps the
    bound. The
    swap loop is eager (host bookkeeping in float64/complex128 on ``k x n``
    arrays; Dask input is gathered to the host). Measured (2 cores, float64,
    ``benchmarks/compare_qr.py``): time over ``cpqr`` at the same ``k`` is about
    1.1-1.5 on 2000 x 2000 with ``sigma_i = i^-1`` (no swaps: CPQR is already
    strong there) and on Kahan matrices.

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
    V.check_eager("srrqr", "the pivots", A=A)
    A, xp = V.as_matrix(A, check_finite=check_finite)
    m, n = A.shape
    k = V.check_rank(k, A.shape)
    f = _check_f(f)
    max_swaps = 10 * n + 100 if max_swaps is None else V.check_count(max_swaps, "max_swaps")
    like = A
    A, lazy = _host_lazy(A, check_finite)
    xp = B.namespace(A)
    res = _finite_r(_srrqr(A, xp, k, f, max_swaps), check_finite)
    return _back(res, like) if lazy else res


def _srrqr(A, xp, k, f, max_swaps):
    if B.requires_grad(A):
        return _with_grad(_srrqr(A.detach(), xp, k, f, max_swaps), A)
    # the swaps square entries of R and R11^{-1} on the host: work in a safe range
    A, c = _S.unit_scale(A)
    (Q, R, perm), _ = _srrqr_scaled(A, xp, k, f, max_swaps)
    R = _unscaled(R, c)
    return PivotedQR(Q, R, perm)


def _srrqr_scaled(A, xp, k, f, max_swaps):
    """sRRQR of a matrix in a safe range; returns ``(PivotedQR, swaps)``."""
    m, n = A.shape
    Q, R, perm = _cpqr(A, xp, k, None)
    if k == n:
        return PivotedQR(Q, R, perm), 0
    Rh = B.to_numpy(R)
    Rh = Rh.astype(np.complex128 if np.iscomplexobj(Rh) else np.float64)
    perm_h = np.asarray(B.to_numpy(perm), dtype=np.int64)
    d = np.abs(np.diagonal(Rh[:, :k]))
    # pivots at the rounding of the largest span noise (exact rank r < k); every other
    # one takes part in the swaps, as in the ID (a threshold 10 u max(m, n) |R_11| let
    # float32 pivots near 1e-4 through unswapped: |R11^{-1} R12| up to 1.3 f)
    r = int(np.count_nonzero(d > B.eps(xp, A.dtype) * d[0])) if d[0] > 0 else 0
    if r == 0:
        return PivotedQR(Q, R, perm), 0
    st = _SwapState.start(A, xp, Q[:, :r], Rh[:r, :], perm_h, r)
    swaps = _swap_loop(st, A, xp, f, max_swaps)
    if r < k:
        # numerical rank r < k: the remaining k - r pivots span rounding noise
        return _continue_pivots(A, xp, st.Q(A, xp), st.Rt, st.perm, r, k), swaps
    Rh = np.concatenate([np.triu(st.Rt[:, :k]), st.Rt[:, k:]], axis=1)
    Rd = xp.astype(B.from_numpy(Rh, like=A), A.dtype)
    return PivotedQR(st.Q(A, xp), Rd, _perm_array(st.perm, A)), swaps


def _continue_pivots(A, xp, Qr, Rt, perm, r, k):
    """Pivots ``r .. k-1`` after the first ``r`` (``A[:, perm] ~= Qr Rt``, ``Rt`` host),
    where the numerical rank is ``r``: the remaining columns are rounding noise, so any
    of them will do. Native backends keep CPQR's order (``perm[r:k]``) and take their
    directions inside the exact orthogonal complement of ``range(Qr)`` (complete QR of
    ``Qr``): the remainder of noise-sized columns, projected against ``Qr``, would not
    be orthogonal to it. The other backends continue the CPQR loop."""
    if not B.has_pivoted_qr(xp):
        Rorig = np.empty_like(Rt)
        Rorig[:, perm] = Rt
        Rd = xp.astype(B.from_numpy(Rorig, like=A), A.dtype)
        Q2, R2, perm2 = _cpqr_loop(A, xp, k, None, Q=Qr, R=Rd, selected=list(perm[:r]))
        return PivotedQR(Q2, xp.astype(R2, A.dtype), perm2)
    C = xp.linalg.qr(Qr, mode="complete")[0][:, r:]  # orthonormal, orthogonal to Qr
    Qy = B.qr(B.mH(C) @ B.take(A, perm[r:k], axis=1))[0]
    Q = xp.concat([Qr, C @ Qy], axis=1)
    R = B.take(B.mH(Q) @ A, perm, axis=1)
    R = xp.concat([_triu(xp, R[:, :k]), R[:, k:]], axis=1)
    return PivotedQR(Q, R, _perm_array(perm, A))


class _SwapState:
    """The factors a Gu-Eisenstat swap updates: ``A[:, perm] ~= Q [R11 R12]`` with
    ``Q = Qb W`` (``Qb`` on the device, the orthogonal ``W`` (k x k) on the host, so the
    Givens rotations of a swap cost ``O(k)`` host work each instead of an
    ``m x k x k`` product), ``Rt = [R11 R12]`` on the host, ``Rinv = R11^{-1}``,
    ``AB = R11^{-1} R12`` and ``gamma``, the residual norms of the unselected columns
    (``gref``: their values when last computed exactly)."""

    def __init__(self, Q, Rt, perm, k, Rinv, AB, gamma):
        self.Qb, self.W = Q, np.eye(k, dtype=Rt.dtype)
        self.Rt, self.perm, self.k = Rt, perm, k
        self.Rinv, self.AB, self.gamma, self.gref = Rinv, AB, gamma, gamma.copy()

    @classmethod
    def start(cls, A, xp, Q, Rt, perm, k):
        Rt, perm = Rt.copy(), perm.copy()
        Rinv, AB = _inverse_and_coefficients(Rt, k)
        res = B.take(A, perm[k:], axis=1) - Q @ _device(Rt[:, k:], A, xp)
        gamma = np.sqrt(_column_norms2(xp, res))  # exact residual norms
        return cls(Q, Rt, perm, k, Rinv, AB, gamma)

    def times(self, X, A, xp):
        """``Q @ X`` for a host ``X``."""
        return self.Qb @ _device(self.W @ X, A, xp)

    def project_out(self, a, A, xp):
        """``(v, h)``: ``a`` projected twice onto the complement of ``range(Q)``, ``h = Q^H a``."""
        WH = _device(self.W.conj().T, A, xp)
        h = WH @ (B.mH(self.Qb) @ a)
        v = a - self.Qb @ (_device(self.W, A, xp) @ h)
        h2 = WH @ (B.mH(self.Qb) @ v)
        return v - self.Qb @ (_device(self.W, A, xp) @ h2), h + h2

    def replace_last(self, q, A, xp):
        """Column ``k - 1`` of ``Q`` becomes ``q``: a rank-one update of ``Qb``."""
        w = self.W[:, self.k - 1]
        d = q - self.Qb @ _device(w, A, xp)
        self.Qb = self.Qb + d[:, None] * _device(np.conj(w), A, xp)[None, :]

    def Q(self, A, xp):
        return self.Qb @ _device(self.W, A, xp)


def _device(X, A, xp):
    return xp.astype(B.from_numpy(X, like=A), A.dtype)


def _inverse_and_coefficients(Rt, k):
    """``R11^{-1}`` (LAPACK ``trtri``) and ``R11^{-1} R12`` (host, ``Rinv`` C-ordered
    for the row norms of the swap criterion)."""
    import scipy.linalg.lapack as lapack

    R11 = np.triu(Rt[:, :k])
    (trtri,) = lapack.get_lapack_funcs(("trtri",), (R11,))
    with np.errstate(over="ignore", invalid="ignore"):  # numerically singular R11: see _row_norms
        Rinv, _ = trtri(R11, lower=0)
        Rinv = np.ascontiguousarray(np.triu(Rinv))
        return Rinv, Rinv @ Rt[:, k:]


def _row_norms(X):
    """Euclidean norms of the rows of ``X`` without over/underflow (``inf`` where a row
    is not finite: the swap that row asks for is then the largest possible)."""
    amax = np.max(np.abs(X), axis=1, initial=0.0)
    safe = np.where((amax > 0) & np.isfinite(amax), amax, 1.0)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(np.isfinite(amax), safe * np.sqrt(np.sum(np.abs(X / safe[:, None]) ** 2, axis=1)), np.inf)


def _find_swap(st, f, u):
    """The pair ``(i, j)`` maximising ``hypot(|AB_ij|, gamma_j / omega_i)`` and that
    value, or ``None`` if it is at most ``f`` [GE1996, Alg. 4]. ``1 / omega_i`` is the
    norm of row ``i`` of ``R11^{-1}``; ``hypot`` keeps it finite where squares would
    overflow (a nearly singular ``R11``)."""
    with np.errstate(over="ignore", invalid="ignore"):
        crit = np.hypot(np.abs(st.AB), _row_norms(st.Rinv)[:, None] * st.gamma[None, :])
    crit = np.where(np.isnan(crit), np.inf, crit)
    i, j = np.unravel_index(int(np.argmax(crit)), crit.shape)
    return (int(i), int(j), float(crit[i, j])) if crit[i, j] > f * (1.0 + 4 * u) else None


def _rotate_out(st, A, xp, i):
    """Selected column ``i`` to the last selected position; Givens rotations restore the
    triangle of ``R11`` and are applied to ``Q`` and ``R11^{-1}``."""
    k = st.k
    order = np.r_[np.arange(i), np.arange(i + 1, k), i]
    st.Rt[:, :k] = st.Rt[:, order]
    st.perm[:k] = st.perm[order]
    st.AB, st.Rinv = st.AB[order, :], st.Rinv[order, :]
    for l in range(i, k - 1):  # Givens rotations restore the triangle [GE1996, Sec. 4.2]
        G, rr = _givens(st.Rt[l, l], st.Rt[l + 1, l])
        st.Rt[l : l + 2, :] = G @ st.Rt[l : l + 2, :]
        st.Rt[l + 1, l] = 0.0
        st.Rt[l, l] = rr
        GH = G.conj().T
        st.Rinv[:, l : l + 2] = st.Rinv[:, l : l + 2] @ GH
        st.W[:, l : l + 2] = st.W[:, l : l + 2] @ GH
    st.Rinv[i:, :] = np.triu(st.Rinv[i:, :], k=i)  # rounding left below the diagonal of the rotated rows


def _bring_in(st, j):
    """Unselected column ``j`` to the first unselected position."""
    k, n = st.k, st.Rt.shape[1]
    order = np.r_[j, np.arange(j), np.arange(j + 1, n - k)]
    st.Rt[:, k:] = st.Rt[:, k + order]
    st.perm[k:] = st.perm[k + order]
    st.AB = st.AB[:, order]
    st.gamma, st.gref = st.gamma[order], st.gref[order]


def _incoming(st, A, xp, u):
    """``(nu, qn, c2)`` for the first unselected column: its residual norm ``nu`` and
    direction ``qn`` against ``range(Q)`` (its projection added to ``Rt[:, k]``), and
    ``c2 = qn^H A`` on the other unselected columns (R22's row along ``qn``)."""
    k, (m, n) = st.k, A.shape
    Rt = st.Rt
    v, h = st.project_out(A[:, int(st.perm[k])] - st.times(Rt[:, k], A, xp), A, xp)
    Rt[:, k] = Rt[:, k] + B.to_numpy(h)
    nu = B.scalar(_S.norm(v))
    if nu > u * max(m, n) * abs(Rt[0, 0]):
        qn = v / xp.asarray(nu, dtype=B.real_dtype(xp, A.dtype), device=B.device(A))
        c2 = B.to_numpy(_conj(xp, qn) @ B.take(A, st.perm[k + 1 :], axis=1)).astype(Rt.dtype)
        return nu, qn, c2
    return 0.0, None, np.zeros(n - k - 1, dtype=Rt.dtype)


def _swapped_inverse(st, g1, gbar, out_r, newrow):
    """``R11^{-1}`` and ``R11^{-1} R12`` after the exchange, by rank-one updates of the
    old ones [GE1996, eqs. 4.5-4.7]."""
    k = st.k
    u_vec = -g1 * st.Rinv[: k - 1, k - 1]  # A^{-1} b1
    vv = st.AB[: k - 1, 0] + u_vec * st.AB[k - 1, 0]  # A^{-1} b2
    Rinv = np.zeros_like(st.Rinv)
    Rinv[: k - 1, : k - 1] = st.Rinv[: k - 1, : k - 1]
    Rinv[: k - 1, k - 1] = -vv / gbar
    Rinv[k - 1, k - 1] = 1.0 / gbar
    AB = np.empty_like(st.AB)
    AB[: k - 1, 0] = u_vec - vv * (out_r / gbar)
    AB[: k - 1, 1:] = st.AB[: k - 1, 1:] + np.outer(u_vec, st.AB[k - 1, 1:]) - np.outer(vv, newrow / gbar)
    AB[k - 1, 0] = out_r / gbar
    AB[k - 1, 1:] = newrow / gbar
    return Rinv, AB


def _exchange(st, A, xp, u):
    """Swap the last selected and the first unselected column [GE1996, Sec. 4.2]: the
    incoming column's residual (one projection), one Givens rotation on ``(mu, nu)``,
    and rank-one updates of ``R11^{-1}``, ``R11^{-1} R12`` and ``gamma``."""
    k, Rt, dt = st.k, st.Rt, A.dtype
    nu, qn, c2 = _incoming(st, A, xp, u)
    mu, g1 = Rt[k - 1, k], Rt[k - 1, k - 1]
    gbar = math.hypot(abs(mu), nu)
    if gbar == 0.0:  # the incoming column adds nothing (cannot be chosen in exact arithmetic)
        return
    c1 = Rt[k - 1, k + 1 :].copy()
    newrow = (np.conj(mu) * c1 + nu * c2) / gbar
    resrow = (-nu * c1 + mu * c2) / gbar
    out_r = np.conj(mu) * g1 / gbar  # the outgoing column's entry in the new row k
    st.Rinv, st.AB = _swapped_inverse(st, g1, gbar, out_r, newrow)
    # the factors themselves
    Rt[: k - 1, [k - 1, k]] = Rt[: k - 1, [k, k - 1]]
    Rt[k - 1, : k - 1] = 0.0
    Rt[k - 1, k - 1], Rt[k - 1, k] = gbar, out_r
    Rt[k - 1, k + 1 :] = newrow
    st.perm[k - 1], st.perm[k] = st.perm[k], st.perm[k - 1]
    qk = st.Qb @ _device(st.W[:, k - 1], A, xp) * xp.asarray(mu / gbar, dtype=dt, device=B.device(A))
    if qn is not None:
        qk = qk + qn * xp.asarray(nu / gbar, dtype=B.real_dtype(xp, dt), device=B.device(A))
    st.replace_last(qk, A, xp)
    # residual norms: downdated, recomputed where cancellation ate half the digits
    g_rest2 = st.gamma[1:] ** 2 - np.abs(c2) ** 2 + np.abs(resrow) ** 2
    st.gamma = np.concatenate([[nu * abs(g1) / gbar], np.sqrt(np.maximum(g_rest2, 0.0))])
    st.gref[0] = st.gamma[0]
    lost = np.nonzero(st.gamma**2 <= math.sqrt(u) * st.gref**2)[0]
    lost = lost[lost > 0]
    if lost.size:
        resid = B.take(A, st.perm[k + lost], axis=1) - st.times(Rt[:, k + lost], A, xp)
        st.gamma[lost] = np.sqrt(_column_norms2(xp, resid))
        st.gref[lost] = st.gamma[lost]


def _swap_loop(st, A, xp, f, max_swaps):
    """Gu-Eisenstat swaps on ``st`` while one grows ``|det R11|`` by more than ``f``;
    returns the number made.

    The rank-one updates of ``R11^{-1}`` subtract numbers as large as ``R11^{-1}``
    itself; after a swap that grew ``|det R11|`` by more than ``1 / sqrt(eps)`` (an
    ``R11`` that was nearly singular, as CPQR's on a Kahan matrix) they would have lost
    every digit, so ``R11^{-1}`` and ``R11^{-1} R12`` are then recomputed by triangular
    solves instead.
    """
    u = B.eps(xp, A.dtype)
    swaps = 0
    while swaps < max_swaps:
        found = _find_swap(st, f, u)
        if found is None:
            break
        i, j, growth = found
        swaps += 1
        _rotate_out(st, A, xp, i)
        _bring_in(st, j)
        _exchange(st, A, xp, u)
        if growth > 1.0 / math.sqrt(u):
            st.Rinv, st.AB = _inverse_and_coefficients(st.Rt, st.k)
    return swaps
