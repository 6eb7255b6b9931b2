"""Run calibration batches through a model and see the inputs of named submodules.

The one home for feeding data to a model for compression: :func:`calibrate` uses it
for input Gram matrices, neuron pruning uses it to capture activations. A batch is a
tensor (``model(batch)``), a tuple or list of positional arguments
(``model(*batch)``), or a mapping of keyword arguments such as a tokenizer's output
(``model(**batch)``); tensors in it are moved to the model's device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch

from .._validate import name_filter

__all__ = ["select_modules", "eligible_layers", "call_model", "run_with_hooks", "run_with_input_hooks"]


def select_modules(model, types, *, include=None, exclude=None):
    """``[(name, module)]`` of the submodules of ``model`` of the given types, in order.

    Parameters
    ----------
    model : torch.nn.Module
    types : type or tuple of types
        E.g. ``torch.nn.Linear`` or ``(torch.nn.Linear, torch.nn.Conv2d)``.
    include, exclude : str, optional
        Regular expressions searched (``re.search``) in the module names: keep the
        names that match ``include`` and do not match ``exclude``.

    Returns
    -------
    list of (str, torch.nn.Module)

    Examples
    --------
    >>> import torch
    >>> from randla.torch import select_modules
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> [name for name, _ in select_modules(net, torch.nn.Linear, exclude="^2$")]
    ['0']
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    keep = name_filter(include, exclude)
    return [(name, mod) for name, mod in model.named_modules() if isinstance(mod, types) and name and keep(name)]


def eligible_layers(model, *, include=None, exclude=None):
    """``[(name, module)]`` that :func:`compress` and :func:`calibrate` consider.

    ``nn.Linear`` and ``nn.Conv2d`` modules matching ``include``/``exclude``, except
    grouped convolutions, the ``nn.Linear`` children of ``nn.MultiheadAttention``
    and of torch's transformer layers, which read their children's ``weight``
    directly and so cannot take a low-rank pair, and subclasses that override
    ``forward`` (or a convolution's ``_conv_forward``), whose behaviour a low-rank
    pair would lose. A subclass that keeps the parent's computation is eligible.
    ``model`` itself must not be an ``nn.Linear`` or ``nn.Conv2d`` (``TypeError``):
    nothing could hold its replacement.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import eligible_layers
    >>> model = torch.nn.Sequential(torch.nn.TransformerEncoderLayer(16, 2, 32), torch.nn.Linear(16, 4))
    >>> [n for n, _ in eligible_layers(model)]
    ['1']
    """
    if isinstance(model, (torch.nn.Linear, torch.nn.Conv2d)):
        raise TypeError(f"model is itself a layer ({type(model).__name__}), which has no parent to take its "
                        f"low-rank replacement: pass a module that contains it, e.g. torch.nn.Sequential(layer), "
                        f"or factor its weight with randla.compress.factor")
    owners = (torch.nn.MultiheadAttention, torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)
    fixed = {id(c) for m in model.modules() if isinstance(m, owners) for c in m.modules() if c is not m}
    layers = [(n, m) for n, m in select_modules(model, (torch.nn.Linear, torch.nn.Conv2d), include=include,
                                                exclude=exclude)
              if not (isinstance(m, torch.nn.Conv2d) and m.groups != 1) and id(m) not in fixed and _plain(m)]
    for name, m in layers:
        check_materialised(name, m)
    return layers


def check_materialised(name, module):
    """A ``ValueError`` naming ``name`` where the module's weight holds no data (the meta
    device, or a lazy module not yet run), which no factorisation can read."""
    w = module.weight
    if isinstance(w, torch.nn.parameter.UninitializedParameter) or w.is_meta:
        raise ValueError(f"{name!r} has no weight data ({'meta device' if w.is_meta else 'uninitialized'}): "
                         f"materialise the model first (run a lazy module once, or to_empty() and load the weights)")


def check_untied(model, layers, what="compress", advice="leave the layer out (exclude=...)"):
    """A ``ValueError`` naming the first of ``layers`` (``[(name, module)]``) whose weight
    is also a parameter of another module (tied weights, e.g. an output head sharing the
    embedding matrix): replacing or resizing the layer would silently untie them, and
    the model would grow while the report counts a saving. The same module reached by
    several names is one module."""
    owners = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            owners.setdefault(id(p), {}).setdefault(id(mod), mname)
    for name, m in layers:
        others = [n for mid, n in owners.get(id(m.weight), {}).items() if mid != id(m)]
        if others:
            raise ValueError(f"{name!r} shares its weight with {others[0]!r} (tied weights): {what} would untie "
                             f"them; {advice} or untie the weights first")


def _plain(module):
    """True when ``module`` computes what its ``nn.Linear`` / ``nn.Conv2d`` base does."""
    base = torch.nn.Conv2d if isinstance(module, torch.nn.Conv2d) else torch.nn.Linear
    methods = ("forward", "_conv_forward") if base is torch.nn.Conv2d else ("forward",)
    return all(getattr(type(module), k) is getattr(base, k) for k in methods)


def _device(model):
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return None


def _to(x, device):
    if device is not None and isinstance(x, torch.Tensor):
        return x.to(device)
    return x


