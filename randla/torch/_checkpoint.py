"""Low-rank models on disk: :func:`save_lowrank` and :func:`load_lowrank`.

The format is randla's checkpoint format (see :mod:`randla.compress.checkpoint`): a
:class:`LowRankLinear` named ``NAME`` is stored as ``NAME.lowrank_A`` (r x in) and
``NAME.lowrank_B`` (out x r), which is simply its state dict; every other tensor keeps
its name. ``randla compress`` writes the same layout, so a checkpoint compressed on the
command line loads into the model's ordinary (dense) definition.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..compress.checkpoint import open_checkpoint, write_checkpoint
from ._compress import _references, inherit_state
from ._modules import LowRankConv2d, LowRankLinear

__all__ = ["save_lowrank", "load_lowrank"]

_SUFFIX_A, _SUFFIX_B = ".lowrank_A", ".lowrank_B"


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU NumPy view (bfloat16 as ``ml_dtypes.bfloat16``) of a detached tensor."""
    t = t.detach().resolve_conj().resolve_neg().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def _to_torch(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _ranks(model):
    return {n: m.rank for n, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, (LowRankLinear, LowRankConv2d))}


def save_lowrank(model: nn.Module, path, *, max_shard_size=None):
    """Save a (compressed) model's state dict as a randla checkpoint.

    Parameters
    ----------
    model : torch.nn.Module
        Typically the result of :func:`randla.torch.compress`: each
        :class:`LowRankLinear` / :class:`LowRankConv2d` is saved as its
        ``lowrank_A`` / ``lowrank_B`` (and ``bias``), every other tensor as it is.
    path : str or Path
        A ``.safetensors`` file, or a folder (sharded as Hugging Face does).
    max_shard_size : int or str, optional
        Folder output only (default ``"5GB"``).

    Returns
    -------
    list of Path
        The files written.

    Notes
    -----
    Tensors are written one shard at a time through temporary files renamed at the
    end. The ``randla`` metadata records the rank of every low-rank layer. Tensors
    that share storage (tied weights) are written under each of their names.

    Examples
    --------
    >>> import os, tempfile, torch
    >>> from randla.torch import compress, save_lowrank, load_lowrank
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> small, _ = compress(net, rank=8, rng=0)
    >>> path = os.path.join(tempfile.mkdtemp(), "small.safetensors")
    >>> _ = save_lowrank(small, path)
    >>> fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    >>> fresh = load_lowrank(fresh, path)
    >>> type(fresh[0]).__name__, fresh[0].rank
    ('LowRankLinear', 8)
    >>> x = torch.randn(4, 64)
    >>> torch.equal(fresh(x), small(x))
    True
    """
    from ..compress.pipeline import FORMAT_VERSION

    state = model.state_dict()
    ranks = _ranks(model)

    def metadata(names):
        layers = sorted({n[: -len(_SUFFIX_A)] for n in names if n.endswith(_SUFFIX_A)})
        return {"format": "pt", "randla": {"version": FORMAT_VERSION, "ranks": {m: ranks.get(m) for m in layers}}}

    return write_checkpoint(path, ((n, _to_numpy(t)) for n, t in state.items()), metadata=metadata,
                            max_shard_size=max_shard_size)


def _low_rank_like(module, name, shape_A, shape_B):
    """An empty low-rank module replacing ``module`` for factors of the given shapes."""
    rank = shape_A[0]
    if isinstance(module, (LowRankLinear, nn.Linear)):
        expect_A, expect_B = (rank, module.in_features), (module.out_features, rank)
        if shape_A != expect_A or shape_B != expect_B:
            raise ValueError(f"factors of {name!r} are {shape_B} @ {shape_A}, which do not fit "
                             f"{type(module).__name__}(in_features={module.in_features}, "
                             f"out_features={module.out_features})")
        ref = module.lowrank_A if isinstance(module, LowRankLinear) else module.weight
        # skip_init: the checkpoint's values replace any initial ones, so none are drawn
        # (a draw would advance torch's global generator)
        new = nn.utils.skip_init(LowRankLinear, module.in_features, module.out_features, rank,
                                 bias=module.bias is not None, device=ref.device, dtype=ref.dtype)
        return inherit_state(new, module)
    if isinstance(module, (LowRankConv2d, nn.Conv2d)):
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            raise ValueError(f"{name!r} is a grouped convolution; its factors cannot be loaded")
        inp, out = (module.in_channels, module.out_channels)
        expect_A, expect_B = (rank, inp, *module.kernel_size), (out, rank)
        if shape_A != expect_A or shape_B != expect_B:
            raise ValueError(f"factors of {name!r} are {shape_B} @ {shape_A}, which do not fit a convolution "
                             f"{inp} -> {out} with kernel {tuple(module.kernel_size)}")
        ref = module.lowrank_A if isinstance(module, LowRankConv2d) else module.weight
        new = nn.utils.skip_init(LowRankConv2d, inp, out, module.kernel_size, rank, stride=module.stride,
                                 padding=module.padding, dilation=module.dilation, bias=module.bias is not None,
                                 padding_mode=module.padding_mode, device=ref.device, dtype=ref.dtype)
        return inherit_state(new, module)
    raise ValueError(f"the checkpoint factors {name!r}, but the model's {name!r} is a {type(module).__name__} "
                     f"(only Linear and Conv2d layers take low-rank factors)")


