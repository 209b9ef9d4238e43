"""Helpers shared by the ComfyUI backend tests: workflow files, images, a service harness, and
the end-to-end harness (the real PTB application on the Telegram double, ``comfy_e2e``) that
tests/test_comfyui_e2e.py runs against the ComfyUI double and tests/test_comfyui_real.py against
a real server."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.app import build_application, initialize, shutdown
from bot.config import Settings
from generation import EventBus, GenerationEvent, GenerationService, GenerationSettings
from generation.client import ComfyDeployClient
from generation.comfyui import ComfyUIBackend, analyse, parse_workflow
from generation.models import RunRecord, RunStatus, WorkflowRecord
from generation.routing import RoutingBackend
from handlers.deps import SERVICES_KEY
from handlers.progress import ProgressRenderer
from storage import Storage
from tests.e2e.inprocess import ADMIN_ID, E2E, WAIT, Events, FakeClock
from tests.fakes.comfydeploy import FakeComfyDeploy
from tests.fakes.telegram import FakeTelegram, FakeUser

WORKFLOWS = Path(__file__).resolve().parent.parent / "docs" / "workflows"


def workflow_file(name: str) -> dict[str, Any]:
    """A workflow of ``docs/workflows`` (``model-free/make`` etc.)."""
    return json.loads((WORKFLOWS / f"{name}.json").read_text())


def png(
    color: str | tuple[int, ...] = "red", size: tuple[int, int] = (96, 64), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def half_mask(size: tuple[int, int] = (96, 64)) -> bytes:
    """White (repaint) on the left half, black on the right."""
    im = Image.new("L", size, 0)
    im.paste(255, (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


class MemoryWorkflows:
    """An in-memory :class:`generation.ports.WorkflowStore`."""

    def __init__(self) -> None:
        self.items: dict[str, WorkflowRecord] = {}

    def add(self, name: str, graph: dict[str, Any], type_: str = "MAKE") -> str:
        parsed = parse_workflow(graph)
        result = analyse(parsed)
        dep = f"workflow:{name}"
        self.items[dep] = WorkflowRecord(
            dep, name, type_, parsed, tuple(i.to_dict() for i in result.inputs)
        )
        return dep

    async def get_workflow(self, deployment_id: str) -> WorkflowRecord | None:
        return self.items.get(deployment_id)

    async def list_workflows(self) -> list[WorkflowRecord]:
        return list(self.items.values())


async def register(storage: Storage, type_: str, name: str, file: str, **kw: Any) -> str:
    graph = parse_workflow(workflow_file(file))
    result = analyse(graph)
    record = await storage.workflows.add(
        type_, name, graph, [i.to_dict() for i in result.inputs], **kw
    )
    return record.deployment_id


@dataclass
class Harness:
    storage: Storage
    service: GenerationService
    backend: Any
    comfyui: ComfyUIBackend
    events: list[GenerationEvent] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, kind: type, run_id: str, seconds: float = 10.0) -> Any:
        """The first event of ``kind`` for ``run_id`` (bounded wait on the bus)."""
        try:
            return await self._wait(kind, run_id, seconds)
        except TimeoutError:
            seen = [(type(e).__name__, e.run_id[:8]) for e in self.events]
            raise TimeoutError(f"no {kind.__name__} for {run_id[:8]}; events: {seen}") from None

    async def _wait(self, kind: type, run_id: str, seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            while True:
                for event in self.events:
                    if isinstance(event, kind) and event.run_id == run_id:
                        return event
                self.changed.clear()
                await self.changed.wait()

    @staticmethod
    async def wait_a_moment(seconds: float) -> None:
        """A pause between polls of a real server (which has no clock we could drive)."""
        await asyncio.sleep(seconds)

    def of(self, kind: type, run_id: str) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind) and e.run_id == run_id]


@asynccontextmanager
async def harness(
    storage: Storage,
    urls: list[str],
    *,
    comfydeploy: Any = None,
    poll_interval: float = 3600.0,
    client_id: str | None = None,
    start: bool = True,
    **backend_options: Any,
) -> AsyncIterator[Harness]:
    """A GenerationService over real storage and a ComfyUIBackend for ``urls`` (plus a
    ComfyDeploy client for the fake ``comfydeploy`` when given, through RoutingBackend)."""
    comfyui = ComfyUIBackend(
        urls,
        workflows=storage.workflows,
        client_id=client_id,
        ws_backoff_initial=0.05,
        ws_backoff_max=0.2,
        **backend_options,
    )
    cd_client = None
    backend: Any = comfyui
    if comfydeploy is not None:
        cd_client = ComfyDeployClient(
            comfydeploy.auth_token,
            comfydeploy.base_url,
            transport=comfydeploy.transport,
            sleep=_instant,
        )
        backend = RoutingBackend(comfydeploy=cd_client, comfyui=comfyui)
    bus = EventBus()
    service = GenerationService(
        backend=backend,
        runs=storage.runs,
        balances=storage.ledger,
        deployments=storage.deployments,
        loras=storage.loras,
        bus=bus,
        settings=GenerationSettings(poll_interval=poll_interval, breaker_threshold=1),
        rng=random.Random(5),
    )
    h = Harness(storage, service, backend, comfyui)

    async def record(event: GenerationEvent) -> None:
        h.events.append(event)
        h.changed.set()

    bus.subscribe(record)
    if start:
        await service.start()
    try:
        yield h
    finally:
        await service.stop()
        await bus.aclose()
        await backend.aclose()


async def _instant(_: float) -> None:
    return None


# -- the end-to-end harness (the bot as production builds it, on the Telegram double) -------------

FINAL_EVENTS = ("generation:completed", "generation:failed", "generation:cancelled")


async def comfy_e2e(
    tmp_path: Path,
    urls: list[str],
    *,
    fake: FakeTelegram | None = None,
    cd: FakeComfyDeploy | None = None,
    **overrides: Any,
) -> tuple[E2E, Callable[[], Any]]:
    """The bot as production builds it (``make_backend``), with COMFYUI_URL = ``urls``; with
    ``cd``, ComfyDeploy too (both backends behind the routing backend). ``overrides`` are
    Settings fields (``comfyui_auth``, ``run_poll_interval``, …)."""
    fake = fake or FakeTelegram()
    with_cd = cd is not None
    cd = cd or FakeComfyDeploy()
    options: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "database_path": str(tmp_path / "bot.sqlite3"),
        "progress_edit_interval": 0.0,
        "admin_ids": str(ADMIN_ID),
        "comfyui_url": ",".join(urls),
        "run_poll_interval": 3600.0,
    }
    if with_cd:
        options["comfydeploy_api_key"] = cd.auth_token
        options["comfydeploy_api_url"] = cd.base_url
    options.update(overrides)
    settings = Settings(_env_file=None, **options)
    app = build_application(
        settings,
        request=fake.request(),
        get_updates_request=fake.request(),
        comfy_transport=cd.transport,
        rate_limit=False,
    )
    await initialize(app)
    await app.start()
    services = app.bot_data[SERVICES_KEY]
    service = services.generation
    clock = FakeClock()
    assert services.progress is not None
    await services.progress.detach()
    ProgressRenderer(app.bot, services, clock=clock, sleep=clock.sleep).attach()
    env = E2E(fake, cd, app, services, service, clock, Events(service.bus))

    async def close() -> None:
        if services.progress is not None:
            await services.progress.detach()
        await shutdown(app)
        await cd.aclose()

    return env, close


async def add_workflow(e2e: E2E, type_: str, file: str, name: str | None = None) -> str:
    """The admin sends the workflow file captioned /workflow add; returns the bot's reply."""
    admin = e2e.fake.user(ADMIN_ID)
    data = json.dumps(workflow_file(file)).encode()
    caption = f"/workflow add {type_}" + (f" {name}" if name else "")
    await e2e.feed(
        admin.send_document(data, "workflow.json", "application/json", caption, queue=False)
    )
    return e2e.fake.last_message(ADMIN_ID).text


