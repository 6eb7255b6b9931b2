"""randla: randomized numerical linear algebra on any array-API array.

Every public routine is written once against the Python array API standard and
returns results in the caller's namespace, on the caller's device, in the
caller's floating dtype (NumPy, CuPy, torch, JAX, Dask, array-api-strict).
The torch and JAX adapters live in ``randla.torch`` and ``randla.jax`` and are
imported only on request.
"""

from . import sketch, testing
from .adjoints import LQTangents, QRTangents, lq_jvp, lq_vjp, qr_jvp, qr_vjp
from .estimate import estimate_rank, normalized_error, posterior_error_estimate, spectral_norm
from .interpolative import (
    CURResult,
    IDResult,
    TwoSidedID,
    column_select,
    cur,
    id_to_svd,
    interp_decomp,
    two_sided_id,
)
from .qr import PivotedQR, cpqr, rcpqr, srrqr
from .svd import SVDResult, adaptive_range_finder, block_krylov_svd, range_finder, rsi, rsvd

__version__ = "0.1.0"

__all__ = [
    "CURResult",
    "IDResult",
    "LQTangents",
    "PivotedQR",
    "QRTangents",
    "SVDResult",
    "TwoSidedID",
    "adaptive_range_finder",
    "block_krylov_svd",
    "column_select",
    "cpqr",
    "cur",
    "estimate_rank",
    "id_to_svd",
    "interp_decomp",
    "lq_jvp",
    "lq_vjp",
    "normalized_error",
    "posterior_error_estimate",
    "qr_jvp",
    "qr_vjp",
    "range_finder",
    "rcpqr",
    "rsi",
    "rsvd",
    "sketch",
    "spectral_norm",
    "srrqr",
    "testing",
    "two_sided_id",
]
