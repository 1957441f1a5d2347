"""Preprocessing: its per-channel constants are made once per device and dtype, not on every call."""
import torch

from fcnseg.models.preprocessing import CAFFE_VGG, Preprocessing, _constants


def test_constants_are_made_once_and_serve_autograd_after_inference_mode():
    _constants.cache_clear()
    x = torch.rand(2, 3, 5, 7) * 255
    with torch.inference_mode():
        a = CAFFE_VGG(x)
    b = CAFFE_VGG(x)
    assert torch.equal(a, b)
    assert _constants.cache_info().misses == 1 and _constants.cache_info().hits == 1  # no new tensors per call
    mean, _ = _constants(CAFFE_VGG.mean, CAFFE_VGG.std, 3, torch.float32, x.device)
    assert not mean.is_inference()   # made under inference_mode, yet usable where autograd records
    y = x.clone().requires_grad_(True)
    CAFFE_VGG(y).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))
    expected = x[:, [2, 1, 0]] - torch.tensor(CAFFE_VGG.mean).view(3, 1, 1)
    torch.testing.assert_close(a, expected)


def test_lists_and_extra_channels():
    pre = Preprocessing(bgr=False, scale=0.5, mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0])   # lists, as users may give
    x = torch.full((1, 4, 2, 2), 10.0)
    out = pre(x)
    assert out[0, :, 0, 0].tolist() == [2.0, 1.5, 1.0, 5.0]   # a 4th channel: mean 0, std 1
