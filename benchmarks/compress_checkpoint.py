"""``randla compress`` on whole checkpoints: wall time, time outside factorisation, peak memory.

From the repository root::

    python -m benchmarks.compress_checkpoint              # both parts, full size
    python -m benchmarks.compress_checkpoint scale --dir /tmp
    python -m benchmarks.compress_checkpoint minilm --repeat 3
    python -m benchmarks.compress_checkpoint --quick      # small sizes (CI)

``scale``: generates a sharded float32 checkpoint (default sixteen 8192 x 8192 weights
with biases in four shards, 4.3 GB; low rank plus noise) in a temporary folder under
``--dir``, runs ``python -m randla compress IN -o OUT --rank-fraction 0.1`` in a child
process with output shards no larger than the largest input tensor, and prints the
wall time, the time spent factoring (from the ``--report``), the time outside it
(reading, writing, start-up), and the child's peak resident memory against the target
``2 x largest tensor + 0.5 GiB``. Both checkpoints are deleted afterwards (``--keep``
keeps them). The disk space needed is checked first.

``minilm``: ``randla compress`` of the embedded MiniLM checkpoint at
``--rank-fraction 0.4``: wall time of the command against the sum of its
factorisations (median of ``--repeat`` runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GiB = 1 << 30


def generate(folder, *, count, n, shards, seed=0):
    """``count`` float32 ``n x n`` weights (rank ``n/32`` with decaying scales, plus noise)
    and their biases, written as ``shards`` shards; returns the largest tensor's bytes."""
    from randla.compress.checkpoint import write_checkpoint

    per_shard = -(-count // shards)
    tensor_bytes = n * n * 4

    def tensors():
        rng = np.random.default_rng(seed)
        k = max(n // 32, 1)
        scales = np.geomspace(1.0, 0.05, k).astype(np.float32)
        for i in range(count):
            W = (rng.standard_normal((n, k), dtype=np.float32) * scales) @ rng.standard_normal((k, n), dtype=np.float32)
            W *= 1.0 / np.sqrt(n)
            W += 0.02 * rng.standard_normal((n, n), dtype=np.float32)
            yield f"layers.{i}.proj.weight", W
            yield f"layers.{i}.proj.bias", rng.standard_normal(n, dtype=np.float32)
            del W

    # each shard holds per_shard weights and their biases (a bias tips the next weight over)
    write_checkpoint(folder, tensors(), max_shard_size=per_shard * (tensor_bytes + 4 * n), metadata={"format": "pt"})
    return tensor_bytes


def run_compress(args, *, report, threads=None):
    """Run ``python -m randla compress ARGS --report REPORT --quiet``; (wall s, peak RSS bytes, report dict)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if threads:
        env.update(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-m", "randla", "compress", *map(str, args), "--report", str(report), "--quiet"]
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"randla compress failed ({proc.returncode}): {err.read().decode().strip()}")
    rss = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    own = _rss_self()
    if own is not None and own >= 0.5 * rss:
        print(f"note: this process holds {own / GiB:.2f} GiB; the child's peak {rss / GiB:.2f} GiB may be this "
              f"process's (vfork)")
    return wall, rss, json.loads(Path(report).read_text())


def _rss_self():
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def scale(args):
    n, count, shards = (1024, 8, 4) if args.quick else (args.size, args.count, args.shards)
    need = count * (n * n * 4) * (1 + 2 * args.rank_fraction) * 1.05
    free = shutil.disk_usage(args.dir).free
    print(f"scale: {count} float32 {n}x{n} weights in {shards} shards ({count * n * n * 4 / 1e9:.2f} GB), "
          f"--rank-fraction {args.rank_fraction}; {free / 1e9:.0f} GB free in {args.dir}")
    if free < need:
        raise SystemExit(f"not enough disk space in {args.dir}: need {need / 1e9:.1f} GB")
    work = Path(tempfile.mkdtemp(prefix="randla-scale-", dir=args.dir))
    try:
        t0 = time.perf_counter()
        # generated in a child process: this one stays small, so that the peak RSS the kernel
        # reports for the compress child (which starts as a vfork of this process) is its own
        subprocess.run([sys.executable, "-m", "benchmarks.compress_checkpoint", "--generate", str(work / "in"),
                        "--count", str(count), "--size", str(n), "--shards", str(shards)], check=True, cwd=ROOT)
        largest = n * n * 4
        files = sorted((work / "in").iterdir())
        print(f"generated {len(files) - 1} shards + index in {time.perf_counter() - t0:.0f} s")
        wall, rss, rep = run_compress([work / "in", "-o", work / "out", "--rank-fraction", args.rank_fraction,
                                       "--max-shard-size", largest], report=work / "report.json",
                                      threads=args.threads)
        out_bytes = sum(f.stat().st_size for f in (work / "out").iterdir())
        target = 2 * largest + GiB // 2
        factor = rep["factor_seconds"]
        print(f"output: {len(list((work / 'out').iterdir())) - 1} shards, {out_bytes / 1e9:.2f} GB; parameters kept "
              f"{rep['param_fraction']:.3f}")
        print(f"wall time            {wall:8.1f} s   (command, start-up included)")
        print(f"factorisation        {factor:8.1f} s   (sum over {len(rep['layers'])} weights)")
        print(f"outside factorisation{wall - factor:8.1f} s   ({(wall - factor) / wall:.1%}: start-up, reading, "
              f"writing; in-process {rep['seconds'] - factor:.1f} s)")
        print(f"peak RSS             {rss / GiB:8.2f} GiB (target 2 x {largest / GiB:.2f} + 0.5 = "
              f"{target / GiB:.2f} GiB: {'met' if rss <= target else 'NOT met'})")
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def minilm(args):
    from randla.testing import minilm_path

    try:
        src = minilm_path()
    except ModuleNotFoundError as exc:
        print(f"minilm: skipped ({exc})")
        return
    alpha = args.minilm_fraction
    walls, factors, inproc = [], [], []
    with tempfile.TemporaryDirectory(prefix="randla-minilm-", dir=args.dir) as work:
        for i in range(1 if args.quick else args.repeat):
            out = Path(work) / f"out{i}.safetensors"
            wall, _, rep = run_compress([src, "-o", out, "--rank-fraction", alpha], report=Path(work) / "r.json",
                                        threads=args.threads)
            walls.append(wall)
            factors.append(rep["factor_seconds"])
            inproc.append(rep["seconds"])
            out.unlink()
    w, f, p = statistics.median(walls), statistics.median(factors), statistics.median(inproc)
    print(f"minilm: randla compress --rank-fraction {alpha} on the embedded MiniLM ({len(rep['layers'])} weights, "
          f"median of {len(walls)} runs, BLAS threads: {args.threads or 'default'})")
    print(f"wall time {w:.2f} s; in-process {p:.2f} s; sum of factorisations {f:.2f} s; "
          f"wall / factorisations {w / f:.2f}x; in-process / factorisations {p / f:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compress_checkpoint", description=__doc__.split("\n")[0])
    ap.add_argument("parts", nargs="*", choices=("scale", "minilm", []), metavar="PART",
                    help="scale and/or minilm (default: both)")
    ap.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the checkpoints are written")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--rank-fraction", type=float, default=0.1)
    ap.add_argument("--minilm-fraction", type=float, default=0.4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--threads", type=int, help="BLAS threads of the compress process (default: inherited)")
    ap.add_argument("--generate", metavar="FOLDER", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.generate:
        generate(args.generate, count=args.count, n=args.size, shards=args.shards)
        return
    parts = args.parts or ["scale", "minilm"]
    if "scale" in parts:
        scale(args)
    if "minilm" in parts:
        minilm(args)


if __name__ == "__main__":
    main()
