"""Low-rank layers that replace ``nn.Linear`` and ``nn.Conv2d``.

``W (out x in) ~= B (out x r) @ A (r x in)``, stored as the parameters ``lowrank_A``
and ``lowrank_B`` (LoRA's convention: ``A`` is ``r x in``), so that a state dict holds
``NAME.lowrank_A``, ``NAME.lowrank_B`` and ``NAME.bias`` exactly as randla's checkpoint
format does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._calibration import check_count

__all__ = ["LowRankLinear", "LowRankConv2d"]


def _dense_product(B, A):
    """``B @ A`` computed in float32 or better (half precision loses digits in the sum)."""
    if B.dtype in (torch.float16, torch.bfloat16):
        return (B.float() @ A.float()).to(B.dtype)
    return B @ A


def _check_dims(**dims):
    """The sizes as Python ints >= 1 (integer scalars of any library pass)."""
    return tuple(check_count(v, name) for name, v in dims.items())


class LowRankLinear(nn.Module):
    r"""``y = x A^T B^T + b``: a linear layer whose weight is the product ``B @ A``.

    Parameters
    ----------
    in_features, out_features : int
    rank : int
    bias : bool, default True
    device, dtype : optional
        As for ``torch.nn.Linear``.

    Attributes
    ----------
    lowrank_A : torch.nn.Parameter, shape (rank, in_features)
    lowrank_B : torch.nn.Parameter, shape (out_features, rank)
    bias : torch.nn.Parameter or None, shape (out_features,)

    Notes
    -----
    Cost per input row: ``rank (in + out)`` multiply-adds instead of ``in out``. A fresh
    module is initialised so that ``B @ A`` has the scale of ``nn.Linear``'s
    initialisation; it is normally built by :meth:`from_factors` or filled by
    ``load_state_dict``.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import LowRankLinear
    >>> B, A = torch.randn(8, 2), torch.randn(2, 5)
    >>> layer = LowRankLinear.from_factors(B, A, bias=torch.zeros(8))
    >>> x = torch.randn(3, 5)
    >>> torch.allclose(layer(x), x @ (B @ A).T, atol=1e-6)
    True
    >>> dense = layer.to_dense()
    >>> type(dense).__name__, tuple(dense.weight.shape)
    ('Linear', (8, 5))
    """

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__()
        in_features, out_features, rank = _check_dims(in_features=in_features, out_features=out_features,
                                                      rank=rank)
        kw = {"device": device, "dtype": dtype}
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lowrank_A = nn.Parameter(torch.empty(rank, in_features, **kw))
        self.lowrank_B = nn.Parameter(torch.empty(out_features, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """``A ~ N(0, 1/in)``, ``B ~ U(-1/sqrt(r), 1/sqrt(r))``: entries of ``B @ A`` have the
        variance ``1/(3 in)`` of ``nn.Linear``'s initialisation; its bias initialisation."""
        bound = 1.0 / math.sqrt(self.in_features)
        with torch.no_grad():
            nn.init.normal_(self.lowrank_A, std=bound)
            nn.init.uniform_(self.lowrank_B, -1.0 / math.sqrt(self.rank), 1.0 / math.sqrt(self.rank))
            if self.bias is not None:
                nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_factors(cls, B, A, bias=None):
        """A layer with ``lowrank_B = B`` (out x r), ``lowrank_A = A`` (r x in) and ``bias``.

        The tensors are used as they are (same device and dtype; detached, not copied
        when already contiguous).

        Parameters
        ----------
        B : torch.Tensor (out, r)
        A : torch.Tensor (r, in)
        bias : torch.Tensor (out,), optional

        Returns
        -------
        LowRankLinear

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankLinear
        >>> LowRankLinear.from_factors(torch.ones(4, 1), torch.ones(1, 3))
        LowRankLinear(in_features=3, out_features=4, rank=1, bias=False)
        """
        if B.ndim != 2 or A.ndim != 2 or B.shape[1] != A.shape[0]:
            raise ValueError(f"B (out x r) and A (r x in) must agree in r, got {tuple(B.shape)} and {tuple(A.shape)}")
        if bias is not None and tuple(bias.shape) != (B.shape[0],):
            raise ValueError(f"bias must have shape ({B.shape[0]},), got {tuple(bias.shape)}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.rank = A.shape[1], B.shape[0], A.shape[0]
        layer.lowrank_A = nn.Parameter(A.detach().contiguous())
        layer.lowrank_B = nn.Parameter(B.detach().contiguous())
        layer.bias = None if bias is None else nn.Parameter(bias.detach())
        return layer

    def forward(self, input):
        """``input @ A^T @ B^T + bias``: two products with the factors, not with ``B @ A``."""
        return F.linear(F.linear(input, self.lowrank_A), self.lowrank_B, self.bias)

    @property
    def weight(self):
        """The dense weight ``B @ A`` (out x in), formed on each access, with autograd
        history: for code that reads a linear layer's ``weight`` (Hugging Face's T5
        reads ``wo.weight.dtype`` in every forward pass). Each access costs
        ``out in rank`` multiply-adds and a dense ``out x in`` tensor; the layer
        itself never holds one. Read-only (assign ``lowrank_A``/``lowrank_B``).
        """
        return _dense_product(self.lowrank_B, self.lowrank_A)

    def weight_product(self):
        """The dense weight ``B @ A`` (out x in), without autograd history.

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankLinear
        >>> LowRankLinear.from_factors(torch.ones(2, 1), torch.ones(1, 3)).weight_product()
        tensor([[1., 1., 1.],
                [1., 1., 1.]])
        """
        with torch.no_grad():
            return _dense_product(self.lowrank_B, self.lowrank_A)

    def to_dense(self):
        """An ``nn.Linear`` with weight ``B @ A`` and the same bias, device and dtype.

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankLinear
        >>> LowRankLinear(5, 3, 2).to_dense()
        Linear(in_features=5, out_features=3, bias=True)
        """
        W = self.weight_product()
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=W.device,
                          dtype=W.dtype)
        with torch.no_grad():
            dense.weight.copy_(W)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


