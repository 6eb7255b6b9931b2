"""``prune_mlp(model, pairs, batches, ...)``: neuron pruning of MLPs by an ID of activations.

The adapter captures the activations at each second layer's input (so any elementwise
activation between the layers works, and a gated MLP's ``act(gate) * up`` too), hands
them with the weights to :func:`randla.compress.prune.prune_neurons` (DLPack, zero-copy
on the CPU) and shrinks the ``nn.Linear`` modules in place: no new module type, a real
speed-up.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from .. import _backend as _B
from ..compress.prune import PairReport, PruneReport, _check_ridge, accumulate, neuron_count, prune_neurons
from ..interpolative import ID_METHODS
from ._calibration import batch_mask, positions, wide
from ._compress import from_array, to_array
from ._hooks import check_materialised, check_untied, run_with_hooks, run_with_input_hooks

__all__ = ["prune_mlp"]


def _resolve_pairs(model, pairs):
    """``[(first_names, second_name)]`` with the modules checked."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__iter__"):
        raise TypeError("pairs must be a list of (first_name, second_name) pairs")
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty")
    modules = dict(model.named_modules())

    def linear(name, what):
        if not isinstance(name, str):
            raise TypeError(f"pairs: module names must be str, got {type(name).__name__} for the {what} layer")
        if name not in modules or not name:
            raise ValueError(f"pairs: {name!r} is not a submodule of the model")
        m = modules[name]
        if type(m) is not nn.Linear:
            raise TypeError(f"pairs: {name!r} is a {type(m).__name__}, not an nn.Linear")
        check_materialised(name, m)
        return m

    resolved, seen = [], set()
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"pairs[{i}] must be (first_name, second_name), got {pair!r}")
        first, second = pair
        firsts = [first] if isinstance(first, str) else list(first)
        if not firsts:
            raise ValueError(f"pairs[{i}]: no first layer")
        lin2 = linear(second, "second")
        for name in firsts:
            lin1 = linear(name, "first")
            if lin1.out_features != lin2.in_features:
                raise ValueError(f"pairs[{i}]: {name!r} has {lin1.out_features} outputs but {second!r} has "
                                 f"{lin2.in_features} inputs; the layers must be joined by an elementwise "
                                 f"function (Linear -> act -> Linear)")
        for name in firsts + [second]:
            if name in seen:
                raise ValueError(f"pairs: {name!r} appears in more than one pair")
            seen.add(name)
        resolved.append((firsts, second))
    check_untied(model, [(n, modules[n]) for fs, sec in resolved for n in fs + [sec]], "pruning",
                 "leave the pair out")
    return resolved


def _rows(module, x, mask):
    """The activation rows of a batch, float64 (complex128), padding positions left out
    (:func:`~randla.torch._calibration.positions`)."""
    x, mask = positions(mask, module, x)
    if mask is not None:
        x = x[mask.to(x.device) != 0]
    x = wide(x.reshape(-1, x.shape[-1]))
    return to_array(x)


def _capture(model, seconds, batches, ignore_padding):
    """``({second_name: Activations}, first_batch)`` over all batches (one pass for all
    pairs); the first batch is kept for the checks of :func:`_check_elementwise` and
    :func:`_check_runs`."""
    acts = {}
    state = {"mask": None, "first": None}

    def feed():
        for batch in batches:
            state["mask"] = batch_mask(batch, ignore_padding)
            if state["first"] is None:
                state["first"] = batch
            yield batch

    def keep(name, module, x):
        rows = _rows(module, x, state["mask"])
        if rows.shape[0]:
            acts[name] = accumulate(acts.get(name), rows)

    run_with_input_hooks(model, feed(), seconds, keep)
    return acts, state["first"]


# Share of a pair's hidden units perturbed by _check_elementwise, and the change in an
# unperturbed input of the second layer (relative to that input's largest magnitude)
# that counts as a dependence: rounding cannot make one, an elementwise function of an
# unchanged value is reproduced exactly.
_PERTURBED_SHARE = 0.25
_DEPENDENCE = 1e-4


class _Seen(Exception):
    """Ends a checking forward pass once the layer it watches has its input."""


