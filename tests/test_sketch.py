"""Sketching operators on every backend."""

from __future__ import annotations

import numpy as np
import pytest

from randla import sketch as S
from randla.testing import matrix


@pytest.mark.parametrize("maker", [S.gaussian, S.rademacher, S.sparse_sign, S.orthonormal_gaussian, S.srtt])
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
def test_operators_shape_dtype_device(backend, maker, dtype):
    like = backend.asarray(np.zeros((2, 2), dtype=dtype))
    om = maker(40, 6, like=like, rng=0)
    assert type(om) is type(like) and om.shape == (40, 6) and om.dtype == like.dtype
    om_np = backend.to_numpy(om)
    assert np.all(np.isfinite(om_np))
    # full column rank: a sketch that loses rank is useless
    assert np.linalg.matrix_rank(om_np.astype(np.complex128)) == 6
    # reproducible
    np.testing.assert_array_equal(om_np, backend.to_numpy(maker(40, 6, like=like, rng=0)))


@pytest.mark.parametrize("maker", [S.gaussian, S.rademacher, S.sparse_sign, S.orthonormal_gaussian, S.srtt])
def test_like_follows_the_dtype_rule(backend, maker):
    """An integer or bool ``like`` gives a float64 test matrix (gaussian and sparse_sign
    gave truncated integers; torch raised from its generator); half precision is a
    TypeError (was accepted, or failed inside linalg)."""
    for dtype in ("int64", "bool"):
        like = backend.asarray(np.zeros((2, 2), dtype=dtype))
        om = backend.to_numpy(maker(40, 6, like=like, rng=0))
        assert om.dtype == np.float64 and np.linalg.matrix_rank(om) == 6
    with pytest.raises(TypeError, match="like has dtype float16"):
        maker(40, 6, like=np.zeros((2, 2), dtype=np.float16), rng=0)


def test_operator_statistics():
    like = np.zeros((1, 1))
    g = S.gaussian(4000, 50, like=like, rng=0)
    assert abs(g.mean()) < 0.01 and abs(g.std() - 1) < 0.01
    r = S.rademacher(4000, 50, like=like, rng=0)
    assert set(np.unique(r)) == {-1.0, 1.0} and abs(r.mean()) < 0.01
    s = S.sparse_sign(2000, 40, like=like, nnz=4, rng=0)
    assert np.all(np.count_nonzero(s, axis=1) <= 4)
    np.testing.assert_allclose(np.mean(np.sum(s**2, axis=1)), 1.0, atol=0.1)
    o = S.orthonormal_gaussian(50, 10, like=like, rng=0)
    np.testing.assert_allclose(o.T @ o, np.eye(10), atol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "complex128", "float32"])
@pytest.mark.parametrize("n", [16, 17])
def test_srtt_fast_equals_explicit(backend, dtype, n):
    A0 = matrix(9, n, dtype=dtype, rng=0).A
    A = backend.asarray(A0)
    fast = backend.to_numpy(S.sketch(A, 7, method="srtt", rng=3))
    explicit = A0 @ backend.to_numpy(S.srtt(n, 7, like=A, rng=3))
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(fast, explicit, atol=tol)


def test_srtt_is_scaled_isometry_when_complete():
    """Keeping all n columns gives an orthogonal transform (up to scale)."""
    for dtype in ("float64", "complex128"):
        om = S.srtt(12, 12, like=np.zeros((1, 1), dtype=dtype), rng=0)
        G = om.conj().T @ om
        np.testing.assert_allclose(G, np.diag(np.diag(G)), atol=1e-12)


def test_sketch_of_linear_operator_matches_dense():
    import scipy.sparse.linalg as spla

    A0 = matrix(20, 15, rng=0).A
    for method in S.METHODS:
        dense = S.sketch(A0, 4, method=method, rng=5)
        op = S.sketch(spla.aslinearoperator(A0), 4, method=method, rng=5)
        np.testing.assert_allclose(op, dense, atol=1e-12)


def test_sketch_errors():
    A = np.ones((5, 4))
    with pytest.raises(ValueError, match="method must be one of"):  # the argument's own name
        S.sketch(A, 2, method="nope")
    with pytest.raises(ValueError, match="l must be >= 1"):
        S.sketch(A, 0)
    with pytest.raises(ValueError, match="l <= n"):
        S.sketch(A, 5, method="srtt")
    with pytest.raises(ValueError, match="l <= n"):
        S.orthonormal_gaussian(3, 4, like=A)
    with pytest.raises(TypeError, match="rng"):
        S.gaussian(3, 2, like=A, rng=1.5)


def test_jax_draws_do_not_depend_on_float64_being_enabled():
    """The seed (62 bits) went to jax.random.key, which truncates it to 32 bits with
    float64 off: the same rng gave another sketch (by up to 20 in a 50 x 40 float32
    case), and distinct seeds collapsed onto 2^32 keys."""
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from randla import _backend as B

    out = []
    for x64 in (False, True):
        with jax.enable_x64(x64):
            out.append(np.asarray(B._draw("normal", (6, 4), xp=jnp, dtype=jnp.float32,
                                          dev=jax.devices("cpu")[0], rng=np.random.default_rng(0))))
    np.testing.assert_array_equal(out[0], out[1])
