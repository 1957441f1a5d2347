"""The FCN family: names, computed crop offsets, exact output sizes, initialisation, FLOPs."""
import random

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import fcnseg
from fcnseg.models import MODELS
from fcnseg.models.base import single
from fcnseg.models.upsample import Upsample, bilinear_kernel

SMALL = dict(width=1 / 16, fc_channels=32)


def test_list_models_names_the_paper_and_modern_nets():
    names = set(fcnseg.list_models())
    for n in ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn32s-fixed", "pool5-only", "pool4-only",
              "pool3-only", "fcn32s@alexnet", "fcn32s@googlenet", "fcn32s@resnet50", "fcn16s@resnet50",
              "fcn8s@resnet50", "fcn8s@resnet101"]:
        assert n in names


@pytest.mark.parametrize("name,offsets", [
    ("fcn32s", [19]), ("fcn16s", [5, 27]), ("fcn8s", [5, 9, 31]), ("fcn8s-atonce", [5, 9, 31]),
    ("fcn32s@alexnet", [18]),
])
def test_caffe_offsets_equal_the_reference(name, offsets):
    # computed from kernel/stride/padding of every layer, compared with the Caffe release's crops
    assert fcnseg.create_model(name, 21, **SMALL).crop_offsets == offsets


def test_offsets_follow_the_layers_not_a_table():
    # change a layer's padding and the computed offset must move with it
    m = fcnseg.create_model("fcn32s", 21, input_pad=98, **SMALL)
    assert m.crop_offsets == [17]


def _meta_model(name, alignment, **kw):
    with torch.device("meta"):
        return fcnseg.create_model(name, 21, alignment=alignment, **{**SMALL, **kw}).eval()


@pytest.mark.parametrize("alignment", ["caffe", "same"])
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "pool5-only", "pool4-only",
                                  "pool3-only", "fcn32s@alexnet"])
def test_output_is_exactly_input_size_for_every_size(name, alignment):
    """Shape propagation on the meta device over every height 1..600 (random widths)."""
    model = _meta_model(name, alignment)
    rng = random.Random(0)
    with torch.no_grad():
        for h in range(1, 601):
            w = rng.randint(1, 600)
            assert single(model(torch.empty(1, 3, h, w, device="meta"))).shape == (1, 21, h, w), (h, w)


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_real_forward_keeps_size_and_is_finite(alignment):
    model = fcnseg.create_model("fcn8s", 5, alignment=alignment, **SMALL).eval()
    for h, w in [(1, 1), (17, 45), (64, 64)]:
        y = single(model(torch.randn(2, 3, h, w)))
        assert y.shape == (2, 5, h, w) and torch.isfinite(y).all()


def _flops(model, size=500):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.empty(1, 3, size, size, device="meta"))
    return fc.get_total_flops()


def test_same_alignment_halves_the_flops_at_500():
    caffe = _flops(_meta_model("fcn8s", "caffe", width=1, fc_channels=4096))
    same = _flops(_meta_model("fcn8s", "same", width=1, fc_channels=4096))
    assert 350e9 < caffe < 380e9          # the paper-faithful net is ~363 GFLOP at 500×500
    assert 0.5 < same / caffe < 0.65      # fc6 keeps its 256 positions; the trunk alone halves


def _reference_fcn8s_params(k=21):
    """Parameter count of voc-fcn8s from its Caffe layer shapes (weights + biases)."""
    convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    n = sum(ci * co * 9 + co for ci, co in convs)
    n += 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096           # fc6, fc7
    n += 4096 * k + k + 512 * k + k + 256 * k + k                  # score_fr, score_pool4, score_pool3
    n += k * k * 4 * 4 * 2 + k * k * 16 * 16                       # upscore2, upscore_pool4, upscore8
    return n


def test_vgg16_fcn8s_parameter_count_equals_the_reference_and_runs():
    model = fcnseg.create_model("fcn8s", 21).eval()
    assert sum(p.numel() for p in model.parameters()) == _reference_fcn8s_params()
    with torch.no_grad():
        assert single(model(torch.randn(1, 3, 40, 52))).shape == (1, 21, 40, 52)


def test_score_layers_start_at_zero_and_upsampling_is_bilinear():
    model = fcnseg.create_model("fcn8s", 4, **SMALL)
    for conv in model.score["out"].values():
        assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
    for up in model.upsample["out"]:
        k = bilinear_kernel(up.kernel_size[0])
        assert torch.equal(up.weight[1, 1], k) and up.weight[0, 1].abs().sum() == 0
        assert not up.weight.requires_grad
    learn = fcnseg.create_model("fcn8s", 4, learn_upsampling=True, **SMALL)
    assert all(up.weight.requires_grad for up in learn.upsample["out"])


