"""randla's pivoted QR, interpolative decomposition and column selection against SciPy.

Run from the repository root::

    python -m benchmarks.compare_qr            # full sizes (several minutes)
    python -m benchmarks.compare_qr --quick    # small sizes (under a minute)

Sections (``--sections rcpqr,srrqr,id,select`` picks some), NumPy backend, float64,
test matrices ``U diag(s) V^H`` with Haar ``U, V`` and slow decay
``sigma_i = i^-0.5`` unless said otherwise:

rcpqr
    ``randla.qr.rcpqr(A, k)`` (sketch QRCP + preconditioned Cholesky-QR) against
    SciPy's LAPACK ``geqp3`` (``scipy.linalg.qr(pivoting=True)``, full) on
    4096 x 4096, k = 256: time ratio, and ``|R_jj|`` of randla over geqp3's for
    ``j < k`` (minimum and median; 1 means equally rank-revealing). Partial
    ``cpqr(A, k)`` (the portable loop) alongside.
srrqr
    ``srrqr(A, k, f)`` against ``cpqr(A, k)`` at the same ``k``, timed interleaved
    (cpqr, srrqr, cpqr, srrqr, ...; median of the per-round ratios): 2000 x 2000
    with ``sigma_i = i^-1`` (CPQR is already strong: few or no swaps), Kahan
    matrices (CPQR fails to reveal the rank; ``n = 300`` is numerically full rank,
    ``n = 2000`` has numerical rank ~ 360 and its trailing pivots are rounding
    noise), and a block-diagonal matrix of Kahan blocks (one swap per block).
id
    ``interp_decomp`` against ``scipy.linalg.interpolative.interp_decomp`` at equal
    ``k`` on 2000 x 2000 (k = 200) and 4096 x 1024 (k = 128): randomized and
    deterministic, time ratio (SciPy / randla) and ``||A - A[:, idx] T||_2 /
    sigma_{k+1}`` (spectral norm by Lanczos, ``sigma_{k+1}`` known).
select
    ``column_select`` by each method on 2000 x 1000 (``sigma_i = i^-1``), k = 100:
    ``||A - C C^+ A||_2 / sigma_{k+1}`` and time.

Timings on a shared 2-core machine are noisy: read the ratios.
"""

from __future__ import annotations

import numpy as np

from ._common import fmt_err, fmt_ratio, fmt_time, parse_sections, print_table, timeit

SECTIONS = ("rcpqr", "srrqr", "id", "select")

FULL = {
    "rcpqr": (4096, 4096, 256),
    "srrqr": (2000, 2000, 200),
    "kahan": [300, 2000],
    "kahan_blocks": (20, 100),
    "repeat": 3,
    "id": [(2000, 2000, 200), (4096, 1024, 128)],
    "select": (2000, 1000, 100),
    "budget": 60.0,
}
QUICK = {
    "rcpqr": (1024, 1024, 64),
    "srrqr": (600, 600, 60),
    "kahan": [100, 300],
    "kahan_blocks": (5, 60),
    "repeat": 2,
    "id": [(600, 600, 60), (1024, 256, 32)],
    "select": (500, 300, 30),
    "budget": 5.0,
}


def _matrix(m, n, decay=0.5, rng=0):
    from randla.testing import matrix

    A, s = matrix(m, n, spectrum="polynomial", decay=decay, rng=rng)
    return np.ascontiguousarray(A), np.asarray(s)


def _norm2(E, rng=0):
    """Spectral norm by Lanczos (ARPACK), exact enough for an error ratio."""
    import scipy.sparse.linalg as spla

    if min(E.shape) <= 200:
        return float(np.linalg.norm(E, 2))
    v0 = np.random.default_rng(rng).standard_normal(min(E.shape))
    M = E if E.shape[1] <= E.shape[0] else E.T
    return float(spla.svds(M, k=1, v0=v0, tol=1e-6, return_singular_vectors=False)[0])


def _t(fn, cfg, repeat=3, warmup=1):
    return timeit(fn, repeat=repeat, warmup=warmup, budget=cfg["budget"])


def section_rcpqr(cfg):
    import scipy.linalg as sl

    from randla.qr import cpqr, rcpqr

    m, n, k = cfg["rcpqr"]
    A, s = _matrix(m, n)
    t_ref = _t(lambda: sl.qr(A, mode="economic", pivoting=True), cfg, repeat=1, warmup=0)
    _, R0, _ = sl.qr(A, mode="economic", pivoting=True)
    d0 = np.abs(np.diag(R0))[:k]
    rows = [{"method": "scipy geqp3 (full)", "time": fmt_time(t_ref.median), "speed-up": "1.00x",
             "min |R_jj| ratio": "1", "median |R_jj| ratio": "1"}]
    for label, fn in [("randla rcpqr q=0", lambda: rcpqr(A, k, rng=0)),
                      ("randla rcpqr q=1", lambda: rcpqr(A, k, q=1, rng=0)),
                      ("randla cpqr partial k", lambda: cpqr(A, k))]:
        t = _t(fn, cfg)
        R = fn().R
        ratio = np.abs(np.diag(R[:, :k])) / d0
        rows.append({"method": label, "time": fmt_time(t.median), "speed-up": fmt_ratio(t_ref.median / t.median),
                     "min |R_jj| ratio": f"{ratio.min():.3f}", "median |R_jj| ratio": f"{np.median(ratio):.3f}"})
    print_table(rows, title=f"rcpqr vs geqp3: {m} x {n}, sigma_i = i^-0.5, k = {k}")


