"""Dask: lazy factors aligned with the input's chunks, one read of ``A`` per pass, a
small graph, on-disk input (Zarr, ``.npy`` memmap), and a real distributed cluster.

The generic accuracy tests run on Dask through the ``backend`` fixture; this module
checks what only Dask has. The cluster is a ``distributed.LocalCluster`` of worker
processes on the loopback interface with a memory limit per worker, started once for
the module and always closed.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import randla
from randla.testing import matrix

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")

K = 6


class CountingReads:
    """An array-like over a NumPy array that counts the chunk reads Dask makes."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim = a, a.shape, a.dtype, a.ndim
        self.reads = 0
        self._lock = threading.Lock()

    def __getitem__(self, idx):
        out = self.a[idx]
        if out.size:
            with self._lock:
                self.reads += 1
        return out


def _counted(A0, rows):
    src = CountingReads(A0)
    meta = np.empty((0, 0), dtype=A0.dtype)
    return src, da.from_array(src, chunks=(rows, A0.shape[1]), asarray=True, meta=meta)


def _projector_gap(U, U0):
    return np.abs(U @ U.conj().T - U0 @ U0.conj().T).max()


def _check_against_numpy(A0, res, k):
    """The Dask result spans what NumPy's does and has the same singular values."""
    U, S, Vh = (np.asarray(x) for x in res)
    U0, S0, Vh0 = randla.rsi(A0, k, q=1, rng=0)
    np.testing.assert_allclose(S, S0, rtol=1e-8)
    assert _projector_gap(U, U0) < 1e-6
    assert _projector_gap(Vh.conj().T, Vh0.conj().T) < 1e-6


# ----------------------------------------------------------------------------------
# laziness, chunks, passes, graph size (threaded scheduler)
# ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cols", [40, 80])  # 80: all columns in one chunk (the fused last pass)
@pytest.mark.parametrize("dtype", ["float32", "complex128"])
@pytest.mark.parametrize("method", ["rsi", "rsvd", "block_krylov_svd"])
def test_factors_are_lazy_and_chunk_aligned(method, dtype, cols):
    A0, s = matrix(120, 80, spectrum="exponential", decay=0.3, dtype=dtype, rng=0)
    A = da.from_array(A0, chunks=(30, cols))
    U, S, Vh = getattr(randla, method)(A, K, q=1, rng=0)
    assert all(isinstance(x, da.Array) for x in (U, S, Vh))
    assert U.chunks[0] == A.chunks[0] and Vh.chunks[1] == A.chunks[1]
    assert S.numblocks == (1,)
    U, S, Vh = dask.compute(U, S, Vh)
    assert U.dtype == A0.dtype and S.dtype == np.finfo(A0.dtype).dtype
    np.testing.assert_allclose(S, s[:K], rtol=100 * np.finfo(S.dtype).eps ** 0.75)


@pytest.mark.parametrize(("name", "passes"), [
    ("rsi_q1", 2), ("rsvd_q0", 1), ("rsvd_q2", 3), ("range_finder_q0", 1), ("range_finder_q1", 2),
    ("range_finder_q2", 3), ("block_krylov_q1", 2), ("block_krylov_q2", 3), ("rcpqr", 3)])
def test_one_read_of_A_per_pass(name, passes):
    """Each pass reads every chunk of ``A`` once: nothing is read twice within a pass,
    and no pass is recomputed (e.g. by a factorisation evaluated once per output)."""
    A0, _ = matrix(200, 60, spectrum="exponential", decay=0.2, rng=0)
    src, A = _counted(A0, 50)
    calls = {
        "rsi_q1": lambda: randla.rsi(A, K, q=1, rng=0),
        "rsvd_q0": lambda: randla.rsvd(A, K, rng=0),
        "rsvd_q2": lambda: randla.rsvd(A, K, q=2, rng=0),
        "range_finder_q0": lambda: (randla.range_finder(A, K, rng=0),),
        "range_finder_q1": lambda: (randla.range_finder(A, K, q=1, rng=0),),
        "range_finder_q2": lambda: (randla.range_finder(A, K, q=2, rng=0),),
        "block_krylov_q1": lambda: randla.block_krylov_svd(A, K, q=1, rng=0),
        "block_krylov_q2": lambda: randla.block_krylov_svd(A, K, q=2, rng=0),
        "rcpqr": lambda: randla.rcpqr(A, K, rng=0)[:2],
    }
    dask.compute(*calls[name]())
    assert src.reads == passes * A.numblocks[0]


