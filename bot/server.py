"""The one HTTP server of webhook mode (starlette, run by uvicorn).

Routes:

* ``POST /telegram`` — Telegram updates; the ``X-Telegram-Bot-Api-Secret-Token`` header must be
  ``WEBHOOK_SECRET`` (403 otherwise); the update goes into PTB's ``update_queue`` and the call is
  answered at once.
* ``POST /comfydeploy/webhook?r=<run id>&t=<token>`` — ComfyDeploy run callbacks. The per-run
  HMAC token is checked synchronously (cheap) so forged calls get 403; valid ones are answered 200
  at once and applied by a background task (kept referenced until done). A ``GET`` to the same
  path answers 200 and does nothing (ComfyDeploy has been seen retrying webhooks as GET).
* ``GET /healthz`` — ``{"status": "ok"}`` when the database answers, 503 otherwise.
* ``GET /metrics`` — Prometheus text format.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application

from bot.app import get_runtime, initialize, shutdown
from bot.config import Settings
from bot.metrics import CONTENT_TYPE, Metrics, default_metrics
from generation.tokens import verify_webhook_token
from handlers.deps import Services

log = logging.getLogger(__name__)

TELEGRAM_PATH = "/telegram"
COMFYDEPLOY_PATH = "/comfydeploy/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1_000_000  # updates and run callbacks are small; refuse anything huge
MAX_WEBHOOK_TASKS = 256  # ComfyDeploy callbacks processed at once; more get 503 (it retries)
MAX_QUEUED_UPDATES = 2_000  # Telegram updates waiting; more get 503 (Telegram retries)
# uvicorn limits (issue 11, point 6): connections served at once (more get 503), idle
# keep-alive, and the largest request head h11 buffers (headers included).
HTTP_LIMIT_CONCURRENCY = 256
HTTP_KEEP_ALIVE_SECONDS = 5
HTTP_MAX_HEAD_BYTES = 16 * 1024


class BodyTooLarge(Exception):
    pass


def _webhook_secret(settings: Settings, secret: str) -> str:
    if not secret and settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    if not secret:
        raise ValueError("no webhook secret: set WEBHOOK_SECRET or let post_init generate one")
    return secret


async def read_body_capped(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The body, read as a stream and abandoned as soon as it passes ``limit`` (a declared
    ``Content-Length`` over it is refused before reading anything)."""
    declared = request.headers.get("content-length", "")
    if declared.strip().isdigit() and int(declared) > limit:
        raise BodyTooLarge
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


async def _read_json(request: Request) -> Any:
    return json.loads(await read_body_capped(request))


def _too_large() -> Response:
    return PlainTextResponse("payload too large", status_code=413)


def _busy() -> Response:
    return PlainTextResponse("busy", status_code=503, headers={"retry-after": "5"})


def _metrics_authorized(request: Request, token: str) -> bool:
    """``Authorization: Bearer <METRICS_TOKEN>`` (or ``?token=``), compared in constant time."""
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    given = given or request.query_params.get("token", "")
    return bool(given) and hmac.compare_digest(given.encode(), token.encode())


