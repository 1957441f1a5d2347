"""Bench: FLOP counting, engine names, an end-to-end run on a tiny net, the peer's weight mapping."""
import importlib
import importlib.util
import json
import sys

import pytest
import torch

import fcnseg
from fcnseg.bench import count_flops, run_bench
from fcnseg.bench.measure import peak_rss_mb, reset_peak_rss, stats
from fcnseg.models.base import single


def test_flop_count_of_convs():
    x = torch.randn(1, 8, 10, 12)
    assert count_flops(torch.nn.Conv2d(8, 16, 1), x)["total"] == 2 * 8 * 16 * 10 * 12
    assert count_flops(torch.nn.Conv2d(8, 16, 3, padding=1), x)["total"] == 2 * 8 * 16 * 9 * 10 * 12


def test_flops_of_fcn8s_at_500_on_meta():
    with torch.device("meta"):
        m = fcnseg.create_model("fcn8s", 21).eval()
        x = torch.empty(1, 3, 500, 500)
    assert abs(count_flops(m, x)["total"] / 1e9 - 363.1) < 0.5  # the paper-faithful net at PASCAL scale


def test_stats_and_memory_helpers():
    s = stats([3.0, 1.0, 2.0, 10.0])
    assert s["median"] == 2.5 and s["min"] == 1.0 and s["max"] == 10.0 and s["q1"] <= s["median"] <= s["q3"]
    reset_peak_rss()
    assert peak_rss_mb() > 0


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="onnxruntime not installed")
def test_run_bench_end_to_end_tiny(tmp_path):
    out = tmp_path / "bench.json"
    report = run_bench(size=(48, 56), width=1 / 16, fc_channels=64, engines=["torch-fp32", "ort-fp32",
                       "torch-fp32-trim", "ort-fp32@same"], repeats=1, warmup=0, throughput_batch=2,
                       throughput_repeats=1, sgemm_n=64, out_json=out, out_md=tmp_path / "bench.md", progress=False)
    data = json.loads(out.read_text())
    assert data["schema"] == "fcnseg-bench-v1" and data == json.loads(json.dumps(report))
    assert {"machine", "sgemm", "flops", "engines", "options", "ratios_vs_peer"} <= set(data)
    assert len(data["machine"]["loadavg"]) == 3
    eng = {e["engine"]: e for e in data["engines"]}
    assert set(eng) == {"torch-fp32", "ort-fp32", "torch-fp32-trim", "ort-fp32@same"}
    for e in eng.values():
        assert "error" not in e, e.get("error")
        assert e["latency"]["seconds"]["median"] > 0 and e["peak_mem_b1_mb"] > 0
        assert e["throughput"]["batch"] == 2 and e["flops"] > 0 and e["first_call_seconds"] > 0
    assert eng["torch-fp32"]["train_step"]["seconds"]["median"] > 0
    assert set(eng["torch-fp32"]["train_step"]["breakdown"]) == {"data", "forward", "backward", "optimizer"}
    assert eng["ort-fp32"]["vs_reference"]["max_abs_diff"] <= 1e-4
    assert eng["torch-fp32-trim"]["vs_reference"]["max_abs_diff"] <= 1e-5
    assert "vs_reference" not in eng["ort-fp32@same"]  # no torch-fp32@same ran: nothing to compare with
    assert data["flops"]["caffe-trim"] < data["flops"]["caffe"]
    md = (tmp_path / "bench.md").read_text()
    assert "| torch-fp32-trim | yes |" in md and "First call, batch 1" in md and "`ort-fp32@same` " in md


@pytest.mark.peer  # tests/conftest.py: skips without torchfcn, fails under `make test`
def test_peer_loader_maps_every_layer():
    from fcnseg.bench.peer import load_peer_models, peer_state_dict

    load_peer_models()
    assert "fcn" not in sys.modules and "torchvision" not in sys.modules  # stubs only during the import
    with torch.device("meta"):
        ours = fcnseg.create_model("fcn8s", 21).state_dict()
        theirs = load_peer_models().FCN8s(n_class=21).state_dict()
    mapped = peer_state_dict(ours)
    assert set(mapped) == set(theirs)
    assert all(mapped[k].shape == theirs[k].shape for k in theirs)


