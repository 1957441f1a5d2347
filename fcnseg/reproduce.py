"""The paper's findings on a dataset at hand: a protocol file lists runs (config overrides), this
module trains and scores each, writes one JSON per run, ``RESULTS.md`` and the RQ4 figure.

A protocol (``fcnseg/configs/reproduce/<name>.yaml``)::

    description: ...
    base: {model: {...}, data: {...}, train: {...}}      # a run config
    groups: {RQ1: "title", ...}
    runs:
      - {name: fcn32s, group: RQ1, about: "...", set: {model.name: fcn32s}}
      - {name: fcn16s, group: RQ1, set: {model.name: fcn16s, model.init_from: "@fcn32s"}}

``@run`` names the final checkpoint of an earlier run: the staged 32s → 16s → 8s recipe. Every
run is scored on the validation split at its final iteration (no selection on val). A run with
``score: "@run"`` trains nothing: it scores that run's final net (its settings, then its own ``set``,
e.g. ``train.eval_flip: true``), so one change of evaluation is measured on the same weights. Finished runs
(their JSON exists) are not trained again, so an interrupted study resumes.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import torch
import yaml

from fcnseg.atomic import write_bytes, write_json, write_text
from fcnseg.bench.measure import count_flops
from fcnseg.config import load_config
from fcnseg.data import dataset_info
from fcnseg.errors import ConfigError
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.models.dense import dense, parse_dense
from fcnseg.provenance import commit, loadavg, machine
from fcnseg.train.cache import FeatureStore
from fcnseg.train.loop import score, train

__all__ = ["load_protocol", "list_protocols", "run_study", "write_results"]

PROTOCOL_DIR = Path(__file__).resolve().parent / "configs" / "reproduce"


def list_protocols(dataset: str) -> list[str]:
    """Protocol names for ``dataset`` (files ``configs/reproduce/<dataset>-<name>.yaml``)."""
    return sorted(p.stem[len(dataset) + 1:] for p in PROTOCOL_DIR.glob(f"{dataset}-*.yaml"))


def load_protocol(dataset: str, protocol: str) -> dict:
    path = PROTOCOL_DIR / f"{dataset}-{protocol}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))
        raise ConfigError(f"no protocol {dataset}-{protocol} (have: {', '.join(have)})")
    try:
        proto = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    names = [r["name"] for r in proto["runs"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: run names repeat")
    for i, spec in enumerate(proto["runs"]):
        refs = [v for v in [spec.get("score"), *spec.get("set", {}).values()] if isinstance(v, str) and v[:1] == "@"]
        if spec.get("score") is not None and spec["score"] not in refs:
            raise ConfigError(f"{path}: run {spec['name']}: score must be '@' and an earlier run's name")
        late = [r for r in refs if r[1:] not in names[:i]]
        if late:
            raise ConfigError(f"{path}: run {spec['name']} refers to {late[0]}, which is not an earlier run")
    proto["path"] = str(path)
    return proto


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "options":
            out += _flatten(v, key + ".")
        else:
            out.append(f"{key}={json.dumps(v) if not isinstance(v, str) else v}")
    return out


def _read_csv(path: Path) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None) and _isnum(v)} for row in csv.DictReader(f)]


def _isnum(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _curve(run_dir: Path) -> list[dict[str, float]]:
    """Validation mean IU against iterations and training wall time (from the run's logs)."""
    evals, log = _read_csv(run_dir / "eval.csv"), _read_csv(run_dir / "log.csv")
    points = []
    for e in evals:
        before = [r for r in log if r.get("iter", 0) <= e["iter"]]
        points.append({"iter": e["iter"], "seconds": before[-1].get("elapsed", 0.0) if before else 0.0,
                       "mean_iu": e.get("mean_iu")})
    return points


RECORD_FIELDS = ("run", "config", "machine", "commit", "wall_time_s", "iterations", "checkpoint", "metrics",
                 "per_class_iu")
METRICS = ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")


def read_record(path: Path) -> dict:
    """A finished run's JSON; a file that does not parse or lacks a finished run's fields is a ConfigError
    naming it (records are written atomically, so such a file was damaged or written by something else)."""
    name = path.stem
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = "empty file" if not path.read_bytes().strip() else f"not JSON: {e}"
        raise ConfigError(f"{path}: not a finished run record ({reason}); delete it to rerun {name}") from None
    missing = [k for k in RECORD_FIELDS if not isinstance(record, dict) or k not in record]
    if not missing:
        missing = [f"metrics.{k}" for k in METRICS if not isinstance(record["metrics"], dict)
                   or not isinstance(record["metrics"].get(k), (int, float))]
    if missing:
        raise ConfigError(f"{path}: not a finished run record (missing {', '.join(missing)}); "
                          f"delete it to rerun {name}")
    return record


def _check_only(proto: dict, protocol: str, only: list[str] | None) -> None:
    names = [r["name"] for r in proto["runs"]]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise ConfigError(f"--only: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} not in protocol "
                          f"{protocol} (runs: {', '.join(names)})")


def _check_prerequisites(proto: dict, out: Path, only: list[str] | None) -> None:
    """Before any training: every ``@run`` a selected run refers to is selected too, or finished already."""
    chosen = [r for r in proto["runs"] if not only or r["name"] in only]
    for spec in chosen:
        for ref in _refs(spec):
            if ref not in [r["name"] for r in chosen] and not (out / f"{ref}.json").is_file():
                raise ConfigError(f"run {spec['name']} needs run {ref} first: {out / f'{ref}.json'} does not exist "
                                  f"(add {ref} to --only)")


RUN_RESERVE_S = 20.0  # a run's set-up, final evaluation and checkpoint beside its training time


def _time_limits(proto: dict, runs: list[dict], left: float) -> dict[str, float]:
    """Each training run's share of ``left`` seconds: in proportion to its own ``train.time_limit`` (the
    base's; 1 where none), less :data:`RUN_RESERVE_S`, never above its own limit."""
    def own(spec: dict) -> float | None:
        v = spec.get("set", {}).get("train.time_limit", proto["base"].get("train", {}).get("time_limit"))
        return float(v) if v is not None else None
    weights = {r["name"]: own(r) or 1.0 for r in runs}
    total = sum(weights.values()) or 1.0
    shares = {}
    for r in runs:
        share = left * weights[r["name"]] / total - RUN_RESERVE_S
        cap = own(r)
        shares[r["name"]] = share if cap is None else min(cap, share)
    return shares


def run_study(dataset: str, protocol: str, out: str | Path, *, root: str | None = None,
              only: list[str] | None = None, overrides: list[str] | None = None,
              time_budget: float | None = None) -> Path:
    """Train and score every run of the protocol; return the path of RESULTS.md.

    ``time_budget`` (seconds): the study's bound. Before each training run the time left is shared among
    the training runs still to do (:func:`_time_limits`) and the run's ``train.time_limit`` set to its
    share; runs with no time left are not begun (RESULTS.md reports the finished ones)."""
    proto = load_protocol(dataset, protocol)
    _check_only(proto, protocol, only)
    out = Path(out)
    _check_prerequisites(proto, out, only)
    out.mkdir(parents=True, exist_ok=True)
    base = proto["base"]
    if root:
        base = {**base, "data": {**base["data"], "root": root}}
    study_t0 = time.perf_counter()
    store = FeatureStore()  # the study's runs share one frozen trunk's cached features
    todo = [r for r in proto["runs"] if (not only or r["name"] in only) and not (out / f"{r['name']}.json").is_file()]
    for spec in proto["runs"]:
        name = spec["name"]
        if only and name not in only:
            continue
        result_json = out / f"{name}.json"
        if result_json.is_file():
            read_record(result_json)
            print(f"[reproduce] {name}: done already ({result_json})")
            continue
        source = _source_spec(proto, spec)
        limit: list[str] = []
        if time_budget is not None and source is None:
            left = time_budget - (time.perf_counter() - study_t0)
            share = _time_limits(proto, [r for r in todo[todo.index(spec):] if r.get("score") is None], left)[name]
            if share <= 0:
                print(f"[reproduce] time budget spent ({time_budget:.0f} s): {name} and the runs after it "
                      "are not trained", flush=True)
                break
            limit = [f"train.time_limit={share:.1f}"]
        sets = {**(source or {}).get("set", {}), **spec.get("set", {})}
        if source is not None:
            sets["model.init_from"] = spec["score"]
        for k, v in list(sets.items()):
            if isinstance(v, str) and v.startswith("@"):
                prev_json = out / f"{v[1:]}.json"
                if not prev_json.is_file():
                    raise ConfigError(f"run {name} needs run {v[1:]} first: {prev_json} does not exist "
                                      f"(add {v[1:]} to --only)")
                sets[k] = read_record(prev_json)["checkpoint"]
        run_dir = out / "runs" / name
        sets_args = [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in sets.items()]
        cfg = load_config(None, _flatten(base) + sets_args + [f"out={run_dir}"] + list(overrides or []) + limit)
        print(f"[reproduce] {name}: {spec.get('about', '')}", flush=True)
        load_start, t0 = loadavg(), time.perf_counter()
        if source is None:
            result = train(cfg, overwrite=True, store=store)  # no <run>.json: the run did not finish; train it again
        elif spec.get("dense"):
            result = {"metrics": _score_dense(cfg, spec["dense"], store), "iterations": 0,
                      "last_checkpoint": cfg.model.init_from}
        else:
            result = {"metrics": score(cfg, store=store), "iterations": 0, "last_checkpoint": cfg.model.init_from}
        wall = time.perf_counter() - t0
        metrics = result.get("metrics")
        if not metrics:
            raise ConfigError(f"run {name}: no validation metrics (set data.val_split)")
        record = {
            "run": name, "group": spec.get("group"), "about": spec.get("about", ""),
            "config": cfg.to_dict(), "seed": cfg.train.seed, "commit": commit(), "machine": machine(),
            "wall_time_s": round(wall, 1), "iterations": result.get("iterations"),
            "total_iterations": result.get("total_iterations"), "time_limited": bool(result.get("time_limited")),
            "precision": result.get("precision"),  # what the run trained in (train.amp=bf16 may fall back)
            "loadavg_start": load_start, "loadavg_end": loadavg(),
            "checkpoint": result["last_checkpoint"],
            "metrics": {k: metrics[k] for k in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu")},
            "per_class_iu": dict(zip(dataset_info(cfg.data.dataset).classes, metrics["per_class_iu"])),
            "curve": _curve(run_dir),
        }
        write_json(result_json, record, indent=1, default=float)
        print(f"[reproduce] {name}: mean IU {100 * metrics['mean_iu']:.1f}% in {wall / 60:.1f} min", flush=True)
    if proto.get("cost"):
        _measure_costs(proto, out)
    return write_results(proto, out, time.perf_counter() - study_t0)


def _measure_costs(proto: dict, out: Path) -> None:
    """Each finished run's cost (``measure_cost``), measured back to back so the load is alike."""
    for spec in proto["runs"]:
        path = out / f"{spec['name']}.json"
        if path.is_file():
            record = json.loads(path.read_text())
            record["cost"] = measure_cost(record["checkpoint"], spec.get("dense"), proto["cost"])
            write_json(path, record, indent=1, default=float)


def _dense_args(text: str) -> tuple[int, str]:
    try:
        return parse_dense(text)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _score_dense(cfg, text: str, store: FeatureStore) -> dict | None:
    """Score the run's net (``model.init_from``) with its coarse map densified (``models.dense``),
    on its validation images (a frozen trunk's cached features, of the unchanged net, serve the
    stages before the first changed layer)."""
    factor, method = _dense_args(text)
    return score(cfg, store=store, adapt=lambda model: dense(model.eval(), factor, method))


def measure_cost(checkpoint: str, dense_text: str | None, size: list[int], repeats: int = 5) -> dict:
    """FLOPs (``torch.utils.flop_counter``, conv/matmul) and time of one forward on a ``size`` (H, W)
    image: process CPU seconds and wall seconds, best of ``repeats``, with the load average."""
    model = model_from_checkpoint(checkpoint, map_location="cpu")[0].eval()
    if dense_text:
        model = dense(model, *_dense_args(dense_text))
    x = torch.randn(1, 3, *size)
    flops = count_flops(model, x)["total"]
    cpu, wall = [], []
    with torch.inference_mode():
        model(x)
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            model(x)
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
    return {"size": list(size), "flops": flops, "cpu_s": min(cpu), "wall_s": min(wall),
            "threads": torch.get_num_threads(), "loadavg": loadavg()}


def _source_spec(proto: dict, spec: dict) -> dict | None:
    """The earlier run a score-only run (``score: "@run"``) scores, or None for a training run."""
    ref = spec.get("score")
    return None if ref is None else next(r for r in proto["runs"] if r["name"] == ref[1:])


def _load_line(records, m: dict) -> list[str]:
    """How busy the machine was: the highest 1-minute load average seen at any run's start or end."""
    loads = [r[k][0] for r in records for k in ("loadavg_start", "loadavg_end") if r.get(k)]
    if not loads:
        return []
    busy = max(loads) > 1.25 * m["cores"]
    return [f"- 1-minute load average at the runs' starts and ends: {min(loads):.2f} to {max(loads):.2f} on "
            f"{m['cores']} cores" + (" — the machine was shared, so the minutes are inflated" if busy else "")]


def write_results(proto: dict, out: Path, seconds: float | None = None) -> Path:
    """RESULTS.md (one table per group, per-class IU, the RQ4 figure) from the run JSON files."""
    records = {}
    for spec in proto["runs"]:
        p = out / f"{spec['name']}.json"
        if p.is_file():
            records[spec["name"]] = read_record(p)
    if not records:
        raise ConfigError(f"{out}: no finished runs to report")
    any_rec = next(iter(records.values()))
    m = any_rec["machine"]
    total = sum(r["wall_time_s"] for r in records.values())
    lines = [f"# {proto.get('title', 'Reproduction')}", "", proto.get("description", "").strip(), "",
             f"- command: `{proto.get('command', '')}`",
             f"- machine: {m['cpu']}, {m['cores']} cores" + (f", {m['gpu']}" if m.get("gpu") else "")
             + f"; torch {m['torch']}; commit {any_rec['commit']}",
             f"- training + scoring time of the runs below: {total / 60:.1f} min", *_load_line(records.values(), m), ""]
    for group, title in proto.get("groups", {}).items():
        rows = [r for r in records.values() if r.get("group") == group]
        if not rows:
            continue
        lines += [f"## {group}: {title}", "",
                  "| run | what | mean IU | pixel acc. | mean acc. | f.w. IU | iterations | minutes |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            mm = r["metrics"]
            lines.append(f"| {r['run']} | {r['about']} | **{100 * mm['mean_iu']:.1f}** | "
                         f"{100 * mm['pixel_accuracy']:.1f} | {100 * mm['mean_accuracy']:.1f} | "
                         f"{100 * mm['fw_iu']:.1f} | {_iterations(r)} | "
                         f"{r['wall_time_s'] / 60:.1f} |")
        lines.append("")
        for a, b in proto.get("compare", {}).get(group, []):
            if a in records and b in records:
                d = 100 * (records[b]["metrics"]["mean_iu"] - records[a]["metrics"]["mean_iu"])
                lines.append(f"- {b} vs {a}: {d:+.1f} mean IU points")
        lines.append("")
    costed = [r for r in records.values() if r.get("cost")]
    if costed:
        ref = costed[0]["cost"]
        size = "×".join(str(v) for v in ref["size"])
        lines += [f"## Cost of one {size} image (CPU, {ref['threads']} threads)", "",
                  "| run | mean IU | GFLOPs | × first | CPU s | wall s | load avg |", "|---|---|---|---|---|---|---|"]
        for r in costed:
            c = r["cost"]
            lines.append(f"| {r['run']} | {100 * r['metrics']['mean_iu']:.1f} | {c['flops'] / 1e9:.1f} | "
                         f"{c['flops'] / ref['flops']:.2f} | {c['cpu_s']:.2f} | {c['wall_s']:.2f} | "
                         f"{c['loadavg'][0]:.1f} |")
        lines.append("")
    lines += _model_file_lines(proto, records)
    classes = list(any_rec["per_class_iu"])
    lines += ["## Per-class IU (%)", "", "| run | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for r in records.values():
        lines.append(f"| {r['run']} | " + " | ".join("-" if v is None else f"{100 * v:.1f}"
                                                     for v in r["per_class_iu"].values()) + " |")
    curves = [records[n] for n in proto.get("curves", []) if n in records and records[n].get("curve")]
    fig = _plot_curves(curves, out / "rq4.png")
    if fig:
        lines += ["", "## RQ4 curves", "", "![mean IU against wall time and iterations](rq4.png)"]
    lines += ["", "Generated by `fcnseg reproduce` from the JSON files beside this page."]
    return write_text(out / "RESULTS.md", "\n".join(lines) + "\n")


def _refs(spec: dict) -> list[str]:
    """The runs a run starts from or scores (its ``@run`` values)."""
    return [v[1:] for v in [spec.get("score"), *spec.get("set", {}).values()] if isinstance(v, str) and v[:1] == "@"]


def _chain(proto: dict, name: str) -> list[str]:
    """``name`` and every run it needs, transitively, in the protocol's order."""
    specs = {r["name"]: r for r in proto["runs"]}
    need, todo = set(), [name]
    while todo:
        n = todo.pop()
        if n not in need:
            need.add(n)
            todo += _refs(specs[n])
    return [r["name"] for r in proto["runs"] if r["name"] in need]


def _model_file_lines(proto: dict, records: dict[str, dict]) -> list[str]:
    """The study's best net (highest val mean IU) and the one command that rebuilds its model file: the
    protocol's command limited to that run and the runs it starts from (model files are not committed)."""
    best = max(records.values(), key=lambda r: r["metrics"]["mean_iu"])
    spec = next(r for r in proto["runs"] if r["name"] == best["run"])
    trained = _source_spec(proto, spec)
    trained_name = trained["name"] if trained is not None else best["run"]
    chain = _chain(proto, trained_name)
    minutes = sum(records[n]["wall_time_s"] for n in chain if n in records) / 60
    command = proto.get("command", "")
    out = command.split("--out ", 1)[1].split()[0] if "--out " in command else "DIR"
    lines = ["## Model file", "",
             f"- best run: {best['run']} ({100 * best['metrics']['mean_iu']:.1f} mean IU)"
             + (f", which scores {trained_name}'s net" if trained is not None else ""),
             f"- rebuild it (the run and those it starts from, {minutes:.0f} min here): "
             f"`{command} --only {' '.join(chain)}`",
             f"- the file: `{out}/runs/{trained_name}/last.pt` (not committed); "
             f"score it again: `fcnseg eval --checkpoint {out}/runs/{trained_name}/last.pt`"
             + (f" ({best['run']} scores it with its own settings, in {best['run']}.json)"
                if trained is not None else ""), ""]
    return lines


def _iterations(record: dict) -> str:
    """The iterations cell: those done, and of how many where ``train.time_limit`` cut the run short."""
    if record.get("time_limited"):
        return f"{record['iterations']} of {record.get('total_iterations')} (time limit)"
    return str(record["iterations"])


def _plot_curves(records: list[dict], path: Path) -> Path | None:
    if not records:
        return None
    import matplotlib  # noqa: PLC0415 (optional: heavy, ~0.25 s with pyplot; only the RQ4 figure needs it)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (optional: as above; imported after choosing the Agg backend)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for r in records:
        pts = [p for p in r["curve"] if p.get("mean_iu") is not None]
        axes[0].plot([p["seconds"] / 60 for p in pts], [100 * p["mean_iu"] for p in pts], marker="o", label=r["run"])
        axes[1].plot([p["iter"] for p in pts], [100 * p["mean_iu"] for p in pts], marker="o", label=r["run"])
    axes[0].set_xlabel("training wall time (min)")
    axes[1].set_xlabel("iterations")
    for ax in axes:
        ax.set_ylabel("val mean IU (%)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return write_bytes(path, buf.getvalue())
