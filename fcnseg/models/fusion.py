"""Late fusion (NYUDv2): one FCN per input modality, scores summed. Early fusion needs no
class: it is an FCN whose first conv takes more channels (``in_channels=4`` for RGB-D)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .fcn import FCN
from .preprocessing import Preprocessing

__all__ = ["LateFusion", "StreamPreprocessing"]


@dataclass(frozen=True)
class StreamPreprocessing:
    """Each stream's preprocessing applied to its slice of the input channels."""

    streams: tuple[tuple[str, int, Preprocessing], ...]   # (name, channels, preprocessing)
    name: str = "streams"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        parts, c0 = [], 0
        for _, c, pre in self.streams:
            parts.append(pre(images[..., c0:c0 + c, :, :]))
            c0 += c
        return torch.cat(parts, dim=-3)

    def to_dict(self) -> dict:
        return {"streams": [{"stream": n, "channels": c, "preprocessing": p.to_dict()} for n, c, p in self.streams]}

    @classmethod
    def from_dict(cls, d: dict) -> "StreamPreprocessing":
        return cls(tuple((s["stream"], int(s["channels"]), Preprocessing.from_dict(s["preprocessing"]))
                         for s in d["streams"]))


class LateFusion(nn.Module):
    """Sum of the score maps of several FCNs, each reading its own slice of the input channels."""

    def __init__(self, streams: dict[str, FCN]) -> None:
        super().__init__()
        self.streams = nn.ModuleDict(streams)
        self.preprocessing = StreamPreprocessing(tuple(
            (n, m.backbone.in_channels, m.preprocessing) for n, m in streams.items()))
        first = next(iter(streams.values()))
        self.heads, self.num_classes = first.heads, first.num_classes

    @property
    def crop_offsets(self) -> list[int]:
        return next(iter(self.streams.values())).crop_offsets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, c0 = None, 0
        for m in self.streams.values():
            c = m.backbone.in_channels
            y = m(x[:, c0:c0 + c])
            out = y if out is None else out + y
            c0 += c
        return out

    predict = FCN.predict
