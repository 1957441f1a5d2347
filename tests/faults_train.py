"""Fault-corpus cases of one area (train); collected by :func:`fault_corpus.all_cases`."""
from __future__ import annotations

from typing import Iterator

from fault_corpus import Case


def cases() -> Iterator[Case]:
    yield from ()
