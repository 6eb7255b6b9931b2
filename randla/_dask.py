"""Dask kernels behind :mod:`randla._backend` (Dask is imported only when called).

Five ideas keep randla's graphs small, its passes few and its memory bounded on
Dask:

* **Small factorisations in one task.** Cholesky, inverse, SVD, eigh and LU of an
  ``l x l`` (or thin) matrix run as one call in one task, on the chunk's own
  array type (NumPy, or CuPy chunks) through :mod:`randla._backend`; a
  factorisation with several outputs is computed once (Dask's single-chunk
  ``svd`` goes through ``delayed``, whose renamed keys made every input the
  factors share compute twice).
* **Tall-skinny work per row chunk.** The Gram matrix of a tall panel is summed
  from one task per chunk, products with a small matrix and triangular solves
  are blockwise; thin QR is Dask's TSQR [BDG2013].
* **NumPy's own LAPACK and BLAS in every task**, as Dask's linalg: on NumPy chunks
  the kernels call ``numpy.linalg`` and NumPy's GEMM, never SciPy, whose wheel
  bundles a second OpenBLAS thread pool; under a threaded scheduler the two pools
  fight over the cores (a 6 ms SVD task took 113 ms).
* **One read of ``A`` per pass** (:func:`fresh`). Every product with ``A`` gets its
  own copy of the tasks that make ``A``'s chunks, started only once the block it
  multiplies is ready, so nothing ``A``-sized is held between passes and a matrix
  larger than the cluster's memory streams from its store (Zarr, ``.npy``
  memmap) once per pass. Chunks already in memory are shared, not copied.
* **A product and the adjoint product with its orthonormalised result in one
  pass** (:func:`power_step`, :func:`range_basis`, :func:`project_svd`).
  ``rsvd``/``rsi``/``range_finder``/``block_krylov_svd`` read each row chunk
  ``A_i`` once for ``Y_i = A_i Z``, its Householder QR ``Q_i R_i`` and
  ``Q_i^H A_i``; TSQR's second level on the stacked ``R_i`` gives ``Q^H A``.
  ``q + 1`` passes where ``dask.array.linalg.svd_compressed`` makes ``2q + 2``, at
  the same GEMM work in memory. A block Krylov space is built from power steps
  that keep their bases; its last pass orthonormalises ``[Q_0 | ... | A Z]``.

Nothing here computes: every function returns Dask arrays. Lazy on Dask (the call
builds a graph, nothing is read): ``range_finder``, ``rsvd(A, k)``, ``rsi``,
``block_krylov_svd``, ``estimate.spectral_norm``. Eager (computed during the call,
see the Dask section of ``docs/backends.rst``): ``rcpqr`` (the sketch ``Omega A``
and the chosen columns, one pass each), the randomized ``interp_decomp`` (the
sketch and column norms, then per block of pivots its candidate columns and block
row of ``R``), ``rsvd(A, rtol=...)`` and ``adaptive_range_finder`` (``||A||_F``,
then every block's passes), and the pivoting loops ``cpqr``, ``srrqr``,
``two_sided_id``, ``cur`` (``A`` gathered to the host).

References
----------
.. [BDG2013] A. R. Benson, D. F. Gleich, J. Demmel, "Direct QR factorizations for
   tall-and-skinny matrices in MapReduce architectures", IEEE BigData 2013.
"""

from __future__ import annotations

import operator

import numpy as np


def single_chunk(x):
    """``x`` as one chunk (a no-op when it already is)."""
    return x if all(len(c) == 1 for c in x.chunks) else x.rechunk(-1)


def _meta(like, ndim, dtype):
    """An empty array of ``like``'s chunk type (NumPy, CuPy) for Dask's metadata."""
    import array_api_compat

    return array_api_compat.array_namespace(like._meta).empty((0,) * ndim, dtype=dtype)


def _real(dtype):
    return np.empty(0, dtype=dtype).real.dtype


def _name(fn):
    return getattr(fn, "__name__", "small").strip("_").replace("_", "-") or "small"


