"""Dense output from a coarse FCN (paper §3.2): shift-and-stitch and filter rarefaction.

*Dense output at factor f* is the net's score map before its final upsampling (the coarse map of
FCN-32s, stride s = 32; for a skip net the *fused* map, at the finest tap's stride: s = 16 for FCN-16s,
8 for FCN-8s) computed at stride s/f, for any f dividing s: index ``J`` of the dense map lands at input
coordinate ``c + J·s/f`` where the map's index ``i`` lands at ``c + i·s``. Phase (0, 0) of the dense map
is the net's own map. Both methods compute exactly that map:

- **shift-and-stitch** runs the net (strides unchanged) f² times and interlaces the f² maps: copy q
  reads the input of the last decimating layers up to the finest tap (those whose strides multiply to
  f: FCN-32s f = 2: pool5; FCN-8s f = 2: pool3) shifted by whole cells — the input moved by q·s/f
  pixels — and runs everything after as is: the deeper stages, the taps' scoring, the skip fusions'
  upsampling, crops and sums. The layers before the first decimating one see the same input in every
  copy and run once. The shift is applied after that layer's own padding: a shift of the *image* would
  move the zero padding of every padded layer before it, so a copy would differ from the dense map in
  a border band; shifting after padding makes the copies exact, borders included.
  Cost: the prefix once, the layers after it f² times on maps the size of the coarse net's.
- **rarefaction** (the *à trous* algorithm) sets those layers' strides to 1 (or lowers one partially)
  and dilates every later conv/pool by the removed factor, padding by pad·dilation: past them each map
  is the f² copies' maps interleaved (index f·i + q of the map is copy q's index i). A layer whose output
  would depend on the phase q — a later strided layer (a skip net's pool4/pool5) and the skip fusions
  (stride-2 transposed conv and crops) — runs per phase in the same pass: the f×f phases are split into
  the batch, the layer runs as it is, the phases are interlaced back (space-to-batch). One pass whose
  output is the same map. Cost: the same f²× of the tail (the tail now runs on f²-times larger maps).

Then the same final upsampling for both: bilinear interpolation (factor s/f) onto the input's pixels,
placed by the coordinate map and holding the edge values (a fixed transposed conv of factor s/f would
not reach the image borders once the map is denser than the deconvolution's reach).
A late-fusion net is densified stream by stream (its streams share the geometry; averaging commutes).
Where the copies' maps differ in length (a larger shift can leave one cell fewer), the dense map ends
where the first copy runs out (length min over q of f·len_q + q per axis).
The input must be large enough that every shifted copy still fits the later kernels (under 'caffe'
fc6 is an unpadded 7×7): large f on tiny images can fail where f = 1 works.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.backbones.base import Backbone
from fcnseg.models.base import SegmentationModel
from fcnseg.models.fcn import FCN
from fcnseg.models.fusion import LateFusion
from fcnseg.models.geometry import _single
from fcnseg.models.preprocessing import Preprocessing

__all__ = ["dense", "DenseFCN", "METHODS", "bilinear", "parse_dense"]

METHODS = ("shift-and-stitch", "rarefaction")
_LAYERS = (nn.Conv2d, nn.MaxPool2d)
_IMAGE = "image"  # features() key when nothing before the first changed stage can be cached


@dataclass(frozen=True)
class _Geometry:
    """One conv/max-pool layer's sliding-window geometry (square)."""

    kernel: int
    stride: int
    pad: int
    dilation: int
    ceil: bool

    @classmethod
    def of(cls, m: nn.Module) -> _Geometry:
        if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
            raise ValueError(f"dense output needs zero-padded convs, got padding_mode={m.padding_mode!r}")
        k, s = _single(m.kernel_size), _single(m.stride or m.kernel_size)
        return cls(k, s, _single(m.padding), _single(m.dilation), bool(getattr(m, "ceil_mode", False)))

    def last_start(self, n: int) -> int:
        """The last window start (in padded coordinates) the layer computes on an n-long input."""
        k = (self.kernel - 1) * self.dilation + 1
        if not self.ceil:
            return n + 2 * self.pad - k
        return min(n + 2 * self.pad - k + self.stride - 1, n + self.pad - 1)  # PyTorch's ceil rule

    def count(self, n: int) -> int:
        """How many windows the layer computes on an n-long input (0 where none fits)."""
        last = self.last_start(n)
        return last // self.stride + 1 if last >= 0 else 0


