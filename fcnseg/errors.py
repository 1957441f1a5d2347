"""User-facing errors: one line, naming the file or option at fault."""


class FcnsegError(Exception):
    """Base of all errors the CLI reports as a one-line message (exit code 2)."""


class ConfigError(FcnsegError, ValueError):
    """A bad option, config key or config file."""


class CheckpointError(FcnsegError, ValueError):
    """A checkpoint or weights file that is missing, corrupt or does not fit."""
