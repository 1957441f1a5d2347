"""Prediction through the default engine and with models built under inference/no-grad modes."""
import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.cli.main import main
from fcnseg.engine.checkpoint import save_checkpoint
from fcnseg.engine.runtime import ort_available


def _tiny(k=5):
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", k, width=1 / 16, fc_channels=16)  # Caffe-aligned (pad 100)
    with torch.no_grad():
        for p in m.score.parameters():
            p.normal_(std=0.1)
    return m.eval()


def _png(path, h, w, seed=0):
    rgb = (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(path)
    return path


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.no_grad])
def test_model_built_under_inference_or_no_grad_runs_and_predicts(mode):
    with mode():
        torch.manual_seed(0)
        m = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=16).eval()
    ref = _tiny()  # the same seed, built normally (score layers differ: compare shapes and the diagonal)
    x = torch.rand(1, 3, 40, 44) * 255
    with torch.no_grad():
        assert m(m.preprocessing(x)).shape == (1, 5, 40, 44)
    with torch.inference_mode():
        assert m(m.preprocessing(x)).shape == (1, 5, 40, 44)
    assert m.predict(x[0]).shape == (40, 44)
    assert ref.predict(x).shape == (1, 40, 44)


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_cli_predicts_a_folder_of_mixed_sizes_on_the_default_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    save_checkpoint(tmp_path / "c.pt", _tiny())
    (tmp_path / "in").mkdir()
    for i, (h, w) in enumerate([(40, 48), (32, 36), (40, 48)]):
        _png(tmp_path / "in" / f"img{i}.png", h, w, i)
    for engine in ("auto", "torch"):
        assert main(["predict", str(tmp_path / "in"), "--checkpoint", str(tmp_path / "c.pt"),
                     "--out", str(tmp_path / engine), "--overlay", "none", "--engine", engine]) == 0
    for i in range(3):
        a, b = (np.array(Image.open(tmp_path / e / f"img{i}_label.png")) for e in ("auto", "torch"))
        assert a.shape == b.shape and (a == b).mean() > 0.99
