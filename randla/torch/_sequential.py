"""Sequential, error-corrected compression: ``compress(model, ..., data=batches)``.

Layers are compressed in the order the model calls them. The original model's layer
inputs come from one forward pass per batch, kept in memory up to
``REFERENCE_CACHE_BYTES`` (else recomputed per step, the pass stopping at the layer).
Before each step the calibration batches run through the copy compressed so far, up to
the layer (the forward pass stops there), and the second moments of the layer's inputs
in both models are accumulated per fold (:class:`randla.compress.correct.TransferStats`);
:func:`randla.compress.correct.fit_corrected` then fits the layer to the original layer's output
from the inputs the compressed model gives it. Layers that read the same input tensor
(a transformer's query, key and value projections) are fitted from one pass.
"""

from __future__ import annotations

import math

from torch import nn

from .. import _backend as _B
from ..compress.correct import TransferStats, _check_shrinkage, fit_corrected
from ._calibration import batch_mask, fold_rows, wide
from ._compress import _flat_weight, _low_rank_module, _references, to_array
from ._hooks import run_with_hooks

__all__ = ["compress_sequential"]


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the inputs needed are seen."""


def _order(model, names, batch):
    """Groups of ``names`` in the order of their first call on ``batch`` (layers that
    read the same tensor share a group), and the names called more than once."""
    calls = []

    def record(name, module, x):
        calls.append((name, x))

    run_with_hooks(model, [batch], names, on_input=record)
    groups, seen, multi = [], set(), set()
    for i, (name, x) in enumerate(calls):
        if name in seen:
            multi.add(name)
            continue
        seen.add(name)
        prev = calls[i - 1][1] if i else None
        same = (prev is not None and groups and prev.data_ptr() == x.data_ptr() and prev.shape == x.shape
                and prev.stride() == x.stride())
        if same:
            groups[-1].append(name)
        else:
            groups.append([name])
    return groups, multi


def _inputs(model, batch, name, stop):
    """The inputs of submodule ``name`` on ``batch`` (only the first call when ``stop``:
    the forward pass ends there)."""
    xs = []

    def keep(n, module, x):
        xs.append(x)
        if stop:
            raise _Stop

    try:
        run_with_hooks(model, [batch], [name], on_input=keep)
    except _Stop:
        pass
    return xs


#: The original model's layer inputs are kept in memory (one forward pass per batch
#: instead of one per group of layers) when they take at most this many bytes.
REFERENCE_CACHE_BYTES = 2**30


def _reference_inputs(original, batches, names, limit):
    """``[{name: [inputs]} per batch]``: the inputs of ``names`` in the original model,
    every call, from one forward pass per batch; ``None`` when the first batch's share
    suggests they would take more than ``limit`` bytes (they are then recomputed per
    group)."""
    cache = []
    for i, batch in enumerate(batches):
        seen = {n: [] for n in names}
        run_with_hooks(original, [batch], names, on_input=lambda n, m, x, seen=seen: seen[n].append(x.clone()))
        cache.append(seen)
        if i == 0:
            size = sum(x.numel() * x.element_size() for xs in seen.values() for x in xs)
            if size * len(batches) > limit:
                return None
    return cache


def _stats(X_new, X_ref):
    # TransferStats's convention: rows, X~^H X~ (not calibrate's X^T conj(X))
    Xr = wide(X_ref)
    if X_new is X_ref:
        G, t = Xr.mH @ Xr, Xr.sum(0)
        return TransferStats(G, G, G, t, t, Xr.shape[0])
    Xn = wide(X_new)
    return TransferStats(Xn.mH @ Xn, Xn.mH @ Xr, Xr.mH @ Xr, Xn.sum(0), Xr.sum(0), Xn.shape[0])


def _accumulate(original, target, batches, module_ref, first, *, changed, stop, folds, ignore_padding,
                reference=None):
    """Per-fold :class:`TransferStats` of ``first``'s inputs over ``batches`` (the
    original model's from ``reference``, :func:`_reference_inputs`, when given)."""
    parts = [None] * folds
    start = 0
    for i, batch in enumerate(batches):
        mask = batch_mask(batch, ignore_padding)
        if reference is None:
            xs_ref = _inputs(original, batch, first, stop)
        else:
            xs_ref = reference[i][first][:1] if stop else reference[i][first]
        xs_new = _inputs(target, batch, first, stop) if changed else xs_ref
        for x_new, x_ref in zip(xs_new, xs_ref, strict=True):
            rows_ref, n = fold_rows(module_ref, x_ref, mask, start, folds)
            rows_new = rows_ref if not changed else fold_rows(module_ref, x_new, mask, start, folds)[0]
            start += n
            for f, (Xn, Xr) in enumerate(zip(rows_new, rows_ref, strict=True)):
                if Xr is None or Xr.shape[0] == 0:
                    continue
                s = _stats(Xn, Xr)
                parts[f] = s if parts[f] is None else parts[f] + s
    if any(p is None for p in parts):
        raise ValueError(f"the calibration data reach layer {first!r} in fewer than folds={folds} samples; "
                         f"give more data or fewer folds")
    return parts