def small(fn, *args, out):
    """Run ``fn`` on the chunk values of ``args`` in one task.

    Dask arrays among ``args`` are gathered into one chunk each; other arguments
    are passed as they are. ``fn`` returns the arrays whose ``(shape, dtype)`` are
    listed in ``out`` (a tuple; one array where ``out`` has one entry). Returns a
    tuple of single-chunk Dask arrays.
    """
    from dask.base import is_dask_collection, tokenize

    args = [single_chunk(a) if is_dask_collection(a) else a for a in args]
    arrays = [a for a in args if is_dask_collection(a)]
    base = f"{_name(fn)}-{tokenize(fn, *args)}"
    task = (fn, *[(a.name,) + (0,) * a.ndim if is_dask_collection(a) else a for a in args])
    return _outputs(base, task, arrays, out)


def _outputs(base, task, arrays, out):
    """Single-chunk Dask arrays of the ``out`` results of one ``task`` on ``arrays``."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    results = []
    for i, (shape, dtype) in enumerate(out):
        name = f"{base}-{i}"
        key = (name,) + (0,) * len(shape)
        # one output: one task; several: one task for fn, one getitem per output
        layer = {key: task} if len(out) == 1 else {base: task, key: (operator.getitem, base, i)}
        graph = HighLevelGraph.from_collections(name, layer, dependencies=arrays)
        chunks = tuple((int(s),) for s in shape)
        results.append(da.Array(graph, name, chunks, meta=_meta(arrays[0], len(shape), dtype)))
    return tuple(results)


# chunk kernels: randla._backend on the chunk's own array type, results as tuples


def _svd_chunk(a):
    from . import _backend as B

    if type(a) is np.ndarray:  # NumPy's own LAPACK, as Dask's linalg (see the module notes)
        B.check_svd_finite(a)
        return tuple(np.linalg.svd(a, full_matrices=False))
    return tuple(B.svd(a))


def _eigh_chunk(a):
    from . import _backend as B

    return tuple(B.eigh(a))


def _cholesky_chunk(a):
    from . import _backend as B

    return B.cholesky(a, upper=False)


def _inv_chunk(a):
    from . import _backend as B

    return B.inv(a)


def _lu_chunk(a):
    from . import _backend as B

    return tuple(B.lu(a))


def _solve_chunk(a, b, *, lower, left, unit_diagonal):
    from . import _backend as B

    return B.solve_triangular(a, b, lower=lower, left=left, unit_diagonal=unit_diagonal)


def svd(x):
    """Thin SVD: TSQR and the SVD of its small ``R`` where ``x`` is chunked along its
    long axis (the factor keeps those chunks; a short axis in several chunks is first
    rechunked to one, so ``x`` is streamed, never gathered), else one task (a single
    chunk, or stacks)."""
    import dask.array as da

    *batch, m, n = x.shape
    r, b, real = min(m, n), tuple(batch), _real(x.dtype)
    if x.ndim == 2 and len(x.chunks[0]) > 1 and len(x.chunks[1]) > 1:
        x = x.rechunk({1: -1} if m >= n else {0: -1})
    if x.ndim == 2 and len(x.chunks[1]) == 1 < len(x.chunks[0]) and m >= n:
        # not tsqr(compute_svd=True): it warns on complex input (casts a complex meta to real)
        q, rr = da.linalg.tsqr(x)
        u, s, vh = small(_svd_chunk, rr, out=[((n, n), x.dtype), ((n,), real), ((n, n), x.dtype)])
        return q @ u, s, vh
    if x.ndim == 2 and len(x.chunks[0]) == 1 < len(x.chunks[1]) and m < n:
        u, s, vh = svd(x.T)
        return vh.T, s, u.T
    return small(_svd_chunk, x, out=[(b + (m, r), x.dtype), (b + (r,), real), (b + (r, n), x.dtype)])


def eigh(x):
    *batch, n = x.shape[:-1]
    b = tuple(batch)
    return small(_eigh_chunk, x, out=[(b + (n,), _real(x.dtype)), (b + (n, n), x.dtype)])


def cholesky_lower(x):
    return small(_cholesky_chunk, x, out=[(x.shape, x.dtype)])[0]


def inv(x):
    return small(_inv_chunk, x, out=[(x.shape, x.dtype)])[0]


def lu(x):
    """``(PL, U)`` of a tall panel in one task (row pivoting needs the whole panel)."""
    m, n = x.shape
    return small(_lu_chunk, x, out=[((m, n), x.dtype), ((n, n), x.dtype)])


def solve_triangular(a, b, *, lower, left, unit_diagonal):
    """Triangular solve with a small ``a``, blockwise over the chunks of ``b`` that the
    solve does not mix: column chunks for ``a @ x = b``, row chunks for ``x @ a = b``."""
    import dask.array as da

    a = single_chunk(a)
    opts = dict(lower=lower, left=left, unit_diagonal=unit_diagonal, dtype=np.result_type(a.dtype, b.dtype),
                concatenate=True)
    if left:
        return da.blockwise(_solve_chunk, "ij", a, "ik", b.rechunk({0: -1}), "kj", **opts)
    return da.blockwise(_solve_chunk, "ij", a, "kj", b.rechunk({1: -1}), "ik", **opts)


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


def _adjoint_chunk(a):
    return a.T.conj() if a.dtype.kind == "c" else a.T


def pass_product(A, X, *, left=False, adjoint=False):
    """``A @ X``, ``A^H @ X`` (``adjoint``) or ``X @ A`` (``left``) as one fresh pass over
    ``A`` (see :func:`fresh`), ``X`` aligned with ``A``'s chunks."""
    import dask.array as da
    from dask.base import tokenize

    if left:
        X = X.rechunk(((X.shape[0],), A.chunks[0]))
        return X @ fresh(A, X)
    if adjoint:
        # A^H X = (X^H A)^H: per row chunk the l-row product X_i^H A_i, which BLAS
        # runs 1.1-1.7x faster than A_i^H X_i (a transposed operand on the long side;
        # measured, OpenBLAS, float32/float64/complex128), and for complex A a
        # conjugated copy of the small X_i instead of the chunk of A
        X = X.rechunk((A.chunks[0], (X.shape[1],)))
        token = tokenize(A.name, X.name)
        XH = da.blockwise(_adjoint_chunk, "ji", X, "ij", dtype=X.dtype, name=f"adjoint-{token}")
        P = XH @ fresh(A, X)
        return da.blockwise(_adjoint_chunk, "ji", P, "ij", dtype=P.dtype, name=f"adjoint-product-{token}")
    X = X.rechunk((A.chunks[1], (X.shape[1],)))
    if A.numblocks[1] == 1:  # nothing to sum: one task per row chunk
        return da.blockwise(_matmul, "ik", fresh(A, X), "ij", X, "jk", dtype=np.result_type(A.dtype, X.dtype),
                            concatenate=True)
    return fresh(A, X) @ X


