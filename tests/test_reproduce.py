"""The reproduction study: protocols are valid configs, runs chain, RESULTS.md is generated."""
import json

import pytest

from fcnseg.cli.main import main
from fcnseg.config import apply_preset, load_config
from fcnseg.data import sample_root
from fcnseg.reproduce import _flatten, load_protocol


@pytest.mark.parametrize("protocol", ["cpu", "full"])
def test_every_run_of_each_protocol_is_a_valid_config(protocol):
    proto = load_protocol("camvid", protocol)
    names = [r["name"] for r in proto["runs"]]
    for spec in proto["runs"]:
        sets = {k: ("runs/x.pt" if isinstance(v, str) and v.startswith("@") else v) for k, v in spec.get("set", {}).items()}
        for v in spec.get("set", {}).values():
            if isinstance(v, str) and v.startswith("@"):
                assert v[1:] in names[: names.index(spec["name"])], f"{spec['name']} starts from a later run"
        cfg = load_config(None, _flatten(proto["base"]) + [f"{k}={json.dumps(v) if not isinstance(v, str) else v}"
                                                          for k, v in sets.items()])
        apply_preset(cfg)
        assert spec["group"] in proto["groups"]
    for pairs in proto["compare"].values():
        assert all(a in names and b in names for a, b in pairs)


@pytest.mark.slow
def test_study_chains_runs_and_writes_results(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["reproduce", "camvid", f"data.root={sample_root()}", "data.max_items=8", "--protocol", "cpu",
            "--out", str(out), "train.epochs=1", "data.resize=4",  # overrides may follow the options
            "--only", "fcn32s", "fcn16s-staged"]
    assert main(args) == 0
    first = json.loads((out / "fcn16s-staged.json").read_text())
    assert first["config"]["model"]["init_from"].endswith("fcn32s/last.pt")
    assert set(first["metrics"]) == {"pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"}
    assert len(first["per_class_iu"]) == 11 and first["machine"]["cores"] >= 1
    assert first["iterations"] == 1 and len(first["loadavg_start"]) == len(first["loadavg_end"]) == 3
    text = (out / "RESULTS.md").read_text()
    assert "fcn16s-staged vs fcn32s" in text and "| fcn32s |" in text and "1-minute load average" in text
    assert (out / "rq4.png").is_file()   # fcn32s carries the p = 1 curve
    assert main(args) == 0               # finished runs are not trained again
    assert "done already" in capsys.readouterr().out
