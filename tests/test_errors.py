"""Clear errors: invalid choices list every valid one; NaN/Inf raise before any warning.

The suite runs with warnings as errors, so a NumPy ``RuntimeWarning`` emitted on the
way to a ``ValueError`` fails these tests instead of passing them.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg as spla

import randla
from randla import _adaptive, _id_core, adjoints, estimate, interpolative, sketch, svd
from randla.testing import matrix


def _lists_all(message, valid):
    listed = set(re.findall(r"'([^']*)'", message.split("; got")[0].split(" (")[0]))
    return listed == set(valid)


A = matrix(12, 10, rng=0).A

# (call with the bad value, name of the argument, the table the code dispatches on)
CHOICES = [
    (lambda v: randla.rsvd(A, 2, stabilizer=v), "stabilizer", svd._STABILIZERS),
    (lambda v: randla.rsi(A, 2, stabilizer=v), "stabilizer", svd.RSI_STABILIZERS),
    (lambda v: randla.block_krylov_svd(A, 2, stabilizer=v), "stabilizer", svd._STABILIZERS),
    (lambda v: randla.range_finder(A, 2, sketch=v), "sketch", sketch._MAKERS),
    (lambda v: randla.rsvd(A, 2, solver=v), "solver", svd.SOLVERS),
    (lambda v: randla.sketch.sketch(A, 2, method=v), "method", sketch._MAKERS),
    (lambda v: randla.adaptive_range_finder(A, 0.1, norm=v), "norm", _adaptive.NORMS),
    (lambda v: randla.rsvd(A, rtol=0.1, norm=v), "norm", _adaptive.NORMS),
    (lambda v: randla.interp_decomp(A, 2, method=v), "method", _id_core.DENSE),
    (lambda v: randla.column_select(A, 2, method=v), "method", interpolative._SELECTORS),
    (lambda v: randla.normalized_error(A, A[:, :2], np.ones(2), A[:2], method=v), "method",
     estimate._RESIDUAL_NORMS),
    (lambda v: randla.qr_vjp(*np.linalg.qr(A), None, np.linalg.qr(A)[1], method=v), "method",
     adjoints._VJP_RULES),
]


@pytest.mark.parametrize("bad", ["foo", "QR", None, 3])
@pytest.mark.parametrize(("call", "name", "table"), CHOICES, ids=lambda x: x if isinstance(x, str) else "")
def test_invalid_choice_lists_every_valid_one(call, name, table, bad):
    with pytest.raises(ValueError, match=f"{name} must be one of") as info:
        call(bad)
    assert _lists_all(str(info.value), table), str(info.value)


def test_every_valid_choice_is_accepted():
    for stabilizer in svd.STABILIZERS:
        randla.rsvd(A, 2, q=1, stabilizer=stabilizer, rng=0)
    for stabilizer in svd.RSI_STABILIZERS:
        randla.rsi(A, 2, q=1, stabilizer=stabilizer, rng=0)
    with pytest.raises(ValueError, match="stabilizer must be one of 'cholqr', 'qr' .rsi re-orthonormalises"):
        randla.rsi(A, 2, stabilizer="lu")
    for method in interpolative.SELECT_METHODS:
        randla.column_select(A, 2, method=method, rng=0)


def test_adapter_choices():
    torch = pytest.importorskip("torch")
    import randla.torch

    with pytest.raises(ValueError, match="method must be one of") as info:
        randla.torch.qr(torch.ones(3, 2, dtype=torch.float64), method="3.4")
    assert _lists_all(str(info.value), adjoints.METHODS)
    pytest.importorskip("jax")
    import jax.numpy as jnp

    import randla.jax

    with pytest.raises(ValueError, match="rule must be one of") as info:
        randla.jax.qr(jnp.ones((3, 2)), rule="fwd")
    assert _lists_all(str(info.value), ("vjp", "jvp"))


def _bad(value):
    X = matrix(30, 20, rng=0).A
    X[3, 4] = value
    return X


KERNELS = {
    "rsvd": lambda X: randla.rsvd(X, 3, rng=0),
    "rsvd_srtt": lambda X: randla.rsvd(X, 3, sketch="srtt", rng=0),
    "rsi": lambda X: randla.rsi(X, 3, rng=0),
    "block_krylov": lambda X: randla.block_krylov_svd(X, 3, rng=0),
    "range_finder": lambda X: randla.range_finder(X, 3, rng=0),
    "rsvd_rtol": lambda X: randla.rsvd(X, rtol=0.1, rng=0),
    "adaptive_2": lambda X: randla.adaptive_range_finder(X, 0.1, norm="2", rng=0),
    "cpqr": lambda X: randla.cpqr(X, 3),
    "rcpqr": lambda X: randla.rcpqr(X, 3, rng=0),
    "srrqr": lambda X: randla.srrqr(X, 3),
    "interp_decomp": lambda X: randla.interp_decomp(X, 3, method="randomized", rng=0),
    "column_select": lambda X: randla.column_select(X, 3, method="randomized_gks", rng=0),
    "cur": lambda X: randla.cur(X, 3),
    "spectral_norm": lambda X: randla.spectral_norm(X, rng=0),
    "estimate_rank": lambda X: randla.estimate_rank(X, 0.1, rng=0),
    "normalized_error": lambda X: randla.normalized_error(X, X[:, :2], np.ones(2), X[:2]),
    "sparse": lambda X: randla.rsvd(scipy.sparse.csr_array(X), 3, rng=0),
    "operator_rsvd": lambda X: randla.rsvd(spla.aslinearoperator(X), 3, rng=0),
    "operator_id": lambda X: randla.interp_decomp(spla.aslinearoperator(X), 3, method="randomized", rng=0),
    "operator_adaptive": lambda X: randla.adaptive_range_finder(spla.aslinearoperator(X), 0.1, norm="2", rng=0),
}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_nonfinite_input_raises_without_warnings(kernel, value):
    with pytest.raises(ValueError, match="NaN or Inf"):
        KERNELS[kernel](_bad(value))


def test_overflowing_products_are_named():
    X = np.full((20, 100), 1e308)
    with pytest.raises(ValueError, match="finite but its products overflow"):
        randla.rsvd(X, 2, rng=0)
    # near the top of the range, but with products that fit: a correct answer
    X = np.full((20, 10), 1e307)
    U, S, Vh = randla.rsvd(X, 1, rng=0)
    np.testing.assert_allclose(S, [1e307 * np.sqrt(200)], rtol=1e-12)


_LAYOUT_CALLS = {
    "rsvd": lambda X: randla.rsvd(X, 3, rng=0),
    "rsi": lambda X: randla.rsi(X, 3, rng=0, solver="randomized"),
    "cpqr": lambda X: randla.cpqr(X, 3),
    "rcpqr": lambda X: randla.rcpqr(X, 3, rng=0),
    "sketch": lambda X: (sketch.sketch(X, 3, rng=0),),
    "spectral_norm": lambda X: (np.asarray(randla.spectral_norm(X, rng=0)),),
    "adaptive": lambda X: (randla.adaptive_range_finder(X, 0.5, rng=0),),
}


@pytest.mark.parametrize("name", sorted(_LAYOUT_CALLS))
def test_numpy_subclasses_and_byte_orders_are_plain_arrays(name):
    """np.matrix failed deep inside (LAPACK argument errors, IndexError, broadcast
    errors) or came back as np.matrix; big-endian data was refused with "randla works in
    float64" for a float64 array. Both give the plain array's results now."""
    A = np.random.default_rng(0).standard_normal((30, 20))
    ref = _LAYOUT_CALLS[name](A)
    with warnings.catch_warnings():  # NumPy's own notice on making a matrix
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        M = np.matrix(A)
    for X in (M, A.astype(">f8")):
        out = _LAYOUT_CALLS[name](X)
        for o, r in zip(out, ref, strict=True):
            assert type(o) is np.ndarray and o.dtype in (np.float64, np.int64)  # perm: int64
            np.testing.assert_allclose(o, r, rtol=1e-12, atol=1e-12)


