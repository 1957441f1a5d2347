"""In-network upsampling: transposed convolution initialised to bilinear interpolation."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bilinear_kernel", "Upsample"]


def bilinear_kernel(size: int) -> torch.Tensor:
    """2-D bilinear interpolation filter of ``size``×``size`` (odd or even), as Caffe's filler."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64, device="cpu")  # real values also under a meta device
    k1 = 1 - (og - centre).abs() / factor
    return (k1[:, None] * k1[None, :]).float()


def _compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


class Upsample(nn.ConvTranspose2d):
    """``factor``× upsampling of a C-channel score map, C×C kernel (as the reference),
    bilinear on the diagonal, no bias; ``learnable=False`` freezes it."""

    def __init__(self, channels: int, factor: int, kernel_size: int, learnable: bool) -> None:
        super().__init__(channels, channels, kernel_size, stride=factor, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.zero_()
            k = bilinear_kernel(kernel_size)
            for c in range(channels):
                self.weight[c, c] = k
        self.weight.requires_grad_(learnable)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """While the kernel is diagonal (always, unless upsampling is learned and has moved off it),
        run it channel by channel: the same sums without the C× zero products (C× fewer FLOPs)."""
        kernel = None if output_size is not None or (self.training and self.weight.requires_grad) \
            else self._channelwise_kernel()
        if kernel is None:
            return super().forward(x, output_size)
        return nn.functional.conv_transpose2d(x, kernel, None, self.stride, self.padding, self.output_padding,
                                              kernel.shape[0])

    def _channelwise_kernel(self) -> torch.Tensor | None:
        """C×1×k×k diagonal of the weight, or None when it has off-diagonal entries (cached per weight
        version; under tracing built as a constant so exports see a fixed kernel). A weight created under
        ``inference_mode`` has no version counter: its diagonal is recomputed on every call instead."""
        w = self.weight
        if w.is_meta or _compiling():  # no values to look at (meta, fake tensors): the general form
            return None
        if w.is_inference():
            return self._diagonal(w)
        key = (w._version, w.data_ptr(), w.dtype, w.device)
        if getattr(self, "_diag", (None,))[0] != key:
            self._diag = (key, self._diagonal(w))
        return self._diag[1]

    @staticmethod
    def _diagonal(w: torch.Tensor) -> torch.Tensor | None:
        with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable under autograd later
            diag = w.detach().diagonal(dim1=0, dim2=1).movedim(-1, 0).unsqueeze(1)
            if w.shape[0] != w.shape[1] or int(torch.count_nonzero(diag)) != int(torch.count_nonzero(w)):
                return None
            if torch.jit.is_tracing():
                return torch.tensor(diag.tolist(), dtype=w.dtype, device=w.device)
            return diag.clone()
