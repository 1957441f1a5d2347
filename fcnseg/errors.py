"""User-facing errors: one line, naming the file or option at fault."""
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class FcnsegError(Exception):
    """Base of all errors the CLI reports as a one-line message (exit code 2)."""


class ConfigError(FcnsegError, ValueError):
    """A bad option, config key or config file."""


class CheckpointError(FcnsegError, ValueError):
    """A checkpoint or weights file that is missing, corrupt or does not fit."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(e: BaseException, limit: int = 1000, *, first: bool = False, join: bool = False) -> str:
    """The message of ``e`` on one line, the one way every error is shown: terminal escapes removed,
    an OSError's file name put in front when the message lacks it, control characters (e.g. inside a
    file name) escaped, cut to ``limit``. ``first``: only its first non-empty line (for a message
    quoted inside another one); ``join``: all its lines, joined by single spaces (for a library's
    multi-line report, e.g. ``load_state_dict``'s). The type name when the message is empty."""
    text = _ANSI.sub("", str(e)).strip()
    if first:
        text = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if join:
        text = " ".join(text.split())
    text = text or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{e.filename}: {text}"
    text = _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def first_line(e: BaseException, limit: int = 200) -> str:
    """``one_line(e, limit, first=True)``: the first line of a message quoted inside another one."""
    return one_line(e, limit, first=True)


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