def test_masked_arrays_are_refused():
    """A masked entry's hidden value was used (cpqr: |R[0, 0]| = 1e6 for 7.7)."""
    data = np.random.default_rng(0).standard_normal((30, 20))
    data[3, 4] = 1e6
    X = np.ma.masked_array(data, mask=data > 1e5)
    for name in ("cpqr", "rsvd"):
        with pytest.raises(TypeError, match="A is a masked array"):
            _LAYOUT_CALLS[name](X)


@pytest.mark.parametrize("fmt", ["lil", "dok"])
def test_sparse_formats_without_flat_data_are_checked(fmt):
    """LIL and DOK matrices failed the finiteness check ("ufunc 'isfinite' not
    supported", "no attribute 'data'") in every function with check_finite=True."""
    S = scipy.sparse.random(30, 20, density=0.3, random_state=0, format=fmt)
    dense = S.toarray()
    np.testing.assert_allclose(sketch.sketch(S, 3, rng=0), sketch.sketch(dense, 3, rng=0), atol=1e-12)
    np.testing.assert_allclose(float(randla.spectral_norm(S, rng=0)), np.linalg.norm(dense, 2), rtol=1e-8)
    S = S.tolil() if fmt == "lil" else S.todok()
    S[2, 3] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        sketch.sketch(S, 3, rng=0)


def test_dask_arrays_of_unknown_size_are_refused():
    """Shape (nan, n) after a boolean index: adaptive_range_finder returned None, others
    raised "cannot convert float NaN to integer"."""
    da = pytest.importorskip("dask.array")
    A = da.from_array(np.random.default_rng(0).standard_normal((100, 40)), chunks=(25, 40))
    U = A[A[:, 0] > 0]
    for call in (lambda: randla.adaptive_range_finder(U, 0.1), lambda: randla.rsvd(U, 3, rng=0),
                 lambda: randla.rcpqr(U, 3, rng=0)):
        with pytest.raises(ValueError, match=r"unknown dimensions .*compute_chunk_sizes\(\)"):
            call()
    U.compute_chunk_sizes()
    assert randla.adaptive_range_finder(U, 0.1).shape[0] == U.shape[0]


