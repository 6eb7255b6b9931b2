"""randla.compress.prune: neuron pruning by an ID of activations (framework-free).

References: exact low-rank activations (duplicated neurons: the pruned network is the
original on any input), the bound ``||(Z - Z_C T) W2^T||_F <= ||Z - Z_C T||_F ||W2||_2``,
NumPy least squares for the plain ID's ``T``, and errors recomputed densely in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest

from randla.compress.prune import (
    RIDGE_GRID,
    Activations,
    PairReport,
    PruneReport,
    accumulate,
    neuron_count,
    prune_neurons,
    select_neurons,
)


def _relu(a):
    return np.maximum(a, 0.0)


def _silu(a):
    return a / (1.0 + np.exp(-a))


def _duplicated_mlp(distinct=6, copies=4, d_in=10, out=5, n=300, seed=0):
    """A ReLU MLP whose ``distinct * copies`` hidden neurons are positive multiples of
    ``distinct`` ones, so its activations have rank ``distinct`` on every input set."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((distinct, d_in))
    base_b = rng.standard_normal(distinct)
    scale = rng.uniform(0.5, 2.0, distinct * copies)
    perm = rng.permutation(distinct * copies)
    W1 = (np.repeat(base, copies, axis=0) * scale[:, None])[perm]
    b1 = (np.repeat(base_b, copies) * scale)[perm]
    W2 = rng.standard_normal((out, distinct * copies))
    b2 = rng.standard_normal(out)
    X = rng.standard_normal((n, d_in))
    return X, W1, b1, W2, b2


def _generic_mlp(h=40, d_in=12, out=6, n=400, seed=1):
    rng = np.random.default_rng(seed)
    W1 = rng.standard_normal((h, d_in)) / np.sqrt(d_in)
    b1 = 0.1 * rng.standard_normal(h)
    W2 = rng.standard_normal((out, h)) / np.sqrt(h)
    X = rng.standard_normal((n, d_in))
    return X, W1, b1, W2, rng.standard_normal(out)


def _np(backend, x):
    return np.asarray(backend.to_numpy(x))


# ----------------------------------------------------------------------------------
# exactness at the numerical rank, on every backend
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 3])
def test_exact_when_k_reaches_numerical_rank(backend, extra):
    X, W1, b1, W2, b2 = _duplicated_mlp()
    Z = _relu(X @ W1.T + b1)
    k = 6 + extra  # extra > 0: a rank-deficient skeleton, still exact
    args = [backend.asarray(a) for a in (Z, W1, b1, W2, b2)]
    p = prune_neurons(args[0], [(args[1], args[2])], args[3], b2=args[4], k=k)
    (W1p, b1p), = p.first
    W1p, b1p, W2p = _np(backend, W1p), _np(backend, b1p), _np(backend, p.W2)
    assert W1p.shape == (k, 10) and W2p.shape == (5, k)
    assert p.selection.ridge == 0.0  # cross-validation cannot beat an exact fit
    assert p.selection.error < 1e-10 and p.output_error < 1e-10
    # the pruned network is the original one on inputs it never saw
    Xn = np.random.default_rng(7).standard_normal((50, 10))
    np.testing.assert_allclose(_relu(Xn @ W1p.T + b1p) @ W2p.T, _relu(Xn @ W1.T + b1) @ W2.T, atol=1e-9)
    idx, T = _np(backend, p.selection.idx), _np(backend, p.selection.T)
    assert np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(T[:, idx], np.eye(k))
    np.testing.assert_array_equal(W1p, W1[idx])  # kept rows are exact copies


