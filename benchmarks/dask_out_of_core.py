"""randla.rsi on a float32 Zarr matrix several times larger than the Dask workers' memory.

A measurement script, not a test (it writes gigabytes). Run from the repository root::

    python -m benchmarks.dask_out_of_core --dir /tmp/randla-ooc          # ~9 GB store
    python -m benchmarks.dask_out_of_core --dir /tmp/randla-ooc --rows 60000   # a quick try

What it does:

1. Writes (once; reused while its parameters match) an uncompressed float32 Zarr
   store ``A = G D V^T`` of ``--rows`` x ``--cols`` in chunks of ``--chunk-rows``
   full rows: ``G`` Gaussian / sqrt(m) (drawn per chunk from a seed), ``D =
   diag(1/i)``, i <= 128, ``V`` orthonormal. The exact singular values are those
   of ``G D``, known from the streamed 128 x 128 Gram matrix ``G^T G``.
2. Starts a ``distributed.LocalCluster`` of ``--workers`` worker processes with one
   thread each on 127.0.0.1. The cap per worker is enforced twice: Dask's
   ``memory_limit`` (spilling to disk switched off, so memory cannot hide there:
   the worker pauses at 80 % and is restarted at 95 %), and the operating system's
   ``RLIMIT_DATA`` of the same size set in every worker process (``setrlimit`` from
   a worker plugin): an allocation beyond it fails.
3. Disk-read floor: the time to stream the store once through the same workers
   (every chunk read, nothing computed).
4. ``randla.rsi(A, k, q=q)`` (``q + 1`` passes): ``U, S, Vh`` computed together; wall time, time per
   pass (from the task stream: the span of each pass's chunk reads), peak resident
   memory per worker (``ru_maxrss``), and ``S`` against the exact values.

The store may fit in the machine's page cache even when it is far larger than the
workers' memory; with ``--cold`` (default) a background thread drops the store's
pages from the page cache every half second (``posix_fadvise(DONTNEED)`` on its own
files only), so the floor and every pass read from disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time

import numpy as np

RANK = 128  # planted rank
SEED = 2026


def _parse(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dask_out_of_core", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/randla-ooc", help="where the Zarr store lives (default /tmp/randla-ooc)")
    ap.add_argument("--rows", type=int, default=550_000)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--chunk-rows", type=int, default=8192)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory", default="1GiB", help="memory allowed per worker (default 1GiB)")
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--q", type=int, default=1)
    ap.add_argument("--no-cold", dest="cold", action="store_false", help="leave the page cache alone")
    ap.add_argument("--remove", action="store_true", help="delete the store at the end")
    return ap.parse_args(argv)


# ----------------------------------------------------------------------------------
# the store
# ----------------------------------------------------------------------------------


def _factors(cols):
    gen = np.random.default_rng(SEED)
    V, _ = np.linalg.qr(gen.standard_normal((cols, RANK)))
    d = 1.0 / np.arange(1, RANK + 1)
    return d, (d[:, None] * V.T)  # D V^T, RANK x cols


def _chunk_factor(i, rows, m):
    return np.random.default_rng([SEED, i]).standard_normal((rows, RANK)) / np.sqrt(m)


def _store_path(args):
    return os.path.join(args.dir, f"A-{args.rows}x{args.cols}-c{args.chunk_rows}.zarr")


def write_store(args):
    """Write the store chunk by chunk (one chunk in memory); return the exact singular values."""
    import zarr

    path = _store_path(args)
    m, n, c = args.rows, args.cols, args.chunk_rows
    d, DVt = _factors(n)
    done = os.path.exists(os.path.join(path, "randla-done.json"))
    need = m * n * 4
    if not done:
        os.makedirs(args.dir, exist_ok=True)
        free = shutil.disk_usage(args.dir).free
        if free < 1.2 * need:
            sys.exit(f"need {need / 2**30:.1f} GiB in {args.dir}, {free / 2**30:.1f} GiB free")
        shutil.rmtree(path, ignore_errors=True)
        z = zarr.create_array(store=path, shape=(m, n), chunks=(c, n), dtype="float32", compressors=None)
    gram = np.zeros((RANK, RANK))
    t0 = time.perf_counter()
    for i, start in enumerate(range(0, m, c)):
        G = _chunk_factor(i, min(c, m - start), m)
        gram += G.T @ G
        if not done:
            z[start:start + G.shape[0]] = (G @ DVt).astype(np.float32)
    if not done:
        with open(os.path.join(path, "randla-done.json"), "w") as f:
            json.dump({"rows": m, "cols": n, "chunk_rows": c, "seed": SEED}, f)
        print(f"wrote {path} ({need / 2**30:.2f} GiB) in {time.perf_counter() - t0:.0f} s")
    # singular values of G D (V has orthonormal columns): sqrt(eig(D G^T G D))
    return np.sqrt(np.sort(np.linalg.eigvalsh(d[:, None] * gram * d[None, :]))[::-1].clip(0))


class PageCacheDropper:
    """Drops the store's pages from the page cache every ``period`` seconds (own files only)."""

    def __init__(self, path, period=0.5):
        self.files = [os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs]
        self.period = period

    def drop(self):
        for f in self.files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _run(self, stop):
        while not stop.wait(self.period):
            self.drop()

    def __enter__(self):
        self.drop()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ----------------------------------------------------------------------------------
