"""The one place that knows which array library it runs on.

Everything else in randla is written against the array API standard and receives
its namespace ``xp`` from here. This module supplies what the standard lacks
(triangular solve, LU, pivoted QR, random numbers, host round-trips) with a fast
path per backend and a pure array-API fallback, and it hides the few places where
a backend needs help with a standard call (Dask wants single-chunk columns for QR
and SVD).

Backends are recognised by their namespace, never by importing them: ``import
randla`` needs only NumPy and array-api-compat.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import array_api_compat as _compat
import numpy as np

from . import _dask  # Dask kernels; imports Dask only when called

__all__ = [
    "namespace",
    "device",
    "backend_name",
    "is_lazy",
    "is_jax_tracer",
    "mH",
    "real_dtype",
    "eps",
    "qr",
    "svd",
    "eigh",
    "cholesky",
    "try_cholesky",
    "inv",
    "fft_last",
    "solve_triangular",
    "rdiv_upper",
    "lu",
    "products",
    "pass_product",
    "persist",
    "gram_apply",
    "fused_passes",
    "qr_pivoted",
    "take",
    "to_numpy",
    "from_numpy",
    "as_generator",
    "normal",
    "uniform",
    "integers",
    "scalar",
    "at_set",
]


# ----------------------------------------------------------------------------------
# namespace, device, dtype
# ----------------------------------------------------------------------------------


_namespace_of_type = {}  # array type -> namespace: the lookup is on every small step


def namespace(*arrays):
    """Array namespace of ``arrays`` (``None`` entries are ignored).

    Cached per array type (NumPy, torch, JAX, Dask, ... each map to one namespace),
    so repeated lookups on the small steps of a kernel cost a dictionary access.
    """
    if len(arrays) == 1:  # the common case: one dictionary access
        xp = _namespace_of_type.get(type(arrays[0]))
        if xp is not None:
            return xp
    arrays = [a for a in arrays if a is not None]
    kinds = {type(a) for a in arrays}
    if len(kinds) == 1:
        kind = kinds.pop()
        xp = _namespace_of_type.get(kind)
        if xp is None:
            xp = _compat.array_namespace(*arrays)
            if _compat.is_array_api_obj(arrays[0]):
                _namespace_of_type[kind] = xp
        return xp
    return _compat.array_namespace(*arrays)


def device(x):
    """Device of ``x`` in the sense of the array API standard."""
    return _compat.device(x)


_backend_names = {}  # namespace -> name, as namespace() is cached per array type


def backend_name(xp) -> str:
    """One of ``numpy``, ``torch``, ``jax``, ``cupy``, ``dask`` or ``other``."""
    name = _backend_names.get(xp)
    if name is None:
        name = _backend_names[xp] = _backend_name(xp)
    return name


def _backend_name(xp) -> str:
    if _compat.is_numpy_namespace(xp):
        return "numpy"
    if _compat.is_torch_namespace(xp):
        return "torch"
    if _compat.is_jax_namespace(xp):
        return "jax"
    if _compat.is_cupy_namespace(xp):
        return "cupy"
    if _compat.is_dask_namespace(xp):
        return "dask"
    return "other"


def is_lazy(x) -> bool:
    """True where reading a value would force a computation or is impossible.

    Dask arrays and JAX tracers (inside ``jax.jit``) are lazy; eager checks such
    as ``check_finite`` are skipped on them.
    """
    return _compat.is_dask_array(x) or is_jax_tracer(x)


def is_jax_tracer(x) -> bool:
    """True for a JAX tracer (``x`` inside ``jax.jit``, ``jax.grad``, ``jax.vmap``, ...):
    its values cannot be read, and nothing computes them on demand as Dask does."""
    if not _compat.is_jax_array(x):
        return False
    try:
        import jax

        return isinstance(x, jax.core.Tracer)
    except (ImportError, AttributeError):  # pragma: no cover - old JAX
        return False


def wide_floats(func):
    """Decorator: ``func`` runs with JAX's float64 enabled (``jax.enable_x64``) when its
    first argument is a JAX array and the caller's JAX has float64 off (its default).
    The kernels form Gram matrices and small factorisations of single-precision data
    in float64; without it JAX silently truncated those to float32 (with a warning)
    and a Cholesky factor came out NaN. Results keep the input's dtype; integer and
    bool input becomes float32 first, the float such a caller's JAX makes (promoted to
    float64 inside the scope, the results left a float64 that the caller's JAX
    truncates with a warning at every use)."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        if args and _compat.is_jax_array(args[0]):
            import jax

            if not jax.config.read("jax_enable_x64"):
                a = args[0]
                if a.dtype.kind in "biu":
                    args = (a.astype("float32"), *args[1:])
                with jax.enable_x64(True):
                    return func(*args, **kwargs)
        return func(*args, **kwargs)

    return run


def concat(arrays, axis):
    """``xp.concat``; ``torch.cat`` on torch, whose ``concat`` alias has no batching
    rule (``torch.func.vmap``, batched gradients)."""
    xp = namespace(*arrays)
    if backend_name(xp) == "torch":
        import torch

        return torch.cat(list(arrays), dim=axis)
    return xp.concat(list(arrays), axis=axis)


def mH(x):
    """Conjugate transpose of the last two axes."""
    if type(x) is np.ndarray:
        xt = x.swapaxes(-1, -2)
        return xt.conj() if x.dtype.kind == "c" else xt
    xp = namespace(x)
    if backend_name(xp) == "torch":
        # materialised for complex: a lazily conjugated view cannot leave through .numpy()
        return x.mH.resolve_conj() if x.is_complex() else x.mT
    xt = xp.matrix_transpose(x)
    return xp.conj(xt) if xp.isdtype(x.dtype, "complex floating") else xt


