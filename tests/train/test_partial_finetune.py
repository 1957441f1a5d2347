"""Partial fine-tuning: ``train.freeze_backbone`` as the deepest frozen stage, its prefix cached
(a step from the cache equals a step without it), and per-stage learning-rate multipliers."""
import pytest
import torch

from fcnseg import create_model
from fcnseg.config import RunConfig, load_config
from fcnseg.errors import ConfigError
from fcnseg.models.checkpoint import load_checkpoint
from fcnseg.train.loop import train
from fcnseg.train.model import freeze_backbone
from fcnseg.train.optim import build_optimizer, param_groups

BASE = ["data.dataset=camvid", "model.width=0.0625", "model.fc_channels=64", "model.alignment=same",
        "train.progress=false", "train.eval_every=0", "train.log_every=1", "data.batch_size=2", "train.lr=1e-2",
        "train.iterations=2", "data.val_split=null", "data.resize=2"]
STAGES = ["pool1", "pool2", "pool3", "pool4", "pool5", "fc7"]


def tiny(name="fcn8s", backbone="vgg16"):
    return create_model(name, 5, backbone=backbone, width=1 / 16, fc_channels=16, alignment="same")


def run(root, out, *extra):
    return train(load_config(None, [*BASE, f"data.root={root}", f"out={out}", *extra]))


@pytest.mark.parametrize("name", ["fcn32s", "fcn8s"])
@pytest.mark.parametrize("upto", ["pool4", "pool3"])
def test_step_from_cached_prefix_equals_step_without(name, upto, blocky_camvid, tmp_path, capsys):
    """The frozen prefix's outputs (the tap at the freeze point, and skip taps inside it) are cached;
    steps from them give the loss and the updated weights of steps through the whole net (dropout on)."""
    common = [f"model.name={name}", f"train.freeze_backbone={upto}", "train.backbone_lr_mult={pool5: 0.1}"]
    cached = run(blocky_camvid, tmp_path / "cached", *common, "train.cache_features=true")
    taps = {"pool4": "pool3/pool4", "pool3": "pool3"}[upto]
    assert f"cached {taps} features of 8 images" in capsys.readouterr().err
    plain = run(blocky_camvid, tmp_path / "plain", *common)
    assert cached["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    a = load_checkpoint(tmp_path / "cached" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "plain" / "last.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])   # fp32 rounding
    torch.manual_seed(1337)
    init = create_model(name, 11, width=0.0625, fc_channels=64, alignment="same").state_dict()
    frozen = STAGES[:STAGES.index(upto) + 1]
    stage = {k: k.split(".")[2] for k in a if k.startswith("backbone.stages.")}
    assert all(torch.equal(a[k], init[k]) for k, s in stage.items() if s in frozen)
    learned = {s for k, s in stage.items() if not torch.equal(a[k], init[k])}
    assert learned == set(STAGES) - set(frozen)   # conv5 (and conv4) and fc6/fc7 learn


def test_freeze_choices():
    model = tiny()
    assert freeze_backbone(tiny(), False) == []
    assert freeze_backbone(tiny(), True) == STAGES[:5]   # as before: all but the classifier stage
    assert freeze_backbone(model, "pool4") == STAGES[:4]
    assert all(not p.requires_grad for n in STAGES[:4] for p in model.backbone.stages[n].parameters())
    assert all(p.requires_grad for n in ("pool5", "fc7") for p in model.backbone.stages[n].parameters())
    assert not model.backbone.stages["pool4"].training
    names = {id(p): n for n, p in model.named_parameters()}
    in_opt = {names[id(p)] for g in param_groups(model, 1.0, 0.0) for p in g["params"]}
    assert in_opt and not any(n.startswith(("backbone.stages.pool1", "backbone.stages.pool4")) for n in in_opt)
    assert freeze_backbone(tiny("fcn32s", "alexnet"), "pool5") == ["pool5"]


def test_freezing_the_classifier_stage_leaves_only_the_score_layers():
    """``fc7``, the classifier stage: FCN-32s-fixed (only the score layer learns), with the whole trunk
    in eval mode (no dropout), so all of it can be cached."""
    model = tiny("fcn32s")
    assert freeze_backbone(model, "fc7") == STAGES
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for g in param_groups(model, 1.0, 0.0) for p in g["params"]) == \
        ["score.out.fc7.bias", "score.out.fc7.weight"]


def test_score_only_run_caches_the_whole_trunk(blocky_camvid, tmp_path, capsys):
    run(blocky_camvid, tmp_path / "r", "model.name=fcn32s", "train.freeze_backbone=fc7", "train.cache_features=true",
        "train.iterations=1")
    assert "cached pool3/pool4/pool5/fc7 features" in capsys.readouterr().err


@pytest.mark.parametrize("model_name, upto, listed", [("fcn8s", "pool9", "pool1, pool2, pool3, pool4, pool5, fc7"),
                                                      ("pool4-only", "fc7", "pool1, pool2, pool3, pool4")])
