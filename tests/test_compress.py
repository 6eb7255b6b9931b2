"""randla.compress: factor one weight, rank rules, budgets, reports (framework-free).

References: NumPy's exact SVD (Eckart-Young), the closed-form optimum of the whitened
problem, exact greedy optimality on separable objectives, and brute force.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from randla.compress import (
    LayerSummary,
    Report,
    allocate,
    allocation_params,
    check_rank_mode,
    compress_weights,
    factor,
    factor_many,
    fit_range,
    max_saving_rank,
    metric,
    parameter_count,
    rank_for_rtol,
    resolve_budget,
    sample_errors,
    saves_parameters,
    select_rank,
    summarize,
    truncate,
    truncation_directions,
    uniform_ranks,
    whitener,
)
from randla.compress.correct import TransferStats, fit_corrected
from randla.testing import matrix


def _weight(out=60, inp=40, dtype="float64", decay=1.0, seed=0):
    return matrix(out, inp, spectrum="polynomial", decay=decay, dtype=dtype, rng=seed)


def _anisotropic_inputs(n, inp, seed=1):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((inp, inp)))
    return (rng.standard_normal((n, inp)) * np.logspace(0, -3, inp)) @ Q.T


# ----------------------------------------------------------------------------------
# rank rules
# ----------------------------------------------------------------------------------


def test_rank_rules():
    assert max_saving_rank((384, 384)) == 191 and saves_parameters((384, 384), 191)
    assert not saves_parameters((384, 384), 192) and not saves_parameters((10, 10), 0)
    for out, inp in [(7, 3), (100, 1), (64, 64), (1536, 384)]:
        r = max_saving_rank((out, inp))
        assert r * (out + inp) < out * inp and (r + 1) * (out + inp) >= out * inp
    assert parameter_count((10, 20), 3) == 90 and parameter_count((10, 20), 7) == 200
    assert select_rank((1536, 384), rank_fraction=0.4) == 153
    assert select_rank((30, 30), rank_fraction=0.01) == 1  # at least rank 1
    assert select_rank((100, 100), param_fraction=0.5) == 25
    assert select_rank((100, 100), rank=7) == 7


def test_rank_for_rtol_matches_exact_tails():
    s = np.array([5.0, 3.0, 2.0, 1.0, 0.5])
    total = float(np.sum(s**2))
    for rtol in (0.05, 0.2, 0.5, 0.9):
        r = rank_for_rtol(s, total, rtol)
        tails = [np.sqrt(np.sum(s[k:] ** 2) / total) for k in range(6)]
        assert tails[r] <= rtol and (r == 1 or tails[r - 1] > rtol)


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"rank": 3, "rank_fraction": 0.5}, TypeError, "exactly one"),
    ({}, TypeError, "exactly one"),
    ({"rank_fraction": 0.0}, ValueError, "rank_fraction"),
    ({"rank_fraction": 1.5}, ValueError, "rank_fraction"),
    ({"param_fraction": -0.1}, ValueError, "param_fraction"),
    ({"rtol": 1.0}, ValueError, "rtol"),
    ({"rank": 0}, ValueError, "rank"),
    ({"rank": 2.5}, TypeError, "rank"),
    ({"budget": 0}, ValueError, "budget"),
    ({"budget": 1.5}, ValueError, "budget"),
    ({"budget": "all"}, TypeError, "budget"),
])
def test_bad_rank_options_name_the_argument(kwargs, exc, words):
    with pytest.raises(exc, match=words):
        check_rank_mode(**kwargs)


def _scalar(kind, value):
    """``value`` as a 0-d scalar of one library (what a rank computed with that library is)."""
    if kind == "python":
        return value
    if kind == "numpy":
        return np.asarray(value)[()]
    lib = pytest.importorskip(kind)
    if kind == "torch":
        return lib.tensor(value)
    dtype = {bool: lib.numpy.bool_, int: lib.numpy.int32, float: lib.numpy.float32}[type(value)]
    return lib.numpy.asarray(value, dtype=dtype)


@pytest.mark.parametrize("kind", ["python", "numpy", "torch", "jax"])
def test_options_take_integer_and_real_scalars_of_any_library(kind):
    """A rank or fraction held as a 0-d array of NumPy, torch or JAX is the number it holds
    (a JAX ``rank`` was refused as 'not an int', a torch ``budget`` count read as a
    fraction > 1); bools stay refused."""
    import randla
    from randla.compress.correct import _check_shrinkage
    from randla.compress.prune import _check_ridge, neuron_count

    assert check_rank_mode(rank=_scalar(kind, 5)) == ("rank", 5)
    assert check_rank_mode(budget=_scalar(kind, 1000)) == ("budget", 1000)
    mode, v = check_rank_mode(budget=_scalar(kind, 0.5))
    assert mode == "budget" and isinstance(v, float) and v == pytest.approx(0.5)
    for option in ("rank_fraction", "param_fraction", "rtol"):
        mode, v = check_rank_mode(**{option: _scalar(kind, 0.25)})
        assert (mode, type(v)) == (option, float) and v == pytest.approx(0.25)
    assert neuron_count(100, k=_scalar(kind, 10)) == ("k", 10)
    assert neuron_count(100, keep_fraction=_scalar(kind, 0.5)) == ("k", 50)
    assert _check_ridge(_scalar(kind, 0.5)) == pytest.approx(0.5)
    assert _check_shrinkage(_scalar(kind, 2.0)) == (2.0,)
    assert randla.srrqr(np.eye(4), 2, f=_scalar(kind, 2.0))[1].shape == (2, 4)
    W, _ = _weight()
    assert factor(W, rank=_scalar(kind, 3)).B.shape[1] == 3
    for bad in (_scalar(kind, True), np.ones(2)):
        with pytest.raises(TypeError, match="rank must be an int"):
            check_rank_mode(rank=bad)
        with pytest.raises(TypeError, match="rank_fraction must be a float"):
            check_rank_mode(rank_fraction=bad)
        with pytest.raises(TypeError, match="budget must be"):
            check_rank_mode(budget=bad)


def test_factor_rejects_bad_input():
    W, _ = _weight()
    with pytest.raises(TypeError, match="exactly one"):
        factor(W, rank=3, rtol=0.1)
    with pytest.raises(TypeError, match="budget"):
        factor(W, budget=100)
    with pytest.raises(ValueError, match="2-D"):
        factor(W[0], rank=3)
    with pytest.raises(ValueError, match="gram"):
        factor(W, rank=3, gram=np.eye(5))
    with pytest.raises(ValueError, match="output_gram"):
        factor(W, rank=3, output_gram=np.eye(5))
    with pytest.raises(ValueError, match="positive semidefinite"):
        factor(W, rank=3, gram=-np.eye(W.shape[1]))
    indefinite = np.zeros((W.shape[1],) * 2)
    indefinite[0, 1] = indefinite[1, 0] = 5.0  # zero trace: was taken for "no data", plain factors
    for kwargs in ({"gram": indefinite}, {"output_gram": np.diag([1.0, -1.0] + [0.0] * (W.shape[0] - 2))}):
        with pytest.raises(ValueError, match="not positive semidefinite .zero trace"):
            factor(W, rank=3, **kwargs)
    with pytest.raises(ValueError, match="method"):
        factor(W, rank=3, method="lanczos")
    with pytest.raises(ValueError, match="split"):
        factor(W, rank=3, split="right")
    bad = W.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        factor(bad, rank=3)


# ----------------------------------------------------------------------------------
# one weight, every backend
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["rsi", "exact"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_factor_on_every_backend(backend, method, dtype):
    _check_factor(backend, method, dtype)


@pytest.mark.parametrize("method", ["rsvd", "krylov"])
def test_factor_methods(method):
    from conftest import _make

    _check_factor(_make("numpy"), method, "float64")


def _check_factor(backend, method, dtype):
    W0, s = _weight(dtype=dtype)
    W = backend.asarray(W0)
    k = 8
    f = factor(W, rank=k, method=method, rng=0)
    assert type(f.B) is type(W) and f.B.dtype == W.dtype and f.A.dtype == W.dtype
    assert f.B.shape == (60, k) and f.A.shape == (k, 40)
    Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
    err = np.linalg.norm(W0 - Bn @ An, 2) / s[k]
    bound = {"rsvd": 6.0, "krylov": 1.15}.get(method, 1.1 if method == "rsi" else 1.0 + 1e-3)
    assert err <= bound
    rep = f.report
    assert rep.rank == k and rep.params_after == k * 100 and rep.params_before == 2400 and rep.factored
    assert np.isclose(rep.relative_error, np.linalg.norm(W0 - Bn @ An) / np.linalg.norm(W0), rtol=1e-3, atol=1e-5)
    if not backend.lazy:  # the estimate reads values: skipped on lazy arrays
        assert rep.normalized_error is not None and 0.95 <= rep.normalized_error <= 1.2 * bound
    np.testing.assert_array_equal(backend.to_numpy(W), W0)  # input untouched


def test_whitened_factor_is_the_closed_form_optimum(backend):
    W0, _ = _weight(decay=0.3)
    X = _anisotropic_inputs(500, 40)
    G0 = X.T @ X
    k = 6
    f = factor(backend.asarray(W0), rank=k, gram=backend.asarray(G0), method="exact", ridge=0.0)
    Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
    # reference: min ||(W - M) X^T||_F over rank-k M is the rank-k truncation of W X^T
    # projected back: M = P_k W with P_k the projector on the top-k left singular
    # vectors of W X^T
    U, S, _ = np.linalg.svd(W0 @ X.T, full_matrices=False)
    best = np.linalg.norm(W0 @ X.T - U[:, :k] @ (U[:, :k].T @ W0 @ X.T))
    got = np.linalg.norm((W0 - Bn @ An) @ X.T)
    assert got <= best * (1 + 1e-8)
    assert np.isclose(f.report.output_error, got / np.linalg.norm(W0 @ X.T), rtol=1e-6)
    assert f.report.units == "output" and f.report.whitened


@pytest.mark.parametrize("split", ["left", "balanced"])
def test_whitened_factors_do_not_depend_on_the_gram_scale(backend, split):
    """``G`` and ``c G`` (a token count, the activations' scale) give the same factors:
    ``A``'s rows of unit norm (``"left"``) or each rank's norms equal across ``B`` and
    ``A`` (``"balanced"``), and the same product; with output Gram matrices too."""
    W0, _ = _weight(60, 40, decay=0.3)
    X, Y = _anisotropic_inputs(300, 40), _anisotropic_inputs(300, 60, seed=7)
    G0, H0 = X.T @ X, Y.T @ Y
    k = 6
    ref = factor(W0, rank=k, gram=G0, output_gram=H0, split=split, method="exact")
    for c in (1e-12, 1e12):
        f = factor(backend.asarray(W0), rank=k, gram=backend.asarray(c * G0), output_gram=backend.asarray(H0 / c),
                   split=split, method="exact")
        Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
        np.testing.assert_allclose(Bn @ An, ref.B @ ref.A, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(np.abs(Bn), np.abs(ref.B), rtol=1e-6, atol=1e-10)
        b, a = np.linalg.norm(Bn, axis=0), np.linalg.norm(An, axis=1)
        np.testing.assert_allclose(a, np.ones(k) if split == "left" else b, rtol=1e-10)


@pytest.mark.parametrize("split", ["left", "balanced"])
@pytest.mark.skip_backend("dask", reason="lazy weights are not rescaled (that would read their values)")
def test_whitened_float32_weights_near_the_largest_float32(backend, split):
    """A float32 weight with entries near 2.6e37 whose factors (``max |B|`` 2.5e37) fit
    float32 but whose whitened singular values (1e39) do not: its factors are those of
    the unit-scale weight times the scale. The singular values used to be scaled back
    before the per-rank rescaling, and ``B`` came out Inf."""
    W0, _ = _weight(48, 32, decay=0.2)
    X = _anisotropic_inputs(300, 32)
    G0 = X.T @ X
    c = 2.0 ** 126  # 8.5e37
    ref = factor(W0.astype(np.float32), rank=8, gram=G0, split=split, method="exact")
    f = factor(backend.asarray((c * W0).astype(np.float32)), rank=8, gram=backend.asarray(G0), split=split,
               method="exact")
    Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
    assert np.isfinite(Bn).all() and np.isfinite(An).all()
    cb, ca = (c, 1.0) if split == "left" else (np.sqrt(c), np.sqrt(c))
    P0 = ref.B.astype(np.float64) @ ref.A
    assert np.linalg.norm((Bn / cb).astype(np.float64) @ (An / ca) - P0) <= 1e-5 * np.linalg.norm(P0)
    np.testing.assert_allclose(np.linalg.norm(Bn / cb, axis=0), np.linalg.norm(ref.B, axis=0), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(An / ca, axis=1), np.linalg.norm(ref.A, axis=1), rtol=1e-4)


def test_gram_matrices_whose_trace_leaves_their_dtype(backend):
    """Valid Gram matrices with finite entries whose trace overflows: float64 near 8e307
    was rejected as "not positive semidefinite (Cholesky gave NaN)", float32 near 2e38
    warned from its float32 trace. The same factors as at unit scale."""
    W0, _ = _weight(32, 24, decay=0.5)
    X = _anisotropic_inputs(200, 24)
    G0 = X.T @ X / np.abs(X.T @ X).max()
    ref = factor(W0, rank=8, gram=G0, method="exact")
    P0 = ref.B @ ref.A
    for G in (G0 * 2.0**1022, (G0 * 2.0**127).astype(np.float32)):
        L = backend.to_numpy(whitener(backend.asarray(G)))
        np.testing.assert_allclose(L @ L.T, G, rtol=1e-5, atol=1e-5 * np.abs(G).max())
        for dtype in ("float64", "float32"):
            f = factor(backend.asarray(W0.astype(dtype)), rank=8, gram=backend.asarray(G), method="exact")
            P = backend.to_numpy(f.B).astype(np.float64) @ backend.to_numpy(f.A)
            assert np.linalg.norm(P - P0) <= 1e-5 * np.linalg.norm(P0)
            assert f.report.output_error == pytest.approx(ref.report.output_error, rel=1e-4)


def test_whitened_float16_weights_keep_float32_accuracy_at_large_calibration_scale():
    """fp16 weights whitened by the Gram matrix of 1e6 tokens with activation outliers
    near 1e3: without rescaling, ``B`` overflowed float16 and ``A`` fell into its
    subnormal range; the factors now match the float32 computation's output error."""
    rng = np.random.default_rng(0)
    W = (0.02 * rng.standard_normal((96, 256))).astype(np.float16)
    X = rng.standard_normal((1000, 256)) * np.where(np.arange(256) < 4, 1000.0, 1.0)
    G = X.T @ X * 1e3  # as from 1e6 tokens
    Wd = W.astype(np.float64)

    def out_err(f):
        M = f.B.astype(np.float64) @ f.A.astype(np.float64)
        return np.linalg.norm((Wd - M) @ X.T) / np.linalg.norm(Wd @ X.T)

    f16 = factor(W, rank_fraction=0.4, gram=G, rng=0)
    f32 = factor(W.astype(np.float32), rank_fraction=0.4, gram=G, rng=0)
    assert f16.B.dtype == np.float16 and np.isfinite(f16.B).all() and np.isfinite(f16.A).all()
    assert out_err(f16) <= 1.05 * out_err(f32) + 1e-4


@pytest.mark.parametrize("scale", [1e-300, 1e-60, 1e60, 1e300])
def test_single_precision_weights_at_any_calibration_scale(backend, scale):
    """float32 weights with Gram matrices far outside float32's range (activations near
    1e+-30 or beyond): the same factors, spectra times the scale, summaries (with folds
    too) and truncation directions as at unit scale. The whitened matrix ``W L`` used
    to be formed in float32 from a cast of ``L``: Inf, or zeros and a wrong product
    without a word."""
    W0, _ = _weight(60, 40, dtype="float32", decay=0.3)
    X, Y = _anisotropic_inputs(300, 40), _anisotropic_inputs(300, 60, seed=7)
    G0, H0 = X.T @ X, Y.T @ Y
    folds0 = [X[:150].T @ X[:150], X[150:].T @ X[150:]]
    W, G, H = backend.asarray(W0), backend.asarray(scale * G0), backend.asarray(H0)
    for split in ("left", "balanced"):
        for out in (None, H0):
            Hb = None if out is None else H
            ref = factor(W, rank=6, gram=backend.asarray(G0), output_gram=Hb, split=split, method="exact")
            f = factor(W, rank=6, gram=G, output_gram=Hb, split=split, method="exact")
            Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
            P0 = backend.to_numpy(ref.B).astype(np.float64) @ backend.to_numpy(ref.A)
            assert Bn.dtype == np.float32 and np.isfinite(Bn).all() and np.isfinite(An).all()
            assert np.linalg.norm(Bn.astype(np.float64) @ An - P0) <= 1e-5 * np.linalg.norm(P0)
            np.testing.assert_allclose(f.S, ref.S * np.sqrt(scale), rtol=1e-4)
            assert f.energy == pytest.approx(ref.energy * scale, rel=1e-4)
            assert f.report.output_error == pytest.approx(ref.report.output_error, rel=1e-3, abs=1e-6)
            # a metric built by hand from the same Gram matrices is rescaled the same way
            fm = factor(W, rank=6, whitening=metric(W.shape, gram=G, output_gram=Hb), split=split, method="exact")
            Bm, Am = backend.to_numpy(fm.B), backend.to_numpy(fm.A)
            assert np.isfinite(Bm).all() and np.isfinite(Am).all()
            assert np.linalg.norm(Bm.astype(np.float64) @ Am - P0) <= 1e-5 * np.linalg.norm(P0)
            np.testing.assert_allclose(fm.S, f.S, rtol=1e-4)
    by_hand = summarize(W, whitening=metric(W.shape, gram=G), cap=8, method="exact")
    np.testing.assert_allclose(by_hand.gains, summarize(W0, gram=G0, cap=8, method="exact").gains * scale, rtol=1e-3)
    ref = summarize(W0, gram=G0, folds=folds0, cap=8, method="exact")
    got = summarize(W, gram=G, folds=[backend.asarray(scale * F) for F in folds0], cap=8, method="exact")
    np.testing.assert_allclose(got.gains, ref.gains * scale, rtol=1e-3)
    # the data-aware correction (Gram matrices of the compressed model's inputs), without the
    # bias shift, which is in the activations' own units
    Xt = X @ (np.eye(40) + 0.2 * np.random.default_rng(3).standard_normal((40, 40)) / np.sqrt(40))

    def stats(a, b, c):
        return TransferStats(*(backend.asarray(c * u.T @ v) for u, v in ((a, a), (a, b), (b, b))), count=len(a))

    fits = [fit_corrected(W, stats(Xt, X, c), folds=[stats(Xt[:150], X[:150], c), stats(Xt[150:], X[150:], c)],
                          rank=6, bias=False, method="exact") for c in (1.0, scale)]
    P0, P = (backend.to_numpy(fc.B).astype(np.float64) @ backend.to_numpy(fc.A) for fc in fits)
    assert fits[1].shrinkage == fits[0].shrinkage and np.linalg.norm(P - P0) <= 1e-5 * np.linalg.norm(P0)
    [(a, b)], [(a0, b0)] = truncation_directions(W, gram=G, output_gram=H), truncation_directions(W0, gram=G0,
                                                                                                output_gram=H0)
    a, b = backend.to_numpy(a).astype(np.float64), backend.to_numpy(b)
    P0 = a0[:, :6].astype(np.float64) @ b0[:, :6].T
    assert np.linalg.norm(a[:, :6] @ b[:, :6].T - P0) <= 1e-5 * np.linalg.norm(P0)


def test_summaries_of_weights_whose_squares_leave_float64(backend):
    """float64 weights near 1e+-170: their squared singular values have no float64
    value (gains and total came out 0, and the allocation gave the layer rank 1; or Inf
    and an overflow warning). The summary keeps them in units of ``2**exponent``, and
    the allocation is that of the unit-scale weights, with relative and absolute weights."""
    W0, _ = _weight(48, 32, decay=1.0)
    W1, _ = _weight(48, 32, decay=0.3, seed=1)
    ref = [summarize(W, cap=None, method="exact", name=n) for n, W in (("a", W0), ("b", W1))]
    for c in (2.0**-565, 2.0**565):
        got = [summarize(backend.asarray(W * c), cap=None, method="exact", name=n) for n, W in (("a", W0), ("b", W1))]
        for g, r in zip(got, ref, strict=True):
            shift = 2 * round(np.log2(c)) - g.exponent  # gains * 2^exponent = c^2 * reference gains
            assert abs(shift) < 100
            np.testing.assert_allclose(g.gains, np.ldexp(r.gains, shift), rtol=1e-10)
            assert g.total == pytest.approx(np.ldexp(r.total, shift), rel=1e-10)
        for weights in ("relative", "absolute"):
            assert allocate(got, 0.5, weights=weights) == allocate(ref, 0.5, weights=weights)
        mixed = allocate([got[0], ref[1]], 0.5, weights="absolute")  # "b" is negligible next to c * W0
        assert mixed["b"] == 1 if c > 1 else mixed["a"] == 1


def test_summary_whose_squared_errors_leave_float64_is_an_error():
    """Gram matrices near 1e150 on both sides put the squared errors in loss units
    near 1e300 x 1e300: no float64 value, so a clear error, not Inf or a warning."""
    W, _ = _weight(60, 40, decay=0.3)
    X, Y = _anisotropic_inputs(300, 40), _anisotropic_inputs(300, 60, seed=7)
    with pytest.raises(ValueError, match="leave float64's range"):
        summarize(W, gram=1e160 * X.T @ X, output_gram=1e160 * Y.T @ Y, cap=5, name="fc")
    s = summarize(W, gram=1e100 * X.T @ X, output_gram=1e100 * Y.T @ Y, cap=5)
    ref = summarize(W, gram=X.T @ X, output_gram=Y.T @ Y, cap=5)
    np.testing.assert_allclose(s.gains, ref.gains * 1e200, rtol=1e-8)


@pytest.mark.parametrize("split", ["left", "balanced"])
def test_float16_weights_whose_factors_would_overflow(split):
    """Every entry of ``W`` fits float16 but ``B = U_r S_r`` does not (row norms 8e4, or
    whitened by a Gram matrix of large scale): the overflowing ranks are rescaled; a
    rank that cannot fit even balanced is an error, not Inf."""
    W = np.full((64, 64), 1e4, dtype=np.float16)
    for gram in (None, 1e6 * np.eye(64)):
        f = factor(W, rank=1, gram=gram, split=split, rng=0)
        assert f.B.dtype == np.float16 and np.isfinite(f.B).all() and np.isfinite(f.A).all()
        np.testing.assert_allclose(f.B.astype(np.float64) @ f.A.astype(np.float64), 1e4, rtol=1e-3)
    with pytest.raises(ValueError, match="fc: its factors do not fit"):
        fit_range(np.full((4, 1), 1e5, np.float32), np.full((1, 4), 1e5, np.float32), np.float16, name="fc")
    B0, A0 = np.ones((4, 2), np.float32), np.ones((2, 4), np.float32)
    assert fit_range(B0, A0, np.float16)[0] is B0  # in range: untouched


@pytest.mark.parametrize("seed", range(3))
def test_whitened_beats_plain_on_output_error_when_inputs_are_anisotropic(seed):
    W, _ = _weight(80, 50, decay=0.5, seed=seed)
    X = _anisotropic_inputs(400, 50, seed=seed + 10)
    plain = factor(W, rank=10, rng=seed)
    white = factor(W, rank=10, gram=X.T @ X, rng=seed)

    def err(f, Z):
        return np.linalg.norm((W - f.B @ f.A) @ Z.T)

    assert err(white, X) < 0.5 * err(plain, X)
    rng = np.random.default_rng(seed + 100)  # fresh inputs with the same covariance
    Q = np.linalg.qr(np.random.default_rng(seed + 10).standard_normal((50, 50)))[0]
    fresh = (rng.standard_normal((400, 50)) * np.logspace(0, -3, 50)) @ Q.T
    assert err(white, fresh) < 0.5 * err(plain, fresh)


def test_two_sided_factor_minimises_the_weighted_error():
    W, _ = _weight(50, 40, decay=0.3)
    X = _anisotropic_inputs(300, 40)
    Y = _anisotropic_inputs(300, 50, seed=7)  # output gradients
    G, H = X.T @ X, Y.T @ Y
    k = 5
    f = factor(W, rank=k, gram=G, output_gram=H, method="exact", ridge=0.0)
    # the optimum of ||Y (W - M) X^T||_F: truncated SVD of Y W X^T mapped back
    M = Y @ W @ X.T
    U, S, Vh = np.linalg.svd(M, full_matrices=False)
    best = np.sqrt(np.sum(S[k:] ** 2))
    got = np.linalg.norm(Y @ (W - f.B @ f.A) @ X.T)
    assert got <= best * (1 + 1e-7)
    one = factor(W, rank=k, gram=G, method="exact")
    assert got < np.linalg.norm(Y @ (W - one.B @ one.A) @ X.T)
    assert f.report.units == "loss"
    out_err = np.linalg.norm((W - f.B @ f.A) @ X.T) / np.linalg.norm(W @ X.T)
    assert np.isclose(f.report.output_error, out_err, rtol=1e-6)
    # an all-zero output Gram matrix is ignored for the factors
    z = factor(W, rank=k, gram=G, output_gram=np.zeros((50, 50)), method="exact")
    np.testing.assert_allclose(z.B @ z.A, one.B @ one.A, atol=1e-10)


def test_exact_rank_weights_are_reproduced_exactly():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((40, 5)) @ rng.standard_normal((5, 30))
    for kw in ({}, {"gram": _anisotropic_inputs(100, 30).T @ _anisotropic_inputs(100, 30)}):
        f = factor(W, rank=5, rng=0, **kw)
        np.testing.assert_allclose(f.B @ f.A, W, atol=1e-10 * np.abs(W).max())


def test_balanced_split_and_truncate():
    W, s = _weight()
    left = factor(W, rank=10, method="exact")
    bal = factor(W, rank=10, method="exact", split="balanced")
    np.testing.assert_allclose(bal.B @ bal.A, left.B @ left.A, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(bal.B, axis=0), np.linalg.norm(bal.A, axis=1), rtol=1e-10)
    t = truncate(left, 4)
    direct = factor(W, rank=4, method="exact")
    np.testing.assert_allclose(t.B @ t.A, direct.B @ direct.A, atol=1e-12)
    assert t.report.rank == 4 and np.isclose(t.report.relative_error, direct.report.relative_error)
    with pytest.raises(ValueError, match="rank"):
        truncate(left, 11)
    before = left.B.copy()
    t.B[:] = 0.0  # an in-place edit of the result (quantising) changed the factors it came from
    np.testing.assert_array_equal(left.B, before)


def test_rtol_mode_meets_the_tolerance(backend):
    if backend.lazy:
        pytest.skip("rtol is eager")
    W0, _ = _weight(decay=1.0)
    for method in ("rsi", "exact"):
        f = factor(backend.asarray(W0), rtol=0.3, method=method, rng=0)
        Bn, An = backend.to_numpy(f.B), backend.to_numpy(f.A)
        assert np.linalg.norm(W0 - Bn @ An) <= 0.3 * np.linalg.norm(W0) * (1 + 1e-5)
        r = f.report.rank
        assert np.sqrt(np.sum(np.linalg.svd(W0, compute_uv=False)[r - 1:] ** 2)) > 0.3 * np.linalg.norm(W0) * 0.99
    flat = np.eye(40)  # every rank leaves a large error: stays dense
    assert factor(flat, rtol=0.01).B is None


@pytest.mark.parametrize("output", [False, True])
def test_whitened_rtol_is_met_on_the_calibration_data(output):
    """``rtol`` with a Gram matrix bounds the output error on the calibration data. The
    rank was chosen on the ridged metric, whose energy the ridge inflates where ``W``
    weighs inputs the data barely excites: inputs over six decades of scale, weights
    compensating, gave 0.90 at ``rtol=0.3`` and 0.80 at ``rtol=0.1`` (31 of 120 such
    layers over, the worst 24x)."""
    rng = np.random.default_rng(0)
    failures = factored = 0
    for trial in range(12):
        scale = np.logspace(0, -rng.uniform(0, 6), 64)
        X = rng.standard_normal((500, 64)) * scale
        W = rng.standard_normal((48, 64)) / scale ** rng.uniform(0, 1)
        Y = rng.standard_normal((500, 48)) * np.logspace(0, -2, 48) if output else None
        H = None if Y is None else Y.T @ Y
        for rtol in (0.3, 0.1):
            for method in ("rsi", "exact"):
                f = factor(W, rtol=rtol, gram=X.T @ X, output_gram=H, method=method, rng=trial)
                E = W - (W if f.B is None else f.B @ f.A)
                side = np.eye(48) if Y is None else np.linalg.cholesky(H)
                err = np.linalg.norm(side.T @ E @ X.T) / np.linalg.norm(side.T @ W @ X.T)
                failures += err > rtol * (1 + 1e-6)
                factored += f.B is not None
    assert failures == 0 and factored >= 12  # half of the 48 calls find a rank that meets rtol


def test_layer_that_would_not_save_stays_dense():
    W, _ = _weight(10, 10)
    f = factor(W, rank=5)  # 5 * 20 = 100 = 10 * 10: no saving
    assert f.B is None and f.A is None and f.report.rank is None and f.report.params_after == 100
    assert not f.report.factored and f.report.method == "dense"
    assert factor(W, rank_fraction=1.0).B is None


def test_low_precision_weights_are_upcast_and_cast_back():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    W, s = _weight(dtype="float32")
    for dt in (np.float16, ml_dtypes.bfloat16):
        f = factor(W.astype(dt), rank=8, rng=0)
        assert f.B.dtype == dt and f.A.dtype == dt
        err = np.linalg.norm(W - f.B.astype(np.float32) @ f.A.astype(np.float32), 2)
        assert err <= 1.2 * s[8] + 0.02 * s[0]  # half-precision rounding of W and of the factors


def test_parameters_that_require_grad_are_detached():
    """A torch parameter passed as it is: no autograd warnings (errors under -W error),
    no graph in the factors."""
    torch = pytest.importorskip("torch")
    W0, s = _weight(dtype="float32")
    W = torch.nn.Parameter(torch.from_numpy(W0))
    G = torch.eye(W0.shape[1], dtype=torch.float64).requires_grad_()
    for kwargs in ({}, {"gram": G}):
        f = factor(W, rank=8, rng=0, **kwargs)
        assert not f.B.requires_grad and not f.A.requires_grad
        assert float(torch.linalg.matrix_norm(W.detach() - f.B @ f.A, 2)) <= 1.1 * s[8]


def test_complex_weight_with_a_real_gram_keeps_its_imaginary_part(backend):
    """A complex layer fed real inputs: a real Gram matrix is a valid Hermitian one, and
    the factors, the reported output error and rtol are those of the complex problem
    (the triangular solve used to run in float64 and dropped A's imaginary part)."""
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((48, 32)) + 1j * rng.standard_normal((48, 32))
    X = _anisotropic_inputs(200, 32)
    W, G = backend.asarray(W0), backend.asarray(X.T @ X)
    for options in ({"rank": 8}, {"rtol": 0.6}):
        f = factor(W, **options, gram=G, method="exact", ridge=0.0)
        ref = factor(W0, **options, gram=(X.T @ X).astype(np.complex128), method="exact", ridge=0.0)
        P = backend.to_numpy(f.B) @ backend.to_numpy(f.A)
        true = np.linalg.norm((W0 - P) @ X.T) / np.linalg.norm(W0 @ X.T)
        assert f.report.output_error == pytest.approx(true, rel=1e-6)
        assert f.report.rank == ref.report.rank and true == pytest.approx(ref.report.output_error, rel=1e-6)
        assert true <= options.get("rtol", 1.0)


def test_real_weight_with_complex_metric_is_a_type_error():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((12, 10))
    X = rng.standard_normal((40, 10)) + 1j * rng.standard_normal((40, 10))
    G = X.T @ X.conj()
    for kwargs, words in (({"gram": G}, "gram is complex"), ({"output_gram": np.eye(12) + 0j, "gram": np.eye(10)},
                                                                "output_gram is complex"),
                          ({"whitening": metric((12, 10), gram=G)}, "whitening.L is complex")):
        with pytest.raises(TypeError, match=words):
            factor(W, rank=3, **kwargs)
    with pytest.raises(TypeError, match=r"folds\[1\] is complex"):
        summarize(W, folds=[np.eye(10), G])


def test_rank_deficient_weights_report_an_optimal_error():
    """sigma_(r+1) of a matrix of rank <= r is rounding; so is the residual: their ratio
    was reported (1e109 for a matrix of ones at rank 8), not 1."""
    rng = np.random.default_rng(0)
    low = rng.standard_normal((64, 3)) @ rng.standard_normal((3, 48))
    for W in (np.ones((64, 48)), low):
        for method in ("rsi", "rsvd", "krylov"):
            f = factor(W, rank=5, method=method, rng=0)
            assert np.linalg.norm(W - f.B @ f.A, 2) <= 1e-12 * np.linalg.norm(W, 2)
            assert f.report.normalized_error == 1.0


def test_degenerate_weights():
    f = factor(np.zeros((30, 20)), rank=3, rng=0)
    np.testing.assert_array_equal(f.B @ f.A, np.zeros((30, 20)))
    assert f.report.relative_error == 0.0
    z = factor(np.zeros((30, 20)), rtol=0.1, rng=0)
    assert z.report.rank == 1 and np.all(z.B @ z.A == 0)
    W, s = _weight()
    g = factor(W, rank=5, gram=np.zeros((40, 40)), rng=0)  # zero inputs: identity metric, plain
    assert np.linalg.norm(W - g.B @ g.A, 2) <= 1.1 * s[5]
    for scale in (1e-150, 1e150):
        h = factor(W * scale, rank=5, rng=0)
        assert np.linalg.norm(W * scale - h.B @ h.A, 2) <= 1.1 * s[5] * scale
    for scale in (1e-165, 1e160):  # squares leave float64: relative error was reported 0 / NaN
        for kwargs in ({}, {"gram": 3 * np.eye(W.shape[1])}):
            h = factor(W * scale, rank=5, rng=0, **kwargs)
            true = np.linalg.norm((W * scale - h.B @ h.A) / scale) / np.linalg.norm(W)
            assert h.report.relative_error == pytest.approx(true, rel=1e-10)


def test_whitener_ridge_makes_rank_deficient_gram_factorable():
    X = np.random.default_rng(0).standard_normal((3, 10))
    G = X.T @ X  # rank 3
    L = whitener(G)
    np.testing.assert_allclose(L @ L.T, G + 1e-6 * np.trace(G) / 10 * np.eye(10), rtol=1e-10, atol=1e-12)
    assert np.all(np.tril(L) == L)


# ----------------------------------------------------------------------------------
# many weights: budgets and reports
# ----------------------------------------------------------------------------------


def _summary(name, shape, s):
    return LayerSummary(name, shape, np.asarray(s, dtype=float) ** 2, float(np.sum(np.asarray(s) ** 2)), "weight")


def test_greedy_allocation_is_optimal_on_separable_objectives():
    rng = np.random.default_rng(3)
    shapes = [(12, 8), (10, 10), (16, 6)]
    sums = [_summary(f"l{i}", sh, np.sort(rng.random(min(sh)))[::-1] * (i + 1)) for i, sh in enumerate(shapes)]
    budget = 150
    ranks = allocate(sums, budget, weights="absolute")
    spent = allocation_params(ranks, {s.name: s.shape for s in sums})
    assert spent <= budget

    def err(rs):
        return sum(s.squared_tail(r) if saves_parameters(s.shape, r) else 0.0 for s, r in zip(sums, rs, strict=True))

    best = min((err(rs), rs) for rs in itertools.product(*[range(1, min(s.shape) + 1) for s in sums])
               if sum(parameter_count(s.shape, r) for s, r in zip(sums, rs, strict=True)) <= budget)
    got = err([ranks[s.name] for s in sums])
    step = max(float(s.gains[0]) for s in sums)  # greedy is optimal up to the last incomplete step
    assert got <= best[0] + step


def test_allocation_never_overspends_when_the_tail_beyond_the_cap_is_heavier():
    """A summary's flat tail beyond its cap can exceed its last gain (a cap that
    underestimates a flat spectrum, a rising error curve): the budget still holds."""
    rng = np.random.default_rng(0)
    cases = [[LayerSummary("a", (20, 30), np.array([4.0, 2.0, 1.0]), 50.0, "weight")],
             [LayerSummary.from_errors("a", (20, 30), [1.0, 2.0, 3.0])]]
    for _ in range(20):
        cases.append([LayerSummary(f"l{i}", (int(rng.integers(8, 40)), int(rng.integers(8, 40))),
                                   np.sort(rng.random(3))[::-1], float(rng.uniform(1, 30)), "weight")
                      for i in range(3)])
    for sums in cases:
        shapes = {s.name: s.shape for s in sums}
        for budget in (0.3, 0.6, 0.9):
            ranks = allocate(sums, budget)
            assert allocation_params(ranks, shapes) <= resolve_budget(budget, shapes)
    for gains, total in (([1.0, np.nan], 3.0), ([1.0, 0.5], np.inf), ([1.0, -1.0], 3.0)):  # were accepted
        with pytest.raises(ValueError, match="summary 'a' must have finite gains"):
            allocate([LayerSummary("a", (20, 30), np.array(gains), total, "weight")], 150)
    # through the public path: error curves shorter than the ranks the budget reaches
    Ws = {"a": rng.standard_normal((100, 100)), "b": rng.standard_normal((100, 100))}
    errors = {"a": np.array([10.0, 9.9, 9.85]), "b": np.array([10.0, 9.9, 9.85])}
    _, rep = compress_weights(Ws, budget=4000, errors=errors, rng=0)
    assert rep.params_after <= 4000


def test_budget_beats_uniform_on_summed_error_at_equal_parameters():
    rng = np.random.default_rng(0)
    weights = {}
    for i, (shape, decay) in enumerate([((64, 48), 2.0), ((48, 48), 0.2), ((80, 40), 1.0), ((40, 64), 0.5)]):
        weights[f"l{i}"] = matrix(*shape, spectrum="polynomial", decay=decay, rng=i)[0] * rng.uniform(0.5, 2)
    shapes = {n: w.shape for n, w in weights.items()}
    for alpha in (0.2, 0.4):
        uni = uniform_ranks(shapes, alpha)
        budget = allocation_params(uni, shapes)
        _, rep_u = compress_weights(weights, rank_fraction=alpha, method="exact")
        _, rep_b = compress_weights(weights, budget=budget, method="exact")
        assert rep_b.params_after <= budget
        rel = lambda rep: sum(r.relative_error ** 2 for r in rep)  # noqa: E731 - the objective greedy minimises
        assert rel(rep_b) < rel(rep_u)


def test_budget_errors_and_fractions():
    shapes = {"a": (100, 100), "b": (50, 200)}
    assert resolve_budget(0.5, shapes) == 10000
    assert resolve_budget(1000, shapes) == 1000
    with pytest.raises(ValueError, match="one rank per layer"):
        resolve_budget(300, shapes)
    W = {n: np.random.default_rng(0).standard_normal(s) for n, s in shapes.items()}
    with pytest.raises(ValueError, match="one rank per layer"):
        compress_weights(W, budget=100)
    assert compress_weights({}, budget=0.5)[1].params_after == 0  # was "budget must be ... >= 1, got 0"
    # a callable allocation is held to the budget and must rank every layer (was: overspent, KeyError)
    for alloc, words in ((lambda s, b: {"a": 60, "b": 40}, "over the budget"), (lambda s, b: {"a": 2}, "for 'b'"),
                         ("best", "allocation must be")):
        with pytest.raises(ValueError, match=words):
            compress_weights(W, budget=0.3, allocation=alloc, rng=0)
    _, rep = compress_weights(W, budget=0.3, allocation=lambda s, b: {"a": 10, "b": 12}, rng=0)
    assert rep.ranks() == {"a": 10, "b": 12}
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="gram must be an array of the same library as W"):
        factor(W["a"], rank=3, gram=torch.eye(100, dtype=torch.float64))
    with pytest.raises(TypeError, match="gram must be an array, got list"):
        factor(W["a"], rank=3, gram=np.eye(100).tolist())
    factors, rep = compress_weights(W, budget=0.3, rng=0)
    assert rep.params_after <= 0.3 * rep.params_before
    for r in rep:  # the truncated factors' normalized error is estimated too
        true = np.linalg.norm(W[r.name] - factors[r.name].B @ factors[r.name].A, 2) / \
            np.linalg.svd(W[r.name], compute_uv=False)[r.rank]
        assert r.normalized_error == pytest.approx(true, rel=0.05)


