"""Error-corrected factors (randla.compress.correct) against direct least squares."""

from __future__ import annotations

import math

import numpy as np
import pytest

from randla.compress import factor
from randla.compress.correct import TransferStats, corrected_weight, fit_corrected, transfer_error


def _inputs(n=1500, d=24, seed=0, noise=0.3):
    """Original inputs ``X`` (anisotropic, non-zero mean) and a perturbed copy ``Xt``, as a
    compressed upstream would give: mixed, shifted and noisy."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)) * np.logspace(0, -1.5, d) + 0.5
    mix = np.eye(d) + noise * rng.standard_normal((d, d)) / np.sqrt(d)
    Xt = X @ mix + 0.05 * rng.standard_normal((n, d)) + 0.1
    return X, Xt


def _stats(Xt, X, xp=np.asarray):
    return TransferStats(xp(Xt.T @ Xt), xp(Xt.T @ X), xp(X.T @ X), xp(Xt.sum(0)), xp(X.sum(0)), len(X))


def test_corrected_weight_is_the_ridge_least_squares_solution(backend):
    X, Xt = _inputs()
    W = np.random.default_rng(1).standard_normal((10, X.shape[1]))
    for lam in (1e-3, 0.1, 3.0):
        mu = lam * np.trace(Xt.T @ Xt) / X.shape[1]
        # reference: the stacked least-squares problem [Xt; sqrt(mu) I] M^T = [X W^T; sqrt(mu) W^T]
        lhs = np.vstack([Xt, np.sqrt(mu) * np.eye(X.shape[1])])
        rhs = np.vstack([X @ W.T, np.sqrt(mu) * W.T])
        ref = np.linalg.lstsq(lhs, rhs, rcond=None)[0].T
        M = corrected_weight(backend.asarray(W), _stats(Xt, X, backend.asarray), shrinkage=lam)
        assert type(M) is type(backend.asarray(W))
        np.testing.assert_allclose(backend.to_numpy(M), ref, rtol=1e-8, atol=1e-10)
    assert corrected_weight(W, _stats(Xt, X), shrinkage=math.inf) is W


def test_transfer_error_matches_the_direct_norm(backend):
    X, Xt = _inputs(n=300, d=8)
    rng = np.random.default_rng(2)
    W, P, d = rng.standard_normal((5, 8)), rng.standard_normal((5, 8)), rng.standard_normal(5)
    s = _stats(Xt, X, backend.asarray)
    direct = np.linalg.norm(X @ W.T - Xt @ P.T - d) ** 2
    assert np.isclose(transfer_error(backend.asarray(W), backend.asarray(P), s, shift=backend.asarray(d)), direct,
                      rtol=1e-10)
    assert np.isclose(transfer_error(backend.asarray(W), backend.asarray(P), s),
                      np.linalg.norm(X @ W.T - Xt @ P.T) ** 2, rtol=1e-10)


def test_complex_transfer_error_and_correction():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((400, 6)) + 1j * rng.standard_normal((400, 6))
    Xt = X @ (np.eye(6) + 0.2 * rng.standard_normal((6, 6))) + 0.05 * rng.standard_normal((400, 6))
    W = rng.standard_normal((4, 6)) + 1j * rng.standard_normal((4, 6))
    s = TransferStats(Xt.conj().T @ Xt, Xt.conj().T @ X, X.conj().T @ X, Xt.sum(0), X.sum(0), 400)
    P = rng.standard_normal((4, 6)) + 1j * rng.standard_normal((4, 6))
    assert np.isclose(transfer_error(W, P, s), np.linalg.norm(X @ W.T - Xt @ P.T) ** 2)
    M = corrected_weight(W, s, shrinkage=1e-12)
    np.testing.assert_allclose(M.T, np.linalg.lstsq(Xt, X @ W.T, rcond=None)[0], atol=1e-8)


def test_fit_corrected_with_unchanged_inputs_is_the_whitened_factorisation():
    X, _ = _inputs()
    W = np.random.default_rng(4).standard_normal((30, X.shape[1]))
    s = _stats(X, X)
    fc = fit_corrected(W, s, shrinkage=0.1, rank=6, method="exact", bias=False)
    fw = factor(W, rank=6, gram=X.T @ X, method="exact")
    np.testing.assert_allclose(fc.B @ fc.A, fw.B @ fw.A, rtol=1e-7, atol=1e-9)
    assert np.isclose(fc.report.output_error, np.linalg.norm((W - fc.B @ fc.A) @ X.T) / np.linalg.norm(W @ X.T))


@pytest.mark.parametrize("seed", range(3))
def test_fit_corrected_beats_the_uncorrected_fit_on_held_out_data(seed):
    X, Xt = _inputs(n=4000, seed=seed)
    W = np.random.default_rng(seed + 10).standard_normal((30, X.shape[1]))
    fit, held = slice(0, 3000), slice(3000, None)
    folds = [_stats(Xt[fit][i::2], X[fit][i::2]) for i in range(2)]
    s = folds[0] + folds[1]
    fc = fit_corrected(W, s, folds=folds, rank=8, method="exact", rng=0)
    fw = factor(W, rank=8, gram=X[fit].T @ X[fit], method="exact")
    test = _stats(Xt[held], X[held])
    corrected = transfer_error(W, fc.B @ fc.A, test, shift=fc.shift)
    uncorrected = transfer_error(W, fw.B @ fw.A, test)
    assert corrected < 0.8 * uncorrected
    assert set(fc.errors) == {0.003, 0.01, 0.03, 0.1, 0.3, 1.0, math.inf}
    assert fc.errors[fc.shrinkage] == min(fc.errors.values())
    # the chosen ridge scores at least as well held out as leaving W uncorrected
    assert fc.errors[fc.shrinkage] <= fc.errors[math.inf]


def test_bias_shift_removes_the_mean_error():
    X, Xt = _inputs()
    W = np.random.default_rng(5).standard_normal((12, X.shape[1]))
    fc = fit_corrected(W, _stats(Xt, X), shrinkage=0.1, rank=4, rng=0)
    residual = X @ W.T - Xt @ (fc.B @ fc.A).T - fc.shift
    np.testing.assert_allclose(residual.mean(0), 0.0, atol=1e-9 * np.abs(X @ W.T).max())
    assert fit_corrected(W, _stats(Xt, X), shrinkage=0.1, rank=4, rng=0, bias=False).shift is None


def test_fit_corrected_is_reproducible_and_leaves_inputs_alone():
    X, Xt = _inputs()
    W = np.random.default_rng(6).standard_normal((30, X.shape[1]))
    s = _stats(Xt, X)
    copies = [np.copy(a) for a in s[:5]]
    W0 = W.copy()
    a = fit_corrected(W, s, shrinkage=0.1, rank=5, rng=7)
    b = fit_corrected(W, s, shrinkage=0.1, rank=5, rng=7)
    np.testing.assert_array_equal(a.B, b.B)
    np.testing.assert_array_equal(W, W0)
    for c, v in zip(copies, s[:5], strict=True):
        np.testing.assert_array_equal(c, v)


def test_a_layer_that_would_not_save_stays_dense():
    X, Xt = _inputs(d=8)
    W = np.random.default_rng(7).standard_normal((8, 8))
    fc = fit_corrected(W, _stats(Xt, X), shrinkage=0.1, rank=4)
    assert fc.B is None and fc.A is None and fc.shift is None and fc.report.rank is None


def test_a_layer_left_dense_reports_its_error_on_the_compressed_inputs():
    """Left dense, the layer still reads X~: the report's output_error is that error, not 0."""
    X, Xt = _inputs(d=8)
    W = np.random.default_rng(7).standard_normal((8, 8))
    fc = fit_corrected(W, _stats(Xt, X), shrinkage=0.1, rank=4)
    true = np.linalg.norm(X @ W.T - Xt @ W.T) / np.linalg.norm(X @ W.T)
    assert fc.report.output_error == pytest.approx(true, rel=1e-8) and true > 0.05


