"""Reverse- and forward-mode derivatives of the reduced QR and LQ decompositions.

Plain array-API functions: they differentiate a QR or LQ factorisation computed by any
library, on any backend, with no autodiff framework. :mod:`randla.torch` and
:mod:`randla.jax` use them as the backward (and forward-mode) rules of a
differentiable ``qr``/``lq``.

Conventions
-----------
``A = Q @ R`` is the *reduced* QR of an ``m x n`` matrix, ``k = min(m, n)``: ``Q`` is
``m x k`` with orthonormal columns, ``R`` is ``k x n`` upper triangular (upper
trapezoidal when ``m < n``) with a **real diagonal**, as LAPACK ``geqrf`` (NumPy,
SciPy, torch, JAX, CuPy) returns it. That convention fixes the factorisation locally,
so the derivatives below are those of the map ``A -> (Q, R)`` the libraries compute;
losses that are invariant under ``Q -> Q D``, ``R -> D^H R`` (``D`` diagonal unitary)
get the same gradient under any other phase convention.

``A = L @ Q`` is the reduced LQ: ``L`` is ``m x k`` lower triangular (trapezoidal when
``m > n``), ``Q`` is ``k x n`` with orthonormal rows; it is the QR of ``A^H``
conjugate-transposed.

Cotangents follow the convention of PyTorch (and of NumPy-based code): for a real loss
``f``, ``dQ = df/dRe(Q) + i df/dIm(Q)``, so that ``df = Re tr(dQ^H dQ_tangent) + ...``
and the result is ``dA`` in the same sense. JAX's cotangents are the complex conjugates
of these; :mod:`randla.jax` converts. Leading (batch) dimensions are supported.

Rank deficiency
---------------
The derivative exists only where the leading ``k x k`` block of ``R`` (``L``) is
nonsingular, i.e. where the first ``k`` columns (rows) of ``A`` are linearly
independent. With ``check_singular=True`` (the default) an exactly zero diagonal entry
raises a ``ValueError`` on eager arrays; on lazy arrays (Dask, JAX under tracing), or
with ``check_singular=False``, nothing is checked and the triangular solve decides:
torch, JAX and CuPy return inf/NaN entries, SciPy raises ``LinAlgError``. A nearly
singular ``R`` gives a finite gradient of size about ``1 / sigma_min(R)``, the true
sensitivity of the factorisation. No result is ever silently finite and wrong.

References
----------
L. Roberts and D. O. Roberts, "QR and LQ decomposition matrix backpropagation
algorithms for square, wide, and deep -- real or complex -- matrices and their software
implementation" (seed 001): eq. 3.3, eq. 3.8 (after S. Walther), the wide-case
partition ``A = [X | Y]``, ``R = [U | V]`` and the complex correction ``i Im diag(M)``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from . import _backend as B
from . import _validate as V
from ._scale import pow2_scale

__all__ = ["qr_vjp", "lq_vjp", "qr_jvp", "lq_jvp", "QRTangents", "LQTangents", "QRResult", "LQResult", "METHODS"]



class QRResult(NamedTuple):
    """Reduced QR factors ``A = Q @ R`` (returned by the torch and JAX adapters)."""

    Q: Any
    R: Any


class LQResult(NamedTuple):
    """Reduced LQ factors ``A = L @ Q`` (returned by the torch and JAX adapters)."""

    L: Any
    Q: Any


class QRTangents(NamedTuple):
    """Tangents ``(dQ, dR)`` of the reduced QR factors."""

    dQ: Any
    dR: Any


class LQTangents(NamedTuple):
    """Tangents ``(dL, dQ)`` of the reduced LQ factors."""

    dL: Any
    dQ: Any


# ----------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------

_FLOATS = ("float32", "float64", "complex64", "complex128")


def _dtype_name(xp, dt):
    for name in _FLOATS:
        if dt == getattr(xp, name):
            return name
    return None


def _namespace(*pairs):
    arrays = [a for _, a in pairs if a is not None]
    try:
        return B.namespace(*arrays)
    except TypeError:
        names = ", ".join(n for n, a in pairs if a is not None)
        kinds = ", ".join(type(a).__name__ for _, a in pairs if a is not None)
        raise TypeError(
            f"{names} must be arrays of one array-API library (NumPy, CuPy, torch, JAX, Dask, ...); "
            f"got {kinds}"
        ) from None


def _check_factors(xp, F1, F2, name1, name2, *, lq):
    """Shapes and dtypes of the factor pair; returns ``(m, n, k)``."""
    for name, F in ((name1, F1), (name2, F2)):
        if F.ndim < 2:
            raise ValueError(f"{name} must be at least 2-D, got shape {tuple(F.shape)}")
        if F.ndim > 2 and B.backend_name(xp) == "dask":
            raise ValueError(f"{name} has batch dimensions (shape {tuple(F.shape)}); Dask arrays are "
                             f"differentiated one 2-D matrix at a time (index the leading axes)")
        if _dtype_name(xp, F.dtype) is None:
            raise TypeError(f"{name} has dtype {F.dtype}; use float32, float64, complex64 or complex128")
    if F1.dtype != F2.dtype:
        raise TypeError(f"{name1} and {name2} must have one dtype, got {F1.dtype} and {F2.dtype}")
    if tuple(F1.shape[:-2]) != tuple(F2.shape[:-2]):
        raise ValueError(
            f"{name1} and {name2} must have the same batch dimensions, got shapes "
            f"{tuple(F1.shape)} and {tuple(F2.shape)}"
        )
    # QR: Q (m, k), R (k, n); LQ: L (m, k), Q (k, n)
    m, k, n = F1.shape[-2], F1.shape[-1], F2.shape[-1]
    inner = F2.shape[-2]
    if inner != k or k != min(m, n) or k == 0:
        what = "L (m, k) and Q (k, n)" if lq else "Q (m, k) and R (k, n)"
        raise ValueError(
            f"{name1} and {name2} must be the reduced factors {what} of an m x n matrix with "
            f"k = min(m, n) >= 1, got shapes {tuple(F1.shape)} and {tuple(F2.shape)}"
        )
    return m, n, k


def _check_like(xp, d, ref, name, ref_name):
    """A cotangent or tangent must match its primal in shape and dtype."""
    if d is None:
        return None
    if _dtype_name(xp, d.dtype) is None:
        raise TypeError(f"{name} has dtype {d.dtype}; use float32, float64, complex64 or complex128")
    if tuple(d.shape) != tuple(ref.shape):
        raise ValueError(
            f"{name} must have the shape of {ref_name}, {tuple(ref.shape)}; got {tuple(d.shape)}"
        )
    if d.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name}, {ref.dtype}; got {d.dtype}")
    return d


def _check_method(method):
    V.check_choice(method, "method", _VJP_RULES)


def _check_nonsingular(xp, T, name):
    """Raise on an exactly zero diagonal entry of the k x k triangle ``T`` (eager arrays)."""
    if B.is_lazy(T):
        return
    ok = xp.all(xp.linalg.diagonal(T) != 0)
    if not B.is_lazy(ok) and not bool(ok):  # a concrete JAX array inside jax.jit gives a tracer
        raise ValueError(
            f"{name} has a zero on its diagonal: the leading min(m, n) columns (QR) or rows (LQ) "
            f"of A are linearly dependent and the derivative of the factorisation does not exist"
        )


def _check_bool(v, name):
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {type(v).__name__}")


# ----------------------------------------------------------------------------------
# helpers on the last two axes
# ----------------------------------------------------------------------------------


def _is_complex(xp, x):
    return xp.isdtype(x.dtype, "complex floating")


def _strict_lower(xp, k, like):
    """Boolean ``k x k`` mask of the strict lower triangle (``i > j``), on ``like``'s device.

    Triangles are taken with ``xp.where`` on this one mask rather than ``xp.tril``/``xp.triu``:
    it is built once per call and reused, and Dask's ``tril`` warns on complex input.
    """
    dev = B.device(like)
    rows = xp.reshape(xp.arange(k, device=dev), (k, 1))
    cols = xp.reshape(xp.arange(k, device=dev), (1, k))
    return rows > cols


def _copyltu(xp, M, SL):
    """The Hermitian matrix with the strict lower triangle of ``M`` and ``Re diag(M)``.

    ``copyltu(M) = tril(M, -1) + tril(M, -1)^H + Re diag(M)`` = ``symh(E o M)`` with
    ``E`` = 1 on the diagonal, 2 below. Taking the real part of the diagonal is what
    makes eq. 3.3 right for complex input with a real diagonal of ``R`` (seed 001).
    ``SL`` is the strict-lower mask.
    """
    # Not xp.where(SU, M^T, M): selecting between an array and its own transpose
    # crashes jax.jit on the CPU (jaxlib 0.10.2, n = 900..1024).
    SU = xp.matrix_transpose(SL)
    if _is_complex(xp, M):
        lower = xp.where(SU, 0.0, xp.where(SL, M, xp.astype(xp.real(M), M.dtype)))  # no conj: vmap batches it
    else:
        lower = xp.where(SU, 0.0, M)
    return lower + B.mH(xp.where(SL, M, 0.0))


def _upper_hermitian_part(xp, X, SL):
    """``triu(X, 1) + tril(X, -1)^H + Re diag(X)``: upper triangular, real diagonal."""
    SU = xp.matrix_transpose(SL)
    S = X + B.mH(X)
    return xp.where(SU, S, xp.where(SL, 0.0, S / 2))


def _solve_RH_right(xp, R, X):
    """``X @ R^{-H}`` for upper triangular ``R`` (one triangular solve, no inverse)."""
    return B.solve_triangular(B.mH(R), X, lower=True, left=False)


def _split_wide(R):
    """``R = [U | V]`` with ``U`` the leading k x k triangle (``V`` is None if R is square)."""
    k = R.shape[-2]
    if R.shape[-1] == k:
        return R, None
    return R[..., :k], R[..., k:]


# ----------------------------------------------------------------------------------
# reverse mode
# ----------------------------------------------------------------------------------


def qr_vjp(Q, R, dQ, dR, /, *, method="3.3", check_singular=True):
    r"""Cotangent of ``A`` from cotangents of its reduced QR factors (reverse mode).

    Given ``A = Q @ R`` (reduced, any shape) and cotangents ``dQ = \bar Q``,
    ``dR = \bar R`` of a real loss, returns ``dA = \bar A``.

    Square or tall (``m >= n``), seed 001 eq. 3.3::

        M  = R dR^H - dQ^H Q
        dA = (dQ + Q copyltu(M)) R^{-H}

    with ``copyltu(M) = tril(M, -1) + tril(M, -1)^H + Re diag(M)`` (for real input the
    usual "copy lower to upper"; the real part of the diagonal is the complex case).

    Wide (``m < n``): ``A = [X | Y]``, ``R = [U | V]`` with ``U`` the leading ``m x m``
    triangle. Then ``dY = Q dV`` and ``dX`` is the square formula with ``U`` and
    ``dQ' = dQ + Y dV^H``. As ``Y = Q V``, ``dQ' = dQ + Q (V dV^H)``: ``A`` itself is
    not needed.

    Eq. 3.8 (``method="3.8"``, after Walther), with ``M`` as above::

        dA = Q (dR + S R^{-H}) + (dQ - Q Q^H dQ) R^{-H},
        S  = P_L o (M - M^H) + i Im diag(M)

    ``P_L`` keeps the strict lower triangle; ``i Im diag(M)`` is seed 001's correction
    for complex input (zero for real input). The wide case uses ``U``, ``dU`` and
    ``dQ'`` in place of ``R``, ``dR`` and ``dQ``. Both formulas give the same ``dA`` up
    to rounding; 3.3 does less work and is the default.

    Parameters
    ----------
    Q : array, shape (..., m, k)
        Orthonormal factor, ``k = min(m, n)``.
    R : array, shape (..., k, n)
        Upper triangular (trapezoidal) factor with a real diagonal; same dtype as ``Q``.
    dQ, dR : array or None
        Cotangents, each of the shape and dtype of its factor; ``None`` means zero.
        Entries of ``dR`` below the diagonal are ignored (``R`` is structurally zero
        there).
    method : {"3.3", "3.8"}, optional
        Formula of seed 001 to use.
    check_singular : bool, optional
        Raise ``ValueError`` if the leading ``k x k`` triangle of ``R`` has an exactly
        zero diagonal entry (eager arrays only; see the module notes on rank
        deficiency).

    Returns
    -------
    dA : array, shape (..., m, n)
        In the namespace, on the device and in the dtype of ``Q``.

    Raises
    ------
    ValueError
        Factor or cotangent shapes that do not fit; singular ``R`` (see above).
    TypeError
        Non-floating or mismatched dtypes; arrays of different libraries.

    Notes
    -----
    Cost, tall case (``m >= n``), eq. 3.3: two ``m x n x n`` products (``dQ^H Q``,
    ``Q copyltu(M)``), one triangular solve with ``m`` right-hand sides and ``R dR^H``:
    about ``5 m n^2 + 2 n^3`` flops. When ``Q`` is square (``m <= n``), ``dQ = Q Q^H dQ``
    is folded into the small matrix, ``dA = Q [(Q^H dQ + V dV^H + copyltu(M)) U^{-H} | dV]``,
    so the solve is ``m x m`` and one product with ``Q`` yields all of ``dA``: about
    ``7 m^3 + 4 m^2 (n - m)`` flops. Eq. 3.8 is evaluated as written: one more
    ``m x n x n`` product (``Q Q^H dQ``) and an ``n x n`` solve in the tall case (about
    ``7 m n^2 + 3 n^3``), and no folding in the wide case. Memory: ``O(mn)``.
    Every backend; the triangular solves go through ``randla._backend.solve_triangular``.

    Examples
    --------
    ``||R||_F^2 / 2 = ||A||_F^2 / 2``, so with ``dR = R`` the gradient is ``A``:

    >>> import numpy as np
    >>> from randla.adjoints import qr_vjp
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]])
    >>> Q, R = np.linalg.qr(A)
    >>> bool(np.allclose(qr_vjp(Q, R, None, R), A))
    True
    >>> bool(np.allclose(qr_vjp(Q, R, None, R, method="3.8"), A))
    True
    """
    xp = _namespace(("Q", Q), ("R", R), ("dQ", dQ), ("dR", dR))
    m, n, k = _check_factors(xp, Q, R, "Q", "R", lq=False)
    dQ = _check_like(xp, dQ, Q, "dQ", "Q")
    dR = _check_like(xp, dR, R, "dR", "R")
    _check_method(method)
    _check_bool(check_singular, "check_singular")
    U, V = _split_wide(R)
    if check_singular:
        _check_nonsingular(xp, U, "R")
    if dQ is None and dR is None:
        shape = tuple(Q.shape[:-1]) + (n,)
        return xp.zeros(shape, dtype=Q.dtype, device=B.device(Q))
    return _qr_vjp(xp, Q, R, dQ, dR, method)


class _Cotangents(NamedTuple):
    """The pieces both formulas share (wide case: ``R = [U | V]``, ``dR = [dU | dV]``)."""

    dU: Any  # cotangent of the triangle U, strict lower part dropped (or None)
    dV: Any  # cotangent of V (None if square/tall or not given)
    M: Any  # U dU^H - dQ'^H Q, with dQ' = dQ + Q V dV^H
    QhdQ: Any  # Q^H dQ, the only m x k x k product with dQ (or None)
    VdVh: Any  # V dV^H (or None)


def _cotangent_parts(xp, Q, U, V, dQ, dR, SL):
    if dR is not None:
        dU, dV = _split_wide(dR)
        dU = xp.where(SL, 0.0, dU)  # only the upper triangle of U varies
    else:
        dU = dV = None
    M = None if dU is None else U @ B.mH(dU)
    QhdQ = None
    if dQ is not None:
        QhdQ = B.mH(Q) @ dQ
        M = -B.mH(QhdQ) if M is None else M - B.mH(QhdQ)
    VdVh = None
    if V is not None and dV is not None:
        VdVh = V @ B.mH(dV)
        M = M - B.mH(VdVh)  # dQ'^H Q = dQ^H Q + dV V^H
    return _Cotangents(dU, dV, M, QhdQ, VdVh)


def _join_wide(xp, Q, V, dX, dV):
    """``dA = [dX | dY]`` with ``dY = Q dV`` (``Y = Q V``); ``dX`` alone if not wide."""
    if V is None:
        return dX
    if dV is not None:
        dY = Q @ dV
    else:
        dY = xp.zeros(tuple(V.shape[:-2]) + (Q.shape[-2], V.shape[-1]), dtype=Q.dtype, device=B.device(Q))
    return B.concat([dX, dY], axis=-1)


def _vjp_eq33(xp, Q, U, V, dQ, SL, c):
    """Seed 001, eq. 3.3: ``dX = (dQ' + Q copyltu(M)) U^{-H}``."""
    inner = _copyltu(xp, c.M, SL)
    if c.VdVh is not None:
        inner = inner + c.VdVh  # Q V dV^H, the wide part of dQ', joins Q copyltu(M)
    if Q.shape[-2] == Q.shape[-1]:
        # Q square (m <= n): dQ = Q (Q^H dQ), so dA = Q [(Q^H dQ + inner) U^{-H} | dV]:
        # the solve is k x k and one product with Q makes dX and dY = Q dV together.
        if c.QhdQ is not None:
            inner = inner + c.QhdQ
        Z = _solve_RH_right(xp, U, inner)
        if V is None:
            return Q @ Z
        if c.dV is None:
            return B.concat([Q @ Z, xp.zeros(tuple(V.shape), dtype=Q.dtype, device=B.device(Q))], axis=-1)
        return Q @ B.concat([Z, c.dV], axis=-1)
    G = Q @ inner
    if dQ is not None:
        G = G + dQ
    return _join_wide(xp, Q, V, _solve_RH_right(xp, U, G), c.dV)


def _vjp_eq38(xp, Q, U, V, dQ, SL, c):
    """Seed 001, eq. 3.8: ``dX = Q (dU + S U^{-H}) + (dQ' - Q Q^H dQ') U^{-H}``,
    ``S = P_L o (M - M^H) + i Im diag(M)`` (the correction vanishes for real input)."""
    K = c.M - B.mH(c.M)  # its diagonal is 2i Im diag(M)
    if _is_complex(xp, c.M):
        S = xp.where(SL, K, xp.where(xp.matrix_transpose(SL), 0.0, K / 2))
    else:
        S = xp.where(SL, K, 0.0)
    small = _solve_RH_right(xp, U, S)
    if c.dU is not None:
        small = small + c.dU
    dX = Q @ small
    if dQ is not None or c.VdVh is not None:
        # Q^H dQ' = Q^H dQ + V dV^H (Q^H Q = I)
        QhdQp = c.VdVh if c.QhdQ is None else (c.QhdQ if c.VdVh is None else c.QhdQ + c.VdVh)
        dQp = Q @ c.VdVh if dQ is None else (dQ if c.VdVh is None else dQ + Q @ c.VdVh)
        dX = dX + _solve_RH_right(xp, U, dQp - Q @ QhdQp)
    return _join_wide(xp, Q, V, dX, c.dV)


_VJP_RULES = {"3.3": _vjp_eq33, "3.8": _vjp_eq38}
METHODS = tuple(_VJP_RULES)  # the formulas qr_vjp/lq_vjp and the adapters accept


def _pow2_batch(xp, *arrays):
    """A power of two near the largest magnitude of ``arrays`` (``None`` skipped), per
    matrix of a batch (shape ``(..., 1, 1)``)."""
    amax = None
    for x in arrays:
        if x is not None:
            a = xp.max(xp.abs(x), axis=(-2, -1), keepdims=True)
            amax = a if amax is None else xp.maximum(amax, a)
    return pow2_scale(amax)


def _qr_vjp(xp, Q, R, dQ, dR, method):
    """Unchecked body of :func:`qr_vjp` (``dQ`` or ``dR`` may be None, not both).

    Computed on ``R / c`` and cotangents ``/ s`` (``c``, ``s`` powers of two): the map
    is linear in the cotangents and ``dA(Q, c R, dQ, dR) = dA(Q, R, dQ / c, dR)``, so
    the result is exactly that of the formula, without the overflow of ``R dR^H`` at
    ``1e200`` or its underflow to zero at ``1e-200``.
    """
    c = xp.astype(_pow2_batch(xp, R), R.dtype)
    R = R / c
    if dQ is not None:
        dQ = dQ / c
    s = xp.astype(_pow2_batch(xp, dQ, dR), R.dtype)
    dQ = None if dQ is None else dQ / s
    dR = None if dR is None else dR / s
    U, V = _split_wide(R)
    SL = _strict_lower(xp, U.shape[-1], U)
    parts = _cotangent_parts(xp, Q, U, V, dQ, dR, SL)
    return _VJP_RULES[method](xp, Q, U, V, dQ, SL, parts) * s


def lq_vjp(L, Q, dL, dQ, /, *, method="3.3", check_singular=True):
    r"""Cotangent of ``A`` from cotangents of its reduced LQ factors (reverse mode).

    ``A = L @ Q`` is the conjugate transpose of the QR ``A^H = Q^H L^H``, so::

        dA = qr_vjp(Q^H, L^H, dQ^H, dL^H)^H

    For wide or square ``A`` (``m <= n``, ``L`` square) that is, with eq. 3.3 of seed 001,
    ``M = L^H dL - dQ Q^H`` and ``dA = L^{-H} (dQ + copyltu(M) Q)``; tall ``A``
    (``m > n``) is the wide QR case transposed: ``A = [X; Y]``, ``L = [U; V]``.

    Parameters
    ----------
    L : array, shape (..., m, k)
        Lower triangular (trapezoidal) factor with a real diagonal, ``k = min(m, n)``.
    Q : array, shape (..., k, n)
        Factor with orthonormal rows; same dtype as ``L``.
    dL, dQ : array or None
        Cotangents of the shape and dtype of their factors; ``None`` means zero.
        Entries of ``dL`` above the diagonal are ignored.
    method : {"3.3", "3.8"}, optional
        Formula of seed 001 to use, as in :func:`qr_vjp`.
    check_singular : bool, optional
        Raise ``ValueError`` on an exactly zero diagonal entry of ``L`` (eager arrays).

    Returns
    -------
    dA : array, shape (..., m, n)

    Raises
    ------
    ValueError, TypeError
        As :func:`qr_vjp`, naming ``L``, ``Q``, ``dL`` or ``dQ``.

    Notes
    -----
    Cost as :func:`qr_vjp` with ``m`` and ``n`` exchanged, plus conjugate transposes
    (views on most backends, ``O(mn)`` copies on some).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.adjoints import lq_vjp
    >>> A = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0]])
    >>> Qt, Rt = np.linalg.qr(A.T)
    >>> L, Q = Rt.T, Qt.T                      # A = L @ Q
    >>> bool(np.allclose(lq_vjp(L, Q, L, None), A))   # gradient of ||L||_F^2 / 2
    True
    """
    xp = _namespace(("L", L), ("Q", Q), ("dL", dL), ("dQ", dQ))
    m, n, k = _check_factors(xp, L, Q, "L", "Q", lq=True)
    dL = _check_like(xp, dL, L, "dL", "L")
    dQ = _check_like(xp, dQ, Q, "dQ", "Q")
    _check_method(method)
    _check_bool(check_singular, "check_singular")
    if check_singular:
        _check_nonsingular(xp, L[..., :k, :], "L")
    if dL is None and dQ is None:
        shape = tuple(L.shape[:-1]) + (n,)
        return xp.zeros(shape, dtype=L.dtype, device=B.device(L))
    dAh = _qr_vjp(xp, B.mH(Q), B.mH(L), None if dQ is None else B.mH(dQ), None if dL is None else B.mH(dL),
                  method)
    return B.mH(dAh)


# ----------------------------------------------------------------------------------
# forward mode
# ----------------------------------------------------------------------------------


def qr_jvp(Q, R, dA, /):
    r"""Tangents of the reduced QR factors from a tangent of ``A`` (forward mode).

    Square or tall (``m >= n``): with ``X = Q^H dA R^{-1}`` and ``C = Q^H dQ``, the
    skew-Hermitian ``C`` is fixed by ``tril(C, -1) = tril(X, -1)`` and, since
    ``diag(R)`` stays real, ``diag(C) = i Im diag(X)``. Then::

        dR = (X - C) R,        X - C = triu(X, 1) + tril(X, -1)^H + Re diag(X)
        dQ = dA R^{-1} - Q (X - C)

    This is the forward form of seed 001's eq. 3.3 (its transpose is :func:`qr_vjp`).
    Wide (``m < n``): ``A = [X | Y]``, ``R = [U | V]``; ``dQ``, ``dU`` come from the
    square formula on ``dX`` and ``dV = Q^H dY - C V`` (from ``V = Q^H Y``).

    Parameters
    ----------
    Q : array, shape (..., m, k)
    R : array, shape (..., k, n)
        Reduced QR factors of ``A``, ``k = min(m, n)``; ``R`` with a real diagonal.
    dA : array, shape (..., m, n)
        Tangent of ``A``, same dtype as ``Q``.

    Returns
    -------
    QRTangents
        ``(dQ, dR)``, ``dR`` upper triangular (trapezoidal).

    Raises
    ------
    ValueError, TypeError
        Shapes or dtypes that do not fit, naming the argument. ``R`` is not checked
        for singularity (that would force lazy arrays): an exactly singular ``R`` gives
        inf/NaN (or SciPy's ``LinAlgError``).

    Notes
    -----
    Cost, tall case: a triangular solve with ``m`` right-hand sides, two ``m x n x n``
    products and one ``n x n x n`` product, about ``5 m n^2 + 2 n^3`` flops; the wide
    case adds ``4 m^2 (n - m)`` for ``dV``.

    Examples
    --------
    Scaling ``A`` scales ``R`` and leaves ``Q``; a finite difference agrees on a
    random direction:

    >>> import numpy as np
    >>> from randla.adjoints import qr_jvp
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]])
    >>> Q, R = np.linalg.qr(A)
    >>> dQ, dR = qr_jvp(Q, R, A)
    >>> bool(np.allclose(dQ, 0)), bool(np.allclose(dR, R))
    (True, True)
    >>> E = np.array([[0.3, -1.0], [0.5, 0.2], [1.0, 0.7]])
    >>> Q2, R2 = np.linalg.qr(A + 1e-7 * E)
    >>> dQ, dR = qr_jvp(Q, R, E)
    >>> bool(np.allclose((Q2 - Q) / 1e-7, dQ, atol=1e-5)), bool(np.allclose((R2 - R) / 1e-7, dR, atol=1e-5))
    (True, True)
    """
    xp = _namespace(("Q", Q), ("R", R), ("dA", dA))
    m, n, k = _check_factors(xp, Q, R, "Q", "R", lq=False)
    if dA is None:
        raise TypeError("dA must be an array, got None")
    shape = tuple(Q.shape[:-1]) + (n,)
    if tuple(dA.shape) != shape:
        raise ValueError(f"dA must have the shape of A = Q @ R, {shape}; got {tuple(dA.shape)}")
    if _dtype_name(xp, dA.dtype) is None or dA.dtype != Q.dtype:
        raise TypeError(f"dA must have the dtype of Q, {Q.dtype}; got {dA.dtype}")
    return _qr_jvp(xp, Q, R, dA)


def _qr_jvp(xp, Q, R, dA):
    U, V = _split_wide(R)
    wide = V is not None
    m = U.shape[-1]  # wide: A = [X | Y] with X of m columns
    dX = dA[..., :m] if wide else dA
    # Xs = dX U^{-1}  (x @ U = dX), then X = Q^H Xs
    Xs = B.solve_triangular(U, dX, lower=False, left=False)
    X = B.mH(Q) @ Xs
    # W = X - C: the upper triangular part that dR R^{-1} must be
    W = _upper_hermitian_part(xp, X, _strict_lower(xp, X.shape[-1], X))
    dU = W @ U
    dQ = Xs - Q @ W
    if not wide:
        return QRTangents(dQ, dU)
    C = X - W
    dV = B.mH(Q) @ dA[..., m:] - C @ V
    return QRTangents(dQ, B.concat([dU, dV], axis=-1))


def lq_jvp(L, Q, dA, /):
    r"""Tangents of the reduced LQ factors from a tangent of ``A`` (forward mode).

    ``A = L Q`` is the conjugate transpose of the QR ``A^H = Q^H L^H``, so
    ``(dQ^H, dL^H) = qr_jvp(Q^H, L^H, dA^H)``; see :func:`qr_jvp` for the formula
    (seed 001, eq. 3.3 in forward form; the LQ of tall ``A`` is the wide QR case).

    Parameters
    ----------
    L : array, shape (..., m, k)
    Q : array, shape (..., k, n)
        Reduced LQ factors of ``A``, ``k = min(m, n)``; ``L`` with a real diagonal.
    dA : array, shape (..., m, n)
        Tangent of ``A``, same dtype as ``L``.

    Returns
    -------
    LQTangents
        ``(dL, dQ)``, ``dL`` lower triangular (trapezoidal).

    Raises
    ------
    ValueError, TypeError
        As :func:`qr_jvp`.

    Notes
    -----
    Cost as :func:`qr_jvp` with ``m`` and ``n`` exchanged.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.adjoints import lq_jvp
    >>> A = np.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0]])
    >>> Qt, Rt = np.linalg.qr(A.T)
    >>> L, Q = Rt.T, Qt.T
    >>> dL, dQ = lq_jvp(L, Q, 2 * A)            # doubling A doubles L
    >>> bool(np.allclose(dL, 2 * L)), bool(np.allclose(dQ, 0))
    (True, True)
    """
    xp = _namespace(("L", L), ("Q", Q), ("dA", dA))
    m, n, k = _check_factors(xp, L, Q, "L", "Q", lq=True)
    if dA is None:
        raise TypeError("dA must be an array, got None")
    shape = tuple(L.shape[:-1]) + (n,)
    if tuple(dA.shape) != shape:
        raise ValueError(f"dA must have the shape of A = L @ Q, {shape}; got {tuple(dA.shape)}")
    if _dtype_name(xp, dA.dtype) is None or dA.dtype != L.dtype:
        raise TypeError(f"dA must have the dtype of L, {L.dtype}; got {dA.dtype}")
    dQh, dLh = _qr_jvp(xp, B.mH(Q), B.mH(L), B.mH(dA))
    return LQTangents(B.mH(dLh), B.mH(dQh))
