"""NYUD nets: early fusion (4-channel conv1_1) and late fusion (scores of two streams summed)."""
import torch

import fcnseg
from fcnseg.models.base import single
from fcnseg.models.checkpoint import model_from_checkpoint, save_checkpoint
from fcnseg.models.fusion import LateFusion
from fcnseg.models.preprocessing import CAFFE_VGG, Preprocessing

SMALL = dict(width=1 / 16, fc_channels=32)


def test_early_fusion_widens_conv1_1():
    model = fcnseg.create_model("fcn32s", 40, in_channels=4, **SMALL).eval()
    assert model.backbone.stages["pool1"].conv1_1.in_channels == 4
    assert single(model(torch.randn(1, 4, 30, 20))).shape == (1, 40, 30, 20)


def test_late_fusion_averages_the_streams_scores_or_sums_them():
    """nyud-fcn32s-color-hha fuses with Eltwise SUM coeff 0.5, 0.5: the default; "sum" is the option."""
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn32s", 5, streams={"color": 3, "hha": 3}, **SMALL).eval()
    assert isinstance(model, LateFusion) and model.fusion == "average" and model.spec.to_dict()["fusion"] == "average"
    for p in model.parameters():
        if not p.requires_grad:
            continue
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 6, 25, 33)
    color, hha = model.streams["color"], model.streams["hha"]
    assert torch.allclose(single(model(x)), 0.5 * single(color(x[:, :3])) + 0.5 * single(hha(x[:, 3:])), atol=1e-6)
    summed = fcnseg.create_model("fcn32s", 5, streams={"color": 3, "hha": 3}, fusion="sum", **SMALL).eval()
    summed.load_state_dict(model.state_dict())
    assert torch.allclose(single(summed(x)), single(color(x[:, :3])) + single(hha(x[:, 3:])), atol=1e-6)


def test_late_fusion_preprocesses_each_stream_and_survives_a_checkpoint(tmp_path):
    model = fcnseg.create_model("fcn32s", 5, streams={"color": 3, "hha": 3}, **SMALL)
    hha_pre = Preprocessing(bgr=True, scale=1.0, mean=(132.431, 94.076, 118.477), name="nyud-hha")
    model.preprocessing = type(model.preprocessing)((("color", 3, CAFFE_VGG), ("hha", 3, hha_pre)))
    img = torch.rand(6, 8, 8) * 255
    out = model.preprocessing(img)
    assert torch.allclose(out[:3], CAFFE_VGG(img[:3])) and torch.allclose(out[3:], hha_pre(img[3:]))
    save_checkpoint(tmp_path / "lf.pt", model)
    again, _ = model_from_checkpoint(tmp_path / "lf.pt")
    assert isinstance(again, LateFusion) and torch.allclose(again.preprocessing(img), out)


def test_early_fusion_loads_rgb_weights_with_zero_depth_filters():
    rgb = fcnseg.create_model("fcn32s", 5, **SMALL).eval()
    rgbd = fcnseg.create_model("fcn32s", 5, in_channels=4, **SMALL).eval()
    state = {k: v for k, v in rgb.state_dict().items()}
    from fcnseg.models.surgery import fit_tensor, widening
    with widening("zero"):
        rgbd.load_state_dict({k: fit_tensor(v, rgbd.state_dict()[k].shape, k) for k, v in state.items()})
    assert rgbd.backbone.stages["pool1"].conv1_1.weight[:, 3].abs().sum() == 0
    x = torch.randn(1, 4, 20, 20)
    assert torch.allclose(rgbd.backbone(x)["fc7"], rgb.backbone(x[:, :3])["fc7"], atol=1e-6)


def test_early_fusion_depth_filters_start_as_the_mean_of_the_rgb_filters(tmp_path):
    """nyud-fcn32s-color-d/solve.py: conv1_1_bgrd[:, 3] = mean over the RGB filters (default);
    depth_init="zero" keeps the RGB net's function."""
    import numpy as np

    from fcnseg.models.weights.caffe import write_caffemodel
    rgb = fcnseg.create_model("fcn32s", 5, **SMALL)
    for p in rgb.parameters():
        torch.nn.init.normal_(p, std=0.1)
    blobs = {m.rsplit(".", 1)[-1]: [mod.weight.detach().numpy(), mod.bias.detach().numpy()]
             for m, mod in rgb.backbone.named_modules() if isinstance(mod, torch.nn.Conv2d)}
    write_caffemodel(tmp_path / "vgg.caffemodel", blobs)
    w = rgb.backbone.stages["pool1"].conv1_1.weight.detach()
    rgbd = fcnseg.create_model("fcn32s", 5, in_channels=4, weights=str(tmp_path / "vgg.caffemodel"), **SMALL)
    got = rgbd.backbone.stages["pool1"].conv1_1.weight.detach()
    assert torch.equal(got[:, :3], w)
    np.testing.assert_allclose(got[:, 3].numpy(), w.mean(dim=1).numpy(), rtol=1e-6)
    zero = fcnseg.create_model("fcn32s", 5, in_channels=4, weights=str(tmp_path / "vgg.caffemodel"),
                               depth_init="zero", **SMALL)
    assert torch.equal(zero.backbone.stages["pool1"].conv1_1.weight[:, :3], w)
    assert not zero.backbone.stages["pool1"].conv1_1.weight[:, 3].any()


def test_fusion_and_depth_init_config_keys_and_old_checkpoints(tmp_path):
    from fcnseg.config import ModelConfig
    from fcnseg.train.model import build_model
    m = build_model(ModelConfig(name="fcn32s", streams={"color": 3, "hha": 3}, width=1 / 16, fc_channels=32,
                                fusion="sum"), 5)
    assert m.fusion == "sum" and build_model(ModelConfig(name="fcn32s", streams={"color": 3, "hha": 3},
                                                         width=1 / 16, fc_channels=32), 5).fusion == "average"
    # a late-fusion checkpoint written before model.fusion existed summed its streams: it still does
    save_checkpoint(tmp_path / "old.pt", m)
    ckpt = torch.load(tmp_path / "old.pt", weights_only=True)
    del ckpt["config"]["fusion"]
    torch.save(ckpt, tmp_path / "old.pt")
    again, _ = model_from_checkpoint(tmp_path / "old.pt")
    assert again.fusion == "sum"