def test_exact_gated_mlp(backend):
    """down(silu(gate x) * up x): gate rows duplicated, up rows rescaled copies."""
    rng = np.random.default_rng(3)
    distinct, copies, d_in = 5, 3, 8
    src = rng.permutation(distinct * copies) % distinct
    Wg = rng.standard_normal((distinct, d_in))[src]
    Wu = rng.standard_normal((distinct, d_in))[src] * rng.uniform(0.5, 2.0, (distinct * copies, 1))
    Wd = rng.standard_normal((4, distinct * copies))
    X = rng.standard_normal((200, d_in))
    Z = _silu(X @ Wg.T) * (X @ Wu.T)
    to = backend.asarray
    p = prune_neurons(to(Z), [(to(Wg), None), (to(Wu), None)], to(Wd), keep_fraction=1 / 3)
    (Wgp, bg), (Wup, bu) = p.first
    assert bg is None and bu is None
    Wgp, Wup, Wdp = (_np(backend, a) for a in (Wgp, Wup, p.W2))
    assert Wgp.shape == Wup.shape == (distinct, d_in) and Wdp.shape == (4, distinct)
    Xn = rng.standard_normal((40, d_in))
    np.testing.assert_allclose((_silu(Xn @ Wgp.T) * (Xn @ Wup.T)) @ Wdp.T,
                               (_silu(Xn @ Wg.T) * (Xn @ Wu.T)) @ Wd.T, atol=1e-9)


# ----------------------------------------------------------------------------------
# below the rank: the function is kept within the ID error
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ridge", ["gcv", 0.0, 0.3])
@pytest.mark.parametrize("method", ["cpqr", "srrqr", "randomized"])
def test_output_within_id_error_bound(backend, ridge, method):
    X, W1, b1, W2, b2 = _generic_mlp()
    Z = np.tanh(X @ W1.T + b1)
    to = backend.asarray
    p = prune_neurons(to(Z), [(to(W1), to(b1))], to(W2), b2=to(b2), k=15, method=method, ridge=ridge, rng=0)
    idx, T = _np(backend, p.selection.idx), _np(backend, p.selection.T)
    (W1p, b1p), = p.first
    Y = np.tanh(X @ W1.T + b1) @ W2.T + b2
    Yp = np.tanh(X @ _np(backend, W1p).T + _np(backend, b1p)) @ _np(backend, p.W2).T + b2
    E = Z - Z[:, idx] @ T
    bound = np.linalg.norm(E) * np.linalg.norm(W2, 2)
    assert 0 < np.linalg.norm(Y - Yp) <= bound * (1 + 1e-9)
    # reported errors are the dense ones
    np.testing.assert_allclose(p.selection.error, np.linalg.norm(E) / np.linalg.norm(Z), rtol=1e-8)
    np.testing.assert_allclose(p.output_error, np.linalg.norm(Y - Yp) / np.linalg.norm(Y), rtol=1e-7)
    if ridge == 0.3:
        assert p.selection.ridge == 0.3


def test_plain_id_is_the_least_squares_refit():
    """ridge=0: T[:, R] = Z_C^+ Z_R, so W2 T^T is the least-squares refit of W2 on Z_C."""
    X, W1, b1, W2, _ = _generic_mlp()
    Z = np.tanh(X @ W1.T + b1)
    sel = select_neurons(Z, 15, W2=W2, ridge=0.0)
    C = Z[:, sel.idx]
    refit = np.linalg.lstsq(C, Z @ W2.T, rcond=None)[0].T  # argmin ||C V^T - Z W2^T||
    np.testing.assert_allclose(W2 @ sel.T.T, refit, rtol=1e-8, atol=1e-10)
    # and its ID error is the smallest any T gives for this skeleton
    T_ls = np.linalg.lstsq(C, Z, rcond=None)[0]
    np.testing.assert_allclose(sel.error, np.linalg.norm(Z - C @ T_ls) / np.linalg.norm(Z), rtol=1e-10)
    # a ridge trades calibration error for smaller coefficients
    ridged = select_neurons(Z, 15, W2=W2, ridge=0.5)
    assert ridged.error > sel.error and np.linalg.norm(ridged.T) < np.linalg.norm(sel.T)
    np.testing.assert_array_equal(ridged.idx, sel.idx)


