"""The paper's other datasets and their nets, from the shipped configs.

Every shipped config loads and validates; SBD -> VOC seg11valid, SIFT Flow (two heads), NYUDv2 (early and
late fusion) and PASCAL-Context each train 2 iterations from their config (reduced net, no trunk weights) on
fixtures written in the real on-disk formats, and are scored.
"""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

import fcnseg
from fcnseg.cli.main import main
from fcnseg.config import ModelConfig, apply_preset, load_config
from fcnseg.data import SIFTFLOW_ABSENT_IN_TEST, DatasetError, build_dataset
from fcnseg.data.fixtures import SIFT_SUBDIR, write_context, write_nyud, write_sbd, write_siftflow, write_voc
from fcnseg.errors import ConfigError
from fcnseg.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from fcnseg.train.loop import train
from fcnseg.train.model import build_model

CONFIG_DIR = Path(fcnseg.__file__).parent / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PAPER = [p for p in CONFIGS if p.stem != "demo-camvid"]
TINY = ["model.width=0.0625", "model.fc_channels=16", "model.weights=null", "train.iterations=2",
        "train.progress=false", "train.log_every=1"]
NYUD_COLOR = [116.190, 97.203, 92.318]
NYUD_HHA = [132.431, 94.076, 118.477]


def run_config(name: str, *overrides: str) -> dict:
    return train(load_config(CONFIG_DIR / f"{name}.yaml", [*TINY, *overrides]))


def means_without(m: dict, excluded) -> float:
    iu = [v for i, v in enumerate(m["per_class_iu"]) if i not in set(excluded) and not math.isnan(v)]
    return sum(iu) / len(iu)


# --- the configs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_loads_and_validates(path):
    cfg = load_config(path)
    assert apply_preset(cfg) is cfg and cfg.train.lr > 0
    if path in PAPER:
        assert cfg.data.root  # a placeholder, documented as data.root=...
        text = path.read_text()
        assert text.startswith("# ") and "Source:" in text and f"fcnseg train {path.stem} data.root=" in text
        assert cfg.out == f"runs/{path.stem}"


# (config, model, dataset, lr, iterations): the reference solvers' values (see each file's header)
REFERENCE = [
    ("voc-fcn32s", "fcn32s", "sbd", 1e-10, 100000), ("voc-fcn16s", "fcn16s", "sbd", 1e-12, 100000),
    ("voc-fcn8s", "fcn8s", "sbd", 1e-14, 100000), ("voc-fcn8s-atonce", "fcn8s-atonce", "sbd", 1e-10, 300000),
    ("siftflow-fcn32s", "fcn32s", "siftflow", 1e-10, 100000), ("siftflow-fcn16s", "fcn16s", "siftflow", 1e-12, 100000),
    ("siftflow-fcn8s", "fcn8s", "siftflow", 1e-12, 100000),  # siftflow-fcn8s/solver.prototxt base_lr
    ("nyud-fcn32s-color", "fcn32s", "nyud", 1e-10, 100000), ("nyud-fcn32s-hha", "fcn32s", "nyud", 1e-10, 100000),
    ("nyud-fcn32s-rgbd", "fcn32s", "nyud", 1e-10, 100000), ("nyud-fcn32s-color-hha", "fcn32s", "nyud", 1e-12, 100000),
    ("context-fcn32s", "fcn32s", "pascal-context", 1e-10, 400000),
    ("context-fcn16s", "fcn16s", "pascal-context", 1e-12, 400000),
    ("context-fcn8s", "fcn8s", "pascal-context", 1e-14, 400000),
]


def test_paper_configs_follow_the_reference_solvers():
    assert {r[0] for r in REFERENCE} | {f"camvid-fcn{s}s" for s in (32, 16, 8)} == {p.stem for p in PAPER}
    for stem, name, dataset, lr, iters in REFERENCE:
        c = load_config(CONFIG_DIR / f"{stem}.yaml")
        assert (c.model.name, c.data.dataset, c.train.lr, c.train.iterations) == (name, dataset, lr, iters), stem
        # every net listed here has a solver.prototxt in the reference; no config may claim otherwise
        assert "ships no" not in (CONFIG_DIR / f"{stem}.yaml").read_text(), stem
        assert (c.train.preset, c.train.momentum, c.train.weight_decay, c.data.batch_size, c.train.loss_reduction,
                c.model.learn_upsampling, c.model.alignment) == ("caffe", 0.99, 5e-4, 1, "sum", False, "caffe"), stem
    sift8 = load_config(None, ["train.preset=caffe", "model.name=fcn8s", "data.dataset=siftflow"])
    assert sift8.train.lr == 1e-12 and load_config(None, ["train.preset=caffe", "model.name=fcn8s"]).train.lr == 1e-14
    voc = load_config(CONFIG_DIR / "voc-fcn8s-atonce.yaml").data
    assert (voc.train_split, voc.val_dataset, voc.val_split) == ("train", "voc", "seg11valid")
    camvid = load_config(CONFIG_DIR / "camvid-fcn8s.yaml")
    assert (camvid.train.preset, camvid.model.weights, camvid.data.root) == ("modern", "hed-vgg16", "data/camvid")


