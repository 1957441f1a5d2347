"""Late fusion (NYUDv2): one FCN per input modality, scores averaged (the reference's
nyud-fcn32s-color-hha ``Eltwise SUM coeff: 0.5 0.5``) or summed. Early fusion needs no class: it is
an FCN whose first conv takes more channels (``in_channels=4`` for RGB-D)."""
from __future__ import annotations

import torch
from torch import nn

from fcnseg.models.base import CUSTOM, HEAD, ModelSpec, SegmentationModel, is_single
from fcnseg.models.fcn import FCN
from fcnseg.models.preprocessing import StreamPreprocessing

__all__ = ["LateFusion", "StreamPreprocessing", "FUSIONS"]

FUSIONS = ("average", "sum")


class LateFusion(SegmentationModel):
    """Score maps of several FCNs, each reading its own slice of the input channels, combined:
    ``fusion="average"`` (each stream weighted 1/n, the reference's 0.5/0.5) or ``"sum"``.

    Its features are the streams' taps, keyed ``"<stream>/<tap>"``."""

    def __init__(self, streams: dict[str, FCN], fusion: str = "average", *, spec: ModelSpec | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        self.streams = nn.ModuleDict(streams)
        self.fusion = fusion
        first = next(iter(streams.values()))
        self.heads = dict(first.heads)
        self.spec = spec or ModelSpec(CUSTOM, self.heads if not is_single(self.heads) else self.heads[HEAD],
                                      backbone=CUSTOM, streams={n: m.in_channels for n, m in streams.items()},
                                      options={"fusion": fusion})
        self.refresh_preprocessing()

    def refresh_preprocessing(self) -> None:
        """Rebuild ``preprocessing`` from the streams' (after weights set theirs)."""
        self.preprocessing = StreamPreprocessing(tuple(
            (n, m.in_channels, m.preprocessing) for n, m in self.streams.items()))

    @property
    def crop_offsets(self) -> list[int]:
        return next(iter(self.streams.values())).crop_offsets

    @property
    def output_stride(self) -> int:
        return max(m.output_stride for m in self.streams.values())

    @property
    def in_channels(self) -> int:
        return sum(m.in_channels for m in self.streams.values())

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out, c0 = {}, 0
        for n, m in self.streams.items():
            c = m.in_channels
            out.update({f"{n}/{t}": v for t, v in m.features(x[:, c0:c0 + c]).items()})
            c0 += c
        return out

    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        total: dict[str, torch.Tensor] = {}
        for n, m in self.streams.items():
            taps = {t.split("/", 1)[1]: v for t, v in features.items() if t.startswith(n + "/")}
            for head, y in m.forward_features(taps, size).items():
                total[head] = y if head not in total else total[head] + y
        if self.fusion == "average":
            return {h: y / len(self.streams) for h, y in total.items()}
        return total
