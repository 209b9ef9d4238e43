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
import hmac
import json
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from telegram import Update
from telegram.ext import Application

from bot.config import Settings
from bot.metrics import CONTENT_TYPE, Metrics, default_metrics
from generation.tokens import verify_webhook_token
from handlers.deps import Services

log = logging.getLogger(__name__)

TELEGRAM_PATH = "/telegram"
COMFYDEPLOY_PATH = "/comfydeploy/webhook"
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
MAX_BODY_BYTES = 1_000_000  # updates and run callbacks are small; refuse anything huge


def _webhook_secret(settings: Settings, services: Services) -> str:
    secret = services.extras.get("webhook_secret")
    if not secret and settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    if not secret:
        raise ValueError("no webhook secret: set WEBHOOK_SECRET or let post_init generate one")
    return secret


async def _read_json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ValueError("body too large")
    return json.loads(body)


class WebhookTasks:
    """Background tasks for accepted ComfyDeploy callbacks, referenced until they finish."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

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


def create_app(application: Application, settings: Settings, services: Services) -> Starlette:
    """The starlette app serving Telegram and ComfyDeploy webhooks, health and metrics."""
    secret = _webhook_secret(settings, services)
    metrics: Metrics = services.extras.get("metrics") or default_metrics()
    tasks = WebhookTasks()

    async def telegram(request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "")
        if not hmac.compare_digest(given.encode(), secret.encode()):
            metrics.inc("webhook_rejected_total", labels={"source": "telegram"})
            return PlainTextResponse("forbidden", status_code=403)
        try:
            data = await _read_json(request)
            update = Update.de_json(data, application.bot)
        except Exception:
            return PlainTextResponse("bad request", status_code=400)
        if update is None:
            return PlainTextResponse("bad request", status_code=400)
        await application.update_queue.put(update)
        return Response(status_code=200)

    async def comfydeploy(request: Request) -> Response:
        if request.method == "GET":  # retry-as-GET: acknowledge, change nothing
            return Response(status_code=200)
        run_ref = request.query_params.get("r")
        token = request.query_params.get("t")
        if not run_ref or not token or not verify_webhook_token(secret, run_ref, token):
            metrics.inc("webhook_rejected_total", labels={"source": "comfydeploy"})
            return PlainTextResponse("forbidden", status_code=403)
        try:
            payload = await _read_json(request)
        except Exception:
            return PlainTextResponse("bad request", status_code=400)
        if not isinstance(payload, dict):
            return PlainTextResponse("bad request", status_code=400)
        metrics.inc("comfydeploy_webhooks_total")
        tasks.spawn(services.generation.process_webhook(payload, token, run_ref))
        return Response(status_code=200)

    async def healthz(request: Request) -> Response:
        try:
            ok = await services.storage.ping()
            if not ok:
                raise RuntimeError("no answer")
        except Exception as exc:
            log.warning("health check: database unreachable: %s", type(exc).__name__)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "ok"})

    async def metrics_route(request: Request) -> Response:
        return Response(
            await metrics.render(), media_type=None, headers={"content-type": CONTENT_TYPE}
        )

    metrics.gauge_callback(
        "webhook_tasks", lambda: len(tasks), "ComfyDeploy callbacks being processed"
    )
    app = Starlette(
        routes=[
            Route(TELEGRAM_PATH, telegram, methods=["POST"]),
            Route(COMFYDEPLOY_PATH, comfydeploy, methods=["POST", "GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
        ]
    )
    app.state.webhook_tasks = tasks
    return app
