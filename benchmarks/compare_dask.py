"""randla on Dask arrays against ``dask.array.linalg.svd_compressed``, in one run.

Run from the repository root::

    python -m benchmarks.compare_dask            # full sizes (a few minutes)
    python -m benchmarks.compare_dask --quick    # small sizes (CI)
    python -m benchmarks.compare dask            # the same through the driver

Two sections (``--sections speed,complex`` picks some):

speed
    ``randla.rsi(A, k, p=p, q=q)`` against ``svd_compressed(A, k,
    n_oversamples=p, n_power_iter=q)`` on in-memory Dask arrays (``from_array``
    of a float64 NumPy matrix with a polynomially decaying spectrum, chunks of
    1000 rows and all columns), k = 50, p = 10, q = 1, threaded scheduler. Both
    make ``2q + 2`` passes over ``A``. Time = building the graph plus computing
    ``(U, S, Vh)``; the two methods alternate (A, B, A, B, ...) and the best of
    ``--repeat`` runs is kept, so load from other jobs hits both alike. Also: the
    normalized spectral error ``||A - U S Vh||_2 / sigma_(k+1)`` (1 is optimal) and
    the number of tasks each computation ran.
complex
    The same call on a complex128 matrix: normalized errors. ``svd_compressed``
    transposes where it should conjugate-transpose, so its error is far from 1.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import numpy as np

from ._common import fmt_err, fmt_ratio, fmt_time, normalized_error, parse_sections, print_table

SECTIONS = ("speed", "complex")
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
    """Build the graph and compute ``(U, S, Vh)``; returns the factors and the task count."""
    import dask
    from dask.callbacks import Callback

    count = [0]

    class _Count(Callback):
        def _posttask(self, *args):
            count[0] += 1

    with _Count():
        U, S, Vh = dask.compute(*fn(A, seed))
    return (U, S, Vh), count[0]


def _matrix(shape, dtype):
    import dask.array as da

    from randla.testing import matrix

    A0, s = matrix(*shape, spectrum="polynomial", dtype=dtype, rng=0)
    return A0, s, da.from_array(A0, chunks=(ROWS, shape[1]))


def section_speed(cfg, repeat):
    import dask

    methods = _methods()
    rows = []
    with dask.config.set(scheduler="threads"):
        for shape in cfg["shapes"]:
            A0, s, A = _matrix(shape, "float64")
            best = {name: np.inf for name in methods}
            out = {}
            for name, fn in methods.items():  # warm-up: imports, first-call caches
                out[name] = _run(fn, A, 0)
            for _ in range(repeat):
                for name, fn in methods.items():
                    t0 = time.perf_counter()
                    _run(fn, A, 0)
                    best[name] = min(best[name], time.perf_counter() - t0)
            ours, theirs = methods
            rows.append({
                "shape": f"{shape[0]}x{shape[1]}",
                "randla": fmt_time(best[ours]),
                "dask": fmt_time(best[theirs]),
                "randla/dask": fmt_ratio(best[ours] / best[theirs]),
                "err randla": fmt_err(normalized_error(A0, *out[ours][0], s)),
                "err dask": fmt_err(normalized_error(A0, *out[theirs][0], s)),
                "tasks randla": out[ours][1],
                "tasks dask": out[theirs][1],
            })
    print_table(rows, title=f"speed: randla.rsi vs dask svd_compressed, float64, k={K}, p={P}, q={Q}, "
                            f"chunks of {ROWS} rows, threaded scheduler, best of {repeat} interleaved runs "
                            "(graph build + compute); err = ||A - U S Vh||_2 / sigma_(k+1)")


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
        {"speed": section_speed, "complex": section_complex}[name](cfg, repeat)
    return 0


def _header():
    import dask

    import randla

    print(f"randla {randla.__version__}; numpy {np.__version__}; dask {dask.__version__}")
    print(f"cores {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
