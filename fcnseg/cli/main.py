"""``fcnseg`` entry point: one parser, one sub-command module each, one-line errors."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from fcnseg.cli.common import printable
from fcnseg.errors import ConfigError, FcnsegError, one_line

# sub-command name → help text; its module ``fcnseg.cli.<name>_cmd`` exposes ``add_arguments(parser)`` and ``run(args)``
COMMANDS: dict[str, str] = {
    "train": "Train an FCN from a YAML config (key=value overrides).",
    "eval": "Score a checkpoint on a dataset split: the paper's four metrics and per-class IU.",
    "predict": "Label images or folders with a checkpoint: palette PNGs and overlays.",
    "demo": "Train, evaluate and predict on the bundled CamVid sample (offline, CPU).",
    "export": "Export a checkpoint to ONNX (dynamic height/width) or torch.export.",
    "bench": "Measure latency, throughput, memory and FLOPs, side by side with torchfcn.",
    "reproduce": "Run the paper's ablations (RQ1-RQ4) on CamVid and write RESULTS.md.",
    "serve": "Serve a checkpoint or ONNX file over HTTP: POST /predict, GET /classes, /health, an upload page.",
    "models": "List the model names and their backbones.",
}


class UsageError(ConfigError):
    """A command line argparse rejects (unknown flag, missing or malformed argument)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors raise :class:`UsageError` (one line, exit 2), not usage text + SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        sub = self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""
        raise UsageError(f"{sub}{message} (see {self.prog} --help)")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``only`` (a command name) the other commands' options are left out, so that
    their modules (training, benchmarks, the server ...) are not imported by a command that never runs them."""
    parser = _Parser(prog="fcnseg", description="Fully Convolutional Networks for Semantic "
                                     "Segmentation (Long, Shelhamer, Darrell), in PyTorch.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only is None or name == only:
            module = importlib.import_module(f"fcnseg.cli.{name}_cmd")
            module.add_arguments(p)
            p.set_defaults(run=module.run)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command an argument list names (its first word, after the global ``--debug``), or None."""
    words = [a for a in argv if a != "--debug"]
    return words[0] if words and words[0] in COMMANDS else None


def _error(message: str, code: int) -> int:
    print(f"fcnseg: error: {printable(message)}", file=sys.stderr)
    return code


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings (e.g. items skipped with --skip-bad) as ``fcnseg: warning: <one line>``."""
    text = one_line(message if isinstance(message, BaseException) else category(str(message)))
    print(f"fcnseg: warning: {printable(text)}", file=sys.stderr if file is None else file, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            argv = sys.argv[1:] if argv is None else list(argv)
            parser = build_parser(_command(argv))
            args, extra = parser.parse_known_args(argv)
            if extra:  # KEY=VALUE overrides may also come after the options
                if not hasattr(args, "overrides") or any(x.startswith("-") or "=" not in x for x in extra):
                    parser.error(f"unrecognized arguments: {' '.join(extra)}")
                args.overrides = list(args.overrides or []) + extra
        except UsageError as e:
            return _error(one_line(e), 2)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int | None] = args.run
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except (FcnsegError, OSError) as e:  # bad input or environment: missing, unreadable, unwritable files
        if args.debug:
            traceback.print_exc()
        return _error(one_line(e), 2)
    except MemoryError:
        return _error("out of memory: use smaller images, --tile, or a smaller batch", 3)
    except Exception as e:  # an unexpected failure: still one line unless --debug
        if args.debug or os.environ.get("FCNSEG_DEBUG"):
            traceback.print_exc()
        return _error(f"{type(e).__name__}: {one_line(e)} (rerun with --debug for the traceback)", 1)