def _matmul(a, b):
    return a @ b


# ----------------------------------------------------------------------------------
# shifted Cholesky-QR of a tall matrix, per row chunk
# ----------------------------------------------------------------------------------


def _wide(dtype):
    return np.complex128 if np.dtype(dtype).kind == "c" else np.float64


def _chunk_gram(y):
    """``[[G_i], [s_i 0 ...]]`` with ``G_i`` the float64/complex128 Gram matrix of
    ``y / s_i``, ``s_i = max |y|`` (1 for a zero ``y``). Formed as ``y^H y / s_i^2``
    where that cannot overflow or underflow, else from ``y / s_i``."""
    import array_api_compat

    xp = array_api_compat.array_namespace(y)
    wide = _wide(y.dtype)
    y = y.astype(wide, copy=False)
    s = float(abs(y).max()) if y.size else 0.0
    s = s if s > 0 else 1.0
    yh = y.T.conj() if wide == np.complex128 else y.T
    G = (yh @ y) / (s * s) if 1e-100 < s < 1e100 else (yh / s) @ (y / s)
    row = xp.zeros((1, G.shape[1]), dtype=G.dtype)
    row[0, 0] = s
    return xp.concat([G, row], axis=0)[None]


def _combine_grams(parts, factor, m, dtype):
    """``[[R^{-1}], [s 0 ...], [f 0 ...]]``: ``R = factor(G, m, dtype)`` (upper
    triangular) for the Gram matrix ``G`` of ``Y / c``, ``c = s f = ||Y||_F`` (1 for a
    zero ``Y``; ``s`` the largest ``max |Y|`` of the chunks, kept apart from ``f``
    because ``c`` itself can overflow for a finite ``Y``), from the chunks' scaled
    ones. ``R`` is inverted here, once, by the chunk library's own LAPACK (no row
    swaps on a triangular matrix: the inverse is LAPACK's triangular ``trtri``), so
    every row chunk applies it with one GEMM of its BLAS."""
    xp = _check_parts([parts])
    s_i = parts[:, -1, 0].real
    s = s_i.max()
    G = ((s_i / s) ** 2)[:, None, None] * parts[:, :-1, :]
    G = G.sum(axis=0)
    f2 = float(G.trace().real)
    f = f2**0.5 if f2 > 0 else 1.0
    R_inv = xp.linalg.inv(factor(G / (f * f), m, dtype))
    rows = xp.zeros((2, R_inv.shape[1]), dtype=np.result_type(R_inv.dtype, parts.dtype))
    rows[0, 0], rows[1, 0] = float(s), f
    return xp.concat([R_inv.astype(rows.dtype), rows], axis=0)