def mT(x):
    """Transpose of the last two axes (no conjugation)."""
    if type(x) is np.ndarray:
        return x.swapaxes(-1, -2)
    xp = namespace(x)
    if backend_name(xp) == "torch":
        return x.mT
    return xp.matrix_transpose(x)


def real_dtype(xp, dtype):
    """The real floating dtype of the same precision as ``dtype``."""
    if dtype == xp.complex64:
        return xp.float32
    if dtype == xp.complex128:
        return xp.float64
    return dtype


def wide_dtype(xp, dtype):
    """float64, or complex128 for complex ``dtype``: where randla accumulates Gram
    matrices, sums and small factorisations of single-precision data."""
    return xp.complex128 if xp.isdtype(dtype, "complex floating") else xp.float64


def eps(xp, dtype) -> float:
    """Unit roundoff (machine epsilon) of ``dtype``."""
    return float(xp.finfo(real_dtype(xp, dtype)).eps)


def requires_grad(x) -> bool:
    """Whether ``x`` is an autograd tensor that requires grad (torch)."""
    return bool(getattr(x, "requires_grad", False))


def detached(x):
    """``x.detach()`` for an autograd tensor that requires grad (torch), else ``x``."""
    return x.detach() if requires_grad(x) else x


def scalar(x) -> float:
    """A Python float from a 0-d array (eager: computes lazy arrays; a torch tensor that
    requires grad is read detached, as a value is no part of the graph)."""
    if _compat.is_dask_array(x):
        x = x.compute()
    return float(detached(x))


def at_set(x, idx, value):
    """Functional ``x[idx] = value`` that never writes to ``x`` (works on JAX)."""
    import array_api_extra as xpx

    return xpx.at(x, idx).set(value, copy=True)


# ----------------------------------------------------------------------------------
# dense linear algebra the standard has, with backend help where needed
# ----------------------------------------------------------------------------------


def _dask_single_col_chunk(x):
    return x.rechunk({x.ndim - 1: -1})


def _dask_single_chunk(x):
    return x.rechunk(-1)


def qr(x):
    """Reduced QR of a 2-D array: ``x = Q @ R``.

    NumPy: SciPy's ``geqrf``/``orgqr`` (``numpy.linalg.qr`` took 5x as long on a
    200000 x 32 float32 panel, 435 against 82 ms, and 1.8x on 200000 x 32 float64,
    one thread). Dask: columns are gathered into one chunk (tall-skinny QR needs it).
    """
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy" and x.ndim == 2:
        import scipy.linalg

        return scipy.linalg.qr(x, mode="economic", check_finite=False)
    if name == "dask":
        m, n = x.shape
        x = _dask_single_col_chunk(x) if m >= n else _dask_single_chunk(x)
    return xp.linalg.qr(x, mode="reduced")


def svd(x):
    """Thin SVD ``x = U @ diag(S) @ Vh`` of a matrix or a stack.

    NumPy: SciPy's ``gesdd`` matrix by matrix, twice as fast as ``numpy.linalg.svd``
    in float32 (384 x 384: 15 vs 32 ms; 1536 x 384: 40 vs 87 ms, one thread) and the
    same in float64. Non-finite input raises ``numpy.linalg.LinAlgError`` as NumPy's
    SVD does (LAPACK's bidiagonal QR can loop forever on NaN; the O(mn) scan is
    cheap next to the O(mn min(m, n)) SVD). Dask: TSQR and the SVD of its small
    ``R`` where ``x`` is chunked along its long axis only (the factor keeps those
    chunks), else one task on the gathered (small) matrix.
    """
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        import scipy.linalg

        check_svd_finite(x)

        def one(a):
            return scipy.linalg.svd(a, full_matrices=False, check_finite=False, lapack_driver="gesdd")

        if x.ndim == 2:
            return one(x)
        parts = [one(a) for a in x.reshape(-1, *x.shape[-2:])]
        return tuple(np.stack([p[i] for p in parts]).reshape(*x.shape[:-2], *parts[0][i].shape) for i in range(3))
    if name == "dask":
        return _dask.svd(x)
    return xp.linalg.svd(x, full_matrices=False)


def check_svd_finite(x):
    """Raise ``numpy.linalg.LinAlgError`` for a NumPy ``x`` with NaN or Inf entries, as
    NumPy's SVD does (LAPACK's bidiagonal QR can loop forever on them)."""
    if not np.isfinite(x).all():
        raise np.linalg.LinAlgError("SVD did not converge: the matrix has NaN or Inf entries")


def eigh(x):
    """Eigen-decomposition of a Hermitian matrix (or a stack), eigenvalues ascending."""
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        # LAPACK's divide and conquer (syevd/heevd) through SciPy, matrix by matrix:
        # 163 x 163, one thread: float64 1.9 ms against numpy.linalg.eigh's 2.3 ms,
        # float32 1.2 ms (NumPy's float32 eigh takes as long as its float64 one)
        kind = "heevd" if x.dtype.kind == "c" else "syevd"
        fn = _blas_fn(kind, x.dtype)
        flat = x.reshape(-1, *x.shape[-2:])
        w = np.empty(flat.shape[:-1], dtype=np.finfo(x.dtype).dtype)
        v = np.empty(flat.shape, dtype=x.dtype)
        for i in range(flat.shape[0]):
            w[i], v[i], info = fn(flat[i], compute_v=1, lower=1)
            if info != 0:
                raise np.linalg.LinAlgError("eigenvalue decomposition did not converge")
        return w.reshape(x.shape[:-1]), v.reshape(x.shape)
    if name == "torch":
        import torch

        return torch.linalg.eigh(x)
    if name == "dask":
        return _dask.eigh(x)  # Dask has no eigh: one call on the gathered (small) matrix
    return xp.linalg.eigh(x)


