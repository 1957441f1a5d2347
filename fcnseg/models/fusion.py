"""Late fusion (NYUDv2): one FCN per input modality, scores averaged (the reference's
nyud-fcn32s-color-hha ``Eltwise SUM coeff: 0.5 0.5``) or summed. Early fusion needs no class: it is
an FCN whose first conv takes more channels (``in_channels=4`` for RGB-D)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fcnseg.models.fcn import FCN
from fcnseg.models.preprocessing import Preprocessing

__all__ = ["LateFusion", "StreamPreprocessing", "FUSIONS"]

FUSIONS = ("average", "sum")


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
    """Score maps of several FCNs, each reading its own slice of the input channels, combined:
    ``fusion="average"`` (each stream weighted 1/n, the reference's 0.5/0.5) or ``"sum"``."""

    def __init__(self, streams: dict[str, FCN], fusion: str = "average") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.streams = nn.ModuleDict(streams)
        self.fusion = fusion
        self.refresh_preprocessing()
        first = next(iter(streams.values()))
        self.heads, self.num_classes = first.heads, first.num_classes

    def refresh_preprocessing(self) -> None:
        """Rebuild ``preprocessing`` from the streams' (after weights set theirs)."""
        self.preprocessing = StreamPreprocessing(tuple(
            (n, m.backbone.in_channels, m.preprocessing) for n, m in self.streams.items()))

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
        return out / len(self.streams) if self.fusion == "average" else out

    predict = FCN.predict
