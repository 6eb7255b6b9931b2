"""Norm and error estimators: spectral norm, a-posteriori error, normalized error.

:func:`spectral_norm` runs Golub-Kahan-Lanczos bidiagonalisation [GK1965]_;
:func:`posterior_error_estimate` is the probabilistic bound on ``||(I - Q Q^H) A||_2``
of [HMT2011]_ (Eq. 4.3).

References
----------
.. [HMT2011] N. Halko, P.-G. Martinsson, J. A. Tropp, "Finding structure with
   randomness", SIAM Review 53(2), 2011.
.. [GK1965] G. Golub, W. Kahan, "Calculating the singular values and
   pseudo-inverse of a matrix", SIAM J. Numer. Anal. 2(2), 1965.
"""

from __future__ import annotations

import math

import numpy as np

from . import _backend as B
from . import _validate as V
from ._scale import norm as _norm
from ._scale import pow2_scale
from .sketch import gaussian

__all__ = ["spectral_norm", "posterior_error_estimate", "normalized_error", "estimate_rank"]


def _residual_operand(A, U, S, Vh):
    """The operand ``A - U diag(S) Vh`` applied through products only."""
    op = V.as_operand(A, check_finite=False)
    xp = op.xp
    S = xp.astype(S, op.dtype)
    US, SVh = U * S[None, :], S[:, None] * Vh
    return op._replace(
        matmat=lambda X: op.matmat(X) - US @ (Vh @ X),
        rmatmat=lambda X: op.rmatmat(X) - B.mH(SVh) @ (B.mH(U) @ X),
        dense=False,
    )


def _lanczos_norm(op, steps, rng):
    """Largest singular value by Golub-Kahan-Lanczos bidiagonalisation [GK1965].

    ``steps`` steps with full reorthogonalisation; the largest singular value of
    the ``steps x steps`` bidiagonal matrix converges to ``||A||_2`` from below,
    much faster than the power method (error ~ exp(-4 steps sqrt(gap))).
    """
    like = V.operand_like(op)
    if B.backend_name(B.namespace(like)) == "dask":
        return B.from_numpy(np.asarray(_lanczos_norm(_on_host(op, like), steps, rng)), like=like)
    if op.shape[1] > op.shape[0]:
        # start in the smaller space: from v in C^n, min(m, n) steps of a wide A spend one on
        # v's part in the null space and miss the top of the spectrum (5 x 400: -0.7 %)
        op = V.adjoint_operand(op)
    xp = op.xp
    m, n = op.shape
    steps = min(steps, m, n)
    v = gaussian(n, 1, like=V.operand_like(op), rng=rng)
    v = v / xp.linalg.vector_norm(v)
    # work with A / c, c a power of two near the first product's magnitude (exact; no
    # over/underflow of squared norms for data at 1e+-200), and scale the result back
    r = op.matmat(v)
    c = xp.astype(pow2_scale(xp.max(xp.abs(r))), op.dtype)
    Vs, Us, alphas, betas = [v], [], [], []
    u = None
    for j in range(steps):
        r = (r if j == 0 else op.matmat(Vs[-1])) / c
        if u is not None:
            r = r - betas[-1] * u
        for uu in Us:  # full reorthogonalisation
            r = r - uu @ (B.mH(uu) @ r)
        a = xp.linalg.vector_norm(r)
        u = r / xp.where(a > 0, a, xp.ones_like(a))
        Us.append(u)
        alphas.append(a)
        if j == steps - 1:
            break
        w = op.rmatmat(u) / c - a * Vs[-1]
        for vv in Vs:
            w = w - vv @ (B.mH(vv) @ w)
        b = xp.linalg.vector_norm(w)
        Vs.append(w / xp.where(b > 0, b, xp.ones_like(b)))
        betas.append(b)
    k = len(alphas)
    rdt = B.real_dtype(xp, op.dtype)
    dev = B.device(Us[0])
    # the bidiagonal matrix by products, not item writes (they detach torch's autograd)
    a = xp.stack([xp.astype(x, rdt) for x in alphas])
    b = xp.stack([xp.astype(x, rdt) for x in betas] + [xp.zeros((), dtype=rdt, device=dev)])
    T = xp.eye(k, dtype=rdt, device=dev) * a[:, None] + xp.eye(k, k=1, dtype=rdt, device=dev) * b[:, None]
    top = xp.max(B.svd(T)[1])
    if not B.is_lazy(top) and B.scalar(top) * B.scalar(xp.real(c)) > float(xp.finfo(rdt).max):
        raise ValueError(f"A is finite but its norm overflows {rdt}; rescale A")
    return top * xp.real(c)