def test_missing_gram_is_an_error_not_a_silent_plain_fallback():
    W = {"a": np.ones((4, 3)), "b": np.ones((5, 3))}
    with pytest.raises(ValueError, match="'b'.*not factored plain"):
        compress_weights(W, rank=1, grams={"a": np.eye(3)})
    with pytest.raises(ValueError, match="output_grams"):
        compress_weights(W, rank=1, grams={"a": np.eye(3), "b": np.eye(3)}, output_grams={"a": np.eye(4)})


def test_summaries_and_cross_validated_gains():
    W, s = _weight(60, 40, decay=0.5)
    summ = summarize(W, cap=10, method="exact")
    np.testing.assert_allclose(summ.gains, s[:10] ** 2, rtol=1e-10)
    assert np.isclose(summ.total, np.sum(s**2)) and summ.squared_tail(10) == pytest.approx(np.sum(s[10:] ** 2))
    X1, X2 = _anisotropic_inputs(200, 40, seed=1), _anisotropic_inputs(200, 40, seed=2)
    folds = [X1.T @ X1, X2.T @ X2]
    cv = summarize(W, folds=folds, cap=None, method="exact")
    assert cv.folds == 2 and cv.units == "output"
    assert np.all(np.diff(cv.gains) <= 1e-12 * cv.gains[0])  # concave
    # held-out reference for fold 0 at rank 5: fit on fold 1, score on fold 0
    f = factor(W, rank=5, gram=folds[1], method="exact")
    held0 = np.linalg.norm((W - f.B @ f.A) @ X1.T) ** 2
    g = factor(W, rank=5, gram=folds[0], method="exact")
    held1 = np.linalg.norm((W - g.B @ g.A) @ X2.T) ** 2
    # the concave majorant lies on or below the curve of held-out errors
    assert cv.squared_tail(5) <= (held0 + held1) * (1 + 1e-6)


