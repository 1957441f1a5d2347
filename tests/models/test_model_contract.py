"""Every model kind implements the one declared contract (fcnseg.models.base.SegmentationModel)."""
import pytest
import torch

import fcnseg
from fcnseg.models import dense
from fcnseg.models.base import ModelSpec, SegmentationModel, single
from fcnseg.models.trimmed import TrimmedFCN

SMALL = dict(width=1 / 16, fc_channels=16)


def _randomised(model):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return model.eval()


KINDS = {
    "fcn8s": lambda: fcnseg.create_model("fcn8s", 5, **SMALL),
    "two-heads": lambda: fcnseg.create_model("fcn16s", {"sem": 4, "geo": 3}, **SMALL),
    "late-fusion": lambda: fcnseg.create_model("fcn32s", 4, streams={"color": 3, "hha": 3}, **SMALL),
    "early-fusion": lambda: fcnseg.create_model("fcn32s", 4, in_channels=4, **SMALL),
    "alexnet": lambda: fcnseg.create_model("fcn32s@alexnet", 3, **SMALL),
    "trimmed": lambda: TrimmedFCN(_randomised(fcnseg.create_model("fcn8s", 5, **SMALL))),
    "dense": lambda: dense(_randomised(fcnseg.create_model("fcn32s", 3, alignment="same", **SMALL)), 2),
    "dense-fcn8s": lambda: dense(_randomised(fcnseg.create_model("fcn8s", 3, alignment="same", **SMALL)), 2),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_model_kind_honours_the_contract(kind):
    model = _randomised(KINDS[kind]())
    assert isinstance(model, SegmentationModel) and isinstance(model.spec, ModelSpec)
    assert isinstance(model.heads, dict) and all(isinstance(k, int) and k >= 2 for k in model.heads.values())
    assert model.output_stride >= 1 and model.in_channels >= 3 and model.input_padding >= 0
    x = torch.randn(2, model.in_channels, 37, 45)
    with torch.no_grad():
        out = model(x)
        resumed = model.forward_features(model.features(x), tuple(x.shape[-2:]))
    assert isinstance(out, dict) and list(out) == list(model.heads)
    for head, k in model.heads.items():
        assert out[head].shape == (2, k, 37, 45) and torch.isfinite(out[head]).all()
        assert torch.allclose(resumed[head], out[head], atol=1e-5)
    labels = model.predict(torch.randint(0, 256, (model.in_channels, 37, 45), dtype=torch.uint8))
    one = labels if isinstance(labels, dict) else {"out": labels}
    assert list(one) == list(model.heads) and all(v.shape == (37, 45) for v in one.values())


@pytest.mark.parametrize("kind", ["fcn8s", "two-heads", "late-fusion", "early-fusion", "alexnet"])
def test_the_spec_rebuilds_the_model(kind):
    model = KINDS[kind]()
    rebuilt = fcnseg.create_model(**model.spec.to_dict())
    assert rebuilt.spec == model.spec
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert ModelSpec.from_dict(model.spec.to_dict()) == model.spec


def test_spec_is_frozen_and_reads_old_config_dicts():
    spec = fcnseg.create_model("fcn32s@alexnet", 5, **SMALL).spec
    with pytest.raises(AttributeError):
        spec.name = "fcn32s"
    old = {"name": "fcn32s@alexnet", "num_classes": 5, "alignment": "caffe", "learn_upsampling": False, **SMALL}
    assert ModelSpec.from_dict(old) == ModelSpec("fcn32s", 5, "alexnet", options=SMALL)
    assert spec.with_options(weights="x").options["weights"] == "x" and "weights" not in spec.options


def test_single_is_the_one_head_convenience():
    scores = torch.zeros(1, 2, 3, 3)
    assert single({"out": scores}) is scores
    with pytest.raises(ValueError, match="single-head.*sem, geo"):
        single({"sem": scores, "geo": scores})
