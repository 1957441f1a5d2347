"""The routes of ``fcnseg serve`` (Starlette), and :func:`serve`, which runs them under uvicorn.

``POST /predict`` (images → labels, see :mod:`fcnseg.serve.jobs`), ``GET /classes`` (names and colours
per head), ``GET /health`` (model, engine, device, uptime, requests served), ``GET /`` (the upload page,
one self-contained file). Every refusal is ``{"error": "<one line>"}`` with its status; nothing a client
sends stops the server.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fcnseg.errors import one_line
from fcnseg.serve.jobs import parse_options, predict_job
from fcnseg.serve.limits import Limits
from fcnseg.serve.service import Service
from fcnseg.serve.uploads import Problem, read_uploads
from fcnseg.serve.worker import Busy, Worker

__all__ = ["create_app", "serve", "ROUTES"]

ROUTES = "GET /, GET /classes, GET /health, POST /predict"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(Exception(message), 500)}, status_code=status, headers=headers)


class _PredictCounts:
    """ASGI middleware: counts the statuses of ``/predict`` answers (for ``/health``)."""

    def __init__(self, app: ASGIApp, counts: Counter) -> None:
        self.app, self.counts = app, counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/predict":
            await self.app(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counts[int(message["status"])] += 1
            await send(message)

        await self.app(scope, receive, counted)


def create_app(service: Service, limits: Limits | None = None, log: Callable[[str], None] | None = None) -> Starlette:
    """The ASGI app serving ``service`` under ``limits`` (one :class:`~fcnseg.serve.worker.Worker`)."""
    limits = limits or Limits()
    worker = Worker(limits.max_queue)
    counts: Counter = Counter()
    page = (files("fcnseg.serve") / "static" / "index.html").read_text(encoding="utf-8")
    say = log or (lambda m: print(f"fcnseg serve: {m}", file=sys.stderr, flush=True))

    async def predict(request: Request) -> Response:
        t0 = time.perf_counter()
        opts = parse_options(dict(request.query_params), service.heads)
        try:
            ticket = worker.admit()
        except Busy as e:
            raise Problem(503, str(e), {"Retry-After": "1"}) from None
        try:
            with ticket:
                uploads = await read_uploads(request, limits)
                answer = await worker.run(ticket, predict_job, service, uploads, opts, limits.max_pixels, t0)
        except (Problem, HTTPException):
            raise
        except ClientDisconnect:
            raise Problem(400, "the client went away before sending its whole body") from None
        except MemoryError:
            raise Problem(503, "out of memory for this image: send a smaller one") from None
        except Exception as e:  # a failure of ours: one line for the client and the log, and serve on
            say(f"internal error on POST /predict: {type(e).__name__}: {one_line(e, 300)}")
            raise Problem(500, f"internal error: {type(e).__name__}: {one_line(e, 200)}") from None
        total = f"{time.perf_counter() - t0:.4f}"
        headers = {**(answer.headers or {}), "X-Fcnseg-Total-Seconds": total}
        if answer.data is not None:
            answer.data["timing"]["total_s"] = float(total)
            return JSONResponse(answer.data, headers=headers)
        return Response(answer.body, media_type=answer.media_type, headers=headers)

    async def classes(request: Request) -> Response:
        return JSONResponse({"heads": service.heads, "default_head": service.default_head,
                             "classes": {h: t.as_json() for h, t in service.tables.items()}})

    async def health(request: Request) -> Response:
        served = counts[200]
        return JSONResponse({"status": "ok", **service.describe(),
                             "requests": {"served": served, "refused": sum(counts.values()) - served,
                                          "by_status": {str(k): v for k, v in sorted(counts.items())}},
                             "queue": {"admitted": worker.admitted, "max": limits.max_queue},
                             "limits": {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                                        "max_images": limits.max_images}})

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return _error(exc.status, str(exc), exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return _error(404, f"no route {where} (routes: {ROUTES})")
        if exc.status_code == 405:
            allowed = (exc.headers or {}).get("allow", (exc.headers or {}).get("Allow", ""))
            return _error(405, f"{where} is not allowed (allowed: {allowed})", exc.headers)
        return _error(exc.status_code, f"{where}: {exc.detail}", exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        worker.close()

    routes = [Route("/", index, methods=["GET"]), Route("/predict", predict, methods=["POST"]),
              Route("/classes", classes, methods=["GET"]), Route("/health", health, methods=["GET"])]
    handlers: dict[Any, Any] = {Problem: problem, HTTPException: http_error}
    return Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan,
                     middleware=[Middleware(_PredictCounts, counts=counts)])


def serve(service: Service, limits: Limits, host: str = "127.0.0.1", port: int = 8000, access_log: bool = False,
          log: Callable[[str], None] | None = None) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: requests in flight finish, then it stops)."""
    app = create_app(service, limits, log)
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=access_log,
                            timeout_keep_alive=5, limit_concurrency=4 * limits.max_queue + 32)
    uvicorn.Server(config).run()