@pytest.mark.slow
@pytest.mark.peer  # tests/conftest.py: skips without torchfcn, fails under `make test`
def test_peer_with_our_weights_gives_our_scores():
    from fcnseg.bench.peer import peer_fcn8s

    torch.manual_seed(0)
    m = fcnseg.create_model("fcn8s", 3).eval()
    with torch.no_grad():
        for p in m.score.parameters():
            p.normal_(0, 1e-3)
    peer = peer_fcn8s(3, m.state_dict())
    x = torch.randn(1, 3, 20, 26) * 50
    with torch.no_grad():
        a, b = single(m(x)), peer(x)
    assert a.shape == b.shape and a.abs().max() > 0
    assert (a - b).abs().max() <= 1e-6


STUB_TORCHVISION = """
import torch


class _Backbone(torch.nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return {"out": self.conv(x)}


class _Net(torch.nn.Module):  # torchvision's layout: backbone (a dict of taps), classifier

    def __init__(self, num_classes):
        super().__init__()
        self.backbone = _Backbone(num_classes)
        self.classifier = torch.nn.Identity()

    def forward(self, x):
        return {"out": self.classifier(self.backbone(x)["out"])}


def fcn_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=None):
    assert weights is None and weights_backbone is None and aux_loss is False
    return _Net(num_classes)
"""


@pytest.mark.slow
def test_torchvision_reference_engine_runs_beside_ours(tmp_path, monkeypatch):
    """The tvfcn engines (torchvision's FCN-ResNet50, a GPU speed reference) go through the same
    worker and report; a stand-in torchvision module plays the net here (CPU torch has none)."""
    pkg = tmp_path / "stub" / "torchvision" / "models" / "segmentation"
    pkg.mkdir(parents=True)
    (tmp_path / "stub" / "torchvision" / "__init__.py").write_text("")
    (tmp_path / "stub" / "torchvision" / "models" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text(STUB_TORCHVISION)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "stub"))
    monkeypatch.syspath_prepend(str(tmp_path / "stub"))
    for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
        monkeypatch.delitem(sys.modules, name)
    report = run_bench(size=(40, 48), width=1 / 16, fc_channels=32, num_classes=5, engines=["torch-fp32", "tvfcn-fp32"],
                       repeats=1, warmup=0, throughput_batch=2, throughput_repeats=1, sgemm_n=64, progress=False)
    eng = {e["engine"]: e for e in report["engines"]}
    tv = eng["tvfcn-fp32"]
    assert "error" not in tv, tv.get("error")
    assert tv["latency"]["seconds"]["median"] > 0 and tv["throughput"]["batch"] == 2
    assert report["flops"]["tvfcn"] == 2 * 3 * 5 * 9 * 40 * 48 and tv["flops"] == report["flops"]["tvfcn"]
    assert "vs_reference" not in tv and "train_step" not in tv and not tv["exact_path"]
    assert "train_step" in eng["torch-fp32"]


def _script(name):
    return importlib.import_module(f"scripts.{name}")