def test_exact_svd_path_streams_a_matrix_chunked_both_ways():
    """A sketch this large a share of the matrix takes the exact SVD (solver="auto"); on
    a matrix chunked along both axes that is TSQR over row blocks, never one task
    holding all of A."""
    A0, s = matrix(400, 60, spectrum="exponential", decay=0.1, rng=0)
    A = da.from_array(A0, chunks=(50, 20))
    U, S, Vh = randla.rsi(A, 30, rng=0)  # l = 40 >= 0.6 * 60
    assert U.chunks[0] == A.chunks[0]
    names = {str(k[0] if isinstance(k, tuple) else k).rsplit("-", 1)[0] for k in dict(U.__dask_graph__())}
    assert any(n.startswith("qr") for n in names)  # TSQR over the row blocks, not an SVD of all of A
    U, S, Vh = dask.compute(U, S, Vh)
    np.testing.assert_allclose(S, s[:30], rtol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(A0 - (U * S) @ Vh, 2), s[30], rtol=1e-8)
    W, T, Zh = dask.compute(*randla.rsi(A.T, 30, rng=0))
    np.testing.assert_allclose(T, s[:30], rtol=1e-10)


@pytest.mark.parametrize("method", ["rsi", "block_krylov_svd"])
@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_chunk_tasks_use_numpys_own_lapack(monkeypatch, method, dtype):
    """Inside the graph every factorisation and product runs in NumPy's LAPACK and BLAS,
    as Dask's own linalg does: SciPy bundles a second BLAS thread pool, and the two
    fight over the cores under a threaded scheduler. Computed with SciPy's LAPACK and
    BLAS entry points made to fail, the result matches the NumPy one."""
    import scipy.linalg

    from randla import _backend

    A0, _ = matrix(240, 90, spectrum="exponential", decay=0.2, dtype=dtype, rng=0)
    U0, S0, Vh0 = getattr(randla, method)(A0, K, q=1, rng=0)
    res = getattr(randla, method)(da.from_array(A0, chunks=(60, 90)), K, q=1, rng=0)

    def scipy_called(*args, **kwargs):
        raise AssertionError("a SciPy LAPACK/BLAS call inside the Dask graph")

    for name in ("svd", "lu", "qr", "cholesky", "inv", "eigh", "solve_triangular"):
        monkeypatch.setattr(scipy.linalg, name, scipy_called)
    monkeypatch.setattr(scipy.linalg.blas, "get_blas_funcs", scipy_called)
    monkeypatch.setattr(scipy.linalg.lapack, "get_lapack_funcs", scipy_called)
    monkeypatch.setattr(_backend, "_blas_fn", scipy_called)
    U, S, Vh = dask.compute(*res, scheduler="threads")
    np.testing.assert_allclose(S, S0, rtol=1e-10)
    assert _projector_gap(U, U0) < 1e-6
    assert _projector_gap(Vh.conj().T, Vh0.conj().T) < 1e-6


def test_fixed_rank_calls_compute_nothing():
    A0, _ = matrix(200, 60, rng=0)
    src, A = _counted(A0, 50)
    randla.rsi(A, K, q=2, rng=0)
    randla.rsvd(A, K, rng=0)
    randla.block_krylov_svd(A, K, q=2, rng=0)
    randla.range_finder(A, K, q=2, rng=0)
    assert src.reads == 0


def _graph_size(*arrays):
    from dask.highlevelgraph import HighLevelGraph

    return len(dict(HighLevelGraph.merge(*[x.dask for x in dask.optimize(*arrays)])))


def test_graph_grows_like_dasks_own():
    """No per-chunk Python loop grows the graph: the tasks per row chunk are those of
    ``dask.array.linalg.svd_compressed`` (same passes, TSQR at the end) plus the
    stabilisers between passes."""
    A0, _ = matrix(960, 40, rng=0)
    ours, theirs = {}, {}
    for rows in (240, 60):
        A = da.from_array(A0, chunks=(rows, 40))
        ours[A.numblocks[0]] = _graph_size(*randla.rsi(A, K, q=1, rng=0))
        theirs[A.numblocks[0]] = _graph_size(*da.linalg.svd_compressed(A, K, n_power_iter=1, seed=0))
    per_chunk, per_chunk_dask = (ours[16] - ours[4]) / 12, (theirs[16] - theirs[4]) / 12
    assert per_chunk <= 1.5 * per_chunk_dask
    assert ours[4] <= 1.5 * theirs[4]


