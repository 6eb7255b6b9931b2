"""Compress or inspect a whole safetensors checkpoint, one tensor at a time.

:func:`compress_checkpoint` reads a checkpoint (file or sharded folder) tensor by tensor,
factors the selected 2-D weights with :func:`~randla.compress.factor.factor` (whitened where a
calibration Gram matrix is given), and writes each factored ``NAME.weight`` as
``NAME.lowrank_A`` (r x in) and ``NAME.lowrank_B`` (out x r), ``W ~= B @ A``; every other
tensor, and every weight that factoring would not make smaller, is copied bit for bit.
Memory follows one tensor and one output shard, never the model. (Weights are factored
one call each, not stacked by shape as :func:`randla.compress.group.factor_many` does for a
model in memory: in a checkpoint's order the same-shaped weights of different blocks
lie far apart, so stacking them would mean holding them, and the stacked call saves
little at these sizes.)

:func:`inspect_checkpoint` estimates each weight's spectrum and suggests ranks for a few
tolerances. Both are what ``randla compress`` and ``randla inspect`` run.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .._backend import as_generator
from .._validate import name_filter
from .checkpoint import FLOAT_DTYPES, CheckpointError, check_output, load_grams, open_checkpoint, write_checkpoint
from .report import dumps

__all__ = ["CompressResult", "compress_checkpoint", "inspect_checkpoint", "select_weights", "DEFAULT_EXCLUDE",
           "DEFAULT_RTOLS", "FORMAT_VERSION"]

FORMAT_VERSION = 1
# embedding tables are lookups, not linear maps: "embed" (BERT, LLaMA, T5's embed_tokens) and
# the names GPT-2 (wte, wpe) and T5 (shared) give theirs
DEFAULT_EXCLUDE = r"embed|(^|\.)(wte|wpe|shared)\."
DEFAULT_RTOLS = (0.5, 0.4, 0.3, 0.2, 0.1)
_WEIGHT = ".weight"


def _check_names(path, specs, targets):
    """No factor of a selected weight may take the name of a tensor the checkpoint already
    holds, and the checkpoint holds no factors (the output's metadata describes the factors
    this run makes): a :class:`CheckpointError` before any work."""
    factors = (".lowrank_A", ".lowrank_B")
    for n in targets:
        for name in (n[: -len(".weight")] + f for f in factors):
            if name in specs:
                raise CheckpointError(f"{path}: holds both {n!r} and {name!r}, the name of its factor; "
                                      f"leave {n!r} out with --exclude")
    done = next((n for n in specs if n.endswith(factors)), None)
    if done is not None:
        raise CheckpointError(f"{path}: holds {done!r}, already factored; compress the original checkpoint")


def select_weights(specs, *, include=None, exclude=DEFAULT_EXCLUDE) -> list[str]:
    """Names of the tensors to factor: 2-D floating ``*.weight`` tensors, filtered.

    Parameters
    ----------
    specs : mapping name -> TensorSpec
    include, exclude : str, optional
        Regular expressions searched (``re.search``) in the tensor's name; a tensor is
        chosen when ``include`` matches (or is None) and ``exclude`` does not (default
        ``DEFAULT_EXCLUDE``, ``"embed"`` and GPT-2's and T5's embedding names (``wte``,
        ``wpe``, ``shared``): embedding tables are lookups; ``None`` excludes nothing).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.checkpoint import TensorSpec
    >>> from randla.compress.pipeline import select_weights
    >>> f = np.dtype(np.float32)
    >>> specs = {"emb.embed_tokens.weight": TensorSpec((100, 8), f), "fc.weight": TensorSpec((8, 8), f),
    ...          "fc.bias": TensorSpec((8,), f), "head.weight": TensorSpec((4, 8), f)}
    >>> select_weights(specs), select_weights(specs, include="head", exclude=None)
    (['fc.weight', 'head.weight'], ['head.weight'])
    """
    keep = name_filter(include, exclude, options=("--include", "--exclude"), error=CheckpointError)
    return [n for n, s in specs.items()
            if len(s.shape) == 2 and s.dtype.name in FLOAT_DTYPES and n.endswith(_WEIGHT) and min(s.shape) > 0
            and keep(n)]


def _generator(rng):
    """``rng`` as the kernels take it (None, an int seed >= 0 or a Generator), or a
    ``CheckpointError`` naming it."""
    try:
        return as_generator(rng)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"--seed: {exc}") from None


def _module(name):
    return name[: -len(_WEIGHT)]


class CompressResult(NamedTuple):
    """What :func:`compress_checkpoint` did.

    Attributes
    ----------
    report : randla.compress.Report
        One :class:`~randla.compress.report.LayerReport` per selected weight (``seconds`` is
        the factorisation's own time).
    files : list of Path
        Files written (the index last when sharded).
    dtypes : dict
        ``{module name: dtype name}`` of the selected weights.
    spectra : dict
        ``{module name: singular values computed}`` (NumPy, descending; of ``W``, or
        of ``W L`` when whitened), for plots.
    seconds : float
        Wall time of the whole call.
    spectra_seconds : float
        Time of the budget's first pass (spectra of every selected weight; 0 otherwise).
    """

    report: Any
    files: list
    dtypes: dict
    spectra: dict
    seconds: float
    spectra_seconds: float

    @property
    def factor_seconds(self) -> float:
        """Time spent factoring (and, with a budget, estimating spectra)."""
        return self.report.seconds + self.spectra_seconds

    def to_dict(self) -> dict:
        """JSON-ready summary: totals, times and one dict per layer (with its dtype)."""
        layers = [dict(d, dtype=self.dtypes.get(d["name"])) for d in self.report.to_dicts()]
        return {"files": [str(f) for f in self.files], "params_before": self.report.params_before,
                "params_after": self.report.params_after, "param_fraction": self.report.param_fraction,
                "seconds": self.seconds, "factor_seconds": self.factor_seconds,
                "spectra_seconds": self.spectra_seconds, "layers": layers}


def _grams_for(calibration, ckpt, targets):
    """The calibration of the selected weights (see :func:`randla.compress.weights.check_grams`:
    a missing Gram matrix is an error, plain factors being far worse on a model's output)."""
    from . import check_grams
    from .checkpoint import Grams

    if calibration is None:
        return Grams()
    grams = load_grams(calibration)
    modules = [_module(n) for n in targets]
    shapes = {m: ckpt.specs[n].shape for m, n in zip(modules, targets, strict=True)}
    try:
        check_grams(grams, modules, {m: s[1] for m, s in shapes.items()})
        check_grams(grams.output_grams, modules, {m: s[0] for m, s in shapes.items()}, argument="output_grams")
        for i, fold in enumerate(grams.folds or []):
            check_grams(fold, modules, {m: s[1] for m, s in shapes.items()}, argument=f"fold {i}")
        missing = [m for m in modules if grams.errors is not None and m not in grams.errors]
        if missing:
            raise ValueError(f"the per-sample error curves (NAME@errors) miss layer {missing[0]!r}")
    except ValueError as exc:
        raise CheckpointError(f"{calibration}: {exc}; --exclude selects the layers to factor") from None
    out = Grams({m: grams[m] for m in modules})
    out.output_grams = None if grams.output_grams is None else {m: grams.output_grams[m] for m in modules}
    out.folds = None if grams.folds is None else [{m: f[m] for m in modules} for f in grams.folds]
    if out.folds is not None and len(out.folds) < 2:
        out.folds = None  # one fold is the whole set: nothing to cross-validate
    out.errors = None if grams.errors is None else {m: grams.errors[m] for m in modules}
    return out


def _calibration_of(grams, m):
    """``gram`` and ``output_gram`` keywords of :func:`~randla.compress.factor.factor` for module ``m``."""
    return {"gram": grams.get(m), "output_gram": None if grams.output_grams is None else grams.output_grams[m]}


def _finite_weight(name, W):
    """The weight ``W`` named ``name``, or a ``CheckpointError`` where it holds NaN or
    Inf: a damaged checkpoint, which no option of the command line skips."""
    if not np.isfinite(W).all():
        raise CheckpointError(f"{name} holds NaN or Inf: the checkpoint is damaged (or the weight overflowed its "
                              f"dtype); exclude it (--exclude) or repair it")
    return W


def _named(tensor, fn, /, *args, **kwargs):
    """``fn(*args, **kwargs)``; a ValueError/TypeError (a NaN weight, a bad Gram matrix) names the tensor."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{tensor}: {exc}") from None


def _rank_options(rank, rank_fraction, param_fraction, rtol, budget):
    from . import check_rank_mode

    try:
        return check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction, rtol=rtol,
                               budget=budget)
    except (TypeError, ValueError) as exc:  # name the command-line options
        raise CheckpointError(re.sub(r"\b(rank_fraction|param_fraction|rank|rtol|budget)\b",
                                     lambda m: "--" + m.group(1).replace("_", "-"), str(exc))) from None


def compress_checkpoint(src, out, *, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None,
                        calibration=None, method="rsi", q=2, include=None, exclude=DEFAULT_EXCLUDE,
                        max_shard_size=None, rng=0, progress=None) -> CompressResult:
    """Factor the weights of a checkpoint and write the low-rank checkpoint.

    Parameters
    ----------
    src : str or Path
        A ``.safetensors`` file or a sharded folder (see
        :func:`~randla.compress.checkpoint.open_checkpoint`).
    out : str or Path
        Output: a ``.safetensors`` file, or a folder (sharded by ``max_shard_size``).
        Never the input; validated before any work.
    rank, rank_fraction, param_fraction, rtol, budget
        Exactly one, as in :func:`~randla.compress.factor.factor`; ``budget`` (a parameter
        count, or a fraction of the selected weights' parameters) is spread over the
        layers by :func:`randla.compress.budget.allocate` from a first pass of spectra.
    calibration : str or Path, optional
        A calibration file from :func:`~randla.compress.checkpoint.save_grams` (of
        ``randla.torch.calibrate``), keyed by module name (``NAME`` for ``NAME.weight``).
        Every selected weight gets the whitened factorisation and needs its input Gram
        matrix (``--exclude`` the others); output-gradient Gram matrices, when the file
        has them, weight the factors by their effect on the model's output, and
        per-fold Gram matrices make a ``budget`` cross-validated, and per-sample error
        curves (``calibrate(..., sample_probes=32)``, every selected layer's) make a
        ``budget`` spend them instead (as in :func:`randla.compress.weights.compress_weights`;
        the best budgets measured on MiniLM).
    method, q
        As in :func:`~randla.compress.factor.factor`.
    include, exclude : str, optional
        Regular expressions on tensor names (see :func:`select_weights`).
    max_shard_size : int or str, optional
        For a folder output (default ``"5GB"``).
    rng : None, int or numpy.random.Generator, default 0
    progress : callable, optional
        Called with each tensor's name once it is written out (a progress bar).

    Returns
    -------
    CompressResult

    Raises
    ------
    CheckpointError
        Unreadable input, output equal to the input or not writable, bad options.

    Notes
    -----
    Memory: one input tensor, its factors and one output shard at a time (a single
    ``.safetensors`` output holds everything until it is written). The ``randla``
    metadata of each file is JSON with ``version``, ``method``, ``q``, ``options`` and the
    ``ranks`` of the layers in that file (the index holds all of them).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> from randla.compress.pipeline import compress_checkpoint
    >>> from randla.compress.checkpoint import open_checkpoint
    >>> d = tempfile.mkdtemp()
    >>> rng = np.random.default_rng(0)
    >>> W = (rng.standard_normal((256, 32)) @ rng.standard_normal((32, 128))).astype(np.float32)
    >>> save_file({"fc.weight": W, "fc.bias": np.zeros(256, np.float32)}, os.path.join(d, "in.safetensors"))
    >>> res = compress_checkpoint(os.path.join(d, "in.safetensors"), os.path.join(d, "out.safetensors"), rank=32)
    >>> with open_checkpoint(os.path.join(d, "out.safetensors")) as ckpt:
    ...     B, A = ckpt.load("fc.lowrank_B"), ckpt.load("fc.lowrank_A")
    ...     sorted(ckpt.specs), B.shape, A.shape
    (['fc.bias', 'fc.lowrank_A', 'fc.lowrank_B'], (256, 32), (32, 128))
    >>> bool(np.linalg.norm(W - B @ A) <= 1e-4 * np.linalg.norm(W))
    True
    """
    from . import LayerSummary, Report, allocate, factor, summarize

    t_start = time.perf_counter()
    mode, value = _rank_options(rank, rank_fraction, param_fraction, rtol, budget)
    from .factor import METHODS

    if method not in METHODS:
        raise CheckpointError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    if isinstance(q, bool) or not isinstance(q, (int, np.integer)) or q < 0:
        raise CheckpointError(f"--q must be an int >= 0, got {q!r}")
    gen = _generator(rng)
    with open_checkpoint(src) as ckpt:
        out = check_output(out, [ckpt.path, *ckpt.files, *([] if calibration is None else [calibration])])
        if max_shard_size is not None and Path(out).suffix == ".safetensors":
            raise CheckpointError(f"{out}: a single .safetensors file cannot be sharded; give a folder as output "
                                  f"to use --max-shard-size")
        targets = select_weights(ckpt.specs, include=include, exclude=exclude)
        if not targets:
            raise CheckpointError(f"{src}: no 2-D floating '*.weight' tensor is selected (check --include/--exclude)")
        _check_names(ckpt.path, ckpt.specs, targets)
        grams = _grams_for(calibration, ckpt, targets)
        ranks: dict[str, int] = {}
        spectra: dict[str, np.ndarray] = {}
        spectra_seconds = 0.0
        if mode == "budget":
            t0 = time.perf_counter()
            summaries = []
            for n in targets:
                m = _module(n)
                if grams.errors is not None:  # per-sample error curves (see compress_weights(errors=))
                    summaries.append(_named(n, LayerSummary.from_errors, m, ckpt.specs[n].shape, grams.errors[m]))
                else:
                    folds = None if grams.folds is None else [f[m] for f in grams.folds]
                    summaries.append(_named(n, summarize, _finite_weight(n, ckpt.load(n)), folds=folds, method=method,
                                            q=q, rng=gen, name=m, check_finite=False, **_calibration_of(grams, m)))
                if progress is not None:
                    progress(f"spectrum of {m}")
            try:
                ranks = allocate(summaries, value)
            except ValueError as exc:
                raise CheckpointError(f"--budget: {exc}") from None
            spectra = {s.name: s.S for s in summaries}
            spectra_seconds = time.perf_counter() - t0
        layer_reports = {}
        options = {"mode": mode, "value": value, "method": method, "q": int(q), "include": include,
                   "exclude": exclude, "calibrated": sorted(grams), "output_grams": grams.output_grams is not None,
                   "folds": len(grams.folds or []), "errors": grams.errors is not None}
        target_set = set(targets)

        def produce():
            for name in ckpt.specs:
                W = ckpt.load(name)
                if name in target_set:
                    m = _module(name)
                    kw = {"rank": ranks[m]} if mode == "budget" else {mode: value}
                    _finite_weight(name, W)
                    f = _named(name, factor, W, method=method, q=q, rng=gen, name=m, check_finite=False,
                               **_calibration_of(grams, m), **kw)
                    layer_reports[m] = f.report
                    if f.B is not None:
                        spectra.setdefault(m, f.S)
                        yield f"{m}.lowrank_A", f.A
                        yield f"{m}.lowrank_B", f.B
                        del W, f
                        if progress is not None:
                            progress(name)
                        continue
                yield name, W
                del W
                if progress is not None:
                    progress(name)

        def metadata(names):
            layers = sorted({n.rsplit(".", 1)[0] for n in names if n.endswith((".lowrank_A", ".lowrank_B"))})
            info = {"version": FORMAT_VERSION, "method": method, "q": int(q), "options": options,
                    "ranks": {m: layer_reports[m].rank for m in layers}}
            return {**{k: v for k, v in ckpt.metadata.items() if k != "randla"}, "randla": info}

        files = write_checkpoint(out, produce(), metadata=metadata, max_shard_size=max_shard_size)
        report = Report(layer_reports[_module(n)] for n in targets)
        dtypes = {_module(n): ckpt.specs[n].dtype.name for n in targets}
    return CompressResult(report, files, dtypes, spectra, time.perf_counter() - t_start, spectra_seconds)


class InspectRow(NamedTuple):
    """One weight as :func:`inspect_checkpoint` sees it.

    ``suggestions`` maps each tolerance to ``(rank, params)``: the smallest rank whose
    relative Frobenius error (of ``W``, or of the layer's output when calibrated) is at
    most the tolerance, and the parameters ``rank (out + in)`` it keeps; ``(None,
    out in)`` when factoring at that tolerance would not save parameters. ``estimated``
    is True for a rank beyond the computed singular values (the remainder modelled as a
    flat tail, which errs high).
    """

    name: str
    shape: tuple
    dtype: str
    S: Any
    energy: float
    decay: float
    whitened: bool
    suggestions: dict
    estimated: dict

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "params": int(np.prod(self.shape)),
                "decay": self.decay, "whitened": self.whitened, "sigma_1": float(self.S[0]) if len(self.S) else 0.0,
                "suggested": [{"rtol": t, "rank": r, "params": p, "estimated": self.estimated[t]}
                              for t, (r, p) in self.suggestions.items()]}


def _decay(S) -> float:
    """Exponent ``beta`` of a least-squares fit ``s_i ~ s_1 i^-beta`` over the computed values."""
    S = np.asarray(S, dtype=np.float64)
    S = S[S > 0]
    if S.size < 3:
        return float("nan")
    i = np.log(np.arange(1, S.size + 1))
    return float(-np.polyfit(i, np.log(S), 1)[0])


def _suggest(summary, rtol):
    from . import max_saving_rank, parameter_count

    shape = summary.shape
    rmax = max_saving_rank(shape)
    target = rtol ** 2 * summary.energy
    if summary.energy <= 0.0:
        return (1, parameter_count(shape, 1)), False
    known = summary.S.shape[0]
    lo, hi = 1, rmax + 1  # smallest r in [1, rmax] with squared_tail(r) <= target, else rmax + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if summary.squared_tail(mid) <= target * (1 + 1e-12):
            hi = mid
        else:
            lo = mid + 1
    if lo > rmax:
        return (None, shape[0] * shape[1]), known < rmax
    return (lo, parameter_count(shape, lo)), lo > known


def inspect_checkpoint(src, *, rtols=DEFAULT_RTOLS, calibration=None, include=None, exclude=DEFAULT_EXCLUDE,
                       cap=256, method="rsi", q=2, rng=0, progress=None) -> list[InspectRow]:
    """Spectrum summary and suggested ranks of every selected weight of a checkpoint.

    Parameters
    ----------
    src : str or Path
        A ``.safetensors`` file or a sharded folder.
    rtols : sequence of float
        Tolerances on the relative Frobenius error (of the weight, or of the layer's
        output on the calibration data when ``calibration`` is given).
    calibration : str or Path, optional
        Gram matrices (see :func:`compress_checkpoint`): inspect the whitened spectra.
    include, exclude : str, optional
        As in :func:`select_weights`.
    cap : int or None, default 256
        Singular values computed per weight (``None``: every useful one); beyond the
        cap the remainder ``||W||_F^2 - sum s_i^2`` is known exactly and modelled as flat.
    method, q, rng
        The factorisation that estimates the spectra (:func:`randla.compress.budget.summarize`).
    progress : callable, optional
        Called with each weight's name when it is done.

    Returns
    -------
    list of InspectRow

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from safetensors.numpy import save_file
    >>> from randla.compress.pipeline import inspect_checkpoint
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> W = np.diag(2.0 ** -np.arange(64)).astype(np.float32)  # sigma_i = 2^-(i-1)
    >>> save_file({"fc.weight": W}, path)
    >>> row = inspect_checkpoint(path, rtols=(0.1,))[0]
    >>> row.shape, row.suggestions[0.1]  # 4 values leave 2^-4 / sqrt(1 - 1/4) ~ 0.07 of the energy
    ((64, 64), (4, 512))
    """
    from . import summarize

    rtols = tuple(float(t) for t in rtols)
    if not rtols or not all(0.0 < t < 1.0 for t in rtols):
        raise CheckpointError(f"tolerances must be in (0, 1), got {rtols}")
    gen = _generator(rng)
    rows = []
    with open_checkpoint(src) as ckpt:
        targets = select_weights(ckpt.specs, include=include, exclude=exclude)
        grams = _grams_for(calibration, ckpt, targets)
        for n in targets:
            m = _module(n)
            s = _named(n, summarize, _finite_weight(n, ckpt.load(n)), cap=cap, method=method, q=q, rng=gen, name=m,
                       check_finite=False, **_calibration_of(grams, m))
            sug, est = {}, {}
            for t in rtols:
                sug[t], est[t] = _suggest(s, t)
            rows.append(InspectRow(m, s.shape, ckpt.specs[n].dtype.name, s.S, s.energy, _decay(s.S), s.whitened, sug,
                                   est))
            if progress is not None:
                progress(n)
    return rows


def rows_to_json(rows) -> str:
    """``randla inspect --json``: one object per weight."""
    return dumps({"layers": [r.to_dict() for r in rows]}, indent=2)


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def rows_to_text(rows, rtols) -> str:
    """The table ``randla inspect`` prints."""
    width = max([len("weight")] + [len(r.name) for r in rows]) + 2
    lines = [f"{'weight':<{width}}{'shape':>11}{'dtype':>10}{'decay':>7}"
             + "".join(f"{'rtol ' + format(t, 'g'):>15}" for t in rtols)]
    after = {t: 0 for t in rtols}
    total = 0
    for r in rows:
        total += r.shape[0] * r.shape[1]
        cells = []
        for t in rtols:
            k, p = r.suggestions[t]
            after[t] += p
            cell = "dense" if k is None else f"{'~' if r.estimated[t] else ''}{k} ({_fmt_params(p)})"
            cells.append(f"{cell:>15}")
        decay = "-" if math.isnan(r.decay) else f"{r.decay:.2f}"
        shape = f"{r.shape[0]}x{r.shape[1]}"
        lines.append(f"{r.name:<{width}}{shape:>11}{r.dtype:>10}{decay:>7}" + "".join(cells))
    if rows:
        lines.append(f"{'total (' + _fmt_params(total) + ')':<{width + 28}}" + "".join(
            f"{_fmt_params(after[t]) + f' ({after[t] / total:.0%})':>15}" for t in rtols))
    return "\n".join(lines)