def cholesky(x, *, upper=True):
    """Cholesky factor of a Hermitian positive definite matrix (upper by default)."""
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        # NumPy directly: array-api-compat's wrapper re-decorates a function on every
        # call (about 60 us, as much as factoring a 160 x 160 matrix)
        low = np.linalg.cholesky(x)
        return mH(low) if upper else low
    if name == "torch":
        import torch

        return torch.linalg.cholesky(x, upper=upper)
    if name == "dask":
        # Dask's cholesky ignores ``upper`` through array-api-compat and is wrong for
        # complex input (dask issue 12335): factor the small matrix with NumPy, lazily.
        lower = _dask.cholesky_lower(x)
        return mH(lower) if upper else lower
    return xp.linalg.cholesky(x, upper=upper)


def try_cholesky(x):
    """Upper Cholesky factor ``R`` (``R^H R = x``) of a matrix or stack, or ``None`` where
    any matrix is not numerically positive definite. Eager: the caller branches on it.

    NumPy: LAPACK ``potrf`` through SciPy, matrix by matrix (no exception, no
    transposed copy; 163 x 163 float32: 0.1 ms against ``numpy.linalg.cholesky``'s
    0.16 ms per matrix of a stack); torch: ``cholesky_ex`` (no exception). Elsewhere :func:`cholesky`, with
    ``None`` for a failure raised as an error or returned as NaN.
    """
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        potrf = _blas_fn("potrf", x.dtype)
        if x.ndim == 2:
            r, info = potrf(x, lower=0, clean=1)
            return r if info == 0 else None
        flat = x.reshape(-1, *x.shape[-2:])
        out = np.empty(flat.shape, dtype=x.dtype)
        for i in range(flat.shape[0]):
            out[i], info = potrf(flat[i], lower=0, clean=1)
            if info != 0:
                return None
        return out.reshape(x.shape)
    if name == "torch":
        import torch

        r, info = torch.linalg.cholesky_ex(x, upper=True)
        return r if not bool(torch.any(info)) else None
    try:
        r = cholesky(x, upper=True)
    except (np.linalg.LinAlgError, ValueError, RuntimeError):
        return None
    return r if bool(xp.all(xp.isfinite(r))) else None


def inv(x):
    """Inverse of a small square matrix (Dask: one task)."""
    xp = namespace(x)
    if backend_name(xp) == "dask":
        return _dask.inv(x)
    return xp.linalg.inv(x)


def fft_last(x, *, real):
    """FFT along the last axis (``rfft`` for real input when ``real``).

    Dask needs that axis in one chunk.
    """
    xp = namespace(x)
    if backend_name(xp) == "dask":
        x = _dask_single_col_chunk(x)
    return xp.fft.rfft(x, axis=-1) if real else xp.fft.fft(x, axis=-1)


def products(A):
    """``(X -> A @ X, X -> A^H @ X)``: the two products with a dense matrix, each one
    pass over its data.

    Dask: see :func:`pass_product`. Elsewhere ``A^H X`` is ``A^T X`` through a view
    for real ``A``, and ``conj(A^T conj(X))`` for complex ``A``: conjugating the thin
    ``X`` and the result instead of ``A``, whose conjugated copy (NumPy, and torch, whose
    lazily conjugated view cannot be multiplied without being resolved) was as
    large as ``A`` (``rsi`` of a complex64 8192 x 4096 matrix: 1.3x ``A`` more memory).
    """
    if _compat.is_dask_array(A) and A.ndim == 2:
        return (lambda X: _dask.pass_product(A, X), lambda X: _dask.pass_product(A, X, adjoint=True))
    xp, AT = namespace(A), mT(A)
    if xp.isdtype(A.dtype, "complex floating"):
        return (lambda X: A @ X, lambda X: _conj(xp, AT @ _conj(xp, X)))
    return (lambda X: A @ X, lambda X: AT @ X)


def _conj(xp, x):
    """``conj(x)``, materialised (torch's is a lazy view, which ``.numpy()`` refuses)."""
    y = xp.conj(x)
    return y.resolve_conj() if hasattr(y, "resolve_conj") else y


def pass_product(A, X, *, left=False):
    """``A @ X`` (``X @ A`` with ``left``) as one pass over the data ``A``.

    Dask: ``X`` is aligned with ``A``'s chunks (the result keeps ``A``'s row or
    column chunks), and the tasks that make ``A``'s chunks (reads from Zarr or a
    memmap, a rechunk, arithmetic) are copied for this product and started only
    once ``X`` is ready, so each pass reads ``A`` from its source again instead of
    holding all of ``A`` in memory from the first pass to the last (chunks already
    in memory are shared). Elsewhere the plain product.
    """
    if _compat.is_dask_array(A):
        return _dask.pass_product(A, X, left=left)
    return X @ A if left else A @ X


def persist(*arrays):
    """Evaluate lazy arrays that an eager loop will read, or use, more than once.

    Dask: one ``dask.persist`` for all of them (inputs they share are read once);
    the results stay in memory (in the cluster's, under ``distributed``) instead
    of being recomputed from ``A`` at every read. Other arrays come back as they
    are. Returns a tuple of the same length.
    """
    if any(_compat.is_dask_array(a) for a in arrays):
        import dask

        return tuple(dask.persist(*arrays))
    return arrays


class FusedPasses(NamedTuple):
    """A backend's passes that read ``A`` once for a product and the adjoint product
    with its orthonormalised result (see :func:`fused_passes`)."""

    step: Callable  # (Z, keep=False) -> orth(A^H Q), Q = orth(A Z); keep: (that, Q)
    basis: Callable  # Z -> orth(A Z)
    project: Callable  # (Z, k, blocks=()) -> (U, S, Vh) of Q Q^H A, Q = orth([*blocks, A Z])


