"""Interpolative decompositions and column subset selection.

A column interpolative decomposition (ID) writes ``A`` through ``k`` of its own
columns, ``A ~= A[:, idx] @ T`` with ``T[:, idx] = I`` [CGMR2005]_; the row ID is
the same for ``A^H``. Because the skeleton columns are columns of ``A``, an ID
keeps structure: pruning the neurons of a layer by an ID of its activations
leaves a smaller network of the same shape (seed 000, [CRDD2022]_).

* :func:`interp_decomp` -- column or row ID by CPQR, strong RRQR or a sketch
  ([HMT2011]_, Sec. 5.2): the randomized method picks the skeleton by QRCP of a
  sketch ([MT2020]_, Sec. 13.4), on arrays in blocks with a downdated sketch as in
  HQRRP [MOHvdG2017]_.
* :func:`two_sided_id` -- ``A ~= X @ A[rows][:, cols] @ Z``.
* :func:`cur` -- ``A ~= A[:, cols] @ U @ A[rows, :]``.
* :func:`column_select` -- ``k`` column indices by CPQR, sRRQR, randomized CPQR,
  Golub-Klema-Stewart [GKS1976]_ or randomized GKS [ABD2023]_.
* :func:`id_to_svd` -- the SVD of an ID without touching ``A`` again.

Counterparts of ``scipy.linalg.interpolative``
----------------------------------------------
Every function there has one here; rank and tolerance are separate keywords and the
number of results never changes. ``idx_s, proj`` below are SciPy's outputs (``idx_s``
the full permutation); ``idx, T`` ours (``T[:, idx] = I``, ``T[:, idx_s[k:]] = proj``).

==========================================  ===================================================
SciPy                                       randla
==========================================  ===================================================
``interp_decomp(A, k)``                     ``interp_decomp(A, k, method="randomized")``
                                            (``rand=False``: ``method="cpqr"``); ``A`` may be a
                                            ``LinearOperator`` or sparse array (randomized)
``interp_decomp(A, eps)``                   ``interp_decomp(A, rtol=eps, ...)``
``reconstruct_matrix_from_id(B, ...)``      ``B @ T`` (``B = A[:, idx]``)
``reconstruct_interp_matrix(idx_s, proj)``  ``T``
``reconstruct_skel_matrix(A, k, idx_s)``    ``A[:, idx]``
``id_to_svd(B, idx_s, proj)``               :func:`id_to_svd` ``(A[:, idx], T)``
``svd(A, k)`` / ``svd(A, eps)``             :func:`randla.svd.rsvd` ``(A, k)`` /
                                            ``rsvd(A, rtol=eps, norm="2")`` (``LinearOperator``
                                            too; ``V`` is ``Vh^H``)
``estimate_spectral_norm(A)``               :func:`randla.estimate.spectral_norm`
``estimate_spectral_norm_diff(A, B)``       ``spectral_norm(A - B)``; for operators
                                            ``spectral_norm(aslinearoperator(A) -
                                            aslinearoperator(B))``
``estimate_rank(A, eps)``                   :func:`randla.estimate.estimate_rank`
``seed``, ``rand``                          the ``rng`` keyword (a seed or a Generator)
==========================================  ===================================================

The test suite runs SciPy's own tests of these functions through such a mapping.

The tolerances differ in kind. SciPy's ``eps`` (positional there; a float in the
second place here is a ``TypeError``, since ``k`` is an int) bounds roughly the
spectral-norm error relative to ``||A||_2``; ``rtol`` here is relative to the
Frobenius norm of the whole residual: the rank is the smallest whose pivoted QR
leaves ``||R22||_F <= rtol ||A||_F``. On a flat spectrum (every singular value
alike) ``rtol=0.1`` stops at about 99 % of the columns, where the spectral error of
the remaining ones is still of the order of ``||A||_2``; at ``eps=0.1`` SciPy keeps
them all. Since ``||A||_F <= sqrt(min(m, n)) ||A||_2``, ``rtol = eps / sqrt(min(m, n))``
bounds the pivoted QR's spectral error by ``eps ||A||_2`` (the ID's by that times its
growth factor); ``rsvd(A, rtol=eps, norm="2")`` meets a spectral tolerance directly.

References
----------
.. [CGMR2005] H. Cheng, Z. Gimbutas, P.-G. Martinsson and V. Rokhlin, "On the
   compression of low rank matrices", SIAM J. Sci. Comput. 26 (2005).
.. [HMT2011] N. Halko, P.-G. Martinsson and J. A. Tropp, "Finding structure with
   randomness", SIAM Review 53 (2011), Sec. 5.2.
.. [GKS1976] G. Golub, V. Klema and G. W. Stewart, "Rank degeneracy and least
   squares problems", Stanford CS report (1976).
.. [ABD2023] R. Armstrong, A. Buzali and A. Damle, "Structure-aware analyses and
   algorithms for interpolative decompositions", arXiv:2310.09452.
.. [CRDD2022] J. Chee, M. Renz, A. Damle and C. De Sa, "Model preserving
   compression for neural networks", NeurIPS 2022.
.. [MOHvdG2017] P.-G. Martinsson, G. Quintana-Orti, N. Heavner and R. van de
   Geijn, "Householder QR factorization with randomization for column pivoting
   (HQRRP)", SIAM J. Sci. Comput. 39 (2017).
.. [MT2020] P.-G. Martinsson and J. A. Tropp, "Randomized numerical linear
   algebra: foundations and algorithms", Acta Numerica (2020), Sec. 13.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import _id_core as _core
from . import _validate as V
from . import qr as _qr
from ._scale import unit_scale

__all__ = ["IDResult", "TwoSidedID", "CURResult", "interp_decomp", "two_sided_id", "cur", "column_select",
           "id_to_svd"]

ID_METHODS = tuple(_core.DENSE)


class IDResult(NamedTuple):
    """Interpolative decomposition.

    Column ID (``axis=1``): ``A ~= A[:, idx] @ T``, ``T`` is ``k x n``,
    ``T[:, idx] = I``. Row ID (``axis=0``): ``A ~= T @ A[idx, :]``, ``T`` is
    ``m x k``, ``T[idx, :] = I``.
    """

    idx: Any
    T: Any


class TwoSidedID(NamedTuple):
    """``A ~= X @ A[rows][:, cols] @ Z`` with ``X[rows, :] = I`` and ``Z[:, cols] = I``."""

    rows: Any
    cols: Any
    X: Any
    Z: Any


class CURResult(NamedTuple):
    """``A ~= A[:, cols] @ U @ A[rows, :]``."""

    rows: Any
    cols: Any
    U: Any


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------


def _check_axis(axis):
    if isinstance(axis, bool) or axis not in (0, 1, -1, -2):
        raise ValueError(f"axis must be 0 (row ID) or 1 (column ID), got {axis!r}")
    return 1 if axis in (1, -1) else 0


# ----------------------------------------------------------------------------------
# public
# ----------------------------------------------------------------------------------


@B.wide_floats
def interp_decomp(A, k=None, *, rtol=None, axis=1, method="cpqr", p=10, q=0, f=2.0, rng=None,
                  check_finite=True):
    r"""Interpolative decomposition: ``A ~= A[:, idx] @ T`` (or ``T @ A[idx, :]``).

    From a pivoted QR ``A[:, perm] ~= Q [R11 R12]`` the skeleton is
    ``idx = perm[:k]`` and

    .. math:: T_{:, \pi} = [\, I_k \;\; R_{11}^{-1} R_{12} \,], \qquad
              \| A - A_{:, J} T \|_2 \le \sqrt{1 + \|R_{11}^{-1}R_{12}\|_2^2}\; \|R_{22}\|_2

    [CGMR2005, Sec. 3], [HMT2011, Sec. 5.2]. ``T[:, idx]`` is the identity
    exactly. The randomized method chooses the skeleton by QRCP of the sketch
    ``Y = Omega (A A^H)^q A`` (``(k + p) x n``) [MT2020, Sec. 13.4] and then
    computes ``R`` from ``A`` itself (:func:`randla.qr.rcpqr`), so ``T`` holds
    the least-squares coefficients of ``A`` on the chosen columns: taking ``T``
    from the sketch instead is cheaper by one pass but several times less
    accurate on slowly decaying spectra.

    A ``scipy.sparse.linalg.LinearOperator`` or SciPy sparse array is taken from
    its products alone with ``method="randomized"``: pivots from QRCP of the row
    sketch ``Omega^H (A A^H)^q A``, then the chosen columns ``A E_J`` (one product)
    and ``R = Q_C^H A`` (one product with ``A^H``), so ``T`` is again the
    least-squares fit of ``A`` on its own columns; by tolerance, the sketch doubles
    until its QRCP finds the rank with rows to spare.

    Parameters
    ----------
    A : (m, n) array, SciPy sparse array or ``LinearOperator`` (``"randomized"``)
    k : int, optional
        Rank (number of skeleton columns/rows).
    rtol : float, optional
        Relative tolerance that picks the rank: the smallest ``k`` whose
        pivoted QR leaves ``||A[:, perm] - Q R||_F <= rtol ||A||_F`` (for
        ``"randomized"`` on a dense ``A`` read exactly from the rows of ``R``;
        on a ``LinearOperator`` measured on a Gaussian sketch, which preserves
        Frobenius norms in expectation). The ID error is at most
        ``sqrt(1 + ||T||_2^2)`` times that residual.
        With ``k`` as well, ``k`` caps the rank. With neither, the numerical
        rank (``rtol = max(m, n) eps``) is used.
    axis : {1, 0}
        1: column ID ``A ~= A[:, idx] @ T``; 0: row ID ``A ~= T @ A[idx, :]``.
    method : {"cpqr", "srrqr", "randomized"}
        Pivoting by :func:`randla.qr.cpqr`, :func:`randla.qr.srrqr` (bounded
        ``|T| <= f``) or on a Gaussian sketch.
    p : int, default 10
        Oversampling of the sketch (``"randomized"``).
    q : int, default 0
        Power iterations of the sketch (``"randomized"``).
    f : float, default 2.0
        sRRQR bound (``"srrqr"``).
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    IDResult
        ``(idx, T)``: ``idx`` (k,) int64 and ``T`` in ``A``'s namespace, device
        and dtype.

    Notes
    -----
    Cost: ``"cpqr"`` a (partial) pivoted QR, ``O(m n k)`` (LAPACK ``geqp3`` for
    NumPy when ``k > min(m, n) / 2`` or ``rtol`` is given); ``"srrqr"`` that
    plus the swaps; ``"randomized"`` the sketch ``Omega A`` (``2 m n (k+p)``
    flops, two more products per power iteration), a pivoted QR of the small
    sketch, a Cholesky-QR of the ``k`` chosen columns and ``Q^H A``
    (``2 m n k``), plus ``O(k^2 n)`` for ``T``: two passes over ``A``, all
    matrix-matrix products. Unlike ``scipy.linalg.interpolative``, the rank
    and the tolerance are separate keywords, the output arity never changes,
    float32 and every array-API backend are supported, and the randomized path
    never factors the whole matrix. Eager (pivot indices are read). Dask:
    ``"randomized"`` reads ``A`` once for the sketch and the column norms and
    twice per block of ``max(16, k / 8)`` pivots (candidate columns, block row
    of ``R``), keeping what it reads again in memory; ``"cpqr"`` and
    ``"srrqr"`` gather ``A`` to the host.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.interpolative import interp_decomp
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((30, 5)) @ rng.standard_normal((5, 20))
    >>> idx, T = interp_decomp(A, 5)
    >>> bool(np.allclose(A[:, idx] @ T, A))
    True
    >>> bool(np.array_equal(T[:, idx], np.eye(5)))
    True
    >>> idx, T = interp_decomp(A, rtol=1e-10, axis=0, method="randomized", rng=0)
    >>> len(idx), bool(np.allclose(T @ A[idx, :], A))
    (5, True)

    From products alone:

    >>> from scipy.sparse.linalg import aslinearoperator
    >>> idx, T = interp_decomp(aslinearoperator(A), rtol=1e-10, method="randomized", rng=0)
    >>> len(idx), bool(np.allclose(A[:, idx] @ T, A))
    (5, True)
    """
    V.check_eager("interp_decomp", "the pivots", A=A, rtol=rtol)
    axis = _check_axis(axis)
    run = _core.DENSE[V.check_choice(method, "method", _core.DENSE)]
    p = V.check_count(p, "p")
    q = V.check_count(q, "q")
    f = _qr._check_f(f)
    gen = B.as_generator(rng)
    if V.is_scipy_operator(A):
        return _operator_interp_decomp(A, k, rtol, axis, method, p, q, gen, check_finite)
    A, xp = V.as_matrix(A, check_finite=check_finite)
    M = A if axis == 1 else B.mH(A)
    k, rtol = _rank_args(k, rtol, M.shape, xp, A.dtype)
    like = M
    lazy = False
    if method != "randomized":  # pivot loops on lazy (Dask) input run on the host
        M, lazy = _qr._host_lazy(M, check_finite)
        xp = B.namespace(M)
    if not B.is_lazy(M):  # T and the pivots are scale-free; R's column norms are not
        M, _ = unit_scale(M)
    idx, T = run(M, xp, k, rtol, p, q, f, gen)
    if lazy:
        idx, T = (B.from_numpy(np.asarray(x), like=like) for x in (idx, T))
    return IDResult(idx, T if axis == 1 else B.mH(T))


def _rank_args(k, rtol, shape, xp, dtype):
    """``(k, rtol)`` checked; neither given means the numerical rank."""
    if k is not None:
        k = V.check_rank(k, shape)
    if rtol is not None:
        rtol = V.check_rtol(rtol)
    elif k is None:
        rtol = _core.default_rtol(xp, dtype, shape)
    return k, rtol


def _operator_interp_decomp(A, k, rtol, axis, method, p, q, gen, check_finite):
    """The ID of a ``LinearOperator`` or SciPy sparse array, from products alone."""
    if method != "randomized":
        raise ValueError(
            f"method={method!r} needs the entries of A; a LinearOperator or sparse A takes "
            f"method='randomized' (or pass a dense array)"
        )
    op = V.as_operand(A, check_finite=check_finite)
    op = op if axis == 1 else V.adjoint_operand(op)
    k, rtol = _rank_args(k, rtol, op.shape, np, op.dtype)
    idx, T = _core.operator_id(op, k, rtol, p, q, gen, check_finite)
    return IDResult(idx, T if axis == 1 else B.mH(T))


@B.wide_floats
def two_sided_id(A, k=None, *, rtol=None, method="cpqr", p=10, q=0, f=2.0, rng=None, check_finite=True):
    r"""Two-sided interpolative decomposition ``A ~= X @ A[rows][:, cols] @ Z``.

    A column ID ``A ~= A[:, J] Z`` (by ``method``) followed by a row ID of the
    ``m x k`` skeleton, ``A[:, J] ~= X A[I, J]`` (by CPQR, or sRRQR when
    ``method="srrqr"``) [CGMR2005, Sec. 4], [MT2020, Sec. 13.2]. The error is at
    most ``||A - A[:, J] Z|| + ||X|| ||A[:, J] - X A[I, J]|| ||Z||``.

    Parameters
    ----------
    A : (m, n) array
    k, rtol, method, p, q, f, rng, check_finite
        As in :func:`interp_decomp` (the rank is fixed by the column ID).

    Returns
    -------
    TwoSidedID
        ``(rows, cols, X, Z)``: ``X`` (m x k) with ``X[rows, :] = I``, ``Z``
        (k x n) with ``Z[:, cols] = I``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.interpolative import two_sided_id
    >>> rng = np.random.default_rng(1)
    >>> A = rng.standard_normal((25, 4)) @ rng.standard_normal((4, 18))
    >>> rows, cols, X, Z = two_sided_id(A, 4)
    >>> bool(np.allclose(X @ A[np.ix_(rows, cols)] @ Z, A))
    True
    """
    V.check_eager("two_sided_id", "the pivots", A=A, rtol=rtol)
    cols, Z = interp_decomp(A, k, rtol=rtol, axis=1, method=method, p=p, q=q, f=f, rng=rng,
                            check_finite=check_finite)
    A, xp = V.as_matrix(A, check_finite=False)
    C = B.take(A, B.to_numpy(cols), axis=1)
    rows, X = interp_decomp(C, C.shape[1], axis=0, method="srrqr" if method == "srrqr" else "cpqr", f=f,
                            check_finite=False)
    return TwoSidedID(rows, cols, X, Z)


def _pinv_small(Rm):
    """Pseudo-inverse of a small square matrix by SVD with the usual cutoff.

    Only the cutoff is read on the host; the reciprocals are taken of ``S`` itself,
    in its namespace, so that autograd sees them (the inner ``where`` keeps the
    discarded values' derivative finite).
    """
    xp = B.namespace(Rm)
    U, S, Vh = B.svd(Rm)
    s = B.to_numpy(S)
    cut = max(Rm.shape) * B.eps(xp, Rm.dtype) * (float(s[0]) if s.size else 0.0)
    keep = S > cut
    Sinv = xp.where(keep, 1.0 / xp.where(keep, S, xp.ones_like(S)), xp.zeros_like(S))
    return B.mH(Vh) @ (Sinv[:, None] * B.mH(U))


@B.wide_floats
def cur(A, k=None, *, rtol=None, method="cpqr", p=10, q=0, f=2.0, rng=None, check_finite=True):
    r"""CUR decomposition ``A ~= C @ U @ R`` with ``C = A[:, cols]``, ``R = A[rows, :]``.

    Indices from :func:`two_sided_id`; the core is the least-squares optimal
    ``U = C^+ A R^+`` [MD2009], computed from thin QR factors
    ``C = Q_c R_c``, ``R^H = Q_r R_r`` as ``R_c^+ (Q_c^H A Q_r) R_r^{-H}``
    with pseudo-inverses of the small triangular factors.

    Parameters
    ----------
    A : (m, n) array
    k, rtol, method, p, q, f, rng, check_finite
        As in :func:`interp_decomp`.

    Returns
    -------
    CURResult
        ``(rows, cols, U)`` with ``U`` (k x k).

    Notes
    -----
    Cost: the two-sided ID plus two thin QRs (``O((m + n) k^2)``) and one
    product ``Q_c^H A Q_r`` (``2 m n k``).

    References
    ----------
    .. [MD2009] M. W. Mahoney and P. Drineas, "CUR matrix decompositions for
       improved data analysis", PNAS 106 (2009).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.interpolative import cur
    >>> rng = np.random.default_rng(2)
    >>> A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 15))
    >>> rows, cols, U = cur(A, 3)
    >>> bool(np.allclose(A[:, cols] @ U @ A[rows, :], A))
    True
    """
    V.check_eager("cur", "the pivots", A=A, rtol=rtol)
    rows, cols, _, _ = two_sided_id(A, k, rtol=rtol, method=method, p=p, q=q, f=f, rng=rng,
                                    check_finite=check_finite)
    A, xp = V.as_matrix(A, check_finite=False)
    # U = C^+ A R^+ scales as 1 / A: computed for A / c (subnormal or huge A: the
    # reciprocals of R_c's singular values overflowed, U came out NaN), then / c
    As, c = unit_scale(A) if not B.is_lazy(A) else (A, 1.0)
    C = B.take(As, B.to_numpy(cols), axis=1)
    Rw = B.take(As, B.to_numpy(rows), axis=0)
    Qc, Rc = B.qr(C)
    Qr, Rr = B.qr(B.mH(Rw))
    core = B.mH(Qc) @ As @ Qr
    U = _pinv_small(Rc) @ core @ B.mH(_pinv_small(Rr))
    if c != 1.0:
        with V.quiet_nonfinite():
            U = U / xp.asarray(c, dtype=B.real_dtype(xp, U.dtype), device=B.device(U))
        if not bool(xp.all(xp.isfinite(U))):
            raise ValueError(f"A is finite but the core U of its CUR overflows {U.dtype} (U scales as 1 / A); "
                             f"rescale A")
    return CURResult(rows, cols, U)


@B.wide_floats
def column_select(A, k, *, method="cpqr", p=10, q=2, f=2.0, rng=None, check_finite=True):
    r"""Choose ``k`` columns of ``A`` that span its dominant column space well.

    Methods:

    * ``"cpqr"``: the first ``k`` Businger-Golub pivots (:func:`randla.qr.cpqr`).
    * ``"srrqr"``: strong RRQR pivots (:func:`randla.qr.srrqr`), with
      ``||A - P_C A|| <= sqrt(1 + f^2 k (n - k)) sigma_{k+1}``.
    * ``"randomized"``: pivots of randomized CPQR (:func:`randla.qr.rcpqr`).
    * ``"gks"``: Golub-Klema-Stewart -- CPQR on the top-``k`` right singular
      vectors ``V_k^H`` (``k x n``) of a full SVD [GKS1976].
    * ``"randomized_gks"``: the same with ``V_k^H`` from randomized subspace
      iteration :func:`randla.svd.rsi` (``p``, ``q``) [ABD2023].

    Parameters
    ----------
    A : (m, n) array
    k : int
    method : str, default "cpqr"
    p, q : int
        Oversampling and power iterations (``"randomized"`` uses ``p``;
        ``"randomized_gks"`` both).
    f : float, default 2.0
        sRRQR bound.
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    idx : (k,) int64 array in ``A``'s namespace
        Selected column indices (in pivot order).

    Notes
    -----
    The quality measure is ``||A - C C^+ A||_2 / sigma_{k+1}(A)`` with
    ``C = A[:, idx]`` (1 is optimal among rank-``k`` approximations). GKS costs a
    full SVD, ``O(m n min(m, n))``; randomized GKS ``2 (2q + 2) m n (k + p)``
    flops of matrix products plus a QRCP of ``k x n``; CPQR ``O(m n k)`` of
    memory-bound products; randomized CPQR ``4 m n (k + p)``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.interpolative import column_select
    >>> A = np.random.default_rng(3).standard_normal((40, 30))
    >>> idx = column_select(A, 5, method="randomized_gks", rng=0)
    >>> idx.shape, len(set(idx.tolist()))
    ((5,), 5)
    """
    V.check_eager("column_select", "the pivots", A=A)
    A, xp = V.as_matrix(A, check_finite=check_finite)
    k = V.check_rank(k, A.shape)
    select = _SELECTORS[V.check_choice(method, "method", _SELECTORS)]
    p = V.check_count(p, "p")
    q = V.check_count(q, "q")
    # lazy A: the pivoted QRs scan the host copy that their loops need anyway
    return select(A, k, p=p, q=q, f=f, rng=rng, check_finite=check_finite and B.is_lazy(A))[:k]


def _gks_perm(Vh, k):
    """CPQR pivots of the top right singular vectors ``V_k^H`` (k x n) [GKS1976]."""
    return _qr.cpqr(Vh[:k, :], k, check_finite=False).perm


def _randomized_gks(A, k, *, p, q, f, rng, check_finite):
    from .svd import rsi

    return _gks_perm(rsi(A, k, p=p, q=q, rng=rng, check_finite=False).Vh, k)


_SELECTORS = {
    "cpqr": lambda A, k, *, check_finite, **kw: _qr.cpqr(A, k, check_finite=check_finite).perm,
    "srrqr": lambda A, k, *, f, check_finite, **kw: _qr.srrqr(A, k, f=f, check_finite=check_finite).perm,
    "randomized": lambda A, k, *, p, rng, **kw: _qr.rcpqr(A, k, p=p, rng=rng, check_finite=False).perm,
    "gks": lambda A, k, **kw: _gks_perm(B.svd(A)[2], k),
    "randomized_gks": _randomized_gks,
}
SELECT_METHODS = tuple(_SELECTORS)


def id_to_svd(C, T):
    r"""SVD of an interpolative decomposition ``A ~= C @ T`` without touching ``A``.

    With thin QRs ``C = Q_1 R_1`` and ``T^H = Q_2 R_2``, ``C T = Q_1 (R_1 R_2^H) Q_2^H``
    and the SVD of the small ``k x k`` core ``R_1 R_2^H = W S X^H`` gives
    ``U = Q_1 W``, ``Vh = X^H Q_2^H`` [CGMR2005, Sec. 5], [HMT2011, Alg. 5.2].

    Parameters
    ----------
    C : (m, k) array
        Column ID: the skeleton columns ``A[:, idx]``; row ID: its ``T`` (m x k).
    T : (k, n) array
        Column ID: its ``T``; row ID: the skeleton rows ``A[idx, :]``.

    Returns
    -------
    SVDResult
        ``(U, S, Vh)`` of ``C @ T``: ``U`` (m, k), ``S`` (k,) descending, ``Vh``
        (k, n); namespace, device and dtype of ``C``.

    Notes
    -----
    Cost ``O((m + n) k^2)``: two thin QRs and an SVD of ``k x k``; no product with
    ``A``. Counterpart of ``scipy.linalg.interpolative.id_to_svd``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.interpolative import interp_decomp, id_to_svd
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20))
    >>> idx, T = interp_decomp(A, 4)
    >>> U, S, Vh = id_to_svd(A[:, idx], T)
    >>> bool(np.allclose((U * S) @ Vh, A)), bool(np.allclose(S, np.linalg.svd(A)[1][:4]))
    (True, True)
    """
    from .svd import SVDResult

    C, xp = V.as_matrix(C, "C")
    T, _ = V.as_matrix(T, "T")
    if C.shape[1] != T.shape[0]:
        raise ValueError(f"C (m, k) and T (k, n) must share k, got shapes {tuple(C.shape)} and {tuple(T.shape)}")
    if C.dtype != T.dtype:
        raise TypeError(f"C and T must have one dtype, got {C.dtype} and {T.dtype}")
    Q1, R1 = B.qr(C)
    Q2, R2 = B.qr(B.mH(T))
    W, S, Xh = B.svd(R1 @ B.mH(R2))
    return SVDResult(Q1 @ W, S, Xh @ B.mH(Q2))
