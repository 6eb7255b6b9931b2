"""Differentiable QR and LQ for torch tensors whose derivatives are randla's adjoints.

:func:`qr` and :func:`lq` are ``torch.autograd.Function``\\ s: the forward pass is
``torch.linalg.qr``, the backward pass calls :func:`randla.adjoints.qr_vjp` /
:func:`randla.adjoints.lq_vjp` on the saved torch tensors themselves (same device,
no host copies), and forward-mode AD (``torch.func.jvp``, ``torch.autograd.forward_ad``)
calls :func:`~randla.adjoints.qr_jvp` / :func:`~randla.adjoints.lq_jvp`. The backward
is built from differentiable torch operations, so double backward (Hessian-vector
products, ``gradgradcheck``) works too, and ``torch.func.vmap`` gets a generated rule.
"""

from __future__ import annotations

import torch

from .. import _validate as _V
from .. import adjoints as _adj
from ..adjoints import LQResult, QRResult

__all__ = ["qr", "lq", "QRResult", "LQResult"]


# ----------------------------------------------------------------------------------
# differentiable QR and LQ
# ----------------------------------------------------------------------------------

def _check_input(A, method, name="A"):
    if not isinstance(A, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(A).__name__}")
    _V.check_stacked_matrix(A, name)
    _V.check_choice(method, "method", _adj.METHODS)


def _materialised_adjoint(t):
    """``t^H`` as a fresh contiguous tensor: no view, no lazy conjugation bit (autograd
    Function outputs that are views of intermediates break forward-mode AD)."""
    return t.mH.resolve_conj().clone(memory_format=torch.contiguous_format)  # clone: vmap can batch it


def _qr_factors(A):
    return tuple(torch.linalg.qr(A, mode="reduced"))


def _lq_factors(A):
    Qh, Rh = torch.linalg.qr(A.mH, mode="reduced")  # A^H = Q^H L^H
    return _materialised_adjoint(Rh), _materialised_adjoint(Qh)


def _differentiable(name, factors, vjp, jvp):
    """A ``torch.autograd.Function`` computing ``factors(A)`` (a pair) whose backward is
    ``vjp(F1, F2, dF1, dF2)`` and whose forward-mode rule is ``jvp(F1, F2, dA)``."""

    def forward(A, method):
        return factors(A)

    def setup_context(ctx, inputs, output):
        ctx.method = inputs[1]
        ctx.save_for_backward(*output)
        ctx.save_for_forward(*output)
        ctx.set_materialize_grads(False)

    def backward(ctx, d1, d2):
        if d1 is None and d2 is None:
            return None, None
        F1, F2 = ctx.saved_tensors
        # No singularity check: it would synchronise the device on every backward.
        # An exactly singular factor gives inf/NaN, as torch's own QR backward does.
        return vjp(F1, F2, d1, d2, method=ctx.method, check_singular=False), None

    def forward_ad(ctx, dA, _):
        F1, F2 = ctx.saved_tensors
        return tuple(jvp(F1, F2, dA))

    rules = dict(forward=forward, setup_context=setup_context, backward=backward, jvp=forward_ad)
    namespace = {key: staticmethod(fn) for key, fn in rules.items()}
    return type(name, (torch.autograd.Function,), {"generate_vmap_rule": True, **namespace})


_QR = _differentiable("_QR", _qr_factors, _adj.qr_vjp, _adj.qr_jvp)
_LQ = _differentiable("_LQ", _lq_factors, _adj.lq_vjp, _adj.lq_jvp)


def qr(A: torch.Tensor, *, method: str = "3.3") -> QRResult:
    r"""Reduced QR ``A = Q @ R`` of a torch tensor, differentiable through randla's adjoint.

    The factors are those of ``torch.linalg.qr(A, mode="reduced")``; the backward
    pass is :func:`randla.adjoints.qr_vjp` (seed 001, eq. 3.3 by default, eq. 3.8 with
    ``method="3.8"``), forward mode is :func:`randla.adjoints.qr_jvp`. Tall, square and
    wide ``A``, real and complex, with leading batch dimensions; device and dtype are
    kept and nothing is copied to the host.

    Parameters
    ----------
    A : torch.Tensor, shape (..., m, n)
        float32, float64, complex64 or complex128.
    method : {"3.3", "3.8"}, optional
        Formula of the backward pass.

    Returns
    -------
    QRResult
        ``(Q, R)``: ``Q`` of shape (..., m, k), ``R`` of shape (..., k, n),
        ``k = min(m, n)``.

    Notes
    -----
    The derivative exists where the first ``k`` columns of ``A`` are linearly
    independent. An exactly singular ``R`` gives inf/NaN gradients (no check is made,
    as it would synchronise the device); see :mod:`randla.adjoints`. For complex input
    the gradient is that of the LAPACK convention (real diagonal of ``R``); losses
    invariant under ``Q -> Q D``, ``R -> D^H R`` are unaffected by the convention.
    Backward cost: about ``5 m n^2 + 2 n^3`` flops for ``m >= n`` (see
    :func:`randla.adjoints.qr_vjp`), the same as torch's native QR backward.

    Examples
    --------
    >>> import torch
    >>> import randla.torch
    >>> A = torch.tensor([[2.0, 1.0], [1.0, 3.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    >>> Q, R = randla.torch.qr(A)
    >>> (R.square().sum() / 2).backward()       # ||R||_F^2 / 2 = ||A||_F^2 / 2
    >>> torch.allclose(A.grad, A.detach())
    True
    """
    _check_input(A, method)
    return QRResult(*_QR.apply(A, method))


def lq(A: torch.Tensor, *, method: str = "3.3") -> LQResult:
    r"""Reduced LQ ``A = L @ Q`` of a torch tensor, differentiable through randla's adjoint.

    torch has no LQ decomposition: the factors come from the QR of ``A^H``
    (``L = R^H``, ``Q = Q_{A^H}^H``), and the derivatives are
    :func:`randla.adjoints.lq_vjp` / :func:`randla.adjoints.lq_jvp`.

    Parameters
    ----------
    A : torch.Tensor, shape (..., m, n)
        float32, float64, complex64 or complex128.
    method : {"3.3", "3.8"}, optional
        Formula of the backward pass.

    Returns
    -------
    LQResult
        ``(L, Q)``: ``L`` lower triangular (trapezoidal) of shape (..., m, k) with a
        real diagonal, ``Q`` of shape (..., k, n) with orthonormal rows.

    Notes
    -----
    The derivative exists where the first ``k = min(m, n)`` rows of ``A`` are linearly
    independent; an exactly singular ``L`` gives inf/NaN gradients. Cost as :func:`qr`
    with ``m`` and ``n`` exchanged, plus two ``O(mn)`` transposing copies.

    Examples
    --------
    >>> import torch
    >>> import randla.torch
    >>> A = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    >>> L, Q = randla.torch.lq(A)
    >>> torch.allclose(L @ Q, A)
    True
    >>> (L.square().sum() / 2).backward()
    >>> torch.allclose(A.grad, A.detach())
    True
    """
    _check_input(A, method)
    return LQResult(*_LQ.apply(A, method))
