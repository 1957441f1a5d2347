"""The one FCN head: score chosen taps, upsample, crop by computed offsets, fuse."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fcnseg.models.backbones.base import Backbone
from fcnseg.models.base import CUSTOM, HEAD, ModelSpec, SegmentationModel
from fcnseg.models.geometry import CoordMap, _single, crop_offset, layer_map
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.models.upsample import Upsample

__all__ = ["FCN", "HeadSpec"]


@dataclass(frozen=True)
class HeadSpec:
    """Which taps fuse (deepest first) and how.

    ``taps`` entries are tap names or output strides (``32`` = the deepest tap at stride 32).
    ``tap_scales`` multiplies a tap's features before scoring (FCN-8s at-once: pool4 × 0.01,
    pool3 × 1e-4). ``train_only_final_score`` freezes everything but the deepest score layer.
    """

    taps: tuple[str | int, ...]
    tap_scales: dict[str | int, float] = field(default_factory=dict)
    train_only_final_score: bool = False


@dataclass(frozen=True)
class _Fuse:
    up: int        # crop of the upsampled deeper map
    skip: int      # crop of the skip tap's score map


class FCN(SegmentationModel):
    """Backbone + skip head (a :class:`SegmentationModel`): preprocessed images → per-head N×K×H×W scores.

    ``head`` says which taps fuse; ``spec`` is what rebuilds the net (``create_model`` passes it; built
    directly, a spec named ``"custom"`` records the classes). Offsets are derived once, at construction,
    from the layers' coordinate maps; the output is cropped to exactly the input's H×W.
    """

    def __init__(self, backbone: Backbone, num_classes: int | dict[str, int], head: HeadSpec, *,
                 learn_upsampling: bool = False, spec: ModelSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or ModelSpec(CUSTOM, num_classes, CUSTOM, learn_upsampling=learn_upsampling)
        spec = head
        taps = [backbone.deepest_at(t) if isinstance(t, int) else backbone.tap(t) for t in spec.taps]
        if any(a.stride <= b.stride for a, b in zip(taps, taps[1:])):
            raise ValueError(f"taps must go from coarse to fine strides: {taps}")
        order = [t.name for t in backbone.taps]
        backbone.truncate(max((t.name for t in taps), key=order.index))
        self.backbone = backbone
        self.head = spec
        self.tap_names = [t.name for t in taps]
        self.tap_scales = {t.name: float(spec.tap_scales.get(s, spec.tap_scales.get(t.name, 1.0)))
                           for t, s in zip(taps, spec.taps)}
        self.heads = dict(num_classes) if isinstance(num_classes, dict) else {HEAD: int(num_classes)}
        self.score = nn.ModuleDict({
            h: nn.ModuleDict({t.name: _zero_conv(t.channels, k) for t in taps}) for h, k in self.heads.items()
        })
        maps = backbone.coord_maps()
        self.upsample = nn.ModuleDict()
        self._fuse: list[_Fuse] = []
        frame = maps[taps[0].name]
        per_head_up: dict[str, list[Upsample]] = {h: [] for h in self.heads}
        for deeper, skip in zip(taps, taps[1:]):
            factor = deeper.stride // skip.stride
            kernel, up_map = _choose_kernel(frame, factor, lambda m, to=maps[skip.name]: crop_offset(m, to))
            d = crop_offset(up_map, maps[skip.name])
            self._fuse.append(_Fuse(up=max(d, 0), skip=max(-d, 0)))
            frame = maps[skip.name] if d >= 0 else up_map
            for h, k in self.heads.items():
                per_head_up[h].append(Upsample(k, factor, kernel, learn_upsampling))
        self.score_map = frame  # the fused score map's (before the final upsampling) map to input coordinates
        factor = taps[-1].stride
        kernel, out_map = _choose_kernel(frame, factor, lambda m: crop_offset(m, CoordMap()))
        self.out_offset = crop_offset(out_map, CoordMap())
        if self.out_offset < 0:
            raise ValueError(f"output map starts {-self.out_offset} px inside the input; pad the input more")
        for h, k in self.heads.items():
            per_head_up[h].append(Upsample(k, factor, kernel, learn_upsampling and not spec.train_only_final_score))
            self.upsample[h] = nn.ModuleList(per_head_up[h])
        if spec.train_only_final_score:
            for p in self.parameters():
                p.requires_grad_(False)
            for h in self.heads:
                for p in self.score[h][taps[0].name].parameters():
                    p.requires_grad_(True)

    @property
    def crop_offsets(self) -> list[int]:
        """Crop offsets in the reference's order: each fusion's, then the final one."""
        return [f.up or f.skip for f in self._fuse] + [self.out_offset]

    @property
    def preprocessing(self) -> Preprocessing:
        return self.backbone.preprocessing

    @preprocessing.setter
    def preprocessing(self, value: Preprocessing) -> None:
        self.backbone.preprocessing = value

    @property
    def output_stride(self) -> int:
        return int(self.backbone.tap(self.tap_names[0]).stride)

    @property
    def in_channels(self) -> int:
        return int(self.backbone.in_channels)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(x, set(self.tap_names))

    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        """Scores at H×W = ``size`` from backbone taps: the head's own, or earlier ones the trunk resumes
        from (:meth:`Backbone.resume`)."""
        h, w = size
        if not set(self.tap_names) <= set(features):
            features = self.backbone.resume(features, set(self.tap_names))
        return {head: self._head(head, features, h, w) for head in self.heads}

    def tap_score(self, head: str, name: str, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tap ``name``'s score map for ``head`` (its features scaled by the tap's scale, 1×1 conv)."""
        return self.score[head][name](_scaled(feats[name], self.tap_scales[name]))

    def fuse_step(self, head: str, i: int, deeper: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fusion ``i``: the deeper score map upsampled ×2, both cropped to align, summed."""
        up = self.upsample[head][i](deeper)
        f = self._fuse[i]
        up, skip = up[..., f.up:, f.up:], skip[..., f.skip:, f.skip:]
        hh, ww = min(up.shape[-2], skip.shape[-2]), min(up.shape[-1], skip.shape[-1])
        return up[..., :hh, :ww] + skip[..., :hh, :ww]

    def fuse_length(self, i: int, deeper: int, skip: int) -> int:
        """Along one axis, the length fusion ``i`` gives for maps of lengths ``deeper`` and ``skip``."""
        up = next(iter(self.upsample.values()))[i]
        grown = (deeper - 1) * _single(up.stride) + _single(up.kernel_size) - 2 * _single(up.padding)
        return min(grown - self._fuse[i].up, skip - self._fuse[i].skip)

    def fused(self, head: str, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The head's fused score map before the final upsampling (coordinates: ``score_map``)."""
        y = self.tap_score(head, self.tap_names[0], feats)
        for i, name in enumerate(self.tap_names[1:]):
            y = self.fuse_step(head, i, y, self.tap_score(head, name, feats))
        return y

    def _head(self, head: str, feats: dict[str, torch.Tensor], h: int, w: int) -> torch.Tensor:
        y = self.upsample[head][-1](self.fused(head, feats))
        o = self.out_offset
        if y.shape[-2] < o + h or y.shape[-1] < o + w:
            raise RuntimeError(f"score map {tuple(y.shape[-2:])} too small for a {h}×{w} input at offset {o}")
        return y[..., o:o + h, o:o + w]


def _zero_conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _scaled(x: torch.Tensor, s: float) -> torch.Tensor:
    return x if s == 1.0 else x * s


def _choose_kernel(frame: CoordMap, factor: int, offset_of) -> tuple[int, CoordMap]:
    """Kernel 2f (the reference's), or 2f−1 where 2f would leave a half-pixel offset."""
    for kernel in (2 * factor, 2 * factor - 1):
        probe = nn.ConvTranspose2d(1, 1, kernel, stride=factor, bias=False)
        up_map = frame.then(layer_map(probe))
        try:
            offset_of(up_map)
        except ValueError:
            continue
        return kernel, up_map
    raise ValueError(f"no upsampling kernel aligns a x{factor} map")
