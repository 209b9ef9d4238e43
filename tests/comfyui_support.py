"""Helpers shared by the ComfyUI backend tests (workflow files, images, a service harness)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from generation import EventBus, GenerationEvent, GenerationService, GenerationSettings
from generation.client import ComfyDeployClient
from generation.comfyui import ComfyUIBackend, analyse, parse_workflow
from generation.models import WorkflowRecord
from generation.routing import RoutingBackend
from storage import Storage

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