def fused_passes(A):
    """:class:`FusedPasses` where the backend reads ``A`` once for a product and the
    adjoint product with its orthonormalised result, else ``None``.

    ``step(Z)``: an orthonormal basis of ``A^H Q`` for ``Q`` one of ``A Z`` (with
    ``keep=True`` also ``Q``); ``basis(Z)``: an orthonormal basis of ``A Z``;
    ``project(Z, k, blocks)``: ``(U, S, Vh)``, the rank-``k`` SVD of ``Q Q^H A`` for
    ``Q`` an orthonormal basis of ``[X_1 | ... | A Z]`` (``blocks`` the ``X``). One
    pass over ``A`` each. Dask with all columns in one chunk: per row chunk
    ``A_i Z = Q_i R_i`` and ``Q_i^H A_i`` from one read of ``A_i``, TSQR's second
    level on the stacked ``R_i`` (see :func:`randla._dask.power_step`,
    :func:`randla._dask.range_basis` and :func:`randla._dask.project_svd`).
    """
    if _compat.is_dask_array(A) and _dask.fuses_passes(A):
        return FusedPasses(step=lambda Z, keep=False: _dask.power_step(A, Z, keep),
                           basis=lambda Z: _dask.range_basis(A, Z),
                           project=lambda Z, k, blocks=(): _dask.project_svd(A, Z, k, blocks))
    return None


def gram_apply(Y, factor):
    """``(Y / c) R^{-1}`` as one fused kernel where the backend needs it, else ``None``.

    ``c = ||Y||_F`` (1 for a zero ``Y``), ``R = factor(G, m, dtype)`` an upper
    triangular ``l x l`` matrix from the float64/complex128 Gram matrix ``G`` of
    ``Y / c`` (``factor`` is array-API code; ``m`` and ``dtype`` are ``Y``'s rows and
    dtype): one pass of a Cholesky-QR. Dask (tall ``Y`` in row chunks): one task per
    chunk for its scaled Gram matrix, one task that sums them, runs ``factor``
    on the chunk type and inverts ``R``, one GEMM per chunk; composed of array
    operations the same pass is ~25 Dask operations whose graph takes longer to
    build than the products take to run. Elsewhere ``None``: the caller composes it.
    """
    if _compat.is_dask_array(Y) and Y.ndim == 2:
        return _dask.cholqr(Y, factor)
    return None


# ----------------------------------------------------------------------------------
# what the standard lacks
# ----------------------------------------------------------------------------------


def solve_triangular(a, b, *, lower, left=True, unit_diagonal=False):
    """Solve ``a @ x = b`` (``left``) or ``x @ a = b`` with triangular ``a``.

    Fast paths: SciPy (NumPy), ``torch.linalg.solve_triangular``,
    ``jax.scipy.linalg.solve_triangular``, ``cupyx.scipy.linalg``. The pure array-API
    fallback calls ``xp.linalg.solve`` on the triangular matrix (an LU of a triangular
    matrix; backward stable, O(n^3) instead of O(n^2) per right-hand side).
    Leading batch dimensions are supported on every path but Dask's (2-D only);
    batched NumPy input skips the (2-D) SciPy fast path and goes through the fallback.
    """
    xp = namespace(a, b)
    name = backend_name(xp)
    if name == "torch":
        import torch

        return torch.linalg.solve_triangular(a, b, upper=not lower, left=left, unitriangular=unit_diagonal)
    if name == "dask" and a.ndim == 2 and b.ndim == 2:
        return _dask.solve_triangular(a, b, lower=lower, left=left, unit_diagonal=unit_diagonal)
    if not left:
        # x @ a = b  <=>  a^T @ x^T = b^T (plain transpose, no conjugation)
        xt = solve_triangular(
            xp.matrix_transpose(a), xp.matrix_transpose(b), lower=not lower, unit_diagonal=unit_diagonal
        )
        return xp.matrix_transpose(xt)
    if name == "numpy" and a.ndim == 2 and b.ndim == 2:
        import scipy.linalg

        return xp.asarray(
            scipy.linalg.solve_triangular(a, b, lower=lower, unit_diagonal=unit_diagonal, check_finite=False)
        )
    if name == "jax":
        import jax.scipy.linalg as jsl

        return jsl.solve_triangular(a, b, lower=lower, unit_diagonal=unit_diagonal)
    if name == "cupy" and a.ndim == 2:
        import cupyx.scipy.linalg as csl

        return csl.solve_triangular(a, b, lower=lower, unit_diagonal=unit_diagonal)
    n = a.shape[-1]
    mask = xp.tril(xp.ones((n, n), dtype=xp.bool, device=device(a)))
    if not lower:
        mask = xp.matrix_transpose(mask)
    a = xp.where(mask, a, xp.zeros_like(a))
    if unit_diagonal:
        eye = xp.eye(n, dtype=a.dtype, device=device(a))
        a = xp.where(xp.astype(eye, xp.bool), eye, a)
    if name == "dask":
        a, b = _dask_single_chunk(a), _dask_single_col_chunk(b)
    return xp.linalg.solve(a, b)


# Panels up to this many flops (m l^2) are solved by one single-threaded TRSM; larger
# ones take the triangular inverse and a (threaded) GEMM in NumPy's own BLAS.
_TRSM_MAX_FLOPS = 2**25