def test_unknown_stage_is_a_config_error_listing_the_choices(model_name, upto, listed):
    with pytest.raises(ConfigError, match=f"train.freeze_backbone: '{upto}' is not a stage .*"
                                          f"choose true, false or one of {listed}$"):
        freeze_backbone(tiny(model_name), upto)


def test_config_accepts_flags_and_stage_names_and_rejects_others():
    assert load_config(None, ["train.freeze_backbone=pool4"]).train.freeze_backbone == "pool4"
    assert load_config(None, ["train.freeze_backbone=true"]).train.freeze_backbone is True
    old = RunConfig.from_dict({"train": {"freeze_backbone": True, "backbone_lr_mult": 0.1}})  # an old run's config
    assert old.train.freeze_backbone is True and old.train.backbone_lr_mult == 0.1
    with pytest.raises(ConfigError, match="train.freeze_backbone"):
        load_config(None, ["train.freeze_backbone=3"])
    with pytest.raises(ConfigError, match="train.freeze_backbone: must be true, false or the name"):
        load_config(None, ["train.freeze_backbone=' '"])
    assert load_config(None, ["train.backbone_lr_mult={pool5: 0.1, fc7: 1}"]).train.backbone_lr_mult == \
        {"pool5": 0.1, "fc7": 1}
    for bad in ("{pool5: -1}", "{}", "-0.5", "{pool5: x}"):
        with pytest.raises(ConfigError, match="train.backbone_lr_mult"):
            load_config(None, [f"train.backbone_lr_mult={bad}"])


def test_per_stage_lr_multipliers_reach_the_optimizer_groups():
    model = tiny()
    freeze_backbone(model, "pool4")
    opt = build_optimizer(model, "sgd", 1e-3, weight_decay=5e-4, bias_lr_mult=2.0,
                          backbone_lr_mult={"pool5": 0.1, "pool1": 0.5})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert set(by_name) == {"backbone.pool5.weight", "backbone.pool5.bias", "backbone.fc7.weight",
                            "backbone.fc7.bias", "head.weight", "head.bias"}   # frozen pool1: no group
    assert by_name["backbone.pool5.weight"]["lr"] == pytest.approx(1e-4)
    assert by_name["backbone.pool5.bias"]["lr"] == pytest.approx(2e-4)   # bias_lr_mult still applies
    assert by_name["backbone.pool5.weight"]["weight_decay"] == 5e-4
    assert by_name["backbone.pool5.bias"]["weight_decay"] == 0
    assert by_name["backbone.fc7.weight"]["lr"] == pytest.approx(1e-3)   # not named: 1
    assert by_name["backbone.fc7.bias"]["lr"] == pytest.approx(2e-3)
    assert by_name["head.weight"]["lr"] == pytest.approx(1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[id(p)].startswith("backbone.stages.pool5.") for p in by_name["backbone.pool5.weight"]["params"])
    one = {g["name"]: g["lr"] for g in param_groups(tiny(), 1.0, 0.0, backbone_lr_mult=0.1)}
    assert one == pytest.approx({"backbone.bias": 0.2, "backbone.weight": 0.1, "head.bias": 2.0, "head.weight": 1.0})


def test_unknown_stage_in_lr_multipliers_is_a_config_error():
    with pytest.raises(ConfigError, match="train.backbone_lr_mult: 'conv9' is not a stage .*stages: pool1, pool2"):
        param_groups(tiny(), 1.0, 0.0, backbone_lr_mult={"conv9": 0.1})


def test_frozen_trunk_run_resumes(blocky_camvid, tmp_path):
    """A run with the old flag (true) still trains, caches and resumes."""
    common = ["model.name=fcn8s", "train.freeze_backbone=true", "train.cache_features=true"]
    run(blocky_camvid, tmp_path / "r", *common)
    res = run(blocky_camvid, tmp_path / "r", *common, "train.iterations=3", "train.resume=auto")
    assert res["iterations"] == 3
    assert load_checkpoint(tmp_path / "r" / "last.pt")["run_config"]["train"]["freeze_backbone"] is True


def test_validation_from_a_cached_prefix_scores_as_the_images(blocky_camvid, tmp_path, capsys):
    """Frozen at pool4, the validation split is scored from its cached pool3/pool4 (the trunk resumes at
    conv5): the confusion matrix of scoring the images."""
    common = ["model.name=fcn8s", "train.freeze_backbone=pool4", "data.val_split=val", "train.iterations=3"]
    cached = run(blocky_camvid, tmp_path / "cached", *common, "train.cache_features=true")
    assert "scoring from cached pool3/pool4 features of 3 validation images" in capsys.readouterr().err
    plain = run(blocky_camvid, tmp_path / "plain", *common)
    assert cached["metrics"]["confusion"] == plain["metrics"]["confusion"]
