"""Neuron pruning by interpolative decomposition of activations.

For a pair ``Linear1 -> act -> Linear2`` with an elementwise ``act``, collect the hidden
activations on calibration data, ``Z = act(X W1^T + b1)`` (``N x h``, one row per
sample or token), and take a column interpolative decomposition ``Z ~= Z[:, C] T``
(``T: k x h``, ``T[:, C] = I``). Because ``act`` acts elementwise, selecting neurons
commutes with it, so (seed 000; [CRDD2022]_)

.. math:: W_1 \\to W_1[C, :], \\quad b_1 \\to b_1[C], \\quad W_2 \\to W_2 T^T

keeps the network's structure (two smaller dense layers) and changes the second
layer's output on the calibration data by ``(Z - Z[:, C] T) W2^T``, at most
``||Z - Z[:, C] T||_F ||W2||_2`` in Frobenius norm. A gated MLP
(``down(act(gate(x)) * up(x))``, Llama/GLU style) prunes the same way: ``Z`` is the
down projection's input and both ``gate`` and ``up`` keep the rows ``C`` [FWADD2024]_.

Two refinements over the plain ID, both measured on MiniLM (``benchmarks/compare_prune.py``):

* **Output-weighted selection.** Neuron ``j`` reaches the output through column ``j``
  of ``W2``, so the skeleton is chosen by the ID of ``Z D``, ``D = diag(||W2[:, j]||)``
  (the ID's least-squares ``T`` does not depend on ``D``).
* **Ridge-regularised interpolation.** With about as many calibration rows as neurons
  (128 sentences give ~1800 tokens for MiniLM's 1536-wide FFN) the least-squares
  coefficients ``T[:, R] = Z[:, C]^+ Z[:, R]`` of the dropped neurons ``R`` overfit:
  the held-out error is 2-3x the calibration error. ``T[:, C] = I`` is kept and
  ``T[:, R] = (Z_C^T Z_C + lambda I)^{-1} Z_C^T Z_R``, ``lambda`` chosen by generalized
  cross-validation [GHW1979]_ on the second layer's output (closed form from an SVD of
  the ``k x k`` triangular factor of ``Z[:, C]``; ``lambda = 0``, the plain ID, when it
  fits best, e.g. when ``k`` reaches the numerical rank of ``Z``, and when the skeleton
  interpolates the calibration rows, which leaves nothing to cross-validate).

A least-squares refit of ``W2`` on the kept activations,
``argmin_V ||Z[:, C] V^T - Z W2^T||_F = W2 (Z[:, C]^+ Z)^T``, is exactly ``W2 T^T`` for
the ID's ``T`` (which is itself the least-squares fit), so it adds nothing; the ridge
above is the refit that helps.

Activations stream: :func:`accumulate` keeps a matrix ``M`` with ``M^H M = Z^H Z``
(a QR-reduced stack of batches, at most ``2 h`` rows), the column sums and the row
count, which is everything the ID, the ridge and the reported errors need.

References
----------
.. [CRDD2022] J. Chee, M. Renz, A. Damle and C. De Sa, "Model preserving compression
   for neural networks", NeurIPS 2022.
.. [FWADD2024] M. Flynn, A. Wang, D. E. Alvarez, C. De Sa and A. Damle, "STAT:
   Shrinking transformers after training", arXiv:2406.00061 (2024).
.. [GHW1979] G. H. Golub, M. Heath and G. Wahba, "Generalized cross-validation as a
   method for choosing a good ridge parameter", Technometrics 21 (1979).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .. import _validate as V
from .._scale import unit_scale
from ..interpolative import ID_METHODS, interp_decomp
from .factor import _cast_back, _checked_ridge, working_matrix

__all__ = ["Activations", "NeuronSelection", "PrunedNeurons", "PairReport", "PruneReport", "accumulate",
           "select_neurons", "prune_neurons", "neuron_count", "RIDGE_GRID"]

#: Relative ridges ``mu`` tried by generalized cross-validation (``lambda = mu ||Z_C||_F^2 / k``).
RIDGE_GRID = (0.0,) + tuple(float(v) for v in np.logspace(-4, 1, 21))


class Activations(NamedTuple):
    """Streamed calibration activations of one hidden layer.

    Attributes
    ----------
    M : array (m, h)
        ``M^H M = Z^H Z`` for the ``N x h`` activations ``Z`` seen so far: ``Z`` itself
        while ``N <= 2 h``, afterwards the triangular factor of its QR (``m <= 2 h``).
    total : array (h,)
        Column sums of ``Z`` (for the bias term of the output norm), in float64
        (complex128): those of float32 activations near 1e36 overflow float32.
    count : int
        ``N``, the number of rows seen.
    """

    M: Any
    total: Any
    count: int


class NeuronSelection(NamedTuple):
    """Neurons kept and how the dropped ones are interpolated.

    Attributes
    ----------
    idx : array (k,) int64
        Kept neurons, ascending.
    T : array (k, h)
        Interpolation matrix, ``Z ~= Z[:, idx] @ T``, ``T[:, idx] = I`` exactly.
    error : float
        Relative ID error on the calibration activations,
        ``||Z - Z[:, idx] T||_F / ||Z||_F``.
    ridge : float
        Relative ridge ``mu`` used for ``T`` (0: the plain least-squares ID).
    """

    idx: Any
    T: Any
    error: float
    ridge: float


class PrunedNeurons(NamedTuple):
    """Result of :func:`prune_neurons`.

    Attributes
    ----------
    first : list of (W, b)
        The first layers' weights ``W[idx, :]`` (``k x in``) and biases ``b[idx]`` (or
        ``None``), in the order given.
    W2 : array (out, k)
        ``W2 @ T^T``, in ``W2``'s dtype.
    selection : NeuronSelection
    output_error : float
        Relative change of the second layer's output on the calibration data,
        ``||(Z - Z[:, idx] T) W2^T||_F / ||Z W2^T + 1 b2^T||_F``.
    """

    first: list
    W2: Any
    selection: NeuronSelection
    output_error: float


class PairReport(NamedTuple):
    """What pruning did to one pair of layers.

    Attributes
    ----------
    name : str
        The pair, ``"first -> second"`` (``"gate+up -> down"`` for a gated MLP).
    width_before, width_after : int
        Hidden neurons before and after.
    id_error : float
        Relative ID error of the calibration activations, ``||Z - Z[:, C] T||_F / ||Z||_F``.
    output_error : float
        Relative change of the second layer's output on the calibration data.
    ridge : float
        Relative ridge ``mu`` of ``T`` (0: plain ID).
    seconds : float
        Time of the selection and the new weights (not of running the calibration data).
    """

    name: str
    width_before: int
    width_after: int
    id_error: float
    output_error: float
    ridge: float
    seconds: float


_PAIR_COLUMNS = PairReport._fields


class PruneReport(list):
    """A list of :class:`PairReport` with totals and a plain-text table.

    Attributes
    ----------
    capture_seconds : float
        Time spent running the calibration batches (shared by all pairs).

    Examples
    --------
    >>> from randla.compress.prune import PairReport, PruneReport
    >>> rep = PruneReport([PairReport("fc1 -> fc2", 64, 16, 0.1, 0.05, 0.01, 0.002)])
    >>> rep.width_before, rep.width_after, rep.keep_fraction
    (64, 16, 0.25)
    >>> print(str(rep).splitlines()[0])
    name        width_before  width_after  id_error  output_error  ridge  seconds
    """

    capture_seconds: float = 0.0

    @property
    def width_before(self) -> int:
        """Hidden neurons before, summed over the pairs."""
        return sum(r.width_before for r in self)

    @property
    def width_after(self) -> int:
        """Hidden neurons after, summed over the pairs."""
        return sum(r.width_after for r in self)

    @property
    def keep_fraction(self) -> float:
        """``width_after / width_before`` (1.0 for an empty report)."""
        return self.width_after / self.width_before if self.width_before else 1.0

    @property
    def seconds(self) -> float:
        """Selection time summed over the pairs (without the calibration run)."""
        return sum(r.seconds for r in self)

    def to_dicts(self) -> list:
        """One JSON-ready dict per pair."""
        return [r._asdict() for r in self]

    def __str__(self) -> str:
        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v)

        rows = [list(_PAIR_COLUMNS)] + [[fmt(v) for v in r] for r in self]
        rows.append(["total", str(self.width_before), str(self.width_after), "", "", "", f"{self.seconds:.4g}"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(_PAIR_COLUMNS))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)

    def __repr__(self) -> str:
        return (f"PruneReport({len(self)} pairs, width {self.width_before} -> {self.width_after}, "
                f"{self.seconds:.3g} s)")


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------


def neuron_count(h, *, k=None, keep_fraction=None, rtol=None):
    """Validate the size options; return ``(mode, value)`` for the one that is given.

    Exactly one of ``k`` (neurons kept, ``1 <= k <= h``), ``keep_fraction`` (in
    (0, 1]: ``k = max(1, floor(keep_fraction h))``) or ``rtol`` (in (0, 1): the
    fewest neurons whose pivoted QR leaves a relative residual ``<= rtol``; the ID
    error on the calibration activations is that residual only for ``ridge=0``, see
    :func:`select_neurons`). Returns ``("k", k)`` for the first two.

    Examples
    --------
    >>> from randla.compress.prune import neuron_count
    >>> neuron_count(1536, keep_fraction=0.5), neuron_count(1536, rtol=0.1)
    (('k', 768), ('rtol', 0.1))
    >>> neuron_count(1536, k=10, rtol=0.1)
    Traceback (most recent call last):
    ...
    TypeError: give exactly one of k, keep_fraction, rtol; got k and rtol
    """
    given = {"k": k, "keep_fraction": keep_fraction, "rtol": rtol}
    chosen = [n for n, v in given.items() if v is not None]
    if len(chosen) != 1:
        raise TypeError(f"give exactly one of k, keep_fraction, rtol; got {' and '.join(chosen) or 'none'}")
    if k is not None:
        k = V.check_int(k, "k")
        if not 1 <= k <= h:
            raise ValueError(f"k must satisfy 1 <= k <= h = {h} (the hidden width), got {k}")
        return "k", int(k)
    if keep_fraction is not None:
        f = V.check_real(keep_fraction, "keep_fraction")
        if not 0.0 < f <= 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction!r}")
        return "k", max(1, min(h, math.floor(f * h + 1e-9)))  # 0.29 * 100 = 28.999999999999996
    return "rtol", V.check_rtol(rtol)


def _check_ridge(ridge):
    if isinstance(ridge, str):
        if ridge != "gcv":
            raise ValueError(f"ridge must be 'gcv' or a float >= 0, got {ridge!r}")
        return ridge
    return _checked_ridge(ridge, "'gcv' or a finite float >= 0")


def _activations(Z, name="Z"):
    """``(M, total, count, xp)`` from an :class:`Activations` or a raw ``N x h`` array."""
    if isinstance(Z, Activations):
        M, xp = V.as_matrix(Z.M, f"{name}.M", finite_hint=False)
        return M, Z.total, int(Z.count), xp
    M, xp = V.as_matrix(Z, name, finite_hint=False)
    return M, _column_sums(xp, M), int(M.shape[0]), xp


def _column_sums(xp, Z):
    """Column sums of ``Z`` in float64 (complex128)."""
    return xp.sum(Z, axis=0, dtype=B.wide_dtype(xp, Z.dtype))


def _same_library(x, xp, name):
    if B.backend_name(B.namespace(x)) != B.backend_name(xp):
        raise TypeError(f"{name} must be an array of the same library as Z")


def _check_bias(b, n, xp, name):
    if b is None:
        return
    _same_library(b, xp, name)
    if tuple(b.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(b.shape)}")


# ----------------------------------------------------------------------------------
# streaming
# ----------------------------------------------------------------------------------


@B.wide_floats
def accumulate(acc, Z):
    """Add a batch of activations ``Z (n x h)`` to ``acc`` (``None`` to start).

    Rows are stacked until there are more than ``2 h``; then the stack is replaced by
    the ``h x h`` triangular factor of its QR, which has the same Gram matrix, so
    memory stays below ``2 h^2`` numbers however many batches come. Runs in ``Z``'s
    dtype (pass float64 for float64 accumulation); the column sums are float64.

    Parameters
    ----------
    acc : Activations or None
    Z : array (n, h)

    Returns
    -------
    Activations

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.prune import accumulate
    >>> rng = np.random.default_rng(0)
    >>> Z = rng.standard_normal((50, 4))
    >>> acc = None
    >>> for part in np.split(Z, 5):
    ...     acc = accumulate(acc, part)
    >>> acc.M.shape, acc.count, bool(np.allclose(acc.M.T @ acc.M, Z.T @ Z))
    ((4, 4), 50, True)
    """
    Z, xp = V.as_matrix(Z, "Z", finite_hint=False)
    if acc is None:
        M, total, count = Z, _column_sums(xp, Z), Z.shape[0]
    else:
        if acc.M.shape[1] != Z.shape[1]:
            raise ValueError(f"Z has {Z.shape[1]} columns but the accumulated activations have {acc.M.shape[1]}")
        M = xp.concat([acc.M, xp.astype(Z, acc.M.dtype)], axis=0)
        total, count = acc.total + _column_sums(xp, xp.astype(Z, acc.M.dtype)), acc.count + Z.shape[0]
    h = M.shape[1]
    if M.shape[0] > 2 * h:
        M = B.qr(M)[1]
    return Activations(M, total, int(count))


# ----------------------------------------------------------------------------------
# selection and interpolation
# ----------------------------------------------------------------------------------


def _sq(xp, x):
    """``||x||_F^2`` as a Python float."""
    return B.scalar(xp.sum(xp.abs(x) ** 2))


def _interpolation(M, idx, count, Wr, ridge, xp):
    """``(T_R, mu, id_err2, out_err2)`` for the kept columns ``idx`` (host ints).

    In the QR of the skeleton, ``M[:, C] = Q1 R11``, ``R12 = Q1^H M[:, R]`` and the SVD
    ``R11 = U S V^H``, the ridge solution is ``T_R = V diag(s / (s^2 + lambda)) U^H R12``
    and the residual ``M_R - M_C T_R`` splits into the part outside ``span(M_C)``,
    ``P = M_R - Q1 R12`` (the same for every ridge), and ``Q1 U diag(1 - f) U^H R12``
    with ``f = s^2 / (s^2 + lambda)``: every ridge on the grid costs ``O(k)`` once the
    row norms of ``U^H R12`` (times ``Wr^H`` for the output) are known.
    """
    h = M.shape[1]
    rest = np.setdiff1d(np.arange(h), idx)
    C = B.take(M, idx, axis=1)
    Rest = B.take(M, rest, axis=1)
    Q1, R11 = B.qr(C)
    R12 = B.mH(Q1) @ Rest
    P = Rest - Q1 @ R12  # the part of Z_R outside span(Z_C), formed directly (no cancellation)
    U, S, Vh = B.svd(R11)
    UR = B.mH(U) @ R12  # k x (h - k)
    s = np.asarray(B.to_numpy(S), dtype=np.float64)
    rows_id = np.asarray(B.to_numpy(xp.sum(xp.abs(UR) ** 2, axis=1)), dtype=np.float64)
    perp_id = _sq(xp, P)
    if Wr is not None:
        rows_out = np.asarray(B.to_numpy(xp.sum(xp.abs(UR @ B.mT(Wr)) ** 2, axis=1)), dtype=np.float64)
        perp_out = _sq(xp, P @ B.mT(Wr))
    else:
        rows_out, perp_out = rows_id, perp_id
    cut = max(M.shape) * B.eps(xp, M.dtype) * (s[0] if s.size else 0.0)
    live = s > cut
    scale = float((s ** 2).sum()) / max(len(idx), 1)

    def filters(mu):
        """``s_i * filt_i``: the ridge's shrinkage of each singular direction."""
        if mu == 0.0 or scale == 0.0:  # scale 0: a zero skeleton, nothing to shrink
            return live.astype(np.float64)
        lam = mu * scale
        return s ** 2 / (s ** 2 + lam)

    def gcv(mu):
        f = filters(mu)
        dof = float(f.sum())
        if dof >= count:  # interpolates the calibration rows: no estimate of the error
            return math.inf
        return (perp_out + float(((1.0 - f) ** 2 * rows_out).sum())) / (1.0 - dof / count) ** 2

    if ridge == "gcv":
        # the plain ID interpolates the calibration rows (as many live skeleton columns as
        # rows): no estimate of its error to weigh against a ridge; k is the data's rank
        scores = [math.inf] if math.isinf(gcv(0.0)) else [gcv(mu) for mu in RIDGE_GRID]
        mu = RIDGE_GRID[int(np.argmin(scores))] if np.isfinite(min(scores)) else 0.0
    else:
        mu = ridge
    f = filters(mu)
    filt = np.where(live, f / np.where(live, s, 1.0), 0.0)
    filt_x = xp.astype(B.from_numpy(filt, like=M), M.dtype)
    T_R = B.mH(Vh) @ (filt_x[:, None] * UR)
    id_err2 = perp_id + float(((1.0 - f) ** 2 * rows_id).sum())
    out_err2 = perp_out + float(((1.0 - f) ** 2 * rows_out).sum()) if Wr is not None else None
    return T_R, rest, mu, id_err2, out_err2


