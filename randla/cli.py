"""The ``randla`` command (also ``python -m randla``).

- ``randla compress IN -o OUT --rank-fraction 0.4``: factor the weights of a safetensors
  checkpoint (file or sharded folder) into ``NAME.lowrank_A`` / ``NAME.lowrank_B``.
- ``randla inspect IN``: estimated spectra and suggested ranks per weight.
- ``randla demo``: the whole-model study on the real MiniLM sentence encoder;
  ``randla demo layers``: the single-layer study of the randomized SVD family.

Argument parsing and printing only; the work lives in :mod:`randla.compress.pipeline`
and :mod:`randla._demo`. Every user error is one line on stderr and a non-zero exit,
found before any work where it can be: no destination (``-o``, ``--report``, ``--plot``)
may be an input (checkpoint files, index, ``--calibration``) or another destination, and
when a later step fails, what this run wrote is removed.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

__all__ = ["main", "build_parser"]


class _UsageError(Exception):
    """A bad option found after parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _budget(text):
    """``--budget``: an int is a parameter count, a float in (0, 1] a fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a parameter count or a fraction, got {text!r}") from None
    return int(v) if v > 1 and v.is_integer() else v


def _count(text):
    """``--seed``, ``--cap``: an int >= 0."""
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an int >= 0, got {text!r}")
    return v


def _add_selection(p, *, budget=True):
    p.add_argument("--include", metavar="REGEX", help="factor only weights whose name matches")
    p.add_argument("--exclude", metavar="REGEX", default=None,
                   help="skip weights whose name matches (default: embedding tables, "
                        "'embed|(^|\\.)(wte|wpe|shared)\\.'; '' skips nothing)")
    spend = "; with per-sample error curves (calibrate(..., sample_probes=32)) --budget spends those" if budget else ""
    p.add_argument("--calibration", metavar="GRAMS.safetensors",
                   help="per-layer input Gram matrices (randla.torch.calibrate + save_grams): whitened factors" + spend)
    p.add_argument("--method", default="rsi", choices=("rsi", "rsvd", "krylov", "exact"),
                   help="factorisation (default rsi)")
    p.add_argument("--q", type=int, default=2, help="power iterations (rsi) or Krylov depth (default 2)")
    p.add_argument("--seed", type=_count, default=0, help="random seed, an int >= 0 (default 0)")
    p.add_argument("--plot", metavar="FILE.png", help="plot the spectra (matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="randla", description="randomized numerical linear algebra; model compression")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("compress", help="factor the weights of a safetensors checkpoint",
                       description="Each factored NAME.weight (out x in) becomes NAME.lowrank_B (out x r) and "
                                   "NAME.lowrank_A (r x in), W ~= B @ A; every other tensor is copied bit for bit.")
    c.add_argument("input", metavar="IN", help="a .safetensors file or a sharded checkpoint folder")
    c.add_argument("-o", "--output", metavar="OUT", required=True,
                   help="a .safetensors file (replaced if it exists), or a folder (sharded by "
                        "--max-shard-size; it must be new or empty)")
    mode = c.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rank", type=int, help="the same rank for every weight")
    mode.add_argument("--rank-fraction", type=float, metavar="ALPHA", help="rank = floor(ALPHA min(out, in))")
    mode.add_argument("--param-fraction", type=float, metavar="F", help="keep a share F of each weight's parameters")
    mode.add_argument("--rtol", type=float, help="relative Frobenius error per weight (of its output if calibrated)")
    mode.add_argument("--budget", type=_budget, metavar="N|F",
                      help="total parameters of the factored weights (a count, or a fraction), spread by spectra")
    c.add_argument("--max-shard-size", metavar="SIZE",
                   help="for a folder output, e.g. 500MB or 5GB (default 5GB); memory holds one shard at a time "
                        "(a .safetensors output is held whole until written)")
    c.add_argument("--report", metavar="FILE.json|FILE.md", help="write the per-layer report")
    _add_selection(c)
    c.set_defaults(func=_compress)

    i = sub.add_parser("inspect", help="estimated spectra and suggested ranks of a checkpoint's weights")
    i.add_argument("input", metavar="IN", help="a .safetensors file or a sharded checkpoint folder")
    i.add_argument("--rtol", type=float, nargs="+", default=None, metavar="T",
                   help="tolerances to suggest ranks for (default 0.5 0.4 0.3 0.2 0.1)")
    i.add_argument("--cap", type=_count, default=256,
                   help="singular values computed per weight (default 256; 0: every useful one). Ranks "
                        "marked ~ lie beyond them and are extrapolated; compress --rtol with the default "
                        "rsi may take ranks a few percent above the exact minimum (--method exact: the "
                        "minimum)")
    i.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_selection(i, budget=False)
    i.set_defaults(func=_inspect)

    d = sub.add_parser("demo", help="whole-model compression study on the real MiniLM (needs torch, transformers)",
                       description="Every nn.Linear of the MiniLM sentence encoder compressed at once: time, "
                                   "parameters kept, spectral error, embedding cosine and retrieval agreement.")
    d.add_argument("--quick", action="store_true", help="a small, fast version (for tests)")
    d.add_argument("--plot", metavar="FILE.png", help="cosine against parameters kept, one line per method")
    d.add_argument("--seed", type=_count, default=0, help="random seed, an int >= 0")
    d.add_argument("--corpus", choices=("varied", "template"), default="varied",
                   help="sentences: varied (every topic and length, the default) or template (one narrow domain)")
    d.set_defaults(func=_demo_model)
    dsub = d.add_subparsers(dest="study", parser_class=_Parser)
    lay = dsub.add_parser("layers", help="single-layer study of RSVD, RSI and block Krylov on pretrained weights")
    lay.add_argument("--matrix", default="minilm",
                     help="'minilm' (embedded checkpoint, default), 'generated', or a .safetensors file")
    lay.add_argument("--alpha", type=float, default=0.2, help="rank fraction: k = floor(alpha min(m, n))")
    lay.add_argument("--limit", type=int, default=0, help="only the first LIMIT matrices (0: all)")
    lay.add_argument("--repeat", type=int, default=3, help="timing repeats (the best is shown)")
    lay.add_argument("--seed", type=_count, default=0, help="random seed, an int >= 0")
    lay.set_defaults(func=_demo_layers)
    return parser


def _exclude(args):
    from .compress.pipeline import DEFAULT_EXCLUDE

    return DEFAULT_EXCLUDE if args.exclude is None else (args.exclude or None)


def _check_plot(path):
    if path is None:
        return
    if Path(path).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise _UsageError(f"--plot {path}: use a .png, .pdf or .svg file")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise _UsageError("--plot needs matplotlib: pip install matplotlib") from None


def _check_shard_size(args):
    from .compress.checkpoint import CheckpointError, parse_size

    if args.max_shard_size is None:
        return
    try:
        parse_size(args.max_shard_size)
    except CheckpointError:
        raise _UsageError(f"--max-shard-size must be a positive number of bytes or a size such as 500MB or 5GB, "
                          f"got {args.max_shard_size!r}") from None


def _inputs(ckpt, calibration):
    """Every file the run reads: the checkpoint's files, its index (even one still absent), the calibration."""
    from .compress.checkpoint import INDEX_NAME

    files = [ckpt.path / INDEX_NAME if ckpt.path.is_dir() else ckpt.path, *ckpt.files]
    return files + ([Path(calibration)] if calibration is not None else [])


