"""Dask kernels behind :mod:`randla._backend` (imported only when a Dask array is seen).

Three ideas keep randla's graphs small and its memory bounded on Dask:

* **Small factorisations in one task.** Cholesky, inverse, SVD, eigh and LU of an
  ``l x l`` (or thin) matrix run as one NumPy call in one task; a factorisation
  with several outputs is computed once (Dask's own single-chunk ``svd`` goes
  through ``delayed``, whose renamed keys made every shared input compute twice).
* **Tall-skinny work per row chunk.** Products with a small matrix and triangular
  solves are blockwise (one task per chunk, fused by Dask into the neighbouring
  products); thin QR is Dask's TSQR [BDGJ2015].
* **One read of ``A`` per pass.** Every product with ``A`` gets its own copy of the
  graph that makes ``A``'s chunks, started only once the block it multiplies is
  ready (:func:`dask.graph_manipulation.bind`). Nothing ``A``-sized is kept
  between passes, so a matrix larger than the cluster's memory streams from its
  store (Zarr, ``.npy`` memmap) once per pass. In-memory chunks are simply
  referenced again.

References
----------
.. [BDGJ2015] A. R. Benson, D. F. Gleich, J. Demmel, "Direct QR factorizations for
   tall-and-skinny matrices in MapReduce architectures", IEEE BigData 2013.
"""

from __future__ import annotations

import operator

import numpy as np


def single_chunk(x):
    """``x`` as one chunk (a no-op when it already is)."""
    return x if all(len(c) == 1 for c in x.chunks) else x.rechunk(-1)


def _name(fn):
    return getattr(fn, "__name__", "small").strip("<>").replace("_", "-").strip("-") or "small"


def small(fn, *args, out):
    """Run ``fn`` on the NumPy values of ``args`` in one task (Dask arrays among
    ``args`` are gathered into one chunk each; other arguments are passed as they
    are); ``out`` lists ``(shape, dtype)`` of each array in the tuple ``fn``
    returns. Returns a tuple of single-chunk Dask arrays (lazy)."""
    import dask.array as da
    from dask.base import is_dask_collection, tokenize
    from dask.highlevelgraph import HighLevelGraph

    args = [single_chunk(a) if is_dask_collection(a) else a for a in args]
    arrays = [a for a in args if is_dask_collection(a)]
    token = tokenize(fn, *args)
    base = f"{_name(fn)}-{token}"
    task = (fn, *[(a.name,) + (0,) * a.ndim if is_dask_collection(a) else a for a in args])
    results = []
    for i, (shape, dtype) in enumerate(out):
        name = f"{base}-{i}"
        layer = {base: task, (name,) + (0,) * len(shape): (operator.getitem, base, i)}
        graph = HighLevelGraph.from_collections(name, layer, dependencies=arrays)
        chunks = tuple((int(s),) for s in shape)
        meta = np.empty((0,) * len(shape), dtype=dtype)
        results.append(da.Array(graph, name, chunks, meta=meta))
    return tuple(results)


def svd(x):
    """Thin SVD: TSQR and the SVD of its small ``R`` where ``x`` is chunked along its
    long axis only (the result keeps those chunks), else one task."""
    import dask.array as da

    m, n = x.shape
    r = min(m, n)
    real = np.empty(0, dtype=x.dtype).real.dtype
    if len(x.chunks[1]) == 1 < len(x.chunks[0]) and m >= n:
        # tsqr(compute_svd=True) warns on complex input (a real meta cast from complex)
        q, rr = da.linalg.tsqr(x)
        u, s, vh = small(_np_svd, rr, out=[((n, n), x.dtype), ((n,), real), ((n, n), x.dtype)])
        return q @ u, s, vh
    if len(x.chunks[0]) == 1 < len(x.chunks[1]) and m < n:
        u, s, vh = svd(x.T)
        return vh.T, s, u.T
    return small(_np_svd, x, out=[((m, r), x.dtype), ((r,), real), ((r, n), x.dtype)])


def _np_svd(a):
    return tuple(np.linalg.svd(a, full_matrices=False))


