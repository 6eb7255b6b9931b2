"""Input (and output-gradient) Gram matrices of a model's layers on calibration data."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import _backend as _B
from .. import _validate as V
from ._hooks import eligible_layers, run_with_hooks

__all__ = ["Calibration", "calibrate", "layer_inputs"]


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
    x = as_batch(module, x)
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if module.padding_mode != "zeros" or padding == "same":
            x = F.pad(x, module._reversed_padding_repeated_twice,
                      mode="constant" if module.padding_mode == "zeros" else module.padding_mode)
            padding = 0
        elif padding == "valid":
            padding = 0
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def as_batch(module, t):
    """A layer's input or output with a leading sample dimension: an unbatched one (a
    vector for ``nn.Linear``, ``(C, H, W)`` for ``nn.Conv2d``) as a batch of one."""
    unbatched = t.ndim == 3 if isinstance(module, nn.Conv2d) else t.ndim == 1
    return t.unsqueeze(0) if unbatched else t


def _layer_outputs(module, y):
    """The rows of a layer's output: ``(N, out)`` (channels last for a convolution)."""
    y = as_batch(module, y)
    if isinstance(module, nn.Conv2d):
        return y.movedim(1, -1).reshape(-1, y.shape[1])
    return y.reshape(-1, y.shape[-1])


def fold_rows(module, x, mask, start, folds):
    """A layer's input rows (:func:`layer_inputs`) dealt to ``folds`` parts by sample.

    Samples (the leading dimension of ``x``) go to the folds in turn, the first of
    this batch to fold ``start % folds``; positions where ``mask`` (``(batch, seq)``,
    e.g. an ``attention_mask``) is zero are left out when ``x`` has those leading
    dimensions (never for a convolution).

    Returns
    -------
    rows : list
        Per fold, ``X (N_f x in)`` or ``None`` when no sample of this batch falls in it.
    n_samples : int
        Samples in ``x`` (1 for an unbatched input, see :func:`as_batch`).

    Examples
    --------
    >>> import torch
    >>> from randla.torch._calibration import fold_rows
    >>> lin = torch.nn.Linear(3, 2)
    >>> rows, n = fold_rows(lin, torch.ones(3, 4, 3), torch.tensor([[1, 1, 0, 0]] * 3), 1, 2)
    >>> [r.shape[0] for r in rows], n  # samples 1 -> fold 0, samples 0 and 2 -> fold 1
    ([2, 4], 3)
    """
    x, mask = positions(mask, module, x)
    x = as_batch(module, x)
    n_samples = x.shape[0]
    rows = []
    for f in range(folds):
        first = (f - start) % folds
        if first >= n_samples:  # fewer samples in this batch than folds
            rows.append(None)
            continue
        sel = torch.arange(first, n_samples, folds, device=x.device)
        xf = x.index_select(0, sel)
        if mask is not None:
            xf = xf[mask.to(x.device).index_select(0, sel) != 0]
        rows.append(layer_inputs(module, xf))
    return rows, n_samples


def positions(mask, module, x):
    """``(x, mask)``: a layer's input with the positions ``mask`` (``(batch, seq)``, see
    :func:`batch_mask`) marks, or ``(x, None)`` where it marks none (never for a
    convolution).

    ``x`` of shape ``(batch, seq, ...)`` is taken as it is; ``(batch * seq, d)``, the
    rows a model flattens before a layer (OPT's ``view(-1, d)``: batch-major), is
    viewed as ``(batch, seq, d)``, so that its padding rows are left out and its
    samples are the batch's.
    """
    if mask is None or isinstance(module, nn.Conv2d):
        return x, None
    if x.ndim >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x, mask
    if x.ndim == 2 and x.shape[0] == mask.numel():
        return x.reshape(*mask.shape, x.shape[-1]), mask
    return x, None


def wide(X):
    """``X`` in float64 (complex128 when complex): the precision Gram matrices are summed in."""
    return X.to(torch.complex128 if torch.is_complex(X) else torch.float64)