def _assemble(T_R, idx, rest, h, xp, like):
    """``T`` (k x h) with ``T[:, idx] = I`` and ``T[:, rest] = T_R``."""
    k = len(idx)
    eye = xp.eye(k, dtype=T_R.dtype, device=B.device(like))
    Tp = xp.concat([eye, T_R], axis=1)  # columns in the order [idx, rest]
    inv = np.argsort(np.concatenate([idx, rest]))
    return B.take(Tp, inv, axis=1)


def _select(M, xp, h, mode, value, W2, method, rng):
    """Kept columns (host, ascending) by the ID of ``M D``."""
    if mode == "k" and value == h:
        return np.arange(h)
    A = M
    if W2 is not None:
        d = xp.linalg.vector_norm(W2, axis=0)
        if B.scalar(xp.max(d)) > 0:
            A = M * xp.astype(d, M.dtype)[None, :]
    if mode == "k":
        if value > M.shape[0]:
            raise ValueError(f"keeping k = {value} neurons needs at least {value} calibration rows, got "
                             f"{M.shape[0]}; feed more calibration data or keep fewer neurons")
        idx = interp_decomp(A, value, method=method, rng=rng, check_finite=False).idx
    else:
        idx = interp_decomp(A, rtol=value, method=method, rng=rng, check_finite=False).idx
    return np.sort(np.asarray(B.to_numpy(idx), dtype=np.int64))