def test_gcv_ridge_helps_on_held_out_data():
    """Few rows per neuron: the least-squares T overfits, the cross-validated ridge does not."""
    rng = np.random.default_rng(5)
    h, d_in = 120, 30
    W1 = rng.standard_normal((h, d_in)) / np.sqrt(d_in)
    W2 = rng.standard_normal((8, h))
    cal, held = rng.standard_normal((150, d_in)), rng.standard_normal((2000, d_in))

    def held_out_error(sel):
        Zh = np.tanh(held @ W1.T)
        return np.linalg.norm((Zh - Zh[:, sel.idx] @ sel.T) @ W2.T)

    Zc = np.tanh(cal @ W1.T)
    errors = [held_out_error(select_neurons(Zc, 60, W2=W2, ridge=mu)) for mu in RIDGE_GRID]
    gcv = select_neurons(Zc, 60, W2=W2)
    assert gcv.ridge > 0
    assert held_out_error(gcv) < 0.95 * errors[0]  # plain ID
    assert held_out_error(gcv) <= 1.01 * min(errors)  # as good as the best ridge in hindsight


def test_rtol_mode():
    X, W1, b1, W2, _ = _generic_mlp(h=60)
    Z = np.tanh(X @ W1.T + b1)
    loose, tight = (select_neurons(Z, rtol=r, ridge=0.0) for r in (0.3, 0.05))
    assert loose.error <= 0.3 and tight.error <= 0.05
    assert len(loose.idx) < len(tight.idx) < 60


# ----------------------------------------------------------------------------------
# streaming, degenerate input, dtypes
# ----------------------------------------------------------------------------------