def rdiv_upper(y, r):
    """``y @ inv(r)`` for an upper-triangular ``r`` (l x l) and a tall ``y`` (m x l).

    The stabilisers' workhorse: a triangular solve, never a general inverse; stacks
    ``(..., m, l)`` with ``(..., l, l)`` are solved matrix by matrix. ``r``'s
    strictly lower part must be zero; it is cast to ``y``'s dtype where it is
    applied. NumPy: a small panel (``m l^2 <= 2^25``, e.g. 384 x 163) is one BLAS
    ``trsm`` call (half the flops of a GEMM, on one thread in SciPy's BLAS); a large
    one takes the LAPACK ``trtri`` inverse (``l^3 / 3`` flops, one thread) and a GEMM
    in NumPy's BLAS, so the big product keeps NumPy's threads and SciPy's pool
    stays idle (two OpenBLAS pools on two cores fight, see
    :func:`scipy_blas_single_threaded`). Both are 3-7x faster than the
    ``numpy.linalg.inv`` (an LU) they replace at l = 160. torch:
    ``torch.linalg.solve_triangular``; Dask: ``y @ inv(r)`` (keeps ``y``'s row
    chunks); elsewhere :func:`solve_triangular`.
    """
    xp = namespace(y)
    name = backend_name(xp)
    if name == "numpy":
        m, l = y.shape[-2:]
        y_flat = y.reshape(-1, m, l)
        r_flat = r.reshape(-1, l, l)
        if m * l * l <= _TRSM_MAX_FLOPS:
            trsm = _blas_fn("trsm", y.dtype)
            r_flat = r_flat.astype(y.dtype, copy=False)
            # trsm overwrites a Fortran-ordered copy of y in place: OpenBLAS's right-side
            # solve on column-major y is 1.5x faster than the left-side solve on y^T that
            # C order would take (384 x 163 float32: 0.24 against 0.35 ms, one thread);
            # the result is copied back to C order, where the GEMMs that follow are faster
            out_t = np.empty((y_flat.shape[0], l, m), dtype=y.dtype)
            out = out_t.swapaxes(-1, -2)
            out[...] = y_flat
            with single_threaded_blas():
                for i in range(y_flat.shape[0]):
                    # r is passed as Fortran memory (r, or r^T read as lower), never copied
                    ri = r_flat[i]
                    if ri.flags.f_contiguous:
                        trsm(1.0, ri, out[i], side=1, lower=0, overwrite_b=1)
                    else:
                        trsm(1.0, ri.T, out[i], side=1, lower=1, trans_a=1, overwrite_b=1)
            return np.ascontiguousarray(out).reshape(y.shape)
        trtri = _blas_fn("trtri", r.dtype)
        r_inv = np.empty(r_flat.shape, dtype=r.dtype)
        with single_threaded_blas():
            for i in range(r_flat.shape[0]):
                inv_i, info = trtri(r_flat[i], lower=0)
                if info > 0:
                    raise np.linalg.LinAlgError("singular triangular factor")
                r_inv[i] = np.triu(inv_i)  # trtri leaves the strictly lower part as it was
        return y @ r_inv.reshape(r.shape).astype(y.dtype, copy=False)
    r = xp.astype(r, y.dtype, copy=False)
    if name == "torch":
        import torch

        return torch.linalg.solve_triangular(r, y, upper=True, left=False)
    if name == "dask":
        return y @ xp.astype(inv(r), y.dtype)  # Dask's inv solves against a float64 identity
    return solve_triangular(r, y, lower=False, left=False)


_blas_fns = {}


def _blas_fn(name, dtype):
    """SciPy's BLAS (``trsm``) or LAPACK (``trtri``, ``potrf``, ``syevd``, ``heevd``) routine for
    ``dtype``, looked up once."""
    fn = _blas_fns.get((name, dtype))
    if fn is None:
        from scipy.linalg import blas, lapack

        if name == "trsm":
            fn = blas.get_blas_funcs(name, dtype=dtype)
        else:
            fn = lapack.get_lapack_funcs(name, dtype=dtype)
        _blas_fns[name, dtype] = fn
    return fn


def lu(x):
    """Row-permuted LU of an m x n matrix, m >= n: returns ``(PL, U)``, ``x = PL @ U``.

    ``PL`` is a unit lower-triangular matrix with its rows permuted (LAPACK getrf
    with the permutation applied). It spans the same column space as ``x`` and is
    well conditioned, which is all a power-iteration stabiliser needs [HMT2011,
    Sec. 4.5]. Fast paths: SciPy, torch, JAX, CuPy; fallback: right-looking
    partial-pivoting LU in array-API operations.
    """
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        import scipy.linalg

        pl, u = scipy.linalg.lu(x, permute_l=True, check_finite=False)
        return xp.asarray(pl), xp.asarray(u)
    if x.ndim > 2:  # a stack: the other paths factor one matrix, so slice by slice
        flat = xp.reshape(x, (-1, *x.shape[-2:]))
        parts = [lu(flat[i, ...]) for i in range(flat.shape[0])]
        return tuple(xp.reshape(xp.stack([f[j] for f in parts]), (*x.shape[:-2], *parts[0][j].shape))
                     for j in range(2))
    if name == "torch":
        import torch

        # lu() would form the m x m permutation matrix: apply getrf's row swaps to the
        # rows of L instead (a singular U, e.g. of a zero sketch, is fine)
        m, n = x.shape
        lu_, pivots, _ = torch.linalg.lu_factor_ex(x)
        perm = list(range(m))
        for j, p in enumerate(pivots.tolist()):  # LAPACK's 1-based swaps, in order
            perm[j], perm[p - 1] = perm[p - 1], perm[j]
        low = torch.tril(lu_, diagonal=-1) + torch.eye(m, n, dtype=x.dtype, device=x.device)
        inverse = torch.argsort(torch.as_tensor(perm, device=x.device))
        return low.index_select(0, inverse), torch.triu(lu_[:n])
    if name == "jax":
        import jax.scipy.linalg as jsl

        return jsl.lu(x, permute_l=True)
    if name == "cupy":
        import cupyx.scipy.linalg as csl

        return csl.lu(x, permute_l=True)
    if name == "dask":
        # Dask has no pivoted LU of a tall matrix: factor the (tall-skinny) panel in
        # one task with SciPy, lazily.
        return _dask.lu(x)
    return _lu_fallback(x, xp)


