"""Shift-and-stitch and filter rarefaction (paper §3.2): the same dense map, one pass vs f² passes."""
import pytest
import torch

import fcnseg
from fcnseg.models import dense
from fcnseg.models.base import single
from fcnseg.models.dense import _PerPhase, _Rarefied, _Shifted

SMALL = dict(width=1 / 16, fc_channels=16)


def _net(name, alignment, seed=0):
    torch.manual_seed(seed)
    m = fcnseg.create_model(name, 3, alignment=alignment, **SMALL).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)  # non-zero score layers, biases that make padding matter
    return m


def _close(a, b):
    scale = max(a.abs().max().item(), 1e-6)
    return a.shape == b.shape and (a - b).abs().max().item() <= 1e-5 * scale


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("name,factors", [("fcn32s", (2, 4)), ("fcn32s@alexnet", (2, 4)),
                                          ("fcn32s@googlenet", (2, 4)), ("fcn32s@resnet50", (2, 4)),
                                          ("pool4-only", (2, 4))])
def test_both_methods_give_the_same_dense_map(name, factors, alignment):
    model = _net(name, alignment)
    for f in factors:
        for hw in [(37, 45), (20, 33)][:3 - f // 2]:
            x = torch.randn(1, 3, *hw)
            with torch.no_grad():
                s, r = dense(model, f, "shift-and-stitch"), dense(model, f, "rarefaction")
                cs, cr = s.coarse(x)["out"], r.coarse(x)["out"]
                assert _close(cs, cr), (f, hw)
                assert single(s(x)).shape == (1, 3, *hw) and _close(single(s(x)), single(r(x)))


SKIP_NETS = [("fcn16s", (2, 4)), ("fcn8s", (2, 4)), ("fcn8s-atonce", (2,)), ("fcn16s@googlenet", (2,)),
             ("fcn8s@googlenet", (2,)), ("fcn16s@resnet50", (2,)), ("fcn8s@resnet50", (2,))]
# the larger factors (f² copies of a deep tail for shift-and-stitch): the slow suite
SKIP_NETS_SLOW = [("fcn16s", (16,)), ("fcn8s", (8,)), ("fcn8s-atonce", (8,)), ("fcn16s@googlenet", (4,)),
                  ("fcn8s@googlenet", (8,)), ("fcn16s@resnet50", (4,)), ("fcn8s@resnet50", (8,))]


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("name,factors", SKIP_NETS + [pytest.param(*p, marks=pytest.mark.slow) for p in SKIP_NETS_SLOW])
def test_skip_nets_both_methods_give_the_same_dense_fused_map(name, factors, alignment):
    model = _net(name, alignment)
    for f in factors:
        for hw in [(37, 45), (20, 33)][:1 + (f == 2)]:
            x = torch.randn(1, 3, *hw)
            with torch.no_grad():
                s, r = dense(model, f, "shift-and-stitch"), dense(model, f, "rarefaction")
                cs, cr = s.coarse(x)["out"], r.coarse(x)["out"]
                own = model.fused("out", model.features(x))  # the fused map before the final upsampling
                assert _close(cs, cr), (f, hw)
                # phase (0, 0) is the net's own fused map (up to where the last shifted copy ends)
                first = cs[..., ::f, ::f]
                assert _close(first, own[..., :first.shape[-2], :first.shape[-1]]), (f, hw)
                assert _close(single(s(x)), single(r(x))) and single(r(x)).shape == (1, 3, *hw)


def test_skip_net_rarefaction_is_one_pass_with_per_phase_strided_layers_and_fusion():
    model = _net("fcn8s", "same")
    r, s = dense(model, 2, "rarefaction"), dense(model, 2, "shift-and-stitch")
    bb = r.net.backbone.stages
    per_phase = [m for m in r.modules() if isinstance(m, _PerPhase)]
    assert per_phase == [bb["pool4"].pool4, bb["pool5"].pool5]  # pool3 is rarefied, the later pools run per phase
    assert isinstance(bb["pool3"].pool3, _Rarefied) and bb["fc7"].fc6.dilation == 2
    calls = []
    for tag, d in (("r", r), ("s", s)):
        d.net.backbone.stages["fc7"].register_forward_hook(lambda *a, t=tag: calls.append(t))
        for up in d.net.upsample["out"]:
            up.register_forward_hook(lambda *a, t=tag: calls.append(t + "up"))
    with torch.no_grad():
        r.coarse(torch.randn(1, 3, 40, 40))
        s.coarse(torch.randn(1, 3, 40, 40))
    assert calls.count("r") == 1 and calls.count("rup") == 2  # one pass: fc7 once, each fusion once (batched)
    assert calls.count("s") == 4 and calls.count("sup") == 8  # f² = 4 copies of everything from pool3 on
    assert s.step == 4 and r.origin == model.score_map.offset  # the fused map's stride 8, halved


def test_late_fusion_densifies_each_stream():
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn16s", 3, streams={"color": 3, "hha": 3}, alignment="same", **SMALL).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
        x = torch.randn(1, 6, 37, 45)
        s, r = dense(model, 4, "shift-and-stitch"), dense(model, 4, "rarefaction")
        assert _close(single(s(x)), single(r(x)))
        assert _close(single(r.forward_features(r.features(x), x.shape[-2:])), single(r(x)))
        streams = [single(dense(m, 4)(x[:, 3 * i:3 * i + 3])) for i, m in enumerate(model.streams.values())]
        assert _close(single(r(x)), (streams[0] + streams[1]) / 2)  # the reference's 0.5/0.5 of dense streams


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_dense_map_interlaces_the_coarse_map_and_is_denser(alignment):
    model = _net("fcn32s", alignment)
    x = torch.randn(1, 3, 70, 52)
    with torch.no_grad():
        feats = model.backbone(x, {"fc7"})["fc7"]
        coarse = model.score["out"]["fc7"](feats)
        d = dense(model, 4, "rarefaction").coarse(x)["out"]
    # phase (0, 0) of the dense map is the net's own coarse map; there are 4x as many samples per axis
    assert _close(d[..., ::4, ::4], coarse)
    assert d.shape[-2] >= 4 * coarse.shape[-2] - 3 and d.shape[-1] >= 4 * coarse.shape[-1] - 3


def test_rarefaction_is_one_dilated_pass_and_stitching_f_squared_passes():
    model = _net("fcn32s", "caffe")
    r, s = dense(model, 4, "rarefaction"), dense(model, 4, "shift-and-stitch")
    rare = [m for m in r.modules() if isinstance(m, _Rarefied)]
    assert {m.dilation for m in rare} == {1, 2, 4} and all(m.geo.stride // m.factor == 1 for m in rare)
    calls = []
    s.net.backbone.stages["fc7"].register_forward_hook(lambda *a: calls.append(1))
    r.net.backbone.stages["fc7"].register_forward_hook(lambda *a: calls.append(2))
    with torch.no_grad():
        s.coarse(torch.randn(1, 3, 40, 40))["out"]
        assert calls.count(1) == 16
        r.coarse(torch.randn(1, 3, 40, 40))["out"]
        assert calls.count(2) == 1
    assert sum(isinstance(m, _Shifted) for m in s.modules()) == 2  # pool4 and pool5 shift
    prefix = []
    s.net.backbone.stages["pool3"].register_forward_hook(lambda *a: prefix.append(1))
    with torch.no_grad():
        s.coarse(torch.randn(1, 3, 40, 40))["out"]
    assert prefix == [1]  # the layers before pool4 run once for the 16 copies
    # the original model is untouched and shares its weights with the dense one
    assert not any(isinstance(m, (_Rarefied, _Shifted)) for m in model.modules())
    assert r.net.score["out"]["fc7"].weight is model.score["out"]["fc7"].weight
    assert r.net.backbone.stages["fc7"].fc6.weight is model.backbone.stages["fc7"].fc6.weight
    assert r.state_dict().keys() == {f"net.{k}" for k in model.state_dict()}  # same names


@pytest.mark.parametrize("method", ["rarefaction", "shift-and-stitch"])
@pytest.mark.parametrize("f,cached", [(2, "pool4"), (4, "pool3")])
def test_resumes_from_cached_trunk_features(method, f, cached):
    model = _net("fcn32s", "same")
    d = dense(model, f, method)
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        feats = model.backbone(x, {"pool3", "pool4", "pool5"})
        assert d.tap_names == [cached]
        assert _close(single(d.forward_features(feats, x.shape[-2:])), single(d(x)))


@pytest.mark.parametrize("method", ["rarefaction", "shift-and-stitch"])
def test_skip_net_resumes_from_cached_trunk_features_or_says_it_needs_the_image(method):
    model = _net("fcn8s", "same")
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        feats = model.backbone(x, {"pool1", "pool2", "pool3", "pool4", "fc7"})
        for f, cached in ((1, "pool2"), (2, "pool2"), (4, "pool1")):
            d = dense(model, f, method)
            assert d.tap_names == [cached]
            assert _close(single(d.forward_features(feats, x.shape[-2:])), single(d(x)))
        d = dense(model, 8, method)  # pool1 changes: no cached tap lies before it
        assert d.tap_names == [] and _close(single(d.forward_features(d.features(x), x.shape[-2:])), single(d(x)))
        with pytest.raises(ValueError, match="needs the image"):
            d.forward_features(feats, x.shape[-2:])


def test_refuses_what_it_cannot_make_exact():
    model = _net("fcn32s", "same")
    with pytest.raises(ValueError, match="divide the output stride 32"):
        dense(model, 3)
    with pytest.raises(ValueError, match="method"):
        dense(model, 2, "nearest")
    # FCN-8s's fused map has stride 8: a factor 16 would shift the input by half pixels
    with pytest.raises(ValueError, match=r"divide the output stride 8 \(of the fused map: the finest tap pool3's\)"):
        dense(_net("fcn8s", "same"), 16)


@pytest.mark.slow
@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_full_width_vgg16_fcn32s_at_64px(alignment):
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn32s", 4, alignment=alignment).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(0, 0.01)
        x = torch.randn(1, 3, 64, 64) * 50
        for f in (2, 4):
            cs = dense(model, f, "shift-and-stitch").coarse(x)["out"]
            cr = dense(model, f, "rarefaction").coarse(x)["out"]
            assert _close(cs, cr), f


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn16s", "fcn8s"])
@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_full_width_vgg16_skip_nets_at_48px(name, alignment):
    torch.manual_seed(0)
    model = fcnseg.create_model(name, 4, alignment=alignment).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(0, 0.01)
        x = torch.randn(1, 3, 48, 48) * 50
        for f in (2, 4):
            cs = dense(model, f, "shift-and-stitch").coarse(x)["out"]
            cr = dense(model, f, "rarefaction").coarse(x)["out"]
            assert _close(cs, cr), f


def _checkpoint(tmp_path):
    from fcnseg.models.checkpoint import save_checkpoint

    model = _net("fcn32s", "same")
    save_checkpoint(tmp_path / "c.pt", model)
    return model, tmp_path / "c.pt"


def test_predict_dense_option_writes_the_dense_labels(tmp_path):
    import numpy as np
    from PIL import Image

    from fcnseg.cli.main import main

    model, ckpt = _checkpoint(tmp_path)
    rgb = np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                 "--dense", "4:shift-and-stitch", "--overlay", "none"]) == 0
    got = np.array(Image.open(next((tmp_path / "o").glob("*_label.png"))))
    want = dense(model, 4, "rarefaction").predict(torch.from_numpy(rgb).permute(2, 0, 1))
    assert got.shape == (40, 56) and (got == want.numpy()).all()