# the last power product and the projection in one pass (all columns in one chunk)

FUSED_SPECTRA = {
    # Y = A Z has condition ~1e7 (a Gram matrix of Y would square it past 1/eps)
    "exponential": dict(spectrum="exponential", decay=0.5),
    # sigma_(k+1) = 1e-9, Y numerically rank-deficient far below it (sigma_16 = 1e-22)
    "fast_exponential": dict(spectrum="exponential", decay=1.5),
    "low_rank": dict(spectrum="low_rank", rank=3),  # exact rank below k
    "step": dict(spectrum="step", rank=K),
    "polynomial": dict(spectrum="polynomial", decay=1.0),
}
# row chunks smaller than l = k + p = 16 first and last: the stacked R has no padding
SHORT_CHUNKS = ((10, 60, 60, 60, 10), (40,))


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "complex64"])
@pytest.mark.parametrize("spectrum", list(FUSED_SPECTRA))
@pytest.mark.parametrize("q", [0, 1, 2])
def test_fused_last_pass_against_exact_svd(spectrum, dtype, q):
    """One read of ``A_i`` gives ``A_i Z = Q_i R_i`` and ``Q_i^H A_i``: against NumPy's
    exact SVD, ``U`` is orthonormal to working precision, ``S`` and the error
    ``||A - U S Vh||_2`` are those of an explicit ``Q`` (within rounding of
    ``sigma_1``) on spectra where a Gram matrix of ``Y`` would square the condition."""
    A0, s = matrix(200, 40, dtype=dtype, rng=3, **FUSED_SPECTRA[spectrum])
    A = da.from_array(A0, chunks=SHORT_CHUNKS)
    U, S, Vh = dask.compute(*randla.rsvd(A, K, q=q, rng=0))
    eps = np.finfo(A0.dtype).eps
    assert U.dtype == A0.dtype and Vh.dtype == A0.dtype and S.dtype == np.finfo(A0.dtype).dtype
    U64, Vh64 = U.astype(np.complex128), Vh.astype(np.complex128)
    assert np.abs(U64.conj().T @ U64 - np.eye(K)).max() < 20 * eps
    assert np.abs(Vh64 @ Vh64.conj().T - np.eye(K)).max() < 20 * eps
    A64 = A0.astype(np.complex128)
    err = np.linalg.norm(A64 - (U64 * S) @ Vh64, 2)
    # the same call through an explicit Q (two column chunks: no fused pass)
    U1, S1, Vh1 = (x.astype(np.complex128) for x in dask.compute(*randla.rsvd(da.from_array(A0, chunks=(50, 20)),
                                                                               K, q=q, rng=0)))
    err1 = np.linalg.norm(A64 - (U1 * S1) @ Vh1, 2)
    assert err <= err1 + 100 * eps * s[0]
    np.testing.assert_allclose(S, S1.real, atol=100 * eps * s[0], rtol=10 * eps)
    if q > 0:  # against the exact SVD: a power iteration reaches sigma_(k+1)
        assert err <= 1.5 * s[K] + 100 * eps * s[0]


