"""Safetensors checkpoints on disk: single files and sharded folders.

A checkpoint is either one ``.safetensors`` file or a folder holding
``model-0000i-of-0000N.safetensors`` shards and ``model.safetensors.index.json``
(``{"metadata": {"total_size": ...}, "weight_map": {name: shard}}``), as Hugging Face
writes them (a folder may also hold a single ``model.safetensors``).

- :func:`open_checkpoint` reads tensor by tensor from memory-mapped files
  (``safetensors.safe_open``); nothing is ever unpickled.
- :func:`write_checkpoint` writes shard by shard (memory bounded by one shard, planned
  by ``huggingface_hub.split_state_dict_into_shards_factory`` from the tensors' sizes),
  each file first to a temporary name beside its target, renamed when all are written.
- :func:`save_grams` / :func:`load_grams`: per-layer input Gram matrices (calibration
  files for the whitened factorisation).

Tensors are NumPy arrays; bfloat16 comes from ``ml_dtypes``. Every problem with a file
or an option raises :class:`CheckpointError` (a ``ValueError``) with a one-line message.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "CheckpointError",
    "TensorSpec",
    "Checkpoint",
    "open_checkpoint",
    "write_checkpoint",
    "plan_shards",
    "parse_size",
    "check_output",
    "save_grams",
    "load_grams",
    "Grams",
    "randla_metadata",
    "FLOAT_DTYPES",
    "INDEX_NAME",
    "SINGLE_NAME",
]

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")  # dtypes whose weights can be factored
_SHARD_PATTERN = "model{suffix}.safetensors"


class CheckpointError(ValueError):
    """A checkpoint file, folder or option is unusable; the message is one line."""


class TensorSpec(NamedTuple):
    """Shape and NumPy dtype of one tensor (no data)."""

    shape: tuple
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _safe_open(safe_open, path):
    try:
        return safe_open(str(path), framework="numpy", backend="pread")
    except TypeError:  # safetensors < 0.8 has no backend option
        return safe_open(str(path), framework="numpy")


def _open_file(path: Path, stack: ExitStack):
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        return stack.enter_context(_safe_open(safe_open, path))
    except SafetensorError as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or exc})") from None


class Checkpoint:
    """An open checkpoint: names, shapes and dtypes at once, data on request.

    Use :func:`open_checkpoint`; close it (or use ``with``) to release the mappings.

    Attributes
    ----------
    path : Path
        The file or folder given.
    files : list of Path
        The safetensors files (one, or the shards in order).
    specs : dict
        ``name -> TensorSpec`` in file order (shard by shard, by offset within a file).
    metadata : dict
        The string metadata of the first file (``{}`` when absent).
    """

    def __init__(self, path, files, handles, specs, owner, metadata, stack):
        self.path, self.files, self.specs, self.metadata = path, files, specs, metadata
        self._handles, self._owner, self._stack = handles, owner, stack

    @property
    def sharded(self) -> bool:
        return len(self.files) > 1 or self.path.is_dir() and (self.path / INDEX_NAME).is_file()

    def load(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a NumPy array of its own (the file is not kept mapped).

        Each call opens the file afresh (``pread`` where safetensors offers it, else a
        memory map released with the handle), so pages read for one tensor do not stay
        resident while the next is processed: memory follows the tensor, not the file.
        """
        from safetensors import SafetensorError, safe_open

        f = self.files[self._owner[name]]
        try:
            with _safe_open(safe_open, f) as h:
                return h.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{f}: tensor {name!r} cannot be read ({exc})") from None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _dtype(code: str, where: str) -> np.dtype:
    import ml_dtypes

    table = {"F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
             "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8,
             "U16": np.uint16, "U32": np.uint32, "U64": np.uint64, "BOOL": np.bool_, "C64": np.complex64,
             "C128": np.complex128}
    if code not in table:
        raise CheckpointError(f"{where}: unsupported dtype {code} (supported: {', '.join(table)})")
    return np.dtype(table[code])


def _resolve_files(path: Path) -> tuple[list[Path], dict | None]:
    """The safetensors files of ``path`` and the index's weight map (None for one file)."""
    if path.is_dir():
        if (path / INDEX_NAME).is_file():
            path = path / INDEX_NAME
        elif (path / SINGLE_NAME).is_file():
            return [path / SINGLE_NAME], None
        else:
            raise CheckpointError(f"{path}: folder holds neither {INDEX_NAME} nor {SINGLE_NAME}")
    elif not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.name.endswith(".json"):
        try:
            index = json.loads(path.read_text(encoding="utf-8"))
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict) or not weight_map:
                raise TypeError
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path}: not a safetensors index (a JSON object with a 'weight_map')") from None
        names = list(dict.fromkeys(weight_map.values()))
        for n in names:
            if not isinstance(n, str) or Path(n).name != n or n in (".", ".."):
                raise CheckpointError(f"{path}: shard name {n!r} is not a plain file name")
        return [path.parent / n for n in names], weight_map
    return [path], None


