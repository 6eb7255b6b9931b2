"""asv benchmarks: QR/LQ adjoints (NumPy) and the differentiable QR of the adapters.

``TimeQRVJP`` compares seed 001's eq. 3.3 with eq. 3.8 on random matrices of growing
defect (columns = defect x rows) and on random stand-ins of the Harwell-Boeing shapes
(wm1 207 x 277, wm2/wm3 207 x 260). ``TimeTorchQRBackward`` and ``TimeJaxQRBackward``
time only the backward pass of ``randla.torch.qr`` / ``randla.jax.qr`` and of the
framework's own QR derivative on the same forward result.
"""

from __future__ import annotations

import numpy as np

from . import sizes


def _factors(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        A = A + 1j * rng.standard_normal(shape)
    A = A.astype(dtype)
    Q, R = np.linalg.qr(A)
    dQ = rng.standard_normal(Q.shape).astype(dtype)
    dR = rng.standard_normal(R.shape).astype(dtype)
    return A, Q, R, dQ, dR


class TimeQRVJP:
    """qr_vjp, eq. 3.3 against eq. 3.8 (NumPy)."""

    params = (
        sizes([(200, 200), (200, 400), (200, 800), (200, 1600), (207, 277), (207, 260), (800, 200)],
              [(20, 20), (20, 28), (28, 20)]),
        ["3.3", "3.8"],
        ["float64", "complex128"],
    )
    param_names = ["shape", "method", "dtype"]

    def setup(self, shape, method, dtype):
        _, self.Q, self.R, self.dQ, self.dR = _factors(shape, dtype)

    def time_qr_vjp(self, shape, method, dtype):
        from randla.adjoints import qr_vjp

        qr_vjp(self.Q, self.R, self.dQ, self.dR, method=method)


class TimeLQVJP:
    """lq_vjp (NumPy): the QR adjoint of ``A^H`` plus conjugate transposes."""

    params = (sizes([(200, 800), (800, 200)], [(20, 28), (28, 20)]), ["float64", "complex128"])
    param_names = ["shape", "dtype"]

    def setup(self, shape, dtype):
        _, Qt, Rt, dQt, dRt = _factors(shape[::-1], dtype)
        self.L, self.Q = Rt.conj().T.copy(), Qt.conj().T.copy()
        self.dL, self.dQ = dRt.conj().T.copy(), dQt.conj().T.copy()

    def time_lq_vjp(self, shape, dtype):
        from randla.adjoints import lq_vjp

        lq_vjp(self.L, self.Q, self.dL, self.dQ)


class TimeQRJVP:
    """qr_jvp, forward mode (NumPy)."""

    params = (sizes([(200, 800), (207, 277), (800, 200)], [(20, 28), (28, 20)]), ["float64", "complex128"])
    param_names = ["shape", "dtype"]

    def setup(self, shape, dtype):
        A, self.Q, self.R, _, _ = _factors(shape, dtype)
        self.dA = _factors(shape, dtype, seed=1)[0]

    def time_qr_jvp(self, shape, dtype):
        from randla.adjoints import qr_jvp

        qr_jvp(self.Q, self.R, self.dA)


SHAPES = sizes([(2000, 500), (1000, 1000), (500, 2000)], [(40, 20), (20, 40)])


class TimeTorchQRBackward:
    """Backward pass of randla.torch.qr (eq. 3.3 / 3.8) and of torch.linalg.qr, CPU float64."""

    params = (SHAPES, ["randla-3.3", "randla-3.8", "torch"])
    param_names = ["shape", "impl"]
    timeout = 300

    def setup(self, shape, impl):
        try:
            import torch
        except ImportError:
            raise NotImplementedError("torch is not installed") from None
        import randla.torch as rt

        g = torch.Generator().manual_seed(0)
        self.A = torch.randn(shape, dtype=torch.float64, generator=g, requires_grad=True)
        if impl == "torch":
            self.out = tuple(torch.linalg.qr(self.A))
        else:
            self.out = tuple(rt.qr(self.A, method=impl.split("-")[1]))
        self.ct = tuple(torch.randn(o.shape, dtype=o.dtype, generator=g) for o in self.out)
        self.grad = torch.autograd.grad

    def time_backward(self, shape, impl):
        self.grad(self.out, (self.A,), self.ct, retain_graph=True)


class TimeJaxQRBackward:
    """Backward pass (jitted) of randla.jax.qr and of jnp.linalg.qr, CPU float64."""

    params = (SHAPES, ["randla-vjp", "randla-jvp", "jax"])
    param_names = ["shape", "impl"]
    timeout = 300

    def setup(self, shape, impl):
        try:
            import jax
        except ImportError:
            raise NotImplementedError("jax is not installed") from None
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        import randla.jax as rj

        rng = np.random.default_rng(0)
        A = jnp.asarray(rng.standard_normal(shape))
        if impl == "jax":
            f = jnp.linalg.qr
        else:
            rule = impl.split("-")[1]

            def f(a):
                return rj.qr(a, rule=rule)

        out, self.vjp = jax.vjp(lambda a: tuple(f(a)), A)
        self.ct = tuple(jnp.asarray(rng.standard_normal(o.shape)) for o in out)
        self.apply = jax.jit(lambda fn, ct: fn(ct))
        jax.block_until_ready(self.apply(self.vjp, self.ct))  # compile outside the clock

    def time_backward(self, shape, impl):
        self.apply(self.vjp, self.ct)[0].block_until_ready()
