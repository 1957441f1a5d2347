"""Fault-corpus cases of one area (train); collected by :func:`fault_corpus.all_cases`.

Resume cases start from one real training checkpoint (trained once per session, then forged per case)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from support.fault_corpus import Case, Ctx, Plan, _train, base_config

_TRAINED: dict[Path, Path] = {}


def trained(ctx: Ctx) -> Path:
    """``last.pt`` of a tiny 1-iteration run (CamVid layout), trained once per session."""
    base = ctx.shared.base
    if base not in _TRAINED:
        from fcnseg.config import RunConfig
        from fcnseg.data.fixtures import write_camvid
        from fcnseg.train.loop import train

        cfg = base_config(ctx, write_camvid(base / "train-camvid", {"train": 2, "val": 2}, size=(16, 16)))
        cfg["out"] = str(base / "trained-run")
        train(RunConfig.from_dict(cfg))
        _TRAINED[base] = base / "trained-run" / "last.pt"
    return _TRAINED[base]


def _run_with(ctx: Ctx, mutate: Callable[[dict], None] | None = None) -> Path:
    """``ctx.tmp/run`` holding the trained checkpoint as last.pt, ``mutate``d (weights re-checksummed)."""
    from fcnseg.models.checkpoint import state_checksum

    out = ctx.tmp / "run"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "last.pt"
    if mutate is None:
        shutil.copy(trained(ctx), path)
        return path
    ck = torch.load(trained(ctx), map_location="cpu", weights_only=True)
    mutate(ck)
    ck["checksum"] = state_checksum(ck["model"])
    torch.save(ck, path)
    return path


def _set(key: str, value) -> Callable[[dict], None]:
    def mutate(ck: dict) -> None:
        ck[key] = value
    return mutate


def _forgeries() -> dict[str, tuple[Callable[[dict], None], str]]:
    """name → (mutation of a training checkpoint, the field the error must name)."""
    def weight_complex(ck: dict) -> None:
        k = "score.out.fc7.weight"
        w = ck["model"][k].to(torch.complex64)
        w.view(-1)[0] = complex(float("nan"), 0)
        ck["model"][k] = w

    def rng(path: tuple, value) -> Callable[[dict], None]:
        def mutate(ck: dict) -> None:
            node = ck["rng_per_rank"][0]
            for p in path[:-1]:
                node = node[p]
            node[path[-1]] = value
        return mutate

    def momentum_nan(ck: dict) -> None:
        buf = next(s["momentum_buffer"] for s in ck["optimizer"]["state"].values())
        buf.view(-1)[0] = float("nan")

    return {
        "run-config-list": (_set("run_config", [1, 2]), "run_config"),
        "run-config-bad-key": (_set("run_config", {"train": {"lrr": 1}}), "run_config"),
        "iteration-text": (_set("iteration", "abc"), "iteration"),
        "iteration-negative": (_set("iteration", -5), "iteration"),
        "iteration-float": (_set("iteration", 1.5), "iteration"),
        "best-mean-iu-text": (_set("best_mean_iu", "good"), "best_mean_iu"),
        "best-mean-iu-nan": (_set("best_mean_iu", float("nan")), "best_mean_iu"),
        "elapsed-text": (_set("elapsed", "long"), "elapsed"),
        "world-size-zero": (_set("world_size", 0), "world_size"),
        "rng-not-list": (_set("rng_per_rank", "garbage"), "rng_per_rank"),
        "rng-torch-short": (rng(("torch",), torch.zeros(7, dtype=torch.uint8)), "rng_per_rank[0].torch"),
        "rng-torch-float": (rng(("torch",), torch.zeros(5056)), "rng_per_rank[0].torch"),
        "rng-numpy-keys-short": (rng(("numpy", "keys"), torch.zeros(3, dtype=torch.int64)),
                                 "rng_per_rank[0].numpy.keys"),
        "rng-numpy-pos-text": (rng(("numpy", "pos"), "x"), "rng_per_rank[0].numpy.pos"),
        "rng-python-state-short": (rng(("python", "state"), [1, 2, 3]), "rng_per_rank[0].python.state"),
        "rng-python-not-mapping": (rng(("python",), 5), "rng_per_rank[0].python"),
        "weight-complex-nan": (weight_complex, "score.out.fc7.weight"),
        "optimizer-not-mapping": (_set("optimizer", [1]), "optimizer"),
        "optimizer-momentum-nan": (momentum_nan, "optimizer.state"),
        "optimizer-lr-text": (lambda ck: ck["optimizer"]["param_groups"][0].update(lr="fast"), "lr"),
        "classes-not-names": (_set("classes", 5), "classes"),
    }


def _resume(ctx: Ctx, *extra: str) -> list[str]:
    return _train(ctx, "--resume", "auto", *extra)


def cases() -> Iterator[Case]:
    for name, (mutate, field) in _forgeries().items():
        def forged(ctx: Ctx, mutate=mutate, field=field) -> Plan:
            path = _run_with(ctx, mutate)
            return Plan(_resume(ctx), [str(path), field], cause=["corrupt"])
        yield Case(f"train-resume-forged-{name}", "train/checkpoint", "error", forged)

    def resume_ok(ctx: Ctx) -> Plan:
        _run_with(ctx)
        log = ctx.tmp / "run" / "log.csv"

        def check() -> None:
            assert log.read_text().splitlines()[-1].startswith("2,"), log.read_text()
        return Plan(_resume(ctx, "train.iterations=2"), check=check)

    def resume_changed(key: str, value: str):
        def run(ctx: Ctx) -> Plan:
            path = _run_with(ctx)
            return Plan(_resume(ctx, f"{key}={value}"), [key, str(path)], cause=["differs", "--overwrite"])
        return run

    yield Case("train-resume-extends-iterations", "train/resume", "ok", resume_ok)
    for key, value in [("train.lr", "0.5"), ("train.momentum", "0.5"), ("train.schedule", "poly"),
                       ("data.batch_size", "2"), ("model.fc_channels", "32"), ("train.seed", "3")]:
        yield Case(f"train-resume-changed-{key.replace('.', '-')}", "train/resume", "error", resume_changed(key, value))

    def fresh_over_run(ctx: Ctx) -> Plan:
        _run_with(ctx)
        return Plan(_train(ctx), [str(ctx.tmp / "run")], cause=["holds a run", "--resume auto", "--overwrite"])

    def overwrite(ctx: Ctx) -> Plan:
        path = _run_with(ctx)
        before = path.stat().st_mtime_ns

        def check() -> None:
            assert path.stat().st_mtime_ns != before
        return Plan(_train(ctx, "--overwrite"), check=check)

    yield Case("train-run-fresh-over-finished-run", "train/run-folder", "error", fresh_over_run)
    yield Case("train-run-overwrite-replaces-run", "train/run-folder", "ok", overwrite)

    def locked(ctx: Ctx) -> Plan:
        from fcnseg.train.state import RunLock

        lock = RunLock(ctx.tmp / "run").__enter__()  # another run holds the folder while main() runs
        return Plan(_train(ctx), [str(ctx.tmp / "run")], cause=["in use", str(os.getpid())],
                    check=lambda: lock.__exit__())

    def stale_lock(ctx: Ctx) -> Plan:
        lock = ctx.p("run", ".fcnseg.lock")
        lock.write_text("999999\n")  # left by a run that died: no process holds the flock
        return Plan(_train(ctx))

    def stale_temporary(ctx: Ctx) -> Plan:
        tmp = ctx.p("run", ".last.pt.k1ll3d.tmp")
        tmp.write_bytes(b"\0" * 4096)
        _run_with(ctx)

        def check() -> None:
            assert not tmp.exists()
            assert not list((ctx.tmp / "run").glob(".*.tmp"))
        return Plan(_resume(ctx, "train.iterations=2"), check=check)

    yield Case("train-run-second-run-is-refused", "train/run-folder", "error", locked)
    yield Case("train-run-stale-lock-taken-over", "train/run-folder", "ok", stale_lock)
    yield Case("train-run-stale-temporaries-removed", "train/run-folder", "ok", stale_temporary)

    def worker_label(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        label = sorted((root / "trainannot").iterdir())[0]
        label.write_bytes(label.read_bytes()[:40])
        cfg = base_config(ctx, root)
        return Plan(_train(ctx, "data.workers=2", cfg=cfg), [str(label)], cause=["cannot read label"])

    yield Case("train-workers-truncated-label", "train/data", "error", worker_label)

    def int_weights(ctx: Ctx) -> Plan:
        from safetensors.torch import save_file

        state = {k: v.to(torch.int64) for k, v in ctx.shared.model().state_dict().items()}
        path = ctx.p("int64.safetensors")
        save_file(state, str(path))
        return Plan(_train(ctx, f"model.weights={path}"), [str(path), "torch.int64"], cause=["floating point"])

    yield Case("train-weights-int64-safetensors", "train/weights", "error", int_weights)

    def folder_classes(text: bytes, expect: str):
        def run(ctx: Ctx) -> Plan:
            from fcnseg.data.fixtures import write_folder

            root = write_folder(ctx.tmp / "folder", classes=["bg", "cat", "dog"], n=2, size=(16, 16))
            (root / "classes.txt").write_bytes(text)
            cfg = base_config(ctx, root)
            cfg["data"].update(dataset="folder", train_split="all")
            if expect == "error":
                return Plan(_train(ctx, cfg=cfg), [str(root / "classes.txt")], cause=["duplicate class name 'cat'"])

            def check() -> None:  # the BOM is not part of the first name
                from fcnseg.models.checkpoint import load_checkpoint
                assert load_checkpoint(ctx.tmp / "run" / "last.pt")["classes"] == ["bg", "cat", "dog"]
            return Plan(_train(ctx, cfg=cfg), check=check)
        return run

    yield Case("train-folder-classes-bom", "train/data", "ok", folder_classes("\ufeffbg\ncat\ndog\n".encode(), "ok"))
    yield Case("train-folder-classes-duplicate", "train/data", "error", folder_classes(b"bg\ncat\ncat\n", "error"))