def _scaled_apply(y, rc):
    """``(y / c) R^{-1}`` for ``rc = [[R^{-1}], [s 0 ...], [f 0 ...]]``, ``c = s f``: one
    GEMM ``y (R^{-1} / c)`` where ``c`` is far from the ends of ``y``'s range
    (``R^{-1}`` is bounded by the shift, so ``R^{-1} / c`` is representable), else
    ``((y / s) / f) R^{-1}``."""
    R_inv, s, f = rc[:-2], float(rc[-2, 0].real), float(rc[-1, 0].real)
    tiny = float(np.finfo(y.dtype).smallest_normal)
    c = s * f
    if tiny**0.5 < c < tiny**-0.5:
        return y @ (R_inv / c).astype(y.dtype, copy=False)
    return ((y / y.dtype.type(s)) / y.dtype.type(f)) @ R_inv.astype(y.dtype, copy=False)


def cholqr(Y, factor):
    """``(Y / c) R^{-1}`` with ``R = factor(G, m, dtype)`` for ``G`` the float64/complex128
    Gram matrix of ``Y / c``, ``c = ||Y||_F``: one task per row chunk for the chunk's
    scaled Gram matrix, one task that sums them, calls ``factor`` on the chunk
    type and inverts the ``l x l`` factor, one GEMM per chunk (fused by Dask into
    the next product with ``A``); all in the chunk library's own LAPACK and BLAS.
    ``factor`` returns an upper-triangular ``l x l`` matrix (for Cholesky-QR, the
    Cholesky factor of ``G`` plus a shift)."""
    import dask.array as da

    m, l = Y.shape
    Y = Y.rechunk({1: -1})
    wide = _wide(Y.dtype)
    parts = da.blockwise(_chunk_gram, "zab", Y, "za", new_axes={"b": l}, adjust_chunks={"z": 1, "a": l + 1},
                         dtype=wide, meta=_meta(Y, 3, wide))
    (RC,) = small(_combine_grams, parts, factor, m, Y.dtype, out=[((l + 2, l), wide)])
    # map_blocks (RC broadcast to every row chunk) lets Dask fuse the solve into the next pass
    return da.map_blocks(_scaled_apply, Y, RC, dtype=Y.dtype, meta=Y._meta)


# ----------------------------------------------------------------------------------
# the last power product and the projection in one pass
# ----------------------------------------------------------------------------------


# Row blocks of the in-task TSQR (:func:`_qr_chunk`): OpenBLAS runs LAPACK's QR of a
# 128 x 60 panel on one thread (0.15 ms), of a 192 x 60 or 1000 x 60 panel on its
# threads, which with two Dask threads on two cores (and any other load) wait for one
# another: median 60 ms for 1000 x 60 alone, over a second next to a GEMM in another
# thread, 340 ms for 192 x 60 (measured, 2 cores, load 5-8; on one BLAS thread 2 ms
# and 0.2 ms). The same holds for the SVD of an l x n panel (60 x 1000: 1.5 s against
# 2-10 ms). The blocks cost CPU time: 4.5 ms for a 1000 x 60 panel on one thread
# against LAPACK's 2.2 ms (rsi's CPU time 0.90x svd_compressed's instead of 0.74x at
# 4000 x 1000), for wall times with the BLAS on its default threads of 0.7-1.3x
# instead of 2.0x svd_compressed's on the loaded machine.
_QR_ROWS = 128
# Panels wider than 64 columns (a block Krylov space, k + p > 64) thread in LAPACK at
# any useful block height; blocks of 4 l rows bound the damage: 1000 x 120 float64
# with the BLAS on its default threads at load 5 on the two cores, LAPACK 1.76 s,
# blocks of 500 rows 73-171 ms (min-median); on one thread 5.3 against 6.9 ms.
_WIDE_QR_ROWS = 4


