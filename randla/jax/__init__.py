"""JAX adapters: randla's kernels on JAX arrays and parameter pytrees.

``import randla`` never imports JAX; importing this package does. The mathematics
lives in the framework-free modules; this package only attaches JAX's derivative
rules and walks pytrees.

- :func:`qr`, :func:`lq`: differentiable under ``jax.jit``, ``jax.vmap`` and ``jax.grad``,
  with :func:`randla.adjoints.qr_vjp` / :func:`randla.adjoints.lq_vjp` (or the JVPs) as
  their rules.
- :func:`compress`: low-rank factors for the 2-D kernels of a parameter pytree (Flax
  ``Dense`` kernels, ``in x out``), plain or whitened by calibration Gram matrices.
"""

import importlib.util as _util

if _util.find_spec("jax") is None:
    raise ModuleNotFoundError("randla.jax needs JAX, which is not installed: pip install \"randla[jax]\"",
                              name="jax")

from ._compress import compress, leaf_paths
from ._linalg import LQResult, QRResult, lq, qr

__all__ = ["qr", "lq", "QRResult", "LQResult", "compress", "leaf_paths"]
