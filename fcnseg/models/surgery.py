"""Net surgery: fully connected layers become convolutions (FCN paper, Sec. 3.1).

A classifier's ``fc6`` (Linear over a flattened C×k×k map) is a k×k convolution and ``fc7``
a 1×1 one; the flattening is channel-major in both torchvision and Caffe, so the weight is a
plain reshape. The same tensor-level rule fits Caffe's legacy 4-D blobs onto our parameters.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

__all__ = ["convolutionalize", "fit_tensor", "widen_input", "widening", "WIDENINGS"]

WIDENINGS = ("mean", "zero")
_WIDENING: ContextVar[str] = ContextVar("fcnseg_widening", default="mean")


@contextmanager
def widening(mode: str) -> Iterator[None]:
    """How :func:`fit_tensor` widens first-conv weights inside the block (``"mean"`` or ``"zero"``)."""
    if mode not in WIDENINGS:
        raise ValueError(f"depth_init must be one of {WIDENINGS}, got {mode!r}")
    token = _WIDENING.set(mode)
    try:
        yield
    finally:
        _WIDENING.reset(token)


def convolutionalize(linear: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """The unpadded ``kernel_size``×``kernel_size`` convolution computing ``linear`` at every position.

    ``linear`` must read an ``in_channels``×k×k map flattened channel-major, e.g. VGG16's
    fc6 ``Linear(25088, 4096)`` → ``Conv2d(512, 4096, 7)`` and fc7 → ``Conv2d(4096, 4096, 1)``.
    """
    if linear.in_features != in_channels * kernel_size**2:
        raise ValueError(f"linear: in_features {linear.in_features} != in_channels {in_channels} "
                         f"× kernel_size² {kernel_size**2}")
    w = linear.weight
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, bias=linear.bias is not None,
                     device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(fit_tensor(w, conv.weight.shape, "linear.weight"))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def fit_tensor(src: torch.Tensor, shape: Sequence[int], name: str = "tensor") -> torch.Tensor:
    """``src`` reshaped to a parameter's ``shape``.

    Equal shapes pass; shapes equal up to leading singleton axes (Caffe's legacy
    num/channels/height/width blobs, e.g. a bias as 1×1×1×C) are reshaped; a fully connected
    weight (…, out, in) fits a conv weight (out, C, k, k) when in = C·k·k. Anything else raises
    a ``ValueError`` naming ``name``.
    """
    shape = torch.Size(shape)
    if src.shape == shape:
        return src
    if _strip(src.shape) == _strip(shape):
        return src.reshape(shape)
    if (len(shape) == 4 and src.dim() >= 1 and src.shape[-1] == math.prod(shape[1:])
            and math.prod(src.shape[:-1]) == shape[0]):
        return src.reshape(shape)
    if src.dim() == 4 and len(shape) == 4 and src.shape[1] < shape[1] and (src.shape[0], *src.shape[2:]) == (
            shape[0], *shape[2:]):
        return widen_input(src, shape[1])
    raise ValueError(f"{name}: shape {tuple(src.shape)} does not fit the parameter's {tuple(shape)}")


def widen_input(weight: torch.Tensor, in_channels: int, mode: str | None = None) -> torch.Tensor:
    """Early fusion (RGB-D): a first-conv weight with extra input channels. ``"mean"`` (default, the
    reference's nyud-fcn32s-color-d surgery) gives each extra filter the mean of the given channels'
    filters; ``"zero"`` starts them at zero, so the widened net computes exactly what the RGB net did.
    ``None``: the mode set by :func:`widening` (default ``"mean"``)."""
    mode = mode or _WIDENING.get()
    if mode not in WIDENINGS:
        raise ValueError(f"depth_init must be one of {WIDENINGS}, got {mode!r}")
    shape = (weight.shape[0], in_channels - weight.shape[1], *weight.shape[2:])
    extra = (weight.mean(dim=1, keepdim=True).expand(shape) if mode == "mean" else weight.new_zeros(shape))
    return torch.cat([weight, extra], dim=1)


def _strip(shape: Sequence[int]) -> tuple[int, ...]:
    dims = list(shape)
    while dims and dims[0] == 1:
        dims.pop(0)
    return tuple(dims)