def _lu_fallback(x, xp):
    m, n = x.shape
    dev = device(x)
    a = xp.asarray(x, copy=True)
    rows = xp.arange(m, device=dev)
    perm = rows
    for j in range(n):
        col = xp.abs(a[:, j])
        col = xp.where(rows >= j, col, -xp.ones_like(col))
        p = int(xp.argmax(col))
        if p != j:
            order = xp.asarray(list(range(m)), device=dev)
            order = at_set(at_set(order, j, p), p, j)
            a = xp.take(a, order, axis=0)
            perm = xp.take(perm, order, axis=0)
        pivot = a[j, j]
        below = rows > j
        safe = pivot if scalar(xp.abs(pivot)) != 0.0 else xp.ones_like(pivot)
        lcol = xp.where(below, a[:, j] / safe, xp.zeros_like(a[:, j]))
        urow = xp.where(xp.arange(n, device=dev) > j, a[j, :], xp.zeros_like(a[j, :]))
        a = a - lcol[:, None] * urow[None, :]
        a = xp.where((below[:, None]) & (xp.arange(n, device=dev)[None, :] == j), lcol[:, None], a)
    u = xp.triu(a[:n, :])
    low = xp.tril(a, k=-1)[:, :n] + xp.eye(m, n, dtype=a.dtype, device=dev)
    inverse = xp.argsort(perm)
    return xp.take(low, inverse, axis=0), u


def qr_pivoted(x):
    """Column-pivoted (Businger-Golub) QR: ``x[:, perm] = Q @ R``, economic.

    Returns ``(Q, R, perm)`` with ``perm`` an integer array on the input's device.
    Fast paths: LAPACK geqp3 through SciPy (NumPy) and ``jax.scipy.linalg.qr``.
    Backends without a pivoted QR (torch, CuPy, Dask, array-api-strict) take a
    documented host round-trip through SciPy; callers that care about large
    matrices on those backends use ``randla.qr`` (randomized CPQR), which only
    sends a small sketch to the host.
    """
    xp = namespace(x)
    name = backend_name(xp)
    if name == "jax":
        import jax.scipy.linalg as jsl

        q, r, perm = jsl.qr(x, mode="economic", pivoting=True)
        return q, r, perm
    import scipy.linalg

    q, r, perm = scipy.linalg.qr(to_numpy(x), mode="economic", pivoting=True, check_finite=False)
    if name == "numpy":
        return q, r, perm
    return from_numpy(q, like=x), from_numpy(r, like=x), from_numpy(perm, like=x)


# ----------------------------------------------------------------------------------
# host round-trips
# ----------------------------------------------------------------------------------


def take(x, idx, *, axis):
    """``xp.take`` with host (NumPy) integer indices ``idx``."""
    xp = namespace(x)
    if backend_name(xp) == "dask":
        return xp.take(x, np.asarray(idx), axis=axis)  # a dask index array would warn on complex x
    return xp.take(x, from_numpy(np.asarray(idx, dtype=np.int64), like=x), axis=axis)


def to_numpy(x) -> np.ndarray:
    """A NumPy copy (or view) of ``x`` on the host."""
    xp = namespace(x)
    name = backend_name(xp)
    if name == "numpy":
        return np.asarray(x)
    if name == "torch":
        return x.detach().cpu().resolve_conj().numpy()
    if name == "cupy":
        return x.get()
    if name == "dask":
        return np.asarray(x.compute())
    return np.asarray(x)


def from_numpy(a, *, like):
    """``a`` moved into the namespace and onto the device of ``like``."""
    xp = namespace(like)
    name = backend_name(xp)
    if name == "numpy":
        return np.asarray(a)
    if name == "dask":
        import dask.array as da

        return da.from_array(np.asarray(a), chunks=-1)
    if name == "other" and np.asarray(a).dtype.kind == "i":
        a = np.asarray(a, dtype=np.int64)
    return xp.asarray(a, device=device(like))


# ----------------------------------------------------------------------------------
# random numbers: drawn natively on the array's device
# ----------------------------------------------------------------------------------


def as_generator(rng) -> np.random.Generator:
    """SPEC 7: ``None`` (fresh entropy), an int seed, or a ``numpy.random.Generator``."""
    if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng is not None and rng < 0:
            raise ValueError(f"rng must be a non-negative int seed, got {int(rng)}")
        return np.random.default_rng(rng)
    if isinstance(rng, np.random.Generator):
        return rng
    raise TypeError(
        f"rng must be None, an int seed or a numpy.random.Generator, got {type(rng).__name__}"
    )


def _seed(gen: np.random.Generator) -> int:
    return int(gen.integers(0, 2**62))


