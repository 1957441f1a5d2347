"""Caffe .caffemodel import: wire format, classifier and FCN releases, legacy V1 files."""
import numpy as np
import pytest
import torch

from fcnseg.models import create_model
from fcnseg.models.backbones.base import scaled
from fcnseg.models.backbones.vgg import VGG16_BLOCKS
from fcnseg.models.base import single
from fcnseg.models.preprocessing import CAFFE_VGG
from fcnseg.models.surgery import fit_tensor
from fcnseg.models.weights import WeightsError, detect_format, load_weights
from fcnseg.models.weights.caffe import parse_caffemodel, read_caffemodel, write_caffemodel
from fcnseg.models.weights.caffe_proto import caffe_messages

W = 1 / 16
TINY = dict(width=W, fc_channels=1024)  # convs 4…32 channels, fc 64
FC = scaled(1024, W)


def vgg16_classifier_blobs(fc=FC, classes=10, seed=0) -> dict:
    """Caffe VGG16 (ILSVRC) release layout, reduced widths: convs, InnerProduct fc6/fc7/fc8."""
    rng = np.random.default_rng(seed)
    blobs, c_in = {}, 3
    for _, convs, c in VGG16_BLOCKS:
        c = scaled(c, W)
        for name in convs:
            blobs[name] = [rng.standard_normal((c, c_in, 3, 3), np.float32), rng.standard_normal(c, np.float32)]
            c_in = c
    for name, (o, k) in (("fc6", (fc, c_in * 49)), ("fc7", (fc, fc)), ("fc8", (classes, fc))):
        blobs[name] = [rng.standard_normal((o, k), np.float32), rng.standard_normal(o, np.float32)]
    return blobs


def fcn8s_blobs(model, seed=1) -> dict:
    """voc-fcn8s release layout for ``model``'s shapes (fc6/fc7 as convolutions, head layers, crops)."""
    rng = np.random.default_rng(seed)
    blobs = {n: [b[0].reshape(FC, -1, 7, 7) if n == "fc6" else b[0].reshape(FC, FC, 1, 1) if n == "fc7" else b[0],
                 b[1]] for n, b in vgg16_classifier_blobs(seed=seed).items() if n != "fc8"}
    p = dict(model.named_parameters())
    for caffe, ours in (("score_fr", "score.out.fc7"), ("score_pool4", "score.out.pool4"),
                        ("score_pool3", "score.out.pool3")):
        blobs[caffe] = [rng.standard_normal(p[ours + ".weight"].shape, np.float32),
                        rng.standard_normal(p[ours + ".bias"].shape, np.float32)]
    for i, caffe in enumerate(("upscore2", "upscore_pool4", "upscore8")):
        blobs[caffe] = [rng.standard_normal(p[f"upsample.out.{i}.weight"].shape, np.float32)]
    for crop in ("score_pool4c", "score_pool3c", "score"):  # blob-less layers, as in the release
        blobs[crop] = []
    return blobs


def params(model) -> dict:
    return {k: v.detach() for k, v in model.named_parameters()}


def test_wire_format_bytes():
    """Field numbers of BVLC caffe.proto, checked on hand-encoded bytes."""
    blob = [np.array([1.0], np.float32)]
    new = write_caffemodel(None, {"a": blob}, types={"a": "Convolution"})
    # NetParameter.layer (100) { name (1) "a", type (2) "Convolution",
    #                            blobs (7) { data (5) [1.0], shape (7) { dim (1) [1] } } }
    assert new == bytes.fromhex("a2061d" "0a0161" "120b") + b"Convolution" + bytes.fromhex("3a0b2a040000803f3a030a0101")
    old = write_caffemodel(None, {"a": blob}, legacy=True, types={"a": "Convolution"})
    # NetParameter.layers (2) { name (4) "a", type (5) CONVOLUTION=4,
    #                           blobs (6) { num/channels/height/width (1-4) = 1, data (5) } }
    assert old == bytes.fromhex("1215" "220161" "2804" "320e" "08011001180120012a040000803f")
    assert [(x.name, x.type, x.blobs[0].shape) for x in parse_caffemodel(old)] == [("a", 4, (1, 1, 1, 1))]


