"""randla: randomized numerical linear algebra on any array-API array.

Every public routine is written once against the Python array API standard and
returns results in the caller's namespace, on the caller's device, in the
caller's floating dtype (NumPy, CuPy, torch, JAX, Dask, array-api-strict).
"""

from .estimate import normalized_error, posterior_error_estimate, spectral_norm
from . import sketch, testing
from .svd import SVDResult, adaptive_range_finder, block_krylov_svd, range_finder, rsi, rsvd

__version__ = "0.1.0"

__all__ = [
    "SVDResult",
    "adaptive_range_finder",
    "block_krylov_svd",
    "normalized_error",
    "posterior_error_estimate",
    "range_finder",
    "rsi",
    "rsvd",
    "spectral_norm",
]
