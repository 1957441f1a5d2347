"""Replace a generated section of README.md between ``<!-- BEGIN name -->`` and ``<!-- END name -->``."""
from __future__ import annotations

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def with_section(text: str, name: str, body: str, where: Path = README) -> str:
    """``text`` with section ``name`` replaced by ``body``."""
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    if begin not in text or end not in text:
        raise SystemExit(f"{where}: markers for section {name!r} not found")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.rstrip()}\n{end}{tail}"


def replace_section(name: str, body: str, path: Path = README) -> None:
    path.write_text(with_section(path.read_text(), name, body, path))
