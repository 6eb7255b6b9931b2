"""randla.jax.compress: factors of the kernels of a parameter pytree (Flax layout, in x out)."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)  # as the backend fixture does: float64 kernels stay float64
jnp = jax.numpy

import randla.jax as rj  # noqa: E402


def _params(seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    k0 = rng.standard_normal((48, 64)) @ np.diag(0.9 ** np.arange(64))
    k1 = rng.standard_normal((64, 16))
    return {"params": {"Dense_0": {"kernel": jnp.asarray(k0, dtype=dtype), "bias": jnp.zeros(64, dtype=dtype)},
                       "Dense_1": {"kernel": jnp.asarray(k1, dtype=dtype), "bias": jnp.zeros(16, dtype=dtype)}},
            "batch_stats": {"scale": jnp.ones((4, 4), dtype=dtype)}}


def test_kernels_become_pairs_within_the_spectral_error():
    params = _params(dtype=jnp.float64)
    small, rep = rj.compress(params, rank=8, rng=0)
    K1, K2 = small["params"]["Dense_0"]["kernel"]
    assert K1.shape == (48, 8) and K2.shape == (8, 64) and K1.dtype == jnp.float64
    K = np.asarray(params["params"]["Dense_0"]["kernel"])
    s = np.linalg.svd(K, compute_uv=False)
    assert np.linalg.norm(K - np.asarray(K1 @ K2), 2) <= 1.1 * s[8]
    assert small["batch_stats"]["scale"] is params["batch_stats"]["scale"]  # not a kernel: untouched
    assert small["params"]["Dense_0"]["bias"] is params["params"]["Dense_0"]["bias"]
    assert [r.name for r in rep] == ["params/Dense_0/kernel", "params/Dense_1/kernel"]
    assert rep.params_after == 8 * 112 + 8 * 80


def test_whitened_by_calibration_and_low_precision():
    params = _params(dtype=jnp.float64)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((300, 48)) * np.logspace(0, -3, 48)
    H = rng.standard_normal((300, 64))
    K = np.asarray(params["params"]["Dense_0"]["kernel"])
    plain, _ = rj.compress(params, rank=6, include="Dense_0", rng=0)
    white, _ = rj.compress(params, rank=6, include="Dense_0", calibration={"params/Dense_0/kernel": X.T @ X}, rng=0)
    err = lambda p: np.linalg.norm(X @ (K - np.asarray(p[0] @ p[1])))  # noqa: E731
    assert err(white["params"]["Dense_0"]["kernel"]) < 0.7 * err(plain["params"]["Dense_0"]["kernel"])
    two, rep = rj.compress(params, rank=6, include="Dense_0", calibration={"params/Dense_0/kernel": X.T @ X},
                           output_grams={"params/Dense_0/kernel": jnp.asarray(H.T @ H)}, rng=0)
    assert rep[0].units == "loss"
    for dt in (jnp.bfloat16, jnp.float16):
        low, _ = rj.compress(_params(dtype=dt), rank_fraction=0.5, rng=0)
        assert all(k.dtype == dt for k in low["params"]["Dense_1"]["kernel"])


def test_same_shaped_kernels_are_batched_within_the_bound():
    rng = np.random.default_rng(2)
    ks = {f"Dense_{i}": rng.standard_normal((40, 24)) @ np.diag(0.8 ** np.arange(24)) for i in range(4)}
    params = {"params": {n: {"kernel": jnp.asarray(k)} for n, k in ks.items()}}
    grouped, rep = rj.compress(params, rank=5, rng=0)
    single, rep1 = rj.compress(params, rank=5, rng=0, batch=False)
    assert rep.ranks() == rep1.ranks()
    for n, k in ks.items():
        s = np.linalg.svd(k, compute_uv=False)
        for p in (grouped, single):
            K1, K2 = p["params"][n]["kernel"]
            assert K1.dtype == jnp.float64 and np.linalg.norm(k - np.asarray(K1 @ K2), 2) <= 1.1 * s[5]


def test_errors():
    params = _params()
    with pytest.raises(TypeError, match="exactly one"):
        rj.compress(params, rank=2, rtol=0.1)
    with pytest.raises(ValueError, match="no 2-D floating-point leaf named 'kernel'"):
        rj.compress(params, rank=2, include="nothing")
    with pytest.raises(ValueError, match="params is a pytree"):  # a bare array: was an IndexError
        rj.compress(jnp.ones((48, 96)), rank=4)
    with pytest.raises(ValueError, match="Dense_1.*not factored plain"):
        rj.compress(params, rank=2, calibration={"params/Dense_0/kernel": np.eye(48)})
    with pytest.raises(ValueError, match="ridge must be"):  # checked whether or not a Gram matrix uses it
        rj.compress(params, rank=2, ridge=-1.0)


def test_float16_kernels_with_large_rows_stay_finite():
    """Every entry of the kernel fits float16, but ``B = U S`` of its transpose does not
    (row norms 8e4): the ranks are rescaled instead of overflowing to Inf."""
    K = jnp.full((64, 64), 1e4, dtype=jnp.float16)
    small, _ = rj.compress({"D": {"kernel": K}}, rank=1, rng=0)
    K1, K2 = small["D"]["kernel"]
    assert K1.dtype == K2.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(K1, np.float64) @ np.asarray(K2, np.float64), 1e4, rtol=1e-3)


def test_selection_edge_cases():
    empty = {"D": {"kernel": jnp.ones((16, 16))}, "E": {"kernel": jnp.ones((0, 16))}}
    small, report = rj.compress(empty, rank=1, rng=0)
    assert small["E"]["kernel"].shape == (0, 16) and [r.name for r in report] == ["D/kernel"]
    clash = {"a/b": {"kernel": jnp.ones((8, 8))}, "a": {"b": {"kernel": jnp.ones((8, 8))}}}
    with pytest.raises(ValueError, match="two kernels have the path 'a/b/kernel'"):
        rj.compress(clash, rank=1)
    with pytest.raises(ValueError, match="include .* not a valid regular expression"):
        rj.compress(empty, rank=1, include="a{99999999999}")
    with pytest.raises(ValueError, match="rng must be a non-negative int seed"):
        rj.compress(empty, rank=1, rng=-1)


def test_framework_free_layer_with_float64_off_as_by_default():
    """The compression layer on JAX arrays under JAX's default configuration: its float64
    Gram matrices and factorisations were truncated to float32 with a warning at each
    (an error under -W error) and the whitener came out float32."""
    import randla.compress as rc

    gen = np.random.default_rng(0)
    X = gen.standard_normal((500, 64)).astype(np.float32)
    W0 = gen.standard_normal((32, 64)).astype(np.float32)
    Z0 = np.maximum(X @ gen.standard_normal((64, 48)).astype(np.float32), 0)
    W1, W2 = gen.standard_normal((48, 64)).astype(np.float32), gen.standard_normal((16, 48)).astype(np.float32)
    with jax.enable_x64(False):
        G, W = jnp.asarray(X.T @ X), jnp.asarray(W0)
        for gram in (None, G):
            exact = rc.factor(W, rank=8, gram=gram, method="exact")
            ref = rc.factor(W0, rank=8, gram=None if gram is None else X.T @ X, method="exact")
            assert exact.B.dtype == exact.A.dtype == jnp.float32
            np.testing.assert_allclose(np.asarray(exact.B @ exact.A), ref.B @ ref.A, atol=1e-4 * np.abs(W0).max())
            f = rc.factor(W, rank=8, gram=gram, rng=0)  # randomized: JAX draws its own sketch
            assert f.B.dtype == f.A.dtype == jnp.float32
            assert f.report.relative_error <= 1.02 * ref.report.relative_error
        assert rc.whitener(G).dtype == jnp.float64
        pruned = rc.prune_neurons(jnp.asarray(Z0), [(jnp.asarray(W1), None)], jnp.asarray(W2), k=24)
        ref = rc.prune_neurons(Z0, [(W1, None)], W2, k=24)
        assert pruned.W2.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(pruned.W2), ref.W2, rtol=1e-4, atol=1e-4 * np.abs(ref.W2).max())
        rc.summarize(W, gram=G)
        assert not jax.config.read("jax_enable_x64")
