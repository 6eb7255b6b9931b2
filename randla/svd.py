"""Randomized range finders and SVDs: RSVD, RSI, block Krylov, fixed accuracy.

Vocabulary. A *pass* is one product of ``A`` (or ``A^H``) with a block of
vectors; passes dominate the cost on large matrices. ``k`` is the target rank,
``p`` the oversampling (the sketch has ``l = k + p`` columns, clipped to
``min(m, n)``), ``q`` the number of power (subspace) iterations: a fixed-rank
method with ``q`` iterations makes ``2q + 2`` passes.

Mapping from scikit-learn's ``randomized_svd``: ``n_components -> k``,
``n_oversamples -> p``, ``n_iter -> q``, ``power_iteration_normalizer ->
stabilizer`` (``"QR" -> "qr"``, ``"LU" -> "lu"``, ``"none" -> "none"``),
``random_state -> rng``; the result ``(U, S, Vh)`` is the same triple.

References
----------
.. [HMT2011] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
   randomness", SIAM Review 53(2), 2011.
.. [RSI] "Low-rank compression of pretrained models via randomized subspace
   iteration" (seed 003), Alg. 1.
.. [MM2015] C. Musco, C. Musco, "Randomized block Krylov methods for stronger and
   faster approximate singular value decomposition", NeurIPS 2015.
.. [YGL2018] W. Yu, Y. Gu, Y. Li, "Efficient randomized algorithms for the fixed-
   precision low-rank matrix approximation", SIMAX 39(3), 2018.
.. [FKNYY2020] T. Fukaya, R. Kannan, Y. Nakatsukasa, Y. Yamamoto, Y. Yanagisawa,
   "Shifted Cholesky QR for computing the QR factorization of ill-conditioned
   matrices", SISC 42(1), 2020.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from . import _backend as B
from . import _validate as V
from ._scale import pow2_scale
from ._adaptive import adaptive_qb
from .sketch import _apply as _sketch_apply

__all__ = ["SVDResult", "range_finder", "rsvd", "rsi", "block_krylov_svd", "adaptive_range_finder"]

class SVDResult(NamedTuple):
    """Truncated SVD ``A ~= U @ diag(S) @ Vh``, ``S`` descending."""

    U: Any
    S: Any
    Vh: Any


# ----------------------------------------------------------------------------------
# stabilisers between passes
# ----------------------------------------------------------------------------------


def _gram(Y):
    """``Y^H Y`` formed in float64/complex128 (mixed precision for float32 data)."""
    xp = B.namespace(Y)
    wide = xp.complex128 if xp.isdtype(Y.dtype, "complex floating") else xp.float64
    Yw = xp.astype(Y, wide)
    return B.mH(Yw) @ Yw


def _cholqr_factor(G, m, shifted):
    """``(R^{-1}, R)`` with ``R^H R = G + s I`` for the Gram matrix ``G`` of an
    ``m``-row ``Y`` [FKNYY2020, Alg. 3.1].

    ``shifted``: ``s = 10 m u ||Y||_F^2`` (float64 ``u``), which keeps the
    factorisation defined for rank-deficient or zero ``Y`` without branching on
    values; otherwise ``s = 0`` (only for a ``G`` known to be well conditioned).
    """
    xp = B.namespace(G)
    eye = xp.eye(G.shape[0], dtype=G.dtype, device=B.device(G))
    shift = xp.finfo(xp.float64).smallest_normal
    if shifted:
        shift = 10.0 * m * B.eps(xp, xp.float64) * xp.real(xp.linalg.trace(G)) + shift
    with B.single_threaded_blas():  # l x l: threads only add waiting on a busy machine
        R = B.cholesky(G + shift * eye, upper=True)
        R_inv = B.inv(R)
    return R_inv, R


def _cholqr_pass(Y, G, shifted):
    """One Cholesky-QR pass ``Y R^{-1}``, ``R`` from :func:`_cholqr_factor`."""
    xp = B.namespace(Y)
    R_inv, R = _cholqr_factor(G, Y.shape[0], shifted)
    return Y @ xp.astype(R_inv, Y.dtype), R


def _shifted_inverse(G, m):
    return _cholqr_factor(G, m, True)[0]


def _cholqr_stabilize(Y):
    """Shifted Cholesky-QR: a well-conditioned basis of exactly ``range(Y)``.

    One shifted pass with a float64 Gram matrix. ``R`` is invertible, so the span is
    that of ``Y``; only directions weaker than ``sqrt(s)`` come out shorter than
    unit length, which power iteration tolerates (between passes only the span
    matters: a second pass changed the error in the fourth digit at most, over
    "cholqr", "qr", "lu" and "none" alike). GEMM-rich and lazy-friendly: one Gram
    product, one small Cholesky factorisation and inverse, one ``Y R^{-1}``.
    """
    fused = B.gram_apply(Y, _shifted_inverse)  # Dask: a few tasks per chunk
    if fused is not None:
        return fused
    Y, _ = _unit_scale(Y)
    return _cholqr_pass(Y, _gram(Y), shifted=True)[0]


def _unit_scale(Y):
    """``(Y / c, c)`` with ``c`` a power of two near ``max |Y|`` (1 for a zero ``Y``):
    exact, and it keeps the Gram matrix of data at any scale (1e-300, 1e300)
    representable, where ``||Y||_F`` itself would under/overflow."""
    xp = B.namespace(Y)
    c = pow2_scale(xp.max(xp.abs(Y)))
    return Y / xp.astype(c, Y.dtype), c


def _certified_cholqr(Y):
    """``Y = Q R`` with orthonormal ``Q`` by CholeskyQR2, or ``None``.

    A shifted pass gives ``Q1``; if ``||Q1^H Q1 - I||_F < 1/2`` (all eigenvalues in
    [1/2, 3/2], checked on the ``l x l`` Gram matrix) the unshifted second pass is
    safe and leaves ``Q`` orthonormal to working precision (loss ``~ u cond(Q1)^2``)
    [FKNYY2020, Sec. 2]. ``None`` when the check fails (rank-deficient or very
    ill-conditioned ``Y``), for wide ``Y``, and on lazy arrays, where reading the
    check would force a computation. ``R`` is float64/complex128.
    """
    m, l = Y.shape
    if B.is_lazy(Y) or m < l:
        return None
    xp = B.namespace(Y)
    Y, c = _unit_scale(Y)
    Q1, R1 = _cholqr_pass(Y, _gram(Y), shifted=True)
    G2 = _gram(Q1)
    eye = xp.eye(l, dtype=G2.dtype, device=B.device(G2))
    if not bool(xp.linalg.matrix_norm(G2 - eye) < 0.5):
        return None
    Q, R2 = _cholqr_pass(Q1, G2, shifted=False)
    return Q, (R2 @ R1) * xp.astype(c, R1.dtype)


_STABILIZERS = {
    "cholqr": _cholqr_stabilize,
    "qr": lambda Y: B.qr(_unit_scale(Y)[0])[0],
    "lu": lambda Y: B.lu(Y)[0],
    "none": lambda Y: _unit_scale(Y)[0],  # only an exact power-of-two rescaling (no overflow)
}
STABILIZERS = tuple(_STABILIZERS)


def _stabilize(Y, method):
    return _STABILIZERS[method](Y)


def _orth(Y):
    """Orthonormal basis of ``range(Y)``.

    Certified CholeskyQR2 (GEMM-rich: on two cores LAPACK's Householder QR of a
    tall panel costs several times the GEMM that made it), else Householder QR.
    """
    qr = _certified_cholqr(Y)
    return qr[0] if qr is not None else B.qr(_unit_scale(Y)[0])[0]  # scaled: column norms stay finite


def _tall_svd(C):
    """Thin SVD ``C = W diag(S) Xh`` of a tall matrix, ``W`` (n x l).

    Certified CholeskyQR2 ``C = Qc R`` and the SVD of the small float64 factor
    ``R = Ur S Xh``, ``W = Qc Ur``; else LAPACK's SVD of ``C``.
    """
    qr = _certified_cholqr(C)
    if qr is None:
        return B.svd(C)
    xp = B.namespace(C)
    with B.single_threaded_blas():
        Ur, S, Xh = B.svd(qr[1])
    return qr[0] @ xp.astype(Ur, C.dtype), xp.astype(S, B.real_dtype(xp, C.dtype)), xp.astype(Xh, C.dtype)


# ----------------------------------------------------------------------------------
# fixed rank
# ----------------------------------------------------------------------------------


def _prepare(A, k, p, q, stabilizer, sketch):
    op = V.as_operand(A, check_finite=False)  # checked through the first sketch instead
    k = V.check_rank(k, op.shape)
    p = V.check_count(p, "p")
    q = V.check_count(q, "q")
    V.check_choice(stabilizer, "stabilizer", STABILIZERS)
    l = min(k + p, *op.shape)  # k + p > min(m, n): clip, the range is then captured whole
    return op, k, l, q


def _first_sketch(op, l, sketch, rng, check_finite):
    with V.quiet_nonfinite(check_finite):  # NaN/Inf in A: the check below raises
        Y = _sketch_apply(op, l, sketch, rng)
    if check_finite:
        V.check_finite_through(Y, op)
    return Y


def _power_basis(op, l, q, stabilizer, sketch, rng, check_finite):
    """``Y = (A A^H)^q A Omega`` with a stabiliser after every pass [HMT2011, Alg. 4.4]."""
    Y = _first_sketch(op, l, sketch, rng, check_finite)
    for _ in range(q):
        Z = _stabilize(op.rmatmat(_stabilize(Y, stabilizer)), stabilizer)
        Y = op.matmat(Z)
    return Y


def _svd_of_projection(op, Q, k):
    """SVD of ``Q Q^H A`` truncated to ``k``: one more pass, ``C = A^H Q`` (n x l).

    ``C = W S X^H`` gives ``Q^H A = X S W^H``, so ``U = Q X``, ``Vh = W^H``.
    """
    W, S, Xh = _tall_svd(op.rmatmat(Q))
    return SVDResult(Q @ B.mH(Xh)[:, :k], S[:k], B.mH(W)[:k, :])


def range_finder(A, k, *, p=10, q=0, sketch="gaussian", stabilizer="cholqr", rng=None, check_finite=True):
    """Orthonormal basis ``Q`` (m x (k+p)) approximately spanning the top range of ``A``.

    ``Q = orth((A A^H)^q A Omega)`` with a stabiliser after every pass
    [HMT2011, Alg. 4.3/4.4].

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``scipy.sparse.linalg.LinearOperator``
    k : int
        Target rank, ``1 <= k <= min(m, n)``.
    p : int, default 10
        Oversampling; ``k + p`` is clipped to ``min(m, n)``.
    q : int, default 0
        Power iterations (``2q + 1`` passes over ``A``).
    sketch : str, default "gaussian"
        Test matrix, see :func:`randla.sketch.sketch`.
    stabilizer : {"cholqr", "qr", "lu", "none"}, default "cholqr"
        Applied after every pass inside the power iteration: mixed-precision
        shifted Cholesky-QR (GEMM-rich, chosen by measurement: the fastest at equal
        accuracy), Householder QR, row-pivoted LU (as scikit-learn's ``"LU"``), or
        no orthogonalisation (only an exact power-of-two rescaling that keeps the
        iterate representable; accurate only for ``q <= 1`` in float64). The returned basis is always
        orthonormal: certified CholeskyQR2, else Householder QR.
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    Q : array (m, min(k + p, m, n))
        Orthonormal columns, in ``A``'s namespace, device and dtype.

    Notes
    -----
    Cost: ``(2q + 1)`` products of ``A`` with ``l = k + p`` vectors, plus
    ``O((m + n) l^2)`` for the stabilisers. Lazy-friendly (no value-dependent
    shapes or control flow): runs under ``jax.jit`` and builds a Dask graph.

    Examples
    --------
    >>> import numpy as np
    >>> from randla import range_finder
    >>> from randla.testing import matrix
    >>> A, s = matrix(300, 200, spectrum="exponential", rng=0)
    >>> Q = range_finder(A, 20, q=1, rng=0)
    >>> Q.shape
    (300, 30)
    >>> bool(np.linalg.norm(A - Q @ (Q.T @ A), 2) < 10 * s[20])
    True
    """
    op, k, l, q = _prepare(A, k, p, q, stabilizer, sketch)
    return _orth(_power_basis(op, l, q, stabilizer, sketch, rng, check_finite))


def rsvd(A, k=None, *, rtol=None, p=10, q=0, sketch="gaussian", stabilizer="cholqr", block_size=None,
         norm="fro", rng=None, check_finite=True):
    """Randomized SVD: rank ``k`` or relative accuracy ``rtol`` [HMT2011, Alg. 5.1].

    Fixed rank (``k``): ``Q = range_finder(A, k, p=p, q=q)``, ``Q^H A = Ub S Vh``,
    ``U = Q Ub``, truncated to ``k``. Fixed accuracy (``rtol``): ``Q`` from
    :func:`adaptive_range_finder` (``block_size``, ``q``, ``norm``), so that
    ``||A - U S Vh|| <= rtol ||A||`` in that norm, then the SVD of ``Q^H A``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator`` (``norm="2"`` with ``rtol``)
    k : int, optional
        Target rank. Give exactly one of ``k`` and ``rtol``.
    rtol : float, optional
        Relative error in (0, 1), in the norm ``norm``.
    norm : {"fro", "2"}, default "fro"
        Norm of the fixed-accuracy search (ignored with ``k``).
    p, q, sketch, stabilizer, rng, check_finite
        As in :func:`range_finder`. With ``q = 0`` this is plain RSVD; with an
        orthonormalising stabiliser and ``q > 0`` it is the same computation as
        :func:`rsi`.
    block_size : int, optional
        Block size of the fixed-accuracy search (default 32).

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` with ``U`` (m, r), ``S`` (r,), ``Vh`` (r, n); ``S`` real
        and descending; namespace, device and dtype of ``A``.

    Notes
    -----
    Cost at fixed rank: ``2q + 2`` passes over ``A`` with ``k + p`` vectors.
    Error in expectation [HMT2011, Thm. 10.6]: for ``q = 0``,
    ``E||A - U S Vh||_2 <= (1 + sqrt(k/(p-1))) sigma_{k+1} + e sqrt(k+p)/p
    (sum_{j>k} sigma_j^2)^{1/2}``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla import rsvd
    >>> from randla.testing import matrix
    >>> A, s = matrix(400, 300, spectrum="exponential", rng=0)
    >>> U, S, Vh = rsvd(A, 10, q=1, rng=0)
    >>> bool(np.allclose(S, s[:10], rtol=1e-2))
    True
    >>> U, S, Vh = rsvd(A, rtol=0.5, rng=0)
    >>> bool(np.linalg.norm(A - (U * S) @ Vh) <= 0.5 * np.linalg.norm(A))
    True
    """
    if (k is None) == (rtol is None):
        raise TypeError("give exactly one of k (rank) and rtol (relative tolerance)")
    if rtol is not None:
        return _rsvd_rtol(A, rtol, q=q, block_size=block_size, norm=norm, rng=rng, check_finite=check_finite)
    op, k, l, q = _prepare(A, k, p, q, stabilizer, sketch)
    Q = _orth(_power_basis(op, l, q, stabilizer, sketch, rng, check_finite))
    return _svd_of_projection(op, Q, k)


def rsi(A, k, *, p=10, q=2, sketch="gaussian", stabilizer="cholqr", rng=None, check_finite=True):
    """Randomized subspace iteration, re-orthonormalised after every pass [RSI, Alg. 1].

    ``Y = A Omega``; ``q`` times ``Q = orth(Y)``, ``Z = orth(A^H Q)``, ``Y = A Z``;
    then ``Q = orth(Y)``, ``B = Q^H A = Ub S Vh``, ``U = Q Ub``, truncated to ``k``.
    The seed paper counts iterations from one: its ``q`` is our ``q + 1``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator``
    k : int
        Target rank.
    p : int, default 10
        Oversampling.
    q : int, default 2
        Subspace iterations (``2q + 2`` passes).
    sketch : str, default "gaussian"
    stabilizer : {"cholqr", "qr", "lu", "none"}, default "cholqr"
        See :func:`range_finder`. ``"cholqr"`` and ``"qr"`` re-orthonormalise after
        every pass, which is the RSI of the seed paper; ``"lu"`` and ``"none"`` give
        the corresponding power iteration of [HMT2011, Alg. 4.3/4.4].
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` of rank ``k``.

    Notes
    -----
    Gap-dependent bound: the error factor over ``sigma_{k+1}`` decays like
    ``(sigma_{k+1}/sigma_k)^{2q+1}`` [HMT2011, Cor. 10.10].

    Examples
    --------
    >>> import numpy as np
    >>> from randla import rsi
    >>> from randla.estimate import normalized_error
    >>> from randla.testing import matrix
    >>> A, s = matrix(300, 200, spectrum="polynomial", rng=0)
    >>> U, S, Vh = rsi(A, 20, q=2, rng=0)
    >>> bool(normalized_error(A, U, S, Vh, s=s) < 1.2)
    True
    """
    return rsvd(A, k, p=p, q=q, sketch=sketch, stabilizer=stabilizer, rng=rng, check_finite=check_finite)


def block_krylov_svd(A, k, *, p=10, q=2, sketch="gaussian", stabilizer="cholqr", rng=None,
                     check_finite=True):
    """Randomized block Krylov SVD [MM2015, Alg. 2].

    ``K = [A Omega, (A A^H) A Omega, ..., (A A^H)^q A Omega]`` (m x (q+1) l), each
    block stabilised from the previous one (which keeps the span of ``K``);
    ``Q = orth(K)``; the SVD of ``Q^H A`` truncated to ``k``. The Krylov space holds
    every polynomial of degree ``<= 2q + 1`` in ``A`` applied to ``Omega``, so it
    reaches a given error with fewer passes than :func:`rsi`: the error decays like
    ``exp(-2 q sqrt(gap))`` instead of ``exp(-2 q gap)``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator``
    k : int
        Target rank.
    p : int, default 10
        Oversampling of the block (block size ``l = k + p``).
    q : int, default 2
        Krylov depth; ``2q + 2`` passes, the last one with ``(q + 1) l`` vectors.
    sketch, stabilizer, rng, check_finite
        As in :func:`range_finder`.

    Returns
    -------
    SVDResult

    Notes
    -----
    Memory ``m (q + 1) l``; the final QR costs ``O(m ((q+1) l)^2)``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla import block_krylov_svd
    >>> from randla.estimate import normalized_error
    >>> from randla.testing import matrix
    >>> A, s = matrix(300, 200, spectrum="polynomial", rng=0)
    >>> U, S, Vh = block_krylov_svd(A, 20, q=1, rng=0)
    >>> bool(normalized_error(A, U, S, Vh, s=s) < 1.2)
    True
    """
    op, k, l, q = _prepare(A, k, p, q, stabilizer, sketch)
    xp = op.xp
    Y = _first_sketch(op, l, sketch, rng, check_finite)
    blocks = [Y]
    for _ in range(q):
        Z = _stabilize(op.rmatmat(_stabilize(Y, stabilizer)), stabilizer)
        Y = op.matmat(Z)
        blocks.append(Y)
    K = xp.concat([_stabilize(b, stabilizer) for b in blocks], axis=1)
    cols = min(K.shape[1], op.shape[0])
    Q = _orth(K)[:, :cols]
    return _svd_of_projection(op, Q, k)


# ----------------------------------------------------------------------------------
# fixed accuracy
# ----------------------------------------------------------------------------------


def adaptive_range_finder(A, rtol, *, block_size=32, q=1, max_rank=None, norm="fro", rng=None,
                          check_finite=True):
    """Fixed-accuracy range finder: the rank is found, not given [YGL2018, Alg. 4].

    Blocked randomized QB: blocks of ``block_size`` columns, each a range finder with
    ``q`` power iterations on the residual ``(I - Q Q^H) A``, are added until
    ``||A - Q Q^H A|| <= rtol ||A||`` in the chosen norm; the rank is then cut to the
    column.

    * ``norm="fro"``: the error is known exactly from
      ``||A - Q B||_F^2 = ||A||_F^2 - sum_i ||B_i||_F^2`` (``B_i = Q_i^H A``); each
      block is rotated by its own SVD and cut where the energy left out meets the
      tolerance. Where the subtraction would cancel (``rtol^2 < 1e3 eps``) the
      residual of a dense ``A`` is recomputed exactly near the end.
    * ``norm="2"``: the singular values of each block ``B_i`` are Ritz values of the
      residual. Blocks are added until one has half of them below
      ``rtol ||A||_2``; one more pass, ``A V`` with ``V`` the right singular vectors
      of the whole ``B``, refines the basis and its Ritz values, and the rank is the
      number of those above ``rtol ||A||_2 / 1.1`` (``||A||_2`` is the largest of
      them). Measured on 600 x 400 matrices (``q = 1``, see ``tests/test_svd.py``):
      the rank found is within 1.2 times the optimal one
      ``min{r : sigma_{r+1} <= rtol sigma_1}`` and the tolerance is met, on step,
      ``i^-1/2``, ``i^-1``, ``i^-2`` and exponential spectra.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array, or ``LinearOperator`` (``norm="2"`` only)
    rtol : float
        Relative error in (0, 1).
    block_size : int, default 32
    q : int, default 1
        Power iterations per block.
    max_rank : int, optional
        Stop at this rank even if ``rtol`` is not met (default ``min(m, n)``).
    norm : {"fro", "2"}, default "fro"
    rng, check_finite
        As in :func:`range_finder`.

    Returns
    -------
    Q : array (m, r)
        Orthonormal columns; ``r`` is the rank found (0 for a zero matrix).

    Notes
    -----
    Eager: the loop reads the error after every block (Dask computes, JAX cannot be
    jitted). Cost per block: ``2q + 2`` passes with ``block_size`` vectors plus
    re-orthogonalisation against the basis so far; ``norm="2"`` adds one pass with
    the whole basis. Data at any scale (``1e-300`` to ``1e300``) is handled by an
    exact power-of-two rescaling of the products.

    Examples
    --------
    >>> import numpy as np
    >>> from randla import adaptive_range_finder
    >>> from randla.testing import matrix
    >>> A, s = matrix(300, 200, spectrum="exponential", rng=0)
    >>> Q = adaptive_range_finder(A, 1e-3, rng=0)
    >>> bool(np.linalg.norm(A - Q @ (Q.T @ A)) <= 1e-3 * np.linalg.norm(A))
    True
    >>> Q = adaptive_range_finder(A, 1e-3, norm="2", rng=0)
    >>> Q.shape[1], int(np.count_nonzero(s > 1e-3 * s[0]))     # rank found, optimal rank
    (31, 30)
    >>> bool(np.linalg.norm(A - Q @ (Q.T @ A), 2) <= 1e-3 * s[0])
    True
    """
    return adaptive_qb(A, rtol, block_size=block_size, q=q, max_rank=max_rank, norm=norm, rng=rng,
                       check_finite=check_finite, need_b=False)[0]


def _rsvd_rtol(A, rtol, *, q, block_size, norm, rng, check_finite):
    Q, Bm = adaptive_qb(A, rtol, block_size=32 if block_size is None else block_size, q=q,
                        max_rank=None, norm=norm, rng=rng, check_finite=check_finite)
    xp = B.namespace(Q)
    if Q.shape[1] == 0:
        return SVDResult(Q, xp.zeros((0,), dtype=B.real_dtype(xp, Q.dtype), device=B.device(Q)), Bm)
    W, S, Xh = B.svd(B.mH(Bm))
    return SVDResult(Q @ B.mH(Xh), S, B.mH(W))