def column_gram(rows):
    """``X^T conj(X)`` in float64 for the rows ``X (N x d)``: the Gram matrix ``sum x x^H``
    of the rows as column vectors (``X^H X`` for real rows; its conjugate for complex ones).

    A layer computes ``y = W x`` per position (``rows @ W^T``), so ``W - B A`` changes
    its outputs by ``||(W - B A) X^T||_F``, which :func:`~randla.compress.factor.factor` measures
    with ``G = L L^H = X^T conj(X)``.

    Examples
    --------
    >>> import torch
    >>> from randla.torch._calibration import column_gram
    >>> X = torch.tensor([[1j, 0], [0, 2]])
    >>> column_gram(X)[0, 0] == (X.T @ X.conj())[0, 0]
    tensor(True)
    """
    X = wide(rows)
    return X.mT @ X.conj()


def batch_mask(batch, ignore_padding=True):
    """The ``attention_mask`` (``(batch, seq)``) of a mapping batch, or ``None``."""
    mask = batch.get("attention_mask") if ignore_padding and isinstance(batch, Mapping) else None
    return mask if isinstance(mask, torch.Tensor) and mask.ndim == 2 else None


class Calibration(dict):
    """``{layer_name: G}``, input Gram matrices ``sum x x^H`` (see :func:`calibrate`), with
    what else :func:`calibrate` measured.

    Attributes
    ----------
    output_grams : dict or None
        ``{layer_name: H}``, ``H (out x out) = sum g g^H`` over the layer's output
        positions, ``g`` the gradient of ``z . output`` for random ``z ~ N(0, I)``
        (averaged over the probes): Gauss-Newton curvature of ``||output change||^2``
        with respect to the layer's output. ``None`` without ``output``.
    folds : list of dict or None
        Per-fold input Gram matrices (samples assigned to folds in turn), summing to
        the main ones; ``None`` with ``folds=1``.
    errors : dict or None
        ``{layer_name: E}``, ``E[r]`` (NumPy float64, ``r = 0 .. min(out, in)``) the
        per-sample error of truncating the layer at rank ``r`` (``sample_probes``);
        ``None`` otherwise.
    """

    output_grams: dict | None = None
    folds: list | None = None
    errors: dict | None = None


def check_count(value, name):
    """``value`` as an int when it is an integer >= 1 (not a bool), else a ``ValueError``
    naming ``name``."""
    count = V.int_or_none(value)
    if count is None or count < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return count