def _on_host(op, like):
    """A Dask operand seen from NumPy: each product is computed (one pass over ``A``) and
    the Lanczos vectors live on the host. The recurrence kept lazy built a graph that
    grows with the square of the steps (200 x 60, 30 steps: 5,400 tasks, 8 s to
    build)."""
    dtype = np.dtype(op.dtype)

    def product(f):
        return lambda X: np.asarray(B.to_numpy(f(B.from_numpy(X, like=like))))

    return V.Operand(np.zeros((1, 1), dtype=dtype), B.namespace(np.zeros(1)), op.shape, dtype,
                     product(op.matmat), product(op.rmatmat), False)


@B.wide_floats
def spectral_norm(A, *, steps=30, rng=None, check_finite=True):
    """Estimate ``||A||_2`` by Golub-Kahan-Lanczos bidiagonalisation.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator``
    steps : int, default 30
        Lanczos steps (each one pass with ``A`` and one with ``A^H``).
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    norm : 0-d array (real)
        A lower bound on ``||A||_2`` that is accurate to a few digits after 30
        steps on any spectrum; exact once ``steps >= min(m, n)``.

    Notes
    -----
    Dask: eager; every product is computed (two passes over ``A`` per step) and the
    recurrence runs on the host, on vectors of length ``m`` and ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> from randla.estimate import spectral_norm
    >>> A = np.diag([5.0, 2.0, 1.0])
    >>> round(float(spectral_norm(A, rng=0)), 6)
    5.0
    """
    op = V.as_operand(A, check_finite=check_finite)
    return _lanczos_norm(op, V.check_count(steps, "steps", minimum=1), rng)


@B.wide_floats
def posterior_error_estimate(A, Q, *, n_probes=10, rng=None, check_finite=True):
    """Probabilistic bound on ``||(I - Q Q^H) A||_2`` [HMT2011, Eq. 4.3].

    ``10 sqrt(2/pi) max_i ||(I - Q Q^H) A w_i||`` over ``n_probes`` Gaussian vectors
    ``w_i``; it exceeds the true error with probability at most ``10^-n_probes``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator``
    Q : array (m, l)
        Orthonormal columns.
    n_probes : int, default 10
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    bound : 0-d array (real)

    Examples
    --------
    >>> import numpy as np
    >>> from randla import range_finder
    >>> from randla.estimate import posterior_error_estimate
    >>> from randla.testing import matrix
    >>> A, s = matrix(200, 100, spectrum="exponential", rng=0)
    >>> Q = range_finder(A, 10, rng=0)
    >>> err = np.linalg.norm(A - Q @ (Q.T @ A), 2)
    >>> bool(err <= float(posterior_error_estimate(A, Q, rng=1)))
    True
    """
    op = V.as_operand(A, check_finite=check_finite)
    r = V.check_count(n_probes, "n_probes", minimum=1)
    like = V.operand_like(op)  # a SciPy operand's products are NumPy arrays
    xp = B.namespace(like)
    # an empty basis is rank 0, as adaptive_range_finder gives for a zero A
    Q = V.as_factor(Q, "Q", xp, check_finite=check_finite, finite_hint=True, allow_empty=True)
    if Q.shape[0] != op.shape[0]:
        raise ValueError(f"Q must have m = {op.shape[0]} rows like A, got shape {tuple(Q.shape)}")
    Y = op.matmat(gaussian(op.shape[1], r, like=like, rng=rng))
    if Q.shape[1]:
        Y = Y - Q @ (B.mH(Q) @ Y)
    return 10 * math.sqrt(2 / math.pi) * xp.max(_norm(Y, axis=0))