def open_checkpoint(path) -> Checkpoint:
    """Open a ``.safetensors`` file, a sharded folder (or its index file) for reading.

    Only the headers are read here; :meth:`Checkpoint.load` reads one tensor at a time
    from the memory-mapped file.

    Parameters
    ----------
    path : str or Path
        A ``.safetensors`` file, a folder with ``model.safetensors.index.json`` (or
        ``model.safetensors``), or the index file itself.

    Returns
    -------
    Checkpoint

    Raises
    ------
    CheckpointError
        Missing file, truncated or non-safetensors file, an index that does not match
        its shards, a tensor of an unsupported dtype.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> from randla.compress.checkpoint import open_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save_file({"fc.weight": np.ones((3, 2), np.float32)}, path)
    >>> with open_checkpoint(path) as ckpt:
    ...     print(ckpt.specs["fc.weight"].shape, ckpt.load("fc.weight").sum())
    (3, 2) 6.0
    """
    path = Path(path)
    files, weight_map = _resolve_files(path)
    stack = ExitStack()
    try:
        handles, specs, owner = [], {}, {}
        for i, f in enumerate(files):
            h = _open_file(f, stack)
            handles.append(h)
            keys = h.offset_keys() if hasattr(h, "offset_keys") else h.keys()
            for name in keys:
                if name in specs:
                    raise CheckpointError(f"{f}: tensor {name!r} also appears in {files[owner[name]].name}")
                if weight_map is not None and weight_map.get(name) != f.name:
                    raise CheckpointError(f"{f}: holds {name!r}, which the index places in {weight_map.get(name)!r}")
                sl = h.get_slice(name)
                specs[name] = TensorSpec(tuple(int(s) for s in sl.get_shape()), _dtype(sl.get_dtype(), f"{f}: {name}"))
                owner[name] = i
        if weight_map is not None:
            missing = [n for n in weight_map if n not in specs]
            if missing:
                raise CheckpointError(f"{path}: the index lists {missing[0]!r} (and {len(missing) - 1} more), "
                                      f"absent from its shard")
        metadata = dict(handles[0].metadata() or {})
        return Checkpoint(path, files, handles, specs, owner, metadata, stack)
    except BaseException:
        stack.close()
        raise


_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}  # decimal, as Hugging Face's max_shard_size


def parse_size(size) -> int:
    """``"500MB"``, ``"5GB"``, ``"1.5GB"`` or a number of bytes -> a positive int.

    Examples
    --------
    >>> from randla.compress.checkpoint import parse_size
    >>> parse_size("500MB"), parse_size(1024), parse_size("2kb")
    (500000000, 1024, 2000)
    """
    n = None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        n = int(size)
    elif isinstance(size, str):
        text = size.strip().upper()
        try:
            n = int(text) if text.isdigit() else int(float(text[:-2]) * _UNITS[text[-2:]])
        except (KeyError, ValueError, OverflowError):  # OverflowError: "infKB", "1e400MB"
            n = None
    if n is None or n <= 0:
        raise CheckpointError(f"max shard size must be a positive number of bytes or a size such as 500MB or 5GB, "
                              f"got {size!r}")
    return n


def plan_shards(specs: Mapping[str, TensorSpec], max_shard_size) -> dict[str, list[str]]:
    """Shard file name -> tensor names, in order (Hugging Face's greedy plan by sizes).

    One shard is named ``model.safetensors``; several are
    ``model-0000i-of-0000N.safetensors``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.checkpoint import TensorSpec, plan_shards
    >>> specs = {f"w{i}": TensorSpec((250, 1000), np.dtype(np.float32)) for i in range(3)}
    >>> plan_shards(specs, "2MB")
    {'model-00001-of-00002.safetensors': ['w0', 'w1'], 'model-00002-of-00002.safetensors': ['w2']}
    """
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory(
        dict(specs), get_storage_size=lambda s: s.nbytes, filename_pattern=_SHARD_PATTERN,
        max_shard_size=parse_size(max_shard_size))
    if not split.filename_to_tensors:  # an empty checkpoint is still one (empty) file
        return {SINGLE_NAME: []}
    return split.filename_to_tensors


