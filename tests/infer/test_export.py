"""ONNX / torch.export export: symbolic shapes, metadata, int8 copies, fixed-size trimmed graphs."""
import pytest
import torch

import fcnseg
from fcnseg.infer.export import ExportError, export_onnx, export_torch, quantize_onnx, read_onnx_metadata
from fcnseg.models.base import single

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
from fcnseg.infer.engines import OrtEngine  # noqa: E402

SIZES = [(50, 70), (97, 51), (130, 33)]


def _tiny(alignment="caffe", classes=5):
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", classes, width=1 / 16, fc_channels=64, alignment=alignment).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
    return m


def _ref(m, x):
    with torch.no_grad():
        return single(m(m.preprocessing(x)))


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_onnx_matches_pytorch_on_three_sizes(tmp_path, alignment):
    m = _tiny(alignment)
    path = export_onnx(m, tmp_path / "m.onnx", example_size=(64, 64))
    engine = OrtEngine(path)
    for i, (h, w) in enumerate(SIZES):
        x = torch.rand(1 + i % 2, 3, h, w, generator=torch.Generator().manual_seed(i)) * 255
        ref = _ref(m, x)
        out = single(engine.predict_scores(x))
        assert out.shape == ref.shape == (x.shape[0], 5, h, w)
        assert ref.abs().max() > 0.1  # not a trivially zero net
        assert (out - ref).abs().max() <= 1e-4


def test_onnx_graph_has_symbolic_shapes(tmp_path):
    import onnx

    path = export_onnx(_tiny(), tmp_path / "m.onnx", verify=False)
    g = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    out_dims = [d.dim_param or d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    assert out_dims == ["batch", 5, "height", "width"]


def test_metadata_carries_preprocessing_and_classes(tmp_path):
    m = _tiny()
    meta = read_onnx_metadata(export_onnx(m, tmp_path / "m.onnx", verify=False))
    assert meta["preprocessing"] == m.preprocessing.to_dict() | {"mean": list(m.preprocessing.mean),
                                                                 "std": list(m.preprocessing.std)}
    assert meta["num_classes"] == 5 and meta["heads"] == {"out": 5}
    assert meta["config"]["name"] == "fcn8s"


def test_multi_head_export(tmp_path):
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", {"semantic": 4, "geometric": 3}, width=1 / 16, fc_channels=64).eval()
    engine = OrtEngine(export_onnx(m, tmp_path / "m.onnx"))
    x = torch.rand(1, 3, 40, 52) * 255
    out = engine.predict_scores(x)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"semantic": (1, 4, 40, 52), "geometric": (1, 3, 40, 52)}
    assert engine.predict_labels(x)["semantic"].shape == (1, 40, 52)


def test_bad_path_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="must end in .onnx"):
        export_onnx(_tiny(), tmp_path / "m.bin")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_onnx_metadata(tmp_path / "missing.onnx")


def test_trimmed_static_export_is_exact_and_size_checked(tmp_path):
    m = _tiny()
    path = export_onnx(m, tmp_path / "t.onnx", dynamic=False, trim=True, example_size=(61, 45))
    engine = OrtEngine(path)
    assert engine.name == "ort-fp32-trim" and engine.input_size == [61, 45]
    x = torch.rand(2, 3, 61, 45, generator=torch.Generator().manual_seed(3)) * 255
    assert (single(engine.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-4
    with pytest.raises(ValueError, match="exported for 61×45"):
        engine.predict_scores(torch.rand(1, 3, 60, 45))
    with pytest.raises(ExportError, match="dynamic=False"):
        export_onnx(m, tmp_path / "u.onnx", trim=True)


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_int8_copy_runs_and_is_marked(tmp_path, mode):
    m = _tiny()
    src = export_onnx(m, tmp_path / "m.onnx", verify=False)
    calib = [torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(i)) * 255 for i in range(2)]
    q = quantize_onnx(src, tmp_path / "m.int8.onnx", calib if mode == "static" else None, mode=mode)
    engine = OrtEngine(q)
    assert engine.quantized == f"int8-{mode}" and not engine.exact
    assert engine.name == ("ort-int8-dynamic" if mode == "dynamic" else "ort-int8")
    x = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(9)) * 255
    out, ref = single(engine.predict_scores(x)), _ref(m, x)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() < 0.5 * ref.abs().max()  # lossy, but the same function


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(torch.export.Dim, "AUTO"), reason="dynamic torch.export needs torch >= 2.6")
def test_torch_export_dynamic(tmp_path):
    m = _tiny()
    path = export_torch(m, tmp_path / "m.pt2")
    ep = torch.export.load(str(path))
    for h, w in SIZES[:2]:
        x = m.preprocessing(torch.rand(1, 3, h, w) * 255)
        with torch.no_grad():
            assert (single(ep.module()(x)) - single(m(x))).abs().max() <= 1e-5
    with pytest.raises(ExportError, match=".pt2"):
        export_torch(m, tmp_path / "m.onnx")


def _disk_full(monkeypatch):
    import errno

    import fcnseg.atomic

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fcnseg.atomic.os, "fsync", fsync)


def test_export_writes_are_atomic_and_name_the_path(tmp_path, monkeypatch):
    from fcnseg.atomic import WriteError
    from fcnseg.infer.export import _set_metadata

    m = _tiny()
    src = export_onnx(m, tmp_path / "m.onnx", verify=False)
    before = src.read_bytes()
    _disk_full(monkeypatch)
    with pytest.raises(WriteError, match=f"cannot write {tmp_path / 'm.int8.onnx'}: no space left on device"):
        _set_metadata(src, {"fcnseg.quantized": '"int8-static"'}, tmp_path / "m.int8.onnx")
    with pytest.raises(WriteError, match=f"cannot write {src}: no space left on device"):
        _set_metadata(src, {"fcnseg.quantized": '"int8-static"'})
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.skipif(not hasattr(torch.export.Dim, "AUTO"), reason="dynamic torch.export needs torch >= 2.6")
def test_torch_export_write_is_atomic_and_names_the_path(tmp_path, monkeypatch):
    from fcnseg.atomic import WriteError

    _disk_full(monkeypatch)
    with pytest.raises(WriteError, match="m.pt2: no space left on device"):
        export_torch(_tiny(), tmp_path / "m.pt2", dynamic=False)
    assert not list(tmp_path.iterdir())