def test_report_renderings():
    W, _ = _weight()
    factors, rep = compress_weights({"a": W, "b": W[:6, :6]}, rank=4, rng=0)
    assert isinstance(rep, Report) and rep.ranks() == {"a": 4, "b": None} and factors["b"].B is None
    data = json.loads(rep.to_json())
    assert data["params_after"] == 400 + 36 and data["layers"][1]["factored"] is False
    md = rep.to_markdown().splitlines()
    assert len(md) == 2 + 2 + 1 and md[-1].startswith("| total")
    assert "a" in str(rep) and "Report(2 layers" in repr(rep)


# ----------------------------------------------------------------------------------
# many weights: same-shaped layers in stacked calls
# ----------------------------------------------------------------------------------


def _layers(dtype="float64"):
    """Mixed shapes and dtypes, same-shaped layers interleaved (as in a transformer)."""
    W = {}
    for i in range(3):
        W[f"b{i}.q"] = _weight(48, 40, decay=0.7, seed=10 * i)[0].astype(dtype)
        W[f"b{i}.up"] = _weight(40, 48, decay=0.7, seed=10 * i + 1)[0].astype(dtype)
        W[f"b{i}.k"] = _weight(48, 40, decay=0.7, seed=10 * i + 2)[0].astype(dtype)
    W["b0.k"] = W["b0.k"].astype("float32")  # same shape, other dtype: a group of its own
    W["head"] = _weight(10, 40, seed=99)[0].astype(dtype)
    return W