def _is_single_file(path: Path) -> bool:
    return path.suffix == ".safetensors"


def check_output(out, inputs: Iterable = ()) -> Path:
    """Validate an output target before any work: never an input, writable, no stale shards.

    ``out`` ending in ``.safetensors`` is a single file (replaced if it exists); anything
    else is a folder (created if needed) that must not already hold a checkpoint, so
    that shards of an older checkpoint can never mix with new ones.
    """
    out = Path(out)
    protected = set()
    for p in inputs:
        p = Path(p)
        protected.add(p.resolve())
        if p.is_dir():
            protected.update(q.resolve() for q in p.iterdir())
    target = out.resolve()
    if target in protected or (not _is_single_file(out) and any(q.parent == target for q in protected)):
        raise CheckpointError(f"{out}: refusing to overwrite the input; choose another output")
    if _is_single_file(out):
        folder = out.parent
        if out.is_dir():
            raise CheckpointError(f"{out}: is a folder; a single-file output needs a file name")
    else:
        if out.exists() and not out.is_dir():
            raise CheckpointError(f"{out}: exists and is not a folder (a file output must end in .safetensors)")
        if out.is_dir() and any(q.name == INDEX_NAME or q.suffix == ".safetensors" for q in out.iterdir()):
            raise CheckpointError(f"{out}: already holds a checkpoint; remove it or choose another folder")
        folder = out if out.is_dir() else _existing_parent(out)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".randla-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(f"{folder}: cannot write there ({exc.strerror or exc})") from None
    return out


