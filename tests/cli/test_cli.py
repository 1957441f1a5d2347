"""The command line end to end: train → eval → predict on the bundled sample, and the demo."""
import json

import pytest
from support.faults_cli import TINY_BENCH

from fcnseg.cli.main import main
from fcnseg.data import sample_root

TINY = ["model.width=0.0625", "model.fc_channels=16", "model.weights=null", "data.max_items=4",
        "train.epochs=1", "train.progress=false", "data.resize=3", "data.batch_size=2"]


def test_every_command_has_help(capsys):
    for cmd in ["train", "eval", "predict", "demo", "export", "bench", "reproduce", "serve", "models"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: fcnseg " + cmd in capsys.readouterr().out


def test_models_lists_the_family(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "fcn8s-atonce" in out and "fcn32s@alexnet" in out


@pytest.mark.slow
def test_train_eval_predict_round_trip(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "camvid-fcn32s", f"data.root={sample_root()}", f"out={out}", *TINY]) == 0
    assert (out / "last.pt").is_file() and (out / "log.csv").is_file()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "ev"), "--no-progress"]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert 0 <= metrics["mean_iu"] <= 1 and (tmp_path / "ev" / "confusion.png").is_file()
    val = sorted((sample_root() / "val").iterdir())[:2]
    assert main(["predict", *map(str, val), "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "p")]) == 0
    text = capsys.readouterr().out
    assert "mean IU" in text and "2 image(s)" in text
    assert len(list((tmp_path / "p").glob("*_label.png"))) == 2


@pytest.mark.slow
def test_demo_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--predict", "2", "data.max_items=6", "data.batch_size=2", "train.epochs=1",
                 "train.progress=false"]) == 0
    for name in ["metrics.json", "report.md", "curves.png", "confusion.png", "last.pt"]:
        assert (out / name).is_file(), name
    assert len(list((out / "predictions").glob("*_overlay.png"))) == 2
    assert "Report:" in capsys.readouterr().out


def test_predict_with_the_fast_engine_matches_torch(tmp_path, monkeypatch, capsys):
    """``--engine auto`` (on CPU the border-trimmed channels_last engine) writes the same labels as the PyTorch
    model."""
    import numpy as np
    import torch
    from PIL import Image

    import fcnseg
    from fcnseg.models.checkpoint import save_checkpoint

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=16)
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.1)
    save_checkpoint(tmp_path / "c.pt", model)
    image = sorted((sample_root() / "val").iterdir())[0]
    for engine in ("torch", "auto"):
        assert main(["predict", str(image), "--checkpoint", str(tmp_path / "c.pt"), "--out",
                     str(tmp_path / engine), "--engine", engine, "--overlay", "none"]) == 0
    a, b = (np.array(Image.open(next((tmp_path / e).glob("*_label.png")))) for e in ("torch", "auto"))
    assert (a == b).mean() > 0.999 and len(np.unique(a)) > 1


@pytest.mark.parametrize("alignment", ["caffe", "same"])  # trimmed PyTorch; ONNX Runtime (the export paying)
@pytest.mark.parametrize("options", [[], ["--flip"], ["--batch-size", "2"]], ids=["plain", "flip", "batch2"])
def test_eval_with_the_fast_engine_scores_as_torch(tmp_path, monkeypatch, capsys, alignment, options):
    import torch

    import fcnseg
    import fcnseg.infer.engines as engines
    from fcnseg.data.fixtures import write_camvid
    from fcnseg.models.checkpoint import save_checkpoint

    if alignment == "same" and not engines.ort_available():
        pytest.skip("onnxruntime not installed")
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engines, "ORT_PAYBACK_IMAGES", 1)  # 3 images pay for an export here
    root = write_camvid(tmp_path / "camvid", {"val": 3}, size=(37, 45))
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn8s", 11, width=1 / 16, fc_channels=16, alignment=alignment)
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.1)
    save_checkpoint(tmp_path / "c.pt", model)
    metrics = {}
    for engine in ("torch", "auto"):
        assert main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--dataset", "camvid", "--root", str(root),
                     "--split", "val", "--engine", engine, "--out", str(tmp_path / engine), "--no-progress",
                     *options]) == 0
        metrics[engine] = json.loads((tmp_path / engine / "metrics.json").read_text())
        metrics[engine].pop("timing")
    assert metrics["auto"] == metrics["torch"] and metrics["torch"]["images"] == 3
    assert len({v for row in metrics["torch"]["confusion"] for v in row}) > 2  # not one label everywhere
    assert any((tmp_path / "cache").rglob("*.onnx")) == (alignment == "same")


def _disk_full(monkeypatch):
    """Every atomic write fails as on a full disk (at the fsync, after the data went to the temporary file)."""
    import errno
    import os

    import fcnseg.atomic

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fcnseg.atomic.os, "fsync", full)


@pytest.mark.slow
def test_export_on_a_full_disk_names_the_output(tmp_path, monkeypatch, capsys):
    import torch

    import fcnseg
    from fcnseg.models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ck = save_checkpoint(tmp_path / "c.pt", fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=16))
    _disk_full(monkeypatch)
    out = tmp_path / "net.onnx"
    assert main(["export", "--checkpoint", str(ck), "--output", str(out), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: no space left on device" in err, err
    assert not out.exists() and not list(tmp_path.glob(".net.onnx.*"))


@pytest.mark.slow
def test_bench_report_on_a_full_disk_names_the_path(tmp_path, monkeypatch, capsys):
    _disk_full(monkeypatch)
    out = tmp_path / "bench.json"
    assert main(["bench", *TINY_BENCH, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {out}: no space left on device" in err, err
    assert not out.exists()