def _selection(M, count, xp, mode, value, W2, method, ridge, rng):
    h = M.shape[1]
    idx = _select(M, xp, h, mode, value, W2, method, rng)
    total2 = _sq(xp, M)
    if idx.size == h:
        T = xp.eye(h, dtype=M.dtype, device=B.device(M))
        return NeuronSelection(B.from_numpy(idx, like=M), T, 0.0, 0.0), 0.0
    Wr = None if W2 is None else xp.astype(B.take(W2, np.setdiff1d(np.arange(h), idx), axis=1), M.dtype)
    T_R, rest, mu, id_err2, out_err2 = _interpolation(M, idx, count, Wr, ridge, xp)
    T = _assemble(T_R, idx, rest, h, xp, M)
    err = math.sqrt(id_err2 / total2) if total2 > 0 else 0.0
    return NeuronSelection(B.from_numpy(idx, like=M), T, err, float(mu)), out_err2


@B.wide_floats
def select_neurons(Z, k=None, *, keep_fraction=None, rtol=None, W2=None, method="cpqr", ridge="gcv", rng=None):
    r"""Neurons to keep and the interpolation of the others: ``Z ~= Z[:, idx] @ T``.

    The skeleton ``idx`` is the column ID of ``Z`` (of ``Z D``, ``D = diag(||W2[:, j]||)``,
    when the next layer's weight ``W2`` is given) by
    :func:`randla.interpolative.interp_decomp`; then ``T[:, idx] = I`` and the dropped
    columns ``R`` are fitted by ridge regression,
    ``T[:, R] = (Z_C^H Z_C + \lambda I)^{-1} Z_C^H Z_R``, ``\lambda = \mu ||Z_C||_F^2 / k``,
    ``\mu`` chosen by generalized cross-validation of ``Z_R W2[:, R]^T`` (of ``Z_R``
    without ``W2``) over :data:`RIDGE_GRID`, or given. ``ridge=0`` is the plain
    least-squares ID (the :func:`randla.interpolative.interp_decomp` ``T``).

    Parameters
    ----------
    Z : array (N, h) or Activations
        Hidden activations on calibration data, one row per sample/token, or their
        :func:`accumulate`\ d summary.
    k : int, optional
        Neurons kept.
    keep_fraction : float in (0, 1], optional
        ``k = max(1, floor(keep_fraction h))``.
    rtol : float in (0, 1), optional
        Keep the fewest neurons whose pivoted QR leaves a relative residual
        ``<= rtol`` (of ``Z D`` when ``W2`` is given, of ``Z`` otherwise).
        Exactly one of ``k``, ``keep_fraction``, ``rtol``. With ``ridge=0`` the
        ID's error on these activations is that residual (times the ID's growth
        factor); a ridge refits ``T`` for held-out activations and gives up
        calibration error for it, so ``NeuronSelection.error`` can exceed ``rtol``
        (up to 7x at the GCV ridge in a sweep of random activations).
    W2 : array (out, h), optional
        The next layer's weight: weights the selection and the ridge's validation.
    method : {"cpqr", "srrqr", "randomized"}
        Pivoting of the ID (:func:`randla.interpolative.interp_decomp`).
    ridge : "gcv" or float >= 0, default "gcv"
        Relative ridge ``mu``, or ``"gcv"`` to choose it.
    rng : None, int or numpy.random.Generator
        For ``method="randomized"``.

    Returns
    -------
    NeuronSelection
        ``idx`` (ascending) and ``T`` in ``Z``'s namespace, device and dtype.

    Raises
    ------
    TypeError
        Not exactly one of ``k``, ``keep_fraction``, ``rtol``; wrong types.
    ValueError
        ``k`` outside ``[1, h]``, ``keep_fraction`` outside (0, 1], ``rtol`` outside
        (0, 1); fewer calibration rows than ``k``; ``W2`` not ``out x h``.

    Notes
    -----
    Cost: the ID of an ``m x h`` matrix (``m <= 2h`` after :func:`accumulate`), a QR of
    the ``m x k`` skeleton, ``2 m k (h - k)`` flops for ``R12``, one ``k x k`` SVD and
    ``O(k^2 (h - k))`` for ``T``; every ridge on the grid is then ``O(k)``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.prune import select_neurons
    >>> rng = np.random.default_rng(0)
    >>> Z = np.maximum(rng.standard_normal((200, 6)) @ rng.standard_normal((6, 30)), 0)
    >>> sel = select_neurons(Z, 25)
    >>> len(sel.idx), bool(np.array_equal(sel.T[:, sel.idx], np.eye(25)))
    (25, True)
    >>> bool(sel.error < 0.1)  # relative ID error on the calibration rows
    True
    """
    M, _, count, xp, mode, value, ridge, W2w, _ = _prepare(Z, W2, k, keep_fraction, rtol, method, ridge)
    M, _, W2s, _ = _unit_problem(M, None, W2w, None)
    return _selection(M, count, xp, mode, value, W2s, method, ridge, rng)[0]