class WebhookTasks:
    """Background tasks for accepted ComfyDeploy callbacks, referenced until they finish."""

    def __init__(self, limit: int = MAX_WEBHOOK_TASKS) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self.limit = limit

    @property
    def full(self) -> bool:
        return len(self._tasks) >= self.limit

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("processing a ComfyDeploy webhook failed", exc_info=task.exception())

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float = 10.0) -> None:
        """Wait for pending tasks (at most ``grace`` seconds), cancelling what is left."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class _Routes:
    """The endpoints of :func:`create_app` (methods, so each stays simple)."""

    def __init__(
        self,
        application: Application,
        services: Services,
        secret: str,
        metrics: Metrics,
        metrics_token: str,
    ) -> None:
        self.application = application
        self.services = services
        self.secret = secret
        self.metrics = metrics
        self.metrics_token = metrics_token
        self.run_key = secret
        self.tasks = WebhookTasks()

    async def telegram(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.secret.encode()):
            self.metrics.inc("webhook_rejected_total", labels={"source": "telegram"})
            return PlainTextResponse("forbidden", status_code=403)
        if self.application.update_queue.qsize() >= MAX_QUEUED_UPDATES:
            return _busy()
        try:
            data = await _read_json(request)
            update = Update.de_json(data, self.application.bot)
        except BodyTooLarge:
            return _too_large()
        except Exception:
            return PlainTextResponse("bad request", status_code=400)
        if update is None:
            return PlainTextResponse("bad request", status_code=400)
        await self.application.update_queue.put(update)
        return Response(status_code=200)

    async def comfydeploy(self, request: Request) -> Response:
        if request.method == "GET":  # retry-as-GET: acknowledge, change nothing
            return Response(status_code=200)
        run_ref = request.query_params.get("r")
        token = request.query_params.get("t")
        if not run_ref or not token or not verify_webhook_token(self.run_key, run_ref, token):
            self.metrics.inc("webhook_rejected_total", labels={"source": "comfydeploy"})
            return PlainTextResponse("forbidden", status_code=403)
        if self.tasks.full:
            return _busy()
        try:
            payload = await _read_json(request)
        except BodyTooLarge:
            return _too_large()
        except Exception:
            return PlainTextResponse("bad request", status_code=400)
        if not isinstance(payload, dict):
            return PlainTextResponse("bad request", status_code=400)
        self.metrics.inc("comfydeploy_webhooks_total")
        self.tasks.spawn(self.services.generation.process_webhook(payload, token, run_ref))
        return Response(status_code=200)

    async def healthz(self, request: Request) -> Response:
        try:
            ok = await self.services.storage.ping()
            if not ok:
                raise RuntimeError("no answer")
        except Exception as exc:
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    async def metrics_route(self, request: Request) -> Response:
        if self.metrics_token and not _metrics_authorized(request, self.metrics_token):
            return PlainTextResponse("unauthorized", status_code=401)
        return Response(
            await self.metrics.render(), media_type=None, headers={"content-type": CONTENT_TYPE}
        )


def create_app(
    application: Application,
    settings: Settings,
    services: Services,
    *,
    webhook_secret: str = "",
    run_webhook_key: str | None = None,
    metrics: Metrics | None = None,
) -> Starlette:
    """The starlette app serving Telegram and ComfyDeploy webhooks, health and metrics."""
    secret = _webhook_secret(settings, webhook_secret)
    # ``run_webhook_key`` verifies the per-run tokens (bot/app.py stores it apart from the
    # Telegram secret); without one (unit tests) the Telegram secret is used.
    run_key = run_webhook_key or secret
    metrics = metrics or default_metrics()
    token = settings.metrics_token
    routes = _Routes(
        application, services, secret, metrics, token.get_secret_value() if token else ""
    )
    routes.run_key = run_key
    tasks = routes.tasks
    metrics.gauge_callback(
        "webhook_tasks", lambda: len(tasks), "ComfyDeploy callbacks being processed"
    )
    app = Starlette(
        routes=[
            Route(TELEGRAM_PATH, routes.telegram, methods=["POST"]),
            Route(COMFYDEPLOY_PATH, routes.comfydeploy, methods=["POST", "GET"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/metrics", routes.metrics_route, methods=["GET"]),
        ]
    )
    app.state.webhook_tasks = tasks
    return app


class ReadyServer(uvicorn.Server):
    """uvicorn.Server that sets ``ready`` once it listens (callers await it instead of
    polling). ``handle_signals=False``: the owner handles SIGINT/SIGTERM itself (local mode).
    Otherwise signals stop serving but are not re-raised once serving stops: uvicorn would
    kill the process before ``serve_webhook``'s clean shutdown (PTB, the generation service,
    the database) runs."""

    def __init__(
        self,
        config: uvicorn.Config,
        ready: asyncio.Event | None = None,
        *,
        handle_signals: bool = True,
    ) -> None:
        super().__init__(config)
        self.ready = ready or asyncio.Event()
        self._handle_signals = handle_signals

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    async def start_serving(self, sockets: list[Any] | None = None) -> asyncio.Task[None]:
        """Serve in a task; returns once listening (or raises why it could not start)."""
        serving = asyncio.create_task(self.serve(sockets=sockets), name="http-server")
        ready = asyncio.create_task(self.ready.wait())
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if not self.ready.is_set():
            serving.result()  # raises why it could not start
            raise RuntimeError("the HTTP server stopped at start-up")
        return serving


def http_limits() -> dict[str, Any]:
    """uvicorn options that keep one slow or hostile client from starving the server."""
    return {
        "limit_concurrency": HTTP_LIMIT_CONCURRENCY,
        "timeout_keep_alive": HTTP_KEEP_ALIVE_SECONDS,
        "h11_max_incomplete_event_size": HTTP_MAX_HEAD_BYTES,
        "http": "h11",  # the head limit above is h11's (httptools, if installed, has none)
        "backlog": 256,
    }


async def serve_webhook(application: Application, settings: Settings) -> None:
    """Webhook mode: one uvicorn server for Telegram and ComfyDeploy; stops on SIGTERM/SIGINT.

    uvicorn installs the signal handlers and returns from ``serve()`` on a signal; the
    ``finally`` blocks then stop PTB, the generation service, the backend and the database.
    """
    await initialize(application)
    runtime = get_runtime(application)
    server_app = None
    try:
        assert runtime.services is not None
        server_app = create_app(
            application,
            settings,
            runtime.services,
            webhook_secret=runtime.webhook_secret,
            run_webhook_key=runtime.run_webhook_key,
            metrics=runtime.metrics,
        )
        await application.start()
        config = uvicorn.Config(
            server_app,
            host=settings.listen_host,
            port=settings.listen_port,
            log_config=None,  # use our logging (and its redaction filter)
            access_log=False,  # access lines would carry per-run webhook tokens
            lifespan="off",
            **http_limits(),
        )
        server = runtime.http_server = ReadyServer(config, runtime.http_ready)
        serving = await server.start_serving()
        # Listening: only now tell Telegram where to post.
        log.info("listening on %s:%s", settings.listen_host, settings.listen_port)
        try:
            await application.bot.set_webhook(
                url=f"{settings.public_url}/telegram",
                secret_token=runtime.webhook_secret,
                allowed_updates=Update.ALL_TYPES,
            )
        except BaseException:
            server.should_exit = True
            await serving
            raise
        await serving
    finally:
        try:
            if server_app is not None:
                await server_app.state.webhook_tasks.drain()
        finally:
            await shutdown(application)
