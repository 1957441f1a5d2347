"""Exact fast path for Caffe alignment: skip the pad-100 border that does not depend on the image.

With ``alignment="caffe"`` the first conv pads the image by 100 px, so the first blocks of the
trunk run on (H+198)×(W+198) maps although most of that border sees only zeros. A feature there
is either the constant that a zero input produces (``c`` per channel, propagated layer by layer),
or near the map's outer rim a value set by the convs' own zero padding; neither depends on the
image. :class:`TrimmedFCN` therefore runs the early stages only on the *active* window (the image
plus its receptive-field margin), in the "delta" form ``D = F - c`` so that plain zero padding
stands for the background (``conv(F) = conv(D) + (b + W·c)``; ``maxpool(F) = maxpool(D) + c``).
At the deepest tap where that stays valid (active window and rim never meet), the full map is
rebuilt: the zero-image map (computed once per size residue on a small input, its constant
interior stretched to the size) with the active window pasted in. The rest of the net runs as
usual. Same arithmetic per output pixel, so the scores equal the plain forward's to fp32 rounding.

``trainable=True`` trains through it: the border is image-independent but not gradient-free (its
values depend on the weights), so every forward recomputes the constants and the zero-image skeletons
from the live weights under autograd (a skeleton is small: its input is a few strides wide), and the
stretch sums the gradients of every copy of the interior into the one it came from. Loss and every
parameter gradient equal the plain net's to fp32 rounding (``tests/models/test_trimmed_training.py``).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.base import SegmentationModel
from fcnseg.models.fcn import FCN
from fcnseg.models.preprocessing import Preprocessing

__all__ = ["TrimmedFCN", "trim_supported", "runs_as_matmul"]

_IDENTITY = (nn.Dropout, nn.Dropout2d, nn.Identity)


@dataclass
class _Axis:
    """One axis of a map: size ``n``, active window ``[a, b)``, rim zones ``[0, e)`` and ``[f, n)``."""

    n: int
    a: int
    b: int
    e: int
    f: int


@dataclass
class _Op:
    kind: str                       # "conv" | "pool"
    module: nn.Module
    relu: bool = False
    pad: tuple[int, int] = (0, 0)   # conv: symmetric padding (h, w); pool: unused
    fpad: tuple[int, int, int, int] = (0, 0, 0, 0)  # pool: zero pad (left, right, top, bottom)


def _layers(stage: nn.Module) -> list[nn.Module]:
    return [m for m in stage.children() if not isinstance(m, _IDENTITY)]


def _single(v) -> int:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(set(v)) != 1:
        raise ValueError(f"non-square {v}")
    return int(v[0])


def trim_supported(model: nn.Module) -> bool:
    """True for an :class:`FCN` whose first stages are plain conv/ReLU/max-pool chains (VGG, Caffe alignment)."""
    if not isinstance(model, FCN):
        return False
    stages = list(model.backbone.stages.values())
    first = _layers(stages[0]) if stages else []
    if not first or not isinstance(first[0], nn.Conv2d) or _single(first[0].padding) < 2:
        return False
    return bool(_supported_prefix(stages))


def _supported_prefix(stages: list[nn.Module]) -> int:
    """How many leading stages consist only of stride-1 convs (+ReLU) and k=s max-pools."""
    count = 0
    for stage in stages:
        for m in _layers(stage):
            if isinstance(m, nn.Conv2d):
                if (_single(m.stride) != 1 or _single(m.dilation) != 1 or m.groups != 1
                        or m.padding_mode != "zeros" or _single(m.kernel_size) % 2 == 0):
                    return count
            elif isinstance(m, nn.MaxPool2d):
                if (_single(m.kernel_size) != _single(m.stride or m.kernel_size) or _single(m.padding) != 0
                        or _single(m.dilation) != 1):
                    return count
            elif not isinstance(m, nn.ReLU):
                return count
        count += 1
    return count


class TrimmedFCN(SegmentationModel):
    """An :class:`fcnseg.models.FCN` that skips the pad-100 border (same contract, same scores).

    ``features`` computes the trunk without the image-independent border; the head is the wrapped net's.

    By default (inference) snapshot semantics: the background constants are taken from the weights at
    construction (and refreshed by :meth:`refresh`), and the wrapped net is put in eval mode.
    ``trainable=True``: constants and skeletons come from the live weights at every forward, under
    autograd, no strips, dropout as the wrapped net's mode says (the wrapper for a training step).
    """

    def __init__(self, model: FCN, cache_size: int = 64, strip_bytes: int | None = None,
                 trainable: bool = False) -> None:
        super().__init__()
        self.trainable = trainable
        # stages whose maps exceed strip_bytes run in horizontal strips (0: never; None: 12 MiB on the
        # CPU, where it bounds peak memory, never on a GPU, where each strip would cost kernel launches)
        self.strip_bytes = strip_bytes
        if not trim_supported(model):
            raise ValueError("TrimmedFCN needs a backbone whose first stages are conv/ReLU/max-pool chains "
                             "with a padded first conv (VGG16/AlexNet-free, alignment='caffe')")
        self.model = model if trainable else model.eval()
        self.spec = model.spec
        self.heads = dict(model.heads)
        self._n_stages = _supported_prefix(list(model.backbone.stages.values()))
        with torch.no_grad():  # big convs run as matmuls on their weight: keep it in plain (OIHW) layout
            for m in model.modules():
                if runs_as_matmul(m) and not m.weight.is_contiguous():
                    m.weight.data = m.weight.data.contiguous()
        self._cache_size = cache_size
        self._plans: OrderedDict = OrderedDict()
        self._skeletons: OrderedDict = OrderedDict()
        self._skeleton_sizes: dict = {}  # trainable: skeleton input sizes and the taps each serves
        self.version = 0   # counts refresh() calls: what was captured from the old constants is stale
        self.refresh()

    @property
    def preprocessing(self) -> Preprocessing:
        return self.model.preprocessing

    @property
    def output_stride(self) -> int:
        return self.model.output_stride

    @property
    def in_channels(self) -> int:
        return self.model.in_channels

    @property
    def input_padding(self) -> int:
        return self.model.input_padding

    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        return self.model.forward_features(features, size)

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute the background constants and per-conv folded biases from the current weights."""
        self._const, self._bias, self._input_zero = self._fold()
        self._plans.clear()
        self._skeletons.clear()
        self.version += 1

    def _fold(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], dict[int, bool]]:
        """Per conv of the trimmed stages (by ``id``): the background of its *output* (post-ReLU), its
        folded bias ``b + W·c_in``, and whether its input background is exactly 0 — from the current
        weights (differentiable where grad is enabled)."""
        const: dict[int, torch.Tensor] = {}
        bias_of: dict[int, torch.Tensor] = {}
        input_zero: dict[int, bool] = {}
        c = None  # background of the current map; None = exactly zero
        for stage in list(self.model.backbone.stages.values())[: self._n_stages]:
            mods = _layers(stage)
            for i, m in enumerate(mods):
                if isinstance(m, nn.Conv2d):
                    bias = m.bias if m.bias is not None else torch.zeros(m.out_channels, device=m.weight.device)
                    folded = bias.clone() if c is None else bias + m.weight.sum((2, 3)) @ c
                    relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                    input_zero[id(m)] = c is None
                    bias_of[id(m)] = folded
                    c = folded.clamp_min(0) if relu else folded
                    const[id(m)] = c
        return const, bias_of, input_zero

    # ------------------------------------------------------------------ planning (pure integer work)

    def _plan(self, h: int, w: int):
        key = (h, w)
        if key in self._plans:
            self._plans.move_to_end(key)
            return self._plans[key]
        plan = self._make_plan(h, w)
        self._plans[key] = plan
        if len(self._plans) > self._cache_size:
            self._plans.popitem(last=False)
        return plan

    def _make_plan(self, h: int, w: int):
        """Ops for the trimmed stages, the stop tap, and the final active windows; None if no gain."""
        axes = [_Axis(h, 0, h, 0, h), _Axis(w, 0, w, 0, w)]
        ops: list[_Op] = []
        stages = list(self.model.backbone.stages.items())[: self._n_stages]
        good: tuple | None = None
        tap_windows: dict[str, tuple[_Axis, _Axis]] = {}
        for s_idx, (tap, stage) in enumerate(stages):
            mods = _layers(stage)
            ok = True
            for i, m in enumerate(mods):
                if isinstance(m, nn.ReLU):
                    continue
                if isinstance(m, nn.Conv2d):
                    nxt_pool = next((x for x in mods[i + 1:] if not isinstance(x, nn.ReLU)), None)
                    want_even = isinstance(nxt_pool, nn.MaxPool2d) and _single(nxt_pool.kernel_size) == 2
                    pads = []
                    for ax in axes:
                        p_new, ok_ax = _conv_axis(ax, m, self._input_zero[id(m)], want_even)
                        pads.append(p_new)
                        ok &= ok_ax
                    relu = i + 1 < len(mods) and isinstance(mods[i + 1], nn.ReLU)
                    ops.append(_Op("conv", m, relu, (pads[0], pads[1])))
                else:  # max-pool
                    fp = []
                    for ax in axes:
                        lr, ok_ax = _pool_axis(ax, m)
                        fp.append(lr)
                        ok &= ok_ax
                    ops.append(_Op("pool", m, fpad=(fp[1][0], fp[1][1], fp[0][0], fp[0][1])))
                if not ok:
                    break
            if not ok:
                break
            tap_windows[tap] = (_Axis(**vars(axes[0])), _Axis(**vars(axes[1])))
            good = (s_idx, len(ops), dict(tap_windows))
        if good is None:
            return None
        return {"stop": good[0], "n_ops": good[1], "taps": good[2], "ops": ops[: good[1]]}

    # ------------------------------------------------------------------ background maps

    def _stride(self, stop: int) -> int:
        return 2 ** sum(isinstance(m, nn.MaxPool2d) for st in list(self.model.backbone.stages.values())[: stop + 1]
                        for m in _layers(st))

    def _background(self, tap: str, stop: int, h: int, w: int, win: tuple[_Axis, _Axis],
                    like: torch.Tensor, skel: torch.Tensor | None = None) -> torch.Tensor:
        """Full zero-image map at ``tap`` for an h×w input: a small skeleton (``skel``, else the cached
        one), interior stretched."""
        if skel is None:
            stride = self._stride(stop)
            key = (tap, h % stride, w % stride, like.dtype, like.device)
            if key not in self._skeletons:
                hs, ws = (self._skeleton_size(r, stride, stop, tap) for r in (h % stride, w % stride))
                with torch.no_grad():
                    z = torch.zeros(1, self.model.backbone.in_channels, hs, ws, dtype=like.dtype, device=like.device)
                    self._skeletons[key] = self.model.backbone(z, {tap})[tap]
                if len(self._skeletons) > self._cache_size:
                    self._skeletons.popitem(last=False)
            skel = self._skeletons[key]
        # first interior row/col of the skeleton: the rim width e at this tap (size-independent)
        out = _stretch(skel, 2, win[0].e, win[0].n)
        return _stretch(out, 3, win[1].e, win[1].n)

    def _live_skeletons(self, rebuilt: list[tuple[str, int]], h: int, w: int, like: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Trainable: the zero-image maps of the ``(tap, stage index)`` taps rebuilt, from the live weights
        under autograd (the border's gradient flows through them). Taps whose skeleton input can be the
        deepest one's share its one backbone pass."""
        key = (tuple(rebuilt), h % self._stride(rebuilt[-1][1]), w % self._stride(rebuilt[-1][1]))
        if key not in self._skeleton_sizes:
            own = {tap: tuple(self._skeleton_size(n % self._stride(stop), self._stride(stop), stop, tap)
                              for n in (h, w)) for tap, stop in rebuilt}
            deep = own[rebuilt[-1][0]]
            groups: dict[tuple[int, int], set[str]] = {}
            for tap, stop in rebuilt:
                fits = deep[0] <= h and deep[1] <= w and all(self._has_interior(n, stop, tap) for n in deep)
                groups.setdefault(deep if fits else own[tap], set()).add(tap)
            self._skeleton_sizes[key] = groups
        out: dict[str, torch.Tensor] = {}
        for (hs, ws), taps in self._skeleton_sizes[key].items():
            z = torch.zeros(1, self.model.backbone.in_channels, hs, ws, dtype=like.dtype, device=like.device)
            out.update(self.model.backbone(z, taps))
        return out

    def _has_interior(self, size: int, stop: int, tap: str) -> bool:
        """Whether an input ``size`` wide keeps the trimmed plan down to ``stop`` with an interior at ``tap``."""
        plan = self._make_plan(size, size)
        if plan is None or plan["stop"] < stop:
            return False
        ax = plan["taps"][tap][0]
        return ax.f - ax.e >= 1

    def _skeleton_size(self, residue: int, stride: int, stop: int, tap: str) -> int:
        size = residue or stride
        while not self._has_interior(size, stop, tap):
            size += stride
            if size > 100_000:
                raise RuntimeError("no skeleton size found")  # pragma: no cover
        return size

    # ------------------------------------------------------------------ forward

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The trunk's taps (or the taps the trunk resumes from), computed without the border."""
        h, w = x.shape[-2:]
        plan = self._plan(int(h), int(w))
        if plan is None:
            return self.model.features(x)
        # the constants: a snapshot, or (trainable) from the live weights, under autograd
        k = self._fold()[:2] if self.trainable else (self._const, self._bias)
        d = x
        op_i = 0
        taps: dict[str, torch.Tensor] = {}
        stages = list(self.model.backbone.stages.items())
        wanted = set(self.model.tap_names)
        rebuilt = [(stages[i][0], i) for i in range(plan["stop"] + 1) if stages[i][0] in wanted or i == plan["stop"]]
        skels = self._live_skeletons(rebuilt, int(h), int(w), x) if self.trainable else {}
        for s_idx in range(plan["stop"] + 1):
            tap = stages[s_idx][0]
            n_ops = sum(1 for m in _layers(self.model.backbone.stages[tap]) if not isinstance(m, nn.ReLU))
            d = self._run_stage_ops(plan["ops"][op_i: op_i + n_ops], d, k)
            op_i += n_ops
            if tap in wanted or s_idx == plan["stop"]:
                taps[tap] = self._rebuild(tap, s_idx, d, plan["taps"][tap], int(h), int(w), k[0], skels.get(tap))
        del d
        y = taps[stages[plan["stop"]][0]]
        for tap, stage in stages[plan["stop"] + 1:]:
            if len(taps) >= len(wanted | {stages[plan["stop"]][0]}):
                break
            y = _run_stage(stage, y)
            if tap in wanted:
                taps[tap] = y
        return {k: v for k, v in taps.items() if k in wanted} or taps

    def _run_stage_ops(self, ops: list[_Op], d: torch.Tensor, k: tuple[dict, dict]) -> torch.Tensor:
        """One trimmed stage (``k``: background constants and folded biases by conv); in horizontal strips
        when its maps are large (same values, less memory: only a strip of each intermediate map is alive,
        plus the stage's output), never when trainable (autograd keeps every map for the backward anyway)."""
        n, c, h, w = (int(v) for v in d.shape)  # ints also while tracing (fixed-size export)
        # (no max(..., default=): torch.compile cannot trace it and would compile every layer apart)
        widest = max([c, *(op.module.out_channels for op in ops if op.kind == "conv")])
        big = n * widest * (h + 8) * (w + 8) * d.element_size()
        limit = self.strip_bytes if self.strip_bytes is not None else (_STRIP_BYTES if d.device.type == "cpu" else 0)
        strips = min(h // 16, -(-big // limit)) if limit and not self.trainable else 1
        if strips <= 1 or not ops or ops[-1].kind != "pool":
            for op in ops:
                d = self._run(op, d, k)
            return d
        rows = [h]
        for op in ops:
            rows.append(_rows_out(op, rows[-1]))
        bounds = [round(i * rows[-1] / strips) for i in range(strips + 1)]
        outs = []
        for j0, j1 in zip(bounds, bounds[1:]):
            if j1 <= j0:
                continue
            need = [(j0, j1)]
            for i in reversed(range(len(ops))):  # rows each op must produce, clipped to its map
                lo, hi = _rows_in(ops[i], *need[0])
                need.insert(0, (max(lo, 0), min(hi, rows[i])))
            t = d[:, :, need[0][0]:need[0][1]]
            for i, op in enumerate(ops):
                lo, hi = _rows_in(op, *need[i + 1])
                if lo < need[i][0] or hi > need[i][1]:  # rows beyond the map: zero = background
                    t = F.pad(t, (0, 0, need[i][0] - lo, hi - need[i][1]))
                t = self._run(op, t, k, rows_padded=True)
            outs.append(t)
        return torch.cat(outs, 2)

    def _run(self, op: _Op, d: torch.Tensor, k: tuple[dict, dict], rows_padded: bool = False) -> torch.Tensor:
        m = op.module
        if op.kind == "conv":
            pad = (0, op.pad[1]) if rows_padded else op.pad
            if self.trainable and max(pad) > 1:  # oneDNN's conv backward is slow for padding > 1: pad by copy
                eh, ew = max(pad[0] - 1, 0), max(pad[1] - 1, 0)
                d, pad = F.pad(d, (ew, ew, eh, eh)), (pad[0] - eh, pad[1] - ew)
            y = F.conv2d(d, m.weight, k[1][id(m)], padding=pad)
            if op.relu:
                y = y.relu_()
            c = k[0][id(m)].view(-1, 1, 1)
            # under autograd the ReLU keeps its output for the backward: no in-place write after it
            return y - c if self.trainable else y.sub_(c)
        fpad = (op.fpad[0], op.fpad[1], 0, 0) if rows_padded else op.fpad
        if any(fpad):
            d = F.pad(d, fpad)
        k = _single(m.kernel_size)
        return F.max_pool2d(d, k, k, ceil_mode=True)

    def _rebuild(self, tap: str, stop: int, d: torch.Tensor, win: tuple[_Axis, _Axis], h: int, w: int,
                 const: dict[int, torch.Tensor], skel: torch.Tensor | None) -> torch.Tensor:
        """Background map with the active window replaced by ``d + c`` (built by concatenation: no
        in-place writes, so the graph also traces/exports and trains)."""
        full = self._background(tap, stop, h, w, win, d, skel)
        ah, aw = win
        inner = d[..., : ah.b - ah.a, : aw.b - aw.a] + self._last_const(stop, const).view(-1, 1, 1)
        n = d.shape[0]
        band = full[..., ah.a:ah.b, :].expand(n, -1, -1, -1)
        band = torch.cat([band[..., : aw.a], inner, band[..., aw.b:]], dim=3)
        return torch.cat([full[..., : ah.a, :].expand(n, -1, -1, -1), band,
                          full[..., ah.b:, :].expand(n, -1, -1, -1)], dim=2)

    def _last_const(self, stop: int, const: dict[int, torch.Tensor]) -> torch.Tensor:
        for stage in reversed(list(self.model.backbone.stages.values())[: stop + 1]):
            for m in reversed(_layers(stage)):
                if isinstance(m, nn.Conv2d):
                    return const[id(m)]
        raise RuntimeError("no conv before the tap")  # pragma: no cover


def _conv_axis(ax: _Axis, m: nn.Conv2d, input_zero: bool, want_even: bool) -> tuple[int, bool]:
    """Advance one axis through a stride-1 conv; returns (symmetric padding P on the delta, valid).

    Output ``o`` reads inputs ``[o-p, o-p+k)``. Convolving the delta window ``[a, b)`` with padding
    ``P = k-1`` yields every output touching it, ``[a-P+p, b+P+p-k+1)``, reading ``[a-P, b+P)``; those
    reads outside ``[a, b)`` must be background: inside the rim-free zone ``[e, f)``, or beyond the map
    where the conv's zero padding equals a zero background.
    """
    k, p = _single(m.kernel_size), _single(m.padding)
    n_out = ax.n + 2 * p - k + 1
    pad = k - 1
    if want_even and (ax.a - pad + p) % 2 and (ax.b + pad + p - k + 1) % 2:
        pad += 1  # one more output on each side aligns the next 2×2 pool: no copy for padding there
    a_out, b_out = ax.a - pad + p, ax.b + pad + p - k + 1
    lo, hi = ax.a - pad, ax.b + pad
    lo_ok = lo >= ax.e if lo >= 0 else (input_zero and ax.e == 0)
    hi_ok = hi <= ax.f if hi <= ax.n else (input_zero and ax.f == ax.n)
    ok = lo_ok and hi_ok and a_out >= 0 and b_out <= n_out
    rim = p > 0 and not input_zero  # the conv's zero padding differs from the background
    e = ax.e + p if (ax.e > 0 or rim) else 0
    f = ax.f + p - k + 1 if (ax.f < ax.n or rim) else n_out
    ax.n, ax.a, ax.b, ax.e, ax.f = n_out, a_out, b_out, e, f
    return pad, ok


def _pool_axis(ax: _Axis, m: nn.MaxPool2d) -> tuple[tuple[int, int], bool]:
    """Advance one axis through a k=s max-pool; returns ((left, right) zero pad of the delta, valid).

    The extra inputs a window reads must be background (zero in delta form), and no window of the
    active part may be a partial ceil-mode window (those drop, not zero, their missing inputs).
    """
    k = _single(m.kernel_size)
    n_out = -(-ax.n // k) if m.ceil_mode else ax.n // k
    a_out, b_out = ax.a // k, -(-ax.b // k)
    left, right = ax.a - a_out * k, b_out * k - ax.b
    ok = (left == 0 or a_out * k >= ax.e) and (right == 0 or b_out * k <= ax.f) and b_out * k <= ax.n
    e = -(-ax.e // k)
    f = ax.f // k if ax.f < ax.n else n_out
    ax.n, ax.a, ax.b, ax.e, ax.f = n_out, a_out, b_out, e, f
    return (left, right), ok


def _rows_out(op: _Op, rows: int) -> int:
    if op.kind == "conv":
        return rows + 2 * op.pad[0] - _single(op.module.kernel_size) + 1
    k = _single(op.module.kernel_size)
    return -(-(rows + op.fpad[2] + op.fpad[3]) // k)


def _rows_in(op: _Op, o0: int, o1: int) -> tuple[int, int]:
    """Input rows (in the op's unpadded input coordinates; may fall outside it) that outputs [o0, o1) read."""
    if op.kind == "conv":
        p, k = op.pad[0], _single(op.module.kernel_size)
        return o0 - p, o1 - 1 - p + k
    k = _single(op.module.kernel_size)
    return o0 * k - op.fpad[2], o1 * k - op.fpad[2]


_MM_BYTES = 16 * 2**20  # convs with weights this large run as im2col + matmul (CPU)
_STRIP_BYTES = 12 * 2**20  # default strip size on the CPU


def runs_as_matmul(m: nn.Module) -> bool:
    """True for a conv that the trimmed net runs as ``W @ im2col(x)`` on its plain (OIHW) weight, when it
    comes after the trimmed stages on the CPU: a plain stride-1 conv whose weight has at least 16 MiB
    (VGG16's fc6/fc7)."""
    return (isinstance(m, nn.Conv2d) and m.weight.numel() * m.weight.element_size() >= _MM_BYTES
            and m.weight.device.type == "cpu" and m.groups == 1 and _single(m.stride) == 1
            and _single(m.dilation) == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _run_stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A stage after the trimmed ones; on the CPU big-weight convs (fc6, fc7) run as matmuls on the
    weight itself: oneDNN would copy (reorder) a 400 MB fc6 weight on every call, which sets the peak
    memory. Elsewhere (cuDNN) the stage runs as is."""
    if not isinstance(stage, nn.Sequential) or x.device.type != "cpu":
        return stage(x)
    for m in stage:
        if isinstance(m, _IDENTITY):
            x = m(x) if m.training else x  # dropout while training through the wrapper
            continue
        if runs_as_matmul(m):
            x = _conv_mm(x, m)
        else:
            x = m(x)
    return x


def _conv_mm(x: torch.Tensor, m: nn.Conv2d) -> torch.Tensor:
    """``m(x)`` computed as ``W[O, C·k·k] @ im2col(x)`` (same sums, no weight copy)."""
    k, p = _single(m.kernel_size), _single(m.padding)
    n, c, h, w = x.shape
    ho, wo = h + 2 * p - k + 1, w + 2 * p - k + 1
    cols = x.reshape(n, c, h * w) if k == 1 and p == 0 else F.unfold(x, k, padding=p)
    # a broadcast matmul: no copy of the weight per sample (an explicit expand would become one in ONNX)
    y = torch.matmul(m.weight.reshape(m.out_channels, -1), cols)
    if m.bias is not None:
        y = y + m.bias.view(1, -1, 1)
    return y.reshape(n, m.out_channels, ho, wo)


def _stretch(t: torch.Tensor, dim: int, at: int, size: int) -> torch.Tensor:
    """Repeat index ``at`` of ``dim`` so that the dimension has ``size`` entries."""
    extra = size - t.shape[dim]
    if extra == 0:
        return t
    if extra < 0:
        raise RuntimeError(f"skeleton larger than the map ({t.shape[dim]} > {size})")
    dev = t.device  # indices made where the map is: no host-to-device copy (CUDA graph capture allows none)
    idx = torch.cat([torch.arange(at + 1, device=dev), torch.full((extra,), at, device=dev),
                     torch.arange(at + 1, t.shape[dim], device=dev)])
    return t.index_select(dim, idx)