def _check_elementwise(model, resolved, batch):
    """Raise ``ValueError`` where a second layer's input is not an elementwise function of
    its first layers' outputs (a normalisation or softmax over the hidden units between
    them, or first layers that do not feed the second), which the width check cannot
    see.

    Forward passes of ``batch``: one as is, then one per pair (ended at its second
    layer) with a random quarter of the pair's hidden units shifted at the first
    layers' outputs (by half their mean magnitude, plus one). Elementwise: the second
    layer's other inputs are reproduced exactly, and some perturbed one changes.
    """
    gen = torch.Generator().manual_seed(0)
    modules = dict(model.named_modules())
    clean = {}

    def keep(name, module, x):
        clean.setdefault(name, x.detach().clone())  # a module called twice: its first call

    run_with_input_hooks(model, [batch], [second for _, second in resolved], keep)
    for i, (firsts, second) in enumerate(resolved):
        h = modules[second].in_features
        mask = torch.zeros(h, dtype=torch.bool)
        mask[torch.randperm(h, generator=gen)[:max(1, int(_PERTURBED_SHARE * h))]] = True
        moved = {}

        def shift(module, args, out, mask=mask):
            return out + mask.to(out.device, out.dtype) * (0.5 * out.detach().abs().mean() + 1)

        def seen(name, module, x, moved=moved):
            moved[name] = x.detach().clone()
            raise _Seen

        handles = [modules[name].register_forward_hook(shift) for name in firsts]
        try:
            run_with_input_hooks(model, [batch], [second], seen)
        except _Seen:
            pass
        finally:
            for handle in handles:
                handle.remove()
        a, b = wide(clean[second]), wide(moved[second])
        change = (b - a).abs().reshape(-1, h).amax(dim=0)
        scale = a.abs().reshape(-1, h).amax(dim=0)
        mask = mask.to(change.device)
        other = change[~mask] > _DEPENDENCE * scale[~mask]
        what = "+".join(firsts)
        if bool(other.any()):
            raise ValueError(
                f"pairs[{i}]: the input of {second!r} is not an elementwise function of the output of {what!r}: "
                f"shifting {int(mask.sum())} of its {h} outputs changed {int(other.sum())} of the others; pruning "
                f"needs Linear -> elementwise function -> Linear")
        if not bool((change[mask] > 0).any()):
            raise ValueError(
                f"pairs[{i}]: the input of {second!r} does not depend on the output of {what!r} (shifting "
                f"{int(mask.sum())} of its {h} outputs changed nothing there); pair layers that feed each other")


