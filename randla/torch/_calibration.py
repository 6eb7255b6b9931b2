"""Input Gram matrices of a model's layers on calibration data."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._hooks import run_with_input_hooks, select_modules

__all__ = ["calibrate", "layer_inputs"]


def layer_inputs(module, x):
    """The rows the layer multiplies by its (flattened) weight: ``X (N x in)``.

    ``nn.Linear``: every leading position of ``x (..., in)``. ``nn.Conv2d``: the
    unfolded patches ``(N L) x (in kh kw)`` with the layer's padding, stride and
    dilation, so that ``W.reshape(out, -1) @ X^T`` is the convolution.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import layer_inputs
    >>> conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    >>> layer_inputs(conv, torch.randn(2, 3, 5, 5)).shape
    torch.Size([50, 27])
    """
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        else:
            padding = module.padding
        if isinstance(padding, str):  # "same"/"valid": the same pad as the convolution's own
            if padding == "valid":
                padding = 0
            else:
                x = F.pad(x, module._reversed_padding_repeated_twice)
                padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def calibrate(model, batches, *, include=None, exclude=None, ignore_padding=True):
    """Per-layer input Gram matrices ``G = X^H X`` on calibration batches (float64).

    Feeds every batch to ``model`` (evaluation mode, no gradients) and accumulates, for
    each selected ``nn.Linear`` and ``nn.Conv2d`` (``groups == 1``), the Gram matrix of
    the inputs it multiplies by its weight (:func:`layer_inputs`), in float64 on the
    model's device, one batch at a time.

    Parameters
    ----------
    model : torch.nn.Module
    batches : iterable
        Each batch a tensor, a tuple of positional arguments or a mapping of keyword
        arguments such as a tokenizer's output (see :func:`call_model`).
    include, exclude : str, optional
        Regular expressions on module names (``re.search``).
    ignore_padding : bool, default True
        When a batch is a mapping with an ``attention_mask`` of shape ``(batch, seq)``
        and a layer's input has those leading dimensions, positions with a zero mask
        (padding tokens) are left out of the Gram matrices.

    Returns
    -------
    dict
        ``{module_name: G}``, ``G`` a float64 tensor ``(in, in)`` (``in kh kw`` for a
        convolution) on the model's device; pass it to :func:`compress` as
        ``calibration``.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import calibrate
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> X = torch.randn(32, 4)
    >>> G = calibrate(net, [X[:16], X[16:]])
    >>> sorted(G), G["0"].dtype, torch.allclose(G["0"], X.double().T @ X.double())
    (['0', '2'], torch.float64, True)
    """
    layers = [(n, m) for n, m in select_modules(model, (nn.Linear, nn.Conv2d), include=include, exclude=exclude)
              if not (isinstance(m, nn.Conv2d) and m.groups != 1)]
    grams = {}
    state = {"mask": None}

    def accumulate(name, module, x):
        mask = state["mask"]
        if mask is not None and x.ndim >= 3 and tuple(x.shape[:2]) == tuple(mask.shape) \
                and not isinstance(module, nn.Conv2d):
            x = x[mask.to(x.device) != 0]
        X = layer_inputs(module, x).to(torch.float64)
        if torch.is_complex(x):
            X = X.to(torch.complex128)
        G = X.mH @ X
        grams[name] = G if name not in grams else grams[name] + G

    def feed():
        for batch in batches:
            mask = batch.get("attention_mask") if ignore_padding and isinstance(batch, Mapping) else None
            state["mask"] = mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None
            yield batch

    run_with_input_hooks(model, feed(), [n for n, _ in layers], accumulate)
    return grams
