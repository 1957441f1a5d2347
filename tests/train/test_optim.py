"""Parameter groups (reference lr/decay multipliers) and per-iteration schedules."""
import pytest
import torch

from fcnseg import create_model
from fcnseg.errors import ConfigError
from fcnseg.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups


def tiny(name="fcn8s", **kw):
    return create_model(name, 5, width=1 / 16, fc_channels=32, alignment="same", **kw)


def test_groups_follow_reference_multipliers_and_skip_fixed_upsampling():
    model = tiny()
    groups = param_groups(model, 1e-3, 5e-4)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone.weight", "backbone.bias", "head.weight", "head.bias"}
    for part in ("backbone", "head"):
        assert by_name[f"{part}.bias"]["lr"] == pytest.approx(2e-3) and by_name[f"{part}.bias"]["weight_decay"] == 0
        assert by_name[f"{part}.weight"]["lr"] == pytest.approx(1e-3)
        assert by_name[f"{part}.weight"]["weight_decay"] == 5e-4
    in_groups = {id(p) for g in groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[i] for i in in_groups} == {n for n, p in model.named_parameters() if p.requires_grad}
    fixed = [p for n, p in model.named_parameters() if n.startswith("upsample.")]
    assert fixed and all(not p.requires_grad and id(p) not in in_groups for p in fixed)
    assert all(n.endswith("bias") for g in groups if g["name"].endswith("bias")
               for n in (names[id(p)] for p in g["params"]))


def test_learned_upsampling_is_trained_and_trunk_multiplier():
    model = tiny(learn_upsampling=True)
    groups = param_groups(model, 1.0, 0.0, backbone_lr_mult=0.1)
    ids = {id(p) for g in groups for p in g["params"]}
    assert all(id(p) in ids for n, p in model.named_parameters() if n.startswith("upsample."))
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone.weight"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone.bias"]["lr"] == pytest.approx(0.2)
    assert by_name["head.weight"]["lr"] == 1.0


def test_frozen_parameters_are_left_out():
    model = tiny("fcn32s-fixed")
    groups = param_groups(model, 1.0, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for g in groups for p in g["params"]) == ["score.out.fc7.bias", "score.out.fc7.weight"]


def test_build_optimizer_kinds():
    model = tiny()
    sgd = build_optimizer(model, "sgd", 0.1, momentum=0.99, weight_decay=5e-4)
    assert isinstance(sgd, torch.optim.SGD) and all(g["momentum"] == 0.99 for g in sgd.param_groups)
    assert isinstance(build_optimizer(model, "adamw", 1e-4, weight_decay=0.01), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="optimizer"):
        build_optimizer(model, "rmsprop", 0.1)


def test_schedules():
    assert lr_factor(500, "constant", 1000) == 1.0
    assert lr_factor(0, "step", 100, step_size=10) == 1.0
    assert lr_factor(25, "step", 100, step_size=10, gamma=0.5) == pytest.approx(0.25)
    assert lr_factor(0, "poly", 100) == 1.0
    assert lr_factor(50, "poly", 100, poly_power=0.9) == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, "poly", 100) == 0.0
    assert lr_factor(0, "constant", 100, warmup_iters=4) == pytest.approx(0.25)
    with pytest.raises(ConfigError):
        lr_factor(0, "cosine", 10)


def test_scheduler_steps_per_iteration_and_keeps_multipliers():
    model = tiny()
    opt = build_optimizer(model, "sgd", 1.0)
    sched = build_scheduler(opt, "poly", 4, poly_power=1.0)
    seen = []
    for _ in range(4):
        seen.append({g["name"]: g["lr"] for g in opt.param_groups})
        opt.step()
        sched.step()
    assert [s["head.weight"] for s in seen] == pytest.approx([1.0, 0.75, 0.5, 0.25])
    assert [s["head.bias"] for s in seen] == pytest.approx([2.0, 1.5, 1.0, 0.5])


def test_trunk_biases_at_caffe_defaults_and_head_biases_doubled():
    """voc-fcn-alexnet: trunk layers have no param {} (bias lr ×1, decay ×1); score_fr has 2× / no decay."""
    model = create_model("fcn32s", 5, backbone="alexnet", width=1 / 16, fc_channels=32)
    by_name = {g["name"]: g for g in param_groups(model, 1e-4, 5e-4, bias_lr_mult=2.0, backbone_bias_lr_mult=1.0,
                                                  backbone_bias_decay_mult=1.0)}
    assert by_name["backbone.bias"]["lr"] == pytest.approx(1e-4) and by_name["backbone.bias"]["weight_decay"] == 5e-4
    assert by_name["head.bias"]["lr"] == pytest.approx(2e-4) and by_name["head.bias"]["weight_decay"] == 0
    assert by_name["backbone.weight"]["weight_decay"] == by_name["head.weight"]["weight_decay"] == 5e-4


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_steps_as_the_per_tensor_loop_to_rounding(name):
    """train.fused_optimizer: the same update up to float rounding; the default stays the per-tensor loop,
    whose arithmetic committed runs were made with."""
    torch.manual_seed(0)
    a, b = tiny(), tiny()
    b.load_state_dict(a.state_dict())
    start = [p.detach().clone() for p in a.parameters()]
    fused = build_optimizer(a, name, 1e-2, momentum=0.99, weight_decay=5e-4, fused=True)
    plain = build_optimizer(b, name, 1e-2, momentum=0.99, weight_decay=5e-4)
    assert all(g["fused"] for g in fused.param_groups) and not any(g.get("fused") for g in plain.param_groups)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for pa, pb in zip(a.parameters(), b.parameters()):
            if pa.requires_grad:
                pa.grad = torch.randn(pa.shape, generator=g)
                pb.grad = pa.grad.clone()
        fused.step()
        plain.step()
    for (n, pa), pb, p0 in zip(a.named_parameters(), b.parameters(), start):
        torch.testing.assert_close(pa, pb, rtol=1e-6, atol=1e-7, msg=n)
        assert torch.equal(pa, p0) != pa.requires_grad, n  # every trained tensor moved, no fixed one did
