"""Loading a checkpoint for inference: its tensors become the model's (one copy), every model kind rebuilds, the
training state is left unread, and the weights are still checked (finite, checksum)."""
import pytest
import torch

import fcnseg
from fcnseg.errors import CheckpointError
from fcnseg.models.checkpoint import _finite, load_checkpoint, model_from_checkpoint, save_checkpoint

NETS = [("fcn8s", {}), ("fcn8s-atonce", {"alignment": "same"}), ("fcn32s", {"backbone": "alexnet"}),
        ("fcn16s", {"backbone": "googlenet"}), ("fcn8s", {"backbone": "resnet50"}),
        ("fcn32s", {"streams": {"color": 3, "hha": 3}}), ("fcn32s", {"in_channels": 4})]


@pytest.mark.parametrize(("name", "kwargs"), NETS, ids=[f"{n}-{'-'.join(map(str, k.values()))}" for n, k in NETS])
def test_every_kind_of_net_rebuilds_from_its_checkpoint_and_scores_as_saved(tmp_path, name, kwargs):
    torch.manual_seed(0)
    m = fcnseg.create_model(name, 3, width=1 / 16, fc_channels=8, **kwargs).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # score layers start at zero: make them count
    save_checkpoint(tmp_path / "c.pt", m)
    again, _ = model_from_checkpoint(tmp_path / "c.pt")
    assert not any(t.is_meta for t in (*again.parameters(), *again.buffers()))
    assert [p.requires_grad for p in again.parameters()] == [p.requires_grad for p in m.parameters()]
    x = torch.rand(1, m.in_channels, 37, 45) * 255
    with torch.no_grad():
        for h, v in m(m.preprocessing(x)).items():
            assert torch.equal(again.eval()(again.preprocessing(x))[h], v)


def test_the_model_holds_the_checkpoints_tensors_and_leaves_the_training_state_unread(tmp_path):
    m = fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=8)
    momentum = {0: {"momentum_buffer": torch.full((4,), float("nan"))}}  # checked by a resume, not here
    save_checkpoint(tmp_path / "c.pt", m, optimizer={"state": momentum, "param_groups": [{"lr": 0.1}]})
    with pytest.raises(CheckpointError, match="optimizer.state.0.momentum_buffer"):
        load_checkpoint(tmp_path / "c.pt")
    model, ckpt = model_from_checkpoint(tmp_path / "c.pt")
    w = model.backbone.stages.pool1.conv1_1.weight
    assert w.data_ptr() == ckpt["model"]["backbone.stages.pool1.conv1_1.weight"].data_ptr()  # no second copy
    saved = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)  # the file is mapped privately: the model's weights are its own to change
    assert torch.equal(model_from_checkpoint(tmp_path / "c.pt")[0].backbone.stages.pool1.conv1_1.weight, saved)


def test_finite_check_without_a_mask_still_finds_nan_and_inf_and_allows_an_overflowing_sum():
    big = torch.full((8,), 3e38)  # finite, but its float32 sum overflows: checked entry by entry
    assert _finite(big) and _finite(torch.zeros(0))
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(1000)
        t[517] = bad
        assert not _finite(t) and not _finite(torch.cat([big, t]))
