"""``compress(model, ...)``: replace ``nn.Linear``/``nn.Conv2d`` layers by low-rank pairs.

The adapter only moves tensors: weights cross into :func:`randla.compress.compress_weights`
by DLPack (zero-copy NumPy views on the CPU; other devices stay torch tensors, on their
device), and the factors come back the same way, in the layer's dtype and on its device.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from ..compress import check_rank_mode, compress_weights
from ..compress.factor import DEFAULT_RIDGE
from ._hooks import eligible_layers
from ._modules import LowRankConv2d, LowRankLinear

__all__ = ["compress", "to_array", "from_array"]

_HALF = (torch.float16, torch.bfloat16)


def to_array(t):
    """An array-API array for the math: detached, conjugate bit resolved, half precision
    upcast to float32; a zero-copy NumPy view on the CPU, the tensor itself elsewhere.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import to_array
    >>> t = torch.ones(2, 3)
    >>> a = to_array(t)
    >>> type(a).__name__, a.dtype
    ('ndarray', dtype('float32'))
    """
    t = t.detach().resolve_conj()
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
    for pname, parent in model.named_modules(remove_duplicate=False):
        for attr, child in parent._modules.items():
            if child is not None:
                refs.setdefault(id(child), []).append((parent, attr))
    return refs


def _low_rank_module(module, B, A):
    W = module.weight
    B, A = from_array(B, like=W), from_array(A, like=W)
    if isinstance(module, nn.Conv2d):
        return LowRankConv2d.from_conv(module, B, A)
    bias = None if module.bias is None else module.bias
    return LowRankLinear.from_factors(B, A, bias)


def compress(model, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None, calibration=None,
             method="rsi", q=2, include=None, exclude=None, rng=None, inplace=False, p=10, split="left",
             ridge=DEFAULT_RIDGE, batch=True):
    """Replace ``nn.Linear`` (and ``nn.Conv2d``) layers by low-rank pairs.

    Each selected layer's weight ``W (out x in)`` (a convolution's kernel flattened to
    ``out x (in kh kw)``) is factored by :func:`randla.compress.factor` and the layer
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
        over the layers (see :func:`randla.compress.compress_weights`).
    calibration : dict, optional
        ``{module_name: G}`` from :func:`calibrate`; every selected layer must have one
        (a missing layer is a ``ValueError``, never a silent plain factorisation). When
        it is a :class:`Calibration` made with ``output=``, the factors minimise the
        K-FAC estimate of the change of that output (``R^H (W - B A) L``, see
        :func:`randla.compress.factor`), and a ``budget`` is spent greedily on
        those spectra, which are comparable across layers, cross-validated over the
        calibration's folds. Without ``output=``, a ``budget`` is spent on relative
        whitened spectra (measured to lose to a uniform ``rank_fraction`` on MiniLM;
        calibrate with ``output=`` for budgets).
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
        Relative ridge of the Gram matrices (see :func:`randla.compress.whitener`).
    batch : bool, default True
        Factor layers of equal shape, dtype, device and rank (the attention
        projections, the FFN matrices of a transformer) by stacked calls, in chunks of
        at most 32 MB of float32 (see :func:`randla.compress.factor_many`); ``False``:
        one call per layer. Seeded results are reproducible either way and agree
        within the error bounds, not bit for bit (one random draw per stacked call).

    Returns
    -------
    model : torch.nn.Module
        The compressed model (``model`` itself when ``inplace``).
    report : randla.compress.Report
        One :class:`randla.compress.LayerReport` per selected layer: shape, rank,
        parameters before/after, estimated normalized error, relative output error
        on the calibration data when calibrated, time.

    Notes
    -----
    Weights are read through DLPack (zero-copy on the CPU) after ``detach()`` and
    ``resolve_conj()``; float16 and bfloat16 weights are upcast to float32 for the math
    and the factors are cast back; factors live on the layer's device. Grouped
    convolutions and the ``nn.Linear`` children of ``nn.MultiheadAttention`` and of
    torch's transformer layers are not selected (see :func:`eligible_layers`). A module reached by several names (shared) is
    replaced everywhere.

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
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol, budget=budget)
    if calibration is not None and not isinstance(calibration, Mapping):
        raise TypeError(f"calibration must be a dict of Gram matrices, got {type(calibration).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    layers = eligible_layers(model, include=include, exclude=exclude)
    if not layers:
        raise ValueError("no nn.Linear or nn.Conv2d layer matches include/exclude")
    weights = {n: to_array(_flat_weight(m)) for n, m in layers}
    grams = output_grams = folds = None
    if calibration is not None:
        grams = _arrays(calibration, weights)
        if getattr(calibration, "output_grams", None) is not None:
            output_grams = _arrays(calibration.output_grams, weights)
        if getattr(calibration, "folds", None) is not None and budget is not None:
            folds = [_arrays(f, weights) for f in calibration.folds]
    factors, report = compress_weights(weights, rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction,
                                       rtol=rtol, budget=budget, grams=grams, output_grams=output_grams, folds=folds,
                                       method=method, q=q, p=p, split=split, ridge=ridge, batch=batch, rng=rng)
    if not inplace:
        memo = {}
        target = copy.deepcopy(model, memo)
    else:
        target = model
    refs = _references(target)
    for name, _ in layers:
        f = factors[name]
        if f.B is None:
            continue
        module = target.get_submodule(name)
        new = _low_rank_module(module, f.B, f.A)
        new.train(module.training)
        for parent, attr in refs[id(module)]:
            setattr(parent, attr, new)
    return target, report