def test_bilinear_kernel_matches_caffe_filler():
    # Caffe's bilinear filler for k=4: 1D taps 0.25, 0.75, 0.75, 0.25
    assert torch.allclose(bilinear_kernel(4)[0], torch.tensor([0.25, 0.75, 0.75, 0.25]) * 0.25)
    assert torch.allclose(bilinear_kernel(3)[1], torch.tensor([0.5, 1.0, 0.5]))


def test_atonce_scales_skip_features_before_scoring():
    model = fcnseg.create_model("fcn8s-atonce", 3, **SMALL)
    assert model.tap_scales == {"fc7": 1.0, "pool4": 0.01, "pool3": 1e-4}
    feats = {}
    model.score["out"]["pool3"].register_forward_hook(lambda m, i, o: feats.update({"in": i[0]}))
    model.backbone.stages["pool3"].register_forward_hook(lambda m, i, o: feats.update({"pool3": o}))
    model.eval()(torch.rand(1, 3, 24, 24) * 100)
    assert torch.allclose(feats["in"], feats["pool3"] * 1e-4)


def test_fixed_variant_trains_only_the_final_score_layer():
    model = fcnseg.create_model("fcn32s-fixed", 3, **SMALL)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["score.out.fc7.weight", "score.out.fc7.bias"]


@pytest.mark.parametrize("name,last", [("pool5-only", "pool5"), ("pool4-only", "pool4"), ("pool3-only", "pool3")])
def test_single_stream_nets_stop_at_their_layer(name, last):
    model = fcnseg.create_model(name, 3, **SMALL)
    assert list(model.backbone.stages)[-1] == last and model.tap_names == [last]


def test_two_head_net_returns_both_score_maps():
    model = fcnseg.create_model("fcn16s", {"semantic": 33, "geometric": 3}, **SMALL).eval()
    out = model(torch.randn(1, 3, 30, 30))
    assert out["semantic"].shape == (1, 33, 30, 30) and out["geometric"].shape == (1, 3, 30, 30)


def test_unknown_names_give_clear_errors():
    with pytest.raises(ValueError, match="unknown model"):
        fcnseg.create_model("fcn4s", 3)
    with pytest.raises(ValueError, match="not offered"):
        fcnseg.create_model("pool4-only@alexnet", 3)
    with pytest.raises(ValueError, match="alignment"):
        fcnseg.create_model("fcn8s", 3, alignment="valid")


_HOSTILE_CALLS = [  # (arguments, expected exception, the argument the message must name, words of the reason)
    ((5, 21), {}, TypeError, "name", "model name"),
    (("fcn99s", 21), {}, ValueError, "name", "fcn8s@resnet50"),
    (("fcn8s", None), {}, TypeError, "num_classes", "from 2"),
    (("fcn8s", True), {}, TypeError, "num_classes", "from 2"),
    (("fcn8s", 21.0), {}, TypeError, "num_classes", "from 2"),
    (("fcn8s", 1), {}, ValueError, "num_classes", "every pixel the same"),
    (("fcn8s", 0), {}, ValueError, "num_classes", "from 2"),
    (("fcn8s", 3000), {}, ValueError, "num_classes", "1000"),
    (("fcn8s", {}), {}, ValueError, "num_classes", "non-empty"),
    (("fcn8s", {"sem": 0}), {}, ValueError, "num_classes", "from 2"),
    (("fcn8s", {"sem": "x"}), {}, TypeError, "num_classes", "from 2"),
    (("fcn8s", 21), {"width": 0}, ValueError, "width", "> 0"),
    (("fcn8s", 21), {"width": float("nan")}, ValueError, "width", "finite"),
    (("fcn8s", 21), {"width": "1"}, TypeError, "width", "number"),
    (("fcn8s", 21), {"width": None}, TypeError, "width", "number"),
    (("fcn8s", 21), {"fc_channels": 0}, ValueError, "fc_channels", ">= 1"),
    (("fcn8s", 21), {"fc_channels": 2.5}, TypeError, "fc_channels", "whole number"),
    (("fcn8s", 21), {"dropout": 0.5}, TypeError, "dropout", "not an argument"),
    (("fcn8s", 21), {"alignment": "left"}, ValueError, "alignment", "caffe, same"),
    (("fcn8s", 21), {"alignment": 1}, TypeError, "alignment", "caffe, same"),
    (("fcn8s", 21), {"in_channels": 0}, ValueError, "in_channels", ">= 1"),
    (("fcn8s", 21), {"in_channels": True}, TypeError, "in_channels", "whole number"),
    (("fcn8s", 21), {"streams": {"color": 0}}, ValueError, "streams", ">= 1"),
    (("fcn8s", 21), {"streams": {}}, ValueError, "streams", "non-empty"),
    (("fcn8s", 21), {"streams": [3, 3]}, TypeError, "streams", "mapping"),
    (("fcn8s", 21), {"weights": 5}, TypeError, "weights", "string"),
    (("fcn8s", 21), {"weights": ""}, ValueError, "weights", "non-empty"),
    (("fcn8s", 21), {"backbone": "vgg99"}, ValueError, "backbone", "resnet50"),
    (("fcn8s", 21), {"backbone": 16}, TypeError, "backbone", "string"),  # None: the default (vgg16)
    (("fcn8s", 21), {"learn_upsampling": "yes"}, TypeError, "learn_upsampling", "true or false"),
    (("fcn8s", 21), {"input_pad": -1}, ValueError, "input_pad", ">= 0"),
]