def _check_destinations(dests, inputs, output=None):
    """Each ``(option, path)`` of ``dests`` can be written and is no input, output or other destination.

    ``output`` is the checkpoint output: a ``.safetensors`` file, or a folder whose every
    path is the output's. Paths are compared resolved (symlinks, ``..``, ``./``).
    """
    taken = {Path(p).resolve(): "an input" for p in inputs}
    out = None if output is None else Path(output).resolve()
    for option, path in dests:
        if path is None:
            continue
        target = Path(path).resolve()
        if target == out:
            raise _UsageError(f"{option} {path}: would overwrite the output {output}; choose another file")
        if out is not None and Path(output).suffix != ".safetensors" and out in target.parents:
            raise _UsageError(f"{option} {path}: is inside the output folder {output}; choose a file outside it")
        if target in taken:
            raise _UsageError(f"{option} {path}: would overwrite {taken[target]}; choose another file")
        if Path(path).is_dir():
            raise _UsageError(f"{option} {path}: is a folder; give a file name")
        if not target.parent.is_dir():
            raise _UsageError(f"{option} {path}: no such folder {target.parent}")
        try:
            fd, probe = tempfile.mkstemp(dir=target.parent, prefix=".randla-probe-")
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise _UsageError(f"{option} {path}: cannot write there ({exc.strerror or exc})") from None
        taken[target] = option


