"""Factor one weight ``W (out x in) ~= B (out x r) @ A (r x in)``, plain or data-whitened.

Plain (seeds 003, 004): the truncated (randomized) SVD ``W ~= U_r S_r V_r^H`` gives
``B = U_r S_r``, ``A = V_r^H`` (``split="left"``) or ``B = U_r S_r^{1/2}``,
``A = S_r^{1/2} V_r^H`` (``split="balanced"``). It minimises ``||W - B A||`` in the weight
space.

Whitened (activation-aware; SVD-LLM's truncation-aware whitening, Wang et al. 2024):
what matters is the error on the inputs the layer sees, ``||(W - B A) X^T||_F`` over
calibration inputs ``X (N x in)``. With the input Gram matrix ``G = X^T X`` and its
Cholesky factor ``L L^T = G + lambda tr(G)/in I`` (the ridge keeps a rank-deficient
``G`` factorable), ``||(W - B A) X^T||_F^2 = ||(W - B A) L||_F^2`` up to the ridge, so the
optimum is the truncated SVD of ``M = W L = U S V^H``: ``B = U_r S_r``,
``A = V_r^H L^{-1}`` — a triangular solve, never an inverse — then each rank rescaled
between ``B`` and ``A`` (``A``'s rows of unit norm), so that the factors do not carry
the scale of the calibration data (which ``L`` does). ``M`` is just another
matrix for ``rsi``; whitening adds one Cholesky factorisation of ``G``, one product
``W L`` and one triangular solve with ``r`` right-hand sides.

Everything here works on one weight at a time, so a checkpoint can be compressed
tensor by tensor in memory bounded by one tensor.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np

from .. import _backend as B
from .. import _validate as V
from .._scale import _window, norm, unit_scale, unscale
from ..estimate import _lanczos_norm
from ..svd import adaptive_range_finder, block_krylov_svd, rsi, rsvd
from .ranks import check_rank_mode, max_saving_rank, parameter_count, rank_for_rtol, saves_parameters, select_rank
from .report import LayerReport

__all__ = ["Factors", "Metric", "METHODS", "SPLITS", "factor", "truncate", "whitener", "metric", "metric_units",
           "whiten", "working_matrix", "fit_range", "DEFAULT_RIDGE"]

METHODS = ("rsi", "rsvd", "krylov", "exact")
SPLITS = ("left", "balanced")
DEFAULT_RIDGE = 1e-6


class Factors(NamedTuple):
    """Result of :func:`factor`.

    Attributes
    ----------
    B : array (out, r) or None
        ``None`` when the layer stays dense.
    A : array (r, in) or None
        ``W ~= B @ A``; dtype, namespace and device of ``W``.
    S : numpy.ndarray
        float64, descending: the singular values of ``M`` (``W`` or ``W L``) that the
        factorisation computed (``r`` plus the oversampling), for rank decisions.
    energy : float
        ``||M||_F^2``.
    report : LayerReport
    """

    B: Any
    A: Any
    S: Any
    energy: float
    report: LayerReport


_LOW_PRECISION = ("float16", "bfloat16")
# largest finite values of the low-precision storage dtypes
_LOW_PRECISION_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38}


def _dtype_name(dtype):
    """``"float16"``, ``"bfloat16"``, ...: a NumPy, ``ml_dtypes``, JAX or torch dtype by name."""
    try:
        return np.dtype(dtype).name
    except TypeError:  # a torch dtype
        return str(dtype).removeprefix("torch.")


def working_matrix(W, name="W", *, check_finite=True, finite_hint=True):
    """``(W_work, xp, out_dtype)``: ``W`` in the dtype the math runs in.

    float32/float64/complex stay as they are; float16 and bfloat16 (torch, or NumPy
    with ``ml_dtypes``) are upcast to float32 and ``out_dtype`` remembers the original
    so that factors can be cast back; integers and bools are promoted to float64 as
    everywhere in randla. The upcast is a copy; nothing else is. A tensor that
    requires grad (a torch parameter) is detached: factors carry no autograd graph.
    """
    W = B.detached(W)
    try:
        xp = B.namespace(W)
    except TypeError:
        raise TypeError(f"{name} must be an array of an array-API library, got {type(W).__name__}") from None
    dtype_name = _dtype_name(W.dtype)
    out_dtype = None
    if dtype_name in _LOW_PRECISION:
        out_dtype = W.dtype
        W = W.astype(np.float32) if isinstance(W, np.ndarray) else xp.astype(W, xp.float32)
    W, xp = V.as_matrix(W, name, check_finite=check_finite, finite_hint=finite_hint)
    return W, xp, out_dtype if out_dtype is not None else W.dtype


def fit_range(Bf, Af, dtype, *, name=""):
    """Factors ``(B D, D^{-1} A)`` whose entries fit ``dtype``'s range, ``D`` diagonal.

    Nothing changes unless ``dtype`` is float16 or bfloat16 and an entry of ``B`` or
    ``A`` exceeds a quarter of its largest value; then each such rank is rescaled so
    that its largest entries in ``B`` and ``A`` are equal (``B = U_r S_r`` of a float16
    weight whose rows have norms above 65504 overflowed, although every entry of the
    weight fits). The product ``B A`` is unchanged up to rounding.

    Parameters
    ----------
    Bf : array (out, r)
    Af : array (r, in)
        In a wider dtype (float32), any array-API namespace.
    dtype : dtype or str
        The storage dtype the factors are cast to next (NumPy, ``ml_dtypes``, torch
        or JAX dtype).
    name : str
        The layer, for the error message.

    Returns
    -------
    (Bf, Af)

    Raises
    ------
    ValueError
        Some rank's largest entries exceed the range even when equalised.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import fit_range
    >>> B_, A_ = fit_range(np.full((4, 1), 8e4, np.float32), np.full((1, 4), 0.125, np.float32), np.float16)
    >>> float(B_.max()), float(A_.max())
    (100.0, 100.0)
    """
    dtype_name = _dtype_name(dtype)
    limit = _LOW_PRECISION_MAX.get(dtype_name)
    if limit is None or Bf.shape[1] == 0:
        return Bf, Af
    xp = B.namespace(Bf)
    b, a = xp.max(xp.abs(Bf), axis=0), xp.max(xp.abs(Af), axis=1)
    bound = limit / 4  # headroom for the rounding of the cast and of the products that follow
    if B.scalar(xp.max(b)) <= bound and B.scalar(xp.max(a)) <= bound:
        return Bf, Af
    over = (b > bound) | (a > bound)
    d = xp.where(over & (a > 0) & (b > 0), xp.sqrt(a) / xp.sqrt(_positive(xp, b)), xp.ones_like(a))
    if B.scalar(xp.max(xp.sqrt(a) * xp.sqrt(b))) > bound:
        raise ValueError(f"{name or 'the weight'}: its factors do not fit {dtype_name}'s range even with each rank "
                         f"balanced; factor it in float32")
    return Bf * d[None, :], Af / d[:, None]


def _cast_back(X, xp, dtype):
    if X.dtype == dtype:
        return X
    return X.astype(dtype) if isinstance(X, np.ndarray) else xp.astype(X, dtype)


def _checked_ridge(ridge, allowed="a finite float >= 0"):
    """``ridge`` as a float, or the error that names it (checked whether or not it is used)."""
    try:
        value = V.check_real(ridge, "ridge")
    except TypeError:
        raise TypeError(f"ridge must be {allowed}, got {ridge!r}") from None
    if not (value >= 0.0 and math.isfinite(value)):
        raise ValueError(f"ridge must be {allowed}, got {ridge!r}")
    return value


@B.wide_floats
def whitener(gram, *, ridge=DEFAULT_RIDGE, name="gram"):
    """Lower Cholesky factor ``L`` of ``G + ridge tr(G)/n I`` (float64 or complex128).

    Parameters
    ----------
    gram : array (n, n)
        Hermitian positive semidefinite input Gram matrix ``X^H X`` (any float dtype;
        the factor is computed in float64/complex128).
    ridge : float, default 1e-6
        Relative ridge ``lambda``: ``lambda tr(G)/n`` is added to the diagonal, which
        makes a rank-deficient ``G`` (fewer calibration tokens than inputs, dead
        inputs) factorable and barely changes a well-conditioned one. ``0`` only for a
        ``G`` known to be definite.
    name : str
        Argument name used in error messages.

    Returns
    -------
    L : array (n, n)
        Lower triangular. A zero ``G`` (all calibration inputs zero: any factors give
        zero output error) gets the identity, so the factorisation falls back to
        plain.

    Raises
    ------
    ValueError
        ``G`` not square, not finite, or not positive semidefinite.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import whitener
    >>> X = np.random.default_rng(0).standard_normal((100, 5))
    >>> L = whitener(X.T @ X, ridge=0.0)
    >>> bool(np.allclose(L @ L.T, X.T @ X))
    True
    """
    return _whitener(gram, ridge, name)[0]


@B.wide_floats
def _whitener(gram, ridge, name):
    """``(L, shift)``: :func:`whitener`'s factor and the ridge ``shift`` it added to the
    diagonal (0 where ``L`` is the identity of a zero ``G``)."""
    G, xp = V.as_matrix(gram, name, finite_hint=False)  # checked always: its factor needs it
    n = G.shape[0]
    if G.shape[1] != n:
        raise ValueError(f"{name} must be square (in x in), got shape {tuple(G.shape)}")
    ridge = _checked_ridge(ridge)
    wide = B.wide_dtype(xp, G.dtype)
    # G / c, c a power of two near max |G| where tr(G) would leave float64: L = sqrt(c) L_c
    G, c = unit_scale(xp.astype(G, wide))
    G = (G + B.mH(G)) / 2  # Cholesky reads one triangle; symmetrise accumulated round-off
    eye = xp.eye(n, dtype=wide, device=B.device(G))
    trace = B.scalar(xp.real(xp.linalg.trace(G)))
    if trace <= 0.0:
        if trace == 0.0 and not bool(xp.any(G != 0)):
            return eye, 0.0
        # a positive semidefinite matrix with zero trace is zero
        raise ValueError(f"{name} is not positive semidefinite ({'negative' if trace < 0 else 'zero'} trace"
                         f"{'' if trace < 0 else ', nonzero entries'})")
    shift = float(ridge * trace / n + np.finfo(np.float64).tiny)
    try:
        L = B.cholesky(G + shift * eye, upper=False)
    except Exception as exc:  # LinAlgError (NumPy/SciPy), torch's _LinAlgError, ...
        raise ValueError(f"{name} is not positive semidefinite (Cholesky failed even with ridge {ridge:g}); "
                         f"pass a Gram matrix X^H X or a larger ridge") from exc
    if not bool(xp.all(xp.isfinite(L))):
        raise ValueError(f"{name} is not positive semidefinite (Cholesky gave NaN); pass a Gram matrix X^H X")
    return unscale(L, math.sqrt(c)), shift * c


def _svd_at(M, r, method, q, p, rng):
    """Truncated SVD of ``M`` (or a stack ``(c, m, n)``) with the singular values of the whole
    sketch (``r`` + oversampling)."""
    m, n = M.shape[-2:]
    if method == "exact":
        return B.svd(M)
    l = min(r + p, m, n)
    # rank l with no oversampling draws the same l-column sketch as rank r with p
    if method == "rsi":
        return rsi(M, l, p=0, q=q, rng=rng, check_finite=False)
    if method == "rsvd":
        return rsvd(M, l, p=0, q=0, rng=rng, check_finite=False)
    return block_krylov_svd(M, l, p=0, q=q, rng=rng, check_finite=False)


def _svd_rtol(M, rtol, rmax, method, q, rng, ridge_energy=0.0):
    """``(U, S, Vh, r)`` for the smallest rank meeting ``rtol``; ``r = None`` if above ``rmax``.

    The tail of ``M``'s spectrum must stay below ``rtol^2 (||M||_F^2 - ridge_energy)``:
    the part of ``M``'s energy its metric's ridges add (:func:`_ridge_energy`) is no
    output on the calibration data, and tightens the tolerance in proportion."""
    energy = _energy(M)
    if energy == 0.0:  # a zero matrix: rank 1 meets any tolerance
        U, S, Vh = _svd_at(M, 1, "rsvd", 0, 0, rng)
        return U, S, Vh, 1
    if ridge_energy:
        rtol = rtol * math.sqrt(max(energy - ridge_energy, 0.0) / energy)
        if not rtol > 0.0:  # nothing left to measure against: only the dense layer is certain
            return None, None, None, None
    if method == "exact":
        U, S, Vh = B.svd(M)
        r = rank_for_rtol(B.to_numpy(S), energy, rtol)
        return U, S, Vh, (r if r <= rmax else None)
    Q = adaptive_range_finder(M, rtol, q=max(q, 1), max_rank=min(rmax + 1, *M.shape), rng=rng,
                              check_finite=False)
    Ub, S, Vh = B.svd(B.mH(Q) @ M)
    r = rank_for_rtol(B.to_numpy(S), energy, rtol)
    if r > rmax or r > S.shape[0]:
        return None, None, None, None
    return Q @ Ub, S, Vh, r


def _ridge_energy(W, m):
    """What the metric's ridges add to the energy of ``M = R^H W L``
    (``L L^H = G + delta_L I``, ``R R^H = H + delta_R I``):
    ``delta_L ||R^H W||^2 + delta_R ||W L||^2 - delta_L delta_R ||W||^2``, so that
    ``||M||_F^2`` minus it is the output (or loss) energy on the calibration data
    itself, which ``factor``'s ``rtol`` is relative to. Large where ``W`` weighs
    inputs the data barely excites; 0 without ridges."""
    dL, dR = m.shifts
    xp = B.namespace(W)
    excess = 0.0
    if dL:
        excess += dL * _energy(W if m.R is None else xp.astype(B.mH(m.R), W.dtype) @ W)
    if dR:
        excess += dR * _energy(W if m.L is None else W @ xp.astype(m.L, W.dtype))
    if dL and dR:
        excess -= dL * dR * _energy(W)
    return excess


def _energy(M):
    """``||M||_F^2`` accumulated in float64 over blocks of rows: never a float64 copy of
    the whole ``M`` (which would double the memory of a checkpoint's largest tensor)."""
    xp = B.namespace(M)
    wide = B.wide_dtype(xp, M.dtype)
    step = max(1, (1 << 22) // max(int(M.shape[1]), 1))  # about 4M entries (32 MB) per block
    total, rows = 0.0, int(M.shape[0])
    for i in range(0, rows, step):
        Mw = xp.astype(M[i:min(i + step, rows), :], wide)  # in-bounds stop: the standard requires it
        total += B.scalar(xp.real(xp.sum(Mw * xp.conj(Mw))))
    return total


def _normalized_error(M, U, S, Vh, r, rng):
    """``||M - U_r S_r Vh_r||_2 / s_{r+1}``: see :func:`_residual_ratio`."""
    S_host = B.to_numpy(S)
    if S_host.shape[0] <= r:
        return None
    xp = B.namespace(M)
    return _residual_ratio(M, U[:, :r] * xp.astype(S[:r], M.dtype)[None, :], Vh[:r, :], float(S_host[r]),
                           float(S_host[0]), rng)


def _residual_ratio(M, P, Q, sigma, top, rng):
    """``||M - P Q||_2 / sigma`` by 20 Lanczos steps on the residual operator.

    ``sigma`` is the sketch's ``s_{r+1}``, a lower bound of ``sigma_{r+1}(M)``, so the
    estimate errs high. Where both the residual and ``sigma`` are at the rounding
    level of ``top`` (``s_1``), as on a matrix of rank at most ``r``, their ratio is
    noise and the factorisation is as good as any: 1.
    """
    xp = B.namespace(M)
    if B.prefers_whole_matrix_kernels(xp):  # a loop of small operations: run it on the host
        M, P, Q = (B.to_numpy(x) for x in (M, P, Q))
        xp = B.namespace(M)
    PH, QH, MH = B.mH(P), B.mH(Q), B.mH(M)
    # the residual seen through its products; "dense" marks M as the array that gives
    # the namespace, device and dtype of the Lanczos vectors
    op = V.Operand(M, xp, tuple(M.shape), M.dtype, lambda X: M @ X - P @ (Q @ X),
                   lambda X: MH @ X - QH @ (PH @ X), True)
    res = B.scalar(_lanczos_norm(op, 20, rng))
    rounding = 100 * B.eps(xp, M.dtype) * max(top, 1e-300)
    if res <= rounding and sigma <= rounding:
        return 1.0
    return math.inf if sigma <= 0.0 else res / sigma


def estimate_normalized_error(W, factors, *, whitening=None, rng=None):
    """Estimated ``||M - B' A'||_2 / sigma_{r+1}(M)`` of factors (e.g. after :func:`truncate`).

    ``M = R^H W L`` and ``B' A' = R^H B A L`` for the metric the factors were computed
    in (``whitening``, from :func:`metric`; ``None``: plain). 20 Lanczos steps on the
    residual; ``sigma_{r+1}`` is taken from ``factors.S`` (the sketch's estimate).

    Parameters
    ----------
    W : array (out, in)
    factors : Factors
        Not dense; ``factors.S`` must hold more than ``rank`` values.
    whitening : Metric, optional
    rng : None, int or numpy.random.Generator

    Returns
    -------
    float or None
        ``None`` for dense factors or when ``sigma_{r+1}`` is unknown.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import factor, truncate
    >>> from randla.compress.factor import estimate_normalized_error
    >>> W = np.random.default_rng(0).standard_normal((50, 40))
    >>> f = truncate(factor(W, rank=20, method="exact"), 5)
    >>> round(estimate_normalized_error(W, f, rng=0), 3)
    1.0
    """
    r = factors.report.rank
    if r is None or factors.S.shape[0] <= r:
        return None
    Ww, xp, _ = working_matrix(W, "W", check_finite=False)
    m = whitening if whitening is not None else Metric(None, None, False)
    if m.zero_output:
        m = m._replace(R=None)
    Bw, Aw = (xp.astype(x, Ww.dtype) for x in (factors.B, factors.A))
    P = Bw if m.R is None else xp.astype(B.mH(m.R), Ww.dtype) @ Bw
    Q = Aw if m.L is None else Aw @ xp.astype(m.L, Ww.dtype)
    return _residual_ratio(whiten(Ww, m), P, Q, float(factors.S[r]), float(factors.S[0]), B.as_generator(rng))


def _split(xp, U, S, Vh, split):
    S = xp.astype(S, U.dtype)
    if split == "left":
        return U * S[None, :], Vh
    root = xp.sqrt(S)
    return U * root[None, :], root[:, None] * Vh


def _unscale_split(Bf, Af, c, split):
    """Factors of ``c W`` from those of ``W``: ``(c B, A)``, or ``sqrt(c)`` on each side
    (``"balanced"``). Applied last, after the per-rank rescaling, so that the singular
    values of a weight near the dtype's largest value never leave the range."""
    if split == "left":
        return unscale(Bf, c), Af
    root = math.sqrt(c)
    return unscale(Bf, root), unscale(Af, root)


def _rebalance(xp, Bf, Af, split):
    """Whitened factors rescaled per rank, ``B D`` and ``D^{-1} A`` (the product is
    unchanged): ``A``'s rows of unit norm (``"left"``, as ``V_r^H`` in the plain
    case) or each column of ``B`` as long as the row of ``A`` (``"balanced"``).

    ``L^{-1}`` gives ``A`` the reciprocal scale of the calibration inputs and ``B``
    their scale (``sqrt`` of the token count times the activations'): with fp16
    weights, 1e5 tokens and activation outliers near 1e3, ``A`` fell into float16's
    subnormal range (output error 0.0186 against 0.0086 in float32) and at 1e6
    tokens ``B`` overflowed to Inf. Rebalanced, the factors do not depend on the
    scale of the Gram matrices.
    """
    a = norm(Af, axis=1)  # scaled: the squares of a row at the Gram matrix's scale may leave the range
    if split == "balanced":
        a = xp.sqrt(a / _positive(xp, norm(Bf, axis=0)))
    d = _positive(xp, a)
    return Bf * d[None, :], Af / d[:, None]


def _positive(xp, v):
    """``v`` with its zeros (a zero weight's ranks) replaced by ones."""
    return xp.where(v > 0, v, xp.ones_like(v))


class Metric(NamedTuple):
    """The norm a factorisation minimises: ``||R^H (W - B A) L||_F``.

    ``L`` (in x in, lower) from the input Gram matrix, ``R`` (out x out, lower) from
    the output-gradient Gram matrix; ``None`` stands for the identity. Both float64
    (complex128) in the namespace of the Gram matrices. ``zero_output``: the output
    Gram matrix was all zero (the layer does not reach the model's output).
    ``shifts``: the ridges ``(delta_L, delta_R)`` added to the diagonals of the input
    and output Gram matrices before factoring (``L L^H = G + delta_L I``), which
    :func:`factor` takes out again to measure ``rtol`` in the calibration data's own
    norm.
    """

    L: Any
    R: Any
    zero_output: bool
    shifts: tuple = (0.0, 0.0)


def metric(shape, *, gram=None, output_gram=None, ridge=DEFAULT_RIDGE):
    """Check ``gram`` (in x in) and ``output_gram`` (out x out) against ``shape``; factor them.

    Parameters
    ----------
    shape : (int, int)
        ``(out, in)`` of the weight.
    gram, output_gram : array, optional
    ridge : float

    Returns
    -------
    Metric

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.factor import metric
    >>> m = metric((3, 2), gram=np.eye(2))
    >>> m.L.shape, m.R
    ((2, 2), None)
    """
    out, inp = shape
    ridge = _checked_ridge(ridge)
    L = R = None
    zero = False
    shift_L = shift_R = 0.0
    if gram is not None:
        if tuple(gram.shape) != (inp, inp):
            raise ValueError(f"gram must be in x in = {inp} x {inp} for a weight of shape {tuple(shape)}, "
                             f"got {tuple(gram.shape)}")
        L, shift_L = _whitener(gram, ridge, "gram")
    if output_gram is not None:
        if tuple(output_gram.shape) != (out, out):
            raise ValueError(f"output_gram must be out x out = {out} x {out} for a weight of shape "
                             f"{tuple(shape)}, got {tuple(output_gram.shape)}")
        R, shift_R = _whitener(output_gram, ridge, "output_gram")
        zero = shift_R == 0.0  # only a zero G gets no ridge
    return Metric(L, R, zero, (shift_L, shift_R))


def metric_units(m):
    """``"weight"``, ``"output"`` or ``"loss"``: what ``||R^H (W - B A) L||`` measures."""
    return "weight" if m.L is None and m.R is None else "output" if m.R is None else "loss"


def _resolve_metric(shape, gram, output_gram, whitening, ridge):
    _checked_ridge(ridge)
    if whitening is None:
        return metric(shape, gram=gram, output_gram=output_gram, ridge=ridge)
    if gram is not None or output_gram is not None:
        raise TypeError("give gram/output_gram or whitening, not both")
    if not isinstance(whitening, Metric):
        raise TypeError(f"whitening must be a Metric from randla.compress.metric, got {type(whitening).__name__}")
    for side, dim in ((whitening.L, shape[1]), (whitening.R, shape[0])):
        if side is not None and tuple(side.shape) != (dim, dim):
            raise ValueError(f"whitening does not match a weight of shape {tuple(shape)}")
    return whitening


def _check_side(G, xp_w, dtype, name):
    """A ``TypeError`` naming ``name`` where a Gram matrix (or metric factor) is not an
    array of the weight's library, or where a complex one meets a real weight: a real
    layer's inputs and output gradients are real, and its factors cannot follow a
    complex metric (its imaginary part was dropped silently)."""
    if G is None:
        return
    try:
        xp = B.namespace(G)
    except TypeError:
        raise TypeError(f"{name} must be an array, got {type(G).__name__}") from None
    if xp is not xp_w:
        raise TypeError(f"{name} must be an array of the same library as W, got {type(G).__name__}")
    if xp_w.isdtype(dtype, "complex floating"):
        return
    if xp.isdtype(G.dtype, "complex floating"):
        raise TypeError(f"{name} is complex but the weight is real: a real layer sees real inputs and gradients; "
                        f"pass the Gram matrix of real data")


def _unit_gram(G, xp_w, dtype, name="gram"):
    """``(G / c^2, c)``, ``c`` a power of two near ``sqrt(tr(G) / n)`` (the typical size
    of ``G``'s Cholesky factor) where ``tr(G) / n`` leaves the window in which entries
    of ``dtype`` (in ``xp_w``, the weight's namespace) are safely squared and summed
    (:func:`randla._scale._window`: ``2^+-31`` for float32, ``2^+-255`` for float64),
    so that the factors of both sides of a two-sided metric stay inside it together;
    else ``(G, 1.0)``, ``G`` itself.

    Exact, and the whitened problem does not change: the factor of ``G / c^2`` is
    ``L / c``, so ``M = R^H W L`` shrinks by ``c`` (and the output side's power) and
    the factors ``B A`` are the same, while ``M``, ``A`` and ``B`` stay inside the
    weight's range for calibration data at any scale (float32 weights with a Gram
    matrix near ``1e+-60`` gave Inf, or zeros and a wrong answer without a word).
    Absolute quantities computed from the scaled ``M`` (singular values, energies)
    are multiplied back by ``c``. Anything but a square 2-D array with a finite
    positive trace is returned as it is, for the checks of :func:`metric` to report.
    A complex ``G`` for a real weight is a ``TypeError`` naming ``name``.
    """
    _check_side(G, xp_w, dtype, name)
    G = B.detached(G)
    if G is None or len(getattr(G, "shape", ())) != 2 or G.shape[0] != G.shape[1] or G.shape[0] == 0:
        return G, 1.0
    xp = B.namespace(G)
    d = xp.real(xp.linalg.diagonal(G))
    dmax = B.scalar(xp.max(d))
    if not (math.isfinite(dmax) and dmax > 0.0):
        return G, 1.0
    mean = B.scalar(xp.mean(d / dmax))  # tr(G) / n = dmax mean, which may leave G's dtype
    if not mean > 0.0:
        return G, 1.0
    c = _unit_power(math.log2(dmax) + math.log2(mean), xp_w, dtype)
    return (G, 1.0) if c == 1.0 else (G / c / c, c)  # c * c may leave the dtype of G


def _unit_power(log_t, xp_w, dtype):
    """``c``, a power of two near ``sqrt(t)``, where ``t = 2^log_t`` (a mean squared
    entry size) leaves the window of :func:`randla._scale._window` for ``dtype``; else 1."""
    lo, hi = _window(xp_w, dtype)
    return 1.0 if math.log2(lo) <= log_t <= math.log2(hi) else 2.0 ** round(log_t / 2)


def _unit_metric(m, xp_w, dtype):
    """``(m', c_in, c_out)``: a caller's :class:`Metric` with ``L`` and ``R`` divided by
    the powers of two :func:`_unit_gram` would have taken from their Gram matrices
    (``tr(L L^H) / n = tr(G) / n``, up to the ridge), the same exact rescaling for a
    metric built by hand."""
    sides, scales = [], []
    for F, side in ((m.L, "whitening.L"), (m.R, "whitening.R")):
        _check_side(F, xp_w, dtype, side)
        c = 1.0
        if F is not None and F.shape[0] > 0:
            xp = B.namespace(F)
            big = B.scalar(xp.max(xp.abs(F)))  # ||F||_F^2 / n from F / big: no overflow on the way
            if math.isfinite(big) and big > 0.0:
                mean_square = B.scalar(xp.sum(xp.abs(F / big) ** 2)) / F.shape[0]
                c = _unit_power(2.0 * math.log2(big) + math.log2(mean_square), xp_w, dtype)
                if c != 1.0:
                    F = F / c
        sides.append(F)
        scales.append(c)
    return m._replace(L=sides[0], R=sides[1]), scales[0], scales[1]


def whiten(W, m):
    """``M = R^H W L`` in ``W``'s dtype (``W`` itself for the identity metric).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress.factor import metric, whiten
    >>> whiten(np.ones((2, 2)), metric((2, 2), gram=4 * np.eye(2), ridge=0.0))
    array([[2., 2.],
           [2., 2.]])
    """
    xp = B.namespace(W)
    M = W if m.L is None else W @ xp.astype(m.L, W.dtype)
    return M if m.R is None else xp.astype(B.mH(m.R), W.dtype) @ M


def _unwhiten(xp, Bf, Af, m, dtype):
    """``(R^{-H} B, A L^{-1})`` by triangular solves in the precision of the metric's
    factors (float64)."""
    if m.L is not None:
        L = _wide_for(xp, m.L, Af)
        Af = xp.astype(B.solve_triangular(L, xp.astype(Af, L.dtype), lower=True, left=False), dtype)
    if m.R is not None:
        R = _wide_for(xp, m.R, Bf)
        Bf = xp.astype(B.solve_triangular(B.mH(R), xp.astype(Bf, R.dtype), lower=False), dtype)
    return Bf, Af


def _wide_for(xp, F, X):
    """``F`` (a float64 or complex128 metric factor) as complex128 where ``X`` is complex:
    a complex weight's factors solved against a real metric keep their imaginary part."""
    if xp.isdtype(X.dtype, "complex floating") and not xp.isdtype(F.dtype, "complex floating"):
        return xp.astype(F, xp.complex128)
    return F


def _check_method(method, split, q, p):
    V.check_choice(method, "method", METHODS)
    V.check_choice(split, "split", SPLITS)
    return V.check_count(q, "q"), V.check_count(p, "p")


@B.wide_floats
def factor(W, rank=None, *, rank_fraction=None, param_fraction=None, rtol=None, gram=None, output_gram=None,
           whitening=None, method="rsi", q=2, p=10, split="left", ridge=DEFAULT_RIDGE, estimate_error=True, rng=None,
           name="", check_finite=True):
    """Factor one weight ``W (out x in) ~= B (out x r) @ A (r x in)``, plain or whitened.

    Plain: ``B = U_r S_r``, ``A = V_r^H`` from a truncated SVD of ``W``. With ``gram``
    (the layer's input Gram matrix ``G = sum_t x_t x_t^H``, ``X^T X`` for real rows
    ``x_t`` of ``X``; ``X^T conj(X)`` for complex ones): the truncated SVD of ``M = W L``,
    ``L L^H = G + ridge tr(G)/in I``, and ``A = V_r^H L^{-1}`` by a triangular solve
    (each rank rescaled between ``B`` and ``A`` so that ``A``'s rows have unit norm,
    whatever the scale of ``G``), which minimises the layer's output error ``||(W - B A) X^T||_F`` on the calibration
    inputs (see the module docstring). With ``output_gram`` too (``H = sum g g^H`` of the
    gradients ``g`` of the model's output with respect to this layer's output, ``H =
    R R^H``): the truncated SVD of ``M = R^H W L`` and ``B = R^{-H} U_r S_r``, which
    minimises ``tr(R^H (W - B A) G (W - B A)^H R)``, the Kronecker-factored (K-FAC)
    Gauss-Newton estimate of the change of the model's output. The layer stays dense
    (``B = A = None``) unless ``r (out + in) < out in``.

    Parameters
    ----------
    W : array (out, in)
        Any array-API array (NumPy, torch, JAX, CuPy, ...). float32/float64/complex
        are used as they are; float16 and bfloat16 are upcast to float32 for the
        math and the factors are cast back; integers are promoted to float64.
    rank, rank_fraction, param_fraction, rtol : optional
        Exactly one (see :mod:`randla.compress.ranks`). ``rtol`` is the relative
        Frobenius error of ``W``, or of the layer's output on the calibration data
        when ``gram`` is given; its rank is found by :func:`randla.svd.adaptive_range_finder`
        (``method="exact"``: from the exact spectrum).
    gram : array (in, in), optional
        Input Gram matrix ``sum_t x_t x_t^H`` (``X^T X``, or ``X^T conj(X)`` for complex
        inputs: ``randla.torch.calibrate`` returns it) of the layer on calibration data, in ``W``'s
        namespace (float64 recommended). Switches to the whitened factorisation.
    output_gram : array (out, out), optional
        Gram matrix of the output gradients (see above), e.g. from
        ``randla.torch.calibrate(..., output=...)``. An all-zero ``output_gram`` (a
        layer the output does not depend on) leaves the factors one-sided.
    whitening : Metric, optional
        The factored ``gram``/``output_gram`` from :func:`metric`, in place of them
        (factor them once, use them for several calls, as
        :func:`~randla.compress.budget.summarize` and the budget pipeline do). Not together
        with ``gram`` or ``output_gram``.
    method : {"rsi", "rsvd", "krylov", "exact"}, default "rsi"
        :func:`randla.svd.rsi` with ``q`` iterations, :func:`randla.svd.rsvd` without power
        iterations (Halko's plain RSVD; ``q`` is not used), :func:`randla.svd.block_krylov_svd`
        of depth ``q``, or the exact SVD.
    q : int, default 2
    p : int, default 10
        Oversampling.
    split : {"left", "balanced"}, default "left"
        ``B = U_r S_r, A = V_r^H`` (seed 004, as LoRA's ``B @ A``) or
        ``B = U_r S_r^{1/2}, A = S_r^{1/2} V_r^H`` (equal norms, friendlier to
        fine-tuning and to low-precision storage). Whitened: ``A`` is then multiplied
        by ``L^{-1}`` on the right (and ``B`` by ``R^{-H}`` on the left), and each rank
        rescaled so that ``A``'s rows have unit norm (``"left"``) or each rank has
        equal norms in ``B`` and ``A`` (``"balanced"``). float16/bfloat16 weights: a
        rank whose entries would leave the dtype's range is rescaled between ``B`` and
        ``A`` (:func:`fit_range`).
    ridge : float, default 1e-6
        Relative ridge of the Gram matrices (see :func:`whitener`).
    estimate_error : bool, default True
        Estimate the normalized spectral error (20 Lanczos steps on the residual, on
        the host for JAX arrays); ``False`` skips it, and so do lazy (Dask) arrays
        (``report.normalized_error`` is ``None``).
    rng : None, int or numpy.random.Generator
    name : str
        Recorded in the report.
    check_finite : bool, default True

    Returns
    -------
    Factors
        ``(B, A, S, energy, report)``; ``B`` and ``A`` in ``W``'s namespace, device
        and dtype, or ``None`` when the layer stays dense (nothing is computed then
        unless the rank comes from ``rtol``).

    Raises
    ------
    TypeError
        No rank option or more than one; a wrong type.
    ValueError
        ``W`` not 2-D, empty, or not finite; an option out of range; ``gram`` or
        ``output_gram`` of the wrong shape or not positive semidefinite.

    Notes
    -----
    Cost: that of the chosen SVD of an ``out x in`` matrix at rank ``r`` (``2q + 2``
    passes for ``rsi``), plus, whitened, a Cholesky factorisation of ``G``
    (``in^3 / 3``), the product ``W L`` (``out in^2``) and a triangular solve
    (``r in^2``); the same on the output side with ``output_gram``. The error estimate
    adds 40 matrix-vector products.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import factor
    >>> rng = np.random.default_rng(0)
    >>> W = rng.standard_normal((256, 64)) @ np.diag(0.8 ** np.arange(64)) @ rng.standard_normal((64, 128))
    >>> f = factor(W, rank=16, rng=0)
    >>> f.B.shape, f.A.shape, f.report.params_after
    ((256, 16), (16, 128), 6144)
    >>> bool(np.linalg.norm(W - f.B @ f.A, 2) <= 1.1 * np.linalg.svd(W, compute_uv=False)[16])
    True

    Whitened by calibration inputs whose scales differ a lot:

    >>> X = rng.standard_normal((1000, 128)) * np.logspace(0, -3, 128)
    >>> fw = factor(W, rank=16, gram=X.T @ X, rng=0)
    >>> out_err = lambda g: np.linalg.norm((W - g.B @ g.A) @ X.T)
    >>> bool(out_err(fw) < out_err(f))
    True
    """
    t0 = time.perf_counter()
    job = _job(W, {"rank": rank, "rank_fraction": rank_fraction, "param_fraction": param_fraction, "rtol": rtol},
               gram=gram, output_gram=output_gram, whitening=whitening, ridge=ridge, name=name,
               check_finite=check_finite)
    q, p = _check_method(method, split, q, p)
    return _factor_job(job, method=method, q=q, p=p, split=split, estimate_error=estimate_error,
                       rng=B.as_generator(rng), t0=t0)


def _factor_job(job, *, method, q, p, split, estimate_error, rng, t0):
    """:func:`factor` of a checked weight (``rng`` a Generator)."""
    if job.r is not None and not saves_parameters(job.shape, job.r):
        return _dense(job.shape, job.name, job.units, t0)
    M = whiten(job.W, job.m)
    if job.r is None:
        rmax = max_saving_rank(job.shape)
        if rmax < 1:
            return _dense(job.shape, job.name, job.units, t0)
        U, S, Vh, r = _svd_rtol(M, job.value, rmax, method, q, rng, ridge_energy=_ridge_energy(job.W, job.m))
        if r is None:
            return _dense(job.shape, job.name, job.units, t0)
        job = job._replace(r=r)
    else:
        U, S, Vh = _svd_at(M, job.r, method, q, p, rng)
    return _finish(job, M, U, S, Vh, method=method, split=split, estimate_error=estimate_error, rng=rng, t0=t0)


class _Job(NamedTuple):
    """One weight ready to factor: its working matrix, rank (``None``: from ``rtol``),
    metric and what the factors must be cast back to."""

    W: Any
    xp: Any
    out_dtype: Any
    shape: tuple
    mode: str
    value: Any
    r: Any
    m: Metric
    units: str
    name: str
    scale: float = 1.0  # M = R^H W L / scale
    w_scale: float = 1.0  # W = w_scale * self.W


def _job(W, rank_options, *, gram, output_gram, whitening, ridge, name, check_finite):
    """Validate one weight and its options for :func:`factor` (and its batched form)."""
    Ww, xp, out_dtype = working_matrix(W, "W", check_finite=check_finite)
    shape = tuple(int(s) for s in Ww.shape)
    mode, value = check_rank_mode(**rank_options, allow_budget=False)
    r = None if mode == "rtol" else select_rank(shape, **{mode: value})
    c_w = 1.0
    if not B.is_lazy(Ww):  # W / c_w, an exact power of two where W's squares (energies) would leave the dtype
        Ww, c_w = unit_scale(Ww)
    gram, c_in = _unit_gram(gram, xp, Ww.dtype)
    output_gram, c_out = _unit_gram(output_gram, xp, Ww.dtype, "output_gram")
    m = _resolve_metric(shape, gram, output_gram, whitening, ridge)
    if whitening is not None:
        m, c_in, c_out = _unit_metric(m, xp, Ww.dtype)
    if m.zero_output:
        m, c_out = m._replace(R=None), 1.0
    return _Job(Ww, xp, out_dtype, shape, mode, value, r, m, metric_units(m), name, c_in * c_out * c_w, c_w)


def _finish(job, M, U, S, Vh, *, method, split, estimate_error, rng, t0, shared_seconds=0.0):
    """Factors and report of ``job`` from a truncated SVD ``(U, S, Vh)`` of ``M = R^H W L``
    (at least ``job.r`` columns; the rest, the oversampling, only informs ``S``)."""
    xp, r, m, shape = job.xp, job.r, job.m, job.shape
    S_host = B.to_numpy(S).astype(np.float64)  # of M = R^H W L / job.scale (see _unit_gram)
    energy = _energy(M)
    nerr = None
    if estimate_error and job.mode != "rtol" and not B.is_lazy(M):
        nerr = 1.0 if method == "exact" else _normalized_error(M, U, S, Vh, r, rng)
    rel = _tail_error(S_host, r, energy)
    out_err = None
    if m.L is not None:
        out_err = rel if m.R is None else _output_error(xp, job.W, m, U[:, :r], S[:r], Vh[:r, :])
    Bf, Af = _split(xp, U[:, :r], S[:r], Vh[:r, :], split)
    if m.L is not None or m.R is not None:
        Bf, Af = _rebalance(xp, *_unwhiten(xp, Bf, Af, m, job.W.dtype), split)
    Bf, Af = _unscale_split(Bf, Af, job.w_scale, split)
    Bf, Af = fit_range(Bf, Af, job.out_dtype, name=job.name)
    report = LayerReport(job.name, shape, r, shape[0] * shape[1], parameter_count(shape, r), nerr, rel, out_err,
                         time.perf_counter() - t0 + shared_seconds, method, job.units)
    return Factors(_cast_back(Bf, xp, job.out_dtype), _cast_back(Af, xp, job.out_dtype), S_host * job.scale,
                   energy * job.scale * job.scale, report)


def _output_error(xp, W, m, U, S, Vh):
    """``||(W - B A) L||_F / ||W L||_F`` for two-sided factors: ``(B A) L = R^{-H} U S Vh``."""
    WL = whiten(W, m._replace(R=None))
    US = _unwhiten(xp, U * xp.astype(S, U.dtype)[None, :], Vh, m._replace(L=None), W.dtype)[0]
    den = _energy(WL)
    return math.sqrt(_energy(WL - US @ Vh) / den) if den > 0 else 0.0


def _tail_error(S, r, energy):
    """``sqrt(energy - sum_{i<=r} s_i^2) / sqrt(energy)`` (0 for a zero matrix)."""
    if energy <= 0.0:
        return 0.0
    return math.sqrt(max(energy - float(np.sum(S[:r] ** 2)), 0.0) / energy)


def _dense(shape, name, units, t0, calibrated=None):
    n = shape[0] * shape[1]
    calibrated = units != "weight" if calibrated is None else calibrated
    report = LayerReport(name, shape, None, n, n, None, 0.0, 0.0 if calibrated else None, time.perf_counter() - t0,
                         "dense", units)
    return Factors(None, None, np.zeros(0), float("nan"), report)


def truncate(factors, rank):
    """The same factorisation cut to a lower rank: copies of ``B[:, :rank]``, ``A[:rank]``.

    Exact for both splits (``S`` is diagonal): truncating a rank-``r`` factorisation
    gives the one :func:`factor` computes at the lower rank from the same subspace.
    A ``rank`` that does not save parameters returns a dense record (``B = A = None``).

    Parameters
    ----------
    factors : Factors
        From :func:`factor` (not dense).
    rank : int
        ``1 <= rank <= factors.report.rank``.

    Returns
    -------
    Factors
        With the report's errors updated (``normalized_error`` is ``None``: it is not
        re-estimated; so is ``output_error`` of factors weighted by output gradients,
        which needs ``W``).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import factor, truncate
    >>> W = np.random.default_rng(0).standard_normal((64, 48))
    >>> f = truncate(factor(W, rank=20, rng=0), 5)
    >>> f.B.shape, f.A.shape, f.report.rank
    ((64, 5), (5, 48), 5)
    """
    rep = factors.report
    if rep.rank is None:
        raise ValueError("truncate needs factors, got a dense layer")
    rank = V.check_count(rank, "rank", minimum=1)
    if rank > rep.rank:
        raise ValueError(f"rank must be <= the factors' rank {rep.rank}, got {rank}")
    if not saves_parameters(rep.shape, rank):
        return _dense(rep.shape, rep.name, rep.units, time.perf_counter(), rep.output_error is not None)
    rel = _tail_error(factors.S, rank, factors.energy)
    report = rep._replace(rank=rank, params_after=parameter_count(rep.shape, rank), normalized_error=None,
                          relative_error=rel, output_error=rel if rep.units == "output" else None)
    xp = B.namespace(factors.B)
    # copies: an in-place edit of the result (quantising, rescaling) must not reach ``factors``
    return factors._replace(B=xp.asarray(factors.B[:, :rank], copy=True), A=xp.asarray(factors.A[:rank, :], copy=True),
                            report=report)
