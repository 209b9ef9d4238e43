"""The in-process end-to-end harness: the real PTB Application (bot.app.build_application)
talking to FakeTelegram, the real GenerationService and storage, and FakeComfyDeploy.

Updates are fed with ``process_update``; runs advance only when a test tells the ComfyDeploy
double to; webhooks go straight into ``GenerationService.process_webhook``; the progress
renderer runs on a fake clock. Waits are event-driven and bounded.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from PIL import Image
from telegram import Update
from telegram.ext import Application

from bot.app import build_application, initialize, shutdown
from bot.config import Settings
from generation.client import ComfyDeployClient
from generation.events import EventBus, GenerationEvent
from generation.models import RunRecord
from generation.service import GenerationService, GenerationSettings
from handlers.deps import SERVICES_KEY, Services
from handlers.i18n import Translator
from handlers.progress import ProgressRenderer
from tests.fakes.comfydeploy import FakeComfyDeploy, FakeRun, Timeline
from tests.fakes.telegram import FakeMessage, FakeTelegram, FakeUser

HOOK = "http://bot.test/comfydeploy/webhook"
WAIT = 5.0
MAKE_INPUTS = ("input_prompt", "input_negative", "input_seed", "input_width", "input_height")


async def instant_sleep(_: float) -> None:
    return None


class FakeClock:
    """A clock the test moves by hand; ``sleep`` blocks until the clock passes its deadline."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((self.now + max(0.0, delay), future))
        await future

    @property
    def sleepers(self) -> int:
        return sum(1 for _, f in self._waiters if not f.done())

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for deadline, future in self._waiters:
            if deadline <= self.now and not future.done():
                future.set_result(None)
        self._waiters = [(d, f) for d, f in self._waiters if not f.done()]


class Events:
    """Bus events seen so far, with a bounded event-driven wait."""

    def __init__(self, bus: EventBus) -> None:
        self.items: list[GenerationEvent] = []
        self._changed = asyncio.Event()
        bus.subscribe(self._on)

    async def _on(self, event: GenerationEvent) -> None:
        self.items.append(event)
        self._changed.set()

    def names(self, run_id: str) -> list[str]:
        return [e.name for e in self.items if e.run_id == run_id]

    async def wait(
        self,
        predicate: Callable[[], Any],
        what: str = "event",
        timeout: float = WAIT,  # noqa: ASYNC109 - a bounded test wait; a real server is slower
    ) -> Any:
        async with asyncio.timeout(timeout):
            while not (result := predicate()):
                self._changed.clear()
                await self._changed.wait()
        return result


@dataclass
class E2E:
    fake: FakeTelegram
    cd: FakeComfyDeploy
    app: Application
    services: Services
    service: GenerationService
    clock: FakeClock
    events: Events

    @property
    def storage(self) -> Any:
        return self.services.storage

    @property
    def i18n(self) -> Translator:
        return self.services.i18n

    @property
    def renderer(self) -> ProgressRenderer:
        return self.services.progress

    def t(self, key: str, lang: str = "en", **params: object) -> str:
        return self.i18n.t(lang, key, **params)

    async def feed(self, update: dict[str, Any]) -> dict[str, Any]:
        await self.app.process_update(Update.de_json(update, self.app.bot))
        return update

    async def command(
        self, user: FakeUser, text: str, chat_id: int | None = None, **kw: Any
    ) -> dict[str, Any]:
        return await self.feed(user.send_command(text, chat_id, queue=False, **kw))

    async def tap(self, user: FakeUser, message: FakeMessage, button: str) -> dict[str, Any]:
        update = await self.feed(user.tap(message, button, queue=False))
        answer = user.callback_answer(update)
        assert answer is not None, "the callback query was not answered"
        return answer

    async def add_deployment(
        self,
        type_: str = "MAKE",
        *,
        inputs: tuple[str, ...] = MAKE_INPUTS,
        timeline: Timeline | None = None,
    ) -> str:
        dep_id = self.cd.add_deployment(inputs=inputs, timeline=timeline)
        await self.storage.deployments.add(type_, dep_id, inputs=list(inputs))
        return dep_id

    async def latest_run(self, user_id: int) -> RunRecord:
        runs = await self.storage.runs.list_user_runs(user_id, active_only=False)
        assert runs, "no run was created"
        return runs[0]

    async def backend_id(self, run_id: str) -> str:
        async def started() -> str | None:
            run = await self.storage.runs.get_run(run_id)
            return run.backend_run_id if run else None

        await self.events.wait(
            lambda: (
                "generation:started" in self.events.names(run_id)
                or "generation:failed" in self.events.names(run_id)
            )
        )
        backend = await started()
        assert backend, "the run never reached the backend"
        return backend

    async def settle(self) -> None:
        """Let the bus, the renderer and delivery finish what is due now (bounded)."""
        delivery = self.services.delivery
        for _ in range(50):
            await self.service.bus.drain()
            if delivery is not None:
                await delivery.drain()
            busy = [p.task for p in self.renderer._runs.values() if p.task and not p.task.done()]
            if len(busy) <= self.clock.sleepers and not self.service.bus._subs[0].queue:
                # every flush task is waiting on the fake clock (or none is running)
                await asyncio.sleep(0)
                if len(busy) <= self.clock.sleepers:
                    return
            await asyncio.sleep(0)

    async def finish(self, run_id: str) -> FakeRun:
        backend = await self.backend_id(run_id)
        run = await self.cd.run_to_end(backend)
        await self.events.wait(
            lambda: any(
                n in self.events.names(run_id)
                for n in ("generation:completed", "generation:failed", "generation:cancelled")
            )
        )
        await self.settle()
        return run

    def progress_message(self, chat_id: int, run: RunRecord) -> FakeMessage:
        assert run.progress_message_id is not None
        msg = self.fake.message(chat_id, run.progress_message_id)
        assert msg is not None
        return msg


