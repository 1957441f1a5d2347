"""Run configuration: YAML + overrides → dataclasses, presets, one-line errors."""
import pytest

from fcnseg.config import CAFFE_LR, RunConfig, apply_preset, load_config
from fcnseg.errors import ConfigError


def write(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_resolve_without_a_file():
    cfg = load_config()
    assert cfg.train.preset == "none" and cfg.train.optimizer == "sgd" and cfg.train.schedule == "constant"
    assert cfg.data.batch_size == 1 and cfg.train.iterations == 1000 and cfg.train.loss_reduction == "mean"
    assert cfg.train.bias_lr_mult == 2.0 and cfg.data.flip is False and cfg.train.accumulate == 1


@pytest.mark.parametrize("name,lr", [("fcn32s", 1e-10), ("fcn16s", 1e-12), ("fcn8s", 1e-14), ("fcn8s-atonce", 1e-10)])
def test_caffe_preset_matches_reference_solvers(name, lr):
    cfg = load_config(None, ["train.preset=caffe", f"model.name={name}"])
    t, d = cfg.train, cfg.data
    assert t.lr == lr == CAFFE_LR[name]
    assert (t.optimizer, t.momentum, t.weight_decay, t.schedule, t.loss_reduction) == \
        ("sgd", 0.99, 5e-4, "constant", "sum")
    assert d.batch_size == 1 and not d.flip and not d.crop and d.scale_range is None and t.bias_lr_mult == 2.0
    assert t.iterations == (300000 if name == "fcn8s-atonce" else 100000)


def test_caffe_alexnet_uses_its_solver():
    cfg = load_config(None, ["train.preset=caffe", "model.name=fcn32s@alexnet"])
    assert (cfg.train.lr, cfg.train.momentum, cfg.train.accumulate, cfg.data.batch_size) == (1e-4, 0.9, 20, 20)
    # voc-fcn-alexnet: normalize: true per image (batch 1), iter_size 20; trunk biases at Caffe's defaults
    t = cfg.train
    assert (t.loss_reduction, t.bias_lr_mult, t.backbone_bias_lr_mult, t.backbone_bias_decay_mult) == \
        ("image-mean", 2.0, 1.0, 1.0)
    vgg = load_config(None, ["train.preset=caffe", "model.name=fcn32s"]).train
    assert (vgg.loss_reduction, vgg.backbone_bias_lr_mult, vgg.backbone_bias_decay_mult) == ("sum", None, 0.0)


def test_explicit_values_win_over_preset(tmp_path):
    p = write(tmp_path, "train:\n  preset: caffe\n  lr: 1e-9\n  epochs: 3\ndata:\n  batch_size: 4\n")
    cfg = load_config(p, ["train.momentum=0.95"])
    assert cfg.train.lr == 1e-9 and cfg.train.momentum == 0.95 and cfg.data.batch_size == 4
    assert cfg.train.epochs == 3 and cfg.train.iterations is None  # preset length not forced on top
    assert cfg.train.weight_decay == 5e-4  # still the preset's


def test_modern_preset_and_adamw():
    cfg = load_config(None, ["train.preset=modern"])
    assert (cfg.train.schedule, cfg.train.loss_reduction, cfg.data.flip, cfg.data.scale_range) == \
        ("poly", "mean", True, [0.5, 2.0])
    assert cfg.data.batch_size == 8 and cfg.train.lr == 1e-3 and cfg.train.epochs == 50
    cfg = load_config(None, ["train.preset=modern", "train.optimizer=adamw"])
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 1e-2


def test_overrides_use_yaml_scalars_and_accept_1e_minus_4():
    cfg = load_config(None, ["train.lr=1e-4", "data.scale_range=[0.5, 1.5]", "data.val_split=null",
                             "model.num_classes=21", "data.options.task=semantic", "out=/tmp/x", "train.amp=false"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.data.scale_range == [0.5, 1.5] and cfg.data.val_split is None and cfg.model.num_classes == 21
    assert cfg.data.options == {"task": "semantic"} and cfg.out == "/tmp/x" and cfg.train.amp == "off"


def test_yaml_string_float_is_coerced(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  lr: 1e-4\n  iterations: 10\n"))
    assert cfg.train.lr == 1e-4 and cfg.train.iterations == 10


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "train:\n  lrr: 1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml.*'train\.lrr'") as e:
        load_config(p)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"override 'data\.bogus=1'.*'data\.bogus'"):
        load_config(None, ["data.bogus=1"])
    with pytest.raises(ConfigError, match="unknown key 'optim'"):
        load_config(None, ["optim=1"])


def test_malformed_yaml_and_bad_types(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.yaml: malformed YAML at line \d+"):
        load_config(write(tmp_path, "train:\n  lr: [1, 2\n", "bad.yaml"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n", "list.yaml"))
    with pytest.raises(ConfigError, match=r"'train\.iterations' expects int, got 'ten'"):
        load_config(None, ["train.iterations=ten"])
    with pytest.raises(ConfigError, match="'model' must be a mapping"):
        load_config(write(tmp_path, "model: 3\n", "m.yaml"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must look like"):
        load_config(None, ["train.lr"])


@pytest.mark.parametrize("override,match", [
    ("train.preset=fast", "train.preset"), ("train.optimizer=adam", "train.optimizer"),
    ("train.schedule=cosine", "train.schedule"), ("data.batch_size=0", "data.batch_size"),
    ("train.patch_p=0", "patch_p"), ("train.amp=fp8", "train.amp"), ("data.resize=0.5", "downscale"),
    ("train.schedule=step", "step_size"), ("train.class_weights=inverse", "class_weights"),
    ("train.epochs=2 train.iterations=3", "only one of"),
])
def test_validation_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, override.split())


def test_batch_must_divide_by_accumulate():
    with pytest.raises(ConfigError, match="divisible by train.accumulate"):
        load_config(None, ["data.batch_size=3", "train.accumulate=2"])


def test_to_dict_round_trip():
    cfg = load_config(None, ["train.preset=caffe", "model.name=fcn16s", "data.options.task=both"])
    d = cfg.to_dict()
    assert d["train"]["lr"] == 1e-12 and d["data"]["options"] == {"task": "both"}
    again = apply_preset(RunConfig.from_dict(d))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown key 'model.nam'"):
        RunConfig.from_dict({"model": {"nam": 1}})


def test_fusion_and_depth_init_choices():
    assert load_config(None, ["model.fusion=sum", "model.depth_init=zero"]).model.fusion == "sum"
    for key in ("model.fusion", "model.depth_init", "train.loss_reduction"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}=max"])


# --- the schema: every field has a rule, and each rule rejects its examples at load ----------------
from dataclasses import fields  # noqa: E402

from fcnseg.config import DataConfig, ModelConfig, TrainConfig, field_rules, validate  # noqa: E402

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


def _schema_examples():
    for section, cls in [*_SECTIONS.items(), ("", RunConfig)]:
        for name, (rule, _) in field_rules(cls).items():
            key = f"{section}.{name}" if section else name
            for kind, value in rule.examples:
                yield pytest.param(section, name, kind, value, id=f"{key}-{kind}")


def test_every_config_field_has_a_rule():
    for cls in [*_SECTIONS.values(), RunConfig]:
        assert set(field_rules(cls)) == {f.name for f in fields(cls)} - set(_SECTIONS), cls.__name__


@pytest.mark.parametrize("section,name,kind,value", list(_schema_examples()))
def test_schema_rejects_each_fields_bad_values(section, name, kind, value):
    """Generated from the schema: a wrong-type and an out-of-range value of every field, key named."""
    cfg = load_config()
    setattr(getattr(cfg, section) if section else cfg, name, value)
    key = f"{section}.{name}" if section else name
    with pytest.raises(ConfigError, match=rf"^{key.replace('.', '[.]')}: .*, got ") as e:
        validate(cfg)
    assert "\n" not in str(e.value)
    rule, nullable = field_rules(type(getattr(cfg, section)) if section else RunConfig)[name]
    assert rule.error(key, value, nullable).kind == kind


@pytest.mark.parametrize("override,key,cause", [
    ("data.scale_range=[a,b]", "data.scale_range", "finite numbers"),
    ("data.crop=-5", "data.crop", ">= 0"),
    ("data.crop=[8, 0]", "data.crop", "[height, width]"),
    (f"train.seed={2**70}", "train.seed", "2**63"),
    ("train.seed=-1", "train.seed", "from 0"),
    ("model.num_classes={}", "model.num_classes", "non-empty mapping"),
    ("model.num_classes=0", "model.num_classes", "from 2 to 1000"),
    ("model.num_classes=1", "model.num_classes", "one class would label every pixel the same"),
    ("model.num_classes=3000", "model.num_classes", "from 2 to 1000"),
    ("model.num_classes={sem: 33, geo: 1}", "model.num_classes", "from 2"),
    ("model.num_classes=true", "model.num_classes", "int"),
    ("train.poly_power=-1", "train.poly_power", "> 0"),
    ("train.poly_power=0", "train.poly_power", "> 0"),
    ("train.gamma=0", "train.gamma", "> 0"),
    ("train.momentum=1", "train.momentum", "< 1"),
    ("train.weight_decay=-1e-4", "train.weight_decay", ">= 0"),
    ("train.warmup_iters=-1", "train.warmup_iters", ">= 0"),
    ("train.lr=.inf", "train.lr", "finite"),
    ("data.workers=-1", "data.workers", ">= 0"),
    ("train.patch_p=1.5", "train.patch_p", "<= 1"),
    ("data.jitter=-0.5", "data.jitter", ">= 0"),
    ("model.dropout=1", "model.dropout", "< 1"),
    ('out=""', "out", "non-empty"),
    ("train.class_weights=[1, -2]", "train.class_weights", ">= 0"),
])
def test_bad_values_rejected_at_load_with_key_and_reason(override, key, cause):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert key in str(e.value) and cause in str(e.value), str(e.value)


def test_good_edge_values_load():
    cfg = load_config(None, ["model.num_classes={sem: 33, geo: 3}", "model.num_classes=2", "train.seed=0",
                             f"train.seed={2**63 - 1}", "data.crop=0", "data.crop=[8, 16]", "train.momentum=0",
                             "data.workers=0", "train.patch_p=1", "model.dropout=0"])
    assert cfg.model.num_classes == 2 and cfg.train.seed == 2**63 - 1 and cfg.data.crop == [8, 16]
