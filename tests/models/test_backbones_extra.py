"""GoogLeNet and ResNet-50/101 backbones: torchvision layout, taps, coordinate maps."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from fcnseg import create_model
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.backbones.googlenet import TORCHVISION_GOOGLENET, googlenet
from fcnseg.models.backbones.googlenet import TORCHVISION_NAMES as GOOGLENET_NAMES
from fcnseg.models.backbones.resnet import TORCHVISION_NAMES as RESNET_NAMES
from fcnseg.models.backbones.resnet import resnet50, resnet101
from fcnseg.models.base import single
from fcnseg.models.geometry import coord_map
from fcnseg.models.preprocessing import TORCHVISION

SMALL = 1 / 16


# ---- torchvision's state_dict layout, written from torchvision's architecture definitions ----

def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (c,), f"{prefix}.bias": (c,), f"{prefix}.running_mean": (c,),
            f"{prefix}.running_var": (c,), f"{prefix}.num_batches_tracked": ()}


def _tv_resnet(depths: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """torchvision resnet trunk keys → shapes (Bottleneck v1.5, no fc)."""
    sd = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    c_in = 64
    for i, depth in enumerate(depths):
        planes = 64 * 2**i
        for j in range(depth):
            p = f"layer{i + 1}.{j}"
            sd[f"{p}.conv1.weight"] = (planes, c_in, 1, 1)
            sd.update(_bn(f"{p}.bn1", planes))
            sd[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            sd.update(_bn(f"{p}.bn2", planes))
            sd[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            sd.update(_bn(f"{p}.bn3", 4 * planes))
            if j == 0:
                sd[f"{p}.downsample.0.weight"] = (4 * planes, c_in, 1, 1)
                sd.update(_bn(f"{p}.downsample.1", 4 * planes))
            c_in = 4 * planes
    return sd


_TV_INCEPTIONS = [  # torchvision: inception_block(in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj)
    ("inception3a", 192, 64, 96, 128, 16, 32, 32), ("inception3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception4a", 480, 192, 96, 208, 16, 48, 64), ("inception4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception4c", 512, 128, 128, 256, 24, 64, 64), ("inception4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception4e", 528, 256, 160, 320, 32, 128, 128), ("inception5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception5b", 832, 384, 192, 384, 48, 128, 128),
]


def _tv_googlenet() -> dict[str, tuple[int, ...]]:
    """torchvision googlenet trunk keys → shapes (aux_logits=False, no fc)."""
    sd: dict[str, tuple[int, ...]] = {}

    def basic(p: str, c_in: int, c_out: int, k: int) -> None:
        sd[f"{p}.conv.weight"] = (c_out, c_in, k, k)
        sd.update(_bn(f"{p}.bn", c_out))

    basic("conv1", 3, 64, 7)
    basic("conv2", 64, 64, 1)
    basic("conv3", 64, 192, 3)
    for name, c_in, c1, c3r, c3, c5r, c5, cp in _TV_INCEPTIONS:
        basic(f"{name}.branch1", c_in, c1, 1)
        basic(f"{name}.branch2.0", c_in, c3r, 1)
        basic(f"{name}.branch2.1", c3r, c3, 3)
        basic(f"{name}.branch3.0", c_in, c5r, 1)
        basic(f"{name}.branch3.1", c5r, c5, 3)  # 3×3, torchvision's known deviation from the paper's 5×5
        basic(f"{name}.branch4.1", c_in, cp, 1)
    return sd


def _full(factory) -> nn.Module:
    """A full-width trunk without storage (only names and shapes are inspected)."""
    with torch.device("meta"):
        return factory()


def _from_torchvision(key: str, names: dict[str, str]) -> str | None:
    """What the weights importer does: replace the longest matching module prefix, or drop the key."""
    for tv in sorted(names, key=len, reverse=True):
        if key == tv or key.startswith(tv + "."):
            return names[tv] + key[len(tv):]
    return None


def _mapped_shapes(tv: dict[str, tuple[int, ...]], names: dict[str, str]) -> dict[str, tuple[int, ...]]:
    return {_from_torchvision(k, names): v for k, v in tv.items()}


FULL = [
    (resnet50, RESNET_NAMES, _tv_resnet((3, 4, 6, 3))),
    (resnet101, RESNET_NAMES, _tv_resnet((3, 4, 23, 3))),
    (googlenet, GOOGLENET_NAMES, _tv_googlenet()),
]


def test_torchvision_facts() -> None:
    """Spot facts about torchvision's nets, independent of the layout generators above."""
    r50, r101, g = _tv_resnet((3, 4, 6, 3)), _tv_resnet((3, 4, 23, 3)), _tv_googlenet()
    params = lambda sd: [k for k in sd if k.endswith((".weight", ".bias"))]  # noqa: E731
    assert len(params(r50)) + 2 == 161  # + fc.weight, fc.bias
    assert len(params(r101)) + 2 == 314
    assert len(params(g)) + 2 == 173
    assert r50["layer3.5.conv3.weight"] == (1024, 256, 1, 1) and "layer3.6.conv1.weight" not in r50
    assert r101["layer3.22.conv2.weight"] == (256, 256, 3, 3) and "layer3.23.conv1.weight" not in r101
    assert r50["layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert g["inception3a.branch2.1.conv.weight"] == (128, 96, 3, 3)
    assert g["inception3a.branch3.1.conv.weight"] == (32, 16, 3, 3)
    assert g["inception5b.branch4.1.conv.weight"] == (128, 832, 1, 1)


@pytest.mark.parametrize("factory,names,tv", FULL, ids=["resnet50", "resnet101", "googlenet"])
def test_full_width_matches_torchvision(factory, names, tv) -> None:
    ours = {k: tuple(v.shape) for k, v in _full(factory).state_dict().items()}
    mapped = _mapped_shapes(tv, names)
    assert None not in mapped, "a torchvision trunk key is not covered by TORCHVISION_NAMES"
    assert mapped == ours


@pytest.mark.parametrize("factory,trunk_params", [
    (resnet50, 25_557_032 - (2048 * 1000 + 1000)),    # torchvision resnet50: 25,557,032 with fc
    (resnet101, 44_549_160 - (2048 * 1000 + 1000)),   # resnet101: 44,549,160 with fc
    (googlenet, 6_624_904 - (1024 * 1000 + 1000)),    # googlenet (no aux): 6,624,904 with fc
])
def test_parameter_counts(factory, trunk_params) -> None:
    assert sum(p.numel() for p in _full(factory).parameters()) == trunk_params


def test_dropped_torchvision_keys() -> None:
    for key in ("fc.weight", "aux1.conv.conv.weight", "aux2.fc1.weight"):
        assert _from_torchvision(key, GOOGLENET_NAMES) is None
    assert _from_torchvision("fc.bias", RESNET_NAMES) is None
    assert _from_torchvision("layer1.0.bn1.running_var", RESNET_NAMES) == \
        "stages.layer1.blocks.0.bn1.running_var"


def test_torchvision_state_dict_loads_reduced() -> None:
    """A torchvision-keyed state_dict (with fc/aux extras) converts and loads strictly."""
    for factory, names in ((resnet50, RESNET_NAMES), (googlenet, GOOGLENET_NAMES)):
        src = factory(width=SMALL)
        inverse = {v: k for k, v in names.items()}
        tv = {_from_torchvision(k, inverse): v.clone() for k, v in src.state_dict().items()}
        tv.update({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10), "aux1.fc1.weight": torch.zeros(2, 2)})
        dst = factory(width=SMALL)
        dst.load_state_dict({_from_torchvision(k, names): v for k, v in tv.items()
                             if _from_torchvision(k, names) is not None})
        for k, v in src.state_dict().items():
            assert torch.equal(dst.state_dict()[k], v), k