def _draw(kind, shape, *, xp, dtype, dev, rng, high=None):
    """Draws with the backend's own generator, seeded from ``rng``.

    Only the seed crosses from the host: a NumPy Generator seeds a
    ``torch.Generator``, a JAX key, a CuPy or Dask generator, so big sketches are
    made where they are used. NumPy and array-api-strict draw from NumPy.
    """
    gen = as_generator(rng)
    name = backend_name(xp)
    shape = tuple(int(s) for s in shape)
    if name == "torch":
        import torch

        g = torch.Generator(device=dev).manual_seed(_seed(gen))
        if kind == "normal":
            return torch.randn(shape, generator=g, dtype=dtype, device=dev)
        if kind == "uniform":
            return torch.rand(shape, generator=g, dtype=dtype, device=dev)
        return torch.randint(0, high, shape, generator=g, dtype=torch.int64, device=dev)
    if name == "jax":
        import jax

        # the key from the seed's two 32-bit words: jax.random.key(seed) is that key with
        # float64 on, but truncates the seed to 32 bits with it off
        seed = _seed(gen)
        key = jax.random.wrap_key_data(jax.numpy.asarray([seed >> 32, seed & 0xFFFFFFFF], dtype=jax.numpy.uint32))
        if kind == "normal":
            out = jax.random.normal(key, shape, dtype=dtype)
        elif kind == "uniform":
            out = jax.random.uniform(key, shape, dtype=dtype)
        else:
            out = jax.random.randint(key, shape, 0, high)
        return jax.device_put(out, dev)
    if name == "cupy":
        import cupy

        with dev:
            g = cupy.random.default_rng(_seed(gen))
            if kind == "normal":
                return g.standard_normal(shape, dtype=dtype)
            if kind == "uniform":
                return g.random(shape, dtype=dtype)
            return g.integers(0, high, shape)
    if name == "dask":
        import dask.array as da

        g = da.random.default_rng(_seed(gen))
        if kind == "normal":
            return g.standard_normal(shape, dtype=dtype)
        if kind == "uniform":
            return g.random(shape, dtype=dtype)
        return g.integers(0, high, shape)
    if kind == "normal":
        out = gen.standard_normal(shape, dtype=_np_dtype(xp, dtype))
    elif kind == "uniform":
        out = gen.random(shape, dtype=_np_dtype(xp, dtype))
    else:
        out = gen.integers(0, high, shape)
    return out if name == "numpy" else xp.asarray(out, device=dev)


def _np_dtype(xp, dtype):
    return np.float32 if dtype == xp.float32 else np.float64


def normal(shape, *, xp, dtype, device, rng):
    """Standard normal draws of a real floating ``dtype``."""
    return _draw("normal", shape, xp=xp, dtype=dtype, dev=device, rng=rng)


def uniform(shape, *, xp, dtype, device, rng):
    """Uniform draws in [0, 1) of a real floating ``dtype``."""
    return _draw("uniform", shape, xp=xp, dtype=dtype, dev=device, rng=rng)


def integers(high, shape, *, xp, device, rng):
    """Uniform integers in ``[0, high)`` (the backend's default integer dtype)."""
    return _draw("integers", shape, xp=xp, dtype=None, dev=device, rng=rng, high=high)


def has_pivoted_qr(xp) -> bool:
    """True where :func:`qr_pivoted` runs natively on the array's device (NumPy, JAX).

    Elsewhere it is a host round-trip, which callers avoid for large matrices.
    """
    return backend_name(xp) in ("numpy", "jax")


def prefers_whole_matrix_kernels(xp) -> bool:
    """True where an eager loop of small array operations is expensive (JAX compiles
    each operation for each new shape): there, call a native kernel on the whole
    matrix even where a loop would do less arithmetic."""
    return backend_name(xp) == "jax"


_blas_libs = None  # (threadpoolctl BLAS controllers, whether SciPy's BLAS was loaded when listed)


def single_threaded_blas(like=None):
    """Context manager: BLAS/LAPACK on one thread for small host-side kernels.

    A QRCP of a ``(k + p) x n`` sketch or a Cholesky factorisation of a ``k x k``
    Gram matrix is far too small to gain from threads, and on an oversubscribed
    machine OpenBLAS threads waiting for each other make such calls 10-300x
    slower. Uses ``threadpoolctl`` where installed, else does nothing. Results
    do not depend on the thread count either way. The BLAS libraries are listed
    once (and again once SciPy's BLAS has loaded); entering sets their thread
    counts directly, and only where they are not at one thread already, so a
    scope nested in another (or inside :func:`scipy_blas_single_threaded`) costs
    about a microsecond per library. With ``like`` an array of a backend that runs
    its own kernels (torch, JAX, CuPy), nothing is set: the OpenBLAS pools are not
    the ones it uses, and setting them cost torch ~0.4 ms per ``rsi`` call.
    """
    if like is not None and _own_kernels(like):
        return contextlib.nullcontext()
    return _one_thread(_blas_controllers())


def _own_kernels(x):
    return backend_name(namespace(x)) in ("torch", "jax", "cupy")


def scipy_blas_single_threaded(like=None):
    """Context manager: SciPy's own BLAS pool (where it has one) on one thread.

    NumPy and SciPy wheels each bundle an OpenBLAS with its own thread pool.
    randla calls SciPy only for small LAPACK kernels (triangular inverses, pivoted
    factorisations of sketches) between NumPy GEMMs; with both pools multi-threaded
    the idle threads of one spin while the other's wait for a core, and a step
    that takes 0.6 ms took 40-280 ms on two busy cores (measured, 384 x 163
    panels). A kernel holds SciPy's pool at one thread for its whole call (setting
    it costs about 12 us, too much for every small step), while NumPy's GEMMs keep
    their threads. Where SciPy shares NumPy's BLAS (one library), this does
    nothing; so it does for ``like`` of a backend with kernels of its own (see
    :func:`single_threaded_blas`).
    """
    if like is not None and _own_kernels(like):
        return contextlib.nullcontext()
    return _one_thread(tuple(lib for lib in _blas_controllers() if _is_scipy_private(lib)))


def scipy_pool_scoped(func):
    """Decorator: ``func`` runs inside :func:`scipy_blas_single_threaded` for its first
    argument (``None``, so the scope, for sparse and matrix-free input). For kernels
    that interleave NumPy products with SciPy's small LAPACK calls throughout: the
    searches to a tolerance and the randomized QRCP (two cores at load 2:
    ``estimate_rank`` of a 2000 x 1000 matrix 3.0x, ``rsvd(rtol=)`` 2.4x and ``rcpqr``
    of a 300 x 300 one 1.4-2.3x as fast as unscoped; at load 4-5, 6x, 9x and up to
    26x). Not for a kernel whose time is one large LAPACK call, which needs the
    threads: ``cpqr`` of a 2000 x 2000 matrix (one ``geqp3``) took 1.7x as long
    scoped."""

    @functools.wraps(func)
    def run(*args, **kwargs):
        like = None
        if args:
            try:
                namespace(args[0])
                like = args[0]
            except TypeError:
                pass
        with scipy_blas_single_threaded(like):
            return func(*args, **kwargs)

    return run


