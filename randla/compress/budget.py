"""Budgeted rank allocation over many layers, from per-layer summaries.

A two-pass design that never needs the whole model in memory: a first pass turns each
weight into a small :class:`LayerSummary` (shape, leading singular values of ``W`` or of
the whitened ``W L``, and ``||.||_F^2``) with :func:`summarize`; :func:`allocate` spends a
total parameter budget over the summaries (cost ``out + in`` per rank, a layer left
dense costs ``out in``); a second pass factors each weight at its rank.

Greedy on the largest gain per parameter is optimal for any separable objective whose
per-layer gains decrease with the rank (a concave knapsack: the greedy threshold solves
its continuous relaxation exactly). :func:`allocate` is that greedy with per-layer
weights on the squared singular values. Which weights are right is the whole question:
on a real model, unweighted spectra lose to a uniform rank fraction, because layers
differ in how their error reaches the model's output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .factor import DEFAULT_RIDGE, _check_method, _energy, _svd_at, whitener, working_matrix
from .ranks import check_rank_mode, max_saving_rank

__all__ = ["LayerSummary", "summarize", "resolve_budget", "allocate", "uniform_ranks", "allocation_params",
           "DEFAULT_CAP"]

DEFAULT_CAP = 256


class LayerSummary(NamedTuple):
    """What the allocator knows about one layer.

    Attributes
    ----------
    name : str
    shape : (int, int)
        ``(out, in)``.
    S : numpy.ndarray
        float64, descending: estimates of the leading singular values of ``M`` (``W``,
        or ``W L`` when whitened), up to a cap.
    energy : float
        ``||M||_F^2``; ``energy - sum(S**2)`` is the remainder beyond the cap.
    whitened : bool
    """

    name: str
    shape: tuple
    S: Any
    energy: float
    whitened: bool

    def squared_tail(self, rank):
        """Estimated ``||M - M_rank||_F^2``: exact up to the cap, then the remainder
        spread evenly over the ranks beyond it (a flat tail, which errs high)."""
        s2 = self.S ** 2
        k = s2.shape[0]
        if rank <= k:
            return max(self.energy - float(np.sum(s2[:rank])), 0.0)
        rest = max(self.energy - float(np.sum(s2)), 0.0)
        n_tail = max(min(self.shape) - k, 1)
        return rest * max(1.0 - (rank - k) / n_tail, 0.0)

    def gains(self, upto):
        """``g[i]`` = decrease of ``||M - M_r||_F^2`` from rank ``i`` to ``i + 1``, for
        ``i < upto`` (the flat-tail model beyond the cap)."""
        s2 = self.S ** 2
        k = s2.shape[0]
        if upto <= k:
            return s2[:upto].copy()
        rest = max(self.energy - float(np.sum(s2)), 0.0)
        n_tail = max(min(self.shape) - k, 1)
        return np.concatenate([s2, np.full(upto - k, rest / n_tail)])


def summarize(W, *, gram=None, cap=DEFAULT_CAP, method="rsi", q=2, p=10, ridge=DEFAULT_RIDGE, rng=None, name="",
              check_finite=True):
    """Summary of one weight for :func:`allocate`: leading singular values and energy.

    Parameters
    ----------
    W : array (out, in)
        As in :func:`~randla.compress.factor`.
    gram : array (in, in), optional
        Input Gram matrix: summarise the whitened ``W L`` instead of ``W``.
    cap : int, default 256
        Singular values computed: ``min(cap, max_saving_rank(shape))``; ``None`` for
        all the useful ones. Beyond the cap the allocator models the remainder
        ``||M||_F^2 - sum(S^2)`` as a flat tail.
    method, q, p, ridge, rng, check_finite
        As in :func:`~randla.compress.factor`.
    name : str

    Returns
    -------
    LayerSummary

    Notes
    -----
    Cost: one rank-``cap`` factorisation of ``W`` (or ``W L``); memory: the weight and
    its sketch, so a checkpoint can be summarised tensor by tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import summarize
    >>> W = np.random.default_rng(0).standard_normal((60, 40))
    >>> s = summarize(W, cap=5, rng=0, name="fc")
    >>> s.shape, s.S.shape
    ((60, 40), (5,))
    >>> bool(np.isclose(s.energy, np.sum(W**2)))
    True
    """
    Ww, xp, _ = working_matrix(W, "W", check_finite=check_finite)
    q, p = _check_method(method, "left", q, p)
    shape = tuple(int(s) for s in Ww.shape)
    rmax = max_saving_rank(shape)
    k = rmax if cap is None else min(int(cap), rmax)
    M = Ww
    if gram is not None:
        if tuple(gram.shape) != (shape[1], shape[1]):
            raise ValueError(f"gram must be in x in = {shape[1]} x {shape[1]} for W of shape {shape}, "
                             f"got {tuple(gram.shape)}")
        M = Ww @ xp.astype(whitener(gram, ridge=ridge), Ww.dtype)
    energy = _energy(M)
    if k < 1:
        S = np.zeros(0)
    else:
        S = B.to_numpy(_svd_at(M, k, method, q, p, B.as_generator(rng))[1]).astype(np.float64)[:k]
    return LayerSummary(name, shape, S, energy, gram is not None)


def _shapes(summaries):
    return {s.name: tuple(s.shape) for s in summaries}


def resolve_budget(budget, shapes):
    """A parameter count from ``budget`` (an int count, or a float fraction of the
    eligible layers' parameters), checked against one rank per factorable layer.

    Parameters
    ----------
    budget : int or float
    shapes : mapping name -> (out, in)

    Returns
    -------
    int

    Raises
    ------
    ValueError
        ``budget`` below ``sum(out + in)`` over the layers that can be factored (one
        rank each) plus the layers that cannot (dense).

    Examples
    --------
    >>> from randla.compress import resolve_budget
    >>> resolve_budget(0.5, {"a": (100, 100), "b": (50, 200)})
    10000
    """
    _, v = check_rank_mode(budget=budget)
    total = sum(o * i for o, i in shapes.values())
    count = int(math.floor(v * total)) if isinstance(v, float) else v
    floor = sum((o + i) if max_saving_rank((o, i)) >= 1 else o * i for o, i in shapes.values())
    if count < floor:
        raise ValueError(f"budget of {count} parameters is smaller than one rank per layer ({floor} parameters "
                         f"for {len(shapes)} layers)")
    return count


def allocation_params(ranks, shapes):
    """Parameters of an allocation: ``r (out + in)`` per factored layer, ``out in`` per dense one.

    Examples
    --------
    >>> from randla.compress import allocation_params
    >>> allocation_params({"a": 10, "b": 400}, {"a": (100, 100), "b": (50, 200)})
    12000
    """
    from .ranks import parameter_count

    return sum(parameter_count(shapes[n], r) for n, r in ranks.items())


def uniform_ranks(shapes, rank_fraction):
    """``{name: floor(alpha min(out, in))}``: the uniform allocation budgets are compared with.

    Examples
    --------
    >>> from randla.compress import uniform_ranks
    >>> uniform_ranks({"a": (1536, 384)}, 0.4)
    {'a': 153}
    """
    from .ranks import select_rank

    return {n: select_rank(s, rank_fraction=rank_fraction) for n, s in shapes.items()}


def allocate(summaries, budget, *, weights=None):
    """Greedy ranks: spend ``budget`` on the largest weighted gains per parameter.

    Each layer starts at rank 1; then ranks are added where ``w_l s_{l,i}^2 / (out_l +
    in_l)`` is largest until the budget is spent (a layer whose useful ranks are
    exhausted may go dense, at the price ``out in - r (out + in)`` for its remaining
    error). This minimises ``sum_l w_l ||M_l - (M_l)_{r_l}||_F^2`` over allocations
    within the budget, up to the last incomplete step [concave knapsack].

    Parameters
    ----------
    summaries : sequence of LayerSummary
    budget : int or float
        Parameter count, or fraction of the layers' dense parameters.
    weights : {"relative", "absolute"} or mapping name -> float, default "relative"
        ``w_l``: ``1 / ||M_l||_F^2`` (sum of relative squared errors), 1 (sum of squared
        errors; with whitened summaries, of squared output errors), or given weights
        (e.g. sensitivities of the model's output to each layer).

    Returns
    -------
    dict
        ``{name: rank}``; a rank above :func:`~randla.compress.max_saving_rank` means
        the layer stays dense.

    Raises
    ------
    ValueError
        A budget below one rank per layer; duplicate names; a mapping of weights
        missing a layer.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import LayerSummary, allocate
    >>> fast = LayerSummary("fast", (100, 100), 0.5 ** np.arange(49), 4 / 3, False)
    >>> flat = LayerSummary("flat", (100, 100), np.ones(49), 100.0, False)
    >>> allocate([fast, flat], 20 * 200)  # relative: the fast-decaying layer gains more per rank at first
    {'fast': 4, 'flat': 16}
    >>> allocate([fast, flat], 20 * 200, weights="absolute")  # absolute: the flat layer holds most energy
    {'fast': 1, 'flat': 19}
    """
    summaries = list(summaries)
    shapes = _shapes(summaries)
    if len(shapes) != len(summaries):
        raise ValueError("summaries must have distinct names")
    total = resolve_budget(budget, shapes)
    w = _weights(summaries, "relative" if weights is None else weights)
    ranks, spent, items = {}, 0, []
    for idx, s in enumerate(summaries):
        out, inp = s.shape
        rmax = max_saving_rank(s.shape)
        if rmax < 1:
            ranks[s.name] = min(s.shape)
            spent += out * inp
            continue
        ranks[s.name] = 1
        spent += out + inp
        g = s.gains(rmax) * w[s.name]
        ratio = g[1:] / (out + inp)  # rank i -> i + 1 for i = 1 .. rmax - 1
        jump_cost = out * inp - rmax * (out + inp)
        jump_gain = w[s.name] * s.squared_tail(rmax)
        last = ratio[-1] if ratio.size else np.inf
        jump_ratio = min(jump_gain / jump_cost, last) if jump_cost > 0 else 0.0
        for i, rt in enumerate(ratio):
            items.append((-rt, idx, i + 2, out + inp))
        items.append((-jump_ratio, idx, -1, jump_cost))
    # items of one layer have non-increasing ratios, so a stable sort keeps their order
    items.sort(key=lambda t: (t[0], t[1], t[2] if t[2] > 0 else 1 << 60))
    left = total - spent
    blocked = set()
    for _, idx, r, cost in items:
        if idx in blocked:
            continue
        if cost > left:
            blocked.add(idx)  # the layer's next step does not fit; later ones need it first
            continue
        name = summaries[idx].name
        ranks[name] = min(summaries[idx].shape) if r == -1 else r
        left -= cost
    return ranks


def _weights(summaries, weights):
    if isinstance(weights, str):
        if weights == "relative":
            return {s.name: (1.0 / s.energy if s.energy > 0 else 0.0) for s in summaries}
        if weights == "absolute":
            return {s.name: 1.0 for s in summaries}
        raise ValueError(f"weights must be 'relative', 'absolute' or a mapping; got {weights!r}")
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be 'relative', 'absolute' or a mapping, got {type(weights).__name__}")
    missing = [s.name for s in summaries if s.name not in weights]
    if missing:
        raise ValueError(f"weights has no entry for layer {missing[0]!r}")
    out = {s.name: float(weights[s.name]) for s in summaries}
    bad = [n for n, v in out.items() if not (v >= 0.0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"weights must be finite and >= 0; got {out[bad[0]]!r} for layer {bad[0]!r}")
    return out
