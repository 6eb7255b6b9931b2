"""The ``randla`` command (also ``python -m randla``).

``randla demo`` repeats the single-layer study of the RSI paper (seed 003,
Sec. 4.1) on real pretrained weights: for every weight matrix of the embedded
MiniLM-L6 checkpoint (or of a given safetensors file, or of a generated
pretrained-like matrix when neither is available) it prints the normalized
spectral error ``||W - W_k||_2 / sigma_{k+1}`` (1 is optimal) and the time of
RSVD, RSI with q = 1..4, block Krylov and the exact SVD, at rank
``k = floor(alpha min(m, n))``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np

__all__ = ["main"]


def _methods():
    from . import block_krylov_svd, rsi, rsvd

    # (label, passes over W, call); the RSI paper's iteration count is our q + 1
    out = [("rsvd", 2, lambda W, k, rng: rsvd(W, k, rng=rng))]
    out += [(f"rsi q={q}", 2 * q + 2, lambda W, k, rng, q=q: rsi(W, k, q=q, rng=rng)) for q in range(1, 5)]
    out += [(f"krylov q={q}", 2 * q + 2, lambda W, k, rng, q=q: block_krylov_svd(W, k, q=q, rng=rng))
            for q in (1, 2)]
    return out


def _demo_matrices(args):
    from .testing import matrix, pretrained_weights

    if args.matrix == "generated":
        A, _ = matrix(1536, 384, spectrum="pretrained", dtype="float32", rng=0)
        return "generated pretrained-like matrix (fast drop, flat tail)", {"generated 1536x384": A}
    try:
        weights = pretrained_weights(None if args.matrix == "minilm" else args.matrix)
    except ModuleNotFoundError as exc:
        if args.matrix != "minilm":
            raise
        print(f"note: {exc}; using a generated pretrained-like matrix instead\n")
        args.matrix = "generated"
        return _demo_matrices(args)
    source = "MiniLM-L6 (all-MiniLM-L6-v2) weights" if args.matrix == "minilm" else args.matrix
    names = list(weights)[: args.limit] if args.limit else list(weights)
    return source, {n: weights[n] for n in names}


def _timed(f, repeat):
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return out, best


def demo(args) -> int:
    """Print the single-layer study table; returns the exit status."""
    from .estimate import normalized_error

    source, mats = _demo_matrices(args)
    methods = _methods()
    print(f"randla demo: {source}; rank k = floor({args.alpha} * min(m, n)); error = ||W - W_k||_2 / "
          f"sigma_(k+1) (1 is optimal); time = best of {args.repeat}\n")
    header = f"{'matrix':<46}{'shape':>10}{'k':>5}  " + "".join(f"{lab:>11}" for lab, _, _ in methods) + \
        f"{'exact':>11}"
    print(header)
    errs = {lab: [] for lab, _, _ in methods}
    speedups = {lab: [] for lab, _, _ in methods}
    for name, W in mats.items():
        W = np.asarray(W)
        m, n = W.shape
        k = max(1, int(args.alpha * min(m, n)))
        (_, s, _), t_exact = _timed(lambda W=W: np.linalg.svd(W, full_matrices=False), args.repeat)
        row_e, row_t = [], []
        for lab, _, f in methods:
            (U, S, Vh), t = _timed(lambda f=f, W=W, k=k: f(W, k, args.seed), args.repeat)
            e = normalized_error(W, U, S, Vh, s=s)
            errs[lab].append(e)
            speedups[lab].append(t_exact / t)
            row_e.append(f"{e:>11.3f}")
            row_t.append(f"{t * 1e3:>9.1f}ms")
        short = name if len(name) <= 45 else "..." + name[-42:]
        print(f"{short:<46}{f'{m}x{n}':>10}{k:>5}  " + "".join(row_e) + f"{1.0:>11.3f}")
        print(f"{'':<46}{'':>10}{'':>5}  " + "".join(row_t) + f"{t_exact * 1e3:>9.1f}ms")
    print(f"\n{'median error':<63}" + "".join(f"{np.median(errs[lab]):>11.3f}" for lab, _, _ in methods))
    print(f"{'median speed-up over exact SVD':<63}" +
          "".join(f"{np.median(speedups[lab]):>10.1f}x" for lab, _, _ in methods))
    print(f"{'passes over W':<63}" + "".join(f"{p:>11d}" for _, p, _ in methods))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="randla", description="randomized numerical linear algebra")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="single-layer study of RSVD, RSI and block Krylov on pretrained weights")
    d.add_argument("--matrix", default="minilm",
                   help="'minilm' (embedded checkpoint, default), 'generated', or a .safetensors file")
    d.add_argument("--alpha", type=float, default=0.2, help="rank fraction: k = floor(alpha min(m, n))")
    d.add_argument("--limit", type=int, default=0, help="only the first LIMIT matrices (0: all)")
    d.add_argument("--repeat", type=int, default=3, help="timing repeats (the best is shown)")
    d.add_argument("--seed", type=int, default=0, help="random seed")
    d.set_defaults(func=demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo" and not 0 < args.alpha < 1:
        print("randla demo: --alpha must be in (0, 1)", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
