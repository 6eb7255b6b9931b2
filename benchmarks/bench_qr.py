"""asv benchmarks: pivoted QR, interpolative decomposition, column selection (NumPy)."""

from __future__ import annotations

import numpy as np

from . import sizes


def _matrix(m, n, dtype, decay=0.5):
    from randla.testing import matrix

    A, s = matrix(m, n, spectrum="polynomial", decay=decay, dtype=dtype, rng=0)
    return np.ascontiguousarray(A), np.asarray(s, dtype=np.float64)


class TimePivotedQR:
    """Randomized and partial CPQR against LAPACK geqp3, k = n / 16."""

    params = (sizes([(1024, 1024), (2048, 512)], [(128, 96)]), ["float32", "float64"])
    param_names = ["shape", "dtype"]
    timeout = 300

    def setup(self, shape, dtype):
        self.A, _ = _matrix(*shape, dtype)
        self.k = max(shape[1] // 16, 1)

    def time_geqp3(self, shape, dtype):
        import scipy.linalg as sl

        sl.qr(self.A, mode="economic", pivoting=True)

    def time_cpqr_partial(self, shape, dtype):
        from randla.qr import cpqr

        cpqr(self.A, self.k)

    def time_rcpqr(self, shape, dtype):
        from randla.qr import rcpqr

        rcpqr(self.A, self.k, rng=0)

    def time_srrqr(self, shape, dtype):
        from randla.qr import srrqr

        srrqr(self.A, self.k)


class TimeInterpDecomp:
    """interp_decomp by method against scipy.linalg.interpolative at equal k."""

    params = (
        sizes([(1000, 1000), (2048, 512)], [(120, 100)]),
        ["randomized", "cpqr", "srrqr", "scipy_rand", "scipy_det"],
    )
    param_names = ["shape", "method"]
    timeout = 300

    def setup(self, shape, method):
        self.A, _ = _matrix(*shape, "float64")
        self.k = shape[1] // 10

    def time_interp_decomp(self, shape, method):
        if method.startswith("scipy"):
            import scipy.linalg.interpolative as sli

            sli.interp_decomp(self.A, self.k, rand=method == "scipy_rand", rng=np.random.default_rng(0))
        else:
            from randla.interpolative import interp_decomp

            interp_decomp(self.A, self.k, method=method, rng=0)


class TrackQuality:
    """Accuracy figures: |R_jj| ratio to geqp3, ID and column-selection errors / sigma_{k+1}."""

    params = (sizes([(800, 600)], [(120, 100)]),)
    param_names = ["shape"]
    timeout = 300

    def setup(self, shape):
        self.A, self.s = _matrix(*shape, "float64")
        self.k = shape[1] // 10

    def track_rcpqr_min_diag_ratio(self, shape):
        import scipy.linalg as sl

        from randla.qr import rcpqr

        _, R0, _ = sl.qr(self.A, mode="economic", pivoting=True)
        R = rcpqr(self.A, self.k, rng=0).R
        return float(np.min(np.abs(np.diag(R[:, : self.k])) / np.abs(np.diag(R0))[: self.k]))

    track_rcpqr_min_diag_ratio.unit = "ratio"

    def _id_error(self, method):
        from randla.interpolative import interp_decomp

        idx, T = interp_decomp(self.A, self.k, method=method, rng=0)
        return float(np.linalg.norm(self.A - self.A[:, idx] @ T, 2) / self.s[self.k])

    def track_id_error_randomized(self, shape):
        return self._id_error("randomized")

    def track_id_error_cpqr(self, shape):
        return self._id_error("cpqr")

    track_id_error_randomized.unit = track_id_error_cpqr.unit = "error / sigma_k+1"

    def _select_error(self, method):
        from randla.interpolative import column_select

        C = self.A[:, column_select(self.A, self.k, method=method, rng=0)]
        Q = np.linalg.qr(C)[0]
        return float(np.linalg.norm(self.A - Q @ (Q.T @ self.A), 2) / self.s[self.k])

    def track_select_error_randomized_gks(self, shape):
        return self._select_error("randomized_gks")

    def track_select_error_gks(self, shape):
        return self._select_error("gks")

    def track_select_error_srrqr(self, shape):
        return self._select_error("srrqr")

    track_select_error_randomized_gks.unit = "error / sigma_k+1"
    track_select_error_gks.unit = track_select_error_srrqr.unit = "error / sigma_k+1"