def _unsaved_buffers(model):
    """``{name: tensor}`` of the non-persistent buffers (left out of ``state_dict``)."""
    out = {}
    for mname, module in model.named_modules():
        for b in getattr(module, "_non_persistent_buffers_set", ()):
            if module._buffers.get(b) is not None:
                out[f"{mname}.{b}" if mname else b] = module._buffers[b]
    return out


def _listing(keys, n=3):
    keys = sorted(keys)
    more = f" and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(map(repr, keys[:n])) + more


def load_lowrank(model: nn.Module, path, *, strict: bool = True) -> nn.Module:
    """Load a randla checkpoint into a model, swapping in low-rank layers where factors are stored.

    Parameters
    ----------
    model : torch.nn.Module
        The model's ordinary (dense) definition, or an already low-rank one. Modified
        in place: every ``nn.Linear`` (``nn.Conv2d``) ``NAME`` for which the checkpoint
        holds ``NAME.lowrank_A`` and ``NAME.lowrank_B`` becomes a
        :class:`LowRankLinear` (:class:`LowRankConv2d`) of the stored rank, on the
        layer's device and in its dtype, in its training mode and with its
        ``requires_grad``; then every tensor is copied in. A module reached by several
        names (shared) is replaced by one low-rank module everywhere.
    path : str or Path
        A ``.safetensors`` file or a sharded folder, as written by :func:`save_lowrank`
        or ``randla compress``.
    strict : bool, default True
        A key of the model missing from the checkpoint, or a tensor of the checkpoint
        the model does not have, is an error; ``False`` loads the keys both have (and
        skips the factors of modules the model does not have). A
        tensor matching one of the model's non-persistent buffers (which ``state_dict``
        leaves out, such as Hugging Face's ``position_ids``) is loaded into it.

    Returns
    -------
    torch.nn.Module
        ``model``.

    Raises
    ------
    ValueError
        Missing or unexpected keys (strict), factors for a module that is not a Linear
        or Conv2d or does not fit them, a tensor whose shape differs from the model's.
    randla.compress.checkpoint.CheckpointError
        The file cannot be read.

    Notes
    -----
    Tensors are read one at a time (memory-mapped) and copied into the parameters, so
    loading needs no second copy of the model. Nothing is unpickled.

    Examples
    --------
    See :func:`save_lowrank`.
    """
    with open_checkpoint(path) as ckpt:
        specs = ckpt.specs
        factored = [n[: -len(_SUFFIX_A)] for n in specs if n.endswith(_SUFFIX_A)]
        lonely = [n for n in specs if n.endswith(_SUFFIX_B) and n[: -len(_SUFFIX_B)] not in factored]
        if lonely:
            raise ValueError(f"{path}: {lonely[0]!r} has no matching {_SUFFIX_A}")
        modules = dict(model.named_modules(remove_duplicate=False))  # a shared module under each name
        new, by_id = {}, {}  # everything is checked before the model is touched
        for name in factored:
            if name + _SUFFIX_B not in specs:
                raise ValueError(f"{path}: {name + _SUFFIX_A!r} has no matching {_SUFFIX_B}")
            if name not in modules:
                if not strict:
                    continue  # its factors are unexpected keys
                raise ValueError(f"{path}: the checkpoint factors {name!r}, but the model has no such module")
            module = _low_rank_like(modules[name], name, specs[name + _SUFFIX_A].shape,
                                    specs[name + _SUFFIX_B].shape)
            # a shared module: one replacement for all its names (factors of another rank do not fit it)
            new[name] = by_id.setdefault(id(modules[name]), module)
            if new[name].rank != module.rank:
                raise ValueError(f"{path}: {name!r} is shared with a module factored at rank {new[name].rank}, "
                                 f"but its own factors have rank {module.rank}")
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        for name, module in new.items():
            for k in [k for k in shapes if k.startswith(name + ".")]:
                del shapes[k]
            shapes.update({f"{name}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
        # buffers the model keeps but does not save (e.g. position ids) are not unexpected: they are loaded
        extra = {k: v for k, v in _unsaved_buffers(model).items() if k in specs}
        missing, unexpected = set(shapes) - set(specs), set(specs) - set(shapes) - set(extra)
        shapes.update({k: tuple(v.shape) for k, v in extra.items()})
        if strict and (missing or unexpected):
            parts = [f"missing {_listing(missing)}"] if missing else []
            parts += [f"unexpected {_listing(unexpected)}"] if unexpected else []
            raise ValueError(f"{path} does not match the model: {'; '.join(parts)} (strict=False loads the keys "
                             f"both have)")
        for k in set(shapes) & set(specs):
            if shapes[k] != specs[k].shape:
                raise ValueError(f"{path}: {k!r} has shape {specs[k].shape}, the model's {shapes[k]}")
        refs = _references(model)
        for name, module in new.items():
            for parent, attr in refs.get(id(modules[name]), []):
                setattr(parent, attr, module)
        state = {**model.state_dict(keep_vars=True), **extra}
        with torch.no_grad():
            for k in specs:
                if k in state:
                    state[k].copy_(_to_torch(ckpt.load(k)))
    return model