def _qr_chunk(y):
    """Reduced Householder QR ``y = Q R`` (``Q`` m x min(m, l)). NumPy chunks with
    ``l <= 64`` columns: in-task TSQR [BDG2013] over row blocks of at most 128 rows,
    each LAPACK call small enough for OpenBLAS to keep on one thread (see
    ``_QR_ROWS``), as stable as one Householder QR; wider panels: blocks of at most
    ``4 l`` rows (see ``_WIDE_QR_ROWS``). The
    blocks are one stack, so each level is one call of NumPy's stacked QR and one
    stacked GEMM (0.85x the time of a loop over the blocks; 1000 x 60 float64 on
    one thread: 2.4 against 2.8 ms, LAPACK's unblocked QR 1.8 ms)."""
    from . import _backend as B

    if type(y) is not np.ndarray:
        return B.qr(y)
    m, l = y.shape
    rows = _QR_ROWS if 2 * l <= _QR_ROWS else _WIDE_QR_ROWS * l
    if m <= rows:
        return np.linalg.qr(y)  # NumPy's own LAPACK (see the module notes)
    # nb blocks of mb or mb - 1 rows (mb - 1 >= l: a zero row padding a short block
    # lies past the first l rows, so its row of Q is exactly zero)
    nb = -(-m // rows)
    mb = -(-m // nb)
    full = m - nb * (mb - 1)  # blocks with mb rows
    stack = np.zeros((nb, mb, l), dtype=y.dtype)
    stack[:full] = y[:full * mb].reshape(full, mb, l)
    stack[full:, :mb - 1] = y[full * mb:].reshape(nb - full, mb - 1, l)
    qs, rs = np.linalg.qr(stack)
    q2, r = _qr_chunk(rs.reshape(nb * l, l))
    qs = np.matmul(qs, q2.reshape(nb, l, q2.shape[1]))
    q = np.empty((m, q2.shape[1]), dtype=q2.dtype)
    q[:full * mb] = qs[:full].reshape(full * mb, q.shape[1])
    q[full * mb:] = qs[full:, :mb - 1].reshape((nb - full) * (mb - 1), q.shape[1])
    return q, r


def _wide_svd(b):
    """Thin SVD of a wide ``l x n`` block: ``b^H = W R`` (:func:`_qr_chunk`), ``R = Ur S Xh``,
    so ``b = Xh^H S (W Ur)^H`` (LAPACK's SVD only on the ``l x l`` factor)."""
    if b.shape[0] > b.shape[1]:
        return _svd_chunk(b)
    w, r = _qr_chunk(_adjoint_chunk(b))
    ur, s, xh = _svd_chunk(r)
    return _adjoint_chunk(xh), s, _adjoint_chunk(w @ ur)


def _panel(a, z, blocks):
    """``[X_1 | ... | X_j | A_i Z]`` for the row chunk ``a = A_i`` and ``blocks`` its rows
    of earlier bases (none: ``A_i Z``)."""
    import array_api_compat

    y = a @ z
    if not blocks:
        return y
    xp = array_api_compat.array_namespace(a)
    return xp.concat([*(x.astype(y.dtype, copy=False) for x in blocks), y], axis=1)


def _pad_columns(q, cols):
    """``q`` with zero columns up to ``cols`` (a Dask array needs one column chunk
    size; the stacked ``R_i`` have no padding, so the combined basis stays
    orthonormal)."""
    import array_api_compat

    if q.shape[1] >= cols:
        return q
    xp = array_api_compat.array_namespace(q)
    return xp.concat([q, xp.zeros((q.shape[0], cols - q.shape[1]), dtype=q.dtype)], axis=1)


def _qr_project(a, z, *blocks):
    """``(Q_i, [R_i | Q_i^H A_i])`` for ``Y_i = [X_i | A_i Z] = Q_i R_i`` (Householder,
    reduced; a chunk with fewer rows than ``Y`` has columns gets ``m_i`` columns in
    ``Q_i`` and ``m_i`` rows in ``R_i``)."""
    import array_api_compat

    xp = array_api_compat.array_namespace(a)
    q, r = _qr_chunk(_panel(a, z, blocks))
    return q, xp.concat([r, _adjoint_chunk(q) @ a], axis=1)  # the l-row product, see pass_product


def _project_chunk(a, z):
    return _qr_project(a, z)[1]


def _qr_project_chunk(a, z, *blocks):
    """:func:`_qr_project` with ``Q_i`` padded with zero columns to ``Y``'s width."""
    q, rp = _qr_project(a, z, *blocks)
    return _pad_columns(q, rp.shape[1] - a.shape[1]), rp


def _qr_basis_chunk(a, z):
    """``(Q_i, R_i)`` for ``A_i Z = Q_i R_i`` (``Q_i`` padded to ``Z``'s width)."""
    q, r = _qr_chunk(a @ z)
    return _pad_columns(q, z.shape[1]), r


def nonfinite_message(dtype, name="A"):
    """The error of a lazy pass that met NaN or Inf: without a pass of its own over
    ``A``, NaN or Inf in ``A`` cannot be told from overflow of a finite ``A``."""
    return f"{name} contains NaN or Inf, or its products overflow {dtype}: check {name} or rescale it"


def _check_parts(parts):
    """The namespace of the fused tasks' parts, or their clear error (at compute time)
    where a chunk's ``R_i`` or ``P_i`` is not finite, instead of NaN in the basis or
    LAPACK's error later."""
    import array_api_compat

    for rp in parts:
        _finite_chunk(rp, nonfinite_message(rp.dtype))
    return array_api_compat.array_namespace(parts[0])


def _finite_chunk(y, message):
    """``y``, or ``ValueError(message)`` where ``y`` is not finite."""
    import array_api_compat

    xp = array_api_compat.array_namespace(y)
    if not bool(xp.all(xp.isfinite(y))):
        raise ValueError(message)
    return y


def checked_finite(Y, message):
    """``Y`` with a check of every chunk in its graph (fused into the task that makes
    the chunk): computing it raises ``ValueError(message)`` where a chunk is not
    finite."""
    return Y.map_blocks(_finite_chunk, message, dtype=Y.dtype, meta=Y._meta)


def _second_level(parts, l):
    """``Q'`` of the stacked ``R_i`` (the first ``l`` columns of each part), TSQR's
    second level [BDG2013]."""
    xp = _check_parts(parts)
    return _qr_chunk(xp.concat([rp[:, :l] for rp in parts], axis=0))[0]


def _projection(parts, l):
    """``(Q', B)`` from the chunks' ``[R_i | P_i]``: ``[R_1; R_2; ...] = Q' R``
    (Householder), ``B = sum_i Q'_i^H P_i = Q^H A`` for ``Q = diag(Q_i) Q'``
    (the ``P_i`` are never stacked)."""
    qp = _second_level(parts, l)
    b, start = None, 0
    for rp in parts:
        term = _adjoint_chunk(qp[start:start + rp.shape[0], :]) @ rp[:, l:]
        b, start = term if b is None else b + term, start + rp.shape[0]
    return qp, _finite_chunk(b, nonfinite_message(b.dtype))


def _combine_power(parts, l, keep=False):
    """``Z = orth(B^H)``, ``B = Q^H A`` from :func:`_projection` (Householder); with
    ``keep``, ``(Z, Q')``."""
    qp, b = _projection(parts, l)
    z = _qr_chunk(_adjoint_chunk(b))[0]
    return (z, qp) if keep else z


def _combine_project(parts, l, k):
    """``(M, S, Vh)``: ``B = Q^H A = Ub S Vh`` (:func:`_projection`) truncated to ``k``,
    ``M = Q' Ub`` (so ``U_i = Q_i M_i``)."""
    qp, b = _projection(parts, l)
    u, s, vh = _wide_svd(b)
    return qp @ u[:, :k], s[:k], vh[:k, :]


def _apply_rows(q, m, start):
    r = min(q.shape[0], q.shape[1])  # the padded columns of a short chunk are zero
    u = q[:, :r] @ m[start:start + r, :]
    return _finite_chunk(u, nonfinite_message(u.dtype))


def fuses_passes(A):
    """Whether :func:`power_step`, :func:`range_basis` and :func:`project_svd` take
    ``A``: 2-D, all columns in one chunk."""
    return A.ndim == 2 and A.numblocks[1] == 1


def _chunk_layer(fn, A, Z, name, blocks=()):
    """``{(name, i): fn(A_i, Z, *X_i)}`` per row chunk of ``A`` on a fresh read
    (:func:`fresh`), ``X_i`` the rows of each of ``blocks`` (aligned with ``A``'s row
    chunks here), with the arrays the layer depends on."""
    Z = single_chunk(Z)
    blocks = [x.rechunk((A.chunks[0], (x.shape[1],))) for x in blocks]
    Af = fresh(A, Z)
    tasks = {(name, i): (fn, (Af.name, i, 0), (Z.name, 0, 0), *[(x.name, i, 0) for x in blocks])
             for i in range(A.numblocks[0])}
    return tasks, [Af, Z, *blocks]


def _qr_pass(fn, A, Z, name, cols, width, blocks=()):
    """One pass of per-chunk tasks ``fn(A_i, Z, *X_i) -> (Q_i, T_i)``: Dask arrays ``Q``
    (``A``'s row chunks, ``cols`` columns) and ``T`` (chunks of ``min(m_i, cols)`` rows,
    ``width`` columns), both getitems of the one task per chunk."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dtype = np.result_type(A.dtype, Z.dtype)
    rows = A.chunks[0]
    r = tuple(min(c, cols) for c in rows)
    tasks, deps = _chunk_layer(fn, A, Z, name, blocks)
    out = []
    for j, (part, chunks) in enumerate([("q", (rows, (cols,))), ("rp", (r, (width,)))]):
        pname = f"{name}-{part}"
        layer = {**tasks, **{(pname, i, 0): (operator.getitem, (name, i), j) for i in range(len(rows))}}
        out.append(da.Array(HighLevelGraph.from_collections(pname, layer, dependencies=deps), pname, chunks,
                            meta=_meta(A, 2, dtype)))
    return out[0], out[1], r


def _basis(Q, M, r, name):
    """``diag(Q_i) M``, one GEMM per row chunk: ``U_i = Q_i[:, :r_i] M_i``."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    starts = np.cumsum((0,) + r[:-1])
    layer = {(name, i, 0): (_apply_rows, (Q.name, i, 0), (M.name, 0, 0), int(starts[i])) for i in range(len(r))}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[Q, M])
    return da.Array(graph, name, (Q.chunks[0], (M.shape[1],)), meta=Q._meta)


def power_step(A, Z, keep=False):
    """``orth(A^H Q)`` for ``Q = orth(A Z)`` (Householder both), in one pass over ``A``.

    Per row chunk, one task on one read of ``A_i``: ``A_i Z = Q_i R_i`` and
    ``P_i = Q_i^H A_i``. One task then takes the QR of the stacked ``R_i``
    (TSQR's second level [BDG2013]), ``(A^H Q)^H = Q^H A = sum_i Q'_i^H P_i`` and
    the QR of its ``n x l`` adjoint. Returns the single-chunk ``n x l`` basis;
    with ``keep``, also ``Q = diag(Q_i) Q'`` (``m x l``, ``A``'s row chunks; one
    GEMM per chunk, and the ``Q_i`` held until it is formed), a block of a
    Krylov space (:func:`project_svd`'s ``blocks``).
    """
    from dask.base import tokenize

    n, l = A.shape[1], Z.shape[1]
    dtype = np.result_type(A.dtype, Z.dtype)
    token = tokenize(A.name, Z.name, keep)
    if keep:
        name = f"power-qr-{token}"
        Q, RP, r = _qr_pass(_qr_project_chunk, A, Z, name, l, l + n)
        task = (_combine_power, [(RP.name, i, 0) for i in range(len(r))], l, True)
        Zn, M = _outputs(f"power-step-{token}", task, [RP], [((n, l), dtype), ((sum(r), l), dtype)])
        return Zn, _basis(Q, M, r, f"power-basis-{token}")
    rows = A.chunks[0]
    name = f"power-project-{token}"
    tasks, deps = _chunk_layer(_project_chunk, A, Z, name)
    RP = _array(tasks, name, deps, (tuple(min(c, l) for c in rows), (l + n,)), A, dtype)
    task = (_combine_power, [(name, i, 0) for i in range(len(rows))], l)
    return _outputs(f"power-step-{tokenize(name)}", task, [RP], [((n, l), dtype)])[0]


def range_basis(A, Z):
    """``orth(A Z)`` (``m x l``, Householder, ``A``'s row chunks) in one pass over ``A``:
    per row chunk ``A_i Z = Q_i R_i`` in one task, the QR of the stacked ``R_i`` in
    one (TSQR [BDG2013]), ``Q = diag(Q_i) Q'`` one GEMM per chunk."""
    from dask.base import tokenize

    l = Z.shape[1]
    token = tokenize(A.name, Z.name)
    Q, R, r = _qr_pass(_qr_basis_chunk, A, Z, f"range-qr-{token}", l, l)
    task = (_second_level, [(R.name, i, 0) for i in range(len(r))], l)
    (M,) = _outputs(f"range-basis-r-{token}", task, [R], [((sum(r), l), Q.dtype)])
    return _basis(Q, M, r, f"range-basis-{token}")


def _array(tasks, name, deps, chunks, like, dtype):
    """A Dask array over the ``(name, i)`` tasks of one row chunk each (keys made 2-D)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    layer = {(name, i, 0): task for (_, i), task in tasks.items()}
    return da.Array(HighLevelGraph.from_collections(name, layer, dependencies=deps), name, chunks,
                    meta=_meta(like, 2, dtype))


def project_svd(A, Z, k, blocks=()):
    """Rank-``k`` SVD of ``Q Q^H A`` for ``Q`` an orthonormal basis of ``Y = [X_1 | ... |
    X_j | A Z]`` (``blocks`` the ``X``, none by default), in one pass over ``A`` (rows
    in chunks, all columns in one; see :func:`fuses_passes`).

    Per row chunk, in one task on one read of ``A_i`` (:func:`fresh`): ``Y_i =
    [X_i | A_i Z]``, its Householder QR ``Y_i = Q_i R_i`` and ``P_i = Q_i^H A_i``
    (``c x n`` for ``Y``'s ``c`` columns). One task then takes the QR of the
    stacked ``R_i``, TSQR's second level [BDG2013] (``Q = diag(Q_i) Q'`` is
    orthonormal whatever ``Y``'s conditioning or rank, as in Dask's own TSQR),
    forms ``B = Q^H A = sum_i Q'_i^H P_i`` and its SVD ``Ub S Vh``, so the
    projection needs no pass of its own. ``U = Q Ub`` stays lazy: one GEMM per row
    chunk. The ``P_i`` are held from the pass to that task (``c / m_i`` of ``A``'s
    size). Returns ``(U, S, Vh)``; ``U`` keeps ``A``'s row chunks.
    """
    from dask.base import tokenize

    n = A.shape[1]
    cols = Z.shape[1] + sum(x.shape[1] for x in blocks)
    dtype = np.result_type(A.dtype, Z.dtype)
    token = tokenize(A.name, Z.name, k, *[x.name for x in blocks])
    Q, RP, r = _qr_pass(_qr_project_chunk, A, Z, f"qr-project-{token}", cols, cols + n, blocks)
    # one task on the list of the chunks' [R_i | P_i] (no stacked copy of the P_i)
    task = (_combine_project, [(RP.name, i, 0) for i in range(len(r))], cols, k)
    M, S, Vh = _outputs(f"qr-project-svd-{token}", task, [RP],
                        [((sum(r), k), dtype), ((k,), _real(dtype)), ((k, n), dtype)])
    return _basis(Q, M, r, f"qr-project-u-{token}"), S, Vh