def _existing_parent(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _file_metadata(metadata, names) -> dict[str, str] | None:
    meta = metadata(names) if callable(metadata) else metadata
    if meta is None:
        return None
    return {str(k): v if isinstance(v, str) else json.dumps(v, sort_keys=True) for k, v in meta.items()}


def write_checkpoint(path, tensors: Iterable, *, metadata=None, max_shard_size=None) -> list[Path]:
    """Write tensors to a ``.safetensors`` file or a sharded folder, shard by shard.

    Parameters
    ----------
    path : str or Path
        Ending in ``.safetensors``: one file (everything is held until it is
        written). Otherwise a folder (created if needed): ``model.safetensors`` when
        everything fits in one shard, else ``model-0000i-of-0000N.safetensors`` plus
        ``model.safetensors.index.json``.
    tensors : iterable of (name, numpy.ndarray)
        Best a generator producing the tensors one at a time: a shard is written as
        soon as it is complete, so at most one shard (plus one tensor larger than a
        shard) is held, and sizes need not be known in advance (ranks found from a
        tolerance).
    metadata : dict or callable, optional
        String metadata for the files' headers (non-string values are stored as
        JSON), or ``metadata(names) -> dict`` to describe the tensors of each file;
        the index's ``metadata`` gets ``metadata(all names)`` beside ``total_size``.
    max_shard_size : int or str, optional
        ``"5GB"``, ``"500MB"`` or bytes; folders only (default ``"5GB"``, as Hugging Face).

    Returns
    -------
    list of Path
        The files written (the index last, when there is one).

    Notes
    -----
    The shards are Hugging Face's plan (``split_state_dict_into_shards_factory`` on the
    sizes in order): the plan of the tensors seen so far is recomputed as each arrives;
    all its shards but the last are final (a greedy plan only ever appends), so they
    are written then. Every file is written under a temporary name beside its target
    and renamed only when all are complete; on any error the temporary files (and the
    folders this call created) are removed, so a failed write leaves nothing behind.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from randla.compress.checkpoint import write_checkpoint, open_checkpoint
    >>> W = {f"layer{i}.weight": np.full((100, 100), i, np.float32) for i in range(3)}
    >>> out = os.path.join(tempfile.mkdtemp(), "sharded")
    >>> files = write_checkpoint(out, W.items(), max_shard_size=50_000)
    >>> [p.name for p in files][::3]
    ['model-00001-of-00003.safetensors', 'model.safetensors.index.json']
    >>> with open_checkpoint(out) as ckpt:
    ...     print(ckpt.load("layer2.weight")[0, 0])
    2.0
    """
    from safetensors.numpy import save_file

    path = Path(path)
    single = _is_single_file(path)
    if single and max_shard_size is not None:
        raise CheckpointError(f"{path}: a single .safetensors file cannot be sharded; give a folder as output "
                              f"to use a maximum shard size")
    limit = None if single else parse_size("5GB" if max_shard_size is None else max_shard_size)
    folder = path.parent if single else path
    created = None
    if not folder.exists():
        created = _existing_parent(folder)
        try:
            folder.mkdir(parents=True)
        except OSError as exc:
            raise CheckpointError(f"{folder}: cannot create ({exc.strerror or exc})") from None
    umask = os.umask(0)
    os.umask(umask)
    mode = 0o666 & ~umask
    specs: dict[str, TensorSpec] = {}
    pending: dict[str, np.ndarray] = {}
    written: list[tuple[Path, list[str]]] = []  # (temporary file, its tensors), in shard order
    temps: list[Path] = []

    def temp(name):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
        temps.append(Path(tmp))
        return temps[-1]

    def flush(names):
        tmp = temp(path.name if single else f"shard-{len(written) + 1}")
        written.append((tmp, list(names)))
        save_file({n: pending.pop(n) for n in names}, str(tmp), metadata=_file_metadata(metadata, names))

    try:
        for name, arr in tensors:
            if name in specs:
                raise RuntimeError(f"tensor {name!r} produced twice")
            arr = np.ascontiguousarray(arr)
            specs[name], pending[name] = TensorSpec(tuple(arr.shape), arr.dtype), arr
            if not single:
                for names in list(plan_shards(specs, limit).values())[len(written):-1]:
                    flush(names)
        plan = {path.name: list(specs)} if single else plan_shards(specs, limit)
        for names in list(plan.values())[len(written):]:
            flush(names)
        if [names for _, names in written] != list(plan.values()):
            raise RuntimeError("shards written do not follow the final plan")
        done = [(tmp, folder / fname) for (tmp, _), fname in zip(written, plan, strict=True)]
        if len(plan) > 1:
            index_meta = metadata(list(specs)) if callable(metadata) else dict(metadata or {})
            index = {"metadata": {**index_meta, "total_size": sum(s.nbytes for s in specs.values())},
                     "weight_map": {n: f for f, names in plan.items() for n in names}}
            tmp = temp(INDEX_NAME)
            done.append((tmp, folder / INDEX_NAME))
            tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for tmp, final in done:
            os.chmod(tmp, mode)  # mkstemp (and safetensors) make 0600; give the usual permissions
            os.replace(tmp, final)
    except BaseException as exc:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        if created is not None:
            _remove_created(folder, created)
        if isinstance(exc, OSError):
            raise CheckpointError(f"{folder}: cannot write ({exc.strerror or exc})") from None
        raise
    return [final for _, final in done]


def _remove_created(folder: Path, top: Path) -> None:
    """Remove the empty folders from ``folder`` up to (not including) ``top``."""
    p = folder.absolute()
    while p != top and p != p.parent:
        try:
            p.rmdir()
        except OSError:
            return
        p = p.parent


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    from .._backend import to_numpy

    return to_numpy(x)


_GRAM_KIND = "calibration"
_OUTPUT, _FOLD, _ERRORS = "@output", "@fold", "@errors"  # module names never hold "@"


class Grams(dict):
    """``{module_name: G}`` input Gram matrices (float64 NumPy), with what else was measured.

    Attributes
    ----------
    output_grams : dict or None
        ``{module_name: H}``, output-gradient Gram matrices (``out x out``), as
        ``randla.torch.calibrate(..., output=...)`` measures them.
    folds : list of dict or None
        Per-fold input Gram matrices (summing to the main ones), for cross-validated
        budgets.
    errors : dict or None
        ``{module_name: E}``, ``E[r]`` the per-sample error of truncating the layer at
        rank ``r`` (``randla.torch.calibrate(..., sample_probes=...)``); a budget is then
        spent on these curves.
    """

    output_grams: dict | None = None
    folds: list | None = None
    errors: dict | None = None


def _square64(G, what):
    G = np.asarray(_to_numpy(G), dtype=np.float64)
    if G.ndim != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"{what} must be a square matrix, got shape {G.shape}")
    return G


def _curve64(E, what):
    from .budget import _error_curve

    return _error_curve(_to_numpy(E), what)


