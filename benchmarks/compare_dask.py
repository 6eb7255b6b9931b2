"""randla on Dask arrays against ``dask.array.linalg.svd_compressed``, in one run.

Run from the repository root::

    python -m benchmarks.compare_dask            # full sizes (a few minutes)
    python -m benchmarks.compare_dask --quick    # small sizes (CI)
    python -m benchmarks.compare dask            # the same through the driver

Three sections (``--sections speed,work,complex`` picks some):

speed
    ``randla.rsi(A, k, p=p, q=q)`` against ``svd_compressed(A, k,
    n_oversamples=p, n_power_iter=q)`` on in-memory Dask arrays (``from_array``
    of a float64 NumPy matrix with a polynomially decaying spectrum, chunks of
    1000 rows and all columns), k = 50, p = 10, q = 1, threaded scheduler.
    ``svd_compressed`` makes ``2q + 2`` passes over ``A``; ``rsi`` makes ``2q + 1``
    (its last power product and the projection share one pass). Time = building
    the graph plus computing ``(U, S, Vh)``; the methods alternate (A, B, A, B, ...)
    for ``--repeat`` rounds, so load from other jobs hits both alike: the best of
    each and the median (with range) of the per-round ratios. Twice: the BLAS on
    its default threads, and on one thread for both methods (``threadpoolctl``
    around the compute: two Dask threads times two OpenBLAS threads oversubscribe
    two cores). Also: the normalized spectral error ``||A - U S Vh||_2 /
    sigma_(k+1)`` (1 is optimal), the tasks each computation ran and the size of
    its graph (``len(dict(graph))``).
work
    The same calls on the synchronous scheduler with the BLAS on one thread:
    CPU time (``time.process_time``), interleaved; the ratio of the bests and the
    median per-round ratio. Less noisy than wall time on a shared machine.
complex
    The same call on a complex128 matrix: normalized errors. ``svd_compressed``
    transposes where it should conjugate-transpose, so its error is far from 1.
fused
    ``block_krylov_svd(A, k, p=p, q=q)`` and ``range_finder(A, k, p=p, q=q)`` (then
    the SVD of ``Q^H A``, one more pass, as ``rsvd`` makes it) on the same matrix,
    fused (``q + 1`` passes: all columns in one chunk) against randla's own separate
    passes (the same matrix in two column chunks: ``2q + 2`` / ``2q + 1`` passes),
    and against ``svd_compressed`` (``2q + 2``): threaded scheduler, BLAS on its
    default threads, interleaved rounds, the ratio of the bests and the median
    per-round ratio, the reads of ``A``'s chunks per call, and the normalized error.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import warnings

import numpy as np

from ._common import fmt_err, fmt_ratio, fmt_time, normalized_error, parse_sections, print_table

SECTIONS = ("speed", "work", "complex", "fused")
K, P, Q, ROWS = 50, 10, 1, 1000

FULL = dict(shapes=((4000, 1000), (20000, 2000)), repeat=3, complex_shape=(4000, 1000))
QUICK = dict(shapes=((4000, 1000),), repeat=3, complex_shape=(2000, 500))


def _methods():
    import dask.array as da

    import randla

    return {
        "randla rsi": lambda A, seed: randla.rsi(A, K, p=P, q=Q, rng=seed),
        "dask svd_compressed": lambda A, seed: da.linalg.svd_compressed(
            A, K, n_oversamples=P, n_power_iter=Q, seed=seed),
    }


def _run(fn, A, seed):
    """Build the graph and compute ``(U, S, Vh)`` (or the arrays ``fn`` returns); returns
    them and the task count."""
    import dask
    from dask.callbacks import Callback

    count = [0]

    class _Count(Callback):
        def _posttask(self, *args):
            count[0] += 1

    with _Count():
        out = dask.compute(*fn(A, seed))
    return out, count[0]


def _matrix(shape, dtype):
    import dask.array as da

    from randla.testing import matrix

    A0, s = matrix(*shape, spectrum="polynomial", dtype=dtype, rng=0)
    return A0, s, da.from_array(A0, chunks=(ROWS, shape[1]))


def _graph_size(arrays):
    from dask.highlevelgraph import HighLevelGraph

    return len(dict(HighLevelGraph.merge(*[x.__dask_graph__() for x in arrays])))


def _ratios(rounds, ours, theirs):
    """``(best of ours / best of theirs, median, min, max of the per-round ratios)``."""
    per = [r[ours] / r[theirs] for r in rounds]
    best = min(r[ours] for r in rounds) / min(r[theirs] for r in rounds)
    return best, statistics.median(per), min(per), max(per)


def _fmt_ratios(best, median, lo, hi):
    return fmt_ratio(best), f"{median:.2f}x ({lo:.2f}-{hi:.2f})"


def _one_blas_thread(on):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1) if on else contextlib.nullcontext()


def section_speed(cfg, repeat):
    import dask

    from ._common import interleaved_rounds

    methods = _methods()
    ours, theirs = methods
    rows = []
    with dask.config.set(scheduler="threads"):
        for shape in cfg["shapes"]:
            A0, s, A = _matrix(shape, "float64")
            out = {name: _run(fn, A, 0) for name, fn in methods.items()}
            graphs = {name: _graph_size(fn(A, 0)) for name, fn in methods.items()}

            def timed(fn, one, A=A):
                def call():
                    with _one_blas_thread(one):
                        _run(fn, A, 0)
                return call

            # A, B, A (one BLAS thread), B (one BLAS thread), A, B, ...
            fns = [timed(fn, one) for one in (False, True) for fn in methods.values()]
            rounds = interleaved_rounds(fns, repeat=repeat)
            best = [min(r[i] for r in rounds) for i in range(len(fns))]
            default, single = _fmt_ratios(*_ratios(rounds, 0, 1)), _fmt_ratios(*_ratios(rounds, 2, 3))
            rows.append({
                "shape": f"{shape[0]}x{shape[1]}",
                "randla": fmt_time(best[0]),
                "dask": fmt_time(best[1]),
                "ratio best": default[0],
                "ratio median (range)": default[1],
                "1 BLAS thread: best": single[0],
                "1 BLAS thread: median (range)": single[1],
                "err randla": fmt_err(normalized_error(A0, *out[ours][0], s)),
                "err dask": fmt_err(normalized_error(A0, *out[theirs][0], s)),
                "tasks run": f"{out[ours][1]} / {out[theirs][1]}",
                "graph": f"{graphs[ours]} / {graphs[theirs]}",
            })
    print_table(rows, title=f"speed: randla.rsi / dask svd_compressed, float64, k={K}, p={P}, q={Q}, chunks of {ROWS} "
                            f"rows, threaded scheduler, {repeat} interleaved rounds (graph build + compute; ratios: "
                            "best of each, and the median with range of the per-round ratios), BLAS on its default "
                            "threads and on one thread for both; err = ||A - U S Vh||_2 / sigma_(k+1); tasks run and "
                            "graph size: randla / dask")


def section_work(cfg, repeat):
    import dask

    methods = _methods()
    rows = []
    with dask.config.set(scheduler="sync"), _one_blas_thread(True):
        for shape in cfg["shapes"]:
            _, _, A = _matrix(shape, "float64")
            for fn in methods.values():  # warm-up
                _run(fn, A, 0)
            rounds = []
            for _ in range(repeat):
                row = []
                for fn in methods.values():
                    t0 = time.process_time()
                    _run(fn, A, 0)
                    row.append(time.process_time() - t0)
                rounds.append(row)
            best, median, lo, hi = _ratios(rounds, 0, 1)
            rows.append({
                "shape": f"{shape[0]}x{shape[1]}",
                "randla CPU": fmt_time(min(r[0] for r in rounds)),
                "dask CPU": fmt_time(min(r[1] for r in rounds)),
                "best": fmt_ratio(best),
                "median (range)": f"{median:.2f}x ({lo:.2f}-{hi:.2f})",
            })
    print_table(rows, title=f"work: CPU time of randla.rsi / dask svd_compressed, synchronous scheduler, BLAS on one "
                            f"thread, {repeat} interleaved rounds")


def section_complex(cfg, repeat):
    import dask

    methods = _methods()
    A0, s, A = _matrix(cfg["complex_shape"], "complex128")
    rows = []
    with dask.config.set(scheduler="threads"), warnings.catch_warnings():
        # Dask's tsqr(compute_svd=True) casts a complex meta to real (ComplexWarning)
        warnings.simplefilter("ignore", np.exceptions.ComplexWarning)
        for name, fn in methods.items():
            (U, S, Vh), _ = _run(fn, A, 0)
            rows.append({"method": name, "U dtype": str(U.dtype), "err": fmt_err(normalized_error(A0, U, S, Vh, s))})
    m, n = cfg["complex_shape"]
    print_table(rows, title=f"complex: complex128 {m}x{n}, k={K}, p={P}, q={Q}: normalized error (1 is optimal)")


class _CountingReads:
    """An array-like over a NumPy array that counts the chunk reads Dask makes."""

    def __init__(self, a):
        import threading

        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.reads, self._lock = 0, threading.Lock()

    def __getitem__(self, idx):
        with self._lock:
            self.reads += 1
        return self.a[idx]


def _reads_per_chunk(fn, A0, chunks):
    """Reads of each chunk of ``A`` that one computation of ``fn(A)`` makes."""
    import dask
    import dask.array as da

    src = _CountingReads(A0)
    A = da.from_array(src, chunks=chunks, asarray=True, meta=np.empty((0, 0), dtype=A0.dtype))
    dask.compute(*fn(A, 0))
    return src.reads / A.npartitions


def _fused_methods():
    import randla

    return {
        "block_krylov_svd": lambda A, seed: randla.block_krylov_svd(A, K, p=P, q=Q, rng=seed, solver="randomized"),
        "range_finder": lambda A, seed: (randla.range_finder(A, K, p=P, q=Q, rng=seed),),
    }


def _error(fn, A, A0, s):
    """Normalized error of an SVD; of ``Q Q^H A`` for a basis ``Q`` (rank ``k + p``)."""
    out = _run(fn, A, 0)[0]
    if len(out) == 3:
        return fmt_err(normalized_error(A0, *out, s))
    (Qb,) = out
    return fmt_err(np.linalg.norm(A0 - Qb @ (Qb.conj().T @ A0), 2) / s[K])


def section_fused(cfg, repeat):
    import dask
    import dask.array as da

    from ._common import interleaved_rounds

    theirs = _methods()["dask svd_compressed"]
    rows = []
    with dask.config.set(scheduler="threads"):
        for shape in cfg["shapes"]:
            A0, s, A = _matrix(shape, "float64")
            split = da.from_array(A0, chunks=(ROWS, -(-shape[1] // 2)))
            for name, fn in _fused_methods().items():
                svd = name != "range_finder"  # a basis only: nothing of svd_compressed's to compare
                calls = [lambda fn=fn, X=X: _run(fn, X, 0) for X in (A, split)]
                calls += [lambda A=A: _run(theirs, A, 0)] if svd else []
                rounds = interleaved_rounds(calls, repeat=repeat)
                sep = _fmt_ratios(*_ratios(rounds, 0, 1))
                dsk = _fmt_ratios(*_ratios(rounds, 0, 2)) if svd else ("-", "-")
                reads = [_reads_per_chunk(fn, A0, c) for c in (A.chunks, split.chunks)]
                errs = [_error(fn, X, A0, s) for X in (A, split)]
                rows.append({
                    "shape": f"{shape[0]}x{shape[1]}",
                    "method": name,
                    "fused": fmt_time(min(r[0] for r in rounds)),
                    "separate": fmt_time(min(r[1] for r in rounds)),
                    "svd_compressed": fmt_time(min(r[2] for r in rounds)) if svd else "-",
                    "/ separate: best": sep[0],
                    "median (range)": sep[1],
                    "/ svd_compressed: best": dsk[0],
                    "median (range) ": dsk[1],
                    "reads of A fused / separate": f"{reads[0]:g} / {reads[1]:g}",
                    "err fused / separate": f"{errs[0]} / {errs[1]}",
                })
    print_table(rows, title="fused: randla on all columns in one chunk (fused passes) / the same matrix in two "
                            f"column chunks (separate passes) and / svd_compressed, float64, k={K}, p={P}, q={Q}, "
                            f"chunks of {ROWS} rows, threaded scheduler, BLAS on its default threads, {repeat} "
                            "interleaved rounds; reads of A = reads of each chunk per call; err: ||A - U S Vh||_2 / "
                            "sigma_(k+1), for range_finder ||A - Q Q^H A||_2 / sigma_(k+1) (rank k + p)")


def main(argv=None):
    args, wanted = parse_sections(
        "python -m benchmarks.compare_dask", __doc__, SECTIONS, argv,
        extra=lambda ap: ap.add_argument("--repeat", type=int, default=None,
                                         help="timed runs per method (default 3)"),
    )
    cfg = QUICK if args.quick else FULL
    repeat = args.repeat or cfg["repeat"]
    _header()
    for name in wanted:
        {"speed": section_speed, "work": section_work, "complex": section_complex,
         "fused": section_fused}[name](cfg, repeat)
    return 0


def _header():
    import dask

    import randla

    print(f"randla {randla.__version__}; numpy {np.__version__}; dask {dask.__version__}")
    print(f"cores {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