class _Layer(nn.Module):
    """A conv/max-pool layer re-run with other strides and dilations. It holds the original's own
    parameters under the original's names (state_dict keys unchanged, weights shared)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.geo, self.source = _Geometry.of(layer), id(layer)
        self.pool = isinstance(layer, nn.MaxPool2d)
        self.groups = getattr(layer, "groups", 1)
        self.weight = getattr(layer, "weight", None)
        self.bias = getattr(layer, "bias", None)

    def _window(self, x: torch.Tensor, pads: tuple[int, int, int, int], stride: int, dilation: int,
                out: tuple[int, int]) -> torch.Tensor:
        """The op on ``x`` padded explicitly (left, right, top, bottom), unpadded, cut to ``out``."""
        x = F.pad(x, pads, value=-math.inf if self.pool else 0.0)
        if self.pool:
            y = F.max_pool2d(x, self.geo.kernel, stride, 0, dilation)
        else:
            y = F.conv2d(x, self.weight, self.bias, stride, 0, dilation, self.groups)
        return y[..., :out[0], :out[1]]


def _pads(n: int, count: int, pad: int, stride: int, k_eff: int, crop: int = 0) -> tuple[int, int]:
    """(left, right) padding so that ``count`` windows fit after cropping ``crop`` from the left."""
    need = crop + (count - 1) * stride + k_eff
    return pad, max(0, need - n - pad)


class _Shifted(_Layer):
    """A decimating layer of a shift-and-stitch copy: pads as the layer does, then reads its input
    shifted by ``shift`` cells (set per copy), strides unchanged."""

    def __init__(self, layer: nn.Module, group: int, step: int, shifts: dict) -> None:
        super().__init__(layer)
        self.group, self.step, self.shifts = group, step, shifts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.geo
        k_eff = (g.kernel - 1) * g.dilation + 1
        pads, counts = [], []
        for dim, n in ((3, x.shape[3]), (2, x.shape[2])):  # F.pad order: width first
            m = self.shifts[self.group][dim - 2] * self.step
            count = (g.last_start(n) - m) // g.stride + 1
            if count < 1:
                raise ValueError(f"input too small for a shifted copy ({n} cells, shift {m})")
            pads.append(_pads(n, count, g.pad, g.stride, k_eff, m))
            counts.append(count)
        x = F.pad(x, (*pads[0], *pads[1]), value=-math.inf if self.pool else 0.0)
        my, mx = (self.shifts[self.group][i] * self.step for i in (0, 1))
        return self._window(x[..., my:, mx:], (0, 0, 0, 0), g.stride, g.dilation, (counts[1], counts[0]))


class _Rarefied(_Layer):
    """A layer of the rarefied net: stride lowered by ``factor`` (1 = unchanged), every window
    dilated by ``dilation`` (the factor removed before it), padding pad·dilation."""

    def __init__(self, layer: nn.Module, factor: int, dilation: int) -> None:
        super().__init__(layer)
        self.factor, self.dilation = factor, dilation
        if self.geo.stride // factor > 1 and dilation > 1:
            raise ValueError("a partly rarefied layer must be the first one changed")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, d = self.geo, self.dilation
        stride = g.stride // self.factor
        dil = g.dilation * d
        k_eff = (g.kernel - 1) * dil + 1
        pads, counts = [], []
        for n in (x.shape[3], x.shape[2]):
            if stride == 1:  # each of the d interleaved phases ends at its own last start
                count = n + d * (g.last_start(n) - n + 1)
            else:            # d == 1: starts every `stride` cells up to the layer's last start
                count = g.last_start(n) // stride + 1
            if count < 1:
                raise ValueError(f"input too small for the rarefied net ({n} cells)")
            pads.append(_pads(n, count, g.pad * d, stride, k_eff))
            counts.append(count)
        return self._window(x, (*pads[0], *pads[1]), stride, dil, (counts[1], counts[0]))


def _lengths(n: int, f: int) -> list[int]:
    """The lengths of the f phases (index f·i + q, q < f) of an n-long interleaved axis."""
    return [-(-(n - q) // f) for q in range(f)]


def _to_phases(x: torch.Tensor, f: int, fill: float) -> tuple[torch.Tensor, list[int], list[int]]:
    """Space-to-batch: the f×f phases of an interleaved N×C×H×W map as an f²N batch (phase (qy, qx) in
    block qy·f + qx), each phase filled with ``fill`` past its own length; and the phases' lengths
    (rows per qy, columns per qx)."""
    n, c, h, w = x.shape
    a, b = -(-h // f), -(-w // f)
    x = F.pad(x, (0, b * f - w, 0, a * f - h), value=fill)
    x = x.reshape(n, c, a, f, b, f).permute(3, 5, 0, 1, 2, 4).reshape(f * f * n, c, a, b)
    return x, _lengths(h, f), _lengths(w, f)


def _extent(lengths: list[int], f: int) -> int:
    """Where an interleaved axis of phases with these lengths ends: at the first missing index."""
    n = min(f * m + q for q, m in enumerate(lengths))
    if n < 1:
        raise ValueError(f"input too small for dense output at factor {f} (phase lengths {lengths})")
    return n


def _from_phases(y: torch.Tensor, f: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    """Batch-to-space: interlace an f²N phase batch whose phases hold ``rows``×``cols`` valid cells."""
    fn, c, a, b = y.shape
    h, w = _extent(rows, f), _extent(cols, f)
    y = y.reshape(f, f, fn // (f * f), c, a, b).permute(2, 3, 4, 0, 5, 1).reshape(fn // (f * f), c, a * f, b * f)
    return y[..., :h, :w]


def _masked(y: torch.Tensor, f: int, rows: list[int], cols: list[int]) -> torch.Tensor:
    """A phase batch with every phase zeroed past its valid ``rows``×``cols``."""
    fn, c, a, b = y.shape
    r = torch.arange(a, device=y.device) < torch.tensor(rows, device=y.device)[:, None]
    k = torch.arange(b, device=y.device) < torch.tensor(cols, device=y.device)[:, None]
    keep = (r[:, None, :, None] & k[None, :, None, :])[:, :, None, None]  # f, f, 1, 1, a, b
    return (y.reshape(f, f, fn // (f * f), c, a, b) * keep).reshape(fn, c, a, b)


class _PerPhase(_Layer):
    """A strided layer after the rarefied ones (a skip net's pool4/pool5 when its pool3 is rarefied):
    its output depends on the phase, so it runs as it is on each of the ``phases``² interleaved phases."""

    def __init__(self, layer: nn.Module, phases: int) -> None:
        super().__init__(layer)
        self.phases = phases

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g, f = self.geo, self.phases
        xb, rows, cols = _to_phases(x, f, -math.inf if self.pool else 0.0)
        if self.pool:
            y = F.max_pool2d(xb, g.kernel, g.stride, g.pad, g.dilation, ceil_mode=g.ceil)
        else:
            y = F.conv2d(xb, self.weight, self.bias, g.stride, g.pad, g.dilation, self.groups)
        return _from_phases(y, f, [g.count(n) for n in rows], [g.count(n) for n in cols])


def _leaves(module: nn.Module) -> list[nn.Module]:
    """Conv/pool layers along a module's main path (its ``coord_path`` where it has parallel branches)."""
    if isinstance(module, _LAYERS + (nn.ConvTranspose2d, nn.AvgPool2d)):
        return [module]
    path = module.coord_path() if hasattr(module, "coord_path") else list(module.children())
    return [leaf for child in path for leaf in _leaves(child)]


def _parents(root: nn.Module) -> dict[int, nn.Module]:
    return {id(c): m for m in root.modules() for c in m.children()}


def _partners(root: nn.Module, layer: nn.Module, parents: dict[int, nn.Module]) -> list[nn.Module]:
    """Strided layers in branches parallel to ``layer`` (a residual block's projection shortcut)."""
    found, node = [], layer
    while id(node) in parents:
        node = parents[id(node)]
        if hasattr(node, "branches"):
            for branch in node.branches():
                mods = [m for b in branch for m in b.modules()]
                if not any(m is layer for m in mods):
                    found += [m for m in mods if isinstance(m, _LAYERS) and _Geometry.of(m).stride > 1]
    return found


def _plan(model: FCN, factor: int) -> list[tuple[nn.Module, int]]:
    """The decimating layers to change, first to last, with the factor each removes: the last strided
    layers up to the finest tap (the fused map must be shifted where its finest input is)."""
    names = [t.name for t in model.backbone.taps]
    leaves = [leaf for n in names for leaf in _leaves(model.backbone.stages[n])]
    for leaf in leaves:
        if not isinstance(leaf, _LAYERS):
            raise ValueError(f"dense output supports conv and max-pool layers, not {type(leaf).__name__}")
    finest = model.tap_names[-1]
    stride = int(model.score_map.scale)
    if factor < 1 or stride % factor:
        why = f" (of the fused map: the finest tap {finest}'s)" if len(model.tap_names) > 1 else ""
        raise ValueError(f"dense factor must divide the output stride {stride}{why}, got {factor}")
    upto = [leaf for n in names[:names.index(finest) + 1] for leaf in _leaves(model.backbone.stages[n])]
    left, plan = factor, []
    for leaf in reversed(upto):
        s = _Geometry.of(leaf).stride
        if left == 1 or s == 1:
            continue
        if left % s == 0:
            plan.append((leaf, s))
            left //= s
        elif s % left == 0:
            plan.append((leaf, left))
            left = 1
        else:
            raise ValueError(f"factor {factor} does not split over the layers' strides")
    return plan[::-1]


def _rewrite(root: nn.Module, replace: dict[int, nn.Module]) -> None:
    """Swap modules in place (keys: ids of the modules to replace)."""
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if id(child) in replace:
                setattr(parent, name, replace[id(child)])


class DenseFCN(SegmentationModel):
    """An FCN whose score map before the final upsampling is computed ``factor``× denser; see the module
    docstring.

    ``coarse(x)`` is the dense score map (stride s/factor); ``forward(x)`` upsamples it bilinearly to
    the input's H×W. The wrapped net shares the original's parameters (no copy of the weights); its
    ``spec`` is the wrapped net's. ``features`` are the unchanged prefix's taps (what a frozen trunk's
    cache holds), or the image itself when the first stage already changes.
    """

    def __init__(self, model: FCN, factor: int, method: str = "rarefaction") -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"dense method must be one of {METHODS}, got {method!r}")
        if not isinstance(model, FCN):
            raise ValueError(f"dense output needs an FCN (or a late fusion of FCNs), got {type(model).__name__}")
        self.factor, self.method, self.taps = factor, method, list(model.tap_names)
        shared = {id(t): t for t in itertools.chain(model.parameters(), model.buffers())}
        self.net: FCN = copy.deepcopy(model, memo=shared)
        self.shifts: dict[int, tuple[int, int]] = {}
        plan = _plan(self.net, factor)
        self.groups = self._install(plan)
        self._entry = self._locate(plan[0][0]) if plan else None
        names = [t.name for t in self.net.backbone.taps]
        # the deepest tap before the first changed stage: a frozen trunk's cached features resume there
        before = names[:self._entry[0]] if self._entry else names[:names.index(self.taps[-1])]
        self.tap_names = before[-1:]  # empty where the first stage changes: only the image serves
        self._resume = before[-1] if before else None
        self.spec = model.spec
        # dense index J lands at input coordinate origin + J * step
        self.origin = model.score_map.offset
        self.step = model.score_map.scale / factor

    @property
    def backbone(self) -> Backbone:
        return self.net.backbone

    @property
    def heads(self) -> dict[str, int]:
        return self.net.heads

    @property
    def preprocessing(self) -> Preprocessing:
        return self.net.preprocessing

    @property
    def output_stride(self) -> int:
        return self.net.output_stride

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def input_padding(self) -> int:
        return self.net.input_padding

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._resume is None:
            return {_IMAGE: x}
        return self.net.backbone(x, {self._resume})

    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        """Dense scores at H×W = ``size``, from :meth:`features` (or the wrapped net's cached taps)."""
        if _IMAGE in features:
            coarse = self._coarse_all(features[_IMAGE])
        else:
            coarse = self._coarse_all(None, self._start(features))
        return {k: bilinear(v, size, self.origin, self.step) for k, v in coarse.items()}

    def _install(self, plan: list[tuple[nn.Module, int]]) -> list[int]:
        """Replace the planned layers (and, for rarefaction, every later conv/pool) in ``self.net``."""
        bb = self.net.backbone
        parents = _parents(bb)
        replace: dict[int, nn.Module] = {}
        if not plan:
            return []
        if self.method == "shift-and-stitch":
            for group, (layer, g) in enumerate(plan):
                step = _Geometry.of(layer).stride // g
                for m in [layer, *_partners(bb, layer, parents)]:
                    replace[id(m)] = _Shifted(m, group, step, self.shifts)
                self.shifts[group] = (0, 0)
            _rewrite(bb, replace)
            return [g for _, g in plan]
        gains = {id(m): g for m, g in plan}
        partner_of = {id(p): m for m, _ in plan for p in _partners(bb, m, parents)}
        dil_in: dict[int, int] = {}
        order = [m for m in bb.modules() if isinstance(m, _LAYERS)]
        first, last = order.index(plan[0][0]), order.index(plan[-1][0])
        d = 1
        for i, m in enumerate(order[first:], start=first):
            if id(m) in partner_of:
                g, din = gains[id(partner_of[id(m)])], dil_in[id(partner_of[id(m)])]
            elif id(m) not in gains and _Geometry.of(m).stride > 1:  # past the plan: d == factor phases
                assert i > last, "a strided layer inside the plan"
                replace[id(m)] = _PerPhase(m, d)
                continue
            else:
                g, din = gains.get(id(m), 1), d
                dil_in[id(m)] = d
                d *= g
            replace[id(m)] = _Rarefied(m, g, din)
        _rewrite(bb, replace)
        return [g for _, g in plan]

    def _locate(self, first: nn.Module) -> tuple[int, list[tuple[nn.Sequential, int]]]:
        """Where the first changed layer sits: its stage's index and the (Sequential, child index) path
        down to the outermost non-Sequential module holding it (the copies' common prefix ends there)."""
        stages = list(self.net.backbone.stages.values())
        inside = lambda mod: any(getattr(m, "source", None) == id(first) for m in mod.modules())  # noqa: E731
        si = next(i for i, st in enumerate(stages) if inside(st))
        path, node = [], stages[si]
        while isinstance(node, nn.Sequential):
            idx = next(i for i, c in enumerate(node) if inside(c))
            path.append((node, idx))
            node = node[idx]
        return si, path

    def _start(self, features: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
        """Of cached backbone taps, the one the dense net may resume from (before any changed stage)."""
        if not features:
            return None
        if not self.tap_names:
            raise ValueError(f"dense output at factor {self.factor} changes the first stage: it needs the image "
                             f"(its features()), not cached taps {sorted(features)}")
        if self.tap_names[0] not in features:
            raise ValueError(f"dense net resumes from cached {self.tap_names[0]!r}, got {sorted(features)}")
        return {self.tap_names[0]: features[self.tap_names[0]]}

    def _prefix(self, x: torch.Tensor | None, start: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Everything before the first changed layer: the same for every shifted copy, run once."""
        si, path = self._entry
        stages = list(self.net.backbone.stages.values())
        names = list(self.net.backbone.stages.keys())
        begin = 0
        if start:
            (name, x), = start.items()
            begin = names.index(name) + 1
        for st in stages[begin:si]:
            x = st(x)
        for seq, idx in path:
            for child in list(seq)[:idx]:
                x = child(x)
        return x

    def _tail(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """From the first changed layer to the fused scores (one shifted copy)."""
        si, path = self._entry
        seq, idx = path[-1]
        x = seq[idx](z)
        for seq, idx in reversed(path):
            for child in list(seq)[idx + 1:]:
                x = child(x)
        names = list(self.net.backbone.stages.keys())
        feats = {names[si]: x}
        for name in names[si + 1:]:
            x = feats[name] = self.net.backbone.stages[name](x)
        return {h: self.net.fused(h, feats) for h in self.net.heads}

    def coarse(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The dense score maps before upsampling (per head, N×K×h×w at stride s/factor)."""
        return self._coarse_all(x)

    def _scores(self, x: torch.Tensor | None, start: dict | None = None) -> dict[str, torch.Tensor]:
        """The rarefied net's (or, at factor 1, the net's own) pass."""
        wanted = set(self.taps)
        feats = self.net.backbone(x, wanted) if not start else self.net.backbone.resume(start, wanted)
        return {h: self._fuse_phases(h, feats) for h in self.net.heads}

    def _fuse_phases(self, head: str, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The skip fusion on interleaved taps, run per phase (space-to-batch): the upsampling and crops
        depend on the phase. Scoring (1×1) runs on the interleaved maps."""
        net, f = self.net, self.factor if self.groups else 1
        y = net.tap_score(head, self.taps[0], feats)
        if len(self.taps) == 1:
            return y
        y, rows, cols = _to_phases(y, f, 0.0)
        for i, name in enumerate(self.taps[1:]):
            skip, srows, scols = _to_phases(net.tap_score(head, name, feats), f, 0.0)
            y = net.fuse_step(head, i, _masked(y, f, rows, cols), skip)
            rows = [net.fuse_length(i, a, b) for a, b in zip(rows, srows)]
            cols = [net.fuse_length(i, a, b) for a, b in zip(cols, scols)]
        return _from_phases(y, f, rows, cols)

    def _coarse_all(self, x: torch.Tensor | None, start: dict | None = None) -> dict[str, torch.Tensor]:
        if self.method == "rarefaction" or not self.groups:
            return self._scores(x, start)
        return self._stitch(x, start)

    def _stitch(self, x: torch.Tensor | None, start: dict | None = None) -> dict[str, torch.Tensor]:
        """Run the f² copies and interlace them: copy (qy, qx) fills rows P(qy) + f·i, columns P(qx) + f·j,
        P(q) = q₁ + g₁·(q₂ + g₂·(…)) over the decimating layers' shifts q_l < g_l."""
        f, gains = self.factor, self.groups
        phases = list(itertools.product(*(range(g) for g in gains)))
        place = [sum(q * math.prod(gains[:i]) for i, q in enumerate(p)) for p in phases]
        copies = {}
        z = self._prefix(x, start)
        for (py, qy), (px, qx) in itertools.product(zip(place, phases), repeat=2):
            for group in range(len(gains)):
                self.shifts[group] = (qy[group], qx[group])
            copies[py, px] = self._tail(z)
        for group in range(len(gains)):
            self.shifts[group] = (0, 0)
        out = {}
        for h in self.net.heads:
            rows = [copies[q, 0][h].shape[2] for q in range(f)]
            cols = [copies[0, q][h].shape[3] for q in range(f)]
            hh, ww = _extent(rows, f), _extent(cols, f)
            first = copies[0, 0][h]
            y = first.new_empty(*first.shape[:2], hh, ww)
            for (py, px), c in copies.items():
                y[..., py::f, px::f] = c[h][..., :len(range(py, hh, f)), :len(range(px, ww, f))]
            out[h] = y
        return out


def _axis(y: torch.Tensor, dim: int, size: int, origin: Fraction, step: Fraction) -> torch.Tensor:
    n = y.shape[dim]
    t = ((torch.arange(size, dtype=torch.float64) - float(origin)) / float(step)).clamp(0, n - 1)
    i0 = t.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    a = (t - i0).to(y.dtype).to(y.device)
    shape = [1] * y.dim()
    shape[dim] = size
    a = a.view(shape)
    return y.index_select(dim, i0.to(y.device)) * (1 - a) + y.index_select(dim, i1.to(y.device)) * a


def bilinear(y: torch.Tensor, size: tuple[int, int], origin: Fraction, step: Fraction) -> torch.Tensor:
    """Bilinear interpolation of a map whose index J lands at ``origin + J·step`` onto the input's
    pixels 0…H−1 × 0…W−1 (values beyond the map's first/last sample are held: edge clamping)."""
    return _axis(_axis(y, 2, size[0], origin, step), 3, size[1], origin, step)


def parse_dense(text: str) -> tuple[int, str]:
    """``"F"`` or ``"F:METHOD"`` (a run's ``dense``, ``predict --dense``) → (factor, method)."""
    factor, _, method = str(text).partition(":")
    method = method or "rarefaction"
    if not factor.isdigit() or int(factor) < 1 or method not in METHODS:
        raise ValueError(f"dense {text!r} must be F or F:METHOD with F a positive integer and METHOD one of "
                         f"{', '.join(METHODS)}")
    return int(factor), method


def dense(model: FCN | LateFusion, factor: int, method: str = "rarefaction") -> DenseFCN | LateFusion:
    """``model`` with its score map before the final upsampling (for a skip net the fused one) computed
    ``factor``× denser by ``method`` ("shift-and-stitch" or "rarefaction"; both give the same scores),
    then upsampled bilinearly to the input size. A late-fusion net: each stream densified."""
    if isinstance(model, LateFusion):
        return LateFusion({n: DenseFCN(m, factor, method) for n, m in model.streams.items()}, model.fusion,
                          spec=model.spec)
    return DenseFCN(model, factor, method)