# the cluster
# ----------------------------------------------------------------------------------


def _data_limit_plugin(nbytes):
    from distributed import WorkerPlugin

    class DataLimit(WorkerPlugin):
        """RLIMIT_DATA (heap and private anonymous memory, Linux >= 4.7) of the worker process."""

        name = "randla-data-limit"

        def setup(self, worker):
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (nbytes, nbytes))

    return DataLimit()


def _limits():
    import resource

    return resource.getrlimit(resource.RLIMIT_DATA)[0]


def _peak_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def _touch(block):
    return np.zeros((1, 1), dtype=block.dtype)


def _pass_spans(stream, store_name):
    """``[(start, stop)]`` per pass: the span of the chunk reads of each copy of the store's tasks."""
    spans = {}
    for t in stream:
        key = t["key"][0] if isinstance(t["key"], tuple) else t["key"]
        if not str(key).startswith(store_name):
            continue
        tag = str(key)[len(store_name):] or "-"
        for s in t["startstops"]:
            if s["action"] == "compute":
                lo, hi = spans.get(tag, (np.inf, -np.inf))
                spans[tag] = (min(lo, s["start"]), max(hi, s["stop"]))
    return sorted(spans.values())


def main(argv=None):
    args = _parse(argv)
    import dask
    import dask.array as da
    from dask.utils import parse_bytes
    from distributed import Client, LocalCluster, get_task_stream

    import randla

    s_exact = write_store(args)
    path = _store_path(args)
    limit = parse_bytes(args.memory)
    size = args.rows * args.cols * 4
    print(f"store {args.rows} x {args.cols} float32 = {size / 2**30:.2f} GiB in chunks of {args.chunk_rows} rows; "
          f"{args.workers} workers x {limit / 2**30:.2f} GiB = {args.workers * limit / 2**30:.2f} GiB allowed "
          f"({size / (args.workers * limit):.1f}x)")
    print(f"cores {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    config = {"distributed.worker.memory.target": False, "distributed.worker.memory.spill": False,
              "distributed.worker.memory.pause": 0.8, "distributed.worker.memory.terminate": 0.95}
    cold = PageCacheDropper(path) if args.cold else None
    with dask.config.set(config), LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                               memory_limit=limit, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                               silence_logs=40) as cluster, Client(cluster) as client:
        client.register_plugin(_data_limit_plugin(limit))
        assert all(v == limit for v in client.run(_limits).values())
        A = da.from_zarr(path)
        # warm-up: imports on the workers, a small graph through every code path
        client.compute(randla.rsi(A[: 4 * args.chunk_rows], 8, q=1, rng=0)[1], sync=True)
        floor = []
        for _ in range(2):
            with cold or _null():
                t0 = time.perf_counter()
                client.compute(A.map_blocks(_touch, chunks=(1, 1), dtype=A.dtype).sum(), sync=True)
                floor.append(time.perf_counter() - t0)
        floor_peaks = client.run(_peak_rss)
        client.restart()  # fresh worker processes: the peaks below are those of rsi alone
        assert all(v == limit for v in client.run(_limits).values())
        client.compute(randla.rsi(A[: 4 * args.chunk_rows], 8, q=1, rng=0)[1], sync=True)
        with cold or _null(), get_task_stream(client) as ts:
            t0 = time.perf_counter()
            U, S, Vh = randla.rsi(A, args.k, q=args.q, rng=0)
            build = time.perf_counter() - t0
            U, S, Vh = client.compute([U, S, Vh], sync=True)
            total = time.perf_counter() - t0
        peaks = client.run(_peak_rss)
        spans = _pass_spans(ts.data, A.name)
    passes = args.q + 1  # a power iteration is one pass, and so is the last product with the projection
    rel = np.abs(S - s_exact[: args.k]) / s_exact[: args.k]
    print(f"disk-read floor (stream the store once): {min(floor):.1f} s ({size / min(floor) / 2**30:.2f} GiB/s); "
          f"runs {', '.join(f'{t:.1f}' for t in floor)} s")
    print(f"rsi k={args.k} q={args.q}: {total:.1f} s for {passes} passes ({total / passes:.1f} s per pass, "
          f"{total / passes / min(floor):.2f}x the floor); graph built in {build:.2f} s")
    if len(spans) == passes:
        print("reads per pass: " + ", ".join(f"{hi - lo:.1f} s" for lo, hi in spans))
    mib = lambda d: ", ".join(f"{p / 2**20:.0f} MiB" for p in d.values())  # noqa: E731
    print(f"peak resident memory per worker: rsi {mib(peaks)}; floor {mib(floor_peaks)} "
          f"(limit {limit / 2**20:.0f} MiB)")
    half = args.k // 2
    print(f"U {U.shape} {U.dtype}, |U^T U - I| {np.abs(U.T @ U - np.eye(args.k)).max():.1e}; S vs the exact singular "
          f"values: max relative error {rel[:half].max():.1e} over the first {half}, {rel.max():.1e} over all {args.k} "
          f"(q={args.q} on a 1/i spectrum: the last ones are underestimated, as on NumPy)")
    if args.remove:
        shutil.rmtree(path)
    return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    sys.exit(main())