def test_gpu_targets_pick_our_best_engines_only():
    """The GPU targets table reads a CUDA report: best bf16 batch-16 throughput and best batch-1
    latency among our engines; the peer and torchvision's net are references, never candidates."""
    def eng(name, runtime, dtype, lat, ips):
        return {"engine": name, "spec": {"runtime": runtime, "dtype": dtype}, "latency": {"seconds": {"median": lat}},
                "throughput": {"batch": 16, "images_per_s": ips}}

    report = {"device": "cuda", "engines": [
        eng("peer", "peer", "fp32", 0.0005, 9000.0), eng("tvfcn-bf16-cl", "tvfcn", "bf16", 0.0001, 20000.0),
        eng("torch-fp32-cl", "torch", "fp32", 0.0040, 1500.0), eng("torch-bf16-cl", "torch", "bf16", 0.0035, 900.0),
        eng("torch-bf16-cl-graphs", "torch", "bf16", 0.0025, 1200.0), {"engine": "torch-fp16-cl", "error": "x"}]}
    text = _script("write_performance_md").gpu_targets(report)
    assert "| ≥ 1000 img/s, batch 16, bf16 | `torch-bf16-cl-graphs` | 1200 img/s | yes |" in text
    assert "| ≤ 3 ms at batch 1, from pinned host memory | `torch-bf16-cl-graphs` | 2.50 ms | yes |" in text
    assert "input on the GPU" not in text   # no on-device timings in this report
    report["engines"][4]["latency"]["seconds"]["median"] = 0.0045
    report["engines"][3]["latency_on_device"] = {"seconds": {"median": 0.0031}}
    text = _script("write_performance_md").gpu_targets(report)
    assert "| ≤ 3 ms at batch 1, from pinned host memory | `torch-bf16-cl` | 3.50 ms | no |" in text
    assert "| ≤ 3 ms at batch 1, input on the GPU | `torch-bf16-cl` | 3.10 ms | no |" in text


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="needs a machine without torchvision")
def test_failing_worker_keeps_its_stderr_and_the_report_is_written_after_each_engine(tmp_path, monkeypatch, capsys):
    """A worker that dies (tvfcn without torchvision) leaves its whole stderr in its row and in the log;
    the JSON is on disk after every engine (partial until the end); a failing evaluation split is a row,
    not the end of the bench."""
    import fcnseg.bench.core as core

    writes = []
    real_write = core.write_text
    monkeypatch.setattr(core, "write_text", lambda p, text: (writes.append(json.loads(text)), real_write(p, text)))

    def broken_eval(*a, **kw):
        raise RuntimeError("no sample here")

    monkeypatch.setattr(core, "_eval_split", broken_eval)
    out = tmp_path / "b.json"
    run_bench(size=(40, 48), width=1 / 16, fc_channels=32, num_classes=5, engines=["tvfcn-fp32", "torch-fp32"],
              repeats=1, warmup=0, throughput_batch=0, sgemm_n=0, train_step=False, eval_split=True, out_json=out)
    tv = writes[0]["engines"][0]
    assert writes[0]["partial"] and len(writes[0]["engines"]) == 1 and tv["engine"] == "tvfcn-fp32"
    assert tv["error"].startswith("exit code 1") and "Traceback" in tv["stderr"] and "torchvision" in tv["stderr"]
    assert len(tv["stderr"].splitlines()) > 3   # all of it, not the last line
    assert "[tvfcn-fp32] Traceback" in capsys.readouterr().err   # the log shows the worker's stderr as it comes
    final = json.loads(out.read_text())
    assert "partial" not in final and [e["engine"] for e in final["engines"]] == ["tvfcn-fp32", "torch-fp32"]
    assert "error" not in final["engines"][1]
    assert final["eval_split"] == {"error": "RuntimeError: no sample here"}
    assert "time split: failed (RuntimeError: no sample here)" in core.bench_markdown(final)


def test_worker_deadline_and_bench_time_budget():
    """A worker is killed at its deadline (its row says so); past the bench's budget no engine begins."""
    kw = dict(size=(40, 48), width=1 / 16, fc_channels=32, num_classes=5, repeats=1, warmup=0, throughput_batch=0,
              sgemm_n=0, train_step=False, progress=False)
    [row] = run_bench(engines=["torch-fp32"], worker_timeout=0.2, **kw)["engines"]
    assert row["error"] == "timed out (past the worker's deadline)" and "stderr" in row
    rows = run_bench(engines=["torch-fp32", "torch-fp32-cl"], time_budget=0.0, **kw)["engines"]
    assert [r["error"] for r in rows] == ["not run: the bench's time budget was spent"] * 2