def _stacked_calls(monkeypatch):
    """Record the batch sizes of factor_many's stacked calls."""
    import randla.compress.group as group

    sizes, real = [], group._svd_at

    def spy(M, *args):
        sizes.append(M.shape[0])
        return real(M, *args)

    monkeypatch.setattr(group, "_svd_at", spy)
    return sizes


def test_factor_many_groups_same_shaped_layers_within_the_bound(backend, monkeypatch):
    W0 = _layers()
    sizes = _stacked_calls(monkeypatch)
    W = {n: backend.asarray(w) for n, w in W0.items()}
    grouped = factor_many(W, rank_fraction=0.25, rng=0)
    assert sorted(sizes) == ([] if backend.lazy else [3, 5])  # up; q and the float64 k (b0.k and head alone)
    single = factor_many(W, rank_fraction=0.25, rng=0, batch=False)
    assert list(grouped) == list(W0)
    for n, w in W0.items():
        g, o = grouped[n], single[n]
        assert g.report.rank == o.report.rank == select_rank(w.shape, rank_fraction=0.25)
        assert g.report.params_after == o.report.params_after
        assert type(g.B) is type(W[n]) and g.B.dtype == W[n].dtype and g.A.dtype == W[n].dtype
        s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
        k = g.report.rank
        for f in (g, o):
            err = np.linalg.norm(w - backend.to_numpy(f.B) @ backend.to_numpy(f.A), 2) / s[k]
            assert err <= 1.1
            if not backend.lazy:
                assert 0.95 <= f.report.normalized_error <= 1.25
        # both sketches see the same spectrum: equal singular values up to the bound's slack
        np.testing.assert_allclose(g.S[:k], s[:k], rtol=0.05)
        np.testing.assert_array_equal(backend.to_numpy(W[n]), w)  # input untouched


