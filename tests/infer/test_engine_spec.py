"""Engine names: one spec type parses them, names every engine and builds it."""
import json
from pathlib import Path

import pytest
import torch

import fcnseg
from fcnseg.bench.core import DEFAULT_ENGINES
from fcnseg.errors import ConfigError
from fcnseg.infer.engines import TorchEngine, build_engine, ort_available
from fcnseg.infer.spec import EngineSpec
from scripts.bench_quant_miou import ENGINES as QUANT_ENGINES

ROOT = Path(__file__).resolve().parents[2]


def _report_names() -> set[str]:
    names = set()
    for path in (ROOT / "docs" / "bench").glob("*.json"):  # bench reports name engines; command timings do not
        engines = json.loads(path.read_text()).get("engines", [])
        names |= {e["engine"] for e in engines} if isinstance(engines, list) else set(engines)
    return names


def test_parse_reads_every_part():
    s = EngineSpec.parse("ort-int8-trim")
    assert (s.runtime, s.dtype, s.trim, s.alignment, s.exact) == ("ort", "int8", True, "caffe", False)
    s = EngineSpec.parse("torch-bf16-cl@same")
    assert (s.runtime, s.dtype, s.channels_last, s.alignment) == ("torch", "bf16", True, "same")
    s = EngineSpec.parse("tvfcn-bf16-cl-graphs")
    assert (s.runtime, s.dtype, s.channels_last, s.cuda_graphs, s.exact) == ("tvfcn", "bf16", True, True, False)
    s = EngineSpec.parse("ort-int8-dynamic")
    assert (s.runtime, s.dtype, s.dynamic_quant, s.trim) == ("ort", "int8", True, False)
    assert EngineSpec.parse("peer") == EngineSpec("peer") and EngineSpec("peer").name == "peer"


@pytest.mark.parametrize("bad", ["tensorflow", "peer-bf16", "ort-bf16", "torch-fp32-trim@same", "torch-int8",
                                 "tvfcn-fp32-trim", "tvfcn-fp32@same", "ort-fp32-dynamic", "torch-fp32-lowmem",
                                 "torch-fp32-cl-", "torch-fp32@pad"])
def test_bad_names_are_one_line_errors_naming_the_argument(bad):
    with pytest.raises(ConfigError, match=r"^--engines: ") as e:
        EngineSpec.parse(bad)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value)


def test_every_name_in_the_committed_reports_and_defaults_round_trips():
    names = _report_names() | set(QUANT_ENGINES) | {n for d in DEFAULT_ENGINES.values() for n in d}
    assert {"ort-int8-dynamic", "ort-fp32-trim-lowmem", "torch-fp32@same", "peer"} <= names
    for name in sorted(names):
        assert EngineSpec.parse(name).name == name


def test_flags_in_another_order_name_the_same_engine():
    assert EngineSpec.parse("torch-fp32-trim-cl").name == "torch-fp32-cl-trim"


def _tiny(alignment="caffe"):
    torch.manual_seed(0)
    return fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment=alignment).eval()


@pytest.mark.parametrize("name", ["torch-fp32", "torch-fp32-cl", "torch-fp32-trim", "torch-bf16-cl-trim",
                                  "torch-fp32@same"])
def test_build_engine_builds_the_engine_its_name_names(name):
    spec = EngineSpec.parse(name)
    engine = build_engine(name, _tiny(spec.alignment))
    assert isinstance(engine, TorchEngine) and engine.spec == spec and engine.name == name
    assert engine.exact == spec.exact


def test_an_engine_built_by_hand_is_named_by_its_spec():
    engine = TorchEngine(_tiny(), channels_last=True, dtype="bf16", trim=True)
    assert engine.name == "torch-bf16-cl-trim" and EngineSpec.parse(engine.name) == engine.spec


@pytest.mark.skipif(not ort_available(), reason="onnxruntime not installed")
def test_onnx_for_exports_what_the_ort_name_asks_for(tmp_path):
    from fcnseg.infer.engines import onnx_for

    m = _tiny()
    for name in ("ort-fp32", "ort-int8-dynamic", "ort-fp32-trim"):
        spec = EngineSpec.parse(name)
        engine = build_engine(spec, onnx=onnx_for(spec, m, tmp_path, size=(40, 48)))
        assert engine.name == name
    with pytest.raises(ConfigError, match="needs an exported ONNX file"):
        build_engine("ort-fp32", m)
    with pytest.raises(ConfigError, match="calibration"):
        onnx_for(EngineSpec.parse("ort-int8"), m, tmp_path)