def png(size: tuple[int, int] = (64, 48), color: Any = (10, 200, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


ADMIN_ID = 42


async def build_harness(
    tmp_path: Path,
    *,
    fake: FakeTelegram | None = None,
    cd: FakeComfyDeploy | None = None,
    service_clock: Callable[[], float] | None = None,
    client_sleep: Callable[[float], Any] = instant_sleep,
    rate_limit: bool = False,
    fake_progress_clock: bool = True,
    generation: dict[str, Any] | None = None,
    **settings_overrides: Any,
) -> tuple[E2E, Callable[[], Any]]:
    """Like ``make_e2e``, with knobs: the service/breaker clock, the client's backoff sleep,
    the production rate limiter, a real-time progress renderer, GenerationSettings fields."""
    fake = fake or FakeTelegram()
    cd = cd or FakeComfyDeploy()
    holder: dict[str, Any] = {}

    def factory(infra: Any) -> GenerationService:
        client = ComfyDeployClient(
            cd.auth_token,
            cd.base_url,
            transport=cd.transport,
            sleep=client_sleep,
            max_per_second=None,
        )
        infra.backend = client
        storage = infra.storage
        options: dict[str, Any] = {
            "webhook_url": HOOK,
            "webhook_secret": infra.run_webhook_key,
            "poll_interval": 3600.0,
            "webhook_poll_interval": 3600.0,
            "max_in_flight": settings.max_in_flight,
            "max_active_per_user": settings.max_active_per_user,
            "max_queued_per_user": settings.max_queued_per_user,
        }
        options.update(generation or {})
        kwargs: dict[str, Any] = {}
        if service_clock is not None:
            kwargs["clock"] = service_clock
        service = GenerationService(
            backend=client,
            runs=storage.runs,
            balances=storage.ledger,
            deployments=storage.deployments,
            loras=storage.loras,
            bus=EventBus(),
            settings=GenerationSettings(**options),
            **kwargs,
        )
        holder["service"] = service
        return service

    options: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "database_path": str(tmp_path / "bot.sqlite3"),
        "progress_edit_interval": 0.0,
        "comfydeploy_api_key": cd.auth_token,
        "admin_ids": str(ADMIN_ID),
    }
    options.update(settings_overrides)
    settings = Settings(_env_file=None, **options)
    app = build_application(
        settings,
        request=fake.request(),
        get_updates_request=fake.request(),
        comfy_transport=cd.transport,
        rate_limit=rate_limit,
        service_factory=factory,
    )
    await initialize(app)
    await app.start()
    services: Services = app.bot_data[SERVICES_KEY]
    service: GenerationService = holder["service"]

    async def sink(url: str, payload: dict[str, Any] | None) -> int:
        if payload is None:
            return 405
        query = parse_qs(urlsplit(url).query)
        ok = await service.process_webhook(
            payload, query.get("t", [None])[0], query.get("r", [None])[0]
        )
        return 200 if ok else 403

    cd.webhook_sink = sink
    clock = FakeClock()
    if fake_progress_clock:
        assert services.progress is not None
        await services.progress.detach()
        ProgressRenderer(app.bot, services, clock=clock, sleep=clock.sleep).attach()
    env = E2E(fake, cd, app, services, service, clock, Events(service.bus))

    async def close() -> None:
        progress = services.progress
        if progress is not None:
            await progress.detach()
        await shutdown(app)
        await cd.aclose()

    return env, close


async def make_e2e(tmp_path: Path, **settings_overrides: Any) -> tuple[E2E, Callable[[], Any]]:
    """The default end-to-end harness (see :func:`build_harness` for the knobs)."""
    return await build_harness(tmp_path, **settings_overrides)
