"""Released models by name: ``create_model("fcn8s", weights="voc-fcn8s")``.

``RELEASES`` lists the 14 caffemodels of the FCN reference (fcn.berkeleyvision.org, each
``*/caffemodel-url``) and torchvision's ImageNet trunks (``weights="imagenet"`` resolves to
``imagenet-<backbone>``). Each entry says which net it builds (model, backbone, classes, late-fusion
streams) and the input preprocessing of the reference's data layer.

On first use the file is downloaded into ``cache_dir()/downloads`` (a ``.part`` file, resumed with
an HTTP Range request after an interruption; the ``.part.json`` beside it keeps the server's ETag /
Last-Modified, sent as ``If-Range`` so that a file changed on the server is fetched whole again, not
spliced onto the old part; a server that gives neither is not resumed), its size checked against Content-Length and its
SHA-256 against the hash prefix in torchvision's file name, or, for the Caffe releases, against
the hash recorded at their first download (trust on first use, kept in
``cache_dir()/releases.json`` and printed). It is converted once to safetensors (caffemodel: each
layer's blobs; .pth: the state_dict as is) with a ``.sha256`` record beside it, and the download
is removed; later loads read only the safetensors. One process at a time fetches a release (a lock
file beside the download): a second waits and reuses what the first converted. Without network,
the error names the URL and the path where the file can be put by hand.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn
from tqdm import tqdm

from fcnseg.atomic import write_bytes, write_json
from fcnseg.errors import one_line
from fcnseg.models.preprocessing import CAFFE_VGG, TORCHVISION, Preprocessing, StreamPreprocessing
from fcnseg.models.weights.caffe import read_caffemodel
from fcnseg.models.weights.common import WeightsError
from fcnseg.models.weights.files import (
    CAFFE_LAYERS_FORMAT,
    is_caffe_layers,
    load_weights_file,
    read_caffe_layers,
    read_tensors,
    record_weights,
)
from fcnseg.paths import cache_dir, matches_record, sha256_file, write_record

__all__ = ["Release", "RELEASES", "DownloadError", "resolve", "release_arguments", "fetch", "load_release",
           "read_caffe_layers", "is_caffe_layers", "download"]

TIMEOUT_S = 30.0
ATTEMPTS = 3   # one download plus two resumes after a dropped connection

# Means of the reference's data layers (BGR order, 0-255).
VOC_MEAN = CAFFE_VGG                                                      # voc_layers.py
SIFTFLOW = Preprocessing(bgr=True, scale=1.0, mean=(114.578, 115.294, 108.353), name="siftflow-mean")
NYUD_COLOR = Preprocessing(bgr=True, scale=1.0, mean=(116.190, 97.203, 92.318), name="nyud-color")
NYUD_HHA = Preprocessing(bgr=False, scale=1.0, mean=(132.431, 94.076, 118.477), name="nyud-hha")
CONTEXT = Preprocessing(bgr=True, scale=1.0, mean=(104.007, 116.669, 122.679), name="pascalcontext-mean")
NYUD_COLOR_HHA = StreamPreprocessing((("color", 3, NYUD_COLOR), ("hha", 3, NYUD_HHA)))

SIFTFLOW_HEADS = {"semantic": 33, "geometric": 3}


class DownloadError(WeightsError):
    """A release could not be downloaded or failed its size / hash check; names URL and by-hand path."""


@dataclass(frozen=True)
class Release:
    """A published weight file and the net it belongs to."""

    name: str
    url: str
    model: str | None                    # None: a trunk for any model of the backbone (ImageNet)
    backbone: str
    num_classes: int | dict[str, int] | None
    preprocessing: Any
    streams: dict[str, int] | None = None
    net_kwargs: dict = field(default_factory=dict)   # backbone arguments; the caller's override them
    kind: str = "caffe"                  # "caffe" (.caffemodel) or "torchvision" (.pth state_dict)
    sha256: str | None = None            # full hash when known (else trust on first use)
    size: int | None = None              # bytes, when known
    notes: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def hash_prefix(self) -> str | None:
        """torchvision's convention: ``name-<sha256 prefix>.pth``."""
        m = re.search(r"-([0-9a-f]{6,64})\.pth$", self.filename)
        return m.group(1) if m else None


