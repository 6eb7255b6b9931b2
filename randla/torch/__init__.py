"""PyTorch adapters: randla's kernels on torch tensors and ``nn.Module``\\ s.

``import randla`` never imports torch; importing this package does. The adapters are
thin: tensors cross by DLPack (zero-copy on the CPU) into randla's array-API kernels
and back; the mathematics lives in the framework-free modules.

- :func:`qr`, :func:`lq`: differentiable factorisations whose backward and forward-mode
  rules are :func:`randla.adjoints.qr_vjp` / :func:`randla.adjoints.lq_vjp` (and the
  JVPs).
- :func:`compress`: replace ``nn.Linear``/``nn.Conv2d`` layers by :class:`LowRankLinear` /
  :class:`LowRankConv2d`, plain or whitened by :func:`calibrate`'s Gram matrices.
- :func:`save_lowrank`, :func:`load_lowrank`: a compressed model to and from randla's
  safetensors checkpoint format (``NAME.lowrank_A`` / ``NAME.lowrank_B``), the format
  ``randla compress`` writes.
- :func:`prune_mlp`: neuron pruning of ``Linear -> act -> Linear`` pairs (and gated MLPs)
  by an interpolative decomposition of the activations; the layers stay ``nn.Linear``.
- :func:`run_with_input_hooks`, :func:`call_model`, :func:`select_modules`: the one
  place that feeds calibration batches to a model and watches named layers' inputs.
"""

import importlib.util as _util

if _util.find_spec("torch") is None:
    raise ModuleNotFoundError("randla.torch needs PyTorch, which is not installed: pip install \"randla[torch]\"",
                              name="torch")

from ._calibration import Calibration, calibrate, layer_inputs
from ._checkpoint import load_lowrank, save_lowrank
from ._compress import compress, from_array, to_array
from ._hooks import call_model, eligible_layers, run_with_hooks, run_with_input_hooks, select_modules
from ._linalg import LQResult, QRResult, lq, qr
from ._modules import LowRankConv2d, LowRankLinear
from ._prune import prune_mlp

__all__ = [
    "qr",
    "lq",
    "QRResult",
    "LQResult",
    "LowRankLinear",
    "LowRankConv2d",
    "Calibration",
    "calibrate",
    "layer_inputs",
    "compress",
    "prune_mlp",
    "eligible_layers",
    "to_array",
    "from_array",
    "call_model",
    "run_with_hooks",
    "run_with_input_hooks",
    "select_modules",
    "save_lowrank",
    "load_lowrank",
]