def _swaps(A, k, f):
    """Number of swaps srrqr makes."""
    from randla import _backend as B
    from randla import qr as Q

    return Q._srrqr_scaled(A, B.namespace(A), k, f, 10**6)[1]


def _smin_ratio(R, k, s):
    """``sigma_min(R11) / sigma_k(A)``: 1 is the best a k-column selection can do."""
    return np.linalg.svd(np.asarray(R)[:, :k], compute_uv=False)[-1] / s[k - 1]


def section_srrqr(cfg):
    import scipy.linalg as sl

    from randla.qr import cpqr, srrqr
    from randla.testing import kahan

    from ._common import interleaved

    m, n, k = cfg["srrqr"]
    A, _ = _matrix(m, n, decay=1.0)
    cases = [(f"{m}x{n} i^-1", A, k, f) for f in (2.0, 1.1)]
    cases += [(f"Kahan {nk}", kahan(nk), nk - 1, 2.0) for nk in cfg["kahan"]]
    nb, bs = cfg["kahan_blocks"]
    blocks = sl.block_diag(*[kahan(bs) * 0.99**i for i in range(nb)])
    cases.append((f"{nb} Kahan {bs} blocks", blocks, nb * (bs - 1), 2.0))
    rows = []
    for label, M, kk, f in cases:
        calls = [lambda M=M, kk=kk: cpqr(M, kk), lambda M=M, kk=kk, f=f: srrqr(M, kk, f=f)]
        (t_c, t_s), (_, ratio) = interleaved(calls, repeat=cfg["repeat"])
        s = np.linalg.svd(M, compute_uv=False)
        rows.append({"matrix": label, "k": kk, "f": f, "swaps": _swaps(M, kk, f),
                     "cpqr": fmt_time(t_c), "srrqr": fmt_time(t_s), "srrqr / cpqr": fmt_ratio(ratio),
                     "smin(R11)/sigma_k cpqr": f"{_smin_ratio(cpqr(M, kk).R, kk, s):.2e}",
                     "smin(R11)/sigma_k srrqr": f"{_smin_ratio(srrqr(M, kk, f=f).R, kk, s):.3g}"})
    print_table(rows, columns=["matrix", "k", "f", "swaps", "cpqr", "srrqr", "srrqr / cpqr",
                               "smin(R11)/sigma_k cpqr", "smin(R11)/sigma_k srrqr"],
                title="srrqr vs cpqr at the same k (interleaved; ratio = median per round)")


def section_id(cfg):
    import scipy.linalg.interpolative as sli

    from randla.interpolative import interp_decomp

    rows = []
    for m, n, k in cfg["id"]:
        A, s = _matrix(m, n)

        def err(idx, T, A=A, s=s, k=k):
            return _norm2(A - A[:, idx] @ T) / s[k]

        def scipy_id(rand, A=A, k=k):
            idx, proj = sli.interp_decomp(A, k, rand=rand, rng=np.random.default_rng(0))
            return idx[:k], sli.reconstruct_interp_matrix(idx, proj)

        ref = {}
        for rand in (True, False):
            t = _t(lambda rand=rand: scipy_id(rand), cfg, repeat=2, warmup=0)
            e = err(*scipy_id(rand))
            ref[rand] = t.median
            rows.append({"matrix": f"{m}x{n}, k={k}", "method": f"scipy interp_decomp rand={rand}",
                         "time": fmt_time(t.median), "scipy / randla": "", "error / sigma_k+1": fmt_err(e)})
        for label, kw, rand in [("randla randomized q=0", {"method": "randomized"}, True),
                                ("randla randomized q=1", {"method": "randomized", "q": 1}, True),
                                ("randla cpqr", {"method": "cpqr"}, False),
                                ("randla srrqr", {"method": "srrqr"}, False)]:
            def fn(kw=kw, A=A, k=k):
                return interp_decomp(A, k, rng=0, **kw)

            t = _t(fn, cfg)
            e = err(*fn())
            rows.append({"matrix": f"{m}x{n}, k={k}", "method": label, "time": fmt_time(t.median),
                         "scipy / randla": fmt_ratio(ref[rand] / t.median), "error / sigma_k+1": fmt_err(e)})
    print_table(rows, title="interp_decomp vs scipy.linalg.interpolative (sigma_i = i^-0.5; "
                            "randomized rows compare with scipy rand=True, deterministic with rand=False)")


def section_select(cfg):
    from randla.interpolative import column_select

    m, n, k = cfg["select"]
    A, s = _matrix(m, n, decay=1.0)
    rows = []
    for method in ("cpqr", "srrqr", "randomized", "gks", "randomized_gks"):
        def fn(method=method):
            return column_select(A, k, method=method, rng=0)

        t = _t(fn, cfg)
        C = A[:, fn()]
        Qc = np.linalg.qr(C)[0]
        e = _norm2(A - Qc @ (Qc.T @ A)) / s[k]
        rows.append({"method": method, "time": fmt_time(t.median), "error / sigma_k+1": fmt_err(e)})
    print_table(rows, title=f"column_select: {m} x {n}, sigma_i = i^-1, k = {k}, ||A - C C^+ A||_2 / sigma_k+1")


def main(argv=None):
    args, wanted = parse_sections("python -m benchmarks.compare_qr", __doc__, SECTIONS, argv)
    cfg = QUICK if args.quick else FULL
    import scipy

    import randla

    print(f"randla {randla.__version__}; numpy {np.__version__}; scipy {scipy.__version__}")
    funcs = {"rcpqr": section_rcpqr, "srrqr": section_srrqr, "id": section_id, "select": section_select}
    for name in wanted:
        funcs[name](cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