def _shrink_rows(lin, idx):
    """``lin`` keeps the output rows ``idx`` (exact copies, same dtype and device)."""
    sel = torch.as_tensor(idx, device=lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.detach().index_select(0, sel).clone(),
                              requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach().index_select(0, sel).clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features = len(idx)


def _set_inputs(lin, W):
    """``lin`` takes ``W`` (out x k) as its weight."""
    lin.weight = nn.Parameter(from_array(W, like=lin.weight).contiguous(), requires_grad=lin.weight.requires_grad)
    lin.in_features = lin.weight.shape[1]


def prune_mlp(model, pairs, batches, *, keep_fraction=None, k=None, rtol=None, method="cpqr", ridge="gcv",
              ignore_padding=True, rng=None, inplace=False):
    r"""Prune the hidden neurons of MLPs by an interpolative decomposition of their activations.

    For each pair ``(first, second)`` of ``nn.Linear`` layers joined by an elementwise
    function, the activations ``Z`` at ``second``'s input are collected on the
    calibration ``batches``; the ID ``Z ~= Z[:, C] T`` keeps the neurons ``C``:
    ``first`` keeps the rows ``C`` of its weight and bias, ``second``'s weight becomes
    ``W2 T^T`` (:func:`randla.compress.prune.prune_neurons`, which also explains the
    output-weighted selection and the ridge-regularised ``T``). The modules stay
    ``nn.Linear``, just narrower.

    Parameters
    ----------
    model : torch.nn.Module
    pairs : list of (str or tuple of str, str)
        ``(first_name, second_name)`` module names, e.g.
        ``("encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense")``.
        For a gated MLP the first entry is a tuple of the layers pruned together,
        ``(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj")``.
    batches : iterable
        Calibration batches, each a tensor, a tuple of positional arguments or a
        mapping of keyword arguments such as a tokenizer's output (see
        :func:`randla.torch.call_model`). Iterated once.
    keep_fraction : float in (0, 1], optional
        Neurons kept per pair, ``max(1, floor(keep_fraction h))``.
    k : int, optional
        Neurons kept per pair.
    rtol : float in (0, 1), optional
        Per pair, the fewest neurons whose pivoted QR of the (output-weighted)
        activations leaves a relative residual ``<= rtol`` (the pruned pair's
        error on the calibration data only for ``ridge=0``: see
        :func:`randla.compress.prune.select_neurons`). Exactly one of
        ``keep_fraction``, ``k``, ``rtol``.
    method : {"cpqr", "srrqr", "randomized"}, default "cpqr"
        Pivoting of the ID (:func:`randla.interpolative.interp_decomp`).
    ridge : "gcv" or float >= 0, default "gcv"
        Relative ridge of ``T``; ``0`` is the plain ID.
    ignore_padding : bool, default True
        When a batch is a mapping with an ``attention_mask`` ``(batch, seq)`` and the
        activations have those leading dimensions, padding positions are left out.
    rng : None, int or numpy.random.Generator
        For ``method="randomized"``.
    inplace : bool, default False
        Prune ``model`` itself; by default a deep copy is pruned and ``model`` is
        untouched.

    Returns
    -------
    model : torch.nn.Module
        The pruned model (``model`` itself when ``inplace``).
    report : randla.compress.prune.PruneReport
        Per pair: width before/after, relative ID error of the activations, relative
        output error of the second layer on the calibration data, ridge, time.

    Raises
    ------
    TypeError
        Not exactly one of ``keep_fraction``, ``k``, ``rtol``; a name that is not an
        ``nn.Linear``; malformed ``pairs``.
    ValueError
        An unknown module name; a first layer whose output width differs from the
        second layer's input (not an elementwise pair); ``keep_fraction`` outside
        (0, 1] or ``k`` outside ``[1, h]``; a second layer that never ran on the
        batches; fewer calibration rows than neurons to keep; a second layer whose
        input is not an elementwise function of the first layers' outputs, or does
        not depend on them (checked on the first batch, see Notes); a pruned model
        that fails on the first batch (a first layer's output also feeds another
        module), after which the model is restored.

    Notes
    -----
    All pairs are captured in one pass over ``batches`` with the original model (one
    shot). Activations are accumulated in float64 on the model's device and reduced to
    at most ``2h x h`` per pair (:func:`randla.compress.prune.accumulate`); float16 and
    bfloat16 models are pruned in float32 math and stay in their dtype; kept rows of
    the first layers are exact copies.

    The first batch is run again before pruning (one pass as is, then one per pair,
    ended at its second layer, with a random quarter of the pair's hidden units
    shifted at the first layers' outputs: the second layer's other inputs must be
    reproduced exactly) and once after it.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import prune_mlp
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    >>> small, report = prune_mlp(net, [("0", "2")], [torch.randn(256, 8)], keep_fraction=0.5)
    >>> small[0], small[2]
    (Linear(in_features=8, out_features=32, bias=True), Linear(in_features=32, out_features=4, bias=True))
    >>> report[0].width_before, report[0].width_after, net[0].out_features
    (64, 32, 64)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    resolved = _resolve_pairs(model, pairs)
    for _, second in resolved:  # size options checked before any data runs
        neuron_count(model.get_submodule(second).in_features, k=k, keep_fraction=keep_fraction, rtol=rtol)
    if method not in ID_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, ID_METHODS))}; got {method!r}")
    _check_ridge(ridge)
    if not isinstance(ignore_padding, bool):
        raise TypeError(f"ignore_padding must be a bool, got {type(ignore_padding).__name__}")
    target = model if inplace else copy.deepcopy(model)
    t0 = time.perf_counter()
    acts, batch = _capture(target, [s for _, s in resolved], batches, ignore_padding)
    report = PruneReport()
    report.capture_seconds = time.perf_counter() - t0
    for _, second in resolved:
        if second not in acts:
            raise ValueError(f"{second!r} never ran on the calibration batches")
    _check_elementwise(target, resolved, batch)
    results = []  # every pair is pruned before any module changes: an error leaves the model whole
    for firsts, second in resolved:
        t1 = time.perf_counter()
        lin2 = target.get_submodule(second)
        first = [(to_array(m.weight), None if m.bias is None else to_array(m.bias))
                 for m in (target.get_submodule(n) for n in firsts)]
        try:
            result = prune_neurons(acts.pop(second), first, to_array(lin2.weight),
                                   b2=None if lin2.bias is None else to_array(lin2.bias), k=k,
                                   keep_fraction=keep_fraction, rtol=rtol, method=method, ridge=ridge, rng=rng)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"pair {'+'.join(firsts)} -> {second}: {exc}") from exc
        results.append((firsts, second, result, time.perf_counter() - t1))
    saved = _saved(target, resolved)
    for firsts, second, result, seconds in results:
        lin2 = target.get_submodule(second)
        h = lin2.in_features
        idx = np.asarray(_B.to_numpy(result.selection.idx), dtype=np.int64)
        for name in firsts:
            _shrink_rows(target.get_submodule(name), idx)
        _set_inputs(lin2, result.W2)
        report.append(PairReport(f"{'+'.join(firsts)} -> {second}", h, len(idx), result.selection.error,
                                 result.output_error, result.selection.ridge, seconds))
    _check_runs(target, batch, saved)
    return target, report


def _saved(model, resolved):
    """The state that pruning replaces: ``[(module, weight, bias, in_features, out_features)]``."""
    names = [n for firsts, second in resolved for n in firsts + [second]]
    return [(m, m.weight, m.bias, m.in_features, m.out_features) for m in map(model.get_submodule, names)]


def _check_runs(model, batch, saved):
    """Run the pruned ``model`` on ``batch``; where it fails, restore the modules of
    ``saved`` and raise ``ValueError``: a first layer's output also feeds another module
    (a residual connection, a second branch), which expects the old width."""
    try:
        run_with_hooks(model, [batch], [])
    except Exception as exc:  # torch's shape errors, or the model's own checks (ValueError, assert)
        for module, weight, bias, n_in, n_out in saved:
            module.weight, module.bias, module.in_features, module.out_features = weight, bias, n_in, n_out
        raise ValueError(f"the pruned model fails on the first calibration batch ({exc}); a first layer's output "
                         f"probably feeds another module besides its second layer, which pruning cannot narrow "
                         f"(in a gated MLP, name the layers pruned together: ((gate, up), down)). "
                         f"The model is left as it was") from exc
