"""The backbone protocol: a chain of named stages whose outputs are the taps."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fcnseg.config import ALIGNMENTS
from fcnseg.models.geometry import CoordMap, coord_map
from fcnseg.models.preprocessing import Preprocessing

__all__ = ["Tap", "Backbone", "scaled", "alignment_pads", "ALIGNMENTS"]


@dataclass(frozen=True)
class Tap:
    """A feature map the head may score: its name, output stride and channel count."""

    name: str
    stride: int
    channels: int


class Backbone(nn.Module):
    """Stages run in order; the output of stage ``taps[i].name`` is tap ``i``.

    Subclasses only build ``stages`` (name → module) and say which first layer takes the
    Caffe pad-100. Parameters are named ``stages.<tap>.<layer>.*`` with the layer names of
    the original release (``conv1_1``, ``fc6`` …) so weight files map one-to-one.
    ``classifier_tap`` names the stage holding the converted classifier (fc6/fc7), which a
    frozen-trunk run keeps training; None where the backbone has no such stage.
    """

    def __init__(self, taps: list[Tap], stages: list[nn.Module], preprocessing: Preprocessing,
                 in_channels: int = 3, classifier_tap: str | None = None) -> None:
        super().__init__()
        if len(taps) != len(stages):
            raise ValueError("one stage per tap")
        self.taps: tuple[Tap, ...] = tuple(taps)
        self.stages = nn.ModuleDict({t.name: m for t, m in zip(taps, stages)})
        self.preprocessing = preprocessing
        self.in_channels = in_channels
        self.classifier_tap = classifier_tap

    def tap(self, name: str) -> Tap:
        for t in self.taps:
            if t.name == name:
                return t
        raise KeyError(f"backbone has no tap {name!r}; taps: {[t.name for t in self.taps]}")

    def deepest_at(self, stride: int) -> Tap:
        """The deepest tap with the given output stride."""
        found = [t for t in self.taps if t.stride == stride]
        if not found:
            raise KeyError(f"backbone has no tap at stride {stride}; taps: {self.taps}")
        return found[-1]

    def truncate(self, last: str) -> None:
        """Drop the stages after tap ``last`` (they are never computed)."""
        names = [t.name for t in self.taps]
        keep = names.index(self.tap(last).name) + 1
        for name in names[keep:]:
            del self.stages[name]
        self.taps = self.taps[:keep]

    def coord_maps(self) -> dict[str, CoordMap]:
        """Each tap's map to input coordinates, composed from its layers."""
        maps, acc = {}, CoordMap()
        for t in self.taps:
            acc = acc.then(coord_map(self.stages[t.name]))
            maps[t.name] = acc
        return maps

    def forward(self, x: torch.Tensor, wanted: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Run up to the deepest wanted tap; return ``{tap name: feature map}``."""
        return self._run(x, 0, {}, wanted)

    def resume(self, taps: dict[str, torch.Tensor], wanted: set[str] | None = None) -> dict[str, torch.Tensor]:
        """As ``forward``, from already computed stage outputs (e.g. a frozen trunk's cached ones): the
        chain resumes after the deepest of ``taps``; wanted taps among them are returned as they are."""
        names = list(self.stages.keys())
        begin = max(names.index(n) for n in taps) + 1
        wanted = set(names) if wanted is None else wanted
        return self._run(taps[names[begin - 1]], begin, {n: t for n, t in taps.items() if n in wanted}, wanted)

    def _run(self, x: torch.Tensor, begin: int, out: dict[str, torch.Tensor], wanted: set[str] | None
             ) -> dict[str, torch.Tensor]:
        wanted = set(self.stages.keys()) if wanted is None else wanted
        names = list(self.stages.keys())
        for name in names[begin:]:
            if len(out) == len(wanted):
                break
            x = self.stages[name](x)
            if name in wanted:
                out[name] = x
        return out


def scaled(channels: int, width: float) -> int:
    """Channel count under a width multiplier (tests build reduced nets)."""
    return max(1, int(round(channels * width)))


def alignment_pads(alignment: str, input_pad: int | None, fc6_pad: int | None,
                   natural: tuple[int, int]) -> tuple[int, int]:
    """(first-conv pad, fc6 pad): Caffe's (100, 0), or the layer's ``natural`` pads for 'same'."""
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    default = (100, 0) if alignment == "caffe" else natural
    return (default[0] if input_pad is None else input_pad, default[1] if fc6_pad is None else fc6_pad)
