"""The generated docs are what their generators make of the committed JSON files: a number in
README.md, docs/PERFORMANCE.md or a study's RESULTS.md cannot drift from the run that produced it."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fcnseg.reproduce import load_protocol, write_results
from scripts import write_performance_md

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def test_readme_sections_are_generated_from_the_json_files():
    r = subprocess.run([sys.executable, "-m", "scripts.write_readme", "--check"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_performance_md_is_generated_from_the_bench_json(tmp_path):
    assert write_performance_md.main(["--out", str(tmp_path / "PERFORMANCE.md")]) == 0
    assert (tmp_path / "PERFORMANCE.md").read_text() == (ROOT / "docs" / "PERFORMANCE.md").read_text()


STUDIES = sorted(p for p in (ROOT / "docs" / "results").iterdir() if (p / "RESULTS.md").is_file())


@pytest.mark.parametrize("study", STUDIES, ids=[p.name for p in STUDIES])
def test_results_md_is_generated_from_the_run_json(study, tmp_path):
    dataset, protocol = study.name.split("-", 1)
    for p in study.glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    write_results(load_protocol(dataset, protocol), tmp_path)
    assert (tmp_path / "RESULTS.md").read_text() == (study / "RESULTS.md").read_text()
    records = [json.loads(p.read_text()) for p in study.glob("*.json")]
    assert records and all(r["metrics"]["mean_iu"] > 0 for r in records)


def test_serving_md_is_generated_from_the_load_json(tmp_path):
    from scripts import write_serving_md

    assert write_serving_md.main(["--out", str(tmp_path / "SERVING.md")]) == 0
    assert (tmp_path / "SERVING.md").read_text() == (ROOT / "docs" / "SERVING.md").read_text()
    record = json.loads((ROOT / "docs" / "bench" / "serve" / "load.json").read_text())
    assert [lv["concurrency"] for lv in record["levels"]] == [1, 4, 16]
    assert all(lv["requests"] >= 500 for lv in record["levels"])


def test_the_ort_payback_threshold_is_the_measured_one():
    """choose_engine's threshold is what scripts/bench_payback.py measured (docs/bench/payback.json)."""
    from fcnseg.infer.engines import ORT_PAYBACK_IMAGES

    record = json.loads((ROOT / "docs" / "bench" / "payback.json").read_text())
    assert record["threshold_images"] == ORT_PAYBACK_IMAGES
    paid = [n["payback_images"] for n in record["nets"] if n["payback_images"] is not None]
    assert paid and record["threshold_images"] == max(paid)
