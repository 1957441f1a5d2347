"""Prediction through the default engine and with models built under inference/no-grad modes."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.cli.main import main
from fcnseg.infer.engines import ort_available
from fcnseg.models.base import single
from fcnseg.models.checkpoint import save_checkpoint


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
        assert single(m(m.preprocessing(x))).shape == (1, 5, 40, 44)
    with torch.inference_mode():
        assert single(m(m.preprocessing(x))).shape == (1, 5, 40, 44)
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


def _ref(m, x):
    with torch.no_grad():
        return single(m(m.preprocessing(x)))


def _x(h, w, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def _same(shift=0.0):
    """A net the trimmed engine cannot run (alignment "same"): ONNX Runtime on a dynamic-size export."""
    m = _tiny()
    same = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=16, alignment="same").eval()
    same.load_state_dict(m.state_dict())
    with torch.no_grad():
        same.score.out.fc7.weight.add_(shift)
    return same


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_engine_cache_reexports_a_planted_other_model_or_garbage(tmp_path):
    from fcnseg.infer.engines import _model_key, choose_engine

    m, x = _same(), _x(40, 40)
    single(choose_engine(_same(1.0), "cpu", cache_dir=tmp_path / "other").predict_scores(x))
    planted = next((tmp_path / "other").glob("*.onnx"))
    target = tmp_path / "cache" / f"fcnseg-{_model_key(m)}.onnx"
    target.parent.mkdir()
    for src, dst in ((planted, target), (planted.with_name(planted.name + ".sha256"),
                                         target.with_name(target.name + ".sha256"))):
        dst.write_bytes(src.read_bytes())  # another model's export and its checksum, under this one's name
    with pytest.warns(UserWarning, match="does not match this model"):
        engine = choose_engine(m, "cpu", cache_dir=tmp_path / "cache")
    assert (single(engine.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-4
    target.write_bytes(b"not an onnx file")
    with pytest.warns(UserWarning, match=str(target.name)):
        engine = choose_engine(m, "cpu", cache_dir=tmp_path / "cache")
    assert (single(engine.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-4
    again = choose_engine(m, "cpu", images=1, cache_dir=tmp_path / "cache")  # re-exported entry: verified, reused
    assert again.name == "ort-fp32@same" and (single(again.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-4


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_engine_cache_that_cannot_be_written_falls_back_with_a_warning(tmp_path):
    from fcnseg.infer.engines import choose_engine

    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")
    same, x = _same(), _x(36, 44)
    with pytest.warns(UserWarning, match="cannot be written"):
        dyn = choose_engine(same, "cpu", cache_dir=blocked / "engines")
    assert dyn.name == "ort-fp32@same" and (single(dyn.predict_scores(x)) - _ref(same, x)).abs().max() <= 1e-4


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_tiles_on_the_default_engine_are_stride_aligned_as_on_torch(tmp_path):
    from fcnseg.infer.engines import choose_engine
    from fcnseg.infer.predict import predict_labels

    m = _tiny()
    engine = choose_engine(m, "cpu", cache_dir=tmp_path)
    assert engine.output_stride == m.output_stride == 32
    rgb = (np.random.default_rng(0).random((70, 90, 3)) * 255).astype(np.uint8)
    tiled_torch = predict_labels(m, rgb, tile=48)
    tiled_auto = predict_labels(engine, rgb, tile=48)
    assert (tiled_auto == tiled_torch).mean() > 0.999


def _predict_argv(tmp_path, *extra):
    save_checkpoint(tmp_path / "c.pt", _tiny())
    image = _png(tmp_path / "in.png", 24, 28)
    return ["predict", str(image), "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "out"),
            "--engine", "torch", *extra]


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_interrupted_image_save_leaves_no_partial_file(tmp_path, monkeypatch, fmt):
    real = Image.Image.save
    argv = _predict_argv(tmp_path, "--overlay", fmt)
    calls = []

    def save(self, fp, *a, **kw):
        calls.append(1)
        if len(calls) == 2:  # the label PNG first, then the overlay
            fp.write(b"\x89PNG half")  # some bytes out, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return real(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", save)
    assert main(argv) == 130
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["in_label.png"]  # the overlay never appeared, its temporary was removed


def test_disk_full_while_predicting_names_the_file(tmp_path, monkeypatch, capsys):
    import errno

    argv = _predict_argv(tmp_path)

    def save(self, fp, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", save)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'out' / 'in_label.png'}: no space left on device" in err
    assert not list((tmp_path / "out").iterdir())


def test_eval_output_problems_name_the_path_before_the_work(tmp_path, monkeypatch, capsys):
    import fcnseg.cli.eval_cmd as ev  # where the command looks evaluate up (patching fcnseg.evaluate.scoring misses it)
    from fcnseg.data.fixtures import write_camvid

    root = write_camvid(tmp_path / "camvid", {"val": 1}, size=(16, 16))
    save_checkpoint(tmp_path / "c.pt", fcnseg.create_model("fcn8s", 11, width=1 / 16, fc_channels=16))
    (tmp_path / "file").write_text("x")

    def no_work(*a, **kw):
        raise AssertionError("evaluated although the output folder cannot be made")

    monkeypatch.setattr(ev, "evaluate", no_work)
    out = tmp_path / "file" / "metrics"
    assert main(["eval", "--checkpoint", str(tmp_path / "c.pt"), "--dataset", "camvid", "--root", str(root),
                 "--split", "val", "--no-progress", "--out", str(out)]) == 2
    assert f"cannot write {out}: not a directory" in capsys.readouterr().err


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    from fcnseg import visualize

    calls = []
    real = visualize.atomic_write

    def spy(path, *a, **kw):
        calls.append(Path(path).name)
        return real(path, *a, **kw)

    monkeypatch.setattr(visualize, "atomic_write", spy)
    visualize.plot_confusion(np.eye(3), ["a", "b", "c"], tmp_path / "confusion.png")
    assert calls == ["confusion.png"] and Image.open(tmp_path / "confusion.png").size[0] > 10
