"""/make and /i2i end to end: the real PTB Application (bot.app.build_application) talking to
FakeTelegram, the real GenerationService and storage, and FakeComfyDeploy.

Also home of :class:`E2E`, the harness the inpaint and cancel tests share. Updates are fed with
``process_update``; runs advance only when a test tells the ComfyDeploy double to; webhooks
go straight into ``GenerationService.process_webhook``; the progress renderer runs on a fake
clock. Waits are event-driven and bounded.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image
from telegram import Update
from telegram.ext import Application

from bot.app import build_application, initialize, shutdown
from bot.config import Settings
from generation.client import ComfyDeployClient
from generation.events import EventBus, GenerationEvent
from generation.models import ChargeState, DeliveryState, RunRecord, RunStatus
from generation.request import MAX_PROMPT_LENGTH
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

    async def wait(self, predicate: Callable[[], Any], what: str = "event") -> Any:
        async with asyncio.timeout(WAIT):
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
            "webhook_secret": infra.webhook_secret,
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


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


# ---------------------------------------------------------------------------------------- /make


async def test_make_progress_photo_buttons_and_settled_hold(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.prices.set("MAKE", 2)
    alice = e2e.fake.user(1001)
    await e2e.storage.users.get_or_create(alice.id, language_code="en")
    await e2e.storage.ledger.set_balance(alice.id, 5, actor=None)

    request = await e2e.command(alice, "/make a red fox in snow")
    run = await e2e.latest_run(alice.id)
    assert run.status is RunStatus.QUEUED and run.charge_state is ChargeState.HELD
    assert run.meta["reply_to_message_id"] == request["message"]["message_id"]
    assert run.meta["prompt"] == "a red fox in snow" and run.meta["lang"] == "en"
    assert await e2e.storage.ledger.get_balance(alice.id) == 3  # 2 held

    # the progress message: a reply to the request, with a Cancel button for this run
    progress = e2e.fake.messages(alice.id)[0]
    assert progress.reply_to_message_id == request["message"]["message_id"]
    assert progress.buttons[0]["callback_data"] == f"r:cx:{run.id}"
    assert progress.text in (
        e2e.t("progress.queued", position=1),
        e2e.t("progress.submitting"),
        e2e.t("progress.waiting"),
    )

    fake_run = await e2e.finish(run.id)
    assert fake_run.status == "success"
    photos = [m for m in e2e.fake.sent_media(alice.id) if m.media_kind == "photo"]
    assert len(photos) == 1
    photo = photos[0]
    assert photo.reply_to_message_id == request["message"]["message_id"]
    seed = (await e2e.storage.runs.get_run(run.id)).request["seed"]
    assert photo.caption == e2e.t("result.caption", prompt="a red fox in snow", seed=seed)
    data = {b["callback_data"] for b in photo.buttons}
    assert {f"r:ag:{run.id}", f"r:pm:{run.id}"} <= data

    final = await e2e.storage.runs.get_run(run.id)
    assert final.delivery_state is DeliveryState.DELIVERED
    assert final.charge_state is ChargeState.SETTLED
    assert await e2e.storage.ledger.get_balance(alice.id) == 3
    assert await e2e.storage.ledger.get_held(alice.id) == 0
    done = e2e.fake.message(alice.id, progress.message_id)
    assert done.text == e2e.t("progress.done") and not done.buttons
    # the seed sent to the backend is the one shown
    assert e2e.cd.create_calls[0]["inputs"]["input_seed"] == seed


async def test_progress_edits_are_throttled_on_the_fake_clock(e2e: E2E) -> None:
    e2e.services.config.progress_edit_interval = 1.5
    await e2e.add_deployment(timeline=Timeline.success("png"))
    alice = e2e.fake.user(1002)
    await e2e.command(alice, "/make a lighthouse")
    run = await e2e.latest_run(alice.id)
    backend = await e2e.backend_id(run.id)
    await e2e.settle()
    progress_id = (await e2e.storage.runs.get_run(run.id)).progress_message_id
    edits_before = len(e2e.fake.calls("editMessageText"))

    # Several backend steps at the same instant: no edit is due before 1.5 s have passed.
    await e2e.cd.advance(backend, steps=5)
    await e2e.settle()
    assert len(e2e.fake.calls("editMessageText")) == edits_before
    e2e.clock.advance(1.5)
    await e2e.settle()
    edits = e2e.fake.calls("editMessageText")
    assert len(edits) == edits_before + 1  # coalesced into one edit with the newest state
    shown = e2e.fake.message(alice.id, progress_id)
    assert "%" in shown.text and shown.buttons  # generating N %, still cancellable

    # the rest of the run: the final state waits out the throttle too, then appears
    await e2e.cd.run_to_end(backend)
    await e2e.events.wait(lambda: "generation:completed" in e2e.events.names(run.id))
    await e2e.settle()
    for _ in range(5):  # bounded: each round lets one due edit through
        e2e.clock.advance(1.5)
        await e2e.settle()
    assert e2e.fake.message(alice.id, progress_id).text == e2e.t("progress.done")
    texts = [c.params["text"] for c in e2e.fake.calls("editMessageText")]
    assert len(texts) == len(set(texts)), "an identical edit was sent"


async def test_make_without_prompt_gets_usage(e2e: E2E) -> None:
    alice = e2e.fake.user(1003)
    await e2e.command(alice, "/make")
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.make_usage")
    assert not e2e.cd.create_calls


async def test_too_long_prompt_is_refused_with_the_limit(e2e: E2E) -> None:
    await e2e.add_deployment()
    alice = e2e.fake.user(1004)
    await e2e.command(alice, "/make " + "x" * 5000)
    text = e2e.fake.last_message(alice.id).text
    assert text == e2e.t("gen.prompt_too_long", limit=MAX_PROMPT_LENGTH, length=5000)
    assert await e2e.storage.runs.list_user_runs(alice.id, active_only=False) == []


async def test_cannot_afford_generation(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.prices.set("MAKE", 3)
    bob = e2e.fake.user(1005, "Bob", language_code="de")
    await e2e.command(bob, "/make ein Fuchs")
    text = e2e.fake.last_message(bob.id).text
    assert text == e2e.t("gen.insufficient_balance", "de", price=3, balance=0)
    assert "/balance" in text
    assert await e2e.storage.runs.list_user_runs(bob.id, active_only=False) == []
    await e2e.service.bus.drain()
    assert not e2e.cd.create_calls


async def test_no_deployment_gives_localized_error(e2e: E2E) -> None:
    alice = e2e.fake.user(1006, language_code="ru")
    await e2e.command(alice, "/make кот")
    assert e2e.fake.last_message(alice.id).text == e2e.t("error.NO_DEPLOYMENTS_AVAILABLE", "ru")


async def test_failed_run_shows_localized_reason_and_releases_hold(e2e: E2E) -> None:
    await e2e.add_deployment(timeline=Timeline.failed())
    await e2e.storage.prices.set("MAKE", 1)
    alice = e2e.fake.user(1007, language_code="es")
    await e2e.storage.users.get_or_create(alice.id, language_code="es")
    await e2e.storage.ledger.set_balance(alice.id, 1, actor=None)
    await e2e.command(alice, "/make un zorro")
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    msg = e2e.progress_message(alice.id, await e2e.storage.runs.get_run(run.id))
    reason = e2e.t("error.RUN_FAILED", "es")
    assert msg.text == e2e.t("progress.failed", "es", reason=reason)
    assert not msg.buttons
    assert await e2e.storage.ledger.get_balance(alice.id) == 1
    assert not e2e.fake.sent_media(alice.id)


async def test_sticker_and_unknown_command_get_answers(e2e: E2E) -> None:
    alice = e2e.fake.user(1008)
    await e2e.feed(alice.send_sticker(queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_message")
    await e2e.command(alice, "/frobnicate")
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_command")


async def test_again_with_new_seed_and_show_parameters(e2e: E2E) -> None:
    await e2e.add_deployment()
    alice = e2e.fake.user(1009)
    await e2e.command(alice, "/make a castle")
    first = await e2e.latest_run(alice.id)
    await e2e.finish(first.id)
    photo = e2e.fake.sent_media(alice.id)[-1]

    answer = await e2e.tap(alice, photo, f"r:pm:{first.id}")
    assert answer["text"] == e2e.t("result.params_shown")
    params = e2e.fake.last_message(alice.id).text
    seed = (await e2e.storage.runs.get_run(first.id)).request["seed"]
    assert "a castle" in params and str(seed) in params and "MAKE" in params

    await e2e.tap(alice, photo, f"r:ag:{first.id}")
    second = await e2e.latest_run(alice.id)
    assert second.id != first.id and second.type == "MAKE"
    assert second.meta["prompt"] == "a castle"
    await e2e.finish(second.id)
    assert len(e2e.cd.create_calls) == 2
    seeds = [c["inputs"]["input_seed"] for c in e2e.cd.create_calls]
    assert seeds[1] == (await e2e.storage.runs.get_run(second.id)).request["seed"]


async def test_stale_run_button_gets_polite_answer(e2e: E2E) -> None:
    alice = e2e.fake.user(1010)
    await e2e.command(alice, "/make")  # any bot message to hang an old button on
    msg = e2e.fake.last_message(alice.id)
    msg.reply_markup = {"inline_keyboard": [[{"text": "x", "callback_data": "r:ag:" + "0" * 32}]]}
    answer = await e2e.tap(alice, msg, "x")
    assert answer["text"] == e2e.t("common.stale_button")


async def test_lora_applied_only_when_balance_reaches_min(e2e: E2E) -> None:
    await e2e.add_deployment()
    await e2e.storage.loras.add("pixelart", ["pixel"], min_balance=10)
    poor, rich = e2e.fake.user(1011), e2e.fake.user(1012)
    for user, balance in ((poor, 0), (rich, 10)):
        await e2e.storage.users.get_or_create(user.id, language_code="en")
        if balance:
            await e2e.storage.ledger.set_balance(user.id, balance, actor=None)
    await e2e.command(poor, "/make pixel cat")
    await e2e.backend_id((await e2e.latest_run(poor.id)).id)
    await e2e.command(rich, "/make pixel cat")
    await e2e.backend_id((await e2e.latest_run(rich.id)).id)
    prompts = [c["inputs"]["input_prompt"] for c in e2e.cd.create_calls]
    assert "<lora:pixelart" not in prompts[0]
    assert "<lora:pixelart" in prompts[1]


async def test_parameters_show_the_applied_loras(e2e: E2E) -> None:
    """The "Parameters" button lists the LoRAs the run applied (stored ``applied_loras``),
    not tags parsed from the prompt the user typed (which has none)."""
    await e2e.add_deployment()
    await e2e.storage.loras.add("pixelart", ["pixel"], min_balance=0)
    alice = e2e.fake.user(1013)
    await e2e.command(alice, "/make pixel cat")
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    stored = (await e2e.storage.runs.get_run(run.id)).request
    assert stored["applied_loras"] and all("pixelart" in name for name in stored["applied_loras"])
    photo = e2e.fake.sent_media(alice.id)[-1]
    await e2e.tap(alice, photo, f"r:pm:{run.id}")
    params = e2e.fake.last_message(alice.id).text
    loras_line = next(line for line in params.splitlines() if line.startswith("LoRAs:"))
    assert loras_line == "LoRAs: " + ", ".join(stored["applied_loras"])
    assert loras_line != "LoRAs: —"


# ----------------------------------------------------------------------------------------- /i2i


async def _i2i_created(e2e: E2E, user: FakeUser) -> dict[str, Any]:
    run = await e2e.latest_run(user.id)
    assert run.type == "I2I"
    await e2e.backend_id(run.id)
    body = e2e.cd.create_calls[-1]
    image = body["inputs"].get("input_image")
    assert isinstance(image, str) and not image.startswith("https://api.telegram.org")
    assert e2e.fake.token not in image
    return body


async def test_i2i_photo_with_caption(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1020)
    await e2e.feed(alice.send_photo(jpeg(), caption="/i2i make it blue", queue=False))
    body = await _i2i_created(e2e, alice)
    assert body["inputs"]["input_prompt"].startswith("make it blue")


async def test_i2i_as_reply_to_a_photo(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1021)
    photo = await e2e.feed(alice.send_document(png(), "in.png", "image/png", queue=False))
    await e2e.command(alice, "/i2i watercolor", reply_to=photo["message"]["message_id"])
    await _i2i_created(e2e, alice)


async def test_i2i_photo_sent_next_and_non_image_document(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1022)
    await e2e.command(alice, "/i2i oil painting")
    assert e2e.fake.last_message(alice.id).text == e2e.t("i2i.send_photo")
    await e2e.feed(alice.send_document(b"%PDF-1.4", "doc.pdf", "application/pdf", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.not_an_image")
    await e2e.feed(alice.send_photo(jpeg(), queue=False))
    body = await _i2i_created(e2e, alice)
    assert body["inputs"]["input_prompt"].startswith("oil painting")


async def test_i2i_without_photo_then_cancel(e2e: E2E) -> None:
    alice = e2e.fake.user(1023)
    await e2e.command(alice, "/i2i something")
    await e2e.feed(alice.send_text("where is the photo?", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("i2i.send_photo")
    await e2e.command(alice, "/cancel")
    assert e2e.fake.last_message(alice.id).text == e2e.t("cancel.flow_ended")
    await e2e.feed(alice.send_photo(jpeg(), queue=False))  # the flow is over
    assert e2e.fake.last_message(alice.id).text == e2e.t("common.unknown_message")
    assert not e2e.cd.create_calls


async def test_again_on_i2i_result_asks_for_the_photo(e2e: E2E) -> None:
    await e2e.add_deployment("I2I", inputs=(*MAKE_INPUTS, "input_image"))
    alice = e2e.fake.user(1024)
    await e2e.feed(alice.send_photo(jpeg(), caption="/i2i neon", queue=False))
    run = await e2e.latest_run(alice.id)
    await e2e.finish(run.id)
    photo = e2e.fake.sent_media(alice.id)[-1]
    answer = await e2e.tap(alice, photo, f"r:ag:{run.id}")
    assert answer["text"] == e2e.t("result.again_needs_photo") and answer["show_alert"]
    assert len(e2e.cd.create_calls) == 1


async def test_reply_to_a_deleted_command_is_still_sent(e2e: E2E) -> None:
    """The user deletes their command before the bot answers: the answer still arrives."""
    alice = e2e.fake.user(1099)
    update = alice.send_command("/make", None, queue=False)
    e2e.fake.message(alice.id, update["message"]["message_id"]).deleted = True
    await e2e.feed(update)
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.make_usage")


async def test_same_message_twice_starts_one_run(e2e: E2E) -> None:
    """Telegram redelivers updates that were not confirmed before a crash: one run only."""
    await e2e.add_deployment()
    alice = e2e.fake.user(1098)
    update = alice.send_command("/make a fox", None, queue=False)
    await e2e.feed(update)
    await e2e.feed(update)
    runs = await e2e.storage.runs.list_user_runs(alice.id, active_only=False)
    assert len(runs) == 1
    progress = [m for m in e2e.fake.messages(alice.id) if m.reply_to_message_id]
    assert len(progress) == 1