_DL = "http://dl.caffe.berkeleyvision.org/"
_TV = "https://download.pytorch.org/models/"


def _caffe(name: str, file: str, model: str, classes, pre, backbone: str = "vgg16", **kw) -> Release:
    return Release(name, _DL + file, model, backbone, classes, pre, **kw)


def _trunk(name: str, url: str, model: None, backbone: str, classes: None, pre, **kw) -> Release:
    return Release(name, url, model, backbone, classes, pre, kind="torchvision", **kw)


RELEASES: dict[str, Release] = {r.name: r for r in (
    _caffe("voc-fcn32s", "fcn32s-heavy-pascal.caffemodel", "fcn32s", 21, VOC_MEAN),
    _caffe("voc-fcn16s", "fcn16s-heavy-pascal.caffemodel", "fcn16s", 21, VOC_MEAN),
    _caffe("voc-fcn8s", "fcn8s-heavy-pascal.caffemodel", "fcn8s", 21, VOC_MEAN),
    _caffe("voc-fcn8s-atonce", "fcn8s-atonce-pascal.caffemodel", "fcn8s-atonce", 21, VOC_MEAN),
    _caffe("voc-fcn-alexnet", "fcn-alexnet-pascal.caffemodel", "fcn32s", 21, VOC_MEAN, backbone="alexnet"),
    _caffe("siftflow-fcn32s", "siftflow-fcn32s-heavy.caffemodel", "fcn32s", SIFTFLOW_HEADS, SIFTFLOW),
    _caffe("siftflow-fcn16s", "siftflow-fcn16s-heavy.caffemodel", "fcn16s", SIFTFLOW_HEADS, SIFTFLOW),
    _caffe("siftflow-fcn8s", "siftflow-fcn8s-heavy.caffemodel", "fcn8s", SIFTFLOW_HEADS, SIFTFLOW),
    _caffe("nyud-fcn32s-color", "nyud-fcn32s-color-heavy.caffemodel", "fcn32s", 40, NYUD_COLOR),
    _caffe("nyud-fcn32s-hha", "nyud-fcn32s-hha-heavy.caffemodel", "fcn32s", 40, NYUD_HHA),
    _caffe("nyud-fcn32s-color-hha", "nyud-fcn32s-color-hha-heavy.caffemodel", "fcn32s", 40, NYUD_COLOR_HHA,
           streams={"color": 3, "hha": 3}, notes="late fusion of a colour and an HHA stream"),
    _caffe("pascalcontext-fcn32s", "pascalcontext-fcn32s-heavy.caffemodel", "fcn32s", 60, CONTEXT),
    _caffe("pascalcontext-fcn16s", "pascalcontext-fcn16s-heavy.caffemodel", "fcn16s", 60, CONTEXT),
    _caffe("pascalcontext-fcn8s", "pascalcontext-fcn8s-heavy.caffemodel", "fcn8s", 60, CONTEXT),
    _trunk("imagenet-vgg16", _TV + "vgg16-397923af.pth", None, "vgg16", None, TORCHVISION),
    _trunk("imagenet-alexnet", _TV + "alexnet-owt-7be5be79.pth", None, "alexnet", None, TORCHVISION,
            net_kwargs={"layout": "torchvision"}),
    _trunk("imagenet-googlenet", _TV + "googlenet-1378be20.pth", None, "googlenet", None, None),
    _trunk("imagenet-resnet50", _TV + "resnet50-0676ba61.pth", None, "resnet50", None, TORCHVISION),
    _trunk("imagenet-resnet101", _TV + "resnet101-63fe2227.pth", None, "resnet101", None, TORCHVISION),
)}


