"""Property-based checks of the DESIGN.md contract over shapes, dtypes, scales and ranks.

For every kernel and every drawn problem: the result is in the caller's namespace and
dtype, the input is unmodified (the read-only NumPy backend raises on any write), the
same seed gives the same result, everything returned is finite, and the error is
within the method's theoretical bound:

* randomized SVD family: [HMT2011, Cor. 10.9] (failure probability ``<= 6 p^-p``, here
  ``6e-10``) for ``q = 0``, plus ``sigma_{k+1}`` for the truncation to rank ``k``;
  power iterations only lower the error;
* CPQR: ``sigma_{k+1} <= ||R_22||_2 <= sqrt(n - k) 2^k sigma_{k+1}`` [GVL2013, 5.4.2];
* sRRQR and its ID: ``||R_22||_2 <= sqrt(1 + f^2 k (n - k)) sigma_{k+1}`` and
  ``|R_11^{-1} R_12| <= f`` [GE1996, Thm. 3.2];
* the Frobenius fixed-accuracy range finder: ``||A - Q Q^H A||_F <= rtol ||A||_F``
  (an identity, not a probability).

Problems are drawn with ``derandomize=True``: the same examples on every run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from conftest import _available, _make  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import randla  # noqa: E402
from randla.testing import matrix  # noqa: E402

BACKENDS = [b for b in ("numpy", "numpy_readonly", "array_api_strict", "torch") if _available(b)]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# exponent ranges that keep every entry, and the products of the kernels, representable
EXPONENT = {"float32": 30, "float64": 200, "complex128": 200}


@st.composite
def problems(draw, dtypes=("float32", "float64", "complex128")):
    """``(backend, A0, c, s, k, dtype)``: ``A0`` a NumPy matrix with a chosen spectrum at
    the scale ``c``, ``s`` the singular values of ``A0 / c`` (float64), ``k`` a rank below
    ``min(m, n)``. References are computed on ``A0 / c``: their own squares would
    overflow too."""
    m = draw(st.integers(2, 36))
    n = draw(st.integers(2, 36))
    k = draw(st.integers(1, min(m, n) - 1)) if min(m, n) > 1 else None
    dtype = draw(st.sampled_from(dtypes))
    kind = draw(st.sampled_from(["polynomial", "exponential", "low_rank", "step"]))
    decay = draw(st.floats(0.3, 2.0)) if kind in ("polynomial", "low_rank") else draw(st.floats(0.05, 0.5))
    rank = draw(st.integers(1, min(m, n))) if kind in ("low_rank", "step") else None
    scale = 10.0 ** draw(st.integers(-EXPONENT[dtype], EXPONENT[dtype]))
    seed = draw(st.integers(0, 2**16))
    A0, s = matrix(m, n, spectrum=kind, decay=decay if kind != "step" else None, rank=rank, dtype=dtype, rng=seed)
    A0 = (A0 * scale).astype(dtype)
    s = np.linalg.svd(_unit(A0, scale), compute_uv=False)
    backend = _make(draw(st.sampled_from(BACKENDS)))
    return backend, A0, scale, s, k, dtype


def _unit(X, scale):
    """``X / scale`` in double precision (complex128: every check is then one code path)."""
    return np.asarray(X, dtype=np.complex128) / scale


def _u(dtype):
    return float(np.finfo(np.float32 if dtype == "float32" else np.float64).eps)


def _floor(s, shape, dtype):
    """What rounding alone may leave: a few ulps of ``||A||_2`` per dimension."""
    return 50 * max(shape) * _u(dtype) * s[0]


def _host(backend, x):
    return np.asarray(backend.to_numpy(x))


def _contract(backend, A0, dtype, run):
    """Run twice on a fresh backend array: namespace, dtype, finiteness, input untouched,
    reproducibility. Returns the host arrays of the first run."""
    from randla._backend import namespace

    A = backend.asarray(A0)
    out = run(A)
    again = run(backend.asarray(A0))
    np.testing.assert_array_equal(_host(backend, A), A0)
    host = []
    for x, y in zip(out, again, strict=True):
        assert namespace(x) is namespace(A)
        hx = _host(backend, x)
        if hx.dtype.kind in "fc":
            assert np.all(np.isfinite(hx))
            assert hx.dtype in (np.dtype(dtype), np.dtype(dtype).type(0).real.dtype)
        np.testing.assert_array_equal(hx, _host(backend, y))
        host.append(hx)
    return host


def _hmt_bound(s, k, p):
    """[HMT2011, Cor. 10.9] with t = e, u = sqrt(2p) (failure <= 6 p^-p), plus the
    truncation to rank k."""
    tail = math.sqrt(float(np.sum(s[k:] ** 2)))
    return (1 + 17 * math.sqrt(1 + k / p)) * s[k] + 8 * math.sqrt(k + p) / (p + 1) * tail + s[k]


@SETTINGS
@given(problems(), st.sampled_from(["rsvd", "rsvd_q1", "rsi", "block_krylov"]))
def test_randomized_svd(problem, method):
    backend, A0, c, s, k, dtype = problem
    if k is None:
        return
    run = {
        "rsvd": lambda A: randla.rsvd(A, k, rng=1),
        "rsvd_q1": lambda A: randla.rsvd(A, k, q=1, stabilizer="lu", rng=1),
        "rsi": lambda A: randla.rsi(A, k, rng=1),
        "block_krylov": lambda A: randla.block_krylov_svd(A, k, q=1, rng=1),
    }[method]
    U, S, Vh = _contract(backend, A0, dtype, run)
    err = np.linalg.norm(_unit(A0, c) - (U * _unit(S, c)) @ Vh, 2)
    assert err <= _hmt_bound(s, k, 10) + _floor(s, A0.shape, dtype)
    assert np.all(np.diff(S) <= 10 * _u(dtype) * S[0])


@SETTINGS
@given(problems(), st.sampled_from(["cpqr", "rcpqr", "srrqr"]))
def test_pivoted_qr(problem, method):
    backend, A0, c, s, k, dtype = problem
    if k is None:
        return
    f = 2.0
    run = {"cpqr": lambda A: randla.cpqr(A, k), "rcpqr": lambda A: randla.rcpqr(A, k, rng=1),
           "srrqr": lambda A: randla.srrqr(A, k, f=f)}[method]
    Q, R, perm = _contract(backend, A0, dtype, run)
    n = A0.shape[1]
    assert sorted(perm.tolist()) == list(range(n))
    err = np.linalg.norm(_unit(A0, c)[:, perm] - Q @ _unit(R, c), 2)
    assert err >= s[k] * (1 - 1e-3) - _floor(s, A0.shape, dtype)
    bound = {"cpqr": math.sqrt(n - k) * 2.0**k, "srrqr": math.sqrt(1 + f * f * k * (n - k)),
             "rcpqr": math.sqrt(n - k) * 2.0**k * 10}[method]
    assert err <= bound * s[k] + _floor(s, A0.shape, dtype)
    if method == "srrqr" and s[k - 1] > 1e3 * _floor(s, A0.shape, dtype):  # R11 well away from singular
        coeff = np.linalg.solve(_unit(R[:, :k], c), _unit(R[:, k:], c))
        assert np.abs(coeff).max() <= f * (1 + 1e-3)


@SETTINGS
@given(problems(), st.sampled_from(["cpqr", "srrqr", "randomized"]), st.sampled_from([1, 0]))
def test_interp_decomp(problem, method, axis):
    backend, A0, c, s, k, dtype = problem
    if k is None:
        return
    idx, T = _contract(backend, A0, dtype, lambda A: randla.interp_decomp(A, k, axis=axis, method=method, rng=1))
    assert len(set(idx.tolist())) == k
    A = _unit(A0, c)
    if axis == 1:
        assert np.array_equal(T[:, idx], np.eye(k))
        err, n = np.linalg.norm(A - A[:, idx] @ T, 2), A.shape[1]
    else:
        assert np.array_equal(T[idx, :], np.eye(k))
        err, n = np.linalg.norm(A - T @ A[idx, :], 2), A.shape[0]
    # ||A - C T|| = ||R_22|| for a QR-based ID; the sRRQR bound, CPQR's 2^k one
    bound = math.sqrt(1 + 4 * k * (n - k)) if method == "srrqr" else math.sqrt(n - k) * 2.0**k * 10
    assert err <= bound * s[k] * math.sqrt(1 + 4 * k * (n - k)) + _floor(s, A0.shape, dtype) * n


@SETTINGS
@given(problems(), st.sampled_from([0.3, 0.1, 1e-2, 1e-4]))
def test_frobenius_fixed_accuracy(problem, rtol):
    backend, A0, c, s, k, dtype = problem
    rtol = max(rtol, 100 * _u(dtype))
    (Q,) = _contract(backend, A0, dtype, lambda A: (randla.adaptive_range_finder(A, rtol, block_size=4, rng=1),))
    A = _unit(A0, c)
    r = Q.shape[1]
    np.testing.assert_allclose(Q.conj().T @ Q, np.eye(r), atol=100 * _u(dtype) * max(r, 1))
    bound = rtol * np.linalg.norm(A) * (1 + 1e-3) + _floor(s, A0.shape, dtype)
    assert np.linalg.norm(A - Q @ (Q.conj().T @ A)) <= bound
    # never more than the Frobenius-optimal rank plus the ones rounding cannot tell apart
    tail = np.sqrt(np.cumsum((s**2)[::-1])[::-1])
    assert r <= int(np.sum(tail > rtol * np.linalg.norm(A) * (1 - 1e-3))) + 1