def test_factor_many_is_reproducible_and_exact_at_full_rank(monkeypatch):
    W = _layers()
    a = factor_many(W, rank=6, rng=0)
    b = factor_many(W, rank=6, rng=np.random.default_rng(0))
    for n in W:
        np.testing.assert_array_equal(a[n].B, b[n].B)
        np.testing.assert_array_equal(a[n].A, b[n].A)
    # exact SVD on stacks: the same truncation as layer by layer
    ex, one = factor_many(W, rank=6, method="exact"), factor_many(W, rank=6, method="exact", batch=False)
    for n, w in W.items():
        tol = 1e-4 if w.dtype == np.float32 else 1e-10
        np.testing.assert_allclose(ex[n].B @ ex[n].A, one[n].B @ one[n].A, atol=tol * np.linalg.norm(w))
        assert ex[n].report.relative_error == pytest.approx(one[n].report.relative_error, rel=1e-4)
    # weights of exact rank 4 are reproduced by the stacked randomized call
    rng = np.random.default_rng(1)
    low = {f"l{i}": rng.standard_normal((30, 4)) @ rng.standard_normal((4, 20)) for i in range(4)}
    sizes = _stacked_calls(monkeypatch)
    for n, f in factor_many(low, rank=4, rng=0).items():
        np.testing.assert_allclose(f.B @ f.A, low[n], atol=1e-10 * np.linalg.norm(low[n]))
    assert sizes == [4]


