"""Exact power-of-two rescaling and norms that neither overflow nor underflow.

A matrix multiplied by ``1e200`` is the same problem up to scale, but its squared
norms and Gram matrices are not representable (``1e400``), and those of a matrix at
``1e-200`` vanish. The cure is the one LAPACK's ``xNRM2`` and ``xLASCL`` use: divide
by a power of two near the largest magnitude first. A power of two changes only the
exponent, so the scaled problem is solved exactly as the unscaled one would be, and
multiplying the result back is exact as well.

Two flavours: array-valued scales (:func:`pow2_scale`, :func:`norm`) that stay
lazy-friendly (no Python ``float``, so they run under ``jax.jit`` and on Dask graphs),
and eager ones (:func:`unit_scale`) for the pivoting loops, which read values anyway.
"""

from __future__ import annotations

import math

from . import _backend as B

__all__ = ["pow2_scale", "norm", "unit_scale", "unscale"]


def pow2_scale(amax):
    """A power of two within a factor 4 of ``amax >= 0`` (real array), 1 where
    ``amax`` is 0 or not finite. The exponent is clamped so that the scale and its
    reciprocal are normal numbers: dividing by the scale never divides by a subnormal
    one, nor multiplies by one (XLA divides by multiplying with the reciprocal, and
    flushes subnormals to zero)."""
    xp = B.namespace(amax)
    fi = xp.finfo(amax.dtype)
    ok = (amax > 0) & xp.isfinite(amax)
    safe = xp.where(ok, amax, xp.ones_like(amax))
    lo, hi = math.log2(float(fi.smallest_normal)), float(_max_exponent(xp, amax.dtype))
    e = xp.clip(xp.floor(xp.log2(safe)), lo, hi)
    two = xp.asarray(2.0, dtype=amax.dtype, device=B.device(amax))
    return xp.where(ok, xp.pow(two, e), xp.ones_like(amax))


def _max_abs(x, axis, keepdims):
    xp = B.namespace(x)
    return xp.max(xp.abs(x), axis=axis, keepdims=keepdims)


def norm(x, *, axis=None, keepdims=False):
    """Euclidean (``axis`` an int) or Frobenius (``axis=None``, all axes) norm that
    neither overflows nor underflows: ``s * ||x / s||`` with ``s`` a power of two near
    ``max |x|`` (along ``axis``). Real, in the real dtype of ``x``; lazy-friendly."""
    xp = B.namespace(x)
    s = pow2_scale(_max_abs(x, axis, True))
    rdt = B.real_dtype(xp, x.dtype)
    n = xp.linalg.vector_norm(x / xp.astype(s, x.dtype), axis=axis, keepdims=True) * s
    n = xp.astype(n, rdt)
    if keepdims:
        return n
    return xp.reshape(n, ()) if axis is None else xp.squeeze(n, axis=axis)


def _max_exponent(xp, dtype):
    """The largest ``e`` with ``2^e`` and ``2^-e`` both normal (1022 in float64, 126 in
    float32)."""
    return -round(math.log2(float(xp.finfo(B.real_dtype(xp, dtype)).smallest_normal)))


def _window(xp, dtype):
    """``(lo, hi)``: magnitudes whose squares, sums of squares over any matrix that fits
    in memory, and reciprocals of their small fractions are safely representable."""
    emax = math.floor(math.log2(float(xp.finfo(B.real_dtype(xp, dtype)).max)))
    e = emax // 4  # float64: 2^+-255 (1e+-77); float32: 2^+-31 (2e-10 .. 2e9)
    return 2.0**-e, 2.0**e


def unit_scale(A, *, ref=None):
    """``(A / c, c)`` with ``c`` a Python float power of two, for eager kernels.

    ``c = 1`` (and ``A`` itself, no copy) when ``max |ref|`` (default ``ref = A``) lies
    in a window where squares and Gram matrices are representable (``1e+-77`` in
    float64, ``2e-10 .. 2e9`` in float32), else the power of two nearest below
    ``max |ref|``, clamped so that ``c`` and ``1 / c`` are normal numbers (as in
    :func:`pow2_scale`); ``ref`` may be a sketch of ``A`` (cheaper than a pass over ``A``).
    """
    xp = B.namespace(A)
    ref = A if ref is None else ref
    amax = B.scalar(xp.max(xp.abs(ref)))
    lo, hi = _window(xp, A.dtype)
    if not math.isfinite(amax) or amax == 0.0 or lo <= amax <= hi:
        return A, 1.0
    e = _max_exponent(xp, A.dtype)
    c = 2.0 ** min(max(math.floor(math.log2(amax)), -e), e)
    return A / xp.asarray(c, dtype=B.real_dtype(xp, A.dtype), device=B.device(A)), c


def unscale(x, c):
    """``x * c`` for the Python float ``c`` of :func:`unit_scale` (``x`` itself if 1)."""
    if c == 1.0:
        return x
    xp = B.namespace(x)
    return x * xp.asarray(c, dtype=B.real_dtype(xp, x.dtype), device=B.device(x))