def call_model(model, batch):
    """``model(batch)``, ``model(*batch)`` or ``model(**batch)`` by the batch's type.

    Parameters
    ----------
    model : torch.nn.Module
    batch : torch.Tensor, tuple, list or mapping
        Tensors inside are moved to the device of the model's first parameter.

    Returns
    -------
    The model's output.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import call_model
    >>> net = torch.nn.Linear(3, 2)
    >>> call_model(net, torch.ones(5, 3)).shape, call_model(net, {"input": torch.ones(1, 3)}).shape
    (torch.Size([5, 2]), torch.Size([1, 2]))
    """
    device = _device(model)
    if isinstance(batch, torch.Tensor):
        return model(_to(batch, device))
    if isinstance(batch, Mapping):
        return model(**{k: _to(v, device) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return model(*[_to(v, device) for v in batch])
    raise TypeError(f"a batch must be a tensor, a tuple/list of positional arguments or a mapping of keyword "
                    f"arguments, got {type(batch).__name__}")


def run_with_hooks(model, batches: Iterable, names, *, on_input: Callable | None = None,
                   on_output: Callable | None = None, on_batch: Callable | None = None, grad=False):
    """Feed ``batches`` to ``model`` with hooks on named submodules; the general form of
    :func:`run_with_input_hooks`.

    Parameters
    ----------
    model : torch.nn.Module
    batches : iterable of batches (see :func:`call_model`)
    names : iterable of str
    on_input : callable, optional
        ``on_input(name, module, x)`` before each call of a named submodule, ``x`` its
        first input (detached unless ``grad``).
    on_output : callable, optional
        ``on_output(name, module, y)`` after each call, ``y`` its output as is (part of
        the autograd graph when ``grad``).
    on_batch : callable, optional
        ``on_batch(batch, output)`` after each forward pass, e.g. to differentiate the
        output with respect to outputs collected by ``on_output``.
    grad : bool, default False
        Run under ``torch.enable_grad()`` instead of ``torch.no_grad()``.

    Returns
    -------
    int
        The number of batches fed.

    Notes
    -----
    The model runs in evaluation mode; afterwards every submodule is back in the
    mode it had (a model in training mode with frozen BatchNorm or dropout layers
    in evaluation mode stays so). The hooks sit on the model's own submodules:
    while one call runs, the model must not run anything else, from this thread
    or another (the hooks would collect those activations too).

    Examples
    --------
    >>> import torch
    >>> from randla.torch import run_with_hooks
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> shapes = []
    >>> run_with_hooks(net, [torch.randn(5, 4)], ["0"], on_output=lambda n, m, y: shapes.append(tuple(y.shape)))
    1
    >>> shapes
    [(5, 8)]
    """
    modules = dict(model.named_modules())
    names = list(names)
    for n in names:
        if n not in modules or not n:
            raise ValueError(f"{n!r} is not a submodule of the model")

    def pre_hook(name):
        def hook(module, args, kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            on_input(name, module, x if grad else x.detach())

        return hook

    def post_hook(name):
        def hook(module, args, output):
            on_output(name, module, output)

        return hook

    handles = []
    modes = [(module, module.training) for module in model.modules()]
    count = 0
    try:
        for n in names:
            if on_input is not None:
                handles.append(modules[n].register_forward_pre_hook(pre_hook(n), with_kwargs=True))
            if on_output is not None:
                handles.append(modules[n].register_forward_hook(post_hook(n)))
        model.eval()
        with torch.enable_grad() if grad else torch.no_grad():
            for batch in batches:
                output = call_model(model, batch)
                if on_batch is not None:
                    on_batch(batch, output)
                count += 1
    finally:
        for h in handles:
            h.remove()
        for module, training in modes:
            module.training = training
    if count == 0:
        raise ValueError("batches is empty")
    return count


def run_with_input_hooks(model, batches: Iterable, names, callback: Callable, *, grad=False):
    """Feed ``batches`` to ``model``; call ``callback(name, module, x)`` on every call of a
    named submodule, ``x`` its (first) input tensor.

    Forward-pre-hooks are registered on the named submodules for the duration of the
    call and always removed; the model runs in evaluation mode (its previous mode is
    restored) and under ``torch.no_grad()`` unless ``grad``.

    Parameters
    ----------
    model : torch.nn.Module
    batches : iterable of batches
        Each a tensor, a tuple/list of positional arguments or a mapping of keyword
        arguments (see :func:`call_model`).
    names : iterable of str
        Submodule names as in ``model.named_modules()``.
    callback : callable
        ``callback(name, module, x)``; ``x`` is detached unless ``grad``. A submodule
        called several times per batch (weight sharing) calls it each time.
    grad : bool, default False

    Returns
    -------
    int
        The number of batches fed.

    Raises
    ------
    ValueError
        A name that is not a submodule of ``model``; no batches.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import run_with_input_hooks
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> seen = []
    >>> run_with_input_hooks(net, [torch.randn(5, 4), torch.randn(3, 4)], ["2"],
    ...                      lambda name, mod, x: seen.append((name, tuple(x.shape))))
    2
    >>> seen
    [('2', (5, 8)), ('2', (3, 8))]
    """
    return run_with_hooks(model, batches, names, on_input=callback, grad=grad)
