"""The served model: one engine, the names and colours of its classes per head, what ``/health`` tells."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcnseg.data.palette import palette_or_default
from fcnseg.errors import ConfigError
from fcnseg.infer.engines import Engine, OrtEngine, choose_engine
from fcnseg.infer.predict import as_engine, predict_labels
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.paths import cache_dir

__all__ = ["ClassTable", "Service", "load_service"]


@dataclass(frozen=True)
class ClassTable:
    """One head's classes: ``names[i]`` drawn in ``palette[i]`` (uint8 RGB)."""

    names: list[str]
    palette: np.ndarray

    def as_json(self) -> list[dict[str, Any]]:
        return [{"index": i, "name": n, "color": [int(c) for c in self.palette[i]]} for i, n in enumerate(self.names)]


def _tables(heads: dict[str, int], names: Any, palette: np.ndarray) -> dict[str, ClassTable]:
    """Per head: the recorded names where their count is the head's, else ``class 0`` …; the palette's first K."""
    ok = isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    return {h: ClassTable(list(names) if ok and len(names) == k else [f"class {i}" for i in range(k)],
                          palette[:k]) for h, k in heads.items()}


class Service:
    """What the server runs: ``labels(rgb, head)`` on the engine (called from one thread only, see
    :class:`fcnseg.serve.worker.Worker`), and the facts ``/classes`` and ``/health`` return."""

    def __init__(self, engine: Engine, tables: dict[str, ClassTable], *, model: dict[str, Any], device: str) -> None:
        if set(tables) != set(engine.heads):
            raise ValueError(f"class tables {sorted(tables)} do not match the engine's heads {sorted(engine.heads)}")
        self.engine, self.tables, self.model, self.device = engine, tables, model, device
        self.heads = list(engine.heads)
        self.started = time.monotonic()

    @property
    def default_head(self) -> str:
        return self.heads[0]

    def labels(self, rgb: np.ndarray, head: str) -> np.ndarray:
        """Label map (H, W) of a uint8 (H, W, 3) RGB image by head ``head``."""
        return predict_labels(self.engine, rgb, head=head)

    def fractions(self, label: np.ndarray, head: str) -> list[dict[str, Any]]:
        """The classes present in ``label``, largest share first: index, name, share of the pixels."""
        names = self.tables[head].names
        counts = np.bincount(label.reshape(-1), minlength=len(names))
        order = np.argsort(-counts, kind="stable")
        return [{"index": int(i), "name": names[i] if i < len(names) else f"class {i}",
                 "fraction": round(float(counts[i] / label.size), 6)} for i in order if counts[i] > 0]

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "engine": self.engine.name, "engine_details": self.engine.describe(),
                "device": self.device,
                "heads": dict(self.engine.heads), "uptime_s": round(time.monotonic() - self.started, 3)}


def load_service(path: str | os.PathLike, engine: str = "auto", device: str | torch.device = "cpu",
                 log: Callable[[str], None] | None = None) -> Service:
    """The service for a checkpoint (``fcnseg train``) or an ONNX file (``fcnseg export``).

    ``engine``: ``auto`` picks the fastest exact engine for ``device`` as ``fcnseg predict`` does
    (:func:`fcnseg.infer.engines.choose_engine`, exports cached in the engine cache); ``torch`` runs the
    PyTorch model as trained. An ONNX file runs in ONNX Runtime on the CPU. Errors are one line naming
    the file (:class:`fcnseg.errors.CheckpointError`, :class:`~fcnseg.errors.ConfigError`).
    """
    if engine not in ("auto", "torch"):
        raise ConfigError(f"--engine must be auto or torch, got {engine!r}")
    path, device = Path(path), torch.device(device)
    if path.suffix.lower() == ".onnx":
        if engine == "torch":
            raise ConfigError(f"--engine torch: {path} is an ONNX export, run by ONNX Runtime; "
                              "give the checkpoint to run PyTorch")
        if device.type != "cpu":
            raise ConfigError(f"--device {device}: an ONNX file is served on the CPU (ONNX Runtime)")
        ort = OrtEngine(path)
        meta, names, raw_palette = ort.meta, ort.meta.get("classes"), ort.meta.get("palette")
        config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
        eng: Engine = ort
    else:
        model, ckpt = model_from_checkpoint(path, map_location="cpu")
        names, raw_palette, config = ckpt.get("classes"), ckpt.get("palette"), model.spec.to_dict()
        checksum = ckpt["checksum"]
        del ckpt
        if engine == "auto":  # a server scores open-ended numbers of images, of any size
            eng = choose_engine(model.eval(), device, images=None, cache_dir=cache_dir("engines"), checksum=checksum,
                                log=log)
        else:
            eng = as_engine(model.eval(), device)
        del model
    palette = palette_or_default(raw_palette, f"{'ONNX file' if path.suffix.lower() == '.onnx' else 'checkpoint'} "
                                 f"{path}", max(eng.heads.values()))
    info = {"file": path.name, "name": config.get("name"), "backbone": config.get("backbone")}
    return Service(eng, _tables(eng.heads, names, palette), model=info, device=str(device))