def test_vgg16_classifier_legacy_layers(tmp_path):
    blobs = vgg16_classifier_blobs()
    path = tmp_path / "VGG_ILSVRC_16_layers.caffemodel"
    write_caffemodel(path, blobs, legacy=True, name="VGG_ILSVRC_16_layers")
    net = caffe_messages().NetParameter.FromString(path.read_bytes())
    assert len(net.layer) == 0 and len(net.layers) == 16
    fc6 = next(x for x in net.layers if x.name == "fc6").blobs[0]
    assert (fc6.num, fc6.channels, fc6.height, fc6.width) == (1, 1, FC, 32 * 49) and not fc6.HasField("shape")
    assert detect_format(path) == "caffe"
    model = create_model("fcn32s", 21, **TINY)
    assert load_weights(model, path) == ["fc8"]
    p = params(model)
    for name, ours in (("conv1_1", "pool1.conv1_1"), ("conv3_2", "pool3.conv3_2"), ("conv5_3", "pool5.conv5_3")):
        np.testing.assert_array_equal(p[f"backbone.stages.{ours}.weight"].numpy(), blobs[name][0])
        np.testing.assert_array_equal(p[f"backbone.stages.{ours}.bias"].numpy(), blobs[name][1])
    np.testing.assert_array_equal(p["backbone.stages.fc7.fc6.weight"].flatten(1).numpy(), blobs["fc6"][0])
    np.testing.assert_array_equal(p["backbone.stages.fc7.fc7.weight"][:, :, 0, 0].numpy(), blobs["fc7"][0])
    assert model.preprocessing == CAFFE_VGG and model.spec.to_dict()["weights"] == str(path)
    assert not p["score.out.fc7.weight"].any()  # heads untouched by a classifier file


def test_voc_fcn8s_release(tmp_path):
    model = create_model("fcn8s", 21, **TINY)
    blobs = fcn8s_blobs(model)
    path = tmp_path / "fcn8s-heavy-pascal.caffemodel"
    write_caffemodel(path, blobs)
    assert [x.name for x in read_caffemodel(path)][-3:] == ["score_pool4c", "score_pool3c", "score"]
    assert load_weights(model, path) == []
    p = params(model)
    for caffe, ours in (("score_fr", "score.out.fc7"), ("score_pool4", "score.out.pool4"),
                        ("score_pool3", "score.out.pool3"), ("fc6", "backbone.stages.fc7.fc6"),
                        ("conv4_3", "backbone.stages.pool4.conv4_3")):
        np.testing.assert_array_equal(p[ours + ".weight"].numpy(), blobs[caffe][0])
        np.testing.assert_array_equal(p[ours + ".bias"].numpy(), blobs[caffe][1])
    for i, caffe in enumerate(("upscore2", "upscore_pool4", "upscore8")):
        np.testing.assert_array_equal(p[f"upsample.out.{i}.weight"].numpy(), blobs[caffe][0])
    assert single(model(torch.zeros(1, 3, 40, 40))).shape == (1, 21, 40, 40)


def test_staged_init_and_atonce_scales(tmp_path):
    """An FCN-32s file initialises FCN-16s (score_fr loads, upscore is unused); at-once scale layers are checked."""
    m32 = create_model("fcn32s", 21, **TINY)
    blobs = {k: v for k, v in fcn8s_blobs(create_model("fcn8s", 21, **TINY)).items()
             if k not in ("score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8")}
    blobs["upscore"] = [m32.upsample.out[0].weight.detach().numpy() * 2]
    write_caffemodel(tmp_path / "fcn32s.caffemodel", blobs)
    m16 = create_model("fcn16s", 21, **TINY)
    assert load_weights(m16, tmp_path / "fcn32s.caffemodel") == ["upscore"]
    np.testing.assert_array_equal(m16.score.out.fc7.weight.detach().numpy(), blobs["score_fr"][0])
    assert not m16.score.out.pool4.weight.any()

    atonce = create_model("fcn8s-atonce", 21, **TINY)
    blobs = fcn8s_blobs(atonce)
    blobs["scale_pool4"] = [np.full(32, 0.01, np.float32)]
    blobs["scale_pool3"] = [np.full(16, 1e-4, np.float32)]
    write_caffemodel(tmp_path / "atonce.caffemodel", blobs)
    assert load_weights(atonce, tmp_path / "atonce.caffemodel") == []
    with pytest.raises(WeightsError, match="fcn8s-atonce"):
        load_weights(create_model("fcn8s", 21, **TINY), tmp_path / "atonce.caffemodel")


