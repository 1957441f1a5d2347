"""The bounded queue in front of the model: at most ``max_queue`` requests admitted, one thread runs them all."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Busy", "Ticket", "Worker"]

T = TypeVar("T")


class Busy(Exception):
    """``max_queue`` requests are admitted already."""


class Ticket:
    """One admitted request's place in the queue: freed when the request is done with it *and* its job
    (if one was started) has finished, so an abandoned request whose job still runs keeps its place."""

    def __init__(self, worker: Worker) -> None:
        self._worker, self._holds = worker, 1

    def _hold(self) -> None:
        with self._worker._lock:
            self._holds += 1

    def release(self) -> None:
        with self._worker._lock:
            if self._holds > 0:
                self._holds -= 1
                if self._holds == 0:
                    self._worker._admitted -= 1

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Worker:
    """Admission (``admit``: a :class:`Ticket`, or :class:`Busy` past ``max_queue``) before a request's
    body is read, and one thread for every job (``run``), so the single model is never run twice at once
    and the work held in memory is bounded by ``max_queue`` requests."""

    def __init__(self, max_queue: int) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._admitted = 0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fcnseg-model")

    @property
    def admitted(self) -> int:
        """Requests admitted now (running or waiting)."""
        return self._admitted

    def admit(self) -> Ticket:
        with self._lock:
            if self._admitted >= self.max_queue:
                raise Busy(f"{self._admitted} requests are queued (--max-queue {self.max_queue}); retry later")
            self._admitted += 1
        return Ticket(self)

    async def run(self, ticket: Ticket, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the model thread; a request cancelled while waiting drops its job."""
        ticket._hold()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: ticket.release())
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
