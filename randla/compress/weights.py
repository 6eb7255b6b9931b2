"""Compress many weights at once: the driver the framework adapters call.

:func:`compress_weights` takes a mapping ``name -> W (out x in)`` (arrays of any
array-API library, e.g. zero-copy DLPack views of a model's parameters) and returns
the factors of each and one :class:`~randla.compress.Report`. The adapters only move
tensors in and out and swap modules.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from .. import _backend as B
from .budget import LayerSummary, allocate, resolve_budget
from .factor import DEFAULT_RIDGE, _check_method, _dense, factor, truncate
from .ranks import check_rank_mode, max_saving_rank
from .report import Report

__all__ = ["compress_weights", "check_grams"]


def check_grams(grams, names, in_dims):
    """Check a calibration mapping against the layers to factor.

    Every layer needs a Gram matrix of shape ``(in, in)``: a missing one is an error,
    never a silent fall-back to the plain factorisation (which is far worse on a
    model's output); exclude such layers or calibrate them.

    Parameters
    ----------
    grams : mapping or None
    names : sequence of str
    in_dims : mapping name -> int

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
    ValueError: calibration has no Gram matrix for layer 'b' (layers without one are not factored plain: calibrate it or exclude it)
    """
    if grams is None:
        return
    if not isinstance(grams, Mapping):
        raise TypeError(f"calibration must be a mapping of layer name to Gram matrix, got {type(grams).__name__}")
    for n in names:
        if n not in grams:
            raise ValueError(f"calibration has no Gram matrix for layer {n!r} (layers without one are not "
                             f"factored plain: calibrate it or exclude it)")
        shape = tuple(grams[n].shape)
        if shape != (in_dims[n], in_dims[n]):
            raise ValueError(f"calibration[{n!r}] must be {in_dims[n]} x {in_dims[n]} (in x in), got {shape}")


def compress_weights(weights, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None,
                     grams=None, method="rsi", q=2, p=10, split="left", ridge=DEFAULT_RIDGE, allocation="spectra",
                     estimate_error=True, rng=None):
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
    method, q, p, split, ridge, estimate_error
        As in :func:`~randla.compress.factor`.
    allocation : str or callable, default "spectra"
        How a ``budget`` is spent: ``"spectra"`` is :func:`~randla.compress.allocate`
        on the (whitened) spectra with relative weights; a callable
        ``allocation(summaries, budget) -> {name: rank}`` is used as given.
    rng : None, int or numpy.random.Generator
        One generator serves all layers, in the mapping's order.

    Returns
    -------
    factors : dict name -> Factors
        Dense layers have ``B = A = None``.
    report : Report

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
    names = list(weights)
    shapes = {}
    for n in names:
        if getattr(weights[n], "ndim", None) != 2:
            raise ValueError(f"weights[{n!r}] must be 2-D (out x in), got shape {tuple(getattr(weights[n], 'shape', ()))}")
        shapes[n] = tuple(int(s) for s in weights[n].shape)
    check_grams(grams, names, {n: s[1] for n, s in shapes.items()})
    gen = B.as_generator(rng)
    kw = {"method": method, "q": q, "p": p, "split": split, "ridge": ridge, "rng": gen}
    gram = (lambda n: None) if grams is None else (lambda n: grams[n])
    if mode != "budget":
        out = {n: factor(weights[n], gram=gram(n), estimate_error=estimate_error, name=n, **{mode: value}, **kw)
               for n in names}
        return out, Report(f.report for f in out.values())
    total = resolve_budget(value, shapes)
    # one factorisation per layer at the largest useful rank; the allocation then
    # only truncates (the leading singular vectors do not depend on the cut)
    full, summaries = {}, []
    for n in names:
        rmax = max_saving_rank(shapes[n])
        if rmax < 1:
            full[n] = _dense(shapes[n], n, grams is not None, time.perf_counter())
            summaries.append(LayerSummary(n, shapes[n], np.zeros(0), 0.0, grams is not None))
            continue
        full[n] = factor(weights[n], rank=rmax, gram=gram(n), estimate_error=False, name=n, **kw)
        summaries.append(LayerSummary(n, shapes[n], full[n].S[:rmax], full[n].energy, grams is not None))
    t0 = time.perf_counter()
    if allocation == "spectra":
        ranks = allocate(summaries, total)
    elif callable(allocation):
        ranks = allocation(summaries, total)
    else:
        raise ValueError(f"allocation must be 'spectra' or a callable, got {allocation!r}")
    share = (time.perf_counter() - t0) / max(len(names), 1)
    out = {}
    for n in names:
        f = full[n]
        if f.report.rank is None or ranks[n] > f.report.rank:
            out[n] = _dense(shapes[n], n, grams is not None, time.perf_counter())
        else:
            out[n] = truncate(f, ranks[n])
        out[n] = out[n]._replace(report=out[n].report._replace(seconds=f.report.seconds + share))
    return out, Report(f.report for f in out.values())