def _unfused(A0):
    """``A0`` in two column chunks: the separate passes (no fused pass)."""
    return da.from_array(A0, chunks=(50, 20))


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "complex64"])
@pytest.mark.parametrize("spectrum", list(FUSED_SPECTRA))
@pytest.mark.parametrize("q", [0, 1, 2])
def test_fused_range_finder_against_exact_svd(spectrum, dtype, q):
    """``range_finder`` in ``q + 1`` fused passes: ``Q`` orthonormal to working
    precision, and ``||A - Q Q^H A||_2`` that of the separate passes (within rounding
    of ``sigma_1``) and, with a power iteration, near ``sigma_(k+1)`` of NumPy's
    exact SVD."""
    A0, s = matrix(200, 40, dtype=dtype, rng=3, **FUSED_SPECTRA[spectrum])
    eps = np.finfo(A0.dtype).eps
    Q = randla.range_finder(da.from_array(A0, chunks=SHORT_CHUNKS), K, q=q, rng=0)
    assert Q.chunks[0] == SHORT_CHUNKS[0] and Q.shape == (200, K + 10)
    Q = Q.compute()
    assert Q.dtype == A0.dtype
    Q64, A64 = Q.astype(np.complex128), A0.astype(np.complex128)
    assert np.abs(Q64.conj().T @ Q64 - np.eye(Q.shape[1])).max() < 20 * eps
    err = np.linalg.norm(A64 - Q64 @ (Q64.conj().T @ A64), 2)
    Q1 = randla.range_finder(_unfused(A0), K, q=q, rng=0).compute().astype(np.complex128)
    err1 = np.linalg.norm(A64 - Q1 @ (Q1.conj().T @ A64), 2)
    assert err <= 2 * err1 + 100 * eps * s[0]
    if q > 0:
        assert err <= 1.5 * s[K] + 100 * eps * s[0]


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "complex64"])
@pytest.mark.parametrize("spectrum", list(FUSED_SPECTRA))
@pytest.mark.parametrize("q", [1, 2])
def test_fused_block_krylov_against_exact_svd(spectrum, dtype, q):
    """``block_krylov_svd`` in ``q + 1`` fused passes (pass ``j`` keeps ``orth(Y_j)``,
    the last projects ``A`` on all of them in the read that makes ``Y_q``): against
    NumPy's exact SVD, ``U`` and ``Vh`` orthonormal, ``S`` that of the separate passes,
    and the error near ``sigma_(k+1)``; chunks shorter than the Krylov space has
    columns included."""
    A0, s = matrix(200, 40, dtype=dtype, rng=3, **FUSED_SPECTRA[spectrum])
    eps = np.finfo(A0.dtype).eps
    res = randla.block_krylov_svd(da.from_array(A0, chunks=SHORT_CHUNKS), K, q=q, rng=0, solver="randomized")
    assert res.U.chunks[0] == SHORT_CHUNKS[0]
    U, S, Vh = dask.compute(*res)
    assert U.dtype == A0.dtype and Vh.dtype == A0.dtype and S.dtype == np.finfo(A0.dtype).dtype
    U64, Vh64, A64 = U.astype(np.complex128), Vh.astype(np.complex128), A0.astype(np.complex128)
    assert np.abs(U64.conj().T @ U64 - np.eye(K)).max() < 20 * eps
    assert np.abs(Vh64 @ Vh64.conj().T - np.eye(K)).max() < 20 * eps
    err = np.linalg.norm(A64 - (U64 * S) @ Vh64, 2)
    S1 = dask.compute(randla.block_krylov_svd(_unfused(A0), K, q=q, rng=0, solver="randomized").S)[0]
    np.testing.assert_allclose(S, S1, atol=100 * eps * s[0], rtol=10 * eps)
    assert err <= 1.2 * s[K] + 100 * eps * s[0]


def test_fused_block_krylov_matches_numpy_on_a_wide_space():
    """A Krylov space wider than some row chunks and than ``n`` has columns (``solver=
    "randomized"``): the result is NumPy's exact rank-``k`` SVD."""
    A0, s = matrix(300, 50, spectrum="exponential", decay=0.3, rng=1)
    U, S, Vh = dask.compute(*randla.block_krylov_svd(da.from_array(A0, chunks=((20, 130, 150), (50,))), K,
                                                    q=3, rng=0, solver="randomized"))
    np.testing.assert_allclose(S, s[:K], rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(A0 - (U * S) @ Vh, 2), s[K], rtol=1e-10)


@pytest.mark.parametrize("dtype", ["float64", "complex64"])
def test_fused_last_pass_zero_matrix(dtype):
    A = da.zeros((90, 30), chunks=(20, 30), dtype=dtype)
    U, S, Vh = dask.compute(*randla.rsi(A, K, q=1, rng=0))
    np.testing.assert_array_equal(S, 0)
    np.testing.assert_allclose(U.conj().T @ U, np.eye(K), atol=1e-6)
    U, S, Vh = dask.compute(*randla.block_krylov_svd(A, K, q=1, rng=0))
    np.testing.assert_array_equal(S, 0)
    np.testing.assert_allclose(U.conj().T @ U, np.eye(K), atol=1e-6)
    Q = randla.range_finder(A, K, q=1, rng=0).compute()
    np.testing.assert_allclose(Q.conj().T @ Q, np.eye(K + 10), atol=1e-6)