@B.wide_floats
def normalized_error(A, U, S, Vh, *, s=None, method="svd", rng=None):
    """Normalized spectral error ``||A - U diag(S) Vh||_2 / sigma_{k+1}(A)`` (1 is optimal).

    Parameters
    ----------
    A : array (m, n)
    U, S, Vh : arrays
        A rank-``k`` approximation (``S`` of length ``k < min(m, n)``; ``k = 0``, the
        zero approximation that ``rsvd(A, rtol=...)`` returns for a zero ``A``, too).
    s : array, optional
        Singular values of ``A`` (at least ``k + 1``, descending); computed exactly
        when omitted.
    method : {"svd", "lanczos"}, default "svd"
        Residual norm by an exact SVD, or by 60 Lanczos steps on the residual as an
        operator (much faster on large matrices, accurate to about 1e-3).
    rng : None, int or numpy.random.Generator
        For ``method="lanczos"``.

    Returns
    -------
    float
        1 where the residual and ``sigma_(k+1)`` are both at the rounding level of
        ``sigma_1`` (an exact factorisation of a matrix of rank at most ``k``).

    Examples
    --------
    >>> import numpy as np
    >>> from randla.estimate import normalized_error
    >>> A = np.diag([3.0, 2.0, 1.0])
    >>> U, S, Vh = np.linalg.svd(A)
    >>> normalized_error(A, U[:, :1], S[:1], Vh[:1])
    1.0
    """
    V.check_eager("normalized_error", "its singular values, to return a Python float", A=A, U=U, S=S, Vh=Vh, s=s)
    residual_norm = _RESIDUAL_NORMS[V.check_choice(method, "method", _RESIDUAL_NORMS)]
    B.as_generator(rng)  # checked whether or not the method draws
    A, xp = V.as_matrix(A)
    U, S, Vh = (V.as_factor(U, "U", xp, allow_empty=True), V.as_factor(S, "S", xp, ndim=1, allow_empty=True),
                V.as_factor(Vh, "Vh", xp, allow_empty=True))
    k = S.shape[0]
    if tuple(U.shape) != (A.shape[0], k) or tuple(Vh.shape) != (k, A.shape[1]):
        raise ValueError(
            f"U (m, k), S (k,) and Vh (k, n) must fit A {tuple(A.shape)}, got shapes "
            f"{tuple(U.shape)}, {tuple(S.shape)} and {tuple(Vh.shape)}"
        )
    if k >= min(A.shape):
        raise ValueError(f"a rank-{k} approximation of a {tuple(A.shape)} matrix has no sigma_(k+1)")
    if s is None:
        s = xp.linalg.svdvals(A) if B.backend_name(xp) != "dask" else B.svd(A)[1]
    s = np.asarray(B.to_numpy(s), dtype=np.float64).reshape(-1)
    if s.size <= k or not np.isfinite(s).all():
        raise ValueError(f"s must hold at least k + 1 = {k + 1} finite singular values of A, got {s.size}"
                         f"{'' if np.isfinite(s).all() else ' with NaN or Inf'}")
    res = residual_norm(A, U, S, Vh, rng)
    rounding = 100 * B.eps(xp, A.dtype) * s[0]
    if res <= rounding and s[k] <= rounding:  # both rounding, as on a matrix of rank <= k: the ratio is noise
        return 1.0
    return math.inf if s[k] == 0.0 else float(res / s[k])


def _exact_residual_norm(A, U, S, Vh, rng):
    xp = B.namespace(A)
    R = A - (U * xp.astype(S, A.dtype)[None, :]) @ Vh
    return float(B.to_numpy(B.svd(R)[1])[0])


def _lanczos_residual_norm(A, U, S, Vh, rng):
    return B.scalar(_lanczos_norm(_residual_operand(A, U, S, Vh), 60, rng))


_RESIDUAL_NORMS = {"svd": _exact_residual_norm, "lanczos": _lanczos_residual_norm}


@B.wide_floats
def estimate_rank(A, rtol, *, block_size=32, q=1, rng=None, check_finite=True):
    """Numerical rank to a relative spectral tolerance, from products with ``A``.

    The rank ``r`` that :func:`randla.svd.adaptive_range_finder` finds with ``norm="2"``:
    a basis with ``||A - Q Q^H A||_2 <= rtol ||A||_2``, so ``r`` estimates
    ``#{i : sigma_i > rtol sigma_1}`` from above (measured: within 1.2 times it on
    polynomially and exponentially decaying spectra). Counterpart of
    ``scipy.linalg.interpolative.estimate_rank``.

    Parameters
    ----------
    A : array (m, n), SciPy sparse array or ``LinearOperator``
    rtol : float
        Relative tolerance in (0, 1).
    block_size, q : int
        As in :func:`randla.svd.adaptive_range_finder`.
    rng : None, int or numpy.random.Generator
    check_finite : bool, default True

    Returns
    -------
    int

    Notes
    -----
    Cost: that of :func:`randla.svd.adaptive_range_finder` (``2q + 2`` passes per block
    of ``block_size`` vectors and one more pass); eager.

    Examples
    --------
    >>> from randla.estimate import estimate_rank
    >>> from randla.testing import matrix
    >>> A, s = matrix(200, 100, spectrum="exponential", decay=0.1, rng=0)
    >>> int((s > 1e-6 * s[0]).sum()), estimate_rank(A, 1e-6, rng=0)
    (60, 61)
    """
    V.check_eager("estimate_rank", "the error estimates that choose the rank, to return a Python int", A=A, rtol=rtol)
    from ._adaptive import adaptive_qb

    Q = adaptive_qb(A, rtol, block_size=block_size, q=q, max_rank=None, norm="2", rng=rng,
                    check_finite=check_finite, need_b=False)[0]
    return int(Q.shape[1])
