"""Framework-free model compression: factor weights, choose ranks, spend a budget.

Never imports torch or JAX: arrays of any array-API library go in and come out in the
same namespace, on the same device, in the same dtype. The adapters
(:mod:`randla.torch`, :mod:`randla.jax`) move tensors in and out (DLPack) and do the
module surgery; the mathematics is here.

One weight at a time (memory bounded by one tensor):

- :func:`~randla.compress.factor.factor` — ``W (out x in) ~= B (out x r) @ A (r x in)``,
  plain or whitened by the layer's input Gram matrix
  (:func:`~randla.compress.factor.whitener`), method ``rsi``/``rsvd``/``krylov``/
  ``exact``, split ``left``/``balanced``; a layer stays dense unless
  ``r (out + in) < out in``. :func:`~randla.compress.factor.truncate` cuts factors to a
  lower rank.
- rank rules (:mod:`randla.compress.ranks`): :func:`~randla.compress.ranks.select_rank`,
  :func:`~randla.compress.ranks.rank_for_rtol`, :func:`~randla.compress.ranks.check_rank_mode`,
  :func:`~randla.compress.ranks.max_saving_rank`, :func:`~randla.compress.ranks.saves_parameters`,
  :func:`~randla.compress.ranks.parameter_count`.
- :class:`~randla.compress.report.LayerReport` per layer, collected in a
  :class:`~randla.compress.report.Report`.

Neurons (:mod:`randla.compress.prune`): :func:`~randla.compress.prune.select_neurons` and
:func:`~randla.compress.prune.prune_neurons` shrink ``Linear -> act -> Linear`` (and gated)
pairs by an interpolative decomposition of the hidden activations, which
:func:`~randla.compress.prune.accumulate` streams.

Many weights: :func:`~randla.compress.group.factor_many` factors a mapping of weights,
layers of equal shape, dtype and rank in one stacked call (:mod:`randla.compress.group`).
Budgets (:mod:`randla.compress.budget`): :func:`~randla.compress.budget.summarize` each
weight in a first pass, :func:`~randla.compress.budget.allocate` a parameter budget over
the summaries, then factor each at its rank. :func:`~randla.compress.weights.compress_weights`
does all of it for a mapping of weights held in memory (the adapters call it).

Error correction (:mod:`randla.compress.correct`): :func:`~randla.compress.correct.fit_corrected`
fits a layer to the original layer's output from the inputs a partly compressed model gives
it, from the Gram matrices in :class:`~randla.compress.correct.TransferStats`
(:func:`~randla.compress.correct.corrected_weight`,
:func:`~randla.compress.correct.transfer_error`); ``randla.torch.compress(..., data=...)``
runs it layer by layer.

Examples
--------
>>> import numpy as np
>>> from randla.compress import factor
>>> W = np.random.default_rng(0).standard_normal((96, 64)).astype(np.float32)
>>> f = factor(W, rank_fraction=0.25, rng=0)
>>> f.B.dtype, f.B.shape, f.A.shape
(dtype('float32'), (96, 16), (16, 64))
"""

from .budget import (
    DEFAULT_CAP,
    LayerSummary,
    allocate,
    allocation_params,
    resolve_budget,
    sample_errors,
    summarize,
    truncation_directions,
    uniform_ranks,
)
from .correct import (
    DEFAULT_SHRINKAGE,
    CorrectedFactors,
    TransferStats,
    corrected_weight,
    fit_corrected,
    transfer_error,
)
from .factor import (
    DEFAULT_RIDGE,
    METHODS,
    SPLITS,
    Factors,
    Metric,
    estimate_normalized_error,
    factor,
    fit_range,
    metric,
    truncate,
    whitener,
)
from .group import STACK_ENTRIES, factor_many
from .prune import (
    Activations,
    NeuronSelection,
    PairReport,
    PrunedNeurons,
    PruneReport,
    accumulate,
    prune_neurons,
    select_neurons,
)
from .ranks import (
    RANK_MODES,
    check_rank_mode,
    max_saving_rank,
    parameter_count,
    rank_for_rtol,
    saves_parameters,
    select_rank,
)
from .report import LayerReport, Report
from .weights import check_grams, compress_weights

__all__ = [
    "DEFAULT_SHRINKAGE",
    "CorrectedFactors",
    "TransferStats",
    "corrected_weight",
    "fit_corrected",
    "transfer_error",
    "Activations",
    "NeuronSelection",
    "PairReport",
    "PrunedNeurons",
    "PruneReport",
    "accumulate",
    "prune_neurons",
    "select_neurons",
    "DEFAULT_CAP",
    "DEFAULT_RIDGE",
    "STACK_ENTRIES",
    "METHODS",
    "RANK_MODES",
    "SPLITS",
    "Factors",
    "Metric",
    "LayerReport",
    "LayerSummary",
    "Report",
    "allocate",
    "allocation_params",
    "check_grams",
    "check_rank_mode",
    "compress_weights",
    "estimate_normalized_error",
    "factor",
    "factor_many",
    "fit_range",
    "max_saving_rank",
    "metric",
    "parameter_count",
    "rank_for_rtol",
    "resolve_budget",
    "saves_parameters",
    "select_rank",
    "summarize",
    "sample_errors",
    "truncation_directions",
    "truncate",
    "uniform_ranks",
    "whitener",
]
