"""Rank rules for factoring one weight ``W (out x in) ~= B (out x r) @ A (r x in)``.

A rank-``r`` pair stores ``r (out + in)`` numbers instead of ``out * in``; a layer is
factored only where that is strictly fewer (:func:`saves_parameters`), so the largest
useful rank is ``floor((out in - 1) / (out + in))`` (:func:`max_saving_rank`). Any
larger rank means "keep the layer dense".

The per-layer rank modes (exactly one per call, :func:`check_rank_mode`):

==================  =========================================================
``rank``            ``r`` itself, the same for every layer
``rank_fraction``   ``alpha`` in (0, 1]: ``r = floor(alpha min(out, in))`` (seed 003)
``param_fraction``  share of the layer's parameters kept, in (0, 1]:
                    ``r = floor(f out in / (out + in))``
``rtol``            relative Frobenius error in (0, 1): of the weight, or of the
                    layer's output on the calibration inputs when a Gram matrix
                    is given; needs the spectrum (found by the factorisation)
==================  =========================================================

and, over many layers at once, a parameter ``budget`` (see :mod:`randla.compress.budget`).
The fraction modes give at least rank 1.
"""

from __future__ import annotations

import math

import numpy as np

from .. import _validate as V

__all__ = [
    "RANK_MODES",
    "parameter_count",
    "max_saving_rank",
    "saves_parameters",
    "check_rank_mode",
    "select_rank",
    "rank_for_rtol",
]

RANK_MODES = ("rank", "rank_fraction", "param_fraction", "rtol", "budget")


def _shape(shape):
    try:
        out, inp = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be a pair (out, in), got {shape!r}") from None
    if out <= 0 or inp <= 0:
        raise ValueError(f"shape must be positive, got {tuple(shape)}")
    return out, inp


def parameter_count(shape, rank=None):
    """Numbers stored for an ``out x in`` weight: ``out in`` dense, ``r (out + in)`` factored.

    Parameters
    ----------
    shape : (int, int)
        ``(out, in)``.
    rank : int, optional
        ``None`` (or a rank that does not save parameters) counts the dense weight.

    Returns
    -------
    int

    Examples
    --------
    >>> from randla.compress import parameter_count
    >>> parameter_count((1536, 384)), parameter_count((1536, 384), 100)
    (589824, 192000)
    >>> parameter_count((1536, 384), 400)  # would not save: stays dense
    589824
    """
    out, inp = _shape(shape)
    if rank is None or not saves_parameters(shape, rank):
        return out * inp
    return int(rank) * (out + inp)


def max_saving_rank(shape):
    """Largest ``r`` with ``r (out + in) < out in`` (0 when no rank saves anything).

    Examples
    --------
    >>> from randla.compress import max_saving_rank
    >>> max_saving_rank((384, 384)), max_saving_rank((1536, 384)), max_saving_rank((2, 2))
    (191, 307, 0)
    """
    out, inp = _shape(shape)
    return (out * inp - 1) // (out + inp)


def saves_parameters(shape, rank):
    """True where a rank-``rank`` pair stores fewer numbers than the dense weight.

    Examples
    --------
    >>> from randla.compress import saves_parameters
    >>> saves_parameters((384, 384), 191), saves_parameters((384, 384), 192)
    (True, False)
    """
    out, inp = _shape(shape)
    return 1 <= int(rank) and int(rank) * (out + inp) < out * inp


