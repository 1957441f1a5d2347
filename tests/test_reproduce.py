"""The reproduction study: protocols are valid configs, runs chain, RESULTS.md is generated."""
import json

import pytest

from fcnseg.cli.main import main
from fcnseg.config import apply_preset, load_config
from fcnseg.data import sample_root
from fcnseg.reproduce import _flatten, load_protocol


def test_cli_offers_every_protocol_file():
    from fcnseg.reproduce import list_protocols

    assert list_protocols("camvid") == ["bf16", "cpu", "cpu-fullres", "cpu-width", "dense", "full", "gpu"]


@pytest.mark.parametrize("protocol", ["bf16", "cpu", "cpu-fullres", "cpu-width", "dense", "full", "gpu"])
def test_every_run_of_each_protocol_is_a_valid_config(protocol):
    proto = load_protocol("camvid", protocol)
    names = [r["name"] for r in proto["runs"]]
    for spec in proto["runs"]:
        sets = {k: ("runs/x.pt" if isinstance(v, str) and v.startswith("@") else v)
                for k, v in spec.get("set", {}).items()}
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


def test_runs_may_only_refer_to_earlier_runs(tmp_path, monkeypatch):
    import fcnseg.reproduce as R
    from fcnseg.errors import ConfigError

    monkeypatch.setattr(R, "PROTOCOL_DIR", tmp_path)
    base = "base: {}\ngroups: {g: t}\nruns:\n"
    cases = {
        "late": "  - {name: a, group: g, set: {model.init_from: '@b'}}\n  - {name: b, group: g}\n",
        "score-late": "  - {name: a, group: g, score: '@b'}\n  - {name: b, group: g}\n",
        "score-bare": "  - {name: b, group: g}\n  - {name: a, group: g, score: b}\n",
    }
    for name, runs in cases.items():
        (tmp_path / f"x-{name}.yaml").write_text(base + runs)
        with pytest.raises(ConfigError, match="run a"):
            load_protocol("x", name)
    (tmp_path / "x-ok.yaml").write_text(base + "  - {name: b, group: g}\n  - {name: a, group: g, score: '@b'}\n")
    assert [r["name"] for r in load_protocol("x", "ok")["runs"]] == ["b", "a"]


@pytest.mark.slow
def test_score_only_run_scores_the_source_net_with_its_own_settings(tmp_path):
    out = tmp_path / "study"
    common = ["reproduce", "camvid", "--protocol", "cpu", "--out", str(out), f"data.root={sample_root()}",
              "data.max_items=4", "train.epochs=1", "data.resize=4", "data.batch_size=2"]
    assert main([*common, "--only", "fcn32s"]) == 0
    src = json.loads((out / "fcn32s.json").read_text())
    R = __import__("fcnseg.reproduce", fromlist=["x"])
    proto = R.load_protocol("camvid", "cpu")
    proto["runs"] += [{"name": "fcn32s-again", "group": "RQ1", "score": "@fcn32s"},
                      {"name": "fcn32s-tta", "group": "RQ1", "score": "@fcn32s", "set": {"train.eval_flip": True}}]
    import unittest.mock as mock

    with mock.patch.object(R, "load_protocol", return_value=proto):
        R.run_study("camvid", "cpu", out, root=str(sample_root()), only=["fcn32s-again", "fcn32s-tta"],
                    overrides=["data.max_items=4", "train.epochs=1", "data.resize=4", "data.batch_size=2"])
    again = json.loads((out / "fcn32s-again.json").read_text())
    tta = json.loads((out / "fcn32s-tta.json").read_text())
    assert again["metrics"] == src["metrics"] and again["iterations"] == 0
    assert again["checkpoint"] == src["checkpoint"] == again["config"]["model"]["init_from"]
    assert tta["config"]["train"]["eval_flip"] and tta["metrics"] != src["metrics"]
    assert tta["config"]["model"]["name"] == "fcn32s"


@pytest.mark.slow
def test_full_protocol_runs_end_to_end_at_toy_size(tmp_path):
    """The GPU protocol is the same code with other settings: its staged chain, a flip run and a
    score-only run go through on a toy setting (4 sample images, 1/8 resolution, narrow fc6/fc7)."""
    out = tmp_path / "full"
    args = ["reproduce", "camvid", "--protocol", "full", "--out", str(out), f"data.root={sample_root()}",
            "data.max_items=4", "train.epochs=1", "data.resize=8", "data.batch_size=2", "model.fc_channels=32",
            "train.eval_every=0", "--only", "fcn32s", "fcn16s-staged", "fcn8s-staged-flip", "fcn8s-staged-flip-tta"]
    assert main(args) == 0
    runs = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}
    assert set(runs) == {"fcn32s", "fcn16s-staged", "fcn8s-staged-flip", "fcn8s-staged-flip-tta"}
    flip = runs["fcn8s-staged-flip"]["config"]
    assert flip["data"]["flip"] and not flip["train"]["freeze_backbone"] and flip["model"]["alignment"] == "caffe"
    assert runs["fcn8s-staged-flip-tta"]["iterations"] == 0
    assert "fcn8s-staged-flip-tta vs fcn8s-staged-flip" in (out / "RESULTS.md").read_text()


def test_time_budget_is_shared_by_the_runs_own_limits():
    """--time-budget: each training run gets the time left in proportion to its own train.time_limit,
    less the set-up reserve, never more than its own limit; the GPU protocol's limits fit one command."""
    from fcnseg.reproduce import RUN_RESERVE_S, _time_limits

    proto = load_protocol("camvid", "gpu")
    runs = proto["runs"]
    own = [r["set"]["train.time_limit"] for r in runs]
    assert sum(own) + len(own) * RUN_RESERVE_S <= 400   # with the CUDA tests and the bench, under 10 minutes
    shares = _time_limits(proto, runs, 200.0)
    assert list(shares.values()) == pytest.approx([200 * o / sum(own) - RUN_RESERVE_S for o in own])
    assert _time_limits(proto, runs, 10_000.0) == {r["name"]: o for r, o in zip(runs, own)}
    assert _time_limits(proto, runs[2:], 200.0)["fcn8s-staged"] == 90   # later runs inherit the time left


def test_the_model_file_command_names_the_run_and_what_it_starts_from():
    from fcnseg.reproduce import _chain, _model_file_lines

    proto = load_protocol("camvid", "cpu")
    assert _chain(proto, "fcn8s-staged-lr-long") == ["fcn32s", "fcn16s-staged", "fcn8s-staged-lr-long"]
    assert _chain(proto, "fcn32s") == ["fcn32s"]
    record = {"metrics": {"mean_iu": 0.5}, "wall_time_s": 60.0}
    records = {"fcn32s": {**record, "run": "fcn32s", "metrics": {"mean_iu": 0.3}},
               "fcn16s-staged": {**record, "run": "fcn16s-staged", "metrics": {"mean_iu": 0.4}},
               "fcn8s-staged-lr-long-flip": {**record, "run": "fcn8s-staged-lr-long-flip"},
               "fcn8s-staged-lr-long-flip-tta": {**record, "run": "fcn8s-staged-lr-long-flip-tta",
                                                 "metrics": {"mean_iu": 0.6}}}
    text = "\n".join(_model_file_lines(proto, records))
    assert "best run: fcn8s-staged-lr-long-flip-tta (60.0 mean IU), which scores fcn8s-staged-lr-long-flip's" in text
    assert ("--only fcn32s fcn16s-staged fcn8s-staged-lr-long-flip`" in text
            and text.count("runs/fcn8s-staged-lr-long-flip/last.pt") == 2 and "3 min here" in text)