def test_factor_many_chunks_big_groups(monkeypatch):
    import randla.compress.group as group

    W = {f"l{i}": _weight(48, 40, seed=i)[0] for i in range(7)}
    sizes = _stacked_calls(monkeypatch)
    monkeypatch.setattr(group, "STACK_ENTRIES", 3 * 48 * 40)
    fs = factor_many(W, rank=8, rng=0)
    assert sizes == [3, 3]  # the seventh alone, by the per-layer path
    for n, w in W.items():
        assert np.linalg.norm(w - fs[n].B @ fs[n].A, 2) <= 1.1 * np.linalg.svd(w, compute_uv=False)[8]


def test_factor_many_whitened_matches_per_layer_within_the_bound(backend, monkeypatch):
    W0 = {n: w for n, w in _layers().items() if w.dtype == np.float64}
    X = {n: _anisotropic_inputs(300, w.shape[1], seed=i) for i, (n, w) in enumerate(W0.items())}
    grams0 = {n: x.T @ x for n, x in X.items()}
    W = {n: backend.asarray(w) for n, w in W0.items()}
    grams = {n: backend.asarray(g) for n, g in grams0.items()}
    sizes = _stacked_calls(monkeypatch)
    grouped = factor_many(W, rank=5, grams=grams, rng=0)
    single = factor_many(W, rank=5, grams=grams, rng=0, batch=False)
    assert sorted(sizes) == ([] if backend.lazy else [3, 5])
    for n, w in W0.items():
        L = np.linalg.cholesky(grams0[n] + 1e-6 * np.trace(grams0[n]) / w.shape[1] * np.eye(w.shape[1]))
        s = np.linalg.svd(w @ L, compute_uv=False)
        errs = []
        for f in (grouped[n], single[n]):
            assert f.report.units == "output" and f.report.rank == 5
            D = (w - backend.to_numpy(f.B) @ backend.to_numpy(f.A)) @ L
            errs.append(np.linalg.norm(D, 2) / s[5])
            assert f.report.output_error == pytest.approx(np.linalg.norm(D) / np.linalg.norm(w @ L), rel=1e-6)
        assert max(errs) <= 1.1


