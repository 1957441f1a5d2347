import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import fcnseg
from fcnseg.errors import ConfigError
from fcnseg.evaluate.scoring import evaluate, format_table, save_metrics
from fcnseg.models.base import ModelSpec, SegmentationModel
from fcnseg.models.preprocessing import Preprocessing


class _Toy(SegmentationModel):
    """A parameter-free-ish model at stride 1 reading RGB; subclasses give ``scores``."""

    output_stride = 1
    in_channels = 3

    def __init__(self, heads: dict[str, int], preprocessing: Preprocessing):
        super().__init__()
        self.heads = heads
        self.spec = ModelSpec("toy", heads if len(heads) > 1 else heads["out"], "toy")
        self.preprocessing = preprocessing
        self.dummy = nn.Parameter(torch.zeros(()))

    def features(self, x):
        return {"x": x}

    def forward_features(self, features, size):
        return self.scores(features["x"])


class PixelModel(_Toy):
    """Predicts, per pixel, the class written in the (preprocessed) red channel.

    Its preprocessing subtracts 1 from red, so images carry ``class + 1``: forgetting the
    preprocessing would shift every prediction.
    """

    def __init__(self, heads: dict[str, int]):
        super().__init__(heads, Preprocessing(bgr=False, scale=1.0, mean=(1.0, 0.0, 0.0)))

    def scores(self, x):
        outs = {}
        for i, (h, k) in enumerate(self.heads.items()):
            cls = x[:, i].round().long().clamp(0, k - 1)   # head i reads channel i
            outs[h] = nn.functional.one_hot(cls, k).permute(0, 3, 1, 2).float() + self.dummy
        return outs


class ListDataset(Dataset):
    def __init__(self, items, num_classes=None):
        self.items = items
        if num_classes is not None:
            self.num_classes = num_classes
        self.ignore_index = 255

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def _image(pred_rows, extra=None):
    """Image whose red channel makes PixelModel predict ``pred_rows`` (green from ``extra``)."""
    p = torch.tensor(pred_rows, dtype=torch.float32)
    g = torch.tensor(extra, dtype=torch.float32) if extra is not None else torch.zeros_like(p)
    return torch.stack([p + 1, g, torch.zeros_like(p)])


# Two images of different sizes; pairs (label, pred): A: (0,0) (1,0) (1,1) [void skipped]; B: (2,2) (0,2) (0,0)
# Matrix rows [2,0,1], [1,1,0], [0,0,1]: pixel acc 4/6, class acc 2/3, 1/2, 1 -> mean 13/18,
# IU 2/4, 1/2, 1/2 -> mean 1/2, freq 3/6, 2/6, 1/6 -> f.w. IU 1/2.
ITEMS = [
    (_image([[0, 0], [1, 1]]), torch.tensor([[0, 1], [1, 255]])),
    (_image([[2, 2, 0]]), torch.tensor([[2, 0, 0]])),
]
EXPECTED = {"pixel_accuracy": 4 / 6, "mean_accuracy": 13 / 18, "mean_iu": 0.5, "fw_iu": 0.5}


@pytest.mark.parametrize("batch_size", [1, 2])
def test_exact_metrics_any_size_and_padded_batches(batch_size):
    model = PixelModel({"out": 3}).train()
    m = evaluate(model, ListDataset(ITEMS, 3), batch_size=batch_size, progress=False)
    for k, v in EXPECTED.items():
        assert m[k] == pytest.approx(v), k
    assert m["confusion"] == [[2, 0, 1], [1, 1, 0], [0, 0, 1]]
    assert m["per_class_iu"] == pytest.approx([0.5, 0.5, 0.5])
    assert m["images"] == 2
    assert set(m["timing"]) == {"data", "model", "metrics", "total"}
    assert all(v >= 0 for v in m["timing"].values())
    assert model.training  # mode restored


