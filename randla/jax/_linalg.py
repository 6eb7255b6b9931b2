"""Differentiable QR and LQ for JAX arrays whose derivatives are randla's adjoints.

:func:`qr` and :func:`lq` work under ``jax.jit``, ``jax.vmap`` and ``jax.grad``. JAX
lets a function carry either a custom reverse rule or a custom forward rule, so
``rule`` chooses:

``rule="vjp"`` (default)
    ``jax.custom_vjp`` whose backward is :func:`randla.adjoints.qr_vjp` /
    :func:`~randla.adjoints.lq_vjp` (seed 001, eq. 3.3, or eq. 3.8). Reverse mode only
    (``jax.jvp`` of a ``custom_vjp`` function is an error in JAX).
``rule="jvp"``
    ``jax.custom_jvp`` whose tangent rule is :func:`randla.adjoints.qr_jvp` /
    :func:`~randla.adjoints.lq_jvp`. Forward mode, and reverse mode by JAX's
    transposition of that linear rule.

Complex cotangents: JAX's cotangents are the complex conjugates of the PyTorch
convention that :mod:`randla.adjoints` uses; the backward rule conjugates on the way in
and out (``jax.grad`` of a real loss then matches ``jax.grad`` through
``jnp.linalg.qr``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .. import _validate as _V
from .. import adjoints as _adj
from ..adjoints import LQResult, QRResult

__all__ = ["qr", "lq", "QRResult", "LQResult"]


def _check_input(A, name="A"):
    if not hasattr(A, "shape") or not hasattr(A, "dtype"):
        raise TypeError(f"{name} must be a JAX array, got {type(A).__name__}")
    A = jnp.asarray(A)
    _V.check_stacked_matrix(A, name)
    return A


def _conj(x):
    return jnp.conj(x) if jnp.iscomplexobj(x) else x


def _qr_factors(A):
    Q, R = jnp.linalg.qr(A, mode="reduced")
    return Q, R


def _lq_factors(A):
    Qh, Rh = jnp.linalg.qr(jnp.conj(jnp.swapaxes(A, -1, -2)), mode="reduced")  # A^H = Q^H L^H
    return jnp.conj(jnp.swapaxes(Rh, -1, -2)), jnp.conj(jnp.swapaxes(Qh, -1, -2))


def _reverse_rule(factors, vjp):
    """``factors`` (a pair) under ``jax.custom_vjp`` with the backward ``vjp``."""

    @partial(jax.custom_vjp, nondiff_argnums=(1,))
    def f(A, method):
        return factors(A)

    def fwd(A, method):
        out = factors(A)
        return out, out

    def bwd(method, res, ct):
        # JAX cotangent = conj(PyTorch-convention cotangent); no singularity check under tracing.
        # A cotangent may come as any array (jax.vjp takes NumPy ones): JAX's, in the factor's dtype.
        dQ, dR = (_conj(jnp.asarray(c, dtype=x.dtype)) for c, x in zip(ct, res, strict=True))
        dA = vjp(*res, dQ, dR, method=method, check_singular=False)
        return (_conj(dA),)

    f.defvjp(fwd, bwd)
    return f


def _forward_rule(factors, jvp):
    """``factors`` (a pair) under ``jax.custom_jvp`` with the tangent rule ``jvp``."""

    @partial(jax.custom_jvp, nondiff_argnums=(1,))
    def f(A, method):
        return factors(A)

    @f.defjvp
    def f_jvp(method, primals, tangents):
        (A,), (dA,) = primals, tangents
        F1, F2 = factors(A)
        return (F1, F2), tuple(jvp(F1, F2, dA))

    return f


# rule -> (QR, LQ); the method argument of the forward rule is unused (always "3.3")
_RULES = {
    "vjp": (_reverse_rule(_qr_factors, _adj.qr_vjp), _reverse_rule(_lq_factors, _adj.lq_vjp)),
    "jvp": (_forward_rule(_qr_factors, _adj.qr_jvp), _forward_rule(_lq_factors, _adj.lq_jvp)),
}


def _rule(rule, method, which):
    _V.check_choice(rule, "rule", _RULES)
    _V.check_choice(method, "method", _adj.METHODS)
    if rule == "jvp" and method != "3.3":
        raise ValueError("method selects the reverse formula and applies to rule='vjp' only")
    return _RULES[rule][which]


# --- public ----------------------------------------------------------------------


def qr(A, *, rule: str = "vjp", method: str = "3.3") -> QRResult:
    r"""Reduced QR ``A = Q @ R`` of a JAX array, differentiable through randla's adjoints.

    The factors are those of ``jnp.linalg.qr(A, mode="reduced")``. With ``rule="vjp"``
    the reverse rule is :func:`randla.adjoints.qr_vjp` (seed 001 eq. 3.3, or eq. 3.8
    with ``method="3.8"``); with ``rule="jvp"`` the forward rule is
    :func:`randla.adjoints.qr_jvp` and JAX transposes it for reverse mode. Tall, square
    and wide ``A``, real and complex, batched; usable under ``jax.jit`` (``rule`` and
    ``method`` are static).

    Parameters
    ----------
    A : jax.Array, shape (..., m, n)
        float32, float64, complex64 or complex128.
    rule : {"vjp", "jvp"}, optional
        Which derivative rule to attach (see the module notes).
    method : {"3.3", "3.8"}, optional
        Reverse formula, with ``rule="vjp"`` only.

    Returns
    -------
    QRResult
        ``(Q, R)``, ``Q`` of shape (..., m, k), ``R`` of shape (..., k, n),
        ``k = min(m, n)``.

    Notes
    -----
    The derivative exists where the first ``k`` columns of ``A`` are linearly
    independent; an exactly singular ``R`` gives inf/NaN derivatives (nothing is
    checked under tracing). Complex input: the derivative of the LAPACK convention
    (real diagonal of ``R``). Backward cost about ``5 m n^2 + 2 n^3`` flops for
    ``m >= n``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import randla.jax
    >>> A = jnp.array([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]])
    >>> g = jax.jit(jax.grad(lambda a: 0.5 * jnp.sum(randla.jax.qr(a).R ** 2)))(A)
    >>> bool(jnp.allclose(g, A, atol=1e-5))      # ||R||_F^2 / 2 = ||A||_F^2 / 2
    True
    """
    A = _check_input(A)
    return QRResult(*_rule(rule, method, 0)(A, method))


def lq(A, *, rule: str = "vjp", method: str = "3.3") -> LQResult:
    r"""Reduced LQ ``A = L @ Q`` of a JAX array, differentiable through randla's adjoints.

    JAX has no LQ decomposition: the factors come from the QR of ``A^H``; the derivative
    rules are :func:`randla.adjoints.lq_vjp` (``rule="vjp"``) or
    :func:`randla.adjoints.lq_jvp` (``rule="jvp"``).

    Parameters
    ----------
    A : jax.Array, shape (..., m, n)
        float32, float64, complex64 or complex128.
    rule : {"vjp", "jvp"}, optional
        Which derivative rule to attach.
    method : {"3.3", "3.8"}, optional
        Reverse formula, with ``rule="vjp"`` only.

    Returns
    -------
    LQResult
        ``(L, Q)``, ``L`` of shape (..., m, k) lower triangular with a real diagonal,
        ``Q`` of shape (..., k, n) with orthonormal rows.

    Notes
    -----
    The derivative exists where the first ``k = min(m, n)`` rows of ``A`` are linearly
    independent; an exactly singular ``L`` gives inf/NaN derivatives.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import randla.jax
    >>> A = jnp.array([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0]])
    >>> L, Q = randla.jax.lq(A)
    >>> bool(jnp.allclose(L @ Q, A, atol=1e-5))
    True
    >>> _, dL = jax.jvp(lambda a: randla.jax.lq(a, rule="jvp").L, (A,), (2 * A,))
    >>> bool(jnp.allclose(dL, 2 * L, atol=1e-5))
    True
    """
    A = _check_input(A)
    return LQResult(*_rule(rule, method, 1)(A, method))
