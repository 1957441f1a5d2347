"""Inference engines: one interface, same scores; the exact border-trimming path."""
import logging

import pytest
import torch
from support.nets import random_images as _img
from support.nets import reference_scores as _ref
from support.nets import tiny_fcn as _tiny
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import fcnseg
from fcnseg.errors import ConfigError
from fcnseg.infer.engines import TorchEngine, choose_engine, ort_available
from fcnseg.models.base import single
from fcnseg.models.trimmed import TrimmedFCN, trim_supported


@pytest.mark.parametrize("kwargs", [{}, {"channels_last": True}, {"trim": True}, {"trim": True, "channels_last": True}])
def test_torch_engine_fp32_matches_model(kwargs):
    m = _tiny()
    engine = TorchEngine(m, **kwargs)
    assert engine.exact
    for i, (h, w) in enumerate([(50, 70), (97, 51), (1, 1)]):
        x = _img(1 + i % 2, h, w, i)
        assert (single(engine.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-5
    assert engine.predict_labels(x[0]).shape == (1, 1, 1)


@pytest.mark.parametrize("name", ["fcn8s", "fcn32s", "fcn16s"])
def test_trim_is_exact_on_many_sizes(name):
    m = _tiny(name=name)
    t = TrimmedFCN(m)
    for i, (h, w) in enumerate([(1, 1), (5, 9), (31, 200), (64, 80), (97, 51), (130, 113), (16, 17)]):
        x = m.preprocessing(_img(1, h, w, i))
        with torch.no_grad():
            ref, out = single(m(x)), single(t(x))
        assert t._plan(h, w) is not None  # the trimmed path was taken
        assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5 * max(1.0, ref.abs().max())


def test_trim_in_strips_is_exact():
    m = _tiny()
    t = TrimmedFCN(m, strip_bytes=4096)  # forces several strips per stage
    for i, (h, w) in enumerate([(64, 80), (97, 51), (33, 20)]):
        x = m.preprocessing(_img(2, h, w, i))
        with torch.no_grad():
            assert (single(t(x)) - single(m(x))).abs().max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("trim", [False, True])
def test_torch_compile_engine_is_exact_and_compiles_once_per_size(trim, caplog):
    m = _tiny()
    engine = TorchEngine(m, compile=True, trim=trim)
    assert engine.name == "torch-fp32" + ("-trim" if trim else "") + "-compile"
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        for i, (h, w) in enumerate([(64, 80), (64, 80), (50, 70)]):
            x = _img(2, h, w, i)
            assert (single(engine.predict_scores(x)) - _ref(m, x)).abs().max() <= 1e-4
    # a graph break inside the trimmed stages would compile every layer shape on its own, up to the limit
    assert "hit config." not in caplog.text and "graph break" not in caplog.text.lower()


class _OpLog(TorchDispatchMode):
    """Records each aten op, and those given a CPU tensor."""

    def __init__(self):
        super().__init__()
        self.ops, self.cpu_inputs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append(func._schema.name)
        if any(isinstance(a, torch.Tensor) and a.device.type == "cpu" for a in tree_flatten((args, kwargs))[0]):
            self.cpu_inputs.append(func._schema.name)
        return func(*args, **kwargs)


def test_trim_off_the_cpu_has_no_host_tensors_strips_or_matmul_convs(monkeypatch):
    """On a non-CPU device (``meta`` stands in for CUDA) the trimmed forward touches no CPU tensor
    (so a CUDA graph can capture it), runs no strips and keeps fc6/fc7 as convolutions."""
    import fcnseg.models.trimmed as trim

    monkeypatch.setattr(trim, "_STRIP_BYTES", 4096)  # on the CPU this size would strip every stage
    monkeypatch.setattr(trim, "_MM_BYTES", 0)        # ... and run every later conv as a matmul

    def ops(device, **kw):
        m = _tiny().to(device)
        t = TrimmedFCN(m, **kw)
        x = m.preprocessing(_img(2, 64, 80).to(device))
        with torch.no_grad():
            t(x)  # plans and background skeletons are made on the first call
            with _OpLog() as log:
                t(x)
        return log

    meta, cpu, cpu_plain = ops("meta"), ops("cpu"), ops("cpu", strip_bytes=0)
    assert meta.cpu_inputs == []
    assert "aten::im2col" in cpu_plain.ops and "aten::im2col" not in meta.ops  # conv5_x/fc6 as matmuls on the CPU only
    assert meta.ops.count("aten::convolution") > cpu_plain.ops.count("aten::convolution")
    assert cpu.ops.count("aten::convolution") > cpu_plain.ops.count("aten::convolution")  # strips on the CPU


def test_trim_counts_fewer_flops():
    from fcnseg.bench.measure import count_flops

    m = _tiny()
    t = TrimmedFCN(m)
    x = torch.zeros(1, 3, 200, 200)
    t(x)  # background skeleton: one-off
    assert count_flops(t, x)["total"] < 0.75 * count_flops(m, x)["total"]


def test_trim_multi_head_and_unsupported():
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", {"a": 3, "b": 2}, width=1 / 16, fc_channels=64).eval()
    x = m.preprocessing(_img(1, 40, 44))
    with torch.no_grad():
        ref, out = m(x), TrimmedFCN(m)(x)
    assert all((out[k] - ref[k]).abs().max() <= 1e-5 for k in ref)
    same = _tiny("same")
    assert not trim_supported(same)
    with pytest.raises(ValueError, match="TrimmedFCN"):
        TorchEngine(same, trim=True)


def test_bf16_is_close_not_exact():
    m = _tiny()
    engine = TorchEngine(m, dtype="bf16")
    assert not engine.exact
    x = _img(1, 40, 48)
    out, ref = single(engine.predict_scores(x)), _ref(m, x)
    assert out.dtype == torch.float32 and (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_bad_options_are_clear_errors():
    m = _tiny()
    with pytest.raises(ConfigError, match="dtype"):
        TorchEngine(m, dtype="int4")
    with pytest.raises(ConfigError, match="CUDA"):
        TorchEngine(m, cuda_graphs=True)
    with pytest.raises(ValueError, match="N×C×H×W"):
        TorchEngine(m).predict_scores(torch.zeros(4, 4))


def test_evaluate_scores_an_engine_as_it_scores_its_model():
    from fcnseg.evaluate.scoring import evaluate

    m = _tiny()
    g = torch.Generator().manual_seed(1)
    items = [(_img(1, 33, 41, s)[0], torch.randint(0, 5, (33, 41), generator=g)) for s in range(2)]
    by_model = evaluate(m, items, progress=False)
    by_engine = evaluate(TorchEngine(m), items, progress=False)
    assert by_engine["confusion"] == by_model["confusion"] and by_model["images"] == by_engine["images"] == 2


def _no_export(monkeypatch):
    import fcnseg.infer.engines as engines

    def refuse(*a, **kw):
        raise AssertionError("exported although nothing had to be")

    monkeypatch.setattr(engines, "export_onnx", refuse)


@pytest.mark.parametrize("name", ["fcn8s", "fcn16s", "fcn32s"])
def test_choose_engine_cpu_caffe_vgg_is_trimmed_channels_last_torch_for_every_size(name, monkeypatch, tmp_path):
    _no_export(monkeypatch)  # nothing to export, for any number of images or sizes
    m = _tiny(name=name)
    for images in (1, None):
        engine = choose_engine(m, "cpu", images=images, cache_dir=tmp_path)
        assert isinstance(engine, TorchEngine) and engine.exact and engine.name == "torch-fp32-cl-trim"
    for i, (h, w) in enumerate([(45, 38), (60, 52), (1, 1), (97, 51)]):
        x = _img(1 + i % 2, h, w, i)
        assert (single(engine.predict_scores(x)) - _ref(_tiny(name=name), x)).abs().max() <= 1e-5
    assert not list(tmp_path.iterdir())


def test_channels_last_leaves_the_matmul_weights_where_they_are(monkeypatch):
    import fcnseg.models.trimmed as trim

    m = _tiny()
    fc6, conv = m.backbone.stages.fc7.fc6.weight, m.backbone.stages.pool1.conv1_1.weight
    monkeypatch.setattr(trim, "_MM_BYTES", fc6.numel() * fc6.element_size())  # as VGG16's fc6: a matmul
    before = fc6.data_ptr()
    TorchEngine(m, trim=True, channels_last=True)
    assert fc6.data_ptr() == before and fc6.is_contiguous()  # not copied (twice) for nothing
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_choose_engine_cpu_other_nets_export_when_it_pays_or_is_cached(monkeypatch, tmp_path):
    import fcnseg.infer.engines as engines
    from fcnseg.models.checkpoint import state_checksum

    monkeypatch.setattr(engines, "ORT_PAYBACK_IMAGES", 10)
    same, x = _tiny(alignment="same"), _img(1, 45, 38)
    assert not trim_supported(same)
    few = choose_engine(same, "cpu", images=9, cache_dir=tmp_path)
    assert isinstance(few, TorchEngine) and few.name == "torch-fp32@same" and not list(tmp_path.iterdir())
    for images in (10, None):  # enough images, or open-ended (a server): one dynamic-size export, cached
        engine = choose_engine(same, "cpu", images=images, cache_dir=tmp_path)
        assert engine.name == "ort-fp32@same" and engine.exact
        assert (single(engine.predict_scores(x)) - _ref(same, x)).abs().max() <= 1e-4
        assert len(list(tmp_path.glob("*.onnx"))) == 1
    _no_export(monkeypatch)
    checksum = state_checksum(same.state_dict())  # the checkpoint's verified one names the same entry
    cached = choose_engine(same, "cpu", images=1, cache_dir=tmp_path, checksum=checksum)
    assert cached.name == "ort-fp32@same"  # verified in the cache: used even for one image
    assert (single(cached.predict_scores(x)) - _ref(same, x)).abs().max() <= 1e-4
    assert choose_engine(same, "cpu", images=1).name == "torch-fp32@same"  # no cache given: none consulted


@pytest.mark.parametrize("channels_last", [False, True])
def test_trim_matmul_convs_are_exact(monkeypatch, channels_last):
    import fcnseg.models.trimmed as trim

    monkeypatch.setattr(trim, "_MM_BYTES", 0)  # every conv after the trimmed stages runs as a matmul
    m = _tiny()
    engine = TorchEngine(m, trim=True, channels_last=channels_last)
    assert m.backbone.stages.fc7.fc6.weight.is_contiguous()
    for i, (h, w) in enumerate([(50, 70), (97, 51)]):
        x = _img(2, h, w, i)
        ref = _ref(_tiny(), x)
        assert (single(engine.predict_scores(x)) - ref).abs().max() <= 1e-5