def eigh(x):
    real = np.empty(0, dtype=x.dtype).real.dtype
    n = x.shape[0]
    return small(_np_eigh, x, out=[((n,), real), ((n, n), x.dtype)])


def _np_eigh(a):
    return tuple(np.linalg.eigh(a))


def cholesky_lower(x):
    return small(_np_cholesky, x, out=[(x.shape, x.dtype)])[0]


def _np_cholesky(a):
    return (np.linalg.cholesky(a),)


def inv(x):
    return small(_np_inv, x, out=[(x.shape, x.dtype)])[0]


def _np_inv(a):
    return (np.linalg.inv(a),)


def lu(x):
    """``(PL, U)`` of a tall panel, one task (row-permuted LU needs the whole panel)."""
    m, n = x.shape
    return small(_np_lu, x, out=[((m, n), x.dtype), ((n, n), x.dtype)])


def _np_lu(a):
    import scipy.linalg

    return tuple(scipy.linalg.lu(a, permute_l=True, check_finite=False))


def solve_triangular(a, b, *, lower, left, unit_diagonal):
    """Triangular solve with a small ``a``, blockwise over the chunks of ``b`` that the
    solve does not mix: column chunks for ``a @ x = b``, row chunks for ``x @ a = b``."""
    import dask.array as da

    a = single_chunk(a)
    dtype = np.result_type(a.dtype, b.dtype)
    opts = dict(lower=lower, unit_diagonal=unit_diagonal, dtype=dtype, concatenate=True)
    if left:
        return da.blockwise(_solve_left, "ij", a, "ik", b.rechunk({0: -1}), "kj", **opts)
    return da.blockwise(_solve_right, "ij", b.rechunk({1: -1}), "ik", a, "kj", **opts)


def _solve_left(a, b, *, lower, unit_diagonal):
    import scipy.linalg

    return scipy.linalg.solve_triangular(a, b, lower=lower, unit_diagonal=unit_diagonal, check_finite=False)


def _solve_right(b, a, *, lower, unit_diagonal):
    import scipy.linalg

    # x a = b  <=>  a^T x^T = b^T (plain transpose, also for complex a)
    x = scipy.linalg.solve_triangular(a, b.T, trans="T", lower=lower, unit_diagonal=unit_diagonal,
                                      check_finite=False)
    return x.T


# ----------------------------------------------------------------------------------
# one read of A per pass
# ----------------------------------------------------------------------------------


def _first(x, *_):
    return x


def _suffixed(key, token):
    if isinstance(key, tuple):
        return (f"{key[0]}-{token}",) + tuple(key[1:])
    return f"{key}-{token}"


def fresh(A, after):
    """``A`` with its own copy of the tasks that make its chunks, gated on ``after``.

    Chunks held in memory (NumPy-backed ``from_array``, persisted arrays) are
    referenced as they are; if all are, ``A`` itself comes back. Every computed
    task (a read from Zarr or a memmap, a rechunk, arithmetic) is copied under
    new keys, and the first copied task on each path waits for ``after``, so the
    copy is read when the pass that needs it runs and released when it ends.
    (This is what :func:`dask.graph_manipulation.bind` is for; in current Dask it
    loses the dependencies of rechunked arrays, dask issue 12455, so the copy is
    made here on the materialised task graph.)
    """
    try:
        from dask._task_spec import DataNode, Task, TaskRef, convert_legacy_graph
    except ImportError:  # pragma: no cover - Dask before the task spec: share chunks
        return A
    import dask.array as da
    from dask.base import tokenize
    from dask.core import flatten
    from dask.highlevelgraph import HighLevelGraph

    graph = convert_legacy_graph(dict(A.__dask_graph__()))
    computed = [k for k, node in graph.items() if not isinstance(node, DataNode)]
    if not computed:
        return A
    token = tokenize(A.name, after.name)
    gate = f"pass-start-{token}"
    layer = {gate: Task(gate, _first, None, *(TaskRef(k) for k in flatten(after.__dask_keys__())))}
    # copied tasks get new keys; the data they read (in memory: a store handle, a
    # chunk) is passed through a task that waits for the gate
    subs = {k: _suffixed(k, token) for k in computed}
    for key in computed:
        for dep in graph[key].dependencies:
            if dep not in subs:
                subs[dep] = _suffixed(dep, token)
                layer[dep] = graph[dep]
                layer[subs[dep]] = Task(subs[dep], _first, TaskRef(dep), TaskRef(gate))
    for key in computed:
        node = graph[key].substitute(subs, key=subs[key])
        if not node.dependencies and type(node) is Task:  # a source task (e.g. random numbers)
            node = Task(subs[key], _first, Task(None, node.func, *node.args, **node.kwargs), TaskRef(gate))
        layer[subs[key]] = node
    name = _suffixed(A.name, token)
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[after])
    return da.Array(graph, name, A.chunks, meta=A._meta)


