"""randla's QR adjoints: eq. 3.3 against eq. 3.8, and the adapters against torch and JAX.

Run from the repository root::

    python -m benchmarks.compare_adjoints            # full sizes (a few minutes)
    python -m benchmarks.compare_adjoints --quick    # small sizes (seconds)

Sections (``--sections eq,torch,jax`` picks some):

eq
    ``randla.adjoints.qr_vjp`` with ``method="3.3"`` and ``method="3.8"`` (NumPy,
    float64 and complex128) on random Gaussian matrices of growing defect (m rows,
    ``defect * m`` columns, defect 1, 2, 4, 8; one BLAS thread) and on random stand-ins of seed 001's
    Harwell-Boeing matrices wm1 (207 x 277) and wm2/wm3 (207 x 260), where the seed
    measured eq. 3.3 faster by 2.3-2.6x in its implementation. Ratio = t(3.8) / t(3.3).
torch
    Backward pass only of ``randla.torch.qr`` against torch's own QR derivative on the
    same forward result, CPU float64, 2000 x 500, 1000 x 1000, 500 x 2000, both
    cotangents random. Ratio = randla / torch (target <= 1.2).
jax
    The same for ``randla.jax.qr`` (``rule="vjp"``, and ``rule="jvp"`` transposed by
    JAX) against ``jnp.linalg.qr``, the backward function jitted, float64.

Each pair of implementations is timed interleaved (A, B, A, B, ...) and the ratio
quoted is the median of the per-round ratios, which is robust to the load drifting
on a shared machine; the times are medians too.
"""

from __future__ import annotations

import statistics

import numpy as np

from ._common import fmt_ratio, fmt_time, interleaved_rounds, limit_threads, parse_sections, print_table

SECTIONS = ("eq", "torch", "jax")

FULL = {
    "eq_rows": 200,
    "defects": (1, 2, 4, 8),
    "hb": ((207, 277), (207, 260)),
    "eq_repeat": 41,
    "fw_shapes": ((2000, 500), (1000, 1000), (500, 2000)),
    "fw_repeat": 9,
}
QUICK = {
    "eq_rows": 40,
    "defects": (1, 2, 4, 8),
    "hb": ((207, 277), (207, 260)),
    "eq_repeat": 7,
    "fw_shapes": ((400, 100), (200, 200), (100, 400)),
    "fw_repeat": 5,
}


def interleaved(fns, *, repeat, warmup=1):
    """Median seconds of each of ``fns`` and the median per-round ratio to ``fns[0]``.

    One round calls every function once in turn; the garbage collector is off while
    timing. Returns ``(medians, ratios)`` with ``ratios[0] == 1``.
    """
    rounds = interleaved_rounds(fns, repeat=repeat, warmup=warmup)
    medians = [statistics.median(r[i] for r in rounds) for i in range(len(fns))]
    ratios = [statistics.median(r[i] / r[0] for r in rounds) for i in range(len(fns))]
    return medians, ratios


def _factors(shape, dtype, rng):
    A = rng.standard_normal(shape)
    if np.dtype(dtype).kind == "c":
        A = A + 1j * rng.standard_normal(shape)
    A = A.astype(dtype)
    Q, R = np.linalg.qr(A)
    return Q, R, rng.standard_normal(Q.shape).astype(dtype), rng.standard_normal(R.shape).astype(dtype)


def section_eq(cfg):
    # One BLAS thread: these matrices are small, and on a shared 2-core machine
    # OpenBLAS threads waiting for each other turn millisecond timings into noise.
    with limit_threads(1):
        _section_eq(cfg)


def _section_eq(cfg):
    from randla.adjoints import qr_vjp

    rng = np.random.default_rng(0)
    m = cfg["eq_rows"]
    cases = [(f"defect {d}", (m, d * m)) for d in cfg["defects"]]
    cases += [(f"wm{i} stand-in", s) for i, s in zip((1, 2), cfg["hb"], strict=True)]
    rows = []
    for dtype in ("float64", "complex128"):
        for label, shape in cases:
            Q, R, dQ, dR = _factors(shape, dtype, rng)
            a33 = qr_vjp(Q, R, dQ, dR, method="3.3")
            a38 = qr_vjp(Q, R, dQ, dR, method="3.8")
            rel = float(np.linalg.norm(a33 - a38) / np.linalg.norm(a33))
            (t33, t38), (_, ratio) = interleaved(
                [lambda Q=Q, R=R, dQ=dQ, dR=dR: qr_vjp(Q, R, dQ, dR, method="3.3"),
                 lambda Q=Q, R=R, dQ=dQ, dR=dR: qr_vjp(Q, R, dQ, dR, method="3.8")],
                repeat=cfg["eq_repeat"])
            rows.append({"dtype": dtype, "case": label, "shape": f"{shape[0]}x{shape[1]}",
                         "eq 3.3": fmt_time(t33), "eq 3.8": fmt_time(t38),
                         "3.8 / 3.3": fmt_ratio(ratio), "rel. diff": f"{rel:.1e}"})
    print_table(rows, title="qr_vjp: eq. 3.3 vs eq. 3.8 (NumPy, one BLAS thread; "
                            "seed 001 measured 2.3-2.6x on wm1-wm3)")


