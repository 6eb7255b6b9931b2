"""The studies behind ``randla demo``.

``randla demo layers`` (:func:`layer_study`) repeats the single-layer study of the RSI
paper (seed 003, Sec. 4.1) on real pretrained weights: for every weight matrix of the
embedded MiniLM-L6 checkpoint (or of a given safetensors file, or of a generated
pretrained-like matrix when neither is available) it prints the normalized spectral
error ``||W - W_k||_2 / sigma_{k+1}`` (1 is optimal) and the time of RSVD, RSI with
q = 1..4, block Krylov and the exact SVD, at rank ``k = floor(alpha min(m, n))``.

``randla demo`` (:func:`model_study`) is the whole-model study: every ``nn.Linear`` of
the real MiniLM sentence encoder compressed at once, judged by what the model still
does (see the function).
"""

from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["layer_study"]


def _layer_methods():
    from . import block_krylov_svd, rsi, rsvd

    # (label, passes over W, call); the RSI paper's iteration count is our q + 1
    out = [("rsvd", 2, lambda W, k, rng: rsvd(W, k, rng=rng))]
    out += [(f"rsi q={q}", 2 * q + 2, lambda W, k, rng, q=q: rsi(W, k, q=q, rng=rng)) for q in range(1, 5)]
    out += [(f"krylov q={q}", 2 * q + 2, lambda W, k, rng, q=q: block_krylov_svd(W, k, q=q, rng=rng))
            for q in (1, 2)]
    return out


def _layer_matrices(matrix, limit):
    from .testing import matrix as test_matrix
    from .testing import pretrained_weights

    if matrix == "generated":
        A, _ = test_matrix(1536, 384, spectrum="pretrained", dtype="float32", rng=0)
        return "generated pretrained-like matrix (fast drop, flat tail)", {"generated 1536x384": A}
    try:
        weights = pretrained_weights(None if matrix == "minilm" else matrix)
    except ModuleNotFoundError as exc:
        if matrix != "minilm":
            raise
        print(f"note: {exc}; using a generated pretrained-like matrix instead\n")
        return _layer_matrices("generated", limit)
    source = "MiniLM-L6 (all-MiniLM-L6-v2) weights" if matrix == "minilm" else matrix
    names = list(weights)[:limit] if limit else list(weights)
    return source, {n: weights[n] for n in names}


def _timed(f, repeat):
    best, out = math.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return out, best


def layer_study(*, matrix="minilm", alpha=0.2, limit=0, repeat=3, seed=0) -> None:
    """Print the single-layer study table (one row pair per weight: errors, then times)."""
    from .estimate import normalized_error

    source, mats = _layer_matrices(matrix, limit)
    methods = _layer_methods()
    print(f"randla demo layers: {source}; rank k = floor({alpha} * min(m, n)); error = ||W - W_k||_2 / "
          f"sigma_(k+1) (1 is optimal); time = best of {repeat}\n")
    header = f"{'matrix':<46}{'shape':>10}{'k':>5}  " + "".join(f"{lab:>11}" for lab, _, _ in methods) + \
        f"{'exact':>11}"
    print(header)
    errs = {lab: [] for lab, _, _ in methods}
    speedups = {lab: [] for lab, _, _ in methods}
    for name, W in mats.items():
        W = np.asarray(W)
        m, n = W.shape
        k = max(1, int(alpha * min(m, n)))
        (_, s, _), t_exact = _timed(lambda W=W: np.linalg.svd(W, full_matrices=False), repeat)
        row_e, row_t = [], []
        for lab, _, f in methods:
            (U, S, Vh), t = _timed(lambda f=f, W=W, k=k: f(W, k, seed), repeat)
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