def resolve(weights: Any, backbone: str | None = None) -> Release | None:
    """The release ``weights`` names (``"imagenet"`` → ``imagenet-<backbone>``), else None."""
    if not isinstance(weights, str):
        return None
    if weights == "imagenet":
        weights = f"imagenet-{backbone or 'vgg16'}"
        if weights not in RELEASES:
            raise ValueError(f"weights='imagenet': no ImageNet release for backbone {backbone!r}; "
                             f"available: {sorted(r.backbone for r in RELEASES.values() if r.model is None)}")
    return RELEASES.get(weights)


def release_arguments(release: Release, name: str, num_classes, backbone: str | None,
                      streams: dict[str, int] | None, kwargs: dict) -> tuple[str, Any, str, dict | None, dict]:
    """``create_model``'s arguments completed from ``release``; a conflicting one is a ValueError.

    Returns (model name, num_classes, backbone, streams, backbone kwargs); the caller's kwargs
    (e.g. ``width`` for a reduced net) override the release's ``net_kwargs``.
    """
    if "@" in name:
        name, given = name.split("@", 1)
        if backbone not in (None, given):
            raise ValueError(f"model {name}@{given} and backbone={backbone!r} disagree")
        backbone = given
    where = f"weights={release.name!r}"
    if backbone not in (None, release.backbone):
        raise ValueError(f"{where} is for backbone {release.backbone}, not {backbone}")
    if release.model is not None and name != release.model:
        raise ValueError(f"{where} is a {release.model} net; use create_model({release.model!r}, "
                         f"weights={release.name!r}) (got {name!r})")
    if release.num_classes is not None:
        if num_classes is not None and num_classes != release.num_classes:
            raise ValueError(f"{where} has {release.num_classes} classes, not {num_classes}; "
                             "load it and then replace the score layers (fcnseg.models.surgery) to change them")
        num_classes = release.num_classes
    elif num_classes is None:
        raise ValueError(f"{where} is an ImageNet trunk: pass num_classes")
    if release.streams is not None:
        if streams not in (None, release.streams):
            raise ValueError(f"{where} has streams {release.streams}, not {streams}")
        streams = dict(release.streams)
    elif streams and release.model is not None:
        raise ValueError(f"{where} is a single-stream net; streams={streams} do not apply")
    return name, num_classes, release.backbone, streams, {**release.net_kwargs, **kwargs}


# ---------------------------------------------------------------- cache and download

def downloads_dir() -> Path:
    return cache_dir("downloads")


def converted_path(release: Release) -> Path:
    return cache_dir() / f"{release.name}.safetensors"


def _records_path() -> Path:
    return cache_dir() / "releases.json"


def _records() -> dict:
    path = _records_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise WeightsError(f"{path}: unreadable record of release hashes ({e}); delete it to re-record") from None
    return data if isinstance(data, dict) else {}


def _by_hand(release: Release) -> str:
    return f"download it by hand to {downloads_dir() / release.filename} and rerun"


def download(url: str, dest: Path, *, attempts: int = ATTEMPTS, progress: bool = True) -> int:
    """Fetch ``url`` into ``dest`` through ``dest.part``, resuming after a dropped connection.

    Returns the size; raises ``OSError``/``urllib.error.URLError``/``ValueError`` (size mismatch)
    for the caller to word. A ``.part`` left by an earlier run is resumed too, if the server still
    has the same file (``If-Range`` with the validator kept in ``dest.part.json``). The caller holds
    the release's lock (:func:`fetch`).
    """
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(attempts):
        try:
            total = _get(url, part, progress)
        except (http.client.HTTPException, ConnectionError, TimeoutError) as e:
            if attempt + 1 == attempts:
                raise OSError(f"connection dropped after {part.stat().st_size if part.exists() else 0} bytes "
                              f"({type(e).__name__})") from None
            continue
        got = part.stat().st_size
        if total is not None and got < total:
            if attempt + 1 < attempts:
                continue
            raise OSError(f"connection dropped after {got} of {total} bytes (kept for a resume)")
        if total is not None and got > total:
            _discard(part)
            raise ValueError(f"size {got} bytes, the server announced {total}")
        os.replace(part, dest)
        _validator_path(part).unlink(missing_ok=True)
        return got
    raise AssertionError("unreachable")


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _validator(headers: Any) -> str | None:
    """What ``If-Range`` may carry for this response: a strong ETag, else Last-Modified, else None."""
    etag = headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return headers.get("Last-Modified")