def calibrate(model, batches, *, include=None, exclude=None, ignore_padding=True, output=None, probes=8, folds=2,
              sample_probes=None, rng=None):
    """Per-layer input Gram matrices ``G = sum x x^H`` on calibration batches (float64).

    Feeds every batch to ``model`` (evaluation mode; each submodule's mode is restored
    afterwards, and the model must not run elsewhere meanwhile: see
    :func:`run_with_hooks`) and accumulates, for each layer
    :func:`compress` can factor (:func:`eligible_layers`), the Gram matrix of the inputs it
    multiplies by its weight (:func:`layer_inputs`), in float64 on the model's device,
    one batch at a time. With ``output``, also the Gram matrices of the output's
    gradients with respect to each layer's output, which let :func:`compress` factor
    and allocate ranks in the units of the model's output change.

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
        (padding tokens) are left out of the input Gram matrices (and of the output-
        gradient ones).
    output : callable, optional
        ``output(model_output, batch) -> tensor (..., d)``: what the compressed model
        must preserve (e.g. normalised sentence embeddings, or logits). Each batch is
        then differentiated ``probes`` times (one backward pass each) and
        ``H_l = E_z[sum g g^H]`` accumulated for ``g = d(z . output) / d(layer output)``,
        ``z ~ N(0, I)`` per row of the output, so that ``tr(R^H dW G dW^H R)``
        (``H = R R^H``) estimates ``sum ||output change||^2`` for a weight change
        ``dW`` [K-FAC].
    probes : int, default 8
        Random probes per batch for the output Gram matrices (one backward pass each).
        The estimate's noise falls with ``probes`` times the number of batches; on
        MiniLM, 8 probes on 2 batches allocated ranks as well as 32 probes on 4, while
        4 probes on 2 batches were clearly worse; on its 4 batches of 128 calibration
        sentences the budgets at the alpha = 0.4 / 0.2 parameter counts gave mean
        embedding cosines 0.923 / 0.749 with 2 probes, 0.937 / 0.806 with 8 and
        0.940 / 0.808 with 32.
    folds : int, default 2
        Calibration samples (the leading dimension of each batch) are dealt to
        ``folds`` parts in turn and a Gram matrix is kept per part, for the cross-
        validated budget allocation of :func:`compress`; ``1`` keeps only the totals
        (memory: ``folds + 1`` Gram matrices per layer).
    sample_probes : int, optional
        With ``output``: a second pass over ``batches`` with this many probes per
        batch, which measures each layer's truncation error per sample (the ``errors``
        attribute; see :func:`~randla.compress.budget.sample_errors`): the change of
        ``z . output`` for each sample, summed over its positions before squaring, so
        errors that add up coherently over the positions that a pooled output averages
        count as such (K-FAC treats positions as independent). With ``folds >= 2`` each fold's
        samples score components fitted without them (held out). :func:`compress`
        then spends a ``budget`` on these curves. Cost: the first pass again with
        ``sample_probes`` backward passes, and an exact SVD per layer and fold.
    rng : None, int or numpy.random.Generator
        Seeds the probes.

    Returns
    -------
    Calibration
        A dict ``{module_name: G}``, ``G`` a float64 tensor ``(in, in)`` (``in kh kw``
        for a convolution) on the model's device, with ``output_grams`` and ``folds``
        attributes; pass it to :func:`compress` as ``calibration``. A layer that never
        ran on the batches is absent. ``G = sum x x^H`` over the input vectors ``x``
        (the rows of :func:`layer_inputs`, ``X``) is ``X^T conj(X)``: ``X^T X`` for a
        real layer, but for a complex layer (complex128) the conjugate of ``X^H X``,
        as the layer computes ``W x`` and :func:`~randla.compress.factor.factor` measures the
        output error ``||(W - B A) X^T||_F`` with ``G = L L^H`` (see
        ``randla.torch._calibration.column_gram``). The output Gram matrices are
        ``sum g g^H`` likewise.

    References
    ----------
    J. Martens, R. Grosse, "Optimizing neural networks with Kronecker-factored
    approximate curvature", ICML 2015.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import calibrate
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> X = torch.randn(32, 4)
    >>> G = calibrate(net, [X[:16], X[16:]])
    >>> sorted(G), G["0"].dtype, torch.allclose(G["0"], X.double().T @ X.double())
    (['0', '2'], torch.float64, True)
    >>> torch.allclose(G.folds[0]["0"] + G.folds[1]["0"], G["0"])
    True
    >>> G = calibrate(net, [X], output=lambda y, batch: y, probes=4, rng=0)
    >>> G.output_grams["2"].shape  # the last layer's output is the output: H ~ probes' identity
    torch.Size([2, 2])

    Per-sample truncation errors for a budget (held out over the 2 folds):

    >>> G = calibrate(net, [X[:16], X[16:]], output=lambda y, batch: y, sample_probes=4, rng=0)
    >>> E = G.errors["2"]  # E[r]: the error at rank r = 0, 1, 2 (none at full rank)
    >>> E.shape, bool(E[0] > E[1] > E[2] == 0.0)
    ((3,), True)
    """
    folds = check_count(folds, "folds")
    probes = check_count(probes, "probes")
    if sample_probes is not None:
        if output is None:
            raise ValueError("sample_probes needs output")
        check_count(sample_probes, "sample_probes")
        if iter(batches) is batches:
            raise ValueError("sample_probes reads batches twice: give a list, not a one-shot iterator")
    if output is not None and not callable(output):
        raise TypeError(f"output must be a callable (model_output, batch) -> tensor, got {type(output).__name__}")
    _B.as_generator(rng)  # checked whether or not output= draws probes
    if output is not None and torch.is_inference_mode_enabled():
        raise ValueError("calibrate(..., output=...) differentiates the model's output, which torch.inference_mode() "
                         "forbids: call it outside inference mode (torch.no_grad() is fine)")
    layers = eligible_layers(model, include=include, exclude=exclude)
    parts = [{} for _ in range(folds)]
    seen = {}
    H = {}
    outs = {}
    state = {"mask": None}

    def accumulate(name, module, x):
        start = seen.get(name, 0)
        # detached: with output=, x is part of the autograd graph, and a Gram matrix built
        # on it would chain every batch's graph into the running sum (memory grew by
        # ~300 MB per MiniLM batch)
        rows, n_samples = fold_rows(module, x.detach(), state["mask"], start, folds)
        seen[name] = start + n_samples
        for f, X in enumerate(rows):
            if X is None:
                continue
            G = column_gram(X)
            parts[f][name] = G if name not in parts[f] else parts[f][name] + G

    def keep_output(name, module, y):
        outs[name] = (module, y)

    gen = None
    if output is not None:
        gen = torch.Generator(device="cpu").manual_seed(int(_B.as_generator(rng).integers(0, 2**62)))

    def differentiate(batch, model_output):
        if output is None:
            return
        y_out = output(model_output, batch)
        if not isinstance(y_out, torch.Tensor) or not y_out.requires_grad:
            raise ValueError("output(model_output, batch) must return a tensor that depends on the model's layers")
        names = [n for n in outs if outs[n][1].requires_grad]
        mask = state["mask"]
        for k in range(probes):
            z = torch.randn(y_out.shape, generator=gen, dtype=torch.float64).to(y_out.device, y_out.dtype)
            grads = torch.autograd.grad(y_out, [outs[n][1] for n in names], grad_outputs=z,
                                        retain_graph=k < probes - 1, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                if mask is not None and g.ndim >= 3 and tuple(g.shape[:2]) == tuple(mask.shape):
                    g = g[mask.to(g.device) != 0]  # padding positions do not reach the output
                rows = _layer_outputs(outs[n][0], g)
                if rows.dtype in (torch.float16, torch.bfloat16):  # a half-precision sum of squares is not PSD
                    rows = wide(rows)
                # sum g g^H (column_gram's convention), one batch in the gradient's precision (GEMM-bound),
                # accumulated in float64
                Hn = wide(rows.mT @ rows.conj()) / probes
                H[n] = Hn if n not in H else H[n] + Hn
        outs.clear()

    def feed():
        for batch in batches:
            state["mask"] = batch_mask(batch, ignore_padding)
            yield batch

    frozen = []
    if output is not None:  # outputs need a graph: differentiate through the layers' own weights
        for _, m in layers:
            for prm in m.parameters(recurse=False):
                if not prm.requires_grad:
                    prm.requires_grad_(True)
                    frozen.append(prm)
    try:
        run_with_hooks(model, feed(), [n for n, _ in layers], on_input=accumulate,
                       on_output=keep_output if output is not None else None, on_batch=differentiate,
                       grad=output is not None)
        result = _totals(layers, parts, folds, H if output is not None else None)
        if sample_probes is not None:
            result.errors = _sample_pass(model, layers, result, batches, output, sample_probes, gen, ignore_padding)
    finally:
        for prm in frozen:
            prm.requires_grad_(False)
    return result


def _totals(layers, parts, folds, H):
    result = Calibration()
    for n, _ in layers:
        present = [p[n] for p in parts if n in p]
        if present:
            result[n] = sum(present[1:], present[0])
    if folds > 1:
        result.folds = [{n: p.get(n, torch.zeros_like(result[n])) for n in result} for p in parts]
    if H is not None:
        result.output_grams = {n: H.get(n, torch.zeros(_out_dim(m), _out_dim(m), dtype=torch.float64,
                                                        device=result[n].device))
                               for n, m in layers if n in result}
    return result


def _sample_pass(model, layers, cal, batches, output, probes, gen, ignore_padding):
    """``{name: E}``: per-sample truncation errors (see ``calibrate(sample_probes=...)``)."""
    from ..compress import sample_errors, truncation_directions
    from ._compress import _flat_weight, to_array

    dirs, errors = {}, {}
    for n, m in layers:
        if n not in cal:
            continue
        k = min(_flat_weight(m).shape)
        errors[n] = np.zeros(k + 1)
        if not bool(torch.any(cal.output_grams[n] != 0)):
            continue  # the output does not depend on the layer: no error at any rank
        W = _flat_weight(m).detach()
        pairs = truncation_directions(to_array(W), gram=to_array(cal[n]), output_gram=to_array(cal.output_grams[n]),
                                      folds=None if cal.folds is None else [to_array(f[n]) for f in cal.folds])
        wide_dtype = torch.complex128 if W.is_complex() else torch.float64  # tails of small components
        dirs[n] = [tuple(torch.as_tensor(a).to(W.device, wide_dtype) for a in pair) for pair in pairs]
    xs, ys, seen = {}, {}, {}
    state = {"mask": None}

    def keep_input(name, module, x):
        xs[name] = x.detach()

    def keep_output(name, module, y):
        ys[name] = (module, y)

    def differentiate(batch, model_output):
        y_out = output(model_output, batch)
        names = [n for n in ys if n in dirs and ys[n][1].requires_grad]
        mask = state["mask"]
        inputs = {}
        for n in names:  # b_i^H x_t per fold, once per batch
            module, (x, pmask) = ys[n][0], positions(mask, ys[n][0], xs[n])
            if pmask is not None:
                x = x * (pmask.to(x.device) != 0).unsqueeze(-1).to(x.dtype)  # padding positions: no error
            x = as_batch(module, x)
            n_samples = x.shape[0]
            X = layer_inputs(module, x)
            start = seen.get(n, 0)
            seen[n] = start + n_samples
            fold = (start + torch.arange(n_samples, device=X.device)) % len(dirs[n])
            Xs = X.reshape(n_samples, -1, X.shape[-1])
            inputs[n] = (fold, [Xs.to(B_.dtype) @ B_.conj() for _, B_ in dirs[n]])
        for p in range(probes):
            z = torch.randn(y_out.shape, generator=gen, dtype=torch.float64).to(y_out.device, y_out.dtype)
            grads = torch.autograd.grad(y_out, [ys[n][1] for n in names], grad_outputs=z,
                                        retain_graph=p < probes - 1, allow_unused=True)
            for n, g in zip(names, grads, strict=True):
                if g is None:
                    continue
                fold, xb = inputs[n]
                gs = _layer_outputs(ys[n][0], g)
                gs = gs.reshape(fold.shape[0], -1, gs.shape[-1])
                for f, ((A, _), xbf) in enumerate(zip(dirs[n], xb, strict=True)):
                    sel = fold == f
                    if not bool(sel.any()):
                        continue
                    d = ((gs[sel].to(A.dtype).conj() @ A) * xbf[sel]).sum(1)  # sum_t (g_t^H a_i)(b_i^H x_t)
                    errors[n] += sample_errors(to_array(d)) / probes
        xs.clear()
        ys.clear()

    def feed():
        for batch in batches:
            state["mask"] = batch_mask(batch, ignore_padding)
            yield batch

    if dirs:
        run_with_hooks(model, feed(), list(dirs), on_input=keep_input, on_output=keep_output, on_batch=differentiate,
                       grad=True)
    return errors


def _out_dim(module):
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