def check_rank_mode(*, rank=None, rank_fraction=None, param_fraction=None, rtol=None, budget=None,
                    allow_budget=True):
    """Validate the rank options; return ``(mode, value)`` for the one that is given.

    Exactly one of the options must be given. ``rank`` is an int ``>= 1``;
    ``rank_fraction`` and ``param_fraction`` are in (0, 1]; ``rtol`` is in (0, 1);
    ``budget`` is a parameter count (int ``>= 1``) or a fraction of the eligible
    layers' parameters (float in (0, 1]).

    Parameters
    ----------
    rank, rank_fraction, param_fraction, rtol, budget : optional
    allow_budget : bool, default True
        ``False`` for per-weight calls, where a budget makes no sense.

    Returns
    -------
    (str, int or float)

    Raises
    ------
    TypeError
        None or more than one option given, or a value of the wrong type.
    ValueError
        A value out of range.

    Examples
    --------
    >>> from randla.compress import check_rank_mode
    >>> check_rank_mode(rank_fraction=0.4)
    ('rank_fraction', 0.4)
    >>> check_rank_mode(rank=8, rtol=0.1)
    Traceback (most recent call last):
    ...
    TypeError: give exactly one of rank, rank_fraction, param_fraction, rtol, budget; got rank and rtol
    """
    given = {"rank": rank, "rank_fraction": rank_fraction, "param_fraction": param_fraction, "rtol": rtol,
             "budget": budget}
    names = RANK_MODES if allow_budget else RANK_MODES[:-1]
    if not allow_budget and budget is not None:
        raise TypeError("budget applies to many layers at once; give rank, rank_fraction, param_fraction or rtol")
    chosen = [k for k in names if given[k] is not None]
    if len(chosen) != 1:
        got = " and ".join(chosen) if chosen else "none"
        raise TypeError(f"give exactly one of {', '.join(names)}; got {got}")
    mode = chosen[0]
    v = given[mode]
    if mode == "rank":
        return mode, V.check_count(v, "rank", minimum=1)
    if mode == "budget":
        count = V.int_or_none(v)
        if count is not None:
            if count < 1:
                raise ValueError(f"budget must be a parameter count >= 1 or a fraction in (0, 1], got {count}")
            return mode, count
        try:
            v = V.check_real(v, "budget")
        except TypeError:
            raise TypeError(f"budget must be an int (parameters) or a float (fraction), "
                            f"got {type(v).__name__}") from None
        if not 0.0 < v <= 1.0:
            raise ValueError(f"a fractional budget must be in (0, 1], got {v!r}")
        return mode, v
    v = V.check_real(v, mode)
    if mode == "rtol":
        if not 0.0 < v < 1.0:
            raise ValueError(f"rtol must be in (0, 1), got {v!r}")
    elif not 0.0 < v <= 1.0:
        raise ValueError(f"{mode} must be in (0, 1], got {v!r}")
    return mode, v


def select_rank(shape, *, rank=None, rank_fraction=None, param_fraction=None):
    """Rank of an ``out x in`` weight from a shape-only rank mode.

    ``rank`` as given; ``rank_fraction`` ``alpha``: ``max(1, floor(alpha min(out, in)))``;
    ``param_fraction`` ``f``: ``max(1, floor(f out in / (out + in)))``. The result may
    exceed :func:`max_saving_rank`, which means the layer stays dense. For ``rtol`` see
    :func:`rank_for_rtol`.

    Parameters
    ----------
    shape : (int, int)
    rank, rank_fraction, param_fraction : optional
        Exactly one.

    Returns
    -------
    int

    Examples
    --------
    >>> from randla.compress import select_rank
    >>> select_rank((1536, 384), rank_fraction=0.4), select_rank((1536, 384), param_fraction=0.5)
    (153, 153)
    """
    out, inp = _shape(shape)
    mode, v = check_rank_mode(rank=rank, rank_fraction=rank_fraction, param_fraction=param_fraction,
                              allow_budget=False)
    if mode == "rank":
        return v
    if mode == "rank_fraction":
        # round-off guard: 0.4 * 384 = 153.60000000000002, 0.3 * 10 = 2.9999999999999996
        return max(1, math.floor(v * min(out, inp) + 1e-9))
    if mode == "param_fraction":
        return max(1, math.floor(v * out * inp / (out + inp) + 1e-9))
    raise TypeError("rtol needs the spectrum: use rank_for_rtol (or factor(W, rtol=...))")


def rank_for_rtol(singular_values, total_energy, rtol):
    """Smallest rank ``r`` with ``sum_{i>r} s_i^2 <= rtol^2 ||M||_F^2``.

    The tail is ``||M||_F^2 - sum_{i<=r} s_i^2`` (exact for a projection-based
    factorisation), so a spectrum known only up to a cap is enough; if even the whole
    known spectrum misses the target, ``len(singular_values) + 1`` is returned (more
    than is known: in practice "keep dense").

    Parameters
    ----------
    singular_values : array-like (descending)
    total_energy : float
        ``||M||_F^2``.
    rtol : float in (0, 1)

    Returns
    -------
    int

    Examples
    --------
    >>> from randla.compress import rank_for_rtol
    >>> rank_for_rtol([3.0, 2.0, 1.0], 14.0, 0.3)  # tails: 5, 1, 0 against 0.09 * 14
    2
    """
    s2 = np.asarray(singular_values, dtype=np.float64) ** 2
    target = float(rtol) ** 2 * float(total_energy)
    tails = float(total_energy) - np.concatenate([[0.0], np.cumsum(s2)])  # tails[r] = error^2 at rank r
    ok = np.nonzero(tails <= target * (1 + 1e-12))[0]
    r = int(ok[0]) if ok.size else s2.size + 1
    return max(r, 1)