def test_complex_weight_with_real_statistics(backend):
    """A complex layer fed real inputs: the statistics are widened to the weight's
    complex type (torch refused the mixed product)."""
    X, Xt = _inputs(d=12)
    rng = np.random.default_rng(3)
    W0 = rng.standard_normal((10, 12)) + 1j * rng.standard_normal((10, 12))
    fc = fit_corrected(backend.asarray(W0), _stats(Xt, X, backend.asarray), shrinkage=0.1, rank=3, bias=False)
    P = backend.to_numpy(fc.B) @ backend.to_numpy(fc.A)
    true = np.linalg.norm(X @ W0.T - Xt @ P.T) / np.linalg.norm(X @ W0.T)
    assert fc.report.output_error == pytest.approx(true, rel=1e-5)
    ref = fit_corrected(W0, _stats(Xt.astype(complex), X.astype(complex)), shrinkage=0.1, rank=3, bias=False)
    assert true == pytest.approx(ref.report.output_error, rel=1e-5)


def test_bad_statistics_are_errors_naming_them():
    X, Xt = _inputs(d=8)
    W = np.ones((4, 8))
    good = _stats(Xt, X)
    nan = good._replace(gram=np.full((8, 8), np.nan))
    for stats, exc, words in ((_stats(Xt[:, :3], X[:, :3]), ValueError, r"stats.gram must have shape \(8, 8\)"),
                              (nan, ValueError, "stats.gram has NaN"),
                              ((1, 2, 3), TypeError, "TransferStats"),
                              (good._replace(cross=good.cross + 1j), TypeError, "stats.cross is complex")):
        with pytest.raises(exc, match=words):
            fit_corrected(W, stats, shrinkage=0.1, rank=1)
    with pytest.raises(ValueError, match="folds\\[0\\].gram must have shape"):
        fit_corrected(W, good, folds=[_stats(Xt[:, :3], X[:, :3])], shrinkage=(0.1, 1.0), rank=1)
    with pytest.raises(ValueError, match="shift needs stats.total"):
        transfer_error(W, W, good._replace(total=None), shift=np.ones(4))
    assert fit_corrected(W, good, shrinkage=np.float32(0.1), rank=1).shrinkage == pytest.approx(0.1)


@pytest.mark.parametrize("bad", [0.0, -1.0, (), (0.1, 0.0), True, None])
def test_bad_shrinkage_is_an_error(bad):
    X, Xt = _inputs(d=8)
    W = np.ones((4, 8))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_corrected(W, _stats(Xt, X), shrinkage=bad, rank=1)


def test_several_shrinkages_need_folds():
    X, Xt = _inputs(d=8)
    with pytest.raises(ValueError, match="folds"):
        fit_corrected(np.ones((4, 8)), _stats(Xt, X), rank=1)
