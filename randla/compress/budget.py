"""Budgeted rank allocation over many layers, from per-layer summaries.

A two-pass design that never needs the whole model in memory: a first pass turns each
weight into a small :class:`LayerSummary` (its squared error as a function of the rank)
with :func:`summarize`; :func:`allocate` spends a total parameter budget over the
summaries (cost ``out + in`` per rank, a layer left dense costs ``out in``); a second
pass factors each weight at its rank.

Greedy on the largest gain per parameter is optimal for any separable objective whose
per-layer gains decrease with the rank (a concave knapsack: the greedy threshold solves
its continuous relaxation exactly). Which objective is right is the whole question. On
a real model, spectra of the weights or of the input-whitened weights lose to a uniform
rank fraction (their units differ from layer to layer, and none of them says how a
layer's error reaches the model's output). What works is to put every layer in the same
units, the model's output: weighting each layer by the Gram matrix of the output's
gradients with respect to the layer's output (the Kronecker-factored Gauss-Newton
approximation, K-FAC [MG2015]_; used for pruning by the LLM Surgeon [vdO2023]_) makes
``sum_l ||R_l^H (W_l - B_l A_l) L_l||_F^2`` a second-order estimate of the change of the
output, so the greedy on those spectra is principled; cross-validated (held-out) gains
correct for calibration data that covers some layers' inputs thinly. K-FAC treats the
positions of a sample (the tokens of a sentence) as independent; where a pooled output
adds a layer's errors coherently over them, per-sample error curves
(:func:`truncation_directions`, :func:`sample_errors`, :meth:`LayerSummary.from_errors`)
count them as such.

References
----------
.. [MG2015] J. Martens, R. Grosse, "Optimizing neural networks with Kronecker-factored
   approximate curvature", ICML 2015.
.. [vdO2023] T. van der Ouderaa, M. Nagel, M. van Baalen, Y. Asano, T. Blankevoort,
   "The LLM Surgeon", ICLR 2024.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .. import _validate as V
from .._scale import unit_scale
from .factor import (
    DEFAULT_RIDGE,
    _check_method,
    _check_side,
    _energy,
    _resolve_metric,
    _svd_at,
    _unit_gram,
    _unit_metric,
    _wide_for,
    metric,
    metric_units,
    whiten,
    whitener,
    working_matrix,
)
from .ranks import check_rank_mode, max_saving_rank

__all__ = ["LayerSummary", "summarize", "truncation_directions", "sample_errors", "resolve_budget", "allocate",
           "uniform_ranks", "allocation_params",
           "DEFAULT_CAP"]

DEFAULT_CAP = 256


class LayerSummary(NamedTuple):
    """What the allocator knows about one layer: its error as a function of the rank.

    Attributes
    ----------
    name : str
    shape : (int, int)
        ``(out, in)``.
    gains : numpy.ndarray
        float64, non-increasing: ``gains[i]`` is the decrease of the squared error
        from rank ``i`` to ``i + 1`` (``sigma_{i+1}^2`` of ``M``), up to a cap.
    total : float
        The squared error at rank 0 (``||M||_F^2``); ``total - sum(gains)`` is the
        remainder beyond the cap.
    units : str
        ``"weight"`` (``M = W``), ``"output"`` (``M = W L``: the layer's output error
        on calibration inputs) or ``"loss"`` (``M = R^H W L``: the K-FAC estimate of
        the model's output change, comparable across layers).
    folds : int
        1, or the number of cross-validation folds the gains were estimated on (held-
        out errors; see :func:`summarize`).
    exponent : int
        ``gains`` and ``total`` are in units of ``2**exponent``: 0 unless the squared
        errors of the weight's own scale leave float64's range (entries beyond about
        ``1e+-150``); :func:`allocate` compares layers in these units exactly.
    """

    name: str
    shape: tuple
    gains: Any
    total: float
    units: str
    folds: int = 1
    exponent: int = 0

    @property
    def S(self):
        """``sqrt(gains)``: the singular values of ``M`` (effective ones when cross-validated)."""
        return np.sqrt(self.gains)

    @property
    def energy(self):
        """``total``, ``||M||_F^2``."""
        return self.total

    @property
    def whitened(self):
        """True when calibration data shaped the summary (``units != "weight"``)."""
        return self.units != "weight"

    def squared_tail(self, rank):
        """Estimated squared error at ``rank``: exact up to the cap, then the remainder
        spread evenly over the ranks beyond it (a flat tail, which errs high)."""
        k = self.gains.shape[0]
        if rank <= k:
            return max(self.total - float(np.sum(self.gains[:rank])), 0.0)
        rest = max(self.total - float(np.sum(self.gains)), 0.0)
        n_tail = max(min(self.shape) - k, 1)
        return rest * max(1.0 - (rank - k) / n_tail, 0.0)

    @classmethod
    def from_errors(cls, name, shape, errors, *, units="loss", folds=1):
        """A summary from an error curve: ``errors[r]`` the squared error at rank ``r``.

        The gains are the slopes of the curve's concave majorant (non-increasing, as
        :func:`allocate` needs), ``total = errors[0]``.

        Examples
        --------
        >>> import numpy as np
        >>> from randla.compress import LayerSummary
        >>> s = LayerSummary.from_errors("fc", (8, 8), np.array([10.0, 9.0, 3.0, 1.0, 0.0]))
        >>> s.gains.tolist(), s.total  # 10 -> 9 -> 3 gains less at first than later: averaged
        ([3.5, 3.5, 2.0, 1.0], 10.0)
        """
        errors = _error_curve(errors)
        return cls(name, tuple(shape), _concave_gains(errors), float(errors[0]), units, folds)

    def gains_upto(self, upto):
        """The first ``upto`` gains, the flat-tail model beyond the cap."""
        k = self.gains.shape[0]
        if upto <= k:
            return self.gains[:upto].copy()
        rest = max(self.total - float(np.sum(self.gains)), 0.0)
        n_tail = max(min(self.shape) - k, 1)
        return np.concatenate([self.gains, np.full(upto - k, rest / n_tail)])


def _error_curve(errors, what="errors"):
    """``errors`` as a float64 NumPy curve over ranks ``0, 1, ...``; a ``ValueError``
    naming ``what`` unless it is finite, 1-D and not empty."""
    errors = np.asarray(errors, dtype=np.float64)
    if errors.ndim != 1 or errors.shape[0] < 1 or not np.all(np.isfinite(errors)):
        raise ValueError(f"{what} must be a finite 1-D error curve over ranks 0, 1, ..., got shape {errors.shape}")
    return errors


@B.wide_floats
def summarize(W, *, gram=None, output_gram=None, folds=None, whitening=None, cap=DEFAULT_CAP, method="rsi", q=2, p=10,
              ridge=DEFAULT_RIDGE, rng=None, check_finite=True, name=""):
    """Summary of one weight for :func:`allocate`: its squared error against the rank.

    Without ``folds``: the leading singular values of ``M`` (``W``, ``W L`` with
    ``gram``, ``R^H W L`` with ``output_gram`` too; see :func:`~randla.compress.factor.factor`),
    ``gains = sigma_i^2``. With ``folds`` (input Gram matrices of disjoint parts of the
    calibration data, summing to ``gram``): cross-validated gains. For each fold ``k``
    the factorisation is fitted on the other folds (``L_k L_k^H = G - G_k``,
    ``R^H W L_k = sum_i u_i s_i v_i^H``) and scored on fold ``k``: dropping component
    ``i`` costs ``s_i^2 w_i^H G_k w_i`` with ``w_i = L_k^{-H} v_i`` (exact, the ``u_i``
    are orthonormal). The held-out error curves are summed over the folds and replaced
    by their concave majorant, so the gains do not increase. Held-out errors see what
    in-sample errors cannot: inputs that the calibration data covers thinly make a
    layer need a higher rank than its in-sample spectrum suggests.

    Parameters
    ----------
    W : array (out, in)
        As in :func:`~randla.compress.factor.factor`.
    gram : array (in, in), optional
        Input Gram matrix (the sum of ``folds`` when both are given; computed from
        ``folds`` when omitted).
    output_gram : array (out, out), optional
        Output-gradient Gram matrix: gains in ``"loss"`` units, comparable across
        layers. An all-zero one (the output does not depend on the layer) gives zero
        gains.
    folds : sequence of arrays (in, in), optional
        At least 2 per-fold input Gram matrices. ``gram`` is then needed (or is
        computed as their sum).
    whitening : Metric, optional
        Factored ``gram``/``output_gram`` from :func:`~randla.compress.factor.metric` instead
        (with ``folds``, ``gram`` must be given as well).
    cap : int, default 256
        Gains computed: ``min(cap, max_saving_rank(shape))``; ``None`` for all the
        useful ones. Beyond the cap the allocator models the remainder as a flat tail.
    method, q, p, ridge, rng, check_finite
        As in :func:`~randla.compress.factor.factor`.
    name : str

    Returns
    -------
    LayerSummary

    Notes
    -----
    Cost: one rank-``cap`` factorisation of ``M`` (one per fold with ``folds``); memory:
    the weight, its Gram matrices and a sketch, so a checkpoint can be summarised tensor
    by tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import summarize
    >>> W = np.random.default_rng(0).standard_normal((60, 40))
    >>> s = summarize(W, cap=5, rng=0, name="fc")
    >>> s.shape, s.gains.shape, s.units
    ((60, 40), (5,), 'weight')
    >>> bool(np.isclose(s.total, np.sum(W**2)))
    True
    """
    Ww, xp, _ = working_matrix(W, "W", check_finite=check_finite)
    q, p = _check_method(method, "left", q, p)
    Ww, c_w = unit_scale(Ww)  # W / c_w, where W's squares would leave its dtype (the summary reads values anyway)
    summary = _summarize(Ww, xp, gram, output_gram, folds, whitening, cap, method, q, p, ridge, rng, name)
    return _with_scale(summary, c_w)


def _with_scale(summary, c):
    """The summary of ``c W`` from that of ``W``: gains and total times ``c^2`` where
    every nonzero one stays a normal float64, else in units of ``2**exponent``."""
    if c == 1.0:
        return summary
    e = 2 * round(math.log2(c))
    vals = np.append(np.asarray(summary.gains, dtype=np.float64), summary.total)
    with np.errstate(over="ignore", under="ignore"):
        scaled = np.ldexp(vals, e)
    if np.all(np.isfinite(scaled)) and not np.any(np.abs(scaled[vals != 0]) < np.finfo(np.float64).tiny):
        return summary._replace(gains=scaled[:-1], total=float(scaled[-1]))
    return summary._replace(exponent=summary.exponent + e)


def _summarize(Ww, xp, gram, output_gram, folds, whitening, cap, method, q, p, ridge, rng, name):
    """:func:`summarize` of a checked weight in its working dtype."""
    shape = tuple(int(s) for s in Ww.shape)
    rmax = max_saving_rank(shape)
    k = rmax if cap is None else min(V.check_count(cap, "cap", minimum=1), rmax)
    gen = B.as_generator(rng)
    if folds is not None:
        folds = list(folds)
        if len(folds) < 2:
            raise ValueError(f"folds must hold at least 2 Gram matrices, got {len(folds)}")
        if gram is None:
            gram = sum(folds[1:], folds[0])
    c = 1.0  # M = R^H W L / c below (see factor._unit_gram): gains and totals are multiplied by c^2
    if whitening is None or folds is not None:
        gram, folds, c = _unit_grams(gram, folds, xp, Ww.dtype)
    output_gram, c_out = _unit_gram(output_gram, xp, Ww.dtype, "output_gram")
    if whitening is not None:
        m, c_in, c_out = _unit_metric(_resolve_metric(shape, None, None, whitening, ridge), xp, Ww.dtype)
        c = c_in if folds is None else c
    else:  # with folds only the output side is used whole; the input side is refitted per fold
        m = metric(shape, gram=gram if folds is None else None, output_gram=output_gram, ridge=ridge)
    units = metric_units(m) if folds is None else ("loss" if m.R is not None else "output")
    c = c * (c_out if m.R is not None else 1.0)
    if m.zero_output or k < 1:
        total = 0.0 if m.zero_output or folds is not None else _energy(whiten(Ww, m))
        return LayerSummary(name, shape, np.zeros(0 if k < 1 else k), _times(total, c, name), units,
                            1 if folds is None else len(folds))
    if folds is None:
        M = whiten(Ww, m)
        S = B.to_numpy(_svd_at(M, k, method, q, p, gen)[1]).astype(np.float64)[:k]
        return LayerSummary(name, shape, _times(S**2, c, name), _times(_energy(M), c, name), units)
    loss = np.zeros(k + 1)
    RW = Ww if m.R is None else xp.astype(B.mH(m.R), Ww.dtype) @ Ww
    for i, Gk in enumerate(folds):
        if tuple(Gk.shape) != (shape[1], shape[1]):
            raise ValueError(f"folds[{i}] must be in x in = {shape[1]} x {shape[1]}, got {tuple(Gk.shape)}")
        Lk = whitener(gram - Gk, ridge=ridge, name=f"gram - folds[{i}]")
        _, S, Vh = _svd_at(RW @ xp.astype(Lk, Ww.dtype), k, method, q, p, gen)
        Lk = _wide_for(xp, Lk, Vh)
        Wk = B.solve_triangular(B.mH(Lk), B.mH(xp.astype(Vh[:k, :], Lk.dtype)), lower=False)  # w_i = L^{-H} v_i
        Gw = xp.astype(Gk, Ww.dtype)  # the held-out quadratic forms in the weight's precision (GEMM-bound)
        Wk = xp.astype(Wk, Ww.dtype)
        rho = xp.astype(xp.real(xp.sum(xp.conj(Wk) * (Gw @ Wk), axis=0)), xp.float64)
        held = B.to_numpy(xp.astype(xp.real(S[:k]), xp.float64) ** 2 * rho)
        total_k = B.scalar(xp.real(xp.sum(xp.conj(RW) * (RW @ Gw))))
        loss += total_k - np.concatenate([[0.0], np.cumsum(held)])
    return LayerSummary.from_errors(name, shape, _times(loss, c, name), units=units, folds=len(folds))


def _unit_grams(gram, folds, xp, dtype):
    """``(gram, folds, c)``: ``gram`` by :func:`~randla.compress.factor._unit_gram` and its
    per-fold parts divided by the same ``c^2``."""
    for i, Gk in enumerate(folds or ()):
        _check_side(Gk, xp, dtype, f"folds[{i}]")
    gram, c = _unit_gram(gram, xp, dtype)
    if folds is not None and c != 1.0:
        folds = [Gk / (c * c) for Gk in folds]
    return gram, folds, c


def _times(x, c, name):
    """``x * c^2``, ``c`` the power of two the Gram matrices were divided by (both
    sides' together), or a ValueError where a nonzero value leaves float64's normal
    range: squared errors in ``"loss"`` units carry both Gram matrices' scales, and at
    1e+-150 each their product has no float64 value."""
    if c == 1.0:
        return x
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(over="ignore", under="ignore"):
        y = (x * c) * c
    nz = x != 0
    if not np.all(np.isfinite(y)) or np.any(np.abs(y[nz]) < np.finfo(np.float64).tiny):
        exponent = math.log10(float(np.max(np.abs(x)))) + 2 * math.log10(c)
        raise ValueError(f"{name or 'this layer'}: its squared errors (about 1e{exponent:.0f}) leave float64's "
                         f"range at the scale of its Gram matrices; divide gram (and output_gram) by a constant")
    return float(y) if y.ndim == 0 else y


def truncation_directions(W, *, gram, output_gram, folds=None, ridge=DEFAULT_RIDGE, check_finite=True):
    """The components of the two-sided (K-FAC) SVD of a weight, for :func:`sample_errors`.

    With ``L L^H = gram`` and ``R R^H = output_gram`` (ridged Cholesky factors, see
    :func:`~randla.compress.factor.whitener`) and the exact SVD ``R^H W L = sum_i u_i s_i
    v_i^H``, ``W = sum_i a_i b_i^H`` with ``a_i = s_i R^{-H} u_i`` and ``b_i = L^{-H}
    v_i``: the truncation of :func:`~randla.compress.factor.factor` at rank ``r`` (with these
    Gram matrices) drops the terms ``i > r``. With ``folds`` the input side is refitted
    per fold on the other folds' data (``L_k L_k^H = gram - folds[k]``), as
    :func:`summarize` does, so that the components of fold ``k`` can be scored on fold
    ``k``'s samples (held out).

    Parameters
    ----------
    W : array (out, in)
    gram : array (in, in)
        Input Gram matrix (with ``folds``: their sum).
    output_gram : array (out, out)
        Output-gradient Gram matrix.
    folds : sequence of arrays (in, in), optional
        At least 2 per-fold input Gram matrices.
    ridge : float, default 1e-6
    check_finite : bool, default True

    Returns
    -------
    list of (A, B)
        ``A (out, k)`` with columns ``a_i``, ``B (in, k)`` with columns ``b_i``,
        ``k = min(out, in)``, in ``W``'s namespace and precision; one pair, or one per
        fold. Where ``gram``'s scale leaves the range the weight's precision holds
        safely, ``a_i / c`` and ``b_i c`` are returned for a power of two ``c``, so that
        both stay representable; each ``a_i b_i^H``, and every score built from it,
        is unchanged.

    Notes
    -----
    Cost: one exact SVD of an ``out x in`` matrix (per fold) and triangular solves,
    ``O(out in min(out, in))``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import truncation_directions
    >>> rng = np.random.default_rng(0)
    >>> W, X, Y = rng.standard_normal((6, 4)), rng.standard_normal((50, 4)), rng.standard_normal((50, 6))
    >>> [(A, B_)] = truncation_directions(W, gram=X.T @ X, output_gram=Y.T @ Y)
    >>> A.shape, B_.shape, bool(np.allclose(A @ B_.T, W))
    ((6, 4), (4, 4), True)
    """
    Ww, xp, _ = working_matrix(W, "W", check_finite=check_finite)
    shape = tuple(int(s) for s in Ww.shape)
    if output_gram is None or gram is None:
        raise ValueError("truncation_directions needs gram and output_gram")
    # both sides scaled by powers of two (factor._unit_gram): a_i b_i^H is unchanged
    gram, folds, _ = _unit_grams(gram, folds, xp, Ww.dtype)
    output_gram, _ = _unit_gram(output_gram, xp, Ww.dtype, "output_gram")
    m = metric(shape, output_gram=output_gram, ridge=ridge)
    if m.zero_output:
        raise ValueError("output_gram is all zero: the output does not depend on this weight")
    R = xp.astype(m.R, Ww.dtype)
    RW = B.mH(R) @ Ww
    inputs = [gram] if folds is None else [gram - Gk for Gk in folds]
    if folds is not None and len(inputs) < 2:
        raise ValueError(f"folds must hold at least 2 Gram matrices, got {len(inputs)}")
    pairs = []
    for i, Gi in enumerate(inputs):
        L = xp.astype(whitener(Gi, ridge=ridge, name="gram" if folds is None else f"gram - folds[{i}]"), Ww.dtype)
        U, S, Vh = B.svd(RW @ L)
        A = B.solve_triangular(B.mH(R), U * S[None, :], lower=False)  # s_i R^{-H} u_i
        Bk = B.solve_triangular(B.mH(L), B.mH(Vh), lower=False)  # L^{-H} v_i
        pairs.append((A, Bk))
    return pairs


def sample_errors(d):
    """Squared error per truncation rank from per-sample component scores.

    ``d[j, i]`` is component ``i``'s contribution to a scalar of sample ``j``: for the
    components ``(a_i, b_i)`` of :func:`truncation_directions`, a probe's output-
    gradients ``g_t`` and the layer's inputs ``x_t`` over the positions ``t`` of the
    sample, ``d[j, i] = sum_t (g_t^H a_i)(b_i^H x_t)``. Dropping components ``i >= r``
    changes that scalar by ``sum_{i >= r} d[j, i]``, so the error at rank ``r`` is
    ``E(r) = sum_j |sum_{i >= r} d[j, i]|^2``: errors that add coherently over a
    sample's positions (as mean pooling adds them) are counted as such, where the
    K-FAC estimate ``sum_i s_i^2`` treats positions as independent. Sum the curves
    over batches (and over folds; divide by the probes for their mean) and make a
    :class:`LayerSummary` with :meth:`LayerSummary.from_errors`.

    Parameters
    ----------
    d : array (n, k)
        One row per sample (and probe).

    Returns
    -------
    numpy.ndarray (k + 1,)
        float64, ``E(0), ..., E(k)`` (``E(k) = 0``).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import sample_errors
    >>> sample_errors(np.array([[1.0, 2.0], [3.0, -3.0]])).tolist()  # (1 + 2)^2 + 0^2, 2^2 + 3^2, 0
    [9.0, 13.0, 0.0]
    """
    d, xp = V.as_matrix(d, "d", finite_hint=False)
    d = xp.astype(d, B.wide_dtype(xp, d.dtype))
    tails = xp.flip(xp.cumulative_sum(xp.flip(d, axis=1), axis=1), axis=1)  # sum_{i >= r}
    e = B.to_numpy(xp.sum(xp.real(xp.conj(tails) * tails), axis=0)).astype(np.float64)
    return np.concatenate([e, [0.0]])


def _concave_gains(loss):
    """Non-increasing gains from a decreasing error curve: the slopes of the concave
    majorant (upper hull) of the cumulative gain ``loss[0] - loss[r]``."""
    cum = loss[0] - loss
    hull = [0]
    for r in range(1, cum.shape[0]):
        while len(hull) >= 2 and ((cum[hull[-1]] - cum[hull[-2]]) * (r - hull[-1])
                                  <= (cum[r] - cum[hull[-1]]) * (hull[-1] - hull[-2])):
            hull.pop()
        hull.append(r)
    gains = np.zeros(cum.shape[0] - 1)
    for a, b in zip(hull[:-1], hull[1:], strict=True):
        gains[a:b] = (cum[b] - cum[a]) / (b - a)
    return np.maximum(gains, 0.0)


def _shapes(summaries):
    return {s.name: tuple(s.shape) for s in summaries}


def resolve_budget(budget, shapes):
    """A parameter count from ``budget`` (an int count, or a float fraction of the
    eligible layers' parameters), checked against one rank per factorable layer.

    Parameters
    ----------
    budget : int or float
    shapes : mapping name -> (out, in)

    Returns
    -------
    int

    Raises
    ------
    ValueError
        ``budget`` below ``sum(out + in)`` over the layers that can be factored (one
        rank each) plus the layers that cannot (dense).

    Examples
    --------
    >>> from randla.compress import resolve_budget
    >>> resolve_budget(0.5, {"a": (100, 100), "b": (50, 200)})
    10000
    """
    _, v = check_rank_mode(budget=budget)
    total = sum(o * i for o, i in shapes.values())
    count = int(math.floor(v * total)) if isinstance(v, float) else v
    floor = sum((o + i) if max_saving_rank((o, i)) >= 1 else o * i for o, i in shapes.values())
    if count < floor:
        raise ValueError(f"budget of {count} parameters is smaller than one rank per layer ({floor} parameters "
                         f"for {len(shapes)} layers)")
    return count


def allocation_params(ranks, shapes):
    """Parameters of an allocation: ``r (out + in)`` per factored layer, ``out in`` per dense one.

    Examples
    --------
    >>> from randla.compress import allocation_params
    >>> allocation_params({"a": 10, "b": 400}, {"a": (100, 100), "b": (50, 200)})
    12000
    """
    from .ranks import parameter_count

    return sum(parameter_count(shapes[n], r) for n, r in ranks.items())


def uniform_ranks(shapes, rank_fraction):
    """``{name: floor(alpha min(out, in))}``: the uniform allocation budgets are compared with.

    Examples
    --------
    >>> from randla.compress import uniform_ranks
    >>> uniform_ranks({"a": (1536, 384)}, 0.4)
    {'a': 153}
    """
    from .ranks import select_rank

    return {n: select_rank(s, rank_fraction=rank_fraction) for n, s in shapes.items()}


def allocate(summaries, budget, *, weights=None):
    """Greedy ranks: spend ``budget`` on the largest weighted gains per parameter.

    Each layer starts at rank 1; then ranks are added where ``w_l gain_{l,i} / (out_l +
    in_l)`` is largest until the budget is spent (a layer whose useful ranks are
    exhausted may go dense, at the price ``out in - r (out + in)`` for its remaining
    error). This minimises ``sum_l w_l err_l(r_l)`` over allocations within the budget,
    up to the last incomplete step [concave knapsack]. Steps that gain nothing are not
    taken, so less than the budget may be spent.

    Parameters
    ----------
    summaries : sequence of LayerSummary
    budget : int or float
        Parameter count, or fraction of the layers' dense parameters.
    weights : {"relative", "absolute"} or mapping name -> float, optional
        ``w_l``: ``1 / total_l`` (sum of relative squared errors), 1 (sum of squared
        errors), or given weights. Default: ``"absolute"`` when every summary is in
        ``"loss"`` units (they are comparable: the sum estimates the model's output
        change), else ``"relative"``.

    Returns
    -------
    dict
        ``{name: rank}``; a rank above :func:`~randla.compress.ranks.max_saving_rank` means
        the layer stays dense.

    Raises
    ------
    ValueError
        A budget below one rank per layer; duplicate names; a mapping of weights
        missing a layer.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import LayerSummary, allocate
    >>> fast = LayerSummary("fast", (100, 100), 0.25 ** np.arange(49), 4 / 3, "weight")
    >>> flat = LayerSummary("flat", (100, 100), np.ones(49), 100.0, "weight")
    >>> allocate([fast, flat], 20 * 200)  # relative: the fast-decaying layer gains more per rank at first
    {'fast': 4, 'flat': 16}
    >>> allocate([fast, flat], 20 * 200, weights="absolute")  # absolute: the flat layer holds most energy
    {'fast': 1, 'flat': 19}
    """
    summaries = list(summaries)
    shapes = _shapes(summaries)
    if len(shapes) != len(summaries):
        raise ValueError("summaries must have distinct names")
    for s in summaries:
        gains = np.asarray(s.gains, dtype=np.float64)
        if not (np.all(np.isfinite(gains)) and np.all(gains >= 0) and math.isfinite(s.total) and s.total >= 0):
            raise ValueError(f"summary {s.name!r} must have finite gains and total >= 0")
    total = resolve_budget(budget, shapes)
    if weights is None:
        weights = "absolute" if all(s.units == "loss" for s in summaries) else "relative"
    w = _weights(summaries, weights)
    ranks, spent, items = {}, 0, []
    for idx, s in enumerate(summaries):
        out, inp = s.shape
        rmax = max_saving_rank(s.shape)
        if rmax < 1:
            ranks[s.name] = min(s.shape)
            spent += out * inp
            continue
        ranks[s.name] = 1
        spent += out + inp
        g = s.gains_upto(rmax) * w[s.name]
        # rank i -> i + 1 for i = 1 .. rmax - 1, made non-increasing (a flat tail beyond
        # the summary's cap can exceed its last gain): the greedy order is then the rank order
        ratio = _concave_gains(-np.concatenate([[0.0], np.cumsum(g[1:])])) / (out + inp)
        jump_cost = out * inp - rmax * (out + inp)
        jump_gain = w[s.name] * s.squared_tail(rmax)
        last = ratio[-1] if ratio.size else np.inf
        jump_ratio = min(jump_gain / jump_cost, last) if jump_cost > 0 else 0.0
        items += [(-rt, idx, i + 2, out + inp) for i, rt in enumerate(ratio) if rt > 0]
        if jump_ratio > 0:
            items.append((-jump_ratio, idx, -1, jump_cost))
    # items of one layer have non-increasing ratios, so the sort keeps their rank order
    items.sort(key=lambda t: (t[0], t[1], t[2] if t[2] > 0 else 1 << 60))
    left = total - spent
    blocked = set()
    for _, idx, r, cost in items:
        if idx in blocked:
            continue
        if cost > left:
            blocked.add(idx)  # the layer's next step does not fit; later ones need it first
            continue
        name = summaries[idx].name
        ranks[name] = min(summaries[idx].shape) if r == -1 else r
        left -= cost
    return ranks


def _weights(summaries, weights):
    """``w_l`` for the gains as stored (in units of ``2**exponent``)."""
    if isinstance(weights, str):
        if weights == "relative":
            return {s.name: (1.0 / s.total if s.total > 0 else 0.0) for s in summaries}
        if weights == "absolute":
            return _units(summaries, {s.name: 1.0 for s in summaries})
        raise ValueError(f"weights must be 'relative', 'absolute' or a mapping; got {weights!r}")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be 'relative', 'absolute' or a mapping, got {type(weights).__name__}")
    missing = [s.name for s in summaries if s.name not in weights]
    if missing:
        raise ValueError(f"weights has no entry for layer {missing[0]!r}")
    out = {s.name: float(weights[s.name]) for s in summaries}
    bad = [n for n, v in out.items() if not (v >= 0.0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"weights must be finite and >= 0; got {out[bad[0]]!r} for layer {bad[0]!r}")
    return _units(summaries, out)


def _units(summaries, w):
    """Weights ``w`` times ``2**(exponent - the largest exponent)``: the layers' gains
    compared in one unit (the common factor dropped)."""
    top = max((s.exponent for s in summaries), default=0)
    return {s.name: math.ldexp(w[s.name], s.exponent - top) for s in summaries}
