"""``compress(model, ...)``: replace ``nn.Linear``/``nn.Conv2d`` layers by low-rank pairs.

The adapter only moves tensors: weights cross into
:func:`randla.compress.weights.compress_weights` by DLPack (zero-copy NumPy views on the
CPU; other devices stay torch tensors, on their device), and the factors come back the
same way, in the layer's dtype and on its device.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from .. import _backend as _B
from ..compress import Report, check_rank_mode, compress_weights
from ..compress.correct import DEFAULT_SHRINKAGE
from ..compress.factor import DEFAULT_RIDGE, _checked_ridge, fit_range
from ._hooks import check_untied, eligible_layers, select_modules
from ._modules import LowRankConv2d, LowRankLinear

__all__ = ["compress", "to_array", "from_array"]

_HALF = (torch.float16, torch.bfloat16)


def to_array(t):
    """An array-API array for the math: detached, conjugate and negative bits resolved
    (DLPack exports the raw storage: a negative-bit view would come out negated), half
    precision upcast to float32; a zero-copy NumPy view on the CPU, the tensor itself
    elsewhere.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import to_array
    >>> t = torch.ones(2, 3)
    >>> a = to_array(t)
    >>> type(a).__name__, a.dtype
    ('ndarray', dtype('float32'))
    """
    t = t.detach().resolve_conj().resolve_neg()
    if t.dtype in _HALF:
        t = t.float()
    if t.device.type == "cpu":
        return np.from_dlpack(t)
    return t


def from_array(a, *, like):
    """``a`` as a torch tensor with the dtype and device of ``like`` (zero-copy from a
    CPU NumPy array when the dtype already matches).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from randla.torch import from_array
    >>> from_array(np.ones(2, dtype=np.float32), like=torch.zeros(1, dtype=torch.bfloat16)).dtype
    torch.bfloat16
    """
    t = a if isinstance(a, torch.Tensor) else torch.from_dlpack(np.ascontiguousarray(a))
    return t.to(device=like.device, dtype=like.dtype)


def _arrays(grams, names):
    """The Gram matrices of the layers in ``names`` as arrays (absent ones are left out,
    so that the framework-free check names them)."""
    return {n: to_array(grams[n]) if isinstance(grams[n], torch.Tensor) else grams[n] for n in names if n in grams}


def _flat_weight(module):
    W = module.weight
    return W.reshape(W.shape[0], -1) if isinstance(module, nn.Conv2d) else W


def _references(model):
    """``id(module) -> [(parent, attribute)]`` over every path (shared modules too)."""
    refs = {}
    for _, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None:
                refs.setdefault(id(child), []).append((parent, attr))
    return refs


# The hooks a replacement takes over (the dictionaries themselves, so that the handles
# the user holds still remove them); state-dict hooks stay behind: the keys differ.
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_is_full_backward_hook")


def _no_layers(model, include, exclude):
    """Why ``compress`` found nothing to factor, naming the classes of the other weighted
    modules it passed over (e.g. transformers' ``Conv1D``, whose weight is ``in x out``)."""
    filtered = include is not None or exclude is not None
    others = sorted({type(m).__name__ for _, m in select_modules(model, nn.Module, include=include, exclude=exclude)
                     if not isinstance(m, (nn.Linear, nn.Conv2d, nn.Embedding, nn.EmbeddingBag))
                     and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim >= 2})
    message = f"no nn.Linear or nn.Conv2d layer {'matches include/exclude' if filtered else 'can take a low-rank pair'}"
    if others:
        message += (f"; the {'matching ' if filtered else ''}modules with weights are {', '.join(others)}, which are "
                    f"not replaced (transformers' Conv1D computes x @ W + b with W in x out: an nn.Linear with "
                    f"weight W.T computes the same)")
    return message


def inherit_state(new, module):
    """``new`` (a low-rank layer replacing ``module``) with ``module``'s training flag,
    ``requires_grad`` (the factors' from the weight, the bias's from the bias) and its
    forward and backward hooks."""
    weight = module.lowrank_A if isinstance(module, (LowRankLinear, LowRankConv2d)) else module.weight
    new.lowrank_A.requires_grad_(weight.requires_grad)
    new.lowrank_B.requires_grad_(weight.requires_grad)
    if new.bias is not None and module.bias is not None:
        new.bias.requires_grad_(module.bias.requires_grad)
    for attr in _HOOKS:
        if hasattr(module, attr):
            setattr(new, attr, getattr(module, attr))
    return new.train(module.training)


def _low_rank_module(module, B, A, shift=None):
    """The low-rank replacement of ``module`` with factors ``B``, ``A`` (arrays), its bias
    moved by ``shift`` when given."""
    W = module.weight
    B, A = fit_range(B, A, W.dtype)  # float16: ranks rescaled where U S would overflow
    B, A = from_array(B, like=W), from_array(A, like=W)
    bias = module.bias
    if bias is not None and shift is not None:
        bias = bias.detach() + from_array(shift, like=bias)
    if isinstance(module, nn.Conv2d):
        new = LowRankConv2d.from_conv(module, B, A)
        new.bias = None if bias is None else nn.Parameter(bias.detach())
    else:
        new = LowRankLinear.from_factors(B, A, bias)
    return inherit_state(new, module)


def compress(model, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None, calibration=None,
             method="rsi", q=2, include=None, exclude=None, rng=None, inplace=False, p=10, split="left",
             ridge=DEFAULT_RIDGE, batch=True, data=None, shrinkage=DEFAULT_SHRINKAGE, folds=2):
    """Replace ``nn.Linear`` (and ``nn.Conv2d``) layers by low-rank pairs.

    Each selected layer's weight ``W (out x in)`` (a convolution's kernel flattened to
    ``out x (in kh kw)``) is factored by :func:`~randla.compress.factor.factor` and the layer
    becomes a :class:`LowRankLinear` (:class:`LowRankConv2d`: a ``kh x kw`` convolution
    to ``r`` channels, then a ``1 x 1`` one); a layer whose factors would not save
    parameters (``r (out + in) >= out in``) stays dense. With ``calibration`` (Gram
    matrices from :func:`calibrate`) the factors minimise each layer's output error on
    the calibration data instead of the weight error.

    Parameters
    ----------
    model : torch.nn.Module
    rank, rank_fraction, param_fraction, rtol, budget : optional
        Exactly one. ``rank``: the same rank everywhere; ``rank_fraction`` alpha:
        ``floor(alpha min(out, in))``; ``param_fraction``: share of each layer's
        parameters kept; ``rtol``: relative Frobenius error of each weight (of each
        layer's output when calibrated); ``budget``: total parameters of the selected
        layers' weights after compression (int) or a fraction of them (float), spread
        over the layers (see :func:`randla.compress.weights.compress_weights`).
    calibration : dict, optional
        ``{module_name: G}`` from :func:`calibrate`; every selected layer must have one
        (a missing layer is a ``ValueError``, never a silent plain factorisation). When
        it is a :class:`Calibration` made with ``output=``, the factors minimise the
        K-FAC estimate of the change of that output (``R^H (W - B A) L``, see
        :func:`~randla.compress.factor.factor`), and a ``budget`` is spent greedily on
        those spectra, which are comparable across layers, cross-validated over the
        calibration's folds; with ``sample_probes`` (see :func:`calibrate`), on its
        per-sample error curves instead. Without ``output=``, a ``budget`` is spent on
        relative whitened spectra (measured to lose to a uniform ``rank_fraction`` on
        MiniLM; calibrate with ``output=``, and ``sample_probes=32`` for the best
        budgets). With ``data``, only together with a ``budget``, whose ranks it then
        allocates.
    method : {"rsi", "rsvd", "krylov", "exact"}, default "rsi"
    q : int, default 2
    include, exclude : str, optional
        Regular expressions on module names (``re.search``).
    rng : None, int or numpy.random.Generator
    inplace : bool, default False
        Modify ``model`` itself; by default a deep copy is compressed and ``model`` is
        untouched.
    p : int, default 10
        Oversampling.
    split : {"left", "balanced"}, default "left"
    ridge : float, default 1e-6
        Relative ridge of the Gram matrices (see :func:`randla.compress.factor.whitener`).
    batch : bool, default True
        Factor layers of equal shape, dtype, device and rank (the attention
        projections, the FFN matrices of a transformer) by stacked calls, in chunks of
        at most 32 MB of float32 (see :func:`randla.compress.group.factor_many`); ``False``:
        one call per layer. Seeded results are reproducible either way and agree
        within the error bounds, not bit for bit (one random draw per stacked call).
        Not used with ``data`` (one layer at a time).
    data : iterable of batches, optional
        Calibration batches (as for :func:`calibrate`; read several times, so a list,
        or anything ``list()`` can hold) for the sequential, error-corrected mode: the
        layers are compressed in the order the model calls them, and each is fitted
        to reproduce the *original* layer's output from the inputs the partly
        compressed model gives it (:mod:`randla.compress.correct`), its bias moved to
        remove the mean error. Errors then do not pile up along the depth as they do
        when every layer is fitted to the original model's inputs (``calibration``).
        Costs one forward pass of the original model over ``data`` (its layers'
        inputs are kept while they take at most 1 GiB, else recomputed per group),
        one partial pass of the compressed model per group of layers that read the
        same input, and three Gram matrices per layer. With ``budget``, the ranks
        are allocated first as with ``calibration`` (that of the argument, or else
        :func:`calibrate` on ``data``), then the layers are fitted at those ranks.
        Layers that stay dense are left exactly as they are. Padding positions are
        left out as in :func:`calibrate`.
    shrinkage : float or sequence of float, default ``(0.003, 0.01, 0.03, 0.1, 0.3, 1, inf)``
        With ``data``: candidate ridges of the correction, relative to the mean
        eigenvalue of the compressed model's input Gram matrix (``inf``: no
        correction), chosen per layer by the error on held-out folds of ``data``.
    folds : int, default 2
        With ``data``: the folds (samples dealt in turn) that choose ``shrinkage``.

    Returns
    -------
    model : torch.nn.Module
        The compressed model (``model`` itself when ``inplace``).
    report : randla.compress.Report
        One :class:`randla.compress.report.LayerReport` per selected layer: shape, rank,
        parameters before/after, estimated normalized error, relative output error
        on the calibration data when calibrated (``None`` for budgeted two-sided
        factors, see :class:`randla.compress.report.LayerReport`), time.

    Notes
    -----
    Weights are read through DLPack (zero-copy on the CPU) after ``detach()`` and
    ``resolve_conj()``; float16 and bfloat16 weights are upcast to float32 for the math
    and the factors are cast back; factors live on the layer's device. Grouped
    convolutions, the ``nn.Linear`` children of ``nn.MultiheadAttention`` and of
    torch's transformer layers, and subclasses that override ``forward`` are not selected
    (see :func:`eligible_layers`). A module reached by several names (shared) is replaced
    everywhere. A new layer keeps the replaced one's training mode and ``requires_grad``.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import compress
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    >>> small, report = compress(net, rank_fraction=0.25, rng=0)
    >>> type(small[0]).__name__, small[0].rank, type(net[0]).__name__
    ('LowRankLinear', 16, 'Linear')
    >>> report.params_before, report.params_after
    (4736, 2196)

    Error-corrected on calibration data:

    >>> X = torch.randn(256, 64)
    >>> small, report = compress(net, rank_fraction=0.25, data=[X[:128], X[128:]], rng=0)
    >>> [round(r.output_error, 2) <= 1 for r in report]
    [True, True]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol, budget=budget)
    _checked_ridge(ridge)
    if calibration is not None and not isinstance(calibration, Mapping):
        raise TypeError(f"calibration must be a dict of Gram matrices, got {type(calibration).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    layers = eligible_layers(model, include=include, exclude=exclude)
    if not layers:
        raise ValueError(_no_layers(model, include, exclude))
    check_untied(model, layers)
    if data is not None:
        return _compress_with_data(model, layers, data, calibration=calibration, inplace=inplace, rank=rank,
                                   rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol,
                                   budget=budget, shrinkage=shrinkage, folds=folds, method=method, q=q, p=p,
                                   split=split, ridge=ridge, rng=rng)
    weights = {n: to_array(_flat_weight(m)) for n, m in layers}
    grams = output_grams = folds = errors = None
    if calibration is not None:
        grams = _arrays(calibration, weights)
        if getattr(calibration, "output_grams", None) is not None:
            output_grams = _arrays(calibration.output_grams, weights)
        if getattr(calibration, "folds", None) is not None and budget is not None:
            folds = [_arrays(f, weights) for f in calibration.folds]
        if getattr(calibration, "errors", None) is not None and budget is not None:
            errors = {n: calibration.errors[n] for n in weights if n in calibration.errors}
    factors, report = compress_weights(weights, rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction,
                                       rtol=rtol, budget=budget, grams=grams, output_grams=output_grams, folds=folds,
                                       errors=errors,
                                       method=method, q=q, p=p, split=split, ridge=ridge, batch=batch, rng=rng)
    target = model if inplace else copy.deepcopy(model)
    refs = _references(target)
    for name, _ in layers:
        f = factors[name]
        if f.B is None:
            continue
        module = target.get_submodule(name)
        new = _low_rank_module(module, f.B, f.A)
        for parent, attr in refs[id(module)]:
            setattr(parent, attr, new)
    return target, report


def _compress_with_data(model, layers, data, *, calibration, inplace, budget, shrinkage, folds, rng, **options):
    """``compress(..., data=...)``: see :mod:`randla.torch._sequential`."""
    from ._calibration import calibrate, check_count
    from ._sequential import compress_sequential

    folds = check_count(folds, "folds")
    output_grams = None if calibration is None else getattr(calibration, "output_grams", None)
    if calibration is not None and budget is None and output_grams is None:
        raise ValueError("give calibration or data, not both: with data, calibration only allocates a budget and "
                         "weights the truncation by its output_grams (calibrate(..., output=...))")
    batches = list(data)
    if not batches:
        raise ValueError("data is empty")
    gen = _B.as_generator(rng)
    names = [n for n, _ in layers]
    ranks = None
    rank_options = {k: options.pop(k) for k in ("rank", "rank_fraction", "param_fraction", "rtol")}
    if budget is not None:
        if calibration is None:
            calibration = calibrate(model, batches, include=None, exclude=None)
        _, planned = compress(model, budget=budget, calibration=calibration, rng=gen,
                              include="^(" + "|".join(map(re.escape, names)) + ")$", **options)
        ranks = {r.name: r.rank for r in planned}  # None: left dense by the budget, its error measured
    original, target = (copy.deepcopy(model), model) if inplace else (model, copy.deepcopy(model))
    if output_grams is not None:
        output_grams = _arrays(output_grams, names)
    fits = compress_sequential(original, target, names, batches, ranks=ranks, rank_options=rank_options,
                               shrinkage=shrinkage, folds=folds, bias=True, rng=gen, ignore_padding=True,
                               output_grams=output_grams, **options)
    return target, Report(fits[n].report for n in names)