def save_grams(grams: Mapping[str, Any], path) -> Path:
    """Write a calibration: per-layer Gram matrices, to a safetensors file.

    Parameters
    ----------
    grams : mapping
        ``{module_name: G}`` input Gram matrices (``in x in``), any array-API arrays:
        the result of ``randla.torch.calibrate`` is stored whole, its
        ``output_grams`` (as ``NAME@output``), ``folds`` (as ``NAME@fold0``, ...) and
        per-sample error curves ``errors`` (1-D, as ``NAME@errors``) included when
        present.
    path : str or Path
        A ``.safetensors`` file (written to a temporary file and renamed).

    Returns
    -------
    Path

    Notes
    -----
    Everything is stored in float64; the file's ``randla`` metadata marks it as a
    calibration file. ``randla compress --calibration FILE`` and :func:`load_grams` read it.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from randla.compress.checkpoint import save_grams, load_grams
    >>> X = np.random.default_rng(0).standard_normal((50, 4))
    >>> path = save_grams({"fc": X.T @ X}, os.path.join(tempfile.mkdtemp(), "grams.safetensors"))
    >>> grams = load_grams(path)
    >>> bool(np.allclose(grams["fc"], X.T @ X)), grams.output_grams, grams.folds, grams.errors
    (True, None, None, None)
    """
    path = Path(path)
    if not _is_single_file(path):
        raise CheckpointError(f"{path}: a calibration file must end in .safetensors")
    arrays = {}
    for name, G in grams.items():
        if "@" in name:
            raise ValueError(f"grams: layer name {name!r} must not contain '@'")
        arrays[name] = _square64(G, f"grams[{name!r}]")
    output_grams = getattr(grams, "output_grams", None) or {}
    for name, H in output_grams.items():
        arrays[name + _OUTPUT] = _square64(H, f"output_grams[{name!r}]")
    folds = getattr(grams, "folds", None) or []
    for i, fold in enumerate(folds):
        for name, G in fold.items():
            arrays[f"{name}{_FOLD}{i}"] = _square64(G, f"folds[{i}][{name!r}]")
    errors = getattr(grams, "errors", None) or {}
    for name, E in errors.items():
        arrays[name + _ERRORS] = _curve64(E, f"errors[{name!r}]")
    meta = {"kind": _GRAM_KIND, "output_grams": bool(output_grams), "folds": len(folds), "errors": bool(errors)}
    write_checkpoint(path, arrays.items(), metadata={"randla": meta})
    return path


def load_grams(path) -> Grams:
    """Read a calibration file written by :func:`save_grams`.

    Returns
    -------
    Grams
        ``{module_name: G}`` (float64), with ``output_grams``, ``folds`` and ``errors``
        when the file holds them.

    Raises
    ------
    CheckpointError
        The file cannot be read or is not a calibration file (every tensor must be a
        square floating matrix, or a finite 1-D error curve under ``NAME@errors``).
    """
    out, outputs, folds, errors = Grams(), {}, {}, {}
    with open_checkpoint(path) as ckpt:
        for name, spec in ckpt.specs.items():
            base, _, tag = name.partition("@")
            if tag == _ERRORS[1:]:
                bad = (f"{path}: {name!r} is not a finite 1-D error curve ({spec.dtype}{spec.shape}); "
                       f"write calibration files with save_grams")
                if len(spec.shape) != 1 or spec.dtype.name not in FLOAT_DTYPES:
                    raise CheckpointError(bad)
                try:
                    errors[base] = _curve64(ckpt.load(name), name)
                except ValueError:
                    raise CheckpointError(bad) from None
                continue
            if len(spec.shape) != 2 or spec.shape[0] != spec.shape[1] or spec.dtype.name not in FLOAT_DTYPES:
                raise CheckpointError(f"{path}: {name!r} is not a square Gram matrix ({spec.dtype}{spec.shape}); "
                                      f"write calibration files with save_grams")
            G = ckpt.load(name).astype(np.float64)
            if not tag:
                out[name] = G
            elif tag == _OUTPUT[1:]:
                outputs[base] = G
            elif tag.startswith(_FOLD[1:]) and tag[len(_FOLD) - 1:].isdigit():
                folds.setdefault(int(tag[len(_FOLD) - 1:]), {})[base] = G
            else:
                raise CheckpointError(f"{path}: {name!r} is not a calibration tensor name "
                                      f"(NAME, NAME@output, NAME@foldK, NAME@errors)")
    if sorted(folds) != list(range(len(folds))):
        raise CheckpointError(f"{path}: fold Gram matrices are numbered {sorted(folds)}, not 0..{len(folds) - 1}")
    out.output_grams = outputs or None
    out.folds = [folds[i] for i in range(len(folds))] or None
    out.errors = errors or None
    return out


def randla_metadata(ckpt: Checkpoint) -> dict | None:
    """The parsed ``randla`` metadata of a checkpoint, or None when absent."""
    raw = ckpt.metadata.get("randla")
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{ckpt.files[0]}: the 'randla' metadata is not JSON") from None

