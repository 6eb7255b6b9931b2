"""PyTorch adapters: randla's kernels on torch tensors and ``nn.Module``\\ s.

``import randla`` never imports torch; importing this package does. The adapters are
thin: tensors cross by DLPack (zero-copy on the CPU) into randla's array-API kernels
and back; the mathematics lives in the framework-free modules.

- :func:`qr`, :func:`lq`: differentiable factorisations whose backward and forward-mode
  rules are :func:`randla.qr_vjp` / :func:`randla.lq_vjp` (and the JVPs).
"""

from ._linalg import LQResult, QRResult, lq, qr

__all__ = ["qr", "lq", "QRResult", "LQResult"]
