"""Composition root: builds the PTB ``Application`` and everything it runs on, in one order:

settings → storage → backend (``bot/backends.py``) → ``GenerationService`` → the Telegram
side (handlers, result delivery, progress renderer, both subscribed to the service's event
bus here) → the command menu → the service starts.

PTB calls ``post_init`` / ``post_stop`` / ``post_shutdown`` around ``run_polling``; webhook
mode (``bot/server.py``) and local mode (``bot/local/runner.py``) call :func:`initialize` and
:func:`shutdown`. Each close step runs even when an earlier one fails, and running them twice
is harmless. The :class:`Runtime` holds what ``post_init`` opened, typed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from telegram import BotCommand, Update
from telegram.ext import Application, ApplicationBuilder, Defaults, TypeHandler
from telegram.request import BaseRequest

from bot import event_loop
from bot.backends import (
    backend_label,
    connect_backend,
    generation_settings,
    make_backend,
    output_origins,
    output_transport,
    sync_preview_deployments,
)
from bot.config import Settings
from bot.logging_setup import install_redaction
from bot.metrics import Metrics, default_metrics
from bot.processor import PerChatUpdateProcessor
from bot.rate_limit import BotRateLimiter
from bot.signals import install_signals
from bot.telegram_http import AiohttpRequest
from generation.billing import PayloadSigner
from generation.custom_types import CustomTypeRegistry
from generation.events import EventBus
from generation.ports import Backend
from generation.service import GenerationService
from handlers import register
from handlers.context import CONTEXT_TYPES, BotContext
from handlers.custom_commands import (
    BUILTIN_COMMANDS,
    MENU_COMMANDS,
    PAYMENT_COMMANDS,
    menu_commands,
    refresh_registry,
)
from handlers.delivery import Delivery
from handlers.deps import SERVICES_KEY, HandlerConfig, Services, services_of
from handlers.i18n import DEFAULT_LANGUAGE, SUPPORTED_LANGUAGES, Translator
from handlers.progress import ProgressRenderer
from handlers.workflows import WorkflowAlerts
from storage import RunLimits, Storage

log = logging.getLogger(__name__)

MAX_RUNNING_UPDATES = 256
SHUTDOWN_GRACE = 10.0  # seconds deliveries and final progress edits get on a graceful stop

ServiceFactory = Callable[["Runtime"], GenerationService]


@dataclass(slots=True)
class Runtime:
    """What the root built, so the lifecycle hooks (and tests) can reach and close it."""

    settings: Settings
    comfy_transport: httpx.AsyncBaseTransport | None = None  # tests: the ComfyDeploy double
    preview_step_seconds: float | None = None  # preview backend timeline step (None: default)
    service_factory: ServiceFactory | None = None  # tests: a stand-in service wiring
    storage: Storage | None = None
    backend: Backend | None = None
    service: GenerationService | None = None
    services: Services | None = None
    delivery: Delivery | None = None
    progress: ProgressRenderer | None = None
    workflow_alerts: WorkflowAlerts | None = None
    webhook_secret: str = ""  # Telegram's secret_token (sent in every update's header)
    run_webhook_key: str = ""  # key of the per-run ComfyDeploy webhook tokens (stored apart)
    metrics: Metrics = field(default_factory=default_metrics)
    service_started: bool = False
    http_server: uvicorn.Server | None = None  # the webhook-mode server (tests stop it)
    http_ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once it listens
    closed: bool = False


class BotApplication(Application):  # type: ignore[type-arg]
    """PTB's Application with the :class:`Runtime` attached (``application.runtime``)."""

    def __init__(self, *, runtime: Runtime, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runtime = runtime


def get_runtime(application: Application) -> Runtime:  # type: ignore[type-arg]
    assert isinstance(application, BotApplication)
    return application.runtime


def build_application(
    settings: Settings,
    *,
    request: BaseRequest | None = None,
    get_updates_request: BaseRequest | None = None,
    comfy_transport: httpx.AsyncBaseTransport | None = None,
    rate_limit: bool = True,
    service_factory: ServiceFactory | None = None,
    preview_step_seconds: float | None = None,
) -> BotApplication:
    """The fully wired (not yet initialized) application.

    ``request``/``get_updates_request`` and ``comfy_transport`` let tests plug in the fake
    Telegram and ComfyDeploy transports; ``rate_limit=False`` drops the rate limiter (tests
    that send many group messages); ``service_factory(runtime)`` replaces the real generation
    service wiring; ``preview_step_seconds`` speeds up the preview backend (tests).
    """
    if settings.telegram_bot_token is None:
        raise ValueError("TELEGRAM_BOT_TOKEN is required to build the application")
    install_redaction(settings.secret_values())  # also when main() did not set up logging
    root = settings.telegram_api_url.rstrip("/")
    runtime = Runtime(settings, comfy_transport, preview_step_seconds, service_factory)
    builder = (
        ApplicationBuilder()
        .application_class(BotApplication, kwargs={"runtime": runtime})
        .context_types(CONTEXT_TYPES)
        .token(settings.telegram_bot_token.get_secret_value())
        .base_url(f"{root}/bot")
        .base_file_url(f"{root}/file/bot")
        .concurrent_updates(PerChatUpdateProcessor(max_running=MAX_RUNNING_UPDATES))
        # A reply to a message the user deleted meanwhile is still sent, not an error.
        .defaults(Defaults(allow_sending_without_reply=True))
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
    )
    if rate_limit:
        builder = builder.rate_limiter(BotRateLimiter())  # see bot/rate_limit.py
    builder = builder.request(request or AiohttpRequest())  # bot/telegram_http.py: why
    if settings.webhook_mode:
        builder = builder.updater(None)
    else:
        builder = builder.get_updates_request(get_updates_request or AiohttpRequest(1))
    application = builder.build()
    assert isinstance(application, BotApplication)
    application.add_handler(TypeHandler(Update, _count_update), group=-1000)
    application.add_error_handler(_count_error)
    return application


async def _count_update(update: Update, context: BotContext) -> None:
    get_runtime(context.application).metrics.inc("updates_total")


async def _count_error(update: object, context: BotContext) -> None:
    get_runtime(context.application).metrics.inc("errors_total")
    if len(context.application.error_handlers) == 1:  # nobody else logs it (handlers/ does)
        error = context.error
        log.error("error while handling an update: %s", type(error).__name__, exc_info=error)


async def open_storage(path: str) -> Storage:
    """The bot's storage: it is the database's single writer (storage/lock.py), so a second
    bot on the same file raises :class:`storage.lock.BotAlreadyRunningError` here."""
    if path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return await Storage.open(path, writer=True)


def build_service(runtime: Runtime) -> GenerationService:
    """The real generation module: :func:`make_backend` + GenerationService over storage."""
    storage, settings = runtime.storage, runtime.settings
    assert storage is not None
    backend = runtime.backend = make_backend(
        settings,
        transport=runtime.comfy_transport,
        preview_step_seconds=runtime.preview_step_seconds,
        workflows=storage.workflows,
    )
    service = GenerationService(
        backend=backend,
        runs=storage.runs,
        balances=storage.ledger,
        deployments=storage.deployments,
        loras=storage.loras,
        bus=EventBus(),
        settings=generation_settings(settings, runtime.run_webhook_key),
        images=storage.images,  # queued runs' input images on disk, next to the database
    )
    connect_backend(backend, service)
    return service


def handler_config(settings: Settings) -> HandlerConfig:
    return HandlerConfig(
        admin_ids=settings.admin_ids,
        starting_balance=settings.starting_balance,
        progress_edit_interval=settings.progress_edit_interval,
        group_edit_interval=max(3.0, settings.progress_edit_interval),
        max_active_per_user=settings.max_active_per_user,
        max_queued_per_user=settings.max_queued_per_user,
        max_in_flight=settings.max_in_flight,
        output_url_allowlist=settings.output_url_allowlist,
        trusted_output_urls=output_origins(settings),
        delivery_retry_window=settings.delivery_retry_window,
        star_packages=settings.star_packages,
        free_daily_credits=settings.free_daily_credits,
        max_runs_per_user_per_day=settings.max_runs_per_user_per_day,
        max_runs_per_day=settings.max_runs_per_day,
        access=settings.access,
        paysupport_text=settings.paysupport_text,
        terms_text=settings.terms_text,
    )


def build_services(runtime: Runtime, service: GenerationService) -> Services:
    backend = runtime.backend
    assert runtime.storage is not None
    transport = output_transport(backend) if backend is not None else None
    return Services(
        storage=runtime.storage,
        generation=service,
        i18n=Translator.load(),
        config=handler_config(runtime.settings),
        backend=backend,
        # Output files come from the same (test) ComfyDeploy unless the backend serves them.
        http_transport=transport or runtime.comfy_transport,
        backend_label=backend_label(backend) if backend is not None else None,
        custom_types=CustomTypeRegistry(reserved_commands=BUILTIN_COMMANDS),
    )


async def set_commands(
    application: Application,  # type: ignore[type-arg]
    i18n: Translator,
    *,
    payments: bool = False,
) -> None:
    """Localized command menu: English as the default, plus one per supported language; the
    commands of admin-added types (``/animate``) follow the bot's own."""
    names = MENU_COMMANDS + (PAYMENT_COMMANDS if payments else ())
    custom = services_of(application).custom_types.all()
    for lang in SUPPORTED_LANGUAGES:
        commands = [BotCommand(name, i18n.t(lang, f"bot.cmd.{name}")) for name in names]
        commands += menu_commands(i18n.t, lang, custom)
        code = None if lang == DEFAULT_LANGUAGE else lang
        try:
            await application.bot.set_my_commands(commands, language_code=code)
        except Exception as exc:  # a menu is cosmetic: never block start-up on it
            log.warning("set_my_commands(%s) failed: %s", lang, exc)


def _install_metric_collectors(application: Application, runtime: Runtime) -> None:  # type: ignore[type-arg]
    runtime.metrics.gauge_callback(
        "update_queue_size",
        lambda: application.update_queue.qsize(),
        "Telegram updates waiting to be processed",
    )

    install_signals(runtime, application.bot.rate_limiter)  # generation series: docs/metrics.md


async def _post_init(application: Application) -> None:  # type: ignore[type-arg]
    runtime = get_runtime(application)
    settings = runtime.settings
    runtime.storage = await open_storage(settings.database_path)
    runtime.storage.configure_money(
        free_daily_credits=settings.free_daily_credits,
        run_limits=RunLimits(settings.max_runs_per_user_per_day, settings.max_runs_per_day),
    )
    if settings.webhook_secret is not None:
        runtime.webhook_secret = settings.webhook_secret.get_secret_value()
    else:
        runtime.webhook_secret = await runtime.storage.settings.get_or_create_secret(
            "webhook_secret"
        )
    # The per-run webhook tokens get a key of their own: knowing Telegram's secret_token (it
    # is in the header of every update, so proxies and their logs see it) forges nothing.
    runtime.run_webhook_key = await runtime.storage.settings.get_or_create_secret("run_webhook_key")
    install_redaction([runtime.webhook_secret, runtime.run_webhook_key])
    service = runtime.service = (runtime.service_factory or build_service)(runtime)
    services = runtime.services = build_services(runtime, service)
    if settings.star_packages:
        key = await runtime.storage.settings.get_or_create_secret("payment_payload_key")
        services.signer = PayloadSigner(key)
    await sync_preview_deployments(runtime.storage, enabled=settings.preview_backend)
    application.bot_data[SERVICES_KEY] = services
    _install_metric_collectors(application, runtime)
    register(application)
    runtime.delivery = Delivery(application.bot, services).attach()
    runtime.progress = ProgressRenderer(application.bot, services).attach()
    runtime.workflow_alerts = WorkflowAlerts(application.bot, services).attach()
    await refresh_registry(services.storage, services.custom_types)

    async def publish() -> None:
        await set_commands(application, services.i18n, payments=bool(settings.star_packages))

    services.publish_commands = publish
    await publish()
    await service.start()
    runtime.service_started = True
    log.info("bot ready (%s mode)", "webhook" if settings.webhook_mode else "polling")


async def _stop_telegram_side(runtime: Runtime, grace: float = SHUTDOWN_GRACE) -> None:
    """Graceful stop: deliveries and final progress edits under way get ``grace`` seconds to
    finish while the bot and the database are still open, then both unsubscribe. A delivery
    cut short stays PENDING in the database and is redone (its missing items) at next start."""
    delivery, progress = runtime.delivery, runtime.progress

    async def settle() -> None:
        if runtime.service is not None:
            await runtime.service.bus.drain()
        if delivery is not None:
            await delivery.drain()
        if progress is not None:
            await progress.drain()

    try:
        await asyncio.wait_for(settle(), grace)
    except TimeoutError:
        log.warning("shutdown: deliveries still running after %.0f s resume at next start", grace)
    for part in (progress, delivery, runtime.workflow_alerts):
        if part is not None:
            await part.detach()


async def _post_stop(application: Application) -> None:  # type: ignore[type-arg]
    runtime = get_runtime(application)
    if runtime.service is None or not runtime.service_started:
        return
    runtime.service_started = False
    await runtime.service.stop()
    try:
        await _stop_telegram_side(runtime)
    except Exception:
        log.exception("error while stopping progress rendering and delivery")


async def _post_shutdown(application: Application) -> None:  # type: ignore[type-arg]
    runtime = get_runtime(application)
    if runtime.closed:
        return
    runtime.closed = True
    await _post_stop(application)  # in case stop() was never reached (e.g. start-up failure)
    steps: list[Callable[[], Awaitable[Any]]] = []
    if runtime.service is not None:
        steps.append(runtime.service.bus.aclose)  # subscriber tasks (progress, delivery)
    if runtime.backend is not None:
        steps.append(runtime.backend.aclose)
    if runtime.storage is not None:
        steps.append(runtime.storage.close)
    for step in steps:
        try:
            await step()
        except Exception:
            log.exception("error while closing %s", step.__qualname__)


async def initialize(application: Application) -> None:  # type: ignore[type-arg]
    """``initialize()`` + ``post_init`` (what ``run_polling`` does before it starts)."""
    await application.initialize()
    if application.post_init is not None:
        await application.post_init(application)


async def shutdown(application: Application) -> None:  # type: ignore[type-arg]
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


def run_polling(application: Application) -> None:  # type: ignore[type-arg]
    """Long polling (PUBLIC_URL unset). PTB handles SIGINT/SIGTERM and the lifecycle hooks."""
    event_loop.install()  # uvloop where installed (bot/event_loop.py)
    application.run_polling(allowed_updates=Update.ALL_TYPES, drop_pending_updates=False)
