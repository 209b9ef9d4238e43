"""Composition root: builds the PTB ``Application`` and wires storage, the generation module,
translations and handlers into it.

Lifecycle (PTB calls these around ``run_polling``; the webhook runner calls them itself):

* ``post_init``: open storage, resolve the webhook secret (generated and stored when unset),
  build the backend (ComfyDeploy client, or the local preview backend — see
  ``Settings.preview_backend``) and the :class:`GenerationService`, put :class:`Services` into
  ``bot_data``, register handlers, localize the command menu, start the service.
* ``post_stop``: stop the service (its own tasks; PTB's ``stop()`` never waits for generations).
* ``post_shutdown``: close the ComfyDeploy client and the database.

Each close step runs even when an earlier one fails, and running them twice is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import uvicorn
from telegram import BotCommand, Update
from telegram.ext import Application, ApplicationBuilder, ContextTypes, Defaults, TypeHandler
from telegram.request import BaseRequest

from bot.config import Settings
from bot.logging_setup import install_redaction
from bot.metrics import Metrics, default_metrics
from bot.processor import PerChatUpdateProcessor
from bot.rate_limit import BotRateLimiter
from generation.preview import PREVIEW_LABEL
from handlers.deps import SERVICES_KEY, HandlerConfig, Services
from handlers.i18n import DEFAULT_LANGUAGE, SUPPORTED_LANGUAGES, Translator

log = logging.getLogger(__name__)

# Commands shown in Telegram's menu, in this order; descriptions are "bot.cmd.<name>" keys.
MENU_COMMANDS = ("make", "i2i", "inpaint", "cancel", "balance", "settings", "help", "start")

# Rate limiting: bot.rate_limit.BotRateLimiter (AIORateLimiter with an evenly spread overall
# rate; a RetryAfter is retried for that request only, never pausing every chat; progress edits
# are handed back at once because the renderer drops and supersedes them).
RATE_LIMITER_MAX_RETRIES = 0  # kept for compatibility; BotRateLimiter decides per endpoint
MAX_RUNNING_UPDATES = 256
INFRA_KEY = "infra"
PREVIEW_WEBHOOK_URL = "http://preview.local/comfydeploy/webhook"  # never fetched: in process

ServiceFactory = Callable[..., Any]


@dataclass(slots=True)
class Infra:
    """What ``post_init`` opened, so ``post_stop``/``post_shutdown`` can close it."""

    settings: Settings
    comfy_transport: httpx.AsyncBaseTransport | None = None
    storage: Any = None
    client: Any = None
    service: Any = None
    webhook_secret: str = ""
    metrics: Metrics = field(default_factory=default_metrics)
    service_started: bool = False
    http_server: Any = None  # the uvicorn.Server in webhook mode (tests stop it)
    http_ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once it listens
    closed: bool = False
    preview_step_seconds: float | None = None  # preview backend timeline step (None: default)


def _effective_telegram_urls(settings: Settings) -> tuple[str, str]:
    root = settings.telegram_api_url.rstrip("/")
    return f"{root}/bot", f"{root}/file/bot"


def build_application(
    settings: Settings,
    *,
    request: BaseRequest | None = None,
    get_updates_request: BaseRequest | None = None,
    comfy_transport: httpx.AsyncBaseTransport | None = None,
    rate_limit: bool = True,
    service_factory: ServiceFactory | None = None,
    preview_step_seconds: float | None = None,
) -> Application:
    """The fully wired (not yet initialized) application.

    ``request``/``get_updates_request`` and ``comfy_transport`` let tests plug in the fake
    Telegram and ComfyDeploy transports; ``rate_limit=False`` drops the AIORateLimiter (tests
    that send many group messages); ``service_factory(infra)`` replaces the real generation
    service wiring (tests that need a stand-in); ``preview_step_seconds`` speeds up the preview
    backend's timeline (tests). All are optional and default to production.
    """
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is required to build the application")
    install_redaction(settings.secret_values())  # also when main() did not set up logging
    base_url, base_file_url = _effective_telegram_urls(settings)
    builder = (
        ApplicationBuilder()
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(base_url)
        .base_file_url(base_file_url)
        .concurrent_updates(PerChatUpdateProcessor(max_running=MAX_RUNNING_UPDATES))
        # A reply to a message the user deleted meanwhile is still sent, not an error.
        .defaults(Defaults(allow_sending_without_reply=True))
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
    )
    if rate_limit:
        builder = builder.rate_limiter(BotRateLimiter())  # see bot/rate_limit.py
    if request is not None:
        builder = builder.request(request)
    if settings.webhook_mode:
        builder = builder.updater(None)
    elif get_updates_request is not None:
        builder = builder.get_updates_request(get_updates_request)
    application = builder.build()

    infra = Infra(
        settings=settings,
        comfy_transport=comfy_transport,
        preview_step_seconds=preview_step_seconds,
    )
    application.bot_data[INFRA_KEY] = infra
    application.bot_data["service_factory"] = service_factory
    application.add_handler(TypeHandler(Update, _count_update), group=-1000)
    application.add_error_handler(_count_error)
    return application


def get_infra(application: Application) -> Infra:
    return application.bot_data[INFRA_KEY]


async def _count_update(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    get_infra(context.application).metrics.inc("updates_total")


async def _count_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    infra = get_infra(context.application)
    infra.metrics.inc("errors_total")
    if len(context.application.error_handlers) == 1:  # nobody else logs it (handlers/ does)
        error = context.error
        log.error("error while handling an update: %s", type(error).__name__, exc_info=error)


async def _open_storage(path: str) -> Any:
    from storage import Storage

    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return await Storage.open(path)


async def _resolve_webhook_secret(infra: Infra) -> str:
    if infra.settings.webhook_secret is not None:
        return infra.settings.webhook_secret.get_secret_value()
    return await infra.storage.settings.get_or_create_secret("webhook_secret")


def generation_settings(settings: Settings, webhook_secret: str) -> Any:
    """GenerationSettings from the bot settings (webhooks only when PUBLIC_URL is set)."""
    from generation.service import GenerationSettings

    webhook_url = f"{settings.public_url}/comfydeploy/webhook" if settings.public_url else None
    if webhook_url is None and settings.preview_backend:
        # The preview backend pushes its webhooks in process (see _build_preview_backend), so
        # progress is live without a public URL; polling stays as the backstop.
        webhook_url = PREVIEW_WEBHOOK_URL
    return GenerationSettings(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        poll_interval=settings.run_poll_interval,
        webhook_poll_interval=max(settings.run_poll_interval, 15.0),
        max_in_flight=settings.max_in_flight,
        max_active_per_user=settings.max_active_per_user,
        max_queued_per_user=settings.max_queued_per_user,
    )


def _build_preview_backend(infra: Infra) -> Any:
    """The local preview backend (Pillow placeholders; no GPU, no network)."""
    from generation.preview import PreviewBackend

    step = infra.preview_step_seconds
    options: dict[str, Any] = {} if step is None else {"step_seconds": step}
    return PreviewBackend(fallback_transport=infra.comfy_transport, **options)


def _preview_webhook_sink(service: Any) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
    """Deliver the preview backend's webhooks straight to the service (no HTTP hop); the
    per-run token in the URL is still verified by ``process_webhook``."""

    async def sink(url: str, payload: dict[str, Any]) -> None:
        query = parse_qs(urlsplit(url).query)
        run_ref = (query.get("r") or [None])[0]
        token = (query.get("t") or [None])[0]
        await service.process_webhook(payload, token, run_ref)

    return sink


def _build_service(infra: Infra) -> Any:
    """The real generation module: a backend + GenerationService over storage.

    The backend is ComfyDeploy, or the local preview backend when ``GENERATION_BACKEND`` says
    so (``auto``: when COMFYDEPLOY_API_KEY is unset)."""
    from generation.client import ComfyDeployClient
    from generation.events import EventBus
    from generation.service import GenerationService

    settings = infra.settings
    api_key = settings.comfydeploy_api_key
    if settings.preview_backend:
        if api_key is None:
            log.warning(
                "COMFYDEPLOY_API_KEY is not set: generations use the local preview backend "
                "(labelled placeholder images); set it to generate on ComfyDeploy"
            )
        else:
            log.info("GENERATION_BACKEND=preview: generations use the local preview backend")
        infra.client = _build_preview_backend(infra)
    else:
        if api_key is None:
            log.warning(
                "COMFYDEPLOY_API_KEY is not set: the bot starts, but every generation will fail "
                "with an authentication error until it is configured"
            )
        infra.client = ComfyDeployClient(
            api_key=api_key.get_secret_value() if api_key else "",
            base_url=settings.comfydeploy_api_url,
            transport=infra.comfy_transport,
        )
    storage = infra.storage
    service = GenerationService(
        backend=infra.client,
        runs=storage.runs,
        balances=storage.ledger,
        deployments=storage.deployments,
        loras=storage.loras,
        bus=EventBus(),
        settings=generation_settings(settings, infra.webhook_secret),
    )
    if settings.preview_backend:
        infra.client.webhook_sink = _preview_webhook_sink(service)
    return service


async def sync_preview_deployments(storage: Any, *, enabled: bool) -> None:
    """Preview mode: register the preview deployment of every type that has none yet (admins
    may add more). Otherwise: remove leftover preview deployments, which ComfyDeploy would
    refuse."""
    from generation.preview import PREVIEW_DEPLOYMENTS, PREVIEW_INPUTS

    for type_, deployment_id in PREVIEW_DEPLOYMENTS.items():
        existing = await storage.deployments.get(deployment_id)
        if enabled and existing is None:
            await storage.deployments.add(type_, deployment_id, inputs=list(PREVIEW_INPUTS))
        elif not enabled and existing is not None:
            await storage.deployments.remove(deployment_id)
            log.info("removed the preview deployment of %s (not in preview mode)", type_)


def handler_config(settings: Settings) -> HandlerConfig:
    return HandlerConfig(
        admin_ids=settings.admin_ids,
        starting_balance=settings.starting_balance,
        progress_edit_interval=settings.progress_edit_interval,
        group_edit_interval=max(3.0, settings.progress_edit_interval),
        max_active_per_user=settings.max_active_per_user,
        max_queued_per_user=settings.max_queued_per_user,
        max_in_flight=settings.max_in_flight,
    )


def _register_handlers(application: Application) -> None:
    """Call ``handlers.register(application)`` when the handlers package provides it."""
    module = importlib.import_module("handlers")
    register = getattr(module, "register", None)
    if register is None:
        log.warning("handlers.register is missing: the bot will not answer commands")
        return
    register(application)


async def set_commands(application: Application, i18n: Translator) -> None:
    """Localized command menu: English as the default, plus one per supported language."""
    for lang in SUPPORTED_LANGUAGES:
        commands = [BotCommand(name, i18n.t(lang, f"bot.cmd.{name}")) for name in MENU_COMMANDS]
        code = None if lang == DEFAULT_LANGUAGE else lang
        try:
            await application.bot.set_my_commands(commands, language_code=code)
        except Exception as exc:  # a menu is cosmetic: never block start-up on it
            log.warning("set_my_commands(%s) failed: %s", lang, exc)


def _install_metric_collectors(application: Application, infra: Infra) -> None:
    metrics = infra.metrics
    metrics.gauge_callback(
        "update_queue_size",
        lambda: application.update_queue.qsize(),
        "Telegram updates waiting to be processed",
    )

    async def runs_by_status() -> dict[tuple[tuple[str, str], ...], float]:
        counts = await infra.storage.runs.count_by_status()
        return {(("status", str(status)),): float(n) for status, n in counts.items()}

    metrics.gauge_callback("runs", runs_by_status, "Generation runs by status")


async def _post_init(application: Application) -> None:
    infra = get_infra(application)
    settings = infra.settings
    infra.storage = await _open_storage(settings.database_path)
    infra.webhook_secret = await _resolve_webhook_secret(infra)
    install_redaction([infra.webhook_secret])

    factory = application.bot_data.get("service_factory") or _build_service
    service = factory(infra)
    infra.service = service
    i18n = Translator.load()
    services = Services(
        storage=infra.storage,
        generation=service,
        i18n=i18n,
        config=handler_config(settings),
        extras={
            "metrics": infra.metrics,
            "webhook_secret": infra.webhook_secret,
            "settings": settings,
            "backend": infra.client,
        },
    )
    if infra.comfy_transport is not None:
        # Output files come from the same (test) ComfyDeploy, so delivery downloads through it.
        services.extras["http_transport"] = infra.comfy_transport
    preview_transport = getattr(infra.client, "transport", None)
    if settings.preview_backend and preview_transport is not None:
        # Preview output files are served in process by the backend's transport.
        services.extras["http_transport"] = preview_transport
        services.extras["backend_label"] = PREVIEW_LABEL
    await sync_preview_deployments(infra.storage, enabled=settings.preview_backend)
    application.bot_data[SERVICES_KEY] = services
    _install_metric_collectors(application, infra)
    _register_handlers(application)
    await set_commands(application, i18n)
    await service.start()
    infra.service_started = True
    log.info("bot ready (%s mode)", "webhook" if settings.webhook_mode else "polling")


async def _post_stop(application: Application) -> None:
    infra = get_infra(application)
    if infra.service is not None and infra.service_started:
        infra.service_started = False
        await infra.service.stop()
        # Graceful stop: deliveries and final progress edits under way finish (bounded) while
        # the bot and the database are still open; see ProgressRenderer.shutdown.
        services = application.bot_data.get(SERVICES_KEY)
        renderer = services.extras.get("progress") if services is not None else None
        if renderer is not None and hasattr(renderer, "shutdown"):
            try:
                await renderer.shutdown()
            except Exception:
                log.exception("error while stopping progress rendering and delivery")


async def _post_shutdown(application: Application) -> None:
    infra = get_infra(application)
    if infra.closed:
        return
    infra.closed = True
    await _post_stop(application)  # in case stop() was never reached (e.g. start-up failure)
    steps: list[Callable[[], Awaitable[Any]]] = []
    if infra.service is not None:
        steps.append(infra.service.bus.aclose)  # subscriber tasks (progress, delivery)
    if infra.client is not None:
        steps.append(infra.client.aclose)
    if infra.storage is not None:
        steps.append(infra.storage.close)
    for step in steps:
        try:
            await step()
        except Exception:
            log.exception("error while closing %s", getattr(step, "__qualname__", step))


async def initialize(application: Application) -> None:
    """``initialize()`` + ``post_init`` (what ``run_polling`` does before it starts)."""
    await application.initialize()
    if application.post_init is not None:
        await application.post_init(application)


async def shutdown(application: Application) -> None:
    """``post_stop`` + ``shutdown()`` + ``post_shutdown``, each step tolerant of the others."""
    with contextlib.suppress(RuntimeError):  # not running
        if application.running:
            await application.stop()
    if application.post_stop is not None:
        await application.post_stop(application)
    try:
        await application.shutdown()
    finally:
        if application.post_shutdown is not None:
            await application.post_shutdown(application)


def run_polling(application: Application) -> None:
    """Long polling (PUBLIC_URL unset). PTB handles SIGINT/SIGTERM and the lifecycle hooks."""
    application.run_polling(allowed_updates=Update.ALL_TYPES, drop_pending_updates=False)


class ReadyServer(uvicorn.Server):
    """uvicorn.Server that sets an event once it listens (tests await it instead of polling)."""

    def __init__(self, config: uvicorn.Config, ready: asyncio.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Like uvicorn's, but without re-raising the signal once serving stops: uvicorn would
        kill the process before ``serve_webhook``'s clean shutdown (PTB, the generation
        service, the database) runs."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        original = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


async def serve_webhook(application: Application, settings: Settings) -> None:
    """Webhook mode: one uvicorn server for Telegram and ComfyDeploy; stops on SIGTERM/SIGINT.

    uvicorn installs the signal handlers and returns from ``serve()`` on a signal; the
    ``finally`` blocks then stop PTB, the generation service, the client and the database.
    """
    from bot.server import create_app
    from handlers.deps import get_services

    await initialize(application)
    server_app = None
    try:
        services = get_services(application)
        infra = get_infra(application)
        server_app = create_app(application, settings, services)
        await application.start()
        config = uvicorn.Config(
            server_app,
            host=settings.listen_host,
            port=settings.listen_port,
            log_config=None,  # use our logging (and its redaction filter)
            access_log=False,  # access lines would carry per-run webhook tokens
            lifespan="off",
        )
        server = infra.http_server = ReadyServer(config, infra.http_ready)
        serving = asyncio.create_task(server.serve(), name="http-server")
        ready = asyncio.create_task(infra.http_ready.wait())
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if infra.http_ready.is_set():  # listening: only now tell Telegram where to post
            log.info("listening on %s:%s", settings.listen_host, settings.listen_port)
            try:
                await application.bot.set_webhook(
                    url=f"{settings.public_url}/telegram",
                    secret_token=infra.webhook_secret,
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


def run_local_mode(settings: Settings) -> int:
    """No TELEGRAM_BOT_TOKEN: the real bot behind an embedded Bot API emulator, talked to
    from a web chat page (see :mod:`bot.local`). Returns the exit code."""
    from bot.local.runner import run_local

    return run_local(settings)