def test_exclude_and_reducer():
    model = PixelModel({"out": 3})
    m = evaluate(model, ListDataset(ITEMS, 3), exclude=[2], reducer=lambda t: t * 2, progress=False)
    assert m["confusion"] == [[4, 0, 2], [2, 2, 0], [0, 0, 2]]
    assert m["mean_iu"] == pytest.approx(0.5)
    assert m["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m["excluded"] == [2]


def test_real_fcn_with_set_score_layer():
    """A tiny FCN-32s whose final score layer only has bias for class 1 predicts 1 everywhere."""
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn32s", 3, width=1 / 16, fc_channels=32)
    with torch.no_grad():
        model.score.out.fc7.bias.copy_(torch.tensor([0.0, 3.0, 0.0]))
    g = torch.Generator().manual_seed(1)
    items = []
    for h, w in [(21, 30), (17, 19)]:
        lab = torch.randint(0, 4, (h, w), generator=g)
        lab[lab == 3] = 255
        items.append((torch.rand(3, h, w, generator=g) * 255, lab))
    labels = torch.cat([lab.flatten() for _, lab in items])
    n = [(labels == c).sum().item() for c in range(3)]
    total = sum(n)
    m = evaluate(model, ListDataset(items, 3), progress=False)
    assert m["confusion"] == [[0, n[0], 0], [0, n[1], 0], [0, n[2], 0]]
    assert m["pixel_accuracy"] == pytest.approx(n[1] / total)
    assert m["mean_accuracy"] == pytest.approx(1 / 3)
    assert m["mean_iu"] == pytest.approx(n[1] / total / 3)
    assert m["fw_iu"] == pytest.approx((n[1] / total) ** 2)


def test_multi_head_gives_per_head_metrics():
    model = PixelModel({"semantic": 3, "geometric": 2})
    items = [(_image([[0, 1, 2]], extra=[[0, 1, 1]]),
              {"semantic": torch.tensor([[0, 1, 1]]), "geometric": torch.tensor([[0, 0, 255]])}),
             (_image([[2]], extra=[[1]]), {"semantic": torch.tensor([[2]]), "geometric": torch.tensor([[1]])})]
    m = evaluate(model, ListDataset(items), batch_size=2, exclude={"semantic": [0]}, progress=False)
    assert m["semantic"]["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert m["semantic"]["pixel_accuracy"] == pytest.approx(3 / 4)
    assert m["semantic"]["mean_iu"] == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 0 excluded
    assert m["geometric"]["confusion"] == [[1, 1], [0, 1]]
    assert m["geometric"]["mean_iu"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    text = format_table(m, {"semantic": ["a", "b", "c"], "geometric": ["sky", "ground"]})
    assert "[semantic]" in text and "[geometric]" in text and "sky" in text and "(excluded)" in text
    with pytest.raises(ConfigError, match="dict head"):
        evaluate(model, ListDataset(items), exclude=[0], progress=False)


def test_mismatches_are_clear_errors():
    with pytest.raises(ConfigError, match="3 classes but dataset .* has 5"):
        evaluate(PixelModel({"out": 3}), ListDataset(ITEMS, 5), progress=False)
    with pytest.raises(ConfigError, match="single label map"):
        evaluate(PixelModel({"a": 3, "b": 2}), ListDataset(ITEMS), progress=False)


def test_format_table_and_save_metrics(tmp_path):
    items = ITEMS[:1]  # class 2 absent from labels and predictions -> NaN IU
    m = evaluate(PixelModel({"out": 3}), ListDataset(items, 3), progress=False)
    assert math.isnan(m["per_class_iu"][2])
    text = format_table(m, ["road", "sky", "tree"])
    lines = text.splitlines()
    assert "mean IU" in lines[0]
    # pairs (0,0) (1,0) (1,1): pixel acc 66.67, class acc 100, 50 -> 75, IU 1/2, 1/2 -> 50
    assert lines[1].split()[:3] == ["66.67", "75.00", "50.00"]
    tree = next(ln for ln in lines if ln.startswith("tree"))
    assert tree.split()[1:3] == ["-", "-"]
    assert "images in" in text
    path = save_metrics(m, tmp_path / "sub" / "metrics.json")
    back = json.loads(path.read_text())
    assert back["per_class_iu"][2] is None and back["mean_iu"] == pytest.approx(0.5)
    assert back["timing"]["total"] >= 0


def test_bundled_camvid_sample():
    from fcnseg.data import build_dataset, sample_root

    ds = build_dataset("camvid", sample_root(), "val")
    sub = torch.utils.data.Subset(ds, [0, 1])
    sub.num_classes, sub.ignore_index = ds.num_classes, ds.ignore_index
    model = fcnseg.create_model("fcn32s", ds.num_classes, width=1 / 16, fc_channels=32)
    with torch.no_grad():
        model.score.out.fc7.bias[2] = 3.0
    m = evaluate(model, sub, batch_size=2, progress=False)
    assert m["images"] == 2 and len(m["per_class_iu"]) == ds.num_classes
    conf = torch.tensor(m["confusion"])
    assert conf.sum() == m["pixels"] and (conf[:, [0, 1] + list(range(3, ds.num_classes))] == 0).all()
    assert format_table(m, ds.classes).count("\n") > ds.num_classes


def test_plots(tmp_path):
    from PIL import Image

    from fcnseg.visualize import plot_confusion, plot_curves

    p = plot_confusion([[5, 1, 0], [2, 3, 0], [0, 0, 0]], ["a", "b", "c"], tmp_path / "cm.png")
    assert Image.open(p).size[0] > 100
    with pytest.raises(ValueError, match="class names"):
        plot_confusion([[1, 0], [0, 1]], ["a"], tmp_path / "x.png")
    log = tmp_path / "log.csv"
    log.write_text("iter,epoch,loss,lr,seconds\n" + "".join(f"{i},0,{3 - i / 20},1e-4,0.1\n" for i in range(40)))
    val = tmp_path / "val.json"
    val.write_text(json.dumps([{"iter": 10, "mean_iu": 0.3, "pixel_accuracy": 0.7},
                               {"iter": 30, "mean_iu": 0.4, "pixel_accuracy": None}]))
    assert Image.open(plot_curves(log, tmp_path / "curves.png", val_json=val)).size[1] > 300
    assert Image.open(plot_curves(log, tmp_path / "c2.png")).size[1] > 100
    (tmp_path / "bad.csv").write_text("step,value\n1,2\n")
    with pytest.raises(ValueError, match="iter,epoch,loss,lr"):
        plot_curves(tmp_path / "bad.csv", tmp_path / "y.png")


class FixedScores(_Toy):
    """Ignores the image: class scores [5, 0] on the left pixel, [0, 1] on the right one."""

    def __init__(self):
        super().__init__({"out": 2}, Preprocessing(bgr=False, scale=1.0, mean=(0.0, 0.0, 0.0)))
        self.calls = 0

    def scores(self, x):
        self.calls += 1
        s = torch.tensor([[[5.0, 0.0]], [[0.0, 1.0]]])   # (classes, 1, 2)
        return {"out": s.expand(x.shape[0], -1, -1, -1)}


def test_flip_averages_the_mirror_probabilities():
    """With flip, each pixel takes the mean softmax of its own scores and its mirror pixel's:
    the confident left score ([5, 0]) wins on both pixels."""
    items = [(torch.zeros(3, 1, 2), torch.tensor([[0, 1]]))]
    model = FixedScores()
    plain = evaluate(model, ListDataset(items, 2), progress=False)
    assert plain["confusion"] == [[1, 0], [0, 1]] and model.calls == 1
    flipped = evaluate(model, ListDataset(items, 2), progress=False, flip=True)
    assert flipped["confusion"] == [[1, 0], [1, 0]] and model.calls == 3
    assert flipped["pixel_accuracy"] == pytest.approx(0.5)
