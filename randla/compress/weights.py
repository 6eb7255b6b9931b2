"""Compress many weights at once: the driver the framework adapters call.

:func:`compress_weights` takes a mapping ``name -> W (out x in)`` (arrays of any
array-API library, e.g. zero-copy DLPack views of a model's parameters) and returns
the factors of each and one :class:`~randla.compress.report.Report`. The adapters only move
tensors in and out and swap modules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from .. import _backend as B
from .. import _validate as V
from .budget import LayerSummary, allocate, allocation_params, resolve_budget, summarize
from .factor import DEFAULT_RIDGE, _check_method, _checked_ridge, _dense, estimate_normalized_error, metric, truncate
from .group import factor_many
from .ranks import check_rank_mode, max_saving_rank
from .report import Report

__all__ = ["compress_weights", "check_grams"]


def check_grams(grams, names, dims, *, argument="calibration"):
    """Check a mapping of Gram matrices against the layers to factor.

    Every layer needs a Gram matrix of shape ``(d, d)``: a missing one is an error,
    never a silent fall-back to the plain factorisation (which is far worse on a
    model's output); exclude such layers or calibrate them.

    Parameters
    ----------
    grams : mapping or None
    names : sequence of str
    dims : mapping name -> int
        ``in`` for input Gram matrices, ``out`` for output-gradient ones.
    argument : str
        Name used in the messages.

    Raises
    ------
    TypeError, ValueError

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import check_grams
    >>> check_grams({"a": np.eye(3)}, ["a", "b"], {"a": 3, "b": 4})
    Traceback (most recent call last):
    ...
    ValueError: calibration has no Gram matrix for layer 'b' (layers without one are not factored plain: ...)
    """
    if grams is None:
        return
    if not isinstance(grams, Mapping):
        raise TypeError(f"{argument} must be a mapping of layer name to Gram matrix, got {type(grams).__name__}")
    for n in names:
        if n not in grams:
            raise ValueError(f"{argument} has no Gram matrix for layer {n!r} (layers without one are not "
                             f"factored plain: calibrate it or exclude it)")
        shape = tuple(grams[n].shape)
        if shape != (dims[n], dims[n]):
            raise ValueError(f"{argument}[{n!r}] must be {dims[n]} x {dims[n]}, got {shape}")


def _checked_ranks(ranks, shapes, total):
    """What a callable ``allocation`` returned: a rank (int >= 1) for every layer, within
    the budget (a ``ValueError`` / ``TypeError`` naming ``allocation`` otherwise)."""
    if not isinstance(ranks, Mapping):
        raise TypeError(f"allocation must return a mapping of name to rank, got {type(ranks).__name__}")
    checked = {n: V.int_or_none(ranks.get(n)) for n in shapes}
    for n, r in checked.items():
        if r is None or r < 1:
            raise ValueError(f"allocation must return an int rank >= 1 for every layer, got {ranks.get(n)!r} "
                             f"for {n!r}")
    ranks = checked
    spent = allocation_params(ranks, shapes)
    if spent > total:
        raise ValueError(f"allocation spent {spent} parameters, over the budget of {total}")
    return ranks


def compress_weights(weights, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None,
                     grams=None, output_grams=None, folds=None, errors=None, method="rsi", q=2, p=10, split="left",
                     ridge=DEFAULT_RIDGE, estimate_error=True, allocation="greedy", batch=True, rng=None):
    """Factor every weight of a mapping by one rank rule or one parameter budget.

    Parameters
    ----------
    weights : mapping name -> array (out, in)
    rank, rank_fraction, param_fraction, rtol, budget : optional
        Exactly one. ``budget``: total parameters of these weights after compression
        (an int), or a fraction of their dense parameters (a float in (0, 1]).
    grams : mapping name -> array (in, in), optional
        Input Gram matrices: whitened factorisation for every layer (all must be
        present, see :func:`check_grams`).
    output_grams : mapping name -> array (out, out), optional
        Output-gradient Gram matrices (all present): factors and budget in the units
        of the model's output change (see :func:`~randla.compress.factor.factor`).
    folds : sequence of mappings name -> array (in, in), optional
        Per-fold input Gram matrices (summing to ``grams``): a ``budget`` is then
        spent on cross-validated gains (see :func:`~randla.compress.budget.summarize`).
        Ignored by the other rank modes.
    errors : mapping name -> array (k + 1,), optional
        Per-layer curves of the error against the rank in the units of the model's
        output (e.g. per-sample errors, :func:`~randla.compress.budget.sample_errors`; those
        of :func:`randla.torch.calibrate` with ``sample_probes``): a ``budget`` is then
        spent on them (:meth:`~randla.compress.budget.LayerSummary.from_errors`) instead of
        on spectra. Every layer needs one. Ignored by the other rank modes.
    method, q, p, split, ridge, estimate_error
        As in :func:`~randla.compress.factor.factor`.
    allocation : "greedy" or callable, default "greedy"
        How a ``budget`` is spent: :func:`~randla.compress.budget.allocate` on the layers'
        summaries (default weights: absolute with ``output_grams``, relative without),
        or a callable ``allocation(summaries, budget) -> {name: rank}``.
    batch : bool, default True
        Factor same-shaped layers (equal shape, dtype, device and rank) by stacked
        calls (:func:`~randla.compress.group.factor_many`); ``False``: one call per
        layer. ``rtol`` ranks are found one layer at a time either way.
    rng : None, int or numpy.random.Generator
        One generator serves all layers, in the mapping's order (with ``batch``: one
        draw per stacked call, so the factors differ from ``batch=False`` within the
        error bounds).

    Returns
    -------
    factors : dict name -> Factors
        Dense layers have ``B = A = None``.
    report : Report

    Notes
    -----
    With a ``budget`` every layer is factored once at its largest useful rank
    (``max_saving_rank``, batched as the fixed-rank modes are) and then truncated to its
    allocated rank: the leading singular vectors do not depend on where the cut falls.
    A layer's ``report.seconds`` includes an even share of its stacked call.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import compress_weights
    >>> rng = np.random.default_rng(0)
    >>> W = {"a": rng.standard_normal((64, 32)), "b": rng.standard_normal((32, 32))}
    >>> factors, report = compress_weights(W, rank_fraction=0.25, rng=0)
    >>> [f.report.rank for f in factors.values()], report.params_after
    ([8, 8], 1280)
    >>> factors, report = compress_weights(W, budget=0.5, rng=0)
    >>> report.params_after <= 0.5 * report.params_before
    True
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to array, got {type(weights).__name__}")
    mode, value = check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol,
                                  budget=budget)
    _check_method(method, split, q, p)
    _checked_ridge(ridge)
    names = list(weights)
    shapes = {}
    for n in names:
        if getattr(weights[n], "ndim", None) != 2:
            shape = tuple(getattr(weights[n], "shape", ()))
            raise ValueError(f"weights[{n!r}] must be 2-D (out x in), got shape {shape}")
        shapes[n] = tuple(int(s) for s in weights[n].shape)
    check_grams(grams, names, {n: s[1] for n, s in shapes.items()})
    check_grams(output_grams, names, {n: s[0] for n, s in shapes.items()}, argument="output_grams")
    if folds is not None:
        folds = list(folds)
        if len(folds) < 2:
            raise ValueError(f"folds must hold at least 2 mappings of Gram matrices, got {len(folds)}")
        for i, f in enumerate(folds):
            check_grams(f, names, {n: s[1] for n, s in shapes.items()}, argument=f"folds[{i}]")
    if errors is not None:
        if not isinstance(errors, Mapping):
            raise TypeError(f"errors must be a mapping of name to error curve, got {type(errors).__name__}")
        missing = [n for n in names if n not in errors]
        if missing:
            raise ValueError(f"errors has no curve for layer {missing[0]!r}")
    gen = B.as_generator(rng)
    kw = {"method": method, "q": q, "p": p, "ridge": ridge, "rng": gen}

    def grams_of(n):
        return {"gram": None if grams is None else grams[n],
                "output_gram": None if output_grams is None else output_grams[n]}

    def metric_of(n):
        return metric(shapes[n], ridge=ridge, **grams_of(n))

    if mode != "budget":
        out = factor_many(weights, **{mode: value}, grams=grams, output_grams=output_grams, split=split,
                          estimate_error=estimate_error, batch=batch, **kw)
        return out, Report(f.report for f in out.values())
    if allocation != "greedy" and not callable(allocation):
        raise ValueError(f"allocation must be 'greedy' or a callable, got {allocation!r}")
    if not names:
        return {}, Report([])
    total = resolve_budget(value, shapes)
    rmax = {n: max_saving_rank(shapes[n]) for n in names}
    metrics = {n: metric_of(n) for n in names if rmax[n] >= 1}
    full = factor_many({n: weights[n] for n in metrics}, rank={n: rmax[n] for n in metrics}, whitenings=metrics,
                       split=split, estimate_error=False, batch=batch, **kw)
    summaries = []
    for n in names:
        if rmax[n] < 1:
            summaries.append(summarize(weights[n], name=n, cap=1, whitening=metric_of(n), **kw))
            full[n] = _dense(shapes[n], n, summaries[-1].units, time.perf_counter())
            continue
        m = metrics[n]
        t0 = time.perf_counter()
        if errors is not None:
            summ = LayerSummary.from_errors(n, shapes[n], errors[n])
        elif folds is not None:
            summ = summarize(weights[n], folds=[f[n] for f in folds], gram=grams_of(n)["gram"],
                             whitening=m._replace(L=None), cap=None, name=n, **kw)
        else:
            rep = full[n].report
            zero = output_grams is not None and rep.units != "loss"  # an all-zero output Gram matrix
            summ = LayerSummary(n, shapes[n], np.zeros(rmax[n]) if zero else full[n].S[:rmax[n]] ** 2,
                                0.0 if zero else full[n].energy, "loss" if zero else rep.units)
        summaries.append(summ)
        full[n] = full[n]._replace(report=full[n].report._replace(
            seconds=full[n].report.seconds + time.perf_counter() - t0))
    t0 = time.perf_counter()
    ranks = allocate(summaries, total) if allocation == "greedy" else _checked_ranks(
        allocation(summaries, total), shapes, total)
    share = (time.perf_counter() - t0) / max(len(names), 1)
    out = {}
    for n in names:
        f = full[n]
        t0 = time.perf_counter()
        if f.report.rank is None or ranks[n] > f.report.rank:
            out[n] = _dense(shapes[n], n, f.report.units, time.perf_counter())
        else:
            out[n] = truncate(f, ranks[n])
            if estimate_error and out[n].B is not None and not B.is_lazy(weights[n]):
                nerr = estimate_normalized_error(weights[n], out[n], whitening=metrics[n], rng=gen)
                out[n] = out[n]._replace(report=out[n].report._replace(normalized_error=nerr))
        seconds = f.report.seconds + share + time.perf_counter() - t0
        out[n] = out[n]._replace(report=out[n].report._replace(seconds=seconds))
    return out, Report(f.report for f in out.values())
