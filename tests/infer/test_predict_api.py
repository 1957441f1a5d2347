"""``model.predict`` and the engines take the images users have: tensors, PIL images, numpy arrays."""
import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.infer.engines import TorchEngine


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=16).eval()
    with torch.no_grad():
        for p in m.score.parameters():
            p.normal_(std=0.1)
    return m


@pytest.fixture(scope="module")
def rgb():
    return (np.random.default_rng(0).random((20, 24, 3)) * 255).astype(np.uint8)


def _kinds(rgb):
    t = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
    return {"tensor-uint8": t, "tensor-float": t.float(), "batch": t[None].float(), "pil": Image.fromarray(rgb),
            "numpy": rgb, "numpy-float": rgb.astype(np.float32)}


@pytest.mark.parametrize("kind", ["tensor-uint8", "tensor-float", "batch", "pil", "numpy", "numpy-float"])
def test_predict_accepts_each_image_kind(model, rgb, kind):
    want = model.predict(torch.from_numpy(rgb.transpose(2, 0, 1).copy()).float())
    got = model.predict(_kinds(rgb)[kind])
    assert torch.equal(got[0] if kind == "batch" else got, want)
    labels = TorchEngine(model).predict_labels(_kinds(rgb)[kind])
    assert torch.equal(labels[0], want)


def test_predict_grey_numpy_and_pil_are_the_grey_image_in_rgb(model):
    grey = (np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)
    want = model.predict(np.repeat(grey[:, :, None], 3, axis=2))
    assert torch.equal(model.predict(grey), want)
    assert torch.equal(model.predict(Image.fromarray(grey)), want)


@pytest.mark.parametrize("bad", [[[1, 2, 3]], "image.png", None, 3.0])
def test_predict_rejects_other_types_naming_the_argument(model, bad):
    with pytest.raises(TypeError, match="images must be a torch.Tensor, a PIL image or a numpy array"):
        model.predict(bad)
    with pytest.raises(TypeError, match="images"):
        TorchEngine(model).predict_labels(bad)


@pytest.mark.parametrize("bad", [torch.zeros(16, 16), torch.zeros(1, 1, 3, 16, 16), torch.zeros(4, 16, 16),
                                 np.zeros((16, 16, 5), np.uint8), torch.zeros(3, 0, 16)])
def test_predict_rejects_wrong_shapes_naming_the_argument(model, bad):
    with pytest.raises(ValueError, match="images"):
        model.predict(bad)


def test_predict_rejects_complex_and_bool(model):
    for bad in (torch.zeros(3, 8, 8, dtype=torch.complex64), torch.zeros(3, 8, 8, dtype=torch.bool)):
        with pytest.raises(TypeError, match="images must hold real numbers"):
            model.predict(bad)


def test_late_fusion_predict_takes_all_its_channels():
    torch.manual_seed(0)
    fused = fcnseg.create_model("fcn32s", 3, width=1 / 16, fc_channels=16, streams={"color": 3, "hha": 3}).eval()
    x = torch.rand(6, 16, 16) * 255
    assert fused.predict(x).shape == (16, 16)
    assert fused.predict(x.numpy().transpose(1, 2, 0)).shape == (16, 16)  # numpy H×W×6
    with pytest.raises(ValueError, match="images must have 6 channels"):
        fused.predict(torch.rand(3, 16, 16))