def test_fused_last_pass_is_one_task_per_chunk_and_pass():
    """The fused pass adds no pass-sized work: per row chunk one task reads ``A_i``
    (the product, its QR and the projection), and the factor ``U`` keeps ``A``'s
    row chunks."""
    A0, _ = matrix(400, 60, rng=0)
    src, A = _counted(A0, 50)
    U, S, Vh = randla.rsvd(A, K, rng=0)
    assert U.chunks[0] == A.chunks[0] and Vh.chunks == ((K,), (60,)) and S.chunks == ((K,),)
    reads = [k for k in dict(U.__dask_graph__()) if str(k[0] if isinstance(k, tuple) else k).startswith("qr-project-")]
    assert len([k for k in reads if isinstance(k, tuple) and len(k) == 2]) == A.numblocks[0]
    dask.compute(U, S, Vh)
    assert src.reads == A.numblocks[0]


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128"])
@pytest.mark.parametrize(("m", "l", "rank"), [(1000, 60, 60), (4100, 70, 70), (900, 60, 5), (130, 60, 60),
                                              (1001, 120, 120), (1000, 120, 7), (1201, 65, 65)])
def test_in_task_tsqr_and_wide_svd(m, l, rank, dtype):
    """The chunk tasks' QR (TSQR over row blocks: of 128 rows, which LAPACK keeps on
    one thread, or 4 l rows for panels wider than 64 columns) is a QR factorisation
    as NumPy's: ``Q R = Y``, ``Q`` orthonormal, ``R`` upper triangular,
    also for a rank-deficient ``Y``; the SVD of a wide block through it matches
    NumPy's."""
    from randla import _dask

    gen = np.random.default_rng(0)
    Y = (gen.standard_normal((m, rank)) @ gen.standard_normal((rank, l))).astype(dtype)
    if dtype.startswith("complex"):
        Y = Y + 1j * (gen.standard_normal((m, rank)) @ gen.standard_normal((rank, l)))
    Q, R = _dask._qr_chunk(Y)
    eps = np.finfo(Y.dtype).eps
    assert Q.shape == (m, l) and R.shape == (l, l) and Q.dtype == Y.dtype
    np.testing.assert_allclose(Q.conj().T @ Q, np.eye(l), atol=50 * eps)
    np.testing.assert_array_equal(np.tril(R, -1), 0)
    assert np.linalg.norm(Q @ R - Y) <= 50 * eps * np.linalg.norm(Y)
    Bm = Y.T[:, : min(m, 1000)]
    U, S, Vh = _dask._wide_svd(Bm)
    S0 = np.linalg.svd(Bm, compute_uv=False)
    np.testing.assert_allclose(S, S0, atol=50 * eps * S0[0])
    assert np.linalg.norm((U * S) @ Vh - Bm) <= 50 * eps * np.linalg.norm(Bm)
    np.testing.assert_allclose(Vh @ Vh.conj().T, np.eye(len(S)), atol=50 * eps)


