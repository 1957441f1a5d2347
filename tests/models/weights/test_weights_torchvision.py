"""torchvision state_dicts (torch.save and safetensors), fcnseg checkpoints, and bad files."""
import importlib

import pytest
import torch
from safetensors.torch import save_file
from support.weights import TINY, W, tv_alexnet_state, tv_vgg16_state

from fcnseg.models import create_model
from fcnseg.models.base import single
from fcnseg.models.preprocessing import CAFFE_VGG, TORCHVISION
from fcnseg.models.weights import WeightsError, detect_format, load_weights
from fcnseg.models.weights.torchvision import torchvision_names


def check_vgg16(model, sd):
    p = dict(model.named_parameters())
    torch.testing.assert_close(p["backbone.stages.pool1.conv1_1.weight"], sd["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(p["backbone.stages.pool5.conv5_3.bias"], sd["features.28.bias"], rtol=0, atol=0)
    fc6 = p["backbone.stages.fc7.fc6.weight"]
    assert fc6.shape == (64, 32, 7, 7)
    torch.testing.assert_close(fc6.flatten(1), sd["classifier.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(p["backbone.stages.fc7.fc7.weight"][:, :, 0, 0], sd["classifier.3.weight"],
                               rtol=0, atol=0)


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_vgg16_state_dict(tmp_path, fmt):
    sd = tv_vgg16_state()
    path = tmp_path / f"vgg16.{fmt}"
    torch.save(sd, path) if fmt == "pth" else save_file(sd, str(path))
    assert detect_format(path) == ("torch" if fmt == "pth" else "safetensors")
    model = create_model("fcn8s", 5, **TINY)
    assert sorted(load_weights(model, path)) == ["classifier.6.bias", "classifier.6.weight"]
    check_vgg16(model, sd)
    assert model.preprocessing == TORCHVISION
    assert model.spec.to_dict()["weights"] == str(path)
    out = single(model(torch.randn(1, 3, 64, 64)))
    assert out.shape == (1, 5, 64, 64)


def test_create_model_with_weights_and_truncated_trunk(tmp_path):
    sd = tv_vgg16_state()
    torch.save(sd, tmp_path / "v.pth")
    check_vgg16(create_model("fcn32s", 3, weights=str(tmp_path / "v.pth"), **TINY), sd)
    # pool4-only drops pool5/fc7: their tensors are unused, not an error
    unused = load_weights(create_model("pool4-only", 3, **TINY), tmp_path / "v.pth")
    assert "features.28.weight" in unused and "classifier.0.weight" in unused


def test_alexnet_needs_torchvision_layout(tmp_path):
    sd = tv_alexnet_state()
    torch.save(sd, tmp_path / "alexnet.pth")
    model = create_model("fcn32s", 4, backbone="alexnet", layout="torchvision", **TINY)
    assert load_weights(model, tmp_path / "alexnet.pth") == ["classifier.6.weight", "classifier.6.bias"]
    fc6 = dict(model.named_parameters())["backbone.stages.fc7.fc6.weight"]
    torch.testing.assert_close(fc6.flatten(1), sd["classifier.1.weight"], rtol=0, atol=0)
    caffenet = create_model("fcn32s", 4, backbone="alexnet", **TINY)
    with pytest.raises(WeightsError, match="layout='torchvision'"):
        load_weights(caffenet, tmp_path / "alexnet.pth")


def test_missing_and_misshapen_tensors(tmp_path):
    sd = tv_vgg16_state()
    del sd["features.5.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing\.pth.*stages\.pool2\.conv2_1\.weight"):
        load_weights(create_model("fcn32s", 3, **TINY), tmp_path / "missing.pth")
    torch.save(tv_vgg16_state(), tmp_path / "narrow.pth")
    with pytest.raises(WeightsError, match=r"narrow\.pth: features\.0\.weight"):
        load_weights(create_model("fcn32s", 3, width=1 / 8, fc_channels=512), tmp_path / "narrow.pth")


_UNPICKLED = []


class _Evil:
    def __reduce__(self):
        return (_UNPICKLED.append, ("ran",))


def test_bad_files_give_one_line_errors(tmp_path):
    model = create_model("fcn32s", 3, **TINY)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(model, tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "junk.caffemodel").write_text('name: "VGG"\nlayer { name: "conv1_1" }\n')
    torch.save({"x": _Evil()}, tmp_path / "evil.pth")
    torch.save({"weights": [1, 2]}, tmp_path / "list.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    for name in ("junk.pth", "junk.caffemodel", "evil.pth", "list.pth", "empty.pth"):
        with pytest.raises(WeightsError) as e:
            load_weights(model, tmp_path / name)
        assert name in str(e.value) and "\n" not in str(e.value)
    assert _UNPICKLED == []  # weights_only: nothing was unpickled


def test_fcnseg_checkpoint(tmp_path):
    torch.manual_seed(3)
    src = create_model("fcn16s", 4, **TINY)
    with torch.no_grad():
        for p in src.score.parameters():
            p.normal_()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict(), "config": {**src.spec.to_dict(), "weights": "hed-vgg16"}, "epoch": 3}, path)
    dst = create_model("fcn16s", 4, **TINY)
    assert load_weights(dst, path) == []
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert dst.preprocessing.name == "caffe-hed" and dst.spec.to_dict()["weights"] == str(path)
    torch.save({"model": src.state_dict(), "config": src.spec.to_dict(), "preprocessing": TORCHVISION.to_dict()}, path)
    load_weights(dst, path)
    assert dst.preprocessing == TORCHVISION
    with pytest.raises(WeightsError, match=r"ckpt\.pt: does not match"):
        load_weights(create_model("fcn8s", 4, **TINY), path)
    torch.save(src.state_dict(), tmp_path / "plain.pt")   # a bare fcnseg state_dict loads strictly too
    other = create_model("fcn16s", 4, **TINY)
    load_weights(other, tmp_path / "plain.pt")
    assert other.preprocessing == CAFFE_VGG
    torch.testing.assert_close(other.score.out.fc7.weight, src.score.out.fc7.weight)


@pytest.mark.parametrize("backbone,module", [("googlenet", "googlenet"), ("resnet50", "resnet"),
                                             ("resnet101", "resnet")])
def test_other_backbones_generic(tmp_path, backbone, module):
    try:
        mod = importlib.import_module(f"fcnseg.models.backbones.{module}")
    except ImportError:
        pytest.skip(f"backbones/{module}.py not available")
    model = None
    for kwargs in (dict(width=W), {}):
        try:
            model = create_model(f"fcn32s@{backbone}", 3, **kwargs)
            break
        except TypeError:
            continue
    table = torchvision_names(backbone)
    ours = model.backbone.state_dict()
    torch.manual_seed(4)
    sd = {}
    for tv, mine in table.items():
        for k, v in ours.items():
            if k.startswith(mine + "."):
                sd[tv + k[len(mine):]] = v.clone() if v.dtype == torch.long else torch.randn_like(v)
    sd["fc.weight"], sd["aux1.fc2.weight"] = torch.randn(10, 4), torch.randn(10, 4)
    save_file(sd, str(tmp_path / "tv.safetensors"))
    unused = load_weights(model, tmp_path / "tv.safetensors")
    assert {"fc.weight", "aux1.fc2.weight"} <= set(unused)
    new = model.backbone.state_dict()
    for tv, mine in table.items():
        for k in ours:
            if k.startswith(mine + ".") and not k.endswith("num_batches_tracked"):
                torch.testing.assert_close(new[k], sd[tv + k[len(mine):]].reshape(new[k].shape), rtol=0, atol=0)
    assert model.preprocessing == getattr(mod, "TORCHVISION_PREPROCESSING", TORCHVISION)
    assert model.preprocessing.scale == pytest.approx(1 / 255)