def test_staged_configs_start_from_the_previous_stage():
    outs = {load_config(p).out: load_config(p) for p in PAPER}
    staged = 0
    for p in PAPER:
        cfg = load_config(p)
        init = cfg.model.init_from
        sources = init.items() if isinstance(init, dict) else [(None, init)] if init else []
        for stream, path in sources:
            prev = outs.get(str(Path(path).parent))
            assert prev is not None and Path(path).name == "best.pt", f"{p.stem}: init_from {path} is no shipped run"
            assert prev.data.dataset == cfg.data.dataset and prev.train.preset == cfg.train.preset
            if cfg.train.preset == "caffe":  # the reference never raises the (unnormalised) lr at a stage
                assert prev.train.lr >= cfg.train.lr  # siftflow-fcn16s and -fcn8s solvers: both 1e-12
            if stream is None:  # same trunk weights: the same input preprocessing as the previous stage
                assert (prev.model.weights, prev.model.preprocessing) == (cfg.model.weights, cfg.model.preprocessing)
            else:
                assert prev.data.options["modality"] == stream
                assert prev.model.preprocessing == cfg.model.preprocessing[stream]
            staged += 1
    assert staged == 10


# --- preprocessing override, fusion fields ------------------------------------------------------------
def test_preprocessing_override_single_and_per_stream():
    tiny = dict(width=0.0625, fc_channels=16)
    m = build_model(ModelConfig(name="fcn32s", in_channels=4, preprocessing={"mean": NYUD_COLOR + [7.844]}, **tiny), 40)
    assert m.backbone.in_channels == 4 and m.preprocessing.bgr and m.preprocessing.scale == 1.0
    assert m.preprocessing.mean == (116.190, 97.203, 92.318, 7.844) and m.preprocessing.name == "config"
    x = torch.full((1, 4, 2, 2), 7.844)
    x[:, :3] = torch.tensor(NYUD_COLOR[::-1]).view(1, 3, 1, 1)  # RGB of the mean colour
    assert m.preprocessing(x).abs().max() < 1e-4
    per = {"color": {"mean": NYUD_COLOR}, "hha": {"bgr": False, "mean": NYUD_HHA}}
    fused = build_model(ModelConfig(name="fcn32s", streams={"color": 3, "hha": 3}, preprocessing=per, **tiny), 40)
    streams = {n: p for n, _, p in fused.preprocessing.streams}
    assert streams["color"].bgr and streams["color"].mean == tuple(NYUD_COLOR)
    assert not streams["hha"].bgr and streams["hha"].mean == tuple(NYUD_HHA)
    assert fused.streams["hha"].preprocessing == streams["hha"]
    same = build_model(ModelConfig(name="fcn32s", streams={"a": 3, "b": 3}, preprocessing={"scale": 2.0}, **tiny), 5)
    assert [p.scale for _, _, p in same.preprocessing.streams] == [2.0, 2.0]


@pytest.mark.parametrize("overrides, message", [
    (["model.preprocessing={bgr: true, offset: 3}"], r"model.preprocessing: unknown key\(s\) \['offset'\]"),
    (["model.preprocessing={std: [1, 0, 1]}"], "std must not contain 0"),
    (["model.preprocessing={mean: 3}"], "mean must be a list of numbers"),
    (["model.streams={color: 3, hha: 3}", "model.preprocessing={depth: {mean: [1]}}"], r"names streams \['depth'\]"),
    (["model.streams={color: 3}", "model.in_channels=4"], "not both"),
    (["model.streams={color: 0}"], "model.streams: .color.: must be a whole number >= 1"),
    (["model.init_from={color: a.pt}"], r"model.init_from names streams \['color'\]"),
])
def test_fusion_and_preprocessing_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["train.iterations=1", *overrides])


