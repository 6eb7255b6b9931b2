"""Input checks that raise clear errors naming the argument.

The dtype rule, one for all of randla: real and complex float32/float64 arrays are
used as they are; boolean and integer arrays are promoted to float64 (as SciPy
does; JAX with float64 off gets float32, see :func:`randla._backend.wide_floats`);
every other dtype (float16, bfloat16, strings, objects) is a ``TypeError``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any, NamedTuple

from . import _backend as B
from . import _dask

__all__ = [
    "Operand",
    "as_matrix",
    "as_operand",
    "is_scipy_operator",
    "adjoint_operand",
    "operand_like",
    "check_finite_through",
    "check_finite_array",
    "check_eager",
    "check_stacked_matrix",
    "check_rank",
    "check_int",
    "int_or_none",
    "check_count",
    "check_real",
    "check_rtol",
    "check_choice",
    "quiet_nonfinite",
]


def _float_dtype(xp, x, name):
    dt = x.dtype
    if dt in (xp.float32, xp.float64, xp.complex64, xp.complex128):
        return x
    if xp.isdtype(dt, ("bool", "integral")):
        return xp.astype(x, xp.float64)
    raise TypeError(
        f"{name} has dtype {dt}; randla works in float32, float64, complex64 or "
        f"complex128 (integer and bool input is promoted to float64)"
    )


def as_matrix(A, name: str = "A", *, check_finite: bool = True, ndim: int = 2, batched: bool = False,
              finite_hint: bool = True, allow_empty: bool = False):
    """Validate a dense 2-D array; return ``(A, xp)`` with the dtype rule applied.

    ``batched``: a stack ``(..., m, n)`` of matrices is accepted too (at least 2-D;
    Dask arrays only 2-D). ``check_finite`` scans for NaN/Inf (one pass over
    ``A``); it is skipped on lazy arrays (Dask, JAX under ``jit``), where it would
    force a computation. ``finite_hint``: the NaN/Inf error suggests
    ``check_finite=False`` (only where the caller offers that option).
    ``allow_empty``: a dimension of length 0 is accepted (a rank-0 basis).
    """
    A = _plain_numpy(A, name)
    try:
        xp = B.namespace(A)
    except TypeError:
        raise TypeError(
            f"{name} must be an array of an array-API library (NumPy, CuPy, torch, JAX, "
            f"Dask, ...), got {type(A).__name__}"
        ) from None
    if getattr(A, "is_meta", False) is True:  # torch's meta device: shapes, no values
        raise ValueError(f"{name} is on the meta device and holds no data; materialise it first")
    if any(s is None or s != s for s in A.shape):  # None, or NaN (Dask after a boolean index)
        raise ValueError(f"{name} has unknown dimensions (shape {tuple(A.shape)}); give it known sizes first "
                         f"(Dask: {name}.compute_chunk_sizes())")
    if batched and A.ndim > 2:
        if B.backend_name(xp) == "dask":
            raise ValueError(
                f"{name} has batch dimensions (shape {tuple(A.shape)}); Dask arrays are factored one "
                f"2-D matrix at a time (index the leading axes, or stack the results of 2-D calls)"
            )
    elif A.ndim != ndim:
        stack = " or a stack of matrices (..., m, n)" if batched else ""
        raise ValueError(f"{name} must be {ndim}-D{stack}, got an array of shape {tuple(A.shape)}")
    if not allow_empty and any(s == 0 for s in A.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(A.shape)}")
    A = _float_dtype(xp, A, name)
    if check_finite:
        check_finite_array(A, name, hint=finite_hint)
    return A, xp


def _plain_numpy(A, name):
    """NumPy input as a plain ``ndarray`` in native byte order: subclasses (``np.matrix``,
    ``np.memmap``) viewed as ``ndarray`` (``np.matrix`` products are matrix products, and
    its rows stay 2-D), big-endian data swapped to a native copy (as LAPACK needs);
    masked arrays refused (their hidden entries would be used)."""
    import numpy as np

    if not isinstance(A, np.ndarray):
        return A
    if isinstance(A, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; randla would use the masked entries: pass "
                        f"{name}.filled(value), or the rows and columns without masked entries")
    if type(A) is not np.ndarray:
        A = A.view(np.ndarray)
    if not A.dtype.isnative:
        A = A.astype(A.dtype.newbyteorder("="))
    return A


def as_factor(x, name: str, xp, *, ndim: int = 2, of: str = "A", check_finite: bool = True,
              finite_hint: bool = False, allow_empty: bool = False):
    """:func:`as_matrix` for an array that goes with ``of`` (factors, bases): also a
    ``TypeError`` unless it is of the same namespace ``xp``."""
    x, xp_x = as_matrix(x, name, ndim=ndim, check_finite=check_finite, finite_hint=finite_hint,
                        allow_empty=allow_empty)
    if xp_x is not xp:
        raise TypeError(f"{name} must be an array of the same library as {of}, got {type(x).__name__}")
    return x


def check_finite_array(A, name: str = "A", *, hint: bool = True) -> None:
    """Scan a dense array for NaN/Inf (skipped on lazy arrays)."""
    if B.is_lazy(A):
        return
    xp = B.namespace(A)
    ok = xp.all(xp.isfinite(A))
    if not B.is_lazy(ok) and not bool(ok):  # a concrete JAX array inside jax.jit gives a tracer
        skip = " (pass check_finite=False to skip this check)" if hint else ""
        raise ValueError(f"{name} contains NaN or Inf{skip}")


def check_eager(func: str, reads: str, **arrays) -> None:
    """Refuse JAX tracers in a function that reads values of its input (pivots, ranks,
    Python floats): a ``ValueError`` naming ``randla.<func>`` and the argument, in place
    of JAX's own error from deep inside. Only tracers: Dask arrays pass, as these
    functions compute what they read."""
    for name, x in arrays.items():
        if B.is_jax_tracer(x):
            raise ValueError(
                f"randla.{func} reads the values of {name} ({reads}) and cannot run under JAX "
                f"tracing (jax.jit, jax.grad, jax.vmap): {name} is a tracer here. Call "
                f"randla.{func} outside the traced function; inside it, the fixed-rank methods "
                f"trace: rsvd(A, k), rsi, range_finder, block_krylov_svd (and randla.jax.qr)"
            )


class Operand(NamedTuple):
    """A matrix seen through its products: dense arrays and matrix-free operators alike."""

    A: Any
    xp: Any
    shape: tuple
    dtype: Any
    matmat: Callable  # X -> A @ X
    rmatmat: Callable  # X -> A^H @ X
    dense: bool


def operand_like(op: Operand):
    """An array with the namespace, device and dtype of the operand's products."""
    if op.dense or not _is_scipy_operator(op.A):  # an array seen through its products
        return op.A
    import numpy as np

    return np.zeros((1, 1), dtype=op.dtype)