# ---- taps, factories ----

def test_taps_and_registry() -> None:
    assert [(t.name, t.stride, t.channels) for t in _full(resnet50).taps] == [
        ("layer1", 4, 256), ("layer2", 8, 512), ("layer3", 16, 1024), ("layer4", 32, 2048)]
    assert [(t.name, t.stride, t.channels) for t in _full(googlenet).taps] == [
        ("inception3b", 8, 480), ("inception4e", 16, 832), ("inception5b", 32, 1024)]
    assert BACKBONES["googlenet"] is googlenet and BACKBONES["resnet101"] is resnet101


@pytest.mark.parametrize("factory", [resnet50, googlenet])
def test_reduced_forward_channels(factory) -> None:
    b = factory(width=SMALL, in_channels=4, fc_channels=64, fc6_pad=0).eval()
    feats = b(torch.randn(1, 4, 40, 40))
    assert [f.shape[1] for f in feats.values()] == [t.channels for t in b.taps]
    first = next(m for m in b.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 4 and first.padding == (100, 100)


def test_stem_padding_and_bn_eps() -> None:
    assert resnet50(alignment="same", width=SMALL).stages.layer1.conv1.padding == (3, 3)
    assert resnet101(input_pad=7, width=SMALL).stages.layer1.conv1.padding == (7, 7)
    g = googlenet(alignment="same", width=SMALL)
    assert g.stages.inception3b.conv1.conv.padding == (3, 3)
    assert {m.eps for m in g.modules() if isinstance(m, nn.BatchNorm2d)} == {0.001}
    assert {m.eps for m in resnet50(width=SMALL).modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    pools = [m for m in googlenet(width=SMALL).modules() if isinstance(m, nn.MaxPool2d)]
    assert all(p.ceil_mode for p in pools)


@pytest.mark.parametrize("factory", [resnet50, resnet101, googlenet])
def test_bad_arguments(factory) -> None:
    with pytest.raises(ValueError, match="alignment"):
        factory(alignment="valid")
    with pytest.raises(TypeError, match="layout"):
        factory(layout="caffenet")


def test_preprocessing_defaults() -> None:
    assert resnet50(width=SMALL).preprocessing == TORCHVISION
    assert googlenet(width=SMALL).preprocessing == TORCHVISION_GOOGLENET
    # torchvision's googlenet(weights=...) applies transform_input to ImageNet-normalised input:
    rgb = torch.rand(1, 3, 4, 4) * 255
    x = TORCHVISION(rgb)
    mean, std = torch.tensor(TORCHVISION.mean).view(3, 1, 1), torch.tensor(TORCHVISION.std).view(3, 1, 1)
    transformed = x * (std / 0.5) + (mean - 0.5) / 0.5
    assert torch.allclose(TORCHVISION_GOOGLENET(rgb), transformed, atol=1e-5)


# ---- coordinate maps ----

def _blocks_with_branches(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if hasattr(m, "branches")]


@pytest.mark.parametrize("factory", [resnet50, googlenet])
def test_parallel_branches_are_aligned(factory) -> None:
    b = factory(width=SMALL)
    blocks = _blocks_with_branches(b)
    assert len(blocks) == (16 if factory is resnet50 else 9)
    for block in blocks:
        maps = [coord_map(nn.Sequential(*branch)) for branch in block.branches()]
        assert len(set(maps)) == 1, (type(block).__name__, maps)
    strided = [coord_map(nn.Sequential(*blk.branches()[0])).scale for blk in blocks]
    assert strided.count(2) == (3 if factory is resnet50 else 0)


def _receptive_probe(backbone: nn.Module) -> nn.Module:
    """Same geometry, but every output depends on its whole receptive field with positive gradient."""
    probe = copy.deepcopy(backbone).double().eval()
    for parent in list(probe.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding,
                                                   ceil_mode=child.ceil_mode))
    with torch.no_grad():
        for m in probe.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
    return probe


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("factory", [pytest.param(resnet50, marks=pytest.mark.slow), googlenet])
def test_coord_maps_match_receptive_field_centres(factory, alignment) -> None:
    b = factory(width=SMALL, alignment=alignment)
    maps = b.coord_maps()
    probe = _receptive_probe(b)
    h = 600  # > the largest receptive field here (427 px, resnet50 layer4)
    x = torch.ones(1, 3, h, 1, dtype=torch.float64, requires_grad=True)
    feats = probe(x)
    for tap in b.taps:
        f = feats[tap.name]
        m = maps[tap.name]
        assert m.scale == tap.stride
        for o in (f.shape[2] // 2, f.shape[2] // 2 + 1):
            (grad,) = torch.autograd.grad(f[0, :, o].sum(), x, retain_graph=True)
            support = grad[0].abs().sum(0)[:, 0].nonzero().flatten()
            lo, hi = int(support[0]), int(support[-1])
            assert 0 < lo and hi < h - 1, "receptive field clipped; enlarge the probe"
            assert len(support) == hi - lo + 1
            assert m.scale * o + m.offset == (lo + hi) / 2, (tap.name, o, lo, hi, m)


SIZES = [(1, 1), (31, 31), (64, 64), (97, 97), (31, 64)]


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("name", ["fcn8s@resnet50", "fcn32s@resnet101", "fcn32s@googlenet", "fcn16s@googlenet",
                                  "fcn8s@googlenet"])
def test_output_is_input_size(name, alignment) -> None:
    torch.manual_seed(0)
    model = create_model(name, 3, alignment=alignment, width=SMALL, fc_channels=64).eval()
    assert min(model.crop_offsets) >= 0
    with torch.no_grad():
        for h, w in SIZES:
            assert single(model(torch.randn(1, 3, h, w))).shape == (1, 3, h, w), (h, w)
