"""Factor many weights, same-shaped layers in one batched call.

A transformer repeats the same few weight shapes in every block (the attention
projections, the two FFN matrices), and at these sizes a truncated SVD costs more in
fixed overhead per call than in arithmetic. :func:`factor_many` groups the layers whose
working matrices share shape, dtype, namespace, device and rank, stacks their (whitened)
working matrices ``M_i = R_i^H W_i L_i`` into ``(c, out, in)`` and makes one stacked
:func:`randla.svd.rsi` / :func:`randla.svd.rsvd` / :func:`randla.svd.block_krylov_svd` (or exact)
call per group; then each layer's factors, error estimate and report are made as
:func:`~randla.compress.factor.factor` makes them.

The contract is :func:`~randla.compress.factor.factor`'s, layer by layer: the same ranks, the
same dense decisions, factors in each weight's namespace, device and dtype, the same
error bounds (a stacked call gives matrix ``i`` what a call of its own with the same
test matrix gives; see :func:`randla.svd.rsi`). What changes is the random draw: one test
matrix per stacked call instead of one per layer, so a seeded run is reproducible but
not bit-identical to the one-call-per-layer path (``batch=False``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from .. import _backend as B
from .factor import (
    DEFAULT_RIDGE,
    _check_method,
    _dense,
    _factor_job,
    _finish,
    _job,
    _svd_at,
    whiten,
)
from .ranks import saves_parameters

__all__ = ["factor_many", "STACK_ENTRIES"]

#: Entries of one stacked call (``c out in``): 8 Mi, 32 MB in float32. A group is cut into
#: chunks of at most this many entries, and a layer larger than that is factored alone,
#: so a stack costs at most one chunk (plus, whitened, as much again while it is built)
#: beyond the weights themselves.
STACK_ENTRIES = 1 << 23


def _rank_options(rank, rank_fraction, param_fraction, rtol, names):
    """``name -> rank keywords`` of :func:`factor` (``rank`` may map names to ranks)."""
    if isinstance(rank, Mapping):
        if any(v is not None for v in (rank_fraction, param_fraction, rtol)):
            raise TypeError("give one rank option: per-layer ranks (a mapping) exclude rank_fraction, "
                            "param_fraction and rtol")
        missing = [n for n in names if n not in rank]
        if missing:
            raise ValueError(f"rank has no entry for layer {missing[0]!r}")
        return {n: {"rank": rank[n]} for n in names}
    opts = {"rank": rank, "rank_fraction": rank_fraction, "param_fraction": param_fraction, "rtol": rtol}
    return dict.fromkeys(names, opts)


def _per_layer(mapping, names, argument):
    if mapping is None:
        return dict.fromkeys(names)
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{argument} must be a mapping of layer name to array, got {type(mapping).__name__}")
    missing = [n for n in names if n not in mapping]
    if missing:
        raise ValueError(f"{argument} has no entry for layer {missing[0]!r}")
    return {n: mapping[n] for n in names}


def _group_key(job):
    """Layers with equal keys share one stacked call; ``None``: a call of its own."""
    if job.r is None or B.is_lazy(job.W):  # rtol finds its rank adaptively; Dask takes no stacks
        return None
    xp = job.xp
    return B.backend_name(xp), str(B.device(job.W)), str(job.W.dtype), job.shape, job.r


def _chunks(keys, shapes):
    """Names grouped by key in the order of each group's first layer, groups cut to at
    most :data:`STACK_ENTRIES` entries (a layer with key ``None`` alone)."""
    groups = {}
    for n, key in keys.items():
        groups.setdefault(("alone", n) if key is None else key, []).append(n)
    out = []
    for members in groups.values():
        out_dim, in_dim = shapes[members[0]]
        size = max(1, STACK_ENTRIES // (out_dim * in_dim))
        out += [members[i:i + size] for i in range(0, len(members), size)]
    return out


def factor_many(weights, rank=None, *, rank_fraction=None, param_fraction=None, rtol=None, grams=None,
                output_grams=None, whitenings=None, method="rsi", q=2, p=10, split="left", ridge=DEFAULT_RIDGE,
                estimate_error=True, check_finite=True, batch=True, rng=None):
    """:func:`~randla.compress.factor.factor` of every weight of a mapping, same-shaped ones batched.

    Parameters
    ----------
    weights : mapping name -> array (out, in)
        Any array-API arrays (mixed shapes, dtypes and libraries are fine).
    rank : int or mapping name -> int, optional
        One rank for all, or each layer's own (e.g. allocated from a budget).
    rank_fraction, param_fraction, rtol : optional
        Exactly one rank option in all (see :func:`~randla.compress.factor.factor`).
        ``rtol`` finds each layer's rank adaptively, one layer at a time.
    grams, output_grams : mapping name -> array, optional
        Input (``in x in``) and output-gradient (``out x out``) Gram matrices, one for
        every layer when given: whitened factors.
    whitenings : mapping name -> Metric, optional
        Already factored Gram matrices (:func:`~randla.compress.factor.metric`) instead.
    method, q, p, split, ridge, estimate_error, check_finite
        As in :func:`~randla.compress.factor.factor`.
    batch : bool, default True
        Group the layers whose working matrices share shape, dtype, namespace, device
        and rank, and factor each group by stacked calls (at most :data:`STACK_ENTRIES`
        entries each). ``False``: one call per layer, as :func:`~randla.compress.factor.factor`
        in a loop.
    rng : None, int or numpy.random.Generator
        One generator serves all calls, groups in the order of their first layer in
        ``weights`` (per-layer: the layers in order). Seeded runs are reproducible;
        ``batch=True`` and ``batch=False`` draw differently (one test matrix per
        stacked call instead of one per layer), so their factors agree within the
        error bounds, not bit for bit.

    Returns
    -------
    dict name -> Factors
        In the order of ``weights``; dense layers have ``B = A = None``.

    Notes
    -----
    Cost: that of the per-layer factorisations; a stacked call saves the fixed overhead
    of ``c - 1`` calls and runs its products as batched GEMMs, which is what pays at the
    sizes of a model's layers (hundreds to a few thousand per side). Memory: one stack of
    at most :data:`STACK_ENTRIES` entries (and its sketches) beyond the weights; a
    whitened stack is built from the ``c`` products ``R_i^H W_i L_i``. A layer's
    ``report.seconds`` is its own work (checks, Cholesky factors, error estimate, the
    split and unwhitening) plus an even share of its stacked call (the stacking and the
    SVD) among the call's layers.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.compress import factor_many
    >>> rng = np.random.default_rng(0)
    >>> W = {f"layer{i}.q": rng.standard_normal((64, 64)) for i in range(3)} | {"head": rng.standard_normal((10, 64))}
    >>> fs = factor_many(W, rank_fraction=0.25, rng=0)
    >>> [(n, f.report.rank) for n, f in fs.items()]
    [('layer0.q', 16), ('layer1.q', 16), ('layer2.q', 16), ('head', 2)]
    >>> bool(np.linalg.norm(W["layer1.q"] - fs["layer1.q"].B @ fs["layer1.q"].A, 2)
    ...      <= 1.5 * np.linalg.svd(W["layer1.q"], compute_uv=False)[16])
    True
    """
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of name to array, got {type(weights).__name__}")
    if not isinstance(batch, bool):
        raise TypeError(f"batch must be a bool, got {type(batch).__name__}")
    if whitenings is not None and (grams is not None or output_grams is not None):
        raise TypeError("give grams/output_grams or whitenings, not both")
    names = list(weights)
    options = _rank_options(rank, rank_fraction, param_fraction, rtol, names)
    grams = _per_layer(grams, names, "grams")
    output_grams = _per_layer(output_grams, names, "output_grams")
    whitenings = _per_layer(whitenings, names, "whitenings")
    q, p = _check_method(method, split, q, p)
    gen = B.as_generator(rng)
    kw = {"method": method, "split": split, "estimate_error": estimate_error, "rng": gen}
    out, jobs, prep = {}, {}, {}
    for n in names:  # every layer is checked before any is factored
        t0 = time.perf_counter()
        try:
            job = _job(weights[n], options[n], gram=grams[n], output_gram=output_grams[n], whitening=whitenings[n],
                       ridge=ridge, name=n, check_finite=check_finite)
        except (TypeError, ValueError) as exc:
            if type(exc) not in (TypeError, ValueError):
                raise
            raise type(exc)(f"layer {n!r}: {exc}") from None
        if job.r is not None and not saves_parameters(job.shape, job.r):
            out[n] = _dense(job.shape, n, job.units, t0)
        else:
            jobs[n] = job
        prep[n] = time.perf_counter() - t0
    keys = {n: _group_key(job) if batch else None for n, job in jobs.items()}
    for chunk in _chunks(keys, {n: job.shape for n, job in jobs.items()}):
        if len(chunk) == 1:
            n = chunk[0]
            out[n] = _factor_job(jobs[n], q=q, p=p, t0=time.perf_counter() - prep[n], **kw)
            continue
        t0 = time.perf_counter()
        xp, r = jobs[chunk[0]].xp, jobs[chunk[0]].r
        M = xp.stack([whiten(jobs[n].W, jobs[n].m) for n in chunk])
        U, S, Vh = _svd_at(M, r, method, q, p, gen)
        share = (time.perf_counter() - t0) / len(chunk)
        # the error estimates stay per layer: a Lanczos run on a stack is no faster on
        # NumPy (its matrix-vector products become per-slice BLAS calls all the same)
        for i, n in enumerate(chunk):
            out[n] = _finish(jobs[n], M[i, ...], U[i, ...], S[i, ...], Vh[i, ...], t0=time.perf_counter(),
                             shared_seconds=share + prep[n], **kw)
    return {n: out[n] for n in names}
