"""Per-layer records of a compression and the report that collects them.

One :class:`LayerReport` per weight (factored or left dense); a :class:`Report` is a
list of them with totals and plain-text, Markdown and JSON renderings. Parameter
counts are those of the weight matrix (a bias is unchanged and not counted).
"""

from __future__ import annotations

import json
import math
from typing import NamedTuple

__all__ = ["LayerReport", "Report", "dumps"]


def dumps(obj, **kwargs) -> str:
    """``json.dumps`` of ``obj`` with every non-finite float written as ``null``.

    JSON has no NaN or infinity (``json.dumps`` would write the non-standard ``NaN``,
    which strict parsers refuse); a value that could not be computed, such as the
    decay fit of a weight with fewer than three nonzero singular values, is absent.

    Examples
    --------
    >>> from randla.compress.report import dumps
    >>> dumps({"decay": float("nan"), "ranks": [1, 2.5]})
    '{"decay": null, "ranks": [1, 2.5]}'
    """
    return json.dumps(_finite(obj), allow_nan=False, **kwargs)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


class LayerReport(NamedTuple):
    """What happened to one weight.

    Attributes
    ----------
    name : str
        Layer (module or tensor) name; ``""`` when none was given.
    shape : (int, int)
        ``(out, in)`` of the weight as factored (a conv kernel is flattened to
        ``(out, in kh kw)``).
    rank : int or None
        Rank of the factors; ``None`` when the layer stays dense.
    params_before, params_after : int
        Numbers in the weight before and after (``out in`` and ``rank (out + in)``).
    normalized_error : float or None
        Estimated ``||M - B A'||_2 / sigma_{rank+1}(M)`` (1 is optimal), ``M`` the
        matrix that was truncated: ``W``, ``W L`` when whitened by input statistics, or
        ``R^H W L`` when also weighted by output gradients (see ``units``).
        ``None`` when dense or when the rank was found from ``rtol`` (no
        ``sigma_{rank+1}`` is computed then).
    relative_error : float
        ``||M - B A'||_F / ||M||_F`` (exact identity on the computed factors; 0 when
        dense): the quantity ``rtol`` bounds.
    output_error : float or None
        With a Gram matrix, the relative output error on the calibration inputs
        ``||(W - B A) X^T||_F / ||W X^T||_F`` (equal to ``relative_error`` up to the
        ridge); ``None`` without calibration, and for two-sided factors (an
        ``output_gram`` too) that a budget cut to their rank with
        :func:`~randla.compress.factor.truncate`, whose input-space error it does not
        recompute.
    seconds : float
        Wall time of this layer's factorisation (spectrum, whitening, error estimate).
    method : str
        ``"rsi"``, ``"rsvd"``, ``"krylov"``, ``"exact"``, or ``"dense"``.
    units : str
        What the factorisation minimised: ``"weight"`` (plain, ``M = W``),
        ``"output"`` (the layer's output error on calibration inputs, ``M = W L``) or
        ``"loss"`` (the K-FAC estimate of the model's output change, ``M = R^H W L``).
    """

    name: str
    shape: tuple
    rank: int | None
    params_before: int
    params_after: int
    normalized_error: float | None
    relative_error: float
    output_error: float | None
    seconds: float
    method: str
    units: str

    @property
    def whitened(self) -> bool:
        """True when calibration data shaped the factors (``units != "weight"``)."""
        return self.units != "weight"

    @property
    def factored(self) -> bool:
        """True when the weight was replaced by factors."""
        return self.rank is not None


_COLUMNS = ("name", "shape", "rank", "params_before", "params_after", "normalized_error", "relative_error",
            "output_error", "seconds")


def _fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return str(v)


class Report(list):
    """A list of :class:`LayerReport` with totals and renderings.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import factor, Report
    >>> W = np.random.default_rng(0).standard_normal((64, 32))
    >>> rep = Report([factor(W, rank=4, rng=0, name="fc").report])
    >>> rep.params_before, rep.params_after, round(rep.param_fraction, 3)
    (2048, 384, 0.188)
    >>> print(rep.to_markdown().splitlines()[0])
    | name | shape | rank | params_before | params_after | normalized_error | relative_error | output_error | seconds |
    """

    @property
    def params_before(self) -> int:
        """Weight parameters before, summed over the layers."""
        return sum(r.params_before for r in self)

    @property
    def params_after(self) -> int:
        """Weight parameters after, summed over the layers."""
        return sum(r.params_after for r in self)

    @property
    def param_fraction(self) -> float:
        """``params_after / params_before`` (1.0 for an empty report)."""
        before = self.params_before
        return self.params_after / before if before else 1.0

    @property
    def seconds(self) -> float:
        """Summed factorisation time."""
        return sum(r.seconds for r in self)

    def ranks(self) -> dict:
        """``{name: rank}`` (``None`` for dense layers)."""
        return {r.name: r.rank for r in self}

    def to_dicts(self) -> list:
        """One JSON-ready dict per layer (``shape`` as a list, ``factored`` added)."""
        return [dict(r._asdict(), shape=list(r.shape), factored=r.factored) for r in self]

    def to_json(self, **kwargs) -> str:
        """JSON: ``{"layers": [...], "params_before", "params_after", "param_fraction", "seconds"}``."""
        return dumps({"layers": self.to_dicts(), "params_before": self.params_before,
                           "params_after": self.params_after, "param_fraction": self.param_fraction,
                           "seconds": self.seconds}, **kwargs)

    def _rows(self):
        return [[_fmt(getattr(r, c)) for c in _COLUMNS] for r in self]

    def _total(self):
        return ["total", "", "", str(self.params_before), str(self.params_after), "", "", "",
                f"{self.seconds:.4g}"]

    def to_markdown(self) -> str:
        """A Markdown table, one row per layer and a total row."""
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in self._rows() + [self._total()]]
        return "\n".join(lines)

    def __str__(self) -> str:
        rows = [list(_COLUMNS)] + self._rows() + [self._total()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def __repr__(self) -> str:
        return (f"Report({len(self)} layers, params {self.params_before} -> {self.params_after} "
                f"({self.param_fraction:.3f}), {self.seconds:.3g} s)")
