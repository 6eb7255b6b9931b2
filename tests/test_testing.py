"""Test-matrix generators: exact spectra on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from randla.testing import SPECTRA, kahan, matrix, sentences, spectrum


@pytest.mark.parametrize("kind", [k for k in SPECTRA if k != "kahan"])
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_matrix_has_its_spectrum(backend, kind, dtype):
    A, s = matrix(30, 20, spectrum=kind, dtype=dtype, xp=backend.xp, rng=0)
    assert type(A) is type(backend.asarray(np.zeros(1)))
    A, s = backend.to_numpy(A), backend.to_numpy(s)
    assert A.dtype == np.dtype(dtype)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(np.linalg.svd(A.astype(np.complex128), compute_uv=False), s, atol=tol)
    assert np.all(np.diff(s) <= 0)


def test_same_seed_same_matrix_everywhere(backend):
    ref = matrix(8, 6, rng=3).A
    np.testing.assert_array_equal(backend.to_numpy(matrix(8, 6, xp=backend.xp, rng=3).A), ref)


def test_kahan():
    K = kahan(30)
    s = np.linalg.svd(K, compute_uv=False)
    assert s[-1] / s[-2] < 1e-3  # one tiny singular value that CPQR does not reveal
    A, s2 = matrix(30, 30, spectrum="kahan")
    np.testing.assert_allclose(s2, s)
    with pytest.raises(ValueError, match="square"):
        matrix(30, 20, spectrum="kahan")


def test_spectra_shapes():
    assert spectrum("step", 10, rank=3).tolist() == [1, 1, 1] + [1e-3] * 7
    assert np.count_nonzero(spectrum("low_rank", 10, rank=4)) == 4
    p = spectrum("pretrained", 500)
    assert p[0] > 0.9 and p[100] < 0.15 and p[-1] > 0.04  # fast drop, flat tail
    with pytest.raises(ValueError, match="spectrum must be one of"):
        spectrum("cauchy", 4)


@pytest.mark.parametrize("corpus", ["varied", "template"])
def test_sentence_splits_are_fixed_and_disjoint(corpus):
    cal, ev = sentences("calibration", corpus=corpus), sentences("evaluation", corpus=corpus)
    assert len(cal) == len(set(cal)) == len(ev) == len(set(ev)) == 128 and not set(cal) & set(ev)
    assert sentences("evaluation", corpus=corpus) == ev


def test_template_sentences_vary_every_slot():
    words = [s.split() for s in sentences("calibration", corpus="template")]
    assert len({w[1] for w in words}) >= 9 and len({w[-1] for w in words}) == 8


@pytest.mark.parametrize("kw, name", [({"split": "test"}, "split"), ({"corpus": "narrow"}, "corpus")])
def test_sentences_bad_options_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        sentences(**kw)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sentence_embedding_of_a_half_precision_model_is_unit(dtype):
    """Normalised in half precision, the norms were 0.997-1.003, so the dot product of
    two embeddings was not their cosine (1.0002 for identical directions)."""
    torch = pytest.importorskip("torch")
    from types import SimpleNamespace

    from randla.testing import sentence_embedding

    h = torch.randn(16, 7, 384, generator=torch.Generator().manual_seed(0)).to(getattr(torch, dtype))
    e = sentence_embedding(SimpleNamespace(last_hidden_state=h), {"attention_mask": torch.ones(16, 7)})
    assert e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(16), rtol=0, atol=1e-6)