def test_caffenet_and_double_data(tmp_path):
    rng = np.random.default_rng(3)
    model = create_model("fcn32s", 21, backbone="alexnet", **TINY)
    p = params(model)
    blobs = {}
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        w = p[f"backbone.stages.{'fc7' if name.startswith('fc') else 'pool5'}.{name}.weight"]
        shape = (w.shape[0], w[0].numel()) if name.startswith("fc") else tuple(w.shape)  # InnerProduct fc
        blobs[name] = [rng.standard_normal(shape), rng.standard_normal(w.shape[0])]  # float64 → double_data
    write_caffemodel(tmp_path / "caffenet.caffemodel", blobs, legacy=True)
    assert load_weights(model, tmp_path / "caffenet.caffemodel") == []
    q = params(model)
    np.testing.assert_array_equal(q["backbone.stages.pool5.conv2.weight"].numpy(), blobs["conv2"][0].astype(np.float32))
    np.testing.assert_array_equal(q["backbone.stages.fc7.fc6.weight"].flatten(1).numpy(),
                                  blobs["fc6"][0].astype(np.float32))


def test_full_shape_fc6_legacy_blob():
    """The real VGG16 fc6 InnerProduct blob, declared 1×1×4096×25088 in the legacy fields."""
    w = torch.arange(4096 * 25088, dtype=torch.float32).reshape(4096, 25088)
    w[:, -1] = -1.0
    data = write_caffemodel(None, {"fc6": [w, torch.zeros(4096)]}, legacy=True)
    (layer,) = parse_caffemodel(data)
    assert layer.type == 14 and layer.blobs[0].shape == (1, 1, 4096, 25088) and layer.blobs[1].shape == (1, 1, 1, 4096)
    conv = fit_tensor(torch.from_numpy(layer.blobs[0]), (4096, 512, 7, 7), "fc6")
    assert torch.equal(conv.flatten(1), w)
    assert conv[3, 511, 6, 6] == -1.0 and conv[0, 0, 0, 1] == 1.0
    del data, layer, conv


def test_caffe_errors(tmp_path):
    blobs = vgg16_classifier_blobs()
    del blobs["conv2_1"]
    write_caffemodel(tmp_path / "partial.caffemodel", blobs)
    with pytest.raises(WeightsError, match=r"partial\.caffemodel: no blobs .*conv2_1"):
        load_weights(create_model("fcn32s", 21, **TINY), tmp_path / "partial.caffemodel")
    write_caffemodel(tmp_path / "wide.caffemodel", vgg16_classifier_blobs())
    with pytest.raises(WeightsError, match=r"wide\.caffemodel: conv1_1"):
        load_weights(create_model("fcn32s", 21, width=1 / 8, fc_channels=512), tmp_path / "wide.caffemodel")
    (tmp_path / "empty.caffemodel").write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.caffemodel"):
        load_weights(create_model("fcn32s", 21, **TINY), tmp_path / "empty.caffemodel")
    msgs = caffe_messages()
    net = msgs.NetParameter()
    net.layer.add(name="conv1_1").blobs.add(num=2, channels=3, height=3, width=3).data.extend([0.0] * 5)
    with pytest.raises(WeightsError, match="holds 5 values"):
        parse_caffemodel(net.SerializeToString(), "bad.caffemodel")


def head_blobs(model, rng, caffe_to_ours: dict) -> dict:
    p = dict(model.named_parameters())
    out = {}
    for caffe, ours in caffe_to_ours.items():
        keys = [k for k in (ours + ".weight", ours + ".bias") if k in p]
        out[caffe] = [rng.standard_normal(p[k].shape).astype(np.float32) for k in keys]
    return out


def trunk_blobs(seed=1) -> dict:
    return {k: v for k, v in fcn8s_blobs(create_model("fcn8s", 21, **TINY), seed).items()
            if not k.startswith(("score", "upscore"))}


def test_siftflow_fcn8s_release_names_load_every_layer(tmp_path, recwarn):
    """siftflow-fcn8s/net.py: score_fr_sem/_geo, upscore2_*, score_pool4_*, upscore_pool4_*, score_pool3_*,
    upscore8_*; every layer loads (before: the heads stayed at zero, silently)."""
    model = create_model("fcn8s", {"semantic": 33, "geometric": 3}, **TINY)
    rng = np.random.default_rng(5)
    names = {}
    for head, sfx in (("semantic", "_sem"), ("geometric", "_geo")):
        names.update({f"score_fr{sfx}": f"score.{head}.fc7", f"score_pool4{sfx}": f"score.{head}.pool4",
                      f"score_pool3{sfx}": f"score.{head}.pool3", f"upscore2{sfx}": f"upsample.{head}.0",
                      f"upscore_pool4{sfx}": f"upsample.{head}.1", f"upscore8{sfx}": f"upsample.{head}.2"})
    blobs = {**trunk_blobs(), **head_blobs(model, rng, names)}
    write_caffemodel(tmp_path / "siftflow-fcn8s-heavy.caffemodel", blobs)
    assert load_weights(model, tmp_path / "siftflow-fcn8s-heavy.caffemodel") == []
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    p = params(model)
    for caffe, ours in names.items():
        np.testing.assert_array_equal(p[ours + ".weight"].numpy(), blobs[caffe][0])


