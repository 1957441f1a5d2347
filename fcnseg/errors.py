"""User-facing errors: one line, naming the file or option at fault."""
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FcnsegError(Exception):
    """Base of all errors the CLI reports as a one-line message (exit code 2)."""


class ConfigError(FcnsegError, ValueError):
    """A bad option, config key or config file."""


class CheckpointError(FcnsegError, ValueError):
    """A checkpoint or weights file that is missing, corrupt or does not fit."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of ``str(e)`` without terminal escapes (else the type name), cut to ``limit``."""
    lines = [ln.strip() for ln in _ANSI.sub("", str(e)).splitlines() if ln.strip()]
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unwrap_worker_error(e: BaseException) -> BaseException:
    """The error a DataLoader worker raised, with its own message back.

    torch re-raises a worker's exception as ``type(e)("Caught X in DataLoader worker process N.
    Original Traceback ... module.X: message")``; the one line worth showing is the message."""
    text = str(e)
    if not text.startswith("Caught ") or "DataLoader worker" not in text.splitlines()[0]:
        return e
    kind = type(e)
    for prefix in (f"{kind.__module__}.{kind.__qualname__}: ", f"{kind.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            try:
                return kind(text[at + 1 + len(prefix):].rstrip("\n"))
            except Exception:  # an error type that takes other arguments: keep torch's
                return e
    return e