def test_torch_meta_tensors_are_refused():
    """A meta tensor has no values: torch's errors ("META device type not an
    accelerator", ".item() cannot be called on meta tensors") named no argument."""
    torch = pytest.importorskip("torch")
    from randla.compress import factor

    A = torch.empty(30, 20, device="meta")
    for call in (lambda: randla.rsvd(A, 3, rng=0), lambda: randla.cpqr(A, 3), lambda: sketch.sketch(A, 3, rng=0),
                 lambda: factor(A, rank=3, rng=0)):
        with pytest.raises(ValueError, match="[AW] is on the meta device"):
            call()


def test_rng_is_checked_where_it_is_not_used():
    """normalized_error(method="svd") and calibrate without output= took any rng silently
    (every other function names it)."""
    A = np.eye(6)
    U, S, Vh = np.linalg.svd(A)
    for bad, err in (("3", TypeError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(err, match="rng"):
            estimate.normalized_error(A, U[:, :2], S[:2], Vh[:2], rng=bad)
    torch = pytest.importorskip("torch")
    import randla.torch as rt

    with pytest.raises(TypeError, match="rng"):
        rt.calibrate(torch.nn.Sequential(torch.nn.Linear(4, 4)), [torch.randn(3, 4)], rng="3")


# Functions that read values of A (pivots, error estimates that choose a rank, Python
# results): under JAX tracing they raised JAX's ConcretizationTypeError or
# TracerArrayConversionError from randla/_backend.py, naming no randla function.
_READS_VALUES = {
    "rsvd": lambda A: randla.rsvd(A, rtol=0.5, rng=0),
    "adaptive_range_finder": lambda A: randla.adaptive_range_finder(A, 0.5, rng=0),
    "estimate_rank": lambda A: randla.estimate_rank(A, 0.5, rng=0),
    "cpqr": lambda A: randla.cpqr(A, 3),
    "srrqr": lambda A: randla.srrqr(A, 3),
    "rcpqr": lambda A: randla.rcpqr(A, 3, rng=0),
    "interp_decomp": lambda A: randla.interp_decomp(A, 3, method="randomized", rng=0),
    "two_sided_id": lambda A: randla.two_sided_id(A, rtol=0.5),
    "cur": lambda A: randla.cur(A, 3),
    "column_select": lambda A: randla.column_select(A, 3, method="gks", rng=0),
    "normalized_error": lambda A: randla.normalized_error(A, A[:, :3], A[0, :3], A[:3, :]),
}


def _sum(out):
    import jax

    return sum(x.sum() for x in jax.tree_util.tree_leaves(out) if getattr(x, "dtype", None) == "float64")


@pytest.mark.parametrize("name", sorted(_READS_VALUES))
@pytest.mark.parametrize("transform", ["jit", "grad", "vmap"])
def test_jax_tracing_of_value_reading_functions_is_refused(name, transform):
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    call = _READS_VALUES[name]
    A = jax.numpy.asarray(matrix(12, 8, rng=0).A)
    traced = {"jit": jax.jit(call), "grad": jax.grad(lambda A: _sum(call(A))),
              "vmap": lambda A: jax.vmap(call)(jax.numpy.stack([A, A]))}[transform]
    with pytest.raises(ValueError, match=rf"^randla\.{name} reads the values of A .* cannot run under JAX "
                                         rf"tracing .*A is a tracer here\. Call randla\.{name} outside"):
        traced(A)
    call(A)  # eager JAX arrays are fine


@pytest.mark.parametrize("call", [
    lambda A: randla.rsvd(A, 3, rng=0),
    lambda A: randla.rsi(A, 3, q=1, rng=0),
    lambda A: randla.range_finder(A, 3, rng=0),
    lambda A: randla.block_krylov_svd(A, 3, q=1, rng=0),
    lambda A: randla.spectral_norm(A, rng=0),
    lambda A: randla.posterior_error_estimate(A, A[:, :3], rng=0),
    lambda A: randla.id_to_svd(A[:, :3], A[:3, :]),
    lambda A: sketch.sketch(A, 3, rng=0),
])
def test_jax_tracing_of_fixed_rank_kernels_still_runs(call):
    """The fixed-rank kernels trace, with check_finite on; also with a concrete A closed
    over inside jax.jit (check_finite read the traced isfinite of it: TracerBoolConversionError)."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    A = jax.numpy.asarray(matrix(12, 8, rng=0).A)
    jax.jit(call)(A)
    jax.jit(lambda: call(A))()
    jax.grad(lambda A: _sum(call(A)))(A)


def test_the_tracer_check_lets_dask_through():
    """Dask is lazy too, but these functions compute what they read."""
    da = pytest.importorskip("dask.array")
    A = da.from_array(matrix(12, 8, rng=0).A, chunks=(6, 8))
    assert randla.cpqr(A, 3).R.shape == (3, 8)
    assert randla.estimate_rank(A, 0.5, rng=0) >= 1