def _is_scipy_private(lib):
    import os

    path = str(getattr(lib, "filepath", ""))
    return "scipy.libs" in path or f"{os.sep}scipy{os.sep}" in path


def _blas_controllers():
    global _blas_libs
    if _blas_libs is not None and _blas_libs[1]:
        return _blas_libs[0]
    import sys

    scipy_loaded = "scipy.linalg" in sys.modules
    if _blas_libs is None or (scipy_loaded and not _blas_libs[1]):
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - optional
            _blas_libs = ((), scipy_loaded)
        else:
            _blas_libs = (tuple(ThreadpoolController().select(user_api="blas").lib_controllers), scipy_loaded)
    return _blas_libs[0]


@contextlib.contextmanager
def _one_thread(libs):
    if threading.current_thread() is not threading.main_thread():
        # the limit is process-wide and restoring it is not thread-safe: tasks that a
        # threaded scheduler (Dask) runs leave it alone
        yield
        return
    restore = []
    owner = _thread_ownership() if libs else None
    if owner is not None:
        owner.increment()
    try:
        for lib in libs:
            n = lib.get_num_threads()
            if n != 1:
                lib.set_num_threads(1)
                restore.append((lib, n))
        yield
    finally:
        for lib, n in restore:
            lib.set_num_threads(n)
        if owner is not None:
            owner.decrement()


def _thread_ownership():
    """threadpoolctl's count of this thread's scopes over a process-wide OpenBLAS pool
    (3.8 and later; else ``None``). The first thread to set such a pool's size
    controls it until its scopes are done, and other threads' limits do nothing
    meanwhile: a scope of ours is counted like one of ``threadpool_limits``, so that
    control is handed back when it ends (it was kept by the main thread for good,
    and a worker thread's ``threadpool_limits(1)`` silently did nothing after any
    randla call)."""
    import threadpoolctl

    return getattr(threadpoolctl, "CONTROLLING_THREAD_OWNERSHIP", None)


# Least matrices and work (entries of A times columns of the sketch) of a part of a
# cut stack. The parts' Python steps and SciPy's LAPACK calls take turns on the GIL,
# and a thread costs about 0.3 ms: rsi of 2 and 4 x 384 x 384 stacks at l = 163
# (one and two matrices per part) took 1.4x and 1.25x as long cut on a quiet
# machine, 8 x 384 x 384 as long, 12 and 25 x 384 x 384 and 6 x 1536 x 384
# 1.13-1.25x less; 2 x 20 x 20 3x as long.
_CUT_MATRICES = 3
_CUT_WORK = 2**22


def stack_parts(A, l):
    """How many parts :func:`over_stack` cuts a dense stack ``A`` into, for products with
    ``l`` columns: one per thread of NumPy's BLAS pool, each with at least
    ``_CUT_MATRICES`` matrices and ``_CUT_WORK`` work; 1 (no cut) for smaller
    stacks, 2-D input, other backends, calls off the main thread, a pool already
    on one thread (the caller's ``OMP_NUM_THREADS=1`` or ``threadpoolctl`` limit
    is kept) or without ``threadpoolctl``."""
    if backend_name(namespace(A)) != "numpy" or A.ndim < 3:
        return 1
    if threading.current_thread() is not threading.main_thread():
        return 1
    batch = int(np.prod(A.shape[:-2]))
    most = min(batch // _CUT_MATRICES, A.size * l // _CUT_WORK)
    if most < 2:
        return 1
    pools = [lib.get_num_threads() for lib in _blas_controllers() if not _is_scipy_private(lib)]
    return min(most, *pools) if pools else 1


def over_stack(A, rng, parts, run):
    """``run(part, rng)`` on ``parts`` consecutive parts of the stack ``A`` at once, each
    on a thread of its own with every BLAS pool on one thread; the results (tuples
    of stacked arrays) joined back along the stack.

    Every part's ``rng`` is the same generator state (the caller's generator, for
    the last part, so it advances as by one call on the whole stack), so the parts
    draw the stack's one test matrix, and matrix ``i`` gets what the whole stack's
    call gives it, to rounding. Each part runs in a copy of the caller's context
    (NumPy's ``errstate`` is a context variable). The small steps of a stacked call
    (Gram matrices, Cholesky factors, triangular solves, ``l x l`` eigenproblems) run
    matrix by matrix on one thread; cut into parts, they keep every core busy, and
    the products lose nothing: MiniLM's 37 weights times their ``k + p`` columns took
    224 ms of CPU on one thread and 117 ms on two. What holds the GIL does not
    overlap: SciPy's LAPACK wrappers (``syevd``, ``trsm``, ``gesdd``) take turns, so
    the exact SVD of a stack (``gesdd`` matrix by matrix) gains nothing from the cut.
    """
    gen = as_generator(rng)
    lead, (m, n) = A.shape[:-2], A.shape[-2:]
    flat = A.reshape(-1, m, n)
    cuts = np.linspace(0, flat.shape[0], parts + 1).astype(int)
    chunks = [flat[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    gens = [copy.deepcopy(gen) for _ in chunks[:-1]] + [gen]
    with single_threaded_blas(), ThreadPoolExecutor(parts - 1) as pool:
        # each part in a copy of the caller's context: NumPy's errstate is a context variable
        futures = [pool.submit(contextvars.copy_context().run, run, c, g)
                   for c, g in zip(chunks[:-1], gens[:-1], strict=True)]
        last = run(chunks[-1], gens[-1])
        results = [f.result() for f in futures] + [last]
    return tuple(np.concatenate(r).reshape(*lead, *r[0].shape[1:]) for r in zip(*results, strict=True))