def test_accumulate_matches_one_shot(backend):
    X, W1, b1, W2, b2 = _generic_mlp(h=30, n=500)
    Z = np.tanh(X @ W1.T + b1)
    acc = None
    for part in np.array_split(Z, 7):
        acc = accumulate(acc, backend.asarray(part))
    assert isinstance(acc, Activations) and acc.count == 500 and acc.M.shape[0] <= 60
    M = _np(backend, acc.M)
    np.testing.assert_allclose(M.T @ M, Z.T @ Z, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(_np(backend, acc.total), Z.sum(0), rtol=1e-12)
    to = backend.asarray
    once = prune_neurons(Z, [(W1, b1)], W2, b2=b2, k=12)
    streamed = prune_neurons(acc, [(to(W1), to(b1))], to(W2), b2=to(b2), k=12)
    np.testing.assert_array_equal(_np(backend, streamed.selection.idx), once.selection.idx)
    np.testing.assert_allclose(_np(backend, streamed.W2), once.W2, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(streamed.output_error, once.output_error, rtol=1e-7)
    np.testing.assert_allclose(streamed.selection.error, once.selection.error, rtol=1e-7)


def test_keep_everything_and_zero_activations(backend):
    X, W1, b1, W2, b2 = _generic_mlp(h=20)
    Z = np.tanh(X @ W1.T + b1)
    to = backend.asarray
    p = prune_neurons(to(Z), [(to(W1), to(b1))], to(W2), keep_fraction=1.0)
    np.testing.assert_array_equal(_np(backend, p.selection.T), np.eye(20))
    np.testing.assert_array_equal(_np(backend, p.W2), W2)
    assert p.selection.error == 0.0 and p.output_error == 0.0
    dead = select_neurons(to(np.zeros((50, 20))), 5)
    T = _np(backend, dead.T)
    assert dead.error == 0.0 and np.all(np.isfinite(T))
    np.testing.assert_array_equal(T[:, _np(backend, dead.idx)], np.eye(5))


def test_float32_stays_float32(backend):
    X, W1, b1, W2, b2 = _generic_mlp()
    Z = np.tanh(X @ W1.T + b1)
    to = backend.asarray
    p = prune_neurons(to(Z.astype(np.float32)), [(to(W1.astype(np.float32)), to(b1.astype(np.float32)))],
                      to(W2.astype(np.float32)), k=20)
    (W1p, b1p), = p.first
    for a in (W1p, b1p, p.W2, p.selection.T):
        assert a.dtype == backend.xp.float32
    ref = prune_neurons(Z, [(W1, b1)], W2, k=20)
    np.testing.assert_allclose(_np(backend, p.W2), ref.W2, rtol=1e-3, atol=1e-4)


def test_bfloat16_weights_stay_bfloat16():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    X, W1, b1, W2, _ = _generic_mlp()
    Z = np.tanh(X @ W1.T + b1).astype(np.float32)
    bf = ml_dtypes.bfloat16
    p = prune_neurons(Z, [(W1.astype(bf), b1.astype(bf))], W2.astype(bf), k=20)
    assert p.W2.dtype == bf and p.first[0][0].dtype == bf
    ref = prune_neurons(Z, [(W1.astype(bf).astype(np.float32), b1)], W2.astype(bf).astype(np.float32), k=20)
    np.testing.assert_allclose(p.W2.astype(np.float32), ref.W2, rtol=1e-2, atol=1e-2)


# ----------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------


def test_size_options():
    assert neuron_count(1536, keep_fraction=0.25) == ("k", 384)
    assert neuron_count(100, keep_fraction=0.29) == ("k", 29)  # no round-off loss
    assert neuron_count(10, keep_fraction=0.01) == ("k", 1)
    with pytest.raises(TypeError, match="exactly one of k, keep_fraction, rtol; got none"):
        neuron_count(10)
    with pytest.raises(TypeError, match="got k and keep_fraction"):
        neuron_count(10, k=3, keep_fraction=0.5)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="keep_fraction must be in"):
            neuron_count(10, keep_fraction=bad)
    with pytest.raises(ValueError, match="k must satisfy"):
        neuron_count(10, k=11)
    with pytest.raises(TypeError, match="k must be an int"):
        neuron_count(10, k=2.0)
    with pytest.raises(ValueError, match="rtol"):
        neuron_count(10, rtol=1.0)


def test_bad_arguments():
    X, W1, b1, W2, b2 = _generic_mlp(h=20, n=30)
    Z = np.tanh(X @ W1.T + b1)
    with pytest.raises(ValueError, match="not Linear -> elementwise -> Linear"):
        prune_neurons(Z, [(W1, b1)], W2[:, :19], k=5)
    with pytest.raises(ValueError, match=r"first\[0\] weight must have h = 20 rows"):
        prune_neurons(Z, [(W1[:19], b1)], W2, k=5)
    with pytest.raises(ValueError, match=r"first\[0\] bias must have shape \(20,\)"):
        prune_neurons(Z, [(W1, b1[:3])], W2, k=5)
    with pytest.raises(TypeError, match=r"first\[0\] must be a pair"):
        prune_neurons(Z, [W1], W2, k=5)
    with pytest.raises(ValueError, match="b2 must have shape"):
        prune_neurons(Z, [(W1, b1)], W2, b2=b2[:2], k=5)
    with pytest.raises(ValueError, match="needs at least 15 calibration rows, got 10"):
        select_neurons(Z[:10], 15)
    with pytest.raises(ValueError, match="ridge must be"):
        select_neurons(Z, 5, ridge="loo")
    with pytest.raises(ValueError, match="ridge must be"):
        select_neurons(Z, 5, ridge=-1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        select_neurons(Z, 5, method="qr")
    with pytest.raises(ValueError, match="W2 must have h = 20 columns"):
        select_neurons(Z, 5, W2=W2[:, :3])
    with pytest.raises(ValueError, match="NaN or Inf$"):  # no check_finite option to suggest here
        select_neurons(np.full((5, 4), np.nan), 2)


def test_report():
    rep = PruneReport([PairReport("a -> b", 100, 50, 0.1, 0.05, 0.0, 1.0),
                       PairReport("c -> d", 100, 25, 0.2, 0.1, 0.1, 2.0)])
    assert rep.width_before == 200 and rep.width_after == 75 and rep.keep_fraction == 0.375
    assert rep.seconds == 3.0 and rep.to_dicts()[1]["name"] == "c -> d"
    text = str(rep)
    assert text.splitlines()[-1].startswith("total") and "75" in text.splitlines()[-1]


# ----------------------------------------------------------------------------------
# complex data, the interpolating edge of the ridge choice, extreme scales
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ridge", ["gcv", 0.0])
def test_complex_layers_get_w2_t_transposed_not_conjugated(ridge):
    """The output is ``Z W2^T``: the pruned second layer is ``W2 T^T``, and the reported
    output error is the true one (was ``W2 T^H``: true error 0.8, reported 4e-16)."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 5)) + 1j * rng.standard_normal((4, 5))
    W1 = np.repeat(base, 3, axis=0)
    X = rng.standard_normal((80, 5))
    Z = (X @ W1.T) * (rng.uniform(0.5, 2, 12) * np.exp(1j * rng.uniform(0, 6.28, 12)))  # rank 4
    W2 = rng.standard_normal((3, 12)) + 1j * rng.standard_normal((3, 12))
    b2 = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    Y = Z @ W2.T + b2
    for k in (4, 3):
        p = prune_neurons(Z, [(W1, None)], W2, b2=b2, k=k, ridge=ridge)
        idx = np.asarray(p.selection.idx)
        true = np.linalg.norm(Z[:, idx] @ p.W2.T + b2 - Y) / np.linalg.norm(Y)
        assert p.output_error == pytest.approx(true, rel=1e-9, abs=1e-12)
        if k == 4:
            assert true < 1e-12
    with pytest.raises(TypeError, match="W2 is real"):
        prune_neurons(Z, [(W1, None)], W2.real, k=4)


def test_gcv_keeps_the_plain_id_when_the_skeleton_interpolates_the_rows():
    """As many calibration rows as kept neurons: nothing to cross-validate, so the
    plain ID (exact here, the activations have rank k on every input) and not a ridge."""
    X, W1, b1, W2, b2 = _duplicated_mlp(distinct=6, copies=4)
    p = prune_neurons(_relu(X[:6] @ W1.T + b1), [(W1, b1)], W2, k=6)
    (W1p, b1p), = p.first
    Xn = X[6:]
    Y = _relu(Xn @ W1.T + b1) @ W2.T
    assert p.selection.ridge == 0.0
    assert np.linalg.norm(_relu(Xn @ W1p.T + b1p) @ p.W2.T - Y) <= 1e-10 * np.linalg.norm(Y)


@pytest.mark.parametrize("dtype, scales", [("float32", (1e-20, 1e-25, 1e17)), ("float64", (1e-170, 1e160))])
def test_pruning_is_the_same_at_any_scale(dtype, scales):
    """Scaling the activations or W2 by any factor changes nothing but the scale: the same
    skeleton, ridge and relative errors (the error sums squared tiny or huge entries:
    errors reported 0 or NaN, a different ridge, an overflow warning)."""
    X, W1, b1, W2, b2 = _generic_mlp()
    Z = _relu(X @ W1.T + b1).astype(dtype)
    W2, b2 = W2.astype(dtype), b2.astype(dtype)
    ref = prune_neurons(Z, [(W1, b1)], W2, b2=b2, k=12)
    for s in scales:
        for Zs, W2s, b2s in ((Z * _scalar(s, dtype), W2, b2 * _scalar(s, dtype)),
                             (Z, W2 * _scalar(s, dtype), b2 * _scalar(s, dtype))):
            p = prune_neurons(Zs, [(W1, b1)], W2s, b2=b2s, k=12)
            np.testing.assert_array_equal(np.asarray(p.selection.idx), np.asarray(ref.selection.idx))
            assert p.selection.ridge == ref.selection.ridge
            assert p.selection.error == pytest.approx(ref.selection.error, rel=1e-4)
            assert p.output_error == pytest.approx(ref.output_error, rel=1e-4)


def test_float32_activations_whose_column_sums_overflow_float32(backend):
    """float32 activations near 1e36 (each finite, 400 rows): the column sums for the
    bias term overflowed float32, and the output error came out 0.0 from the raw
    activations and from :func:`accumulate`, whose ``total`` was Inf."""
    X, W1, b1, W2, b2 = _generic_mlp()
    Z = _relu(X @ W1.T + b1).astype(np.float32)
    W2, b2 = W2.astype(np.float32), b2.astype(np.float32)
    c = np.float32(2.0**120)  # 1.3e36
    to = backend.asarray
    ref = prune_neurons(Z, [(W1, b1)], W2, b2=b2, k=12)
    acc = accumulate(accumulate(None, to(Z[:200] * c)), to(Z[200:] * c))
    assert np.isfinite(_np(backend, acc.total)).all()
    for Zc in (to(Z * c), acc):
        p = prune_neurons(Zc, [(to(W1), to(b1))], to(W2), b2=to(b2 * c), k=12)
        assert p.output_error == pytest.approx(ref.output_error, rel=1e-4)


def _scalar(s, dtype):
    return np.asarray(s, dtype=dtype)