def pass_product(A, X, *, left=False):
    """``A @ X`` (``X @ A`` with ``left``) as one fresh pass over ``A`` (see
    :func:`fresh`), ``X`` aligned with ``A``'s chunks."""
    if left:
        X = X.rechunk(((X.shape[0],), A.chunks[0]))
        return X @ fresh(A, X)
    X = X.rechunk((A.chunks[1], (X.shape[1],)))
    return fresh(A, X) @ X


# ----------------------------------------------------------------------------------
# shifted Cholesky-QR of a tall matrix, per row chunk
# ----------------------------------------------------------------------------------


def _wide(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def _chunk_gram(y):
    """``[[G_i], [s_i 0 ...]]`` with ``G_i`` the float64/complex128 Gram matrix of
    ``y / s_i``, ``s_i = max |y|`` (entries of ``y / s_i`` are at most 1: no overflow)."""
    y = y.astype(_wide(y.dtype))
    s = float(np.max(np.abs(y))) if y.size else 0.0
    s = s if s > 0 else 1.0
    y = y / s
    out = np.zeros((1, y.shape[1] + 1, y.shape[1]), dtype=y.dtype)
    out[0, :-1] = y.conj().T @ y
    out[0, -1, 0] = s
    return out


def _combine_grams(parts, factor, m):
    """``[[F], [c 0 ...]]``: ``F = factor(G, m)`` for the Gram matrix ``G`` of
    ``Y / c``, ``c = ||Y||_F`` (1 for a zero ``Y``), from the chunks' scaled ones."""
    s_i = parts[:, -1, 0].real
    s = s_i.max()
    G = np.einsum("i,ijk->jk", (s_i / s) ** 2, parts[:, :-1, :])
    f2 = float(np.trace(G).real)
    f = np.sqrt(f2) if f2 > 0 else 1.0
    F = np.asarray(factor(G / (f * f), m))
    out = np.zeros((F.shape[0] + 1, F.shape[1]), dtype=np.result_type(F.dtype, parts.dtype))
    out[:-1] = F
    out[-1, 0] = s * f
    return (out,)


def _scaled_product(y, fc):
    F, c = fc[:-1], fc[-1, 0].real
    return (y / y.dtype.type(c)) @ F.astype(y.dtype, copy=False)


def cholqr(Y, factor):
    """``(Y / ||Y||_F) @ factor(G, m)`` with ``G`` the float64/complex128 Gram matrix of
    ``Y / ||Y||_F``: one task per row chunk for the chunk's scaled Gram matrix, one
    task that sums them and calls ``factor`` (NumPy), one blockwise product.
    ``factor(G, m)`` returns an ``l x l`` matrix (for Cholesky-QR: ``R^{-1}``)."""
    import dask.array as da

    m, l = Y.shape
    Y = Y.rechunk({1: -1})
    wide = _wide(Y.dtype)
    parts = da.blockwise(_chunk_gram, "zab", Y, "za", new_axes={"b": l}, adjust_chunks={"z": 1, "a": l + 1},
                         dtype=wide, meta=np.empty((0, 0, 0), dtype=wide))
    (FC,) = small(_combine_grams, parts, factor, m, out=[((l + 1, l), wide)])
    return da.blockwise(_scaled_product, "ij", Y, "ik", FC, "xj", dtype=Y.dtype, concatenate=True)