def _resume_from(url: str, part: Path) -> tuple[int, str | None]:
    """(bytes to keep, the validator to send) for a ``.part``: 0 where it cannot be resumed safely."""
    if not part.exists():
        return 0, None
    try:
        kept = json.loads(_validator_path(part).read_text())
    except (OSError, ValueError):
        kept = {}
    validator = kept.get("validator") if isinstance(kept, dict) and kept.get("url") == url else None
    return (part.stat().st_size, validator) if validator else (0, None)


def _get(url: str, part: Path, progress: bool) -> int | None:
    """One request, appending to ``part`` from its current size (if the server's file is unchanged);
    returns the expected total size."""
    have, validator = _resume_from(url, part)
    headers = {"Range": f"bytes={have}-", "If-Range": validator} if have else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:   # nothing left to send: the .part is complete (checked by the caller)
            return None
        raise
    with response:
        if have and response.status != 206:   # the file changed (If-Range) or the Range was ignored: start over
            have = 0
        if not have:
            write_json(_validator_path(part), {"url": url, "validator": _validator(response.headers)})
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=part.name[:-5],
                disable=not progress, file=sys.stderr, leave=False) as bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
    return total


def _verify(release: Release, path: Path) -> str:
    """SHA-256 of the downloaded ``path`` checked (torchvision prefix / table / first-use record)."""
    digest = sha256_file(path)
    size = path.stat().st_size
    expected = release.sha256 or _records().get(release.name, {}).get("sha256")
    problem = None
    if release.size is not None and size != release.size:
        problem = f"size {size} bytes, expected {release.size}"
    elif release.hash_prefix and not digest.startswith(release.hash_prefix):
        problem = f"SHA-256 {digest[:16]}…, expected prefix {release.hash_prefix}"
    elif expected and digest != expected:
        problem = f"SHA-256 {digest}, recorded {expected} at first download"
    if problem:
        path.unlink(missing_ok=True)
        raise DownloadError(f"{release.url}: {problem}; removed {path}; {_by_hand(release)}")
    if not release.hash_prefix and not expected:
        records = _records()
        records[release.name] = {"url": release.url, "sha256": digest, "size": size}
        write_json(_records_path(), records, indent=1, sort_keys=True)
        print(f"fcnseg: {release.name}: recorded SHA-256 {digest} ({size} bytes) at first download in "
              f"{_records_path()}; later downloads are checked against it", file=sys.stderr)
    return digest


def fetch(release: Release, *, progress: bool = True) -> Path:
    """The converted safetensors of ``release``, downloading and converting it on first use. One
    process (or thread) at a time: a second waits on the lock and then finds the first one's file."""
    target = converted_path(release)
    if target.exists() and matches_record(target):
        return target
    downloads_dir().mkdir(parents=True, exist_ok=True)
    from filelock import FileLock  # noqa: PLC0415 (a fetch is rare: every other command skips its import)

    with FileLock(downloads_dir() / f"{release.filename}.lock"):
        return _fetch_locked(release, target, progress)