class LowRankConv2d(nn.Module):
    r"""A ``k x k`` convolution to ``rank`` channels, then a ``1 x 1`` convolution to ``out``.

    The weight ``W (out, in, kh, kw)`` flattened to ``out x (in kh kw)`` is ``B @ A``;
    ``lowrank_A`` is stored as ``(rank, in, kh, kw)`` (the first convolution's kernel)
    and ``lowrank_B`` as ``(out, rank)``. Stride, padding, dilation and padding mode are
    those of the first convolution; grouped convolutions are not factored.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size : int or (int, int)
        As for ``torch.nn.Conv2d``.
    rank : int
        Channels between the two convolutions.
    stride, padding, dilation : optional
        As for ``torch.nn.Conv2d`` (``groups`` must be 1).
    bias : bool, default True
    padding_mode : str, default "zeros"
    device, dtype : optional

    Notes
    -----
    Cost per output pixel: ``rank (in kh kw + out)`` multiply-adds instead of
    ``out in kh kw``.

    Examples
    --------
    >>> import torch
    >>> from randla.torch import LowRankConv2d
    >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    >>> low = LowRankConv2d.from_conv(conv, torch.randn(8, 2), torch.randn(2, 27))
    >>> low(torch.randn(1, 3, 5, 5)).shape
    torch.Size([1, 8, 5, 5])
    """

    def __init__(self, in_channels, out_channels, kernel_size, rank, stride=1, padding=0, dilation=1, bias=True,
                 padding_mode="zeros", device=None, dtype=None):
        super().__init__()
        in_channels, out_channels, rank = _check_dims(in_channels=in_channels, out_channels=out_channels, rank=rank)
        ref = nn.Conv2d(in_channels, rank, kernel_size, stride=stride, padding=padding, dilation=dilation,
                        bias=False, padding_mode=padding_mode, device="meta")
        self._geometry(ref)
        self.in_channels, self.out_channels, self.rank = in_channels, out_channels, rank
        kw = {"device": device, "dtype": dtype}
        self.lowrank_A = nn.Parameter(torch.empty(rank, in_channels, *self.kernel_size, **kw))
        self.lowrank_B = nn.Parameter(torch.empty(out_channels, rank, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def _geometry(self, conv):
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.padding_mode = conv.dilation, conv.padding_mode
        self._reversed_padding_repeated_twice = conv._reversed_padding_repeated_twice

    def reset_parameters(self):
        """``nn.Conv2d``'s variance ``1/(3 in kh kw)`` for the entries of the composed kernel."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        with torch.no_grad():
            nn.init.normal_(self.lowrank_A, std=1.0 / math.sqrt(fan_in))
            nn.init.uniform_(self.lowrank_B, -1.0 / math.sqrt(self.rank), 1.0 / math.sqrt(self.rank))
            if self.bias is not None:
                nn.init.uniform_(self.bias, -1.0 / math.sqrt(fan_in), 1.0 / math.sqrt(fan_in))

    @classmethod
    def from_conv(cls, conv, B, A):
        """Factors ``B (out x r)``, ``A (r x in kh kw)`` of ``conv``'s flattened weight, with
        ``conv``'s geometry and a copy of its bias (training the new layer leaves
        ``conv`` as it was).

        Parameters
        ----------
        conv : torch.nn.Conv2d
            ``groups == 1``.
        B : torch.Tensor (out, r)
        A : torch.Tensor (r, in kh kw) or (r, in, kh, kw)

        Returns
        -------
        LowRankConv2d

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankConv2d
        >>> conv = torch.nn.Conv2d(2, 4, 3, bias=False)
        >>> LowRankConv2d.from_conv(conv, torch.ones(4, 1), torch.ones(1, 18))
        LowRankConv2d(2, 4, kernel_size=(3, 3), rank=1, stride=(1, 1), padding=(0, 0), bias=False)
        """
        if conv.groups != 1:
            raise ValueError(f"grouped convolutions (groups={conv.groups}) are not factored")
        out, inp = conv.out_channels, conv.in_channels
        kh, kw = conv.kernel_size
        if B.ndim != 2 or B.shape[0] != out or A.shape[0] != B.shape[1] or A[0].numel() != inp * kh * kw:
            raise ValueError(f"factors {tuple(B.shape)} @ {tuple(A.shape)} do not match a conv of weight "
                             f"{tuple(conv.weight.shape)}")
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._geometry(conv)
        layer.in_channels, layer.out_channels, layer.rank = inp, out, B.shape[1]
        layer.lowrank_A = nn.Parameter(A.detach().reshape(B.shape[1], inp, kh, kw).contiguous())
        layer.lowrank_B = nn.Parameter(B.detach().contiguous())
        layer.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone())
        return layer

    def forward(self, input):
        """The convolution with ``lowrank_A`` (to ``rank`` channels; a ``padding_mode`` other
        than ``"zeros"`` pads first), then the ``1 x 1`` convolution with ``lowrank_B`` and
        ``bias``."""
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            y = F.conv2d(padded, self.lowrank_A, None, self.stride, 0, self.dilation)
        else:
            y = F.conv2d(input, self.lowrank_A, None, self.stride, self.padding, self.dilation)
        return F.conv2d(y, self.lowrank_B[:, :, None, None], self.bias)

    @property
    def weight(self):
        """The dense kernel ``(B @ A).reshape(out, in, kh, kw)``, formed on each access,
        with autograd history (see :attr:`LowRankLinear.weight`). Read-only."""
        W = _dense_product(self.lowrank_B, self.lowrank_A.reshape(self.rank, -1))
        return W.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def weight_product(self):
        """The dense kernel ``(B @ A).reshape(out, in, kh, kw)``, without autograd history.

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankConv2d
        >>> LowRankConv2d(2, 4, 3, rank=1).weight_product().shape
        torch.Size([4, 2, 3, 3])
        """
        with torch.no_grad():
            W = _dense_product(self.lowrank_B, self.lowrank_A.reshape(self.rank, -1))
        return W.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def to_dense(self):
        """An ``nn.Conv2d`` with the composed kernel, the same geometry and bias.

        Examples
        --------
        >>> import torch
        >>> from randla.torch import LowRankConv2d
        >>> LowRankConv2d(2, 4, 3, rank=1, padding=1).to_dense()
        Conv2d(2, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        """
        W = self.weight_product()
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.padding, dilation=self.dilation, bias=self.bias is not None,
                          padding_mode=self.padding_mode, device=W.device, dtype=W.dtype)
        with torch.no_grad():
            dense.weight.copy_(W)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    def extra_repr(self):
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, rank={self.rank}, "
             f"stride={self.stride}, padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", bias={self.bias is not None}"
