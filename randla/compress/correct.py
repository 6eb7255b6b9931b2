"""Error-corrected factors: fit a layer to the original model through the compressed one.

Whitened factors (:func:`~randla.compress.factor.factor` with ``gram``) make each layer's own
output error small on the inputs the *original* model gives it. Once the layers before
it are compressed, a layer sees different inputs ``X~`` (rows: positions) instead of
``X``, and the errors of all layers add up along the depth. Compressing layers in
forward order and fitting each one to the original layer's output from the inputs the
partly compressed model now gives it corrects for what is upstream:

.. math::

    M = \\arg\\min_M \\|X W^T - \\tilde X M^T\\|_F^2 + \\mu \\|M - W\\|_F^2,
    \\qquad M^T = (\\tilde G + \\mu I)^{-1} (C + \\mu I) W^T,

with ``G~ = X~^H X~``, ``C = X~^H X`` and ``mu = shrinkage tr(G~) / in``, followed by the
whitened truncation of ``M`` in ``G~``'s metric. For the exact solution (``mu = 0``) the
error splits, ``||X W^T - X~ (BA)^T||^2 = ||X W^T - X~ M^T||^2 + ||(M - BA) X~^H||^2``,
so the truncation is the best rank-``r`` step from ``M``. The ridge ``mu`` pulls ``M``
toward ``W`` where the calibration data say little; ``shrinkage`` is chosen per layer by
the error on held-out folds (:func:`fit_corrected`). The shift of the output's mean is
corrected through the bias: ``b' = b + W x_mean - B A x~_mean``.

Everything here works on Gram matrices, so it never needs the activations themselves:
the adapter (:func:`randla.torch.compress` with ``data``) streams them.

References
----------
M. Nagel, M. van Baalen, T. Blankevoort, M. Welling, "Data-free quantization through
weight equalization and bias correction", ICCV 2019 (bias correction).
E. Frantar, D. Alistarh, "Optimal brain compression", NeurIPS 2022 (layer-wise
compression against the compressed model's own inputs).
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, NamedTuple

from .. import _backend as B
from .. import _validate as V
from .factor import DEFAULT_RIDGE, _check_method, _unit_gram, factor, metric, working_matrix
from .report import LayerReport

__all__ = ["DEFAULT_SHRINKAGE", "CorrectedFactors", "TransferStats", "corrected_weight", "transfer_error",
           "fit_corrected"]

DEFAULT_SHRINKAGE = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0, math.inf)


class TransferStats(NamedTuple):
    """Second moments of a layer's inputs in the original (``X``) and the compressed
    (``X~``) model on the same positions.

    Attributes
    ----------
    gram : array (in, in)
        ``G~ = X~^H X~``.
    cross : array (in, in)
        ``C = X~^H X``.
    gram_ref : array (in, in)
        ``G = X^H X``.
    total : array (in,) or None
        ``sum`` of the rows of ``X~``; with ``total_ref``, lets the bias absorb the
        shift of the mean.
    total_ref : array (in,) or None
        ``sum`` of the rows of ``X``.
    count : int
        Number of rows (positions).
    """

    gram: Any
    cross: Any
    gram_ref: Any
    total: Any = None
    total_ref: Any = None
    count: int = 0

    def __add__(self, other):
        def add(a, b):
            return None if a is None or b is None else a + b

        return TransferStats(self.gram + other.gram, self.cross + other.cross, self.gram_ref + other.gram_ref,
                             add(self.total, other.total), add(self.total_ref, other.total_ref),
                             self.count + other.count)

    def __sub__(self, other):
        def sub(a, b):
            return None if a is None or b is None else a - b

        return TransferStats(self.gram - other.gram, self.cross - other.cross, self.gram_ref - other.gram_ref,
                             sub(self.total, other.total), sub(self.total_ref, other.total_ref),
                             self.count - other.count)


def _checked_stats(W, stats, name="stats"):
    """``stats`` checked against the weight ``W`` (``TypeError`` / ``ValueError`` naming
    ``name``): a :class:`TransferStats` of finite ``in x in`` Gram matrices and
    ``(in,)`` totals in ``W``'s namespace, real for a real ``W`` (a real layer reads real
    inputs), widened to complex128 for a complex one (the products below mix them)."""
    if not isinstance(stats, TransferStats):
        raise TypeError(f"{name} must be a TransferStats, got {type(stats).__name__}")
    xp = B.namespace(W)
    n = int(W.shape[1])
    complex_w = xp.isdtype(W.dtype, "complex floating")
    fields = {}
    for field, shape in (("gram", (n, n)), ("cross", (n, n)), ("gram_ref", (n, n)), ("total", (n,)),
                         ("total_ref", (n,))):
        x = getattr(stats, field)
        if x is None and field.startswith("total"):
            fields[field] = None
            continue
        if not hasattr(x, "shape") or B.namespace(x) is not xp:
            raise TypeError(f"{name}.{field} must be an array of W's namespace, got {type(x).__name__}")
        if tuple(x.shape) != shape:
            raise ValueError(f"{name}.{field} must have shape {shape} for a weight with {n} inputs, "
                             f"got {tuple(x.shape)}")
        if xp.isdtype(x.dtype, "complex floating") and not complex_w:
            raise TypeError(f"{name}.{field} is complex but the weight is real: a real layer reads real inputs")
        x = xp.astype(x, xp.complex128) if complex_w else _wide(xp, x)
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError(f"{name}.{field} has NaN or Inf entries")
        fields[field] = x
    return stats._replace(**fields)


def _wide(xp, x):
    return xp.astype(x, B.wide_dtype(xp, x.dtype))


class _Solver(NamedTuple):
    """``G~ = Q diag(lam) Q^H`` and the projections of ``W`` that every ridge shares."""

    xp: Any
    Q: Any
    lam: Any
    QtWt: Any  # Q^H W^T
    QtCWt: Any  # Q^H C W^T
    mean_eig: float


def _solver(W, stats):
    xp = B.namespace(W)
    Wt = xp.permute_dims(_wide(xp, W), (1, 0))
    lam, Q = B.eigh(_wide(xp, stats.gram))
    Qh = B.mH(Q)
    return _Solver(xp, Q, xp.real(lam), Qh @ Wt, Qh @ (_wide(xp, stats.cross) @ Wt),
                   B.scalar(xp.sum(xp.real(lam))) / W.shape[1])


def _solve(W, sol, shrinkage):
    """``M`` for one ridge from a prepared :class:`_Solver` (one ``in^2 out`` product)."""
    if math.isinf(shrinkage) or sol.mean_eig <= 0.0:  # inf, or X~ = 0: nothing to fit
        return W
    xp = sol.xp
    mu = shrinkage * sol.mean_eig
    scale = xp.astype(1.0 / (sol.lam + mu), sol.QtWt.dtype)
    Mt = sol.Q @ ((sol.QtCWt + mu * sol.QtWt) * scale[:, None])
    return xp.astype(xp.permute_dims(Mt, (1, 0)), W.dtype)


@B.wide_floats
def corrected_weight(W, stats, *, shrinkage):
    """``M`` with ``M^T = (G~ + mu I)^{-1} (C + mu I) W^T``, ``mu = shrinkage tr(G~)/in``.

    The weight that best maps the compressed model's inputs ``X~`` to the original
    layer's outputs ``X W^T``, pulled toward ``W`` by the ridge ``mu``.

    Parameters
    ----------
    W : array (out, in)
    stats : TransferStats
    shrinkage : float
        ``> 0``; ``math.inf`` returns ``W`` itself.

    Returns
    -------
    array (out, in)
        In ``W``'s namespace and dtype.

    Notes
    -----
    Through the eigendecomposition ``G~ = Q diag(lambda) Q^H``, so that several ridges
    cost one decomposition: ``M^T = Q diag(1/(lambda + mu)) Q^H (C + mu I) W^T``.

    Examples
    --------
    With the same inputs in both models the correction changes nothing:

    >>> import numpy as np
    >>> from randla.compress.correct import TransferStats, corrected_weight
    >>> rng = np.random.default_rng(0)
    >>> X, W = rng.standard_normal((50, 4)), rng.standard_normal((3, 4))
    >>> G = X.T @ X
    >>> bool(np.allclose(corrected_weight(W, TransferStats(G, G, G), shrinkage=0.1), W))
    True

    With other inputs it solves the ridge least-squares problem:

    >>> Xt = X + 0.1 * rng.standard_normal(X.shape)
    >>> M = corrected_weight(W, TransferStats(Xt.T @ Xt, Xt.T @ X, G), shrinkage=1e-12)
    >>> bool(np.allclose(M.T, np.linalg.lstsq(Xt, X @ W.T, rcond=None)[0]))
    True
    """
    shrinkage = _check_shrinkage(shrinkage)
    if len(shrinkage) != 1:
        raise ValueError(f"shrinkage must be one float here, got {len(shrinkage)} values")
    stats = _checked_stats(W, stats)
    if math.isinf(shrinkage[0]):
        return W
    return _solve(W, _solver(W, stats), shrinkage[0])


def _tr_prod(xp, A, Bm):
    """``Re tr(A B^T) = Re sum(A * B)``."""
    return B.scalar(xp.real(xp.sum(A * Bm)))


class _Scorer(NamedTuple):
    """The parts of :func:`transfer_error` that depend only on ``W`` and the data."""

    xp: Any
    ref: float  # tr(W' G W^T) = ||X W^T||^2
    WCh: Any  # W' C^H
    Wt_ref: Any  # W total_ref
    stats: TransferStats


def _scorer(W, stats):
    xp = B.namespace(W)
    Ww = _wide(xp, W)
    Wc = xp.conj(Ww)
    Wt_ref = None if stats.total_ref is None else Ww @ _wide(xp, stats.total_ref)
    return _Scorer(xp, _tr_prod(xp, Wc @ _wide(xp, stats.gram_ref), Ww), Wc @ B.mH(_wide(xp, stats.cross)), Wt_ref,
                   stats)


def _score(sc, Bf, Af, shift=None):
    """``||X W^T - X~ (B A)^T - 1 shift^T||_F^2`` (``Af=None``: ``Bf`` is the full ``P``)."""
    xp, st = sc.xp, sc.stats
    Bw = _wide(xp, Bf)
    Gt = _wide(xp, st.gram)
    if Af is None:
        P = Bw
        quad = _tr_prod(xp, xp.conj(P) @ Gt, P)
    else:
        Aw = _wide(xp, Af)
        P = Bw @ Aw
        K = xp.conj(Aw) @ Gt @ xp.permute_dims(Aw, (1, 0))  # r x r: tr(P' G~ P^T) = tr(B' K B^T)
        quad = _tr_prod(xp, xp.conj(Bw) @ K, Bw)
    err = sc.ref - 2.0 * _tr_prod(xp, sc.WCh, P) + quad
    if shift is not None:
        d = _wide(xp, shift)
        s = sc.Wt_ref - P @ _wide(xp, st.total)
        err += -2.0 * B.scalar(xp.real(xp.sum(xp.conj(s) * d))) + st.count * B.scalar(xp.sum(xp.abs(d) ** 2))
    return max(err, 0.0)


@B.wide_floats
def transfer_error(W, P, stats, *, shift=None):
    """``||X W^T - X~ P^T - 1 shift^T||_F^2`` from the Gram matrices in ``stats``.

    The squared error of a replacement ``P`` (e.g. ``B @ A``) of the layer ``W`` when it
    reads the compressed model's inputs ``X~`` instead of the original's ``X``, with an
    optional change of the bias ``shift`` (needs ``stats.total`` and
    ``stats.total_ref``). Expanded as ``tr(W' G W^T) - 2 Re tr(W' C^H P^T) +
    tr(P' G~ P^T)`` (``'``: complex conjugate), and for the shift
    ``- 2 Re <W t - P t~, shift> + N |shift|^2``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.correct import TransferStats, transfer_error
    >>> rng = np.random.default_rng(0)
    >>> X, Xt = rng.standard_normal((40, 5)), rng.standard_normal((40, 5))
    >>> W, P = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    >>> s = TransferStats(Xt.T @ Xt, Xt.T @ X, X.T @ X, Xt.sum(0), X.sum(0), 40)
    >>> d = rng.standard_normal(3)
    >>> direct = np.linalg.norm(X @ W.T - Xt @ P.T - d) ** 2
    >>> bool(np.isclose(transfer_error(W, P, s, shift=d), direct))
    True
    """
    stats = _checked_stats(W, stats)
    if shift is not None and (stats.total is None or stats.total_ref is None):
        raise ValueError("shift needs stats.total and stats.total_ref (the sums of both models' inputs)")
    return _score(_scorer(W, stats), P, None, shift)


def _shift(W, P, stats):
    """The bias change ``W x_mean - P x~_mean`` that removes the mean error."""
    if stats.total is None or stats.total_ref is None or stats.count == 0:
        return None
    xp = B.namespace(W)
    return (_wide(xp, W) @ _wide(xp, stats.total_ref) - _wide(xp, P) @ _wide(xp, stats.total)) / stats.count


class CorrectedFactors(NamedTuple):
    """What :func:`fit_corrected` returns.

    Attributes
    ----------
    B, A : array or None
        ``W ~= B @ A`` on the compressed model's inputs; ``None`` when the layer
        stays dense (unchanged).
    shift : array (out,) or None
        Add to the layer's bias (``None``: leave it; dense layers are left as they are).
    shrinkage : float
        The ridge chosen (``math.inf``: no correction).
    errors : dict
        ``{shrinkage: held-out squared error}`` over the folds (empty without folds).
    report : LayerReport
        As :func:`~randla.compress.factor.factor`'s, with ``output_error`` the relative error of
        the layer's output against the *original* model's,
        ``||X W^T - X~ (B A)^T - 1 shift^T||_F / ||X W^T||_F``.
    """

    B: Any
    A: Any
    shift: Any
    shrinkage: float
    errors: dict
    report: LayerReport


def _check_shrinkage(shrinkage):
    try:
        values = (shrinkage,) if getattr(shrinkage, "ndim", None) == 0 or isinstance(shrinkage, numbers.Real) \
            else tuple(shrinkage)
        values = tuple(V.check_real(v, "shrinkage") for v in values)
    except TypeError:
        values = ()
    if not values or not all(v > 0.0 for v in values):
        raise ValueError(f"shrinkage must be a float > 0 or a non-empty sequence of them (math.inf: no correction), "
                         f"got {shrinkage!r}")
    return values


@B.wide_floats
def fit_corrected(W, stats, *, folds=None, shrinkage=DEFAULT_SHRINKAGE, rank=None, rank_fraction=None,
                  param_fraction=None, rtol=None, output_gram=None, method="rsi", q=2, p=10, split="left",
                  ridge=DEFAULT_RIDGE, bias=True, rng=None, name=""):
    """Factor ``W`` for the inputs the compressed model gives it (module docstring).

    Parameters
    ----------
    W : array (out, in)
        The original layer's weight.
    stats : TransferStats
        Over all calibration positions.
    folds : sequence of TransferStats, optional
        A partition of ``stats`` (they sum to it). With several ``shrinkage`` values,
        each is scored by fitting on all folds but one and measuring
        :func:`transfer_error` on the one left out, in turn; the best is refitted on
        everything.
    shrinkage : float or sequence of float, default ``DEFAULT_SHRINKAGE``
        Candidate ridges ``mu / (tr(G~)/in)``; ``math.inf`` is the uncorrected weight
        (whitened in ``G~``'s metric). Several need ``folds``.
    rank, rank_fraction, param_fraction, rtol : optional
        Exactly one, as in :func:`~randla.compress.factor.factor` (``rtol``: of the output of
        ``M`` on ``X~``).
    output_gram : array (out, out), optional
        Gram matrix of the model output's gradients at this layer's output
        (``randla.torch.calibrate(..., output=...)``): ``M`` is then truncated in the
        two-sided metric, ``R^H (M - B A) L~`` (:func:`~randla.compress.factor.factor`). The
        correction itself is the same in any output metric (least squares row by row).
    method, q, p, split, ridge
        As in :func:`~randla.compress.factor.factor`.
    bias : bool, default True
        Return the bias change that removes the mean error (``stats.total`` and
        ``stats.total_ref`` needed).
    rng, name
        As in :func:`~randla.compress.factor.factor`.

    Returns
    -------
    CorrectedFactors

    Notes
    -----
    Cost: per candidate and fold one :func:`corrected_weight` (a Cholesky factorisation
    of ``G~`` and two triangular solves with ``out`` right-hand sides) and one whitened
    :func:`~randla.compress.factor.factor`; then the same once on everything.

    Examples
    --------
    A layer behind a perturbed upstream: the corrected factors reproduce the original
    output better than factors fitted to the original inputs.

    >>> import numpy as np
    >>> from randla.compress import factor
    >>> from randla.compress.correct import TransferStats, fit_corrected, transfer_error
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((2000, 32)) * np.logspace(0, -1, 32)
    >>> Xt = X @ (np.eye(32) + 0.2 * rng.standard_normal((32, 32)) / np.sqrt(32))
    >>> W = rng.standard_normal((24, 32))
    >>> s = lambda a, b: TransferStats(a.T @ a, a.T @ b, b.T @ b, a.sum(0), b.sum(0), len(a))
    >>> fc = fit_corrected(W, s(Xt, X), folds=[s(Xt[:1000], X[:1000]), s(Xt[1000:], X[1000:])], rank=8, rng=0)
    >>> fw = factor(W, rank=8, gram=X.T @ X, rng=0)
    >>> bool(transfer_error(W, fc.B @ fc.A, s(Xt, X)) < transfer_error(W, fw.B @ fw.A, s(Xt, X)))
    True
    """
    t0 = time.perf_counter()
    grid = _check_shrinkage(shrinkage)
    if len(grid) > 1 and not folds:
        raise ValueError("several shrinkage values need folds to choose between them")
    _check_method(method, split, q, p)
    stats = _checked_stats(W, stats)
    if folds:
        folds = [_checked_stats(W, held, f"folds[{i}]") for i, held in enumerate(folds)]
    gen = B.as_generator(rng)
    options = {"rank": rank, "rank_fraction": rank_fraction, "param_fraction": param_fraction, "rtol": rtol}
    xp, work = B.namespace(W), working_matrix(W, check_finite=False)[0].dtype

    def fit(s, lams, estimate):
        """``{shrinkage: (factors, P or None, shift)}`` fitted on ``s``: one eigendecomposition
        and one whitener of ``G~`` for all ridges."""
        sol = _solver(W, s) if any(math.isfinite(lam) for lam in lams) else None
        # the metric of Gram matrices scaled by powers of two (factor._unit_gram): the same factors B A;
        # factor's input Gram matrix is sum_t x_t x_t^H, the conjugate of the rows' X~^H X~ (complex layers)
        gram = xp.conj(s.gram) if xp.isdtype(s.gram.dtype, "complex floating") else s.gram
        m = metric(tuple(W.shape), gram=_unit_gram(gram, xp, work)[0],
                   output_gram=_unit_gram(output_gram, xp, work, "output_gram")[0], ridge=ridge)
        out = {}
        for lam in lams:
            M = W if math.isinf(lam) else _solve(W, sol, lam)
            f = factor(M, **options, whitening=m, method=method, q=q, p=p, split=split, estimate_error=estimate,
                       rng=gen, name=name)
            if f.B is None:
                out[lam] = (f, None)
                continue
            out[lam] = (f, _shift(W, f.B @ f.A, s) if bias else None)
        return out

    errors = dict.fromkeys(grid, 0.0) if len(grid) > 1 else {}
    if len(grid) > 1:
        for held in folds:
            sc = _scorer(W, held)
            for lam, (f, d) in fit(stats - held, grid, False).items():
                errors[lam] += _score(sc, W, None) if f.B is None else _score(sc, f.B, f.A, d)
        best = min(grid, key=lambda lam: (errors[lam], -lam))
    else:
        best = grid[0]
    f, d = fit(stats, (best,), True)[best]
    sc = _scorer(W, stats)
    # against the original model's output; a layer left dense still reads X~
    err2 = _score(sc, W, None) if f.B is None else _score(sc, f.B, f.A, d)
    out_err = math.sqrt(err2 / sc.ref) if sc.ref > 0 else 0.0
    report = f.report._replace(output_error=out_err, seconds=time.perf_counter() - t0)
    if f.B is None:
        return CorrectedFactors(None, None, None, best, errors, report)
    xp = B.namespace(W)
    shift = None if d is None else xp.astype(d, W.dtype)
    return CorrectedFactors(f.B, f.A, shift, best, errors, report)
