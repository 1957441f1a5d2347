"""Hostile calls of the public API outside predict/create_model: a TypeError/ValueError naming the argument,
never an AttributeError/KeyError/IndexError from deep inside."""
import numpy as np
import pytest
import torch

from fcnseg import create_model
from fcnseg.data import build_dataset
from fcnseg.evaluate.metrics import ConfusionMatrix, compute_metrics
from fcnseg.evaluate.scoring import evaluate
from fcnseg.infer.export import export_onnx, export_torch
from fcnseg.models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def tiny():
    return create_model("fcn8s", 3, width=1 / 16, fc_channels=16)


def _calls(tmp, m):
    onnx_path = tmp / "e.onnx"
    long = lambda *s: torch.zeros(*s, dtype=torch.long)  # noqa: E731
    return [
        (lambda: ConfusionMatrix("3"), TypeError, "num_classes"),
        (lambda: ConfusionMatrix(3).update([1], [1]), TypeError, "pred"),
        (lambda: ConfusionMatrix(3).update(torch.zeros(2, 2), long(2, 2)), TypeError, "pred"),
        (lambda: ConfusionMatrix(3).update(long(2, 2), torch.zeros(2, 2)), TypeError, "label"),
        (lambda: compute_metrics("abc"), TypeError, "matrix"),
        (lambda: compute_metrics(-np.ones((3, 3))), ValueError, "negative"),
        (lambda: compute_metrics(np.eye(3), exclude="a"), TypeError, "exclude"),
        (lambda: load_checkpoint(None), TypeError, "path"),
        (lambda: load_checkpoint(3), TypeError, "path"),
        (lambda: model_from_checkpoint(None), TypeError, "path"),
        (lambda: save_checkpoint(tmp / "s.pt", "model"), TypeError, "model"),
        (lambda: save_checkpoint(None, m), TypeError, "path"),
        (lambda: export_onnx("model", onnx_path), TypeError, "model"),
        (lambda: export_onnx(m, None), TypeError, "path"),
        (lambda: export_onnx(m, onnx_path, example_size=(-1, 5)), ValueError, "example_size"),
        (lambda: export_onnx(m, onnx_path, example_size="ab"), TypeError, "example_size"),
        (lambda: export_onnx(m, onnx_path, atol=-1), ValueError, "atol"),
        (lambda: export_onnx(m, onnx_path, opset=999), ValueError, "opset"),
        (lambda: export_onnx(m, onnx_path, opset="17"), ValueError, "opset"),
        (lambda: export_torch(m, tmp / "e.pt2", example_size=(0, 8)), ValueError, "example_size"),
        (lambda: build_dataset(3, tmp, "val"), TypeError, "name"),
        (lambda: build_dataset("camvid", None, "val"), TypeError, "root"),
        (lambda: build_dataset("camvid", tmp, 5), TypeError, "split"),
        (lambda: evaluate(m, "dataset", progress=False), TypeError, "dataset"),
        (lambda: evaluate("model", [], progress=False), TypeError, "model"),
        (lambda: evaluate(m, [], batch_size=1.5, progress=False), TypeError, "batch_size"),
    ]


def test_hostile_calls_name_the_argument(tmp_path, tiny):
    calls = _calls(tmp_path, tiny)
    bad = []
    for i, (call, kind, word) in enumerate(calls):
        try:
            call()
            bad.append(f"#{i}: no error")
        except kind as e:
            if word not in str(e):
                bad.append(f"#{i}: {type(e).__name__}: {e} (does not name {word!r})")
        except Exception as e:  # noqa: BLE001 - collecting every deviation
            bad.append(f"#{i}: {type(e).__name__}: {e}")
    assert not bad, "\n".join(bad)
    assert not (tmp_path / "e.onnx").exists()
