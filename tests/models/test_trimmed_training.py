"""Training through the border-trimmed net: loss and every parameter gradient equal the plain net's."""
import pytest
import torch
import torch.nn.functional as F
from support.nets import random_images, tiny_fcn

import fcnseg
from fcnseg.models.base import single
from fcnseg.models.trimmed import TrimmedFCN

SIZES = [(37, 53), (64, 80), (97, 51), (16, 17)]


def _loss_and_grads(net, model, x, labels, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the same dropout masks in both nets
    loss = F.cross_entropy(single(net(x)), labels, ignore_index=255)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check(model, trimmed, sizes, batch=2):
    for i, (h, w) in enumerate(sizes):
        x = model.preprocessing(random_images(batch, h, w, i))
        labels = torch.randint(0, 5, (batch, h, w), generator=torch.Generator().manual_seed(i))
        labels[:, :2] = 255  # void pixels are ignored as in training
        assert trimmed._plan(h, w) is not None  # the trimmed path is taken
        ref_loss, ref = _loss_and_grads(model, model, x, labels, i)
        loss, got = _loss_and_grads(trimmed, model, x, labels, i)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        assert set(got) == set(ref)
        for name, g in ref.items():
            scale = max(g.abs().max().item(), 1e-6)
            assert (got[name] - g).abs().max().item() <= 1e-4 * scale, (name, (h, w))


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce"])
def test_loss_and_every_gradient_equal_the_plain_nets(name):
    model = tiny_fcn(name=name).train()  # dropout active, positive biases: a non-zero background
    trimmed = TrimmedFCN(model, trainable=True)
    assert model.training  # trainable: the wrapper leaves the net's mode alone
    _check(model, trimmed, SIZES)


def test_learned_upsampling_and_several_steps():
    """Gradients stay equal after the weights move (constants and skeletons follow the live weights)."""
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=64, learn_upsampling=True).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    trimmed = TrimmedFCN(model, trainable=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    for _ in range(3):
        _check(model, trimmed, [(45, 61)], batch=1)
        opt.step()
    assert all(p.grad is not None for p in model.parameters())


def test_a_border_without_gradient_would_be_caught(monkeypatch):
    """Negative control: treating the border as constants (no gradient through the skeleton) changes the
    trunk's gradients, so the equality above is not vacuous."""
    model = tiny_fcn(name="fcn8s").train()
    trimmed = TrimmedFCN(model, trainable=True)
    live = TrimmedFCN._live_skeletons
    monkeypatch.setattr(TrimmedFCN, "_live_skeletons",
                        lambda self, *a: {k: v.detach() for k, v in live(self, *a).items()})
    with pytest.raises(AssertionError):
        _check(model, trimmed, [(37, 53)])


def test_inference_wrapper_keeps_snapshot_semantics():
    model = tiny_fcn().train()
    t = TrimmedFCN(model)
    assert not model.training and not t.trainable
    x = model.preprocessing(random_images(1, 40, 44))
    with torch.no_grad():
        assert (single(t(x)) - single(model(x))).abs().max() <= 1e-5