def is_scipy_operator(A) -> bool:
    """True for a ``scipy.sparse.linalg.LinearOperator`` or a SciPy sparse array/matrix."""
    return _is_scipy_operator(A)


def adjoint_operand(op: Operand) -> Operand:
    """The operand of ``A^H`` (products swapped; a stack keeps its leading axes); for
    dense operands ``A`` becomes ``A^H``."""
    A = B.mH(op.A) if op.dense else op.A
    shape = (*op.shape[:-2], op.shape[-1], op.shape[-2])
    return Operand(A, op.xp, shape, op.dtype, op.rmatmat, op.matmat, op.dense)


def _is_scipy_operator(A):
    try:
        import scipy.sparse
        import scipy.sparse.linalg
    except ImportError:  # pragma: no cover
        return False
    return isinstance(A, scipy.sparse.linalg.LinearOperator) or scipy.sparse.issparse(A)


def as_operand(A, name: str = "A", *, check_finite: bool = True, batched: bool = False) -> Operand:
    """Validate ``A`` as a dense array, a SciPy sparse array or a ``LinearOperator``.

    ``batched``: a dense stack ``(..., m, n)`` is accepted too; ``shape`` is then the
    full shape and the products act on every matrix of the stack (``X`` may be a
    single ``n x l`` block, broadcast, or a stack).
    """
    if _is_scipy_operator(A):
        return _scipy_operand(A, name, check_finite)
    A, xp = as_matrix(A, name, check_finite=check_finite, batched=batched)
    matmat, rmatmat = B.products(A)
    return Operand(A, xp, tuple(A.shape), A.dtype, matmat, rmatmat, True)


