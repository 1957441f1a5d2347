"""``fcnseg serve``: one model behind an HTTP API and an upload page (the work is :mod:`fcnseg.serve`)."""
from __future__ import annotations

import argparse
import sys

from fcnseg.cli.common import add_device, int_argument, pick_device, positive_float, printable
from fcnseg.config import whole
from fcnseg.errors import ConfigError
from fcnseg.serve.limits import Limits
from fcnseg.serve.service import load_service

__all__ = ["add_arguments", "run"]

_DEFAULTS = Limits()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint written by fcnseg train, or an ONNX file written by fcnseg export")
    p.add_argument("--engine", choices=["auto", "torch"], default="auto",
                   help="auto (default): the fastest exact engine for the device, as fcnseg predict picks it; "
                        "torch: the PyTorch model as trained (an ONNX file always runs in ONNX Runtime)")
    add_device(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int_argument(whole(0, 65535)), default=8000, help="port (default 8000)")
    p.add_argument("--max-queue", type=int_argument(whole(1)), default=_DEFAULTS.max_queue,
                   help=f"requests admitted at once, running or waiting; 503 past it (default {_DEFAULTS.max_queue})")
    p.add_argument("--max-bytes", type=int_argument(whole(1)), default=_DEFAULTS.max_bytes,
                   help=f"largest request body in bytes, checked as it streams in; 413 past it "
                        f"(default {_DEFAULTS.max_bytes})")
    p.add_argument("--max-pixels", type=int_argument(whole(1)), default=_DEFAULTS.max_pixels,
                   help=f"largest image W×H, read from its header before decoding; 413 past it "
                        f"(default {_DEFAULTS.max_pixels})")
    p.add_argument("--max-images", type=int_argument(whole(1)), default=_DEFAULTS.max_images,
                   help=f"files in one multipart request (default {_DEFAULTS.max_images})")
    p.add_argument("--read-timeout", type=positive_float, default=_DEFAULTS.read_timeout,
                   help=f"seconds a client may take to send its body; 408 past it (default {_DEFAULTS.read_timeout:g})")
    p.add_argument("--access-log", action="store_true", help="log every request (uvicorn's access log)")


def run(args: argparse.Namespace) -> int:
    try:
        from fcnseg.serve.app import serve  # noqa: PLC0415 (optional: the [serve] extra, Starlette + uvicorn)
    except ImportError as e:
        raise ConfigError(f"fcnseg serve needs the serve extra ({e.name} is missing): pip install 'fcnseg[serve]'") \
            from None

    def log(message: str) -> None:
        print(printable(f"fcnseg serve: {message}"), file=sys.stderr, flush=True)

    service = load_service(args.checkpoint, args.engine, pick_device(args.device), log=log)
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels, max_images=args.max_images,
                    max_queue=args.max_queue, read_timeout=args.read_timeout)
    log(f"{args.checkpoint}: engine {service.engine.name} on {service.device}, heads "
        f"{', '.join(f'{h} ({len(t.names)} classes)' for h, t in service.tables.items())}")
    log(f"open http://{args.host}:{args.port}/ (API: POST /predict, GET /classes, GET /health)")
    serve(service, limits, args.host, args.port, access_log=args.access_log, log=log)
    return 0
