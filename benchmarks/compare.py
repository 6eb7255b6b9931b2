"""Run the comparison scripts against the peer libraries in one go.

From the repository root::

    python -m benchmarks.compare                 # every section, full sizes
    python -m benchmarks.compare svd --quick     # one section, sizes CI can afford
    python -m benchmarks.compare svd qr --threads 1

Sections: ``svd`` (:mod:`benchmarks.compare_svd`), ``qr``
(:mod:`benchmarks.compare_qr`), ``adjoints`` (:mod:`benchmarks.compare_adjoints`),
``compress`` (:mod:`benchmarks.compare_compress`), ``prune`` (:mod:`benchmarks.compare_prune`).
A section whose module is not there (yet) is skipped with a message. Each section
prints its own tables; see the module docstrings for what they measure.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from ._common import limit_threads

SECTIONS = {
    "svd": "benchmarks.compare_svd",
    "qr": "benchmarks.compare_qr",
    "adjoints": "benchmarks.compare_adjoints",
    "compress": "benchmarks.compare_compress",
    "prune": "benchmarks.compare_prune",
}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    ap.add_argument("sections", nargs="*", metavar="SECTION",
                    help=f"any of {', '.join(SECTIONS)} (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes (for CI)")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit every BLAS pool and torch to this many threads")
    args = ap.parse_args(argv)
    wanted = args.sections or list(SECTIONS)
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    status = 0
    with limit_threads(args.threads):
        for name in wanted:
            try:
                module = importlib.import_module(SECTIONS[name])
            except ModuleNotFoundError as exc:
                if exc.name != SECTIONS[name]:
                    raise  # a missing dependency inside the module is a real error
                print(f"\n== {name}: skipped ({SECTIONS[name]} is not available)")
                continue
            print(f"\n== {name} ({SECTIONS[name]})", flush=True)
            start = time.perf_counter()
            rc = module.main(["--quick"] if args.quick else [])
            status = status or (rc or 0)
            print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