def test_unmapped_layers_and_unloaded_heads_are_warned(tmp_path):
    """A file whose head layers map nowhere must not leave the score layers at zero silently."""
    model = create_model("fcn32s", {"semantic": 33, "geometric": 3}, **TINY)
    blobs = {**trunk_blobs(), "score_fr_semantics": [np.ones((33, FC, 1, 1), np.float32), np.ones(33, np.float32)]}
    write_caffemodel(tmp_path / "odd.caffemodel", blobs)
    with pytest.warns(UserWarning) as got:
        assert load_weights(model, tmp_path / "odd.caffemodel") == ["score_fr_semantics"]
    text = " ".join(str(w.message) for w in got)
    assert "odd.caffemodel" in text and "score_fr_semantics" in text and "score.semantic.fc7.weight" in text
    with pytest.warns(UserWarning, match="score_fr_semantics"):  # create_model does not discard it either
        create_model("fcn32s", {"semantic": 33, "geometric": 3}, weights=str(tmp_path / "odd.caffemodel"), **TINY)


def test_nyud_rgbd_release_conv1_1_bgrd(tmp_path):
    """nyud-fcn32s-color-d/net.py names its 4-channel first layer conv1_1_bgrd."""
    model = create_model("fcn32s", 40, in_channels=4, **TINY)
    blobs = trunk_blobs()
    rng = np.random.default_rng(2)
    blobs["conv1_1_bgrd"] = [rng.standard_normal((4, 4, 3, 3)).astype(np.float32), blobs.pop("conv1_1")[1]]
    blobs.update(head_blobs(model, rng, {"score_fr": "score.out.fc7", "upscore": "upsample.out.0"}))
    write_caffemodel(tmp_path / "nyud-fcn32s-color-d.caffemodel", blobs)
    assert load_weights(model, tmp_path / "nyud-fcn32s-color-d.caffemodel") == []
    np.testing.assert_array_equal(model.backbone.stages["pool1"].conv1_1.weight.detach().numpy(),
                                  blobs["conv1_1_bgrd"][0])  # loaded as is, not widened


def test_nyud_late_fusion_release_loads_each_stream(tmp_path):
    """nyud-fcn32s-color-hha/net.py: every layer of a stream carries its name (conv1_1color, score_frhha),
    upscore is shared; create_model(streams=..., weights=file) loads both streams (before: TypeError)."""
    streams = {"color": 3, "hha": 3}
    probe = create_model("fcn32s", 40, **TINY)
    blobs, per = {}, {}
    for i, s in enumerate(streams):
        per[s] = {**trunk_blobs(seed=10 + i),
                  **head_blobs(probe, np.random.default_rng(i), {"score_fr": "score.out.fc7"})}
        blobs.update({f"{k}{s}": v for k, v in per[s].items()})
    blobs["score_fused"] = []
    blobs["upscore"] = [probe.upsample.out[0].weight.detach().numpy()]
    write_caffemodel(tmp_path / "nyud-fcn32s-color-hha.caffemodel", blobs)
    model = create_model("fcn32s", 40, streams=streams, weights=str(tmp_path / "nyud-fcn32s-color-hha.caffemodel"),
                         **TINY)
    for s in streams:
        p = params(model.streams[s])
        np.testing.assert_array_equal(p["backbone.stages.pool1.conv1_1.weight"].numpy(), per[s]["conv1_1"][0])
        np.testing.assert_array_equal(p["score.out.fc7.weight"].numpy(), per[s]["score_fr"][0])
    assert model.preprocessing.streams[0][2] == CAFFE_VGG
    assert load_weights(model, tmp_path / "nyud-fcn32s-color-hha.caffemodel") == []


def test_v0_caffemodel_says_so(tmp_path):
    """Pre-2014 files keep each layer in V1LayerParameter.layer (a V0LayerParameter)."""
    net = caffe_messages().NetParameter()
    e = net.layers.add()
    e.layer.name, e.layer.type = "conv1", "conv"
    e.layer.blobs.add(num=1, channels=1, height=1, width=1).data.append(1.0)
    (tmp_path / "old.caffemodel").write_bytes(net.SerializeToString())
    with pytest.raises(WeightsError, match=r"old\.caffemodel: an old V0-format caffemodel.*upgrade_net_proto_binary"):
        load_weights(create_model("fcn32s", 21, **TINY), tmp_path / "old.caffemodel")