def section_torch(cfg):
    try:
        import torch
    except ImportError:
        print("\ntorch: skipped (not installed)")
        return
    import randla.torch as rt

    rows = []
    for shape in cfg["fw_shapes"]:
        g = torch.Generator().manual_seed(0)
        A = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
        native = tuple(torch.linalg.qr(A))
        ours = tuple(rt.qr(A))
        ours38 = tuple(rt.qr(A, method="3.8"))
        ct = tuple(torch.randn(o.shape, dtype=o.dtype, generator=g) for o in native)
        grads = [torch.autograd.grad(out, (A,), ct, retain_graph=True)[0] for out in (native, ours, ours38)]
        err = max(float((g_ - grads[0]).abs().max() / grads[0].abs().max()) for g_ in grads[1:])
        (tn, t33, t38), (_, r33, r38) = interleaved(
            [lambda out=out, A=A, ct=ct: torch.autograd.grad(out, (A,), ct, retain_graph=True)
             for out in (native, ours, ours38)],
            repeat=cfg["fw_repeat"])
        rows.append({"shape": f"{shape[0]}x{shape[1]}", "torch": fmt_time(tn), "randla 3.3": fmt_time(t33),
                     "ratio 3.3": fmt_ratio(r33), "randla 3.8": fmt_time(t38), "ratio 3.8": fmt_ratio(r38),
                     "max rel. diff": f"{err:.1e}"})
    print_table(rows, title=f"randla.torch.qr backward vs torch {torch.__version__} "
                            f"(CPU float64, {torch.get_num_threads()} threads; target <= 1.2x)")


def section_jax(cfg):
    try:
        import jax
    except ImportError:
        print("\njax: skipped (not installed)")
        return
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import randla.jax as rj

    apply = jax.jit(lambda fn, ct: fn(ct))
    rng = np.random.default_rng(0)
    rows = []
    for shape in cfg["fw_shapes"]:
        A = jnp.asarray(rng.standard_normal(shape))
        fns = {
            "jax": lambda a: tuple(jnp.linalg.qr(a)),
            "vjp": lambda a: tuple(rj.qr(a)),
            "jvp": lambda a: tuple(rj.qr(a, rule="jvp")),
        }
        vjps = {}
        for name, f in fns.items():
            out, vjps[name] = jax.vjp(f, A)
        ct = tuple(jnp.asarray(rng.standard_normal(o.shape)) for o in out)
        grads = {name: np.asarray(apply(v, ct)[0]) for name, v in vjps.items()}  # compiles
        err = max(float(np.abs(grads[n] - grads["jax"]).max() / np.abs(grads["jax"]).max()) for n in ("vjp", "jvp"))
        (tn, tv, tj), (_, rv, rj_) = interleaved(
            [lambda v=v, ct=ct: apply(v, ct)[0].block_until_ready() for v in vjps.values()], repeat=cfg["fw_repeat"])
        rows.append({"shape": f"{shape[0]}x{shape[1]}", "jax": fmt_time(tn), "randla vjp": fmt_time(tv),
                     "ratio vjp": fmt_ratio(rv), "randla jvp": fmt_time(tj), "ratio jvp": fmt_ratio(rj_),
                     "max rel. diff": f"{err:.1e}"})
    print_table(rows, title=f"randla.jax.qr backward (jitted) vs jax {jax.__version__} "
                            "(CPU float64; target <= 1.2x)")


def main(argv=None):
    args, wanted = parse_sections("python -m benchmarks.compare_adjoints", __doc__, SECTIONS, argv)
    cfg = QUICK if args.quick else FULL
    import scipy

    import randla

    print(f"randla {randla.__version__}; numpy {np.__version__}; scipy {scipy.__version__}")
    funcs = {"eq": section_eq, "torch": section_torch, "jax": section_jax}
    for name in wanted:
        funcs[name](cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
