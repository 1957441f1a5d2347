"""scripts/gpu_session.sh end to end on the CPU at toy scale (``--toy``): every phase runs, every log lands
in one file, and what comes back is what the device tool returns (at most 8 files, 2 folders down)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_session_end_to_end_at_toy_scale(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable)
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "--toy", "--out", str(out),
                          "--work", str(work), "--budget", "400"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == ["camvid-gpu/RESULTS.md", "camvid-gpu/fcn16s-staged.json", "camvid-gpu/fcn32s.json",
                     "camvid-gpu/fcn8s-staged.json", "cuda.json", "session.json", "session.log"]
    log = (out / "session.log").read_text()
    for text in ("phase machine", "phase torch", "phase tests", "needs a CUDA GPU",   # pytest's own report
                 "phase bench", "[bench ", "engine torch-fp32-cl", "phase train", "[reproduce] fcn8s-staged: mean IU",
                 "done: tests exit code 0, bench exit code 0, train exit code 0"):
        assert text in log, text
    assert log == run.stdout   # the log holds all the session printed, and nothing is cut
    phases = json.loads((out / "session.json").read_text())["phases"]
    assert [p["phase"] for p in phases if p["phase"] in ("tests", "bench", "train")] == ["tests", "bench", "train"]
    assert all(p["exit_code"] == 0 for p in phases)
    bench = json.loads((out / "cuda.json").read_text())
    assert "partial" not in bench and [e["engine"] for e in bench["engines"]] == ["torch-fp32", "torch-fp32-cl"]
    assert all("error" not in e for e in bench["engines"])
    rec = json.loads((out / "camvid-gpu" / "fcn8s-staged.json").read_text())
    assert rec["config"]["model"]["name"] == "fcn8s" and rec["config"]["model"]["init_from"].endswith("last.pt")
    assert rec["config"]["train"]["backbone_lr_mult"]["pool5"] == 0.1 and not rec["config"]["train"]["freeze_backbone"]
    assert 0 < rec["config"]["train"]["time_limit"] <= 90   # its share of the session's time, at most its own
    assert (work / "camvid-gpu" / "runs" / "fcn8s-staged" / "last.pt").is_file()   # checkpoints stay behind