# --- SIFT Flow: absent classes ------------------------------------------------------------------------
def test_siftflow_exclude_from_means(tmp_path):
    base = write_siftflow(tmp_path, {"trainval": ["coast_arnat59"], "test": ["coast_natu975"]})
    absent = list(SIFTFLOW_ABSENT_IN_TEST)
    assert build_dataset("siftflow", base, "test").exclude_from_means == {"semantic": absent}
    assert build_dataset("siftflow", base, "test", task="semantic").exclude_from_means == absent
    assert build_dataset("siftflow", base, "test", task="geometric").exclude_from_means is None
    assert build_dataset("siftflow", base, "trainval").exclude_from_means is None


# --- end to end ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_sbd_train_scored_on_voc_seg11valid(tmp_path):
    write_sbd(tmp_path / "sbd")  # train: 2 ids; VOC holds only the 2 seg11valid images
    write_voc(tmp_path / "pascal", {"seg11valid": ["2007_000033", "2007_000042"]}, year="VOC2011")
    sbd, voc = tmp_path / "sbd" / "benchmark_RELEASE", tmp_path / "pascal" / "VOCdevkit" / "VOC2011"
    out = tmp_path / "run"
    assert main(["train", "voc-fcn8s-atonce", *TINY, f"data.root={sbd}", f"data.val_root={voc}", f"out={out}"]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["run_config"]["data"]["dataset"] == "sbd" and ckpt["metrics"]["images"] == 2
    assert ckpt["metrics"]["num_classes"] == 21 and ckpt["classes"][15] == "person"
    assert "score.out.pool3.weight" in ckpt["model"] and ckpt["config"]["name"] == "fcn8s-atonce"


@pytest.mark.slow
def test_siftflow_two_heads_both_scored_absent_classes_excluded(tmp_path, capsys):
    root = write_siftflow(tmp_path, {"trainval": ["coast_arnat59", "forest_for121"],
                                     "test": ["coast_natu975", "mountain_n213050"]})
    out = tmp_path / "run"
    assert main(["train", "siftflow-fcn32s", *TINY, f"data.root={root}", f"out={out}"]) == 0
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["model"]["score.semantic.fc7.weight"].shape[0] == 33
    assert ckpt["model"]["score.geometric.fc7.weight"].shape[0] == 3
    assert tuple(ckpt["preprocessing"]["mean"]) == (114.578, 115.294, 108.353) and ckpt["preprocessing"]["bgr"]
    header = (out / "eval.csv").read_text().splitlines()[0].split(",")
    assert "semantic.mean_iu" in header and "geometric.mean_iu" in header
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--no-progress"]) == 0
    assert "[semantic]" in capsys.readouterr().out
    for metrics in (ckpt["metrics"], json.loads((out / "metrics.json").read_text())):
        sem, geo = metrics["semantic"], metrics["geometric"]
        assert (sem["num_classes"], geo["num_classes"], metrics["images"]) == (33, 3, 2)
        assert sem["excluded"] == [8, 10, 15] and geo["excluded"] == []
        assert sem["class_pixels"][8] > 0  # the fixture has cows in "test": still left out of the mean
        assert sem["mean_iu"] == pytest.approx(means_without(sem, [8, 10, 15]))
        assert geo["mean_iu"] == pytest.approx(means_without(geo, []))


@pytest.mark.slow
def test_nyud_early_and_late_fusion(tmp_path):
    root = write_nyud(tmp_path, {"train": ["5003"], "val": ["5010"], "test": ["5001"]})
    res = run_config("nyud-fcn32s-rgbd", f"data.root={root}", f"out={tmp_path / 'rgbd'}")
    assert res["metrics"]["num_classes"] == 40 and res["metrics"]["images"] == 1  # trained on trainval (2)
    ckpt = load_checkpoint(tmp_path / "rgbd" / "last.pt")
    assert ckpt["model"]["backbone.stages.pool1.conv1_1.weight"].shape[1] == 4
    assert tuple(ckpt["preprocessing"]["mean"]) == (116.190, 97.203, 92.318, 7.844) and ckpt["preprocessing"]["bgr"]

    starts = {}
    for seed, stream in enumerate(("color", "hha")):  # stand-ins for the trained single-modality runs
        torch.manual_seed(seed)
        net = build_model(ModelConfig(name="fcn32s", width=0.0625, fc_channels=16), 40)
        starts[stream] = save_checkpoint(tmp_path / f"{stream}.pt", net)
    res = run_config("nyud-fcn32s-color-hha", f"data.root={root}", f"out={tmp_path / 'late'}",
                     f"model.init_from.color={starts['color']}", f"model.init_from.hha={starts['hha']}")
    assert res["metrics"]["num_classes"] == 40
    model, ckpt = model_from_checkpoint(tmp_path / "late" / "last.pt")
    state = model.state_dict()
    for stream, path in starts.items():  # lr 1e-12 for 2 steps: still the initialising nets
        for k, v in load_checkpoint(path)["model"].items():
            torch.testing.assert_close(state[f"streams.{stream}.{k}"], v, rtol=0, atol=1e-6)
    color, hha = ckpt["preprocessing"]["streams"]  # input channels 0:3, 3:6
    assert (color["stream"], hha["stream"]) == ("color", "hha") and color["channels"] == hha["channels"] == 3
    color, hha = color["preprocessing"], hha["preprocessing"]
    assert color["bgr"] and tuple(color["mean"]) == tuple(NYUD_COLOR)
    assert not hha["bgr"] and tuple(hha["mean"]) == tuple(NYUD_HHA)


@pytest.mark.slow
def test_pascal_context_59_classes_plus_background(tmp_path):
    write_context(tmp_path / "ctx")
    res = run_config("context-fcn32s", f"data.root={tmp_path / 'ctx' / 'VOCdevkit' / 'VOC2010'}",
                     f"out={tmp_path / 'run'}")
    assert res["metrics"]["num_classes"] == 60 and res["metrics"]["images"] == 1
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert len(ckpt["classes"]) == 60 and ckpt["classes"][0] == "background"


# --- malformed files not covered by test_data_matlab.py ---------------------------------------------
def _sift_semantic_without_s(tmp_path):
    base = write_siftflow(tmp_path, {"trainval": ["coast_arnat59"]})
    path = base / "SemanticLabels" / SIFT_SUBDIR / "coast_arnat59.mat"
    scipy.io.savemat(str(path), {"T": np.zeros((8, 8))})
    return lambda: build_dataset("siftflow", base, "trainval")[0], r"coast_arnat59\.mat: no variable 'S'"


def _nyud_label_without_segmentation(tmp_path):
    base = write_nyud(tmp_path, {"train": ["5003"]})
    scipy.io.savemat(str(base / "segmentation" / "img_5003.mat"), {"labels": np.zeros((6, 8))})
    return lambda: build_dataset("nyud", base, "train")[0], r"img_5003\.mat: no variable 'segmentation'"


def _nyud_depth_not_16_bit(tmp_path):
    base = write_nyud(tmp_path, {"train": ["5003"]})
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(base / "data" / "depth" / "img_5003.png")
    return (lambda: build_dataset("nyud", base, "train", modality="rgbd")[0],
            r"cannot read depth .*img_5003\.png: expected a single-channel 16-bit image")


@pytest.mark.parametrize("make", [_sift_semantic_without_s, _nyud_label_without_segmentation, _nyud_depth_not_16_bit],
                         ids=lambda f: f.__name__.strip("_"))
def test_malformed_file_is_named(tmp_path, make):
    load, message = make(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load()


@pytest.mark.slow
def test_siftflow_release_caffemodel_through_the_cli_and_an_unmapped_layer_warned(tmp_path, capsys):
    """model.weights=<siftflow release>: _sem/_geo heads load; a layer that maps nowhere reaches the user
    as one 'fcnseg: warning:' line naming it (never dropped silently)."""
    from fcnseg import create_model
    from fcnseg.models.weights.caffe import caffe_names, write_caffemodel
    model = create_model("fcn32s", {"semantic": 33, "geometric": 3}, width=0.0625, fc_channels=16)
    mods = dict(model.named_modules())
    blobs = {}
    for caffe, path in caffe_names(model).items():
        if caffe.endswith(("_semantic", "_geometric")) or caffe == "conv1_1_bgrd":
            continue
        blobs[caffe] = [p.detach() + 0.01 for p in mods[path].parameters(recurse=False)]
    blobs["score_fr_geox"] = blobs.pop("score_fr_geo")  # a name no net uses
    write_caffemodel(tmp_path / "siftflow-fcn32s.caffemodel", blobs)
    root = write_siftflow(tmp_path, {"trainval": ["coast_arnat59"], "test": ["coast_natu975"]})
    out = tmp_path / "run"
    assert main(["train", "siftflow-fcn32s", *TINY, "train.iterations=1", f"data.root={root}", f"out={out}",
                 f"model.weights={tmp_path / 'siftflow-fcn32s.caffemodel'}"]) == 0
    err = capsys.readouterr().err
    warned = [ln for ln in err.splitlines() if ln.startswith("fcnseg: warning:")]
    assert any("score_fr_geox" in ln and "siftflow-fcn32s.caffemodel" in ln for ln in warned), err
    assert any("score.geometric.fc7.weight" in ln for ln in warned), err
    assert not any("score_fr_sem" in ln or "score.semantic" in ln for ln in warned), err
