"""scripts/load_serve.py end to end at a small count: it starts the real server, mixes good and bad
requests at two concurrency levels, and records what docs/SERVING.md is generated from."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("starlette", reason="the [serve] extra is not installed")
pytestmark = pytest.mark.slow


def test_the_load_script_records_every_request(tmp_path):
    from scripts import load_serve, write_serving_md

    out = tmp_path / "serve.json"
    assert load_serve.main(["--requests", "20", "--levels", "1", "3", "--out", str(out), "--no-docs",
                            "--time-limit", "300"]) == 0
    r = json.loads(out.read_text())
    assert [lv["concurrency"] for lv in r["levels"]] == [1, 3]
    for lv in r["levels"]:
        assert lv["requests"] == 20 and lv["bad"] == 4 and lv["failed_good"] == 0 and lv["unexpected_bad"] == 0
        assert lv["latency_ms"]["p50"] <= lv["latency_ms"]["p99"]
    assert r["server"]["crashes"] == 0 and r["server"]["tracebacks_in_log"] == 0
    assert r["rss_mb"]["samples"] and r["rss_mb"]["after_warm_up"] > 0
    assert r["model"]["file"] == "fcn8s-vgg16-w8-camvid-seed0.pt"
    assert write_serving_md.main(["--json", str(out), "--out", str(tmp_path / "S.md")]) == 0
    text = (tmp_path / "S.md").read_text()
    assert "| 3 | 20 | 16 | 4 |" in text and "failed good requests: **0**" in text


def test_the_mix_has_the_bad_share_asked_for():
    from scripts.load_serve import Req, mix

    good = [Req("g", "POST", "/predict", b"x", (), 200)]
    bad = [Req(f"b{i}", "POST", "/predict", b"", (), 400) for i in range(3)]
    reqs = mix(good, bad, 500, 0.2, seed=1)
    assert len(reqs) == 500 and sum(not r.good for r in reqs) == 100
    assert {r.kind for r in reqs if not r.good} == {"b0", "b1", "b2"}