def test_training_step_rows_parse_and_bad_ones_are_one_line_errors():
    from fcnseg.bench.train_step import DEFAULT_TRAIN_ROWS, TrainRow
    from fcnseg.errors import ConfigError

    assert [TrainRow.parse(n).name for n in DEFAULT_TRAIN_ROWS] == list(DEFAULT_TRAIN_ROWS)
    row = TrainRow.parse("torch-bf16-cl:pool4")
    assert row.frozen == "pool4" and row.engine.dtype == "bf16" and row.engine.channels_last and not row.exact
    for bad, why in [("ort-fp32", "a training-step row is"), ("torch-int8", "int8"), ("peer:pool4", "the peer has"),
                     ("torch-fp32-trim:pool3", "-trim does not apply"), ("torch-fp32:", "name the deepest"),
                     ("torch-fp32-compile", "a training-step row is")]:
        with pytest.raises(ConfigError, match=why) as e:
            TrainRow.parse(bad)
        assert str(e.value).startswith("--train-rows") and "\n" not in str(e.value)


def test_training_step_phases_and_partial_fine_tuning(monkeypatch):
    """A step's phases add up to it; a partial row (cached pool3) moves only the stages after the prefix,
    a whole-net row the trunk too; the trimmed row's steps equal the plain one's."""
    from support.nets import random_images

    import fcnseg.bench.train_step as ts
    from fcnseg.bench.train_step import PHASES, TrainRow, TrainStep, summarize

    monkeypatch.setattr(ts, "LR", 1e-2)  # a step that visibly moves the weights (the bench's 1e-10 costs the same)

    def net():
        torch.manual_seed(0)
        m = fcnseg.create_model("fcn8s", 5, width=1 / 16, fc_channels=32)
        with torch.no_grad():
            for p in m.score.parameters():
                p.normal_(0, 0.1)
        return m

    x = random_images(1, 37, 45)
    moved = {}
    for name in ("torch-fp32", "torch-fp32-trim", "torch-fp32:pool3"):
        m = net()
        before = {n: p.detach().clone() for n, p in m.named_parameters()}
        m.backbone.stages.fc7.drop6.p = m.backbone.stages.fc7.drop7.p = 0.0  # the same step in every row
        step = TrainStep(TrainRow.parse(name), m, m.preprocessing, x, 5)
        samples = [step(), step()]
        for s in samples:
            assert set(s) == {*PHASES, "total"} and abs(sum(s[p] for p in PHASES) - s["total"]) < 1e-6
        assert summarize(samples)["seconds"]["n"] == 2 and set(summarize(samples)["breakdown"]) == set(PHASES)
        moved[name] = {n: p.detach().clone() for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    trunk = {n for n in moved["torch-fp32"] if n.startswith("backbone.stages.pool")}
    assert trunk and set(moved["torch-fp32-trim"]) == set(moved["torch-fp32"])
    for n, v in moved["torch-fp32"].items():
        torch.testing.assert_close(moved["torch-fp32-trim"][n], v, rtol=1e-4, atol=1e-6)
    partial = set(moved["torch-fp32:pool3"])
    assert partial and not any(n.split(".")[2] in ("pool1", "pool2", "pool3") for n in partial if "backbone" in n)
    assert any(".pool4." in n for n in partial)  # conv4 trains from the cached pool3 maps


@pytest.mark.slow
def test_train_only_bench_end_to_end_tiny(tmp_path, monkeypatch):
    """``--train-only``: each row in its own worker, phases in the JSON, the table, a bf16 row not run where
    the CPU has no native bf16, and the page section rendered from the report."""
    import fcnseg.bench.train_bench as tb

    monkeypatch.setattr(tb, "native_bf16", lambda: False)
    out = tmp_path / "train-step.json"
    report = tb.run_train_bench(size=(40, 48), width=1 / 16, fc_channels=32, num_classes=5, repeats=1, warmup=0,
                                rows=["torch-fp32", "torch-fp32-trim", "torch-bf16", "torch-fp32:pool4"], sgemm_n=0,
                                out_json=out, out_md=tmp_path / "train-step.md", progress=False)
    data = json.loads(out.read_text())
    assert data["schema"] == "fcnseg-train-step-v1" and data == json.loads(json.dumps(report))
    rows = {r["row"]: r for r in data["rows"]}
    assert list(rows) == ["torch-fp32", "torch-fp32-trim", "torch-bf16", "torch-fp32:pool4"]
    assert rows["torch-bf16"]["error"].startswith("not run: no native bf16")
    for name in ("torch-fp32", "torch-fp32-trim", "torch-fp32:pool4"):
        ts = rows[name]["train_step"]
        assert "error" not in rows[name] and ts["seconds"]["median"] > 0 and ts["peak_mb"] > 0
        assert set(ts["breakdown"]) == {"data", "forward", "backward", "optimizer"}
    md = (tmp_path / "train-step.md").read_text()
    assert "| `torch-fp32:pool4` | from cached pool4" in md and "not run: no native bf16" in md
    section = _script("write_performance_md").train_section(data, None)
    assert "## CPU training step: fcn8s@vgg16, 5 classes, 40×48" in section and "not measured yet" in section
    with pytest.raises(fcnseg.errors.ConfigError, match="'pool9' is not a backbone stage"):
        tb.run_train_bench(size=(40, 48), width=1 / 16, fc_channels=32, num_classes=5, rows=["torch-fp32:pool9"],
                           sgemm_n=0, progress=False)


def test_run_process_measures_the_whole_fresh_process(tmp_path):
    from fcnseg.bench.measure import run_process

    code = "import time; b = bytearray(160 * 2**20); b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2)"
    row = run_process([sys.executable, "-c", code], output=tmp_path / "log")
    assert row["rc"] == 0 and row["peak_rss_mb"] >= 160 and row["wall_s"] >= 0.2 and row["other_load"] >= 0
    failed = run_process([sys.executable, "-c", "import sys; print('oops'); sys.exit(3)"], output=tmp_path / "log2")
    assert failed["rc"] == 3 and (tmp_path / "log2").read_text().strip() == "oops"


def test_command_rows_compare_with_the_peer_and_flag_shared_runs():
    bench = _script("bench_commands")
    run = {"rc": 0, "other_load": 0.1}
    runs = [{**run, "command": "peer", "count": 1, "wall_s": w, "peak_rss_mb": 1200.0} for w in (4.0, 4.4, 4.2)]
    runs += [{**run, "command": "predict-cold", "count": 1, "wall_s": w, "peak_rss_mb": 900.0} for w in (3.0, 3.3)]
    runs += [{**run, "command": "predict-cold", "count": 1, "wall_s": 9.0, "peak_rss_mb": 900.0, "other_load": 1.5}]
    rows = {r["command"]: r for r in bench.summarise(runs)}
    assert rows["peer"]["vs_peer"] == {"wall": 1.0, "rss": 1.0} and rows["peer"]["reliable"]
    cold = rows["predict-cold"]
    assert cold["wall_s"] == {"median": 3.3, "min": 3.0, "max": 9.0} and cold["vs_peer"]["wall"] == 3.3 / 4.2
    assert cold["vs_peer"]["rss"] == 0.75 and not cold["reliable"]
    text = _script("write_performance_md").commands_section(
        {"model": "m", "size": [500, 500], "command": "c", "wall_seconds": 60, "machine": {}, "summary": list(
            rows.values()), "commands": {"peer": "python scripts/peer_predict.py"}})
    assert "| `fcnseg predict`, cold engine cache | 1 | 3 | 3.30 (3.00–9.00) | 0.79× | 900 | 0.75× | 1.50 | **no** |" \
        in text
    assert "| one image, `fcnseg predict` (cold): wall time ≤ the peer's | 0.79× | yes |" in text
    assert "--engine torch`" not in text.split("| target |")[1]  # no torch rows measured: no such target row