def _prepare(Z, W2, k, keep_fraction, rtol, method, ridge):
    """Validated ``(M, total, count, xp, mode, value, ridge, W2, W2's dtype)``; ``W2``
    (optional) in its working dtype (float16/bfloat16 upcast to float32)."""
    M, total, count, xp = _activations(Z)
    h = M.shape[1]
    mode, value = neuron_count(h, k=k, keep_fraction=keep_fraction, rtol=rtol)
    V.check_choice(method, "method", ID_METHODS)
    ridge = _check_ridge(ridge)
    if W2 is None:
        return M, total, count, xp, mode, value, ridge, None, None
    W2, _, out_dtype = working_matrix(W2, "W2", finite_hint=False)
    _same_library(W2, xp, "W2")
    if W2.shape[1] != h:
        raise ValueError(f"W2 must have h = {h} columns (out x h) like the activations, got shape "
                         f"{tuple(W2.shape)}: the pair is not Linear -> elementwise -> Linear")
    if xp.isdtype(M.dtype, "complex floating") and not xp.isdtype(W2.dtype, "complex floating"):
        raise TypeError("Z is complex but W2 is real: the pruned W2 T^T would be complex")
    return M, total, count, xp, mode, value, ridge, W2, out_dtype


def _unit_problem(M, total, W2, b2):
    """``M``, ``total``, ``W2`` and ``b2`` divided by powers of two (:func:`randla._scale.unit_scale`)
    where squares of their entries would leave the dtype's range: the skeleton, ``T``, the
    relative ridge and every relative error are unchanged (``Z -> Z / c`` leaves
    ``Z ~= Z[:, C] T`` as it is), the error sums no longer under- or overflow."""
    M, c = unit_scale(M)
    total = total if total is None or c == 1.0 else total / c
    d = 1.0
    if W2 is not None:
        W2, d = unit_scale(W2)
    if b2 is not None and c * d != 1.0:
        b2 = b2 / (c * d)
    return M, total, W2, b2