def _fetch_locked(release: Release, target: Path, progress: bool) -> Path:
    if target.exists():
        if matches_record(target):   # converted by another process while this one waited
            return target
        warnings.warn(f"{target}: cached weights fail their SHA-256 check; fetching {release.name} again",
                      RuntimeWarning, stacklevel=3)
    raw = downloads_dir() / release.filename
    if not raw.exists():
        try:
            download(release.url, raw, progress=progress)
        except urllib.error.HTTPError as e:
            raise DownloadError(f"cannot download {release.url} (HTTP {e.code} {e.reason}); "
                                f"{_by_hand(release)}") from None
        except urllib.error.URLError as e:
            raise DownloadError(f"cannot download {release.url} ({_reason(e.reason)}); {_by_hand(release)}") from None
        except (OSError, ValueError) as e:
            raise DownloadError(f"cannot download {release.url} ({_reason(e)}); {_by_hand(release)}") from None
    digest = _verify(release, raw)
    _convert(release, raw, digest, target)
    raw.unlink(missing_ok=True)
    return target


def _reason(e: Any) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return one_line(e, join=True)


def _convert(release: Release, raw: Path, digest: str, target: Path) -> None:
    meta = {"release": release.name, "source": release.url, "source_sha256": digest}
    if release.kind == "caffe":
        layers = read_caffemodel(raw)
        tensors = {f"{i:04d}/{b}": torch.from_numpy(np.ascontiguousarray(blob))
                   for i, layer in enumerate(layers) for b, blob in enumerate(layer.blobs)}
        meta.update(format=CAFFE_LAYERS_FORMAT,
                    layers=json.dumps([[layer.name, layer.type, len(layer.blobs)] for layer in layers]))
    else:
        state = read_tensors(raw, "torch")
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise DownloadError(f"{release.url}: holds no state_dict of tensors; removed {raw}")
        tensors = {k: v.contiguous() for k, v in state.items()}
    data = save(tensors, metadata=meta)
    write_bytes(target, data)
    write_record(target, target.name, hashlib.sha256(data).hexdigest())


# ---------------------------------------------------------------- loading

def load_release(model: nn.Module, release: Release, *, progress: bool = True) -> list[str]:
    """Load ``release`` into ``model`` and set its preprocessing; returns the unused torchvision keys.

    A Caffe release's every layer with blobs must find a place in the model: one left over
    means the net or the layer-name mapping is wrong, and is an error rather than silently random.
    """
    path = fetch(release, progress=progress)
    unused = load_weights_file(model, path)
    record_weights(model, path)
    if release.kind == "caffe" and unused:
        raise WeightsError(f"{release.name}: {len(unused)} layer(s) of the release have no place in the model "
                           f"({', '.join(unused[:6])}); build it with create_model({release.model!r}, "
                           f"weights={release.name!r})")
    if release.preprocessing is not None:
        _set_preprocessing(model, release.preprocessing)
    return unused


def _set_preprocessing(model: nn.Module, pre: Any) -> None:
    streams = getattr(model, "streams", None)
    if isinstance(pre, StreamPreprocessing) and isinstance(streams, nn.ModuleDict):
        for name, _, p in pre.streams:
            streams[name].preprocessing = p
    model.preprocessing = pre


def with_url(release: Release, url: str, **changes) -> Release:
    """A copy of ``release`` fetched from ``url`` (mirrors, tests)."""
    return replace(release, url=url, **changes)


def describe_releases() -> str:
    """A plain-text table of the releases: name, what it builds, URL."""
    rows = [f"{'weights':24s} {'builds':44s} url"]
    for r in RELEASES.values():
        if r.model is None:
            builds = f"any model @{r.backbone} (ImageNet trunk; weights='imagenet')"
        else:
            classes = "+".join(map(str, r.num_classes.values())) if isinstance(r.num_classes, dict) else r.num_classes
            builds = f"{r.model}@{r.backbone}, {classes} classes" + (
                f", streams {'+'.join(r.streams)}" if r.streams else "")
        rows.append(f"{r.name:24s} {builds:44s} {r.url}")
    return "\n".join(rows)