@pytest.mark.parametrize("value,cause", [("3", "divide the output stride"), ("2:nearest", "F:METHOD"),
                                         ("x", "F:METHOD")])
def test_predict_dense_bad_value_is_one_line(tmp_path, capsys, value, cause):
    from fcnseg.cli.main import main

    _, ckpt = _checkpoint(tmp_path)
    (tmp_path / "a.png").write_bytes(b"")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"),
                 "--dense", value]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fcnseg: error:")]
    assert len(err) == 1 and "dense" in err[0] and cause in err[0]


@pytest.mark.slow
def test_dense_protocol_at_toy_scale(tmp_path):
    import json

    from fcnseg.cli.main import main
    from fcnseg.data import sample_root

    out = tmp_path / "study"
    args = ["reproduce", "camvid", f"data.root={sample_root()}", "data.max_items=4", "data.batch_size=2",
            "--protocol", "dense", "--out", str(out), "train.epochs=1", "data.resize=4", "model.fc_channels=16",
            "--only", "fcn32s", "fcn32s-rare-2", "fcn32s-sas-2"]
    assert main(args) == 0
    runs = {n: json.loads((out / f"{n}.json").read_text()) for n in ("fcn32s", "fcn32s-rare-2", "fcn32s-sas-2")}
    assert runs["fcn32s-rare-2"]["metrics"] == pytest.approx(runs["fcn32s-sas-2"]["metrics"], abs=1e-6)
    assert runs["fcn32s-rare-2"]["cost"]["flops"] > runs["fcn32s"]["cost"]["flops"]
    assert "GFLOPs" in (out / "RESULTS.md").read_text()