def test_factor_many_rtol_and_budget_ranks():
    W = _layers()
    a, b = factor_many(W, rtol=0.3, rng=0), factor_many(W, rtol=0.3, rng=0, batch=False)
    for n in W:  # rtol: one adaptive call per layer either way
        np.testing.assert_array_equal(a[n].B, b[n].B)
    # a budget factors every layer at its largest useful rank, stacked; exact spectra give equal ranks
    fa, ra = compress_weights(W, budget=0.4, method="exact")
    fb, rb = compress_weights(W, budget=0.4, method="exact", batch=False)
    assert ra.ranks() == rb.ranks() and ra.params_after <= 0.4 * ra.params_before
    for n in W:
        if fa[n].B is not None:
            assert fa[n].report.relative_error == pytest.approx(fb[n].report.relative_error, rel=1e-4)


@pytest.mark.parametrize("ridge, exc", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                        ("1e-3", TypeError), (None, TypeError)])
def test_bad_ridge_is_an_error_with_or_without_a_gram(ridge, exc):
    W, _ = _weight()
    G = np.eye(W.shape[1])
    for kw in ({}, {"gram": G}, {"whitening": metric(W.shape, gram=G)}):
        with pytest.raises(exc, match="ridge must be"):
            factor(W, rank=3, ridge=ridge, **kw)
    with pytest.raises(exc, match="ridge must be"):
        metric(W.shape, ridge=ridge)