def _scipy_operand(A, name, check_finite):
    import numpy as np
    import scipy.sparse
    import scipy.sparse.linalg as spla

    if len(A.shape) != 2 or 0 in A.shape:
        raise ValueError(f"{name} must be 2-D and non-empty, got shape {tuple(A.shape)}")
    dtype = np.dtype(A.dtype) if A.dtype is not None else np.dtype(np.float64)
    if dtype.kind in "biu":
        dtype = np.dtype(np.float64)
        A = A.astype(dtype) if scipy.sparse.issparse(A) else spla.aslinearoperator(A)
    elif dtype not in (np.float32, np.float64, np.complex64, np.complex128):
        raise TypeError(f"{name} has dtype {dtype}; use float32, float64, complex64 or complex128")
    # the array-API NumPy namespace of a dense NumPy A (NumPy 2.0's own np.astype refuses
    # the NumPy scalars that reductions return)
    xp = B.namespace(np.empty(0))
    if scipy.sparse.issparse(A):
        A = A.tocsr()  # first: LIL and DOK keep no flat .data to check
        if check_finite and not np.all(np.isfinite(A.data)):
            raise ValueError(f"{name} contains NaN or Inf (pass check_finite=False to skip this check)")
        AH = A.conj().T.tocsr()
        return Operand(A, xp, tuple(A.shape), dtype, lambda X: np.asarray(A @ X, dtype=dtype),
                       lambda X: np.asarray(AH @ X, dtype=dtype), False)
    op = A
    return Operand(op, xp, tuple(op.shape), dtype, lambda X: np.asarray(op.matmat(X), dtype=dtype),
                   lambda X: np.asarray(op.rmatmat(X), dtype=dtype), False)


def check_finite_through(Y, op: Operand, name: str = "A"):
    """Check ``A`` for NaN/Inf through its sketch ``Y = A @ Omega``; returns ``Y``.

    A NaN or Inf in row ``i`` of ``A`` makes row ``i`` of any sketch non-finite
    (IEEE: ``inf * 0 = nan``, and BLAS GEMMs do not skip zeros), so a finite
    ``Y`` proves a finite ``A`` at the cost of scanning ``m x l`` numbers instead of
    ``m x n``. Only a non-finite ``Y`` triggers the full scan, which tells NaN/Inf
    in ``A`` from overflow of a finite ``A``. A lazy (Dask) ``Y`` comes back with
    the scan of each chunk in its graph: the error is raised when it is computed,
    and names both causes (telling them apart would take a pass over ``A``).
    """
    xp = op.xp
    if B.backend_name(xp) == "dask":
        return _dask.checked_finite(Y, _dask.nonfinite_message(op.dtype, name))
    if B.is_lazy(Y):
        return Y
    if bool(xp.all(xp.isfinite(Y))):
        return Y
    data = op.A if op.dense else getattr(op.A, "data", None)
    if data is None or not bool(xp.all(xp.isfinite(xp.asarray(data)))):
        raise ValueError(f"{name} contains NaN or Inf (pass check_finite=False to skip this check)")
    raise ValueError(f"{name} is finite but its products overflow {op.dtype}; rescale {name}")


def check_stacked_matrix(A, name: str = "A") -> None:
    """A stack of matrices as the QR/LQ adapters take it: at least 2-D (batch axes
    lead), float32/float64/complex64/complex128 (no promotion: the adapters
    differentiate exactly what they are given), last two axes non-empty."""
    xp = B.namespace(A)
    if A.ndim < 2:
        raise ValueError(f"{name} must be at least 2-D (batch dimensions lead), got shape {tuple(A.shape)}")
    if A.dtype not in (xp.float32, xp.float64, xp.complex64, xp.complex128):
        raise TypeError(f"{name} has dtype {A.dtype}; use float32, float64, complex64 or complex128")
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(A.shape)}")


def check_rank(k, shape, name: str = "k") -> int:
    """``1 <= k <= min(shape)`` as a Python int."""
    k = check_int(k, name)
    bound = min(shape)
    if k <= 0 or k > bound:
        raise ValueError(f"{name} must satisfy 1 <= {name} <= min(m, n) = {bound}, got {k}")
    return k