def _progress(args, total, desc):
    """A tqdm bar over tensors on stderr (None when --quiet); returns (callback, close)."""
    if args.quiet:
        return None, lambda: None
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes)
    bar = tqdm(total=total, desc=desc, unit="tensor", file=sys.stderr, leave=False, dynamic_ncols=True, disable=None)

    def step(name):
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.update(1)

    return step, bar.close


def _compress(args) -> int:
    from .compress.checkpoint import _existing_parent, open_checkpoint
    from .compress.pipeline import compress_checkpoint, select_weights

    report_path = args.report
    if report_path is not None and Path(report_path).suffix.lower() not in (".json", ".md"):
        raise _UsageError(f"--report {report_path}: use a .json or .md file")
    _check_plot(args.plot)
    _check_shard_size(args)
    with open_checkpoint(args.input) as ckpt:
        inputs = _inputs(ckpt, args.calibration)
        _check_destinations((("--report", report_path), ("--plot", args.plot)), inputs, args.output)
        targets = select_weights(ckpt.specs, include=args.include, exclude=_exclude(args))
        total = len(ckpt.specs) + (len(targets) if args.budget is not None else 0)  # the progress bar's length
    top = _existing_parent(Path(args.output))  # folders below it that the output creates are removed on failure
    step, close = _progress(args, total, "compress")
    try:
        res = compress_checkpoint(
            args.input, args.output, rank=args.rank, rank_fraction=args.rank_fraction,
            param_fraction=args.param_fraction, rtol=args.rtol, budget=args.budget, calibration=args.calibration,
            method=args.method, q=args.q, include=args.include, exclude=_exclude(args),
            max_shard_size=args.max_shard_size, rng=args.seed, progress=step)
    finally:
        close()
    rep = res.report
    try:
        _write_files(("report", report_path, lambda tmp: _write_report(res, tmp)),
                     ("plot", args.plot, lambda tmp: _plot(res.spectra, rep.ranks(), tmp,
                                                           f"{Path(args.input).name}: singular values and chosen "
                                                           f"ranks")))
    except BaseException:
        _remove_output(res.files, Path(args.output), top)
        raise
    if not args.quiet:
        print(rep)
        n = sum(r.factored for r in rep)
        print(f"\n{n} of {len(rep)} weights factored; their parameters {rep.params_before:,} -> {rep.params_after:,} "
              f"({rep.param_fraction:.1%}); wrote {len(res.files)} file(s) to {args.output}")
        print(f"time {res.seconds:.2f} s, of which factorisation {res.factor_seconds:.2f} s")
    return 0


def _remove_output(files, out, top):
    """Remove the checkpoint files written, and the folders the output created."""
    from .compress.checkpoint import _remove_created

    for f in files:
        Path(f).unlink(missing_ok=True)
    if out.suffix != ".safetensors":
        _remove_created(out, top)


def _plot(spectra, ranks, path, title):
    from .compress.plot import plot_spectra

    plot_spectra(spectra, ranks, path, title=title)


def _write_files(*items):
    """Write ``(what, path, write)`` items (``path`` None: skipped) all or none.

    Each ``write(tmp)`` fills a temporary file beside ``path`` (same suffix); all are
    renamed once all are written. On any error the temporary files are removed and no
    ``path`` is replaced.
    """
    from .compress.checkpoint import CheckpointError

    umask = os.umask(0)
    os.umask(umask)
    temps = []
    try:
        for what, path, write in items:
            if path is None:
                continue
            target = Path(path).resolve()  # through a symlink: its target is the file written
            try:
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
                os.close(fd)
                temps.append((Path(tmp), target))
                write(tmp)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
            except OSError as exc:
                raise CheckpointError(f"{path}: cannot write the {what} ({exc.strerror or exc})") from None
        for tmp, target in temps:
            os.replace(tmp, target)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise


def _write_report(res, path):
    if Path(path).suffix.lower() == ".json":
        from .compress.report import dumps

        text = dumps(res.to_dict(), indent=2) + "\n"
    else:
        rep = res.report
        text = (rep.to_markdown() + f"\n\nParameters of the factored weights: {rep.params_before:,} -> "
                f"{rep.params_after:,} ({rep.param_fraction:.1%}). Time {res.seconds:.2f} s, factorisation "
                f"{res.factor_seconds:.2f} s.\n")
    Path(path).write_text(text, encoding="utf-8")


def _inspect(args) -> int:
    from .compress.checkpoint import open_checkpoint
    from .compress.pipeline import DEFAULT_RTOLS, inspect_checkpoint, rows_to_json, rows_to_text, select_weights

    _check_plot(args.plot)
    rtols = tuple(args.rtol) if args.rtol else DEFAULT_RTOLS
    with open_checkpoint(args.input) as ckpt:
        _check_destinations((("--plot", args.plot),), _inputs(ckpt, args.calibration))
        total = len(select_weights(ckpt.specs, include=args.include, exclude=_exclude(args)))
    step, close = _progress(args, total, "inspect")
    try:
        rows = inspect_checkpoint(args.input, rtols=rtols, calibration=args.calibration, include=args.include,
                                  exclude=_exclude(args), cap=args.cap or None,
                                  method=args.method, q=args.q, rng=args.seed, progress=step)
    finally:
        close()
    if args.plot is not None:
        t = rtols[len(rtols) // 2]
        _write_files(("plot", args.plot, lambda tmp: _plot({r.name: r.S for r in rows},
                                                           {r.name: r.suggestions[t][0] for r in rows}, tmp,
                                                           f"{Path(args.input).name}: estimated singular values, "
                                                           f"ranks for rtol {t:g}")))
    if args.json:
        print(rows_to_json(rows))
    elif not rows:
        print(f"randla inspect {args.input}: no 2-D floating '*.weight' tensor is selected "
              f"(check --include/--exclude)")
    elif not args.quiet:
        what = "of each layer's output (calibrated)" if args.calibration else "of each weight"
        computed = f"the {args.cap} computed values" if args.cap else "the values computed"
        print(f"randla inspect {args.input}: decay = beta of a fit s_i ~ i^-beta; suggested rank (parameters kept) "
              f"for a relative Frobenius error {what}; ~ marks a rank beyond {computed}\n")
        print(rows_to_text(rows, rtols))
    return 0


def _demo_layers(args) -> int:
    from ._demo import layer_study

    if not 0 < args.alpha < 1:
        raise _UsageError("--alpha must be in (0, 1)")
    layer_study(matrix=args.matrix, alpha=args.alpha, limit=args.limit, repeat=args.repeat, seed=args.seed)
    return 0


def _demo_model(args) -> int:
    from ._demo import model_study

    _check_plot(args.plot)
    model_study(quick=args.quick, plot=args.plot, seed=args.seed, corpus=args.corpus)
    return 0


class _Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a scheduler) as an exception, so that a run's
    cleanup of partial output happens as for Ctrl-C."""


def _raise_terminated(signum, frame):
    raise _Terminated


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"randla {args.command}"
    previous = None
    if threading.current_thread() is threading.main_thread():  # handlers only go to the main thread
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except _Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as exc:
        if os.environ.get("RANDLA_TRACEBACK"):
            raise
        print(f"{prog}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("RANDLA_TRACEBACK"):
            raise
        print(f"{prog}: internal error: {type(exc).__name__}: {_one_line(exc)} (RANDLA_TRACEBACK=1 shows where)",
              file=sys.stderr)
        return 3
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(exc) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"{exc} (the command line's packages: pip install \"randla[cli]\")"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