def test_factor_many_errors_name_the_layer():
    W = {"a": np.ones((8, 6)), "b": np.full((8, 6), np.nan)}
    with pytest.raises(ValueError, match="layer 'b'.*finite"):
        factor_many(W, rank=2)
    with pytest.raises(ValueError, match="rank has no entry for layer 'b'"):
        factor_many({"a": np.ones((8, 6)), "b": np.ones((8, 6))}, rank={"a": 2})
    with pytest.raises(TypeError, match="batch must be a bool"):
        factor_many({"a": np.ones((8, 6))}, rank=2, batch=1)
    with pytest.raises(ValueError, match="grams has no entry for layer 'a'"):
        factor_many({"a": np.ones((8, 6))}, rank=2, grams={})


# ----------------------------------------------------------------------------------
# per-sample error curves
# ----------------------------------------------------------------------------------


def test_sample_errors_are_the_truncated_factorisations_per_sample_errors(backend):
    # E(r) from the directions equals sum_s (sum_t g_t^T (W - W_r) x_t)^2 with W_r the
    # two-sided factorisation at rank r (computed by factor, exact), for every r; with
    # folds, fold k's components are those of the factorisation fitted on gram - G_k
    rng = np.random.default_rng(3)
    out, inp, S, T = 12, 10, 6, 4
    rmax = max_saving_rank((out, inp))  # factor leaves the layer dense beyond
    W0 = rng.standard_normal((out, inp))
    X = rng.standard_normal((S, T, inp)) * np.logspace(0, -1, inp)
    Gr = rng.standard_normal((S, T, out))
    x2, g2 = X.reshape(-1, inp), Gr.reshape(-1, out)
    G, H = x2.T @ x2, g2.T @ g2
    halves = [X[0::2].reshape(-1, inp), X[1::2].reshape(-1, inp)]
    folds = [h.T @ h for h in halves]
    for fold_grams, groups in ((None, [np.arange(S)]), (folds, [np.arange(0, S, 2), np.arange(1, S, 2)])):
        pairs = truncation_directions(backend.asarray(W0), gram=backend.asarray(G), output_gram=backend.asarray(H),
                                      folds=None if fold_grams is None else [backend.asarray(f) for f in fold_grams],
                                      ridge=0.0)
        assert len(pairs) == len(groups)
        E = 0.0
        for (A, B_), idx in zip(pairs, groups, strict=True):
            A, B_ = backend.to_numpy(A), backend.to_numpy(B_)
            np.testing.assert_allclose(A @ B_.T, W0, atol=1e-9)
            d = np.einsum("stm,mk,stn,nk->sk", Gr[idx], A, X[idx], B_)  # sum_t (g_t^T a_i)(b_i^T x_t)
            E = E + sample_errors(backend.asarray(d))
        ref = np.zeros(rmax + 1)
        for r in range(rmax + 1):
            for k, idx in enumerate(groups):
                Gk = G if fold_grams is None else G - fold_grams[k]
                if r == 0:
                    Wr = np.zeros_like(W0)
                else:
                    f = factor(W0, rank=r, gram=Gk, output_gram=H, method="exact", ridge=0.0)
                    Wr = f.B @ f.A
                ref[r] += np.sum(np.einsum("stm,mn,stn->s", Gr[idx], W0 - Wr, X[idx]) ** 2)
        assert E.shape == (inp + 1,) and E[-1] == 0.0
        np.testing.assert_allclose(E[:rmax + 1], ref, rtol=1e-7, atol=1e-9 * ref[0])
    assert sample_errors(np.array([[1.0, 2.0], [3.0, -3.0]])).tolist() == [9.0, 13.0, 0.0]


def test_error_curves_summaries_and_budget():
    s = LayerSummary.from_errors("a", (8, 8), [10.0, 9.0, 3.0, 1.0, 0.0])
    np.testing.assert_allclose(s.gains, [3.5, 3.5, 2.0, 1.0])  # the concave majorant's slopes
    assert s.total == 10.0 and s.units == "loss"
    with pytest.raises(ValueError, match="errors"):
        LayerSummary.from_errors("a", (8, 8), [[1.0]])
    # compress_weights spends a budget on given curves: the layer whose curve falls gets the ranks
    rng = np.random.default_rng(0)
    W = {"a": rng.standard_normal((20, 20)), "b": rng.standard_normal((20, 20))}
    falls, flat = 100.0 * 0.5 ** np.arange(21), np.linspace(1.0, 0.0, 21)
    _, rep = compress_weights(W, budget=10 * 40, errors={"a": falls, "b": flat}, rng=0)
    assert rep.ranks()["a"] > rep.ranks()["b"]
    _, rep = compress_weights(W, budget=10 * 40, errors={"a": flat, "b": falls}, rng=0)
    assert rep.ranks()["a"] < rep.ranks()["b"]
    with pytest.raises(ValueError, match="errors has no curve for layer 'b'"):
        compress_weights(W, budget=10 * 40, errors={"a": flat}, rng=0)
    with pytest.raises(ValueError, match="output_gram is all zero"):
        truncation_directions(W["a"], gram=np.eye(20), output_gram=np.zeros((20, 20)))