def _output_norm2(xp, M, total, count, W2, b2):
    """``||Z W2^T + 1 b2^T||_F^2`` from ``M^H M = Z^H Z`` and the column sums, in float64
    (complex128): the bias terms of single-precision data can leave its range."""
    wide = B.wide_dtype(xp, M.dtype)
    M, W = xp.astype(M, wide), xp.astype(W2, wide)
    n2 = _sq(xp, M @ B.mT(W))  # the output is Z W2^T: a transpose, also for complex data
    if b2 is not None:
        b = xp.astype(b2, wide)
        cross = xp.sum((W @ xp.astype(total, wide)) * (xp.conj(b) if xp.isdtype(b.dtype, "complex floating") else b))
        n2 += 2.0 * B.scalar(xp.real(cross) if xp.isdtype(cross.dtype, "complex floating") else cross)
        n2 += count * _sq(xp, b)
    return max(n2, 0.0)


@B.wide_floats
def prune_neurons(Z, first, W2, *, b2=None, k=None, keep_fraction=None, rtol=None, method="cpqr", ridge="gcv",
                  rng=None):
    r"""Prune the hidden neurons between ``first`` layer(s) and ``W2`` by an ID of ``Z``.

    ``Z ~= Z[:, C] T`` (:func:`select_neurons`, weighted by ``W2``) gives, for every
    ``(W, b)`` in ``first``, ``W -> W[C, :]``, ``b -> b[C]``, and ``W2 -> W2 T^T``. One
    pair ``[(W1, b1)]`` is the MLP ``W2 act(W1 x + b1) + b2``; two pairs
    ``[(W_gate, b_gate), (W_up, b_up)]`` the gated MLP
    ``W_down (act(W_gate x + b_gate) * (W_up x + b_up)) + b_down``, ``Z`` its down
    projection's input. On the calibration data the second layer's output changes by
    ``(Z - Z[:, C] T) W2^T``, so by at most ``||Z - Z[:, C] T||_F ||W2||_2``.

    Parameters
    ----------
    Z : array (N, h) or Activations
        The activations at the second layer's input on calibration data.
    first : sequence of (W, b)
        ``W (h x in)`` and ``b (h,)`` or ``None``: the layer(s) producing the hidden
        units.
    W2 : array (out, h)
    b2 : array (out,), optional
        Only for the reported output error.
    k, keep_fraction, rtol, method, ridge, rng
        As in :func:`select_neurons`.

    Returns
    -------
    PrunedNeurons
        Weights in their own dtype (float16/bfloat16 math runs in float32), namespace
        and device; ``first`` rows are exact copies of the kept rows.

    Raises
    ------
    ValueError
        A first layer without ``h`` rows, a bias of the wrong length, ``W2`` without
        ``h`` columns (the pair is not ``Linear -> elementwise -> Linear``), and the
        errors of :func:`select_neurons`.

    Examples
    --------
    A ReLU MLP whose 12 hidden neurons are positive multiples of 4 distinct ones: the
    activations have rank 4, so 4 neurons carry the function exactly.

    >>> import numpy as np
    >>> from randla.compress.prune import prune_neurons
    >>> rng = np.random.default_rng(0)
    >>> W1 = np.repeat(rng.standard_normal((4, 5)), 3, axis=0) * rng.uniform(1, 2, (12, 1))
    >>> b1 = np.zeros(12)
    >>> W2, X = rng.standard_normal((3, 12)), rng.standard_normal((100, 5))
    >>> Z = np.maximum(X @ W1.T + b1, 0)
    >>> p = prune_neurons(Z, [(W1, b1)], W2, k=4)
    >>> (W1p, b1p), = p.first
    >>> W1p.shape, p.W2.shape
    ((4, 5), (3, 4))
    >>> bool(np.allclose(np.maximum(X @ W1p.T + b1p, 0) @ p.W2.T, Z @ W2.T))
    True
    """
    if W2 is None:
        raise TypeError("W2 (the second layer's weight, out x h) is required")
    M, total, count, xp, mode, value, ridge, W2w, out_dtype = _prepare(Z, W2, k, keep_fraction, rtol, method, ridge)
    h = M.shape[1]
    first = list(first)
    if not first:
        raise ValueError("first must hold at least one (W, b) pair")
    for i, pair in enumerate(first):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise TypeError(f"first[{i}] must be a pair (W, b), got {type(pair).__name__}")
        W, b = pair
        _same_library(W, xp, f"first[{i}] weight")
        if W.ndim != 2 or W.shape[0] != h:
            raise ValueError(f"first[{i}] weight must have h = {h} rows (h x in), got shape {tuple(W.shape)}; "
                             f"the pair is not Linear -> elementwise -> Linear")
        _check_bias(b, h, xp, f"first[{i}] bias")
    _check_bias(b2, W2w.shape[0], xp, "b2")
    Ms, totals, W2s, b2s = _unit_problem(M, total, W2w, b2)
    sel, out_err2 = _selection(Ms, count, xp, mode, value, W2s, method, ridge, rng)
    idx_h = np.asarray(B.to_numpy(sel.idx), dtype=np.int64)
    pruned = [(B.take(W, idx_h, axis=0), None if b is None else B.take(b, idx_h, axis=0)) for W, b in first]
    work = xp.result_type(W2w.dtype, sel.T.dtype)
    W2p = _cast_back(xp.astype(W2w, work) @ B.mT(xp.astype(sel.T, work)), xp, out_dtype)
    denom = _output_norm2(xp, Ms, totals, count, W2s, b2s)
    out_err = 0.0 if denom == 0 or not out_err2 else math.sqrt(out_err2 / denom)  # NaN stays NaN
    return PrunedNeurons(pruned, W2p, sel, out_err)