INPUTS = {
    "rechunked": lambda A0: da.from_array(A0, chunks=(20, 50)).rechunk((40, 25)),
    "arithmetic": lambda A0: da.from_array(A0 / 2, chunks=(30, 50)) * 2,
    "concatenated": lambda A0: da.concatenate([da.from_array(A0[:50], chunks=25), da.from_array(A0[50:], chunks=35)]),
    "strided": lambda A0: da.from_array(np.repeat(A0, 2, axis=0), chunks=(40, 50))[::2],
    "persisted": lambda A0: (da.from_array(A0, chunks=(30, 50)) * 1.0).persist(),
    "random_source": lambda A0: da.from_array(A0, chunks=(30, 50))
    + 0 * da.random.default_rng(0).standard_normal(A0.shape, chunks=(30, 50)),
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_inputs_made_by_computations(kind):
    """``A`` made by a rechunk, arithmetic, concatenation, slicing or random numbers
    is re-made per pass (its task graph copied), and the result is right."""
    A0, s = matrix(120, 50, spectrum="exponential", decay=0.3, rng=2)
    res = dask.compute(*randla.rsi(INPUTS[kind](A0), K, q=1, rng=0))
    _check_against_numpy(A0, res, K)


def test_rechunked_source_is_read_once_per_pass():
    A0, _ = matrix(200, 60, spectrum="exponential", decay=0.2, rng=0)
    src, A = _counted(A0, 25)
    dask.compute(*randla.rsi(A.rechunk((50, 60)), K, q=1, rng=0))
    assert src.reads == 2 * A.numblocks[0]


def test_memmap_input(tmp_path):
    A0, _ = matrix(150, 40, spectrum="exponential", decay=0.3, rng=3)
    np.save(tmp_path / "a.npy", A0)
    A = da.from_array(np.load(tmp_path / "a.npy", mmap_mode="r"), chunks=(50, 40))
    res = dask.compute(*randla.rsi(A, K, q=1, rng=0))
    _check_against_numpy(A0, res, K)


@pytest.mark.parametrize("call", [
    lambda A: randla.cpqr(A, 5),
    lambda A: randla.srrqr(A, 5),
    lambda A: randla.rcpqr(A, 5, rng=0),
    lambda A: randla.interp_decomp(A, 5),
    lambda A: randla.interp_decomp(A, 5, axis=0, method="srrqr"),
    lambda A: randla.interp_decomp(A, 5, method="randomized", rng=0),
    lambda A: randla.column_select(A, 5),
    lambda A: randla.column_select(A, 5, method="randomized", rng=0),
], ids=["cpqr", "srrqr", "rcpqr", "id", "row_id_srrqr", "id_randomized", "column_select",
        "column_select_randomized"])
def test_pivoted_kernels_reject_nan_on_dask(call):
    """The pivoted kernels read a lazy A on the host (or its sketch eagerly) anyway, so
    they check it there; a NaN gave an ID with zero weights (relative error 0.96),
    finite column indices, an R full of NaN, or a message blaming overflow."""
    A0 = np.random.default_rng(0).standard_normal((200, 60))
    A0[5, 7] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        dask.compute(call(da.from_array(A0, chunks=(50, -1))))


@pytest.mark.parametrize("chunks", [(50, -1), (50, 20)], ids=["fused", "column_chunks"])
@pytest.mark.parametrize("q", [0, 1])
@pytest.mark.parametrize("call", [
    lambda A, q: randla.rsi(A, 5, q=q, rng=0),
    lambda A, q: randla.rsvd(A, 5, q=q, rng=0),
    lambda A, q: (randla.range_finder(A, 5, q=q, rng=0),),
    lambda A, q: randla.block_krylov_svd(A, 5, q=q, rng=0),
], ids=["rsi", "rsvd", "range_finder", "block_krylov"])
def test_svd_family_rejects_nan_on_dask_when_computed(call, q, chunks):
    """The check on A's sketch is in the lazy graph: computing a result raises. Before,
    range_finder returned NaN silently (column chunks, q = 0) and the others raised
    LAPACK's "SVD did not converge"."""
    A0 = np.random.default_rng(0).standard_normal((200, 60))
    A0[5, 7] = np.nan
    with pytest.raises(ValueError, match="A contains NaN or Inf"):
        dask.compute(*call(da.from_array(A0, chunks=chunks), q))


def test_fused_passes_near_the_top_of_the_range():
    """All columns in one chunk: the test matrix is scaled to columns of norm O(1), so
    ``A_i Z`` stays below ``sigma_1``; at sigma_1 = 0.3 of float64's largest value it
    overflowed (LAPACK's error in rsi, NaN from range_finder). Past that, a clear
    error at compute time."""
    gen = np.random.default_rng(0)
    U, _ = np.linalg.qr(gen.standard_normal((400, 60)))
    V, _ = np.linalg.qr(gen.standard_normal((300, 60)))
    A0 = (U * 0.7 ** np.arange(60)) @ V.T
    A0 *= 2.0**1019 / np.linalg.norm(A0, 2)  # sigma_1 = 5.6e306
    A = da.from_array(A0, chunks=(100, -1))
    _, S, _ = dask.compute(*randla.rsi(A, 5, q=1, rng=0))
    np.testing.assert_allclose(S / 2.0**1019, 0.7 ** np.arange(5), rtol=1e-6)
    Q = np.asarray(randla.range_finder(A, 5, q=1, rng=0))
    np.testing.assert_allclose(Q.T @ Q, np.eye(Q.shape[1]), atol=1e-12)
    with pytest.raises(ValueError, match="A contains NaN or Inf, or its products overflow float64"):
        dask.compute(*randla.rsi(A * 30, 5, q=1, rng=0))  # sigma_1 = 1.7e308


def test_cholesky_qr_of_a_basis_whose_norm_overflows():
    """Column chunks take the Gram route; ``||Y||_F`` of a finite ``Y`` can exceed the
    float64 range, and its product with the chunks' scales overflowed to Inf: the
    basis came out zero and ``rsi``'s singular values 0.22, 0.15, ... for 1, 0.7, ...
    (no error)."""
    gen = np.random.default_rng(0)
    U, _ = np.linalg.qr(gen.standard_normal((300, 200)))
    V, _ = np.linalg.qr(gen.standard_normal((200, 200)))
    A0 = (U * 0.7 ** np.arange(200)) @ V.T * 1e308
    _, S, _ = dask.compute(*randla.rsi(da.from_array(A0, chunks=(50, 100)), 5, rng=0))
    np.testing.assert_allclose(S / 1e308, 0.7 ** np.arange(5), rtol=1e-6)


def test_spectral_norm_runs_the_recurrence_on_the_host():
    """Each Lanczos product is one computed pass; the lazy recurrence built a graph
    growing with the square of the steps (200 x 60, 30 steps: 5,400 tasks)."""
    from randla.estimate import spectral_norm

    A0 = np.random.default_rng(0).standard_normal((200, 60))
    est = spectral_norm(da.from_array(A0, chunks=(50, 20)), rng=0)
    assert isinstance(est, da.Array) and len(est.__dask_graph__()) == 1
    np.testing.assert_allclose(float(est), np.linalg.norm(A0, 2), rtol=1e-10)


def test_rcpqr_and_randomized_id():
    A0, s = matrix(160, 70, spectrum="exponential", decay=0.3, rng=4)
    A = da.from_array(A0, chunks=(40, 70))
    Q, R, perm = randla.rcpqr(A, K, rng=0)
    assert isinstance(Q, da.Array) and Q.chunks[0] == A.chunks[0]
    Q, R, perm = dask.compute(Q, R, perm)
    np.testing.assert_allclose(Q.T @ Q, np.eye(K), atol=1e-12)
    np.testing.assert_allclose(A0[:, perm], Q @ R, atol=10 * s[K])
    idx, T = dask.compute(*randla.interp_decomp(A, K, method="randomized", rng=0))
    np.testing.assert_array_equal(T[:, idx], np.eye(K))
    idx0, T0 = randla.interp_decomp(A0, K, method="randomized", rng=0)
    err, err0 = (np.linalg.norm(A0 - A0[:, j] @ t, 2) / s[K] for j, t in ((idx, T), (idx0, T0)))
    assert err < 2 * err0 + 1


# ----------------------------------------------------------------------------------
# a real cluster: worker processes, loopback, bounded memory
# ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="400MiB",
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=50) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
def test_cluster_rsi_matches_numpy(client, dtype):
    A0, s = matrix(600, 120, spectrum="exponential", decay=0.3, dtype=dtype, rng=5)
    A = da.from_array(A0, chunks=(150, 120))
    U, S, Vh = randla.rsi(A, K, q=1, rng=0)
    res = client.compute([U, S, Vh], sync=True)
    assert len(client.scheduler_info()["workers"]) == 2
    _check_against_numpy(A0, res, K)


