"""Sketching operators: random test matrices ``Omega`` (n x l) for ``Y = A @ Omega``.

The operators: :func:`gaussian`, :func:`rademacher`, :func:`orthonormal_gaussian`,
:func:`sparse_sign` (the sparse sign embedding of [TYUC2019]_) and :func:`srtt` (a
subsampled randomized trigonometric transform [WLRT2008]_); :func:`sketch` applies one
to ``A``.

Every operator is drawn natively in the namespace and on the device of ``like``
(see ``randla._backend.normal``), in the real dtype of ``like`` and cast to
``like``'s dtype, so complex input gets a real sketch of complex dtype; a real
sketch spans the range of a complex matrix just as well ([HMT2011]_, Sec. 4.1).

References
----------
.. [HMT2011] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
   randomness", SIAM Review 53(2), 2011.
.. [TYUC2019] J. A. Tropp, A. Yurtsever, M. Udell, V. Cevher, "Streaming low-rank
   matrix approximation with an application to scientific simulation", SISC 2019
   (sparse sign embeddings).
.. [WLRT2008] F. Woolfe, E. Liberty, V. Rokhlin, M. Tygert, "A fast randomized
   algorithm for the approximation of matrices", ACHA 25, 2008 (SRFT).
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validate as V

__all__ = ["gaussian", "rademacher", "sparse_sign", "orthonormal_gaussian", "srtt", "sketch", "METHODS"]


def _like(like):
    """``(xp, dtype, real dtype, device)`` of the test matrix for ``like``: its dtype under
    randla's one rule (integers and bools promoted to float64; float16 and bfloat16 a
    ``TypeError``), without a copy of ``like``."""
    try:
        xp = B.namespace(like)
    except TypeError:
        raise TypeError(f"like must be an array, got {type(like).__name__}") from None
    dt = like.dtype
    if dt not in (xp.float32, xp.float64, xp.complex64, xp.complex128):
        dt = V._float_dtype(xp, xp.zeros((1,), dtype=dt, device=B.device(like)), "like").dtype
    return xp, dt, B.real_dtype(xp, dt), B.device(like)


def _check_shape(n, l):
    n = V.check_count(n, "n", minimum=1)
    l = V.check_count(l, "l", minimum=1)
    return n, l


def gaussian(n, l, /, *, like, rng=None):
    """Gaussian test matrix with i.i.d. N(0, 1) entries [HMT2011, Sec. 4.1].

    Parameters
    ----------
    n, l : int
        Shape of ``Omega`` (rows match the columns of the matrix to sketch).
    like : array
        Namespace, device and dtype of the result.
    rng : None, int or numpy.random.Generator
        Seed or generator; the draw itself happens on ``like``'s device.

    Returns
    -------
    Omega : array, shape (n, l)

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import gaussian
    >>> Om = gaussian(5, 3, like=np.zeros((1, 1), dtype=np.float32), rng=0)
    >>> Om.shape, Om.dtype
    ((5, 3), dtype('float32'))
    """
    n, l = _check_shape(n, l)
    xp, dtype, rdtype, dev = _like(like)
    om = B.normal((n, l), xp=xp, dtype=rdtype, device=dev, rng=rng)
    return xp.astype(om, dtype)


def rademacher(n, l, /, *, like, rng=None):
    """Random signs, +1 or -1 with equal probability.

    Parameters
    ----------
    n, l, like, rng
        As for :func:`gaussian`.

    Returns
    -------
    Omega : array, shape (n, l)

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import rademacher
    >>> Om = rademacher(4, 2, like=np.zeros((1, 1)), rng=0)
    >>> bool(np.all(np.abs(Om) == 1))
    True
    """
    n, l = _check_shape(n, l)
    xp, dtype, rdtype, dev = _like(like)
    u = B.uniform((n, l), xp=xp, dtype=rdtype, device=dev, rng=rng)
    return xp.astype(_signs(xp, u), dtype)


def _signs(xp, u):
    one = xp.ones_like(u)
    return xp.where(u < 0.5, -one, one)


def sparse_sign(n, l, /, *, like, nnz=8, rng=None):
    """Sparse sign embedding: ``nnz`` signs ``+-1/sqrt(nnz)`` per row, at random positions.

    ``Omega.T`` is the sparse sign matrix of [TYUC2019, Sec. 3.3] with ``nnz``
    signs per column. Positions are drawn uniformly with replacement, so a
    repeated position adds up (an entry can be ``+-2/sqrt(nnz)`` or larger, or
    cancel to zero) and a row has at most ``nnz`` nonzeros. The matrix is returned
    dense, so applying it costs as much as a Gaussian sketch; its value is in
    cheaper generation and in exact arithmetic on integer-valued data.

    Parameters
    ----------
    n, l, like
        As for :func:`gaussian`.
    nnz : int, default 8
        Signs per row, at most ``l`` (a larger value is taken as ``l``).
    rng
        As for :func:`gaussian`.

    Returns
    -------
    Omega : array, shape (n, l)

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import sparse_sign
    >>> Om = sparse_sign(6, 4, like=np.zeros((1, 1)), nnz=2, rng=0)
    >>> bool(np.all(np.count_nonzero(Om, axis=1) <= 2))
    True
    """
    n, l = _check_shape(n, l)
    nnz = min(V.check_count(nnz, "nnz", minimum=1), l)
    xp, dtype, rdtype, dev = _like(like)
    gen = B.as_generator(rng)
    cols = B.integers(l, (n, nnz), xp=xp, device=dev, rng=gen)
    signs = _signs(xp, B.uniform((n, nnz), xp=xp, dtype=rdtype, device=dev, rng=gen))
    hit = cols[:, :, None] == xp.arange(l, device=dev)[None, None, :]
    om = xp.sum(xp.where(hit, signs[:, :, None], xp.zeros_like(signs)[:, :, None]), axis=1)
    return xp.astype(om / math.sqrt(nnz), dtype)


def orthonormal_gaussian(n, l, /, *, like, rng=None):
    """Gaussian test matrix with orthonormalised columns (needs ``l <= n``).

    Parameters
    ----------
    n, l, like, rng
        As for :func:`gaussian`.

    Returns
    -------
    Omega : array, shape (n, l)

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import orthonormal_gaussian
    >>> Om = orthonormal_gaussian(6, 3, like=np.zeros((1, 1)), rng=0)
    >>> bool(np.allclose(Om.T @ Om, np.eye(3)))
    True
    """
    n, l = _check_shape(n, l)
    if l > n:
        raise ValueError(f"orthonormal columns need l <= n, got l={l}, n={n}")
    q, _ = B.qr(gaussian(n, l, like=like, rng=rng))
    return q


def _srtt_plan(n, l, *, like, rng):
    """Random signs on the device and the frequencies to keep (host-side indices).

    For real data the transform is the real trigonometric one: the ``n`` real
    columns ``cos(2 pi j f / n)`` (f = 0..n//2) and ``sin(2 pi j f / n)``
    (f = 1..(n-1)//2); for complex data the ``n`` DFT columns. ``l`` of the ``n``
    are kept, uniformly without replacement. Only these ``l`` integers are drawn on
    the host (a tiny transfer).
    """
    xp, dtype, rdtype, dev = _like(like)
    gen = B.as_generator(rng)
    d = _signs(xp, B.uniform((n,), xp=xp, dtype=rdtype, device=dev, rng=gen))
    keep = np.sort(gen.choice(n, size=l, replace=False))
    return xp, dtype, rdtype, dev, d, keep


def srtt(n, l, /, *, like, rng=None):
    """Subsampled randomized trigonometric transform, as an explicit ``n x l`` matrix.

    ``Omega = D F S / sqrt(n)``: random signs ``D``, the (real, for real ``like``)
    Fourier transform ``F``, and ``l`` columns ``S`` kept at random [WLRT2008].
    :func:`sketch` with ``method="srtt"`` applies the same operator to a dense
    matrix by an FFT, in O(m n log n) instead of O(m n l) operations; this
    explicit form serves matrix-free input.

    Parameters
    ----------
    n, l, like, rng
        As for :func:`gaussian`.

    Returns
    -------
    Omega : array, shape (n, l)

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import srtt, sketch
    >>> A = np.arange(12.0).reshape(3, 4)
    >>> bool(np.allclose(A @ srtt(4, 2, like=A, rng=1), sketch(A, 2, method="srtt", rng=1)))
    True
    """
    n, l = _check_shape(n, l)
    if l > n:
        raise ValueError(f"srtt keeps l <= n columns, got l={l}, n={n}")
    xp, dtype, rdtype, dev, d, keep = _srtt_plan(n, l, like=like, rng=rng)
    j = xp.astype(xp.arange(n, device=dev), rdtype)[:, None]
    if xp.isdtype(dtype, "complex floating"):
        f = xp.asarray(keep.astype(np.float64), dtype=rdtype, device=dev)[None, :]
        ang = (-2 * math.pi / n) * j * f
        om = xp.astype(xp.cos(ang), dtype) + 1j * xp.astype(xp.sin(ang), dtype)
    else:
        half = n // 2
        re = keep[keep <= half].astype(np.float64)
        im = (keep[keep > half] - half).astype(np.float64)
        ang_re = (2 * math.pi / n) * j * xp.asarray(re, dtype=rdtype, device=dev)[None, :]
        ang_im = (2 * math.pi / n) * j * xp.asarray(im, dtype=rdtype, device=dev)[None, :]
        om = xp.concat([xp.cos(ang_re), -xp.sin(ang_im)], axis=1)
    om = xp.astype(d, dtype)[:, None] * om
    return om / math.sqrt(n)


def _srtt_apply(A, l, rng):
    """``A @ Omega`` by an FFT along the last axis (one plan for every matrix of a stack)."""
    n = A.shape[-1]
    if l > n:
        raise ValueError(f"srtt keeps l <= n columns, got l={l}, n={n}")
    xp, dtype, rdtype, dev, d, keep = _srtt_plan(n, l, like=A, rng=rng)
    Ad = A * xp.astype(d, dtype)
    last = A.ndim - 1
    if xp.isdtype(dtype, "complex floating"):
        F = B.fft_last(Ad, real=False)
        Y = B.take(F, keep, axis=last)
    else:
        half = n // 2
        F = B.fft_last(Ad, real=True)
        re, im = keep[keep <= half], keep[keep > half] - half
        Y = xp.concat([xp.real(B.take(F, re, axis=last)), xp.imag(B.take(F, im, axis=last))], axis=last)
    return xp.astype(Y, dtype) / math.sqrt(n)


_MAKERS = {
    "gaussian": gaussian,
    "rademacher": rademacher,
    "sparse_sign": sparse_sign,
    "orthonormal": orthonormal_gaussian,
    "srtt": srtt,
}
METHODS = tuple(_MAKERS)  # what sketch() dispatches on


def sketch(A, l, /, *, method="gaussian", rng=None, check_finite=True):
    """Range sketch ``Y = A @ Omega`` with an ``n x l`` test matrix ``Omega``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``scipy.sparse.linalg.LinearOperator``
    l : int
        Number of sketch columns.
    method : {"gaussian", "rademacher", "sparse_sign", "srtt", "orthonormal"}
        Test matrix; ``"srtt"`` on a dense array is applied by an FFT.
    rng : None, int or numpy.random.Generator
    check_finite : bool
        Scan ``A`` for NaN/Inf first.

    Returns
    -------
    Y : array, shape (m, l), in ``A``'s namespace, device and dtype

    Examples
    --------
    >>> import numpy as np
    >>> from randla.sketch import sketch
    >>> A = np.outer(np.arange(1.0, 5.0), np.ones(6))   # rank one
    >>> Y = sketch(A, 2, rng=0)
    >>> int(np.linalg.matrix_rank(Y))
    1
    """
    op = V.as_operand(A, check_finite=check_finite)
    V.check_choice(method, "method", METHODS)  # the kernels call this option sketch=
    return _apply(op, V.check_count(l, "l", minimum=1), method, rng)


def _draw_only(op, l, method, rng):
    """Make exactly the draws :func:`_apply` would make, and nothing else: a caller that
    skips the sketch (an exact SVD chosen by size) still advances ``rng`` alike."""
    V.check_choice(method, "sketch", METHODS)
    if method == "srtt" and op.dense:
        _srtt_plan(op.shape[-1], l, like=op.A, rng=rng)
    else:
        _draw(op, l, method, rng)


def _draw(op, l, method, rng):
    """The test matrix ``Omega`` (n x l) that :func:`_apply` multiplies by (``"srtt"`` on a
    dense ``A`` is applied by an FFT instead: see there)."""
    return _MAKERS[method](op.shape[-1], l, like=V.operand_like(op), rng=rng)


def _apply(op, l, method, rng):
    """``A @ Omega`` for a validated operand (the range finders' entry point).

    A stack ``(..., m, n)`` is sketched with one ``n x l`` test matrix, drawn once and
    shared by every matrix of the stack: each matrix sees exactly the sketch an
    unbatched call with the same ``rng`` would draw.
    """
    V.check_choice(method, "sketch", METHODS)
    if method == "srtt" and op.dense:
        return _srtt_apply(op.A, l, rng)
    return op.matmat(_draw(op, l, method, rng))