@pytest.mark.parametrize("args,kwargs,error,arg,cause", _HOSTILE_CALLS,
                         ids=[f"{c[3]}-{i}" for i, c in enumerate(_HOSTILE_CALLS)])
def test_create_model_rejects_hostile_arguments(args, kwargs, error, arg, cause):
    """Bad arguments: TypeError (wrong kind) or ValueError (out of range) naming the argument, before any build."""
    with torch.device("meta"), pytest.raises(error) as e:
        fcnseg.create_model(*args, **kwargs)
    assert type(e.value) is error and str(e.value).startswith(arg) and cause in str(e.value), str(e.value)


def test_create_model_accepts_numpy_numbers_and_stores_python_ones():
    import numpy as np
    with torch.device("meta"):
        m = fcnseg.create_model("fcn32s", np.int64(5), width=np.float32(0.0625))
    assert type(m.spec.to_dict()["num_classes"]) is int and type(m.spec.to_dict()["width"]) is float


def test_predict_applies_the_weights_preprocessing():
    model = fcnseg.create_model("fcn32s", 3, **SMALL).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_()
    img = torch.rand(3, 40, 40) * 255
    expect = single(model(model.preprocessing(img)[None])).argmax(1)[0]
    assert torch.equal(model.predict(img), expect)
    assert model.preprocessing.bgr  # VGG16 defaults to the Caffe convention


def test_every_spec_is_buildable():
    for name in MODELS:
        fcnseg.create_model(name, 2, **SMALL)


def test_upsample_module_is_a_plain_transposed_conv():
    up = Upsample(3, 2, 4, learnable=False)
    assert isinstance(up, torch.nn.ConvTranspose2d) and up.bias is None and up.stride == (2, 2)


def test_diagonal_upsampling_runs_channelwise_with_the_same_result():
    up = Upsample(4, 8, 16, learnable=True).eval()
    x = torch.randn(2, 4, 9, 7, generator=torch.Generator().manual_seed(0))
    full = torch.nn.ConvTranspose2d.forward(up, x)
    assert up._channelwise_kernel().shape == (4, 1, 16, 16)
    assert (up(x) - full).abs().max() <= 1e-5
    with torch.no_grad():
        up.weight[0, 1, 3, 3] = 0.5  # learned off the diagonal: the full C×C kernel is needed again
    assert up._channelwise_kernel() is None
    assert torch.equal(up(x), torch.nn.ConvTranspose2d.forward(up, x))
    up.train()  # training a learnable kernel always takes the full path (its gradient is C×C)
    assert torch.equal(up(x), torch.nn.ConvTranspose2d.forward(up, x))


def _crop_reference():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "fixtures" / "make_crop_reference.py"
    spec = importlib.util.spec_from_file_location("make_crop_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CROP = _crop_reference()


@pytest.mark.parametrize("name", CROP.NAMES)
def test_caffe_crops_reproduce_the_stored_reference_scores(name):
    # the stored scores (tests/fixtures/make_crop_reference.py) pin every fusion crop and the final H×W slice
    import numpy as np

    stored = np.load(CROP.FILE)
    model = CROP.formula_model(name)
    with torch.no_grad():
        for h, w in CROP.SIZES:
            got = single(model(CROP.formula_input(h, w))).numpy()
            want = stored[f"{name}-{h}x{w}"]
            assert got.shape == want.shape == (1, CROP.CLASSES, h, w)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9, err_msg=f"{name} at {h}x{w}")