def _as_arrays(s):
    return TransferStats(*(to_array(v) for v in s[:5]), s.count)


def _replace(target, refs, name, cf):
    """Put the factors of ``cf`` in place of ``target``'s layer ``name`` (every path to
    it), its bias moved by ``cf.shift``."""
    module = target.get_submodule(name)
    new = _low_rank_module(module, cf.B, cf.A, shift=cf.shift)
    for parent, attr in refs[id(module)]:
        setattr(parent, attr, new)


def compress_sequential(original, target, names, batches, *, ranks, rank_options, shrinkage, folds, method, q, p, split,
                        ridge, bias, rng, ignore_padding, output_grams=None):
    """Compress the layers ``names`` of ``target`` (a copy of ``original``, or
    ``original``'s twin when the caller compresses in place) in forward order, on the
    calibration ``batches`` (a non-empty list).

    ``ranks``: ``{name: r}`` fixed ranks (a budget allocated beforehand; ``r = None``:
    left dense, its error on the compressed model's inputs measured; a name absent stays
    dense unmeasured), or ``None`` to use ``rank_options`` for every layer. ``output_grams``:
    ``{name: H}`` arrays for the two-sided truncation, or ``None``.

    Returns ``{name: CorrectedFactors}`` in the order the layers were compressed.
    """
    grid_all = _check_shrinkage(shrinkage)
    if len(grid_all) > 1 and folds < 2:
        raise ValueError("several shrinkage values need folds >= 2")
    groups, multi = _order(original, names, batches[0])
    missing = [n for n in names if all(n not in g for g in groups)]
    if missing:
        raise ValueError(f"layers never called on the first batch of data: {missing[:5]}")
    gen = _B.as_generator(rng)
    modules = dict(original.named_modules())
    reference = _reference_inputs(original, batches, [g[0] for g in groups], REFERENCE_CACHE_BYTES)
    results = {}
    changed = False
    for group in groups:
        todo = [n for n in group if ranks is None or n in ranks]
        if not todo:
            continue
        first = group[0]
        stop = not any(n in multi for n in group)
        cache = {}
        for name in todo:
            module = modules[name]
            key = ("linear",) if isinstance(module, nn.Linear) else (id(module),)
            if key not in cache:
                parts = [_as_arrays(s) for s in _accumulate(original, target, batches, module, first, changed=changed,
                                                            stop=stop, folds=folds, ignore_padding=ignore_padding,
                                                            reference=reference)]
                cache[key] = parts, sum(parts[1:], parts[0])
            parts, total = cache[key]
            W = to_array(_flat_weight(module))
            dense = ranks is not None and ranks[name] is None  # full rank: factor leaves it dense
            options = rank_options if ranks is None else {"rank": min(W.shape) if dense else ranks[name]}
            # nothing upstream changed (X~ = X, M = W), or the layer stays dense: no ridge to fit
            grid = grid_all if changed and not dense else (math.inf,)
            H = None if output_grams is None else output_grams.get(name)
            cf = fit_corrected(W, total, folds=parts if len(grid) > 1 else None, shrinkage=grid, **options,
                               output_gram=H, method=method, q=q, p=p, split=split, ridge=ridge,
                               bias=bias and module.bias is not None, rng=gen, name=name)
            results[name] = cf
        refs = _references(target)
        for name in todo:
            cf = results[name]
            if cf.B is not None:
                _replace(target, refs, name, cf)
                changed = True
    return results