def check_count(v, name: str, *, minimum: int = 0) -> int:
    """An int ``>= minimum`` (oversampling, iteration counts, block sizes)."""
    v = check_int(v, name)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def check_real(v, name: str) -> float:
    """A real scalar as a Python float: an int, a float, or a 0-d real array of any
    library (``np.float32(0.5)``, ``torch.tensor(0.5)``, ``jnp.float32(0.5)``); a
    ``TypeError`` naming ``name`` for bools, strings, complex numbers and arrays
    with more than one element. The value itself (NaN, sign, range) is the caller's
    to check."""
    if isinstance(v, (bool, str, bytes, complex)) or getattr(v, "ndim", 0) != 0 or _dtype_is(v, "bool", "complex"):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}")
    try:
        return float(v)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float, got {type(v).__name__}") from None


def _dtype_is(v, *kinds):
    dtype = getattr(v, "dtype", None)
    return dtype is not None and any(kind in str(dtype) for kind in kinds)


def check_rtol(rtol, name: str = "rtol") -> float:
    """A relative tolerance in (0, 1)."""
    r = check_real(rtol, name)
    if not 0.0 < r < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {rtol!r}")
    return r


def check_choice(value, name: str, choices, *, note: str | None = None) -> str:
    """``value`` is one of ``choices`` (a tuple, or the dict the caller dispatches on, so
    that the message lists exactly what the code accepts); ``note`` says why, where the
    valid set is a subset of a larger one."""
    try:
        ok = isinstance(value, str) and value in choices
    except TypeError:  # pragma: no cover - choices of unhashable kind
        ok = False
    if not ok:
        why = f" ({note})" if note else ""
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}{why}; got {value!r}")
    return value


def name_filter(include, exclude, *, options=("include", "exclude"), error=ValueError) -> Callable[[str], bool]:
    r"""``keep(name)``: whether ``include`` (a regular expression, or ``None`` for all) is
    found in ``name`` (``re.search``) and ``exclude`` is not.

    ``options`` name the two arguments in messages. A pattern that is neither a str
    nor a compiled pattern is a ``TypeError``; one that does not compile raises
    ``error`` (the command line passes its own one-line error type).

    Examples
    --------
    >>> from randla._validate import name_filter
    >>> keep = name_filter(r"layer\.\d", "bias")
    >>> keep("layer.0.weight"), keep("layer.0.bias"), keep("head.weight")
    (True, False, False)
    """

    def compiled(pattern, option):
        if pattern is None:
            return None
        if not isinstance(pattern, (str, re.Pattern)):
            raise TypeError(f"{option} must be a regular expression (str), got {type(pattern).__name__}")
        try:
            return re.compile(pattern)
        except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}: OverflowError
            raise error(f"{option} {pattern!r} is not a valid regular expression ({exc})") from None

    inc, exc = compiled(include, options[0]), compiled(exclude, options[1])
    return lambda name: (inc is None or inc.search(name) is not None) and (exc is None or exc.search(name) is None)


def quiet_nonfinite(enabled: bool = True):
    """Context manager: NumPy's floating-point warnings off for a computation whose
    result is checked for NaN/Inf right after (the check raises the clear error, and
    users who run with warnings as errors must see that error, not a warning).
    Other libraries do not warn; ``enabled=False`` is a no-op context."""
    import contextlib

    import numpy as np

    return np.errstate(invalid="ignore", over="ignore", divide="ignore") if enabled else contextlib.nullcontext()


def int_or_none(v) -> int | None:
    """:func:`check_int`'s int, or ``None`` where ``v`` is no integer scalar (for
    callers whose own error, or other reading, follows)."""
    try:
        return check_int(v, "")
    except TypeError:
        return None


def check_int(v, name: str) -> int:
    """An integer scalar of any library (``np.int64(3)``, ``torch.tensor(3)``,
    ``jnp.int32(3)``) as a Python int; a ``TypeError`` naming ``name`` for bools,
    floats and anything else ``operator.index`` refuses."""
    if isinstance(v, bool) or _dtype_is(v, "bool"):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(v).__name__}") from None