def test_cluster_zarr_input(client, tmp_path):
    zarr = pytest.importorskip("zarr")
    A0, s = matrix(400, 90, spectrum="exponential", decay=0.3, dtype="float32", rng=6)
    z = zarr.create_array(store=str(tmp_path / "a.zarr"), shape=A0.shape, chunks=(100, 90), dtype="float32")
    z[:] = A0
    A = da.from_zarr(str(tmp_path / "a.zarr"))
    U, S, Vh = client.compute(list(randla.rsi(A, K, q=1, rng=0)), sync=True)
    assert U.dtype == np.float32
    np.testing.assert_allclose(S, s[:K], rtol=1e-4)
    U0 = np.linalg.svd(A0.astype(np.float64))[0][:, :K]
    assert _projector_gap(U, U0) < 1e-3


def test_cluster_rcpqr(client):
    A0, s = matrix(300, 80, spectrum="exponential", decay=0.3, rng=7)
    A = da.from_array(A0, chunks=(75, 80))
    Q, R, perm = randla.rcpqr(A, K, rng=0)
    Q, R = client.compute([Q, R], sync=True)
    perm = np.asarray(perm)
    np.testing.assert_allclose(Q.T @ Q, np.eye(K), atol=1e-12)
    assert np.linalg.norm(A0[:, perm] - Q @ R, 2) < 10 * s[K]