async def wait_final(e2e: E2E, run_id: str, timeout: float = WAIT) -> RunRecord:  # noqa: ASYNC109
    """The run once it reached a final state (bounded wait on the bus), the rest settled."""
    await e2e.events.wait(
        lambda: any(n in e2e.events.names(run_id) for n in FINAL_EVENTS), timeout=timeout
    )
    await e2e.settle()
    return await e2e.storage.runs.get_run(run_id)


async def wait_done(e2e: E2E, user: FakeUser, timeout: float = WAIT) -> RunRecord:  # noqa: ASYNC109
    """The user's latest run once it reached a final state."""
    run = await e2e.latest_run(user.id)
    return await wait_final(e2e, run.id, timeout)


async def delivered(e2e: E2E, user: FakeUser, timeout: float = WAIT) -> RunRecord:  # noqa: ASYNC109
    """The user's latest run, succeeded and its result sent to the user."""
    run = await wait_done(e2e, user, timeout)
    for _ in range(200):  # bounded: the delivery task sends, then settles the hold
        run = await e2e.storage.runs.get_run(run.id)
        if run.delivery_state.value != "pending":
            break
        await e2e.settle()
    assert run.status is RunStatus.SUCCESS, (run.status, run.error_code, run.error_message)
    assert e2e.fake.sent_media(user.id), "no result was sent"
    return run


def last_text(e2e: E2E, chat_id: int) -> str:
    return e2e.fake.last_message(chat_id).text or ""
