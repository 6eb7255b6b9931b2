"""asv benchmarks: the randomized SVD family (time and normalized spectral error).

``time_*`` measure one call; ``track_*`` return the normalized spectral error
``||A - A_k||_2 / sigma_{k+1}`` (1 is optimal), with ``sigma_{k+1}`` from the known
spectrum of the test matrix (slow decay ``sigma_i = i^-0.5`` unless stated).
Matrices are generated once per class (``setup_cache``) in NumPy; the torch
backend wraps the same memory (``torch.from_numpy``). Torch runs on the CPU,
which is synchronous: no device synchronisation is needed before the clock stops.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import scipy.linalg  # noqa: F401  (imported once here, not inside the first timed call)

import randla

from . import sizes
from ._common import normalized_error, projection_error

SHAPES = sizes(["1024x512", "2048x1024"], ["512x256"])  # one small shape: asv spawns a process per run
DTYPES = ["float32", "float64"]
BACKENDS = ["numpy", "torch"]
P = 10


def _shape(label):
    m, n = label.split("x")
    return int(m), int(n)


def _rank(label):
    return _shape(label)[1] // 8  # k = 64 and 128


def _matrices(shapes, spectrum="polynomial", **kw):
    from randla.testing import matrix

    out = {}
    for label in shapes:
        A, s = matrix(*_shape(label), spectrum=spectrum, dtype="float64", rng=0, **kw)
        for dtype in DTYPES:
            out[label, dtype] = (np.ascontiguousarray(A, dtype=dtype), np.asarray(s))
    return out


def _on_backend(A, backend):
    if backend == "numpy":
        return A
    # asv spawns a fresh interpreter per benchmark: torch (about 1 s to import) is
    # imported only where it is used
    if importlib.util.find_spec(backend) is None:
        raise NotImplementedError(f"{backend} is not installed")  # asv skips the combination
    import torch

    A = torch.from_numpy(A)
    randla.rsvd(A[:64, :32], 2, rng=0)  # first-call costs (lazy imports in torch) stay out of the timing
    return A


class _SVDBase:
    timeout = 300

    def setup_cache(self):
        return _matrices(SHAPES)

    def _load(self, cache, backend, shape, dtype):
        A, self.s = cache[shape, dtype]
        self.A = _on_backend(A, backend)
        self.k = _rank(shape)

    def _run(self, name, q):
        return getattr(randla, name)(self.A, self.k, p=P, q=q, rng=0)


class TimeSVD(_SVDBase):
    """Time of rsvd, rsi and block Krylov SVD at rank ``k = n / 8``, ``p = 10``."""

    params = (BACKENDS, SHAPES, DTYPES, [0, 1, 2])
    param_names = ["backend", "shape", "dtype", "q"]

    def setup(self, cache, backend, shape, dtype, q):
        self._load(cache, backend, shape, dtype)

    def time_rsvd(self, cache, backend, shape, dtype, q):
        self._run("rsvd", q)

    def time_rsi(self, cache, backend, shape, dtype, q):
        self._run("rsi", q)

    def time_block_krylov_svd(self, cache, backend, shape, dtype, q):
        self._run("block_krylov_svd", q)


class TrackSVD(_SVDBase):
    """Normalized spectral error of rsvd (LU stabiliser), rsi and block Krylov SVD (NumPy).

    ``rsvd`` runs with ``stabilizer="lu"`` here, since with the default stabiliser
    it computes what ``rsi`` computes.
    """

    params = (SHAPES, DTYPES, [0, 1, 2, 4])
    param_names = ["shape", "dtype", "q"]

    def setup(self, cache, shape, dtype, q):
        self._load(cache, "numpy", shape, dtype)

    def track_rsvd_lu_error(self, cache, shape, dtype, q):
        res = randla.rsvd(self.A, self.k, p=P, q=q, stabilizer="lu", rng=0)
        return normalized_error(self.A, *res, self.s)

    def track_rsi_error(self, cache, shape, dtype, q):
        return normalized_error(self.A, *self._run("rsi", q), self.s)

    def track_block_krylov_svd_error(self, cache, shape, dtype, q):
        return normalized_error(self.A, *self._run("block_krylov_svd", q), self.s)

    track_rsvd_lu_error.unit = track_rsi_error.unit = track_block_krylov_svd_error.unit = "error/sigma_k+1"


class RangeFinder:
    """range_finder with each stabiliser, ``k = n / 8``, ``p = 10`` on 2048 x 1024."""

    params = (BACKENDS, ["cholqr", "qr", "lu", "none"], DTYPES, [1, 2])
    param_names = ["backend", "stabilizer", "dtype", "q"]
    timeout = 300
    shape = SHAPES[-1]

    def setup_cache(self):
        return _matrices([self.shape])

    def setup(self, cache, backend, stabilizer, dtype, q):
        A, self.s = cache[self.shape, dtype]
        self.A = _on_backend(A, backend)
        self.k = _rank(self.shape)

    def _run(self, stabilizer, q):
        return randla.range_finder(self.A, self.k, p=P, q=q, stabilizer=stabilizer, rng=0)

    def time_range_finder(self, cache, backend, stabilizer, dtype, q):
        self._run(stabilizer, q)

    def track_range_finder_error(self, cache, backend, stabilizer, dtype, q):
        """``||A - Q Q^H A||_2 / sigma_{k+1}`` for the ``k + p`` columns of ``Q``."""
        return projection_error(self.A, self._run(stabilizer, q), self.s, self.k)

    track_range_finder_error.unit = "error/sigma_k+1"


class AdaptiveRangeFinder:
    """adaptive_range_finder (Frobenius indicator) on ``sigma_i = 10^(-0.02 (i-1))``."""

    params = (SHAPES, DTYPES, [1e-1, 1e-2])
    param_names = ["shape", "dtype", "rtol"]
    timeout = 300

    def setup_cache(self):
        return _matrices(self.params[0], spectrum="exponential", decay=0.02)

    def setup(self, cache, shape, dtype, rtol):
        self.A, self.s = cache[shape, dtype]

    def _run(self, rtol):
        return randla.adaptive_range_finder(self.A, rtol, rng=0)

    def time_adaptive_range_finder(self, cache, shape, dtype, rtol):
        self._run(rtol)

    def track_rank_over_optimal(self, cache, shape, dtype, rtol):
        """Rank found over the smallest rank that meets ``rtol`` (from the known spectrum)."""
        tail = np.sqrt(np.cumsum((self.s**2)[::-1])[::-1])  # tail[r] = ||A - A_r||_F
        optimal = int(np.argmax(tail <= rtol * tail[0]))
        return self._run(rtol).shape[1] / max(optimal, 1)

    def track_frobenius_error_over_rtol(self, cache, shape, dtype, rtol):
        """``||A - Q Q^H A||_F / (rtol ||A||_F)``: at most 1 when the tolerance is met."""
        Q = self._run(rtol).astype(np.float64)
        A = self.A.astype(np.float64)
        return float(np.linalg.norm(A - Q @ (Q.T @ A)) / (rtol * np.linalg.norm(A)))

    def track_normalized_error(self, cache, shape, dtype, rtol):
        """Normalized spectral error at the rank found."""
        Q = self._run(rtol)
        return projection_error(self.A, Q, self.s, Q.shape[1])

    track_rank_over_optimal.unit = "ratio"
    track_frobenius_error_over_rtol.unit = "ratio"
    track_normalized_error.unit = "error/sigma_r+1"


class SmallMany:
    """rsi on compression-sized matrices: one 384 x 384 at rank 0.4 n, and a stack of 25 of
    them in one call (the attention projections of a 6-layer, 384-wide encoder), float32,
    ``q = 2``, ``p = 10``. ``track_*`` is the normalized spectral error (1 is optimal) of
    the first matrix."""

    params = (BACKENDS, ["one", "stack"])
    param_names = ["backend", "batch"]
    timeout = 300
    n = sizes(384, 96)
    count = sizes(25, 4)

    def setup_cache(self):
        from randla.testing import matrix

        mats = [matrix(self.n, self.n, spectrum="pretrained", dtype="float32", rng=i) for i in range(self.count)]
        return np.stack([a for a, _ in mats]), np.stack([s for _, s in mats])

    def setup(self, cache, backend, batch):
        A, self.s = cache
        A = A[0] if batch == "one" else A
        self.A = _on_backend(A, backend)
        self.k = int(0.4 * self.n)

    def _run(self):
        return randla.rsi(self.A, self.k, p=P, q=2, rng=0)

    def time_rsi(self, cache, backend, batch):
        self._run()

    def track_rsi_error(self, cache, backend, batch):
        from ._common import to_numpy

        U, S, Vh = (to_numpy(x) for x in self._run())
        if batch == "stack":
            U, S, Vh = U[0], S[0], Vh[0]
        A = to_numpy(self.A)
        return normalized_error(A[0] if batch == "stack" else A, U, S, Vh, self.s[0])

    track_rsi_error.unit = "error/sigma_k+1"
