"""The ComfyUI servers of a :class:`generation.comfyui.backend.ComfyUIBackend` and which one
takes a prompt: chosen by health and ``queue_remaining`` (lowest first, ties in turn), with a
per-server circuit breaker that skips a failing server until a half-open probe."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from generation.comfyui import ids
from generation.comfyui.client import ComfyUIClient, normalize_url
from generation.comfyui.ws import EventStream
from generation.errors import (
    BackendUnavailableError,
    InvalidInputError,
    RateLimitedError,
    RunNotFoundError,
)

log = logging.getLogger("generation.comfyui")


@dataclass(slots=True)
class Server:
    url: str
    key: str
    client: ComfyUIClient
    stream: EventStream | None = None
    queue_remaining: int | None = None  # from WS status frames (None: unknown)
    failures: int = 0
    opened_at: float | None = None
    live: set[str] = field(default_factory=set)  # prompt ids submitted by this process

    @property
    def label(self) -> str:
        return self.client.label


class ServerPool:
    def __init__(
        self,
        servers: dict[str, Server],
        *,
        clock: Callable[[], float],
        breaker_threshold: int,
        breaker_cooldown: float,
        max_queue: int | None,
    ) -> None:
        self.servers = servers
        self._clock = clock
        self._threshold = max(1, breaker_threshold)
        self._cooldown = breaker_cooldown
        self._max_queue = max_queue
        self._rotation = itertools.count()

    def usable(self, server: Server) -> bool:
        if server.opened_at is None:
            return True
        return self._clock() - server.opened_at >= self._cooldown  # half-open probe

    def record_failure(self, server: Server) -> None:
        server.failures += 1
        if server.failures >= self._threshold:
            if server.opened_at is None:
                log.warning(
                    "comfyui %s: circuit open after %d failures", server.label, server.failures
                )
            server.opened_at = self._clock()

    def record_success(self, server: Server) -> None:
        if server.opened_at is not None:
            log.info("comfyui %s: circuit closed", server.label)
        server.failures = 0
        server.opened_at = None

    def breaker_open(self, url: str) -> bool:
        server = self.servers.get(ids.server_key(normalize_url(url)))
        return server is not None and not self.usable(server)

    async def _queue_length(self, server: Server) -> int | None:
        """Queue length (WS status when connected, else ``GET /prompt``); None when down."""
        if (
            server.stream is not None
            and server.stream.connected
            and server.queue_remaining is not None
        ):
            return server.queue_remaining
        try:
            remaining = await server.client.queue_remaining()
        except BackendUnavailableError as exc:
            log.warning("comfyui %s: health check failed: %s", server.label, exc)
            self.record_failure(server)
            return None
        server.queue_remaining = remaining
        return remaining

    async def candidates(self) -> list[Server]:
        usable = [s for s in self.servers.values() if self.usable(s)]
        lengths = await asyncio.gather(*(self._queue_length(s) for s in usable))
        alive = [
            (length, s) for length, s in zip(lengths, usable, strict=True) if length is not None
        ]
        if not alive:
            raise BackendUnavailableError("no ComfyUI server is reachable")
        if self._max_queue is not None and all(n >= self._max_queue for n, _ in alive):
            raise RateLimitedError(f"every ComfyUI queue has {self._max_queue}+ prompts")
        turn = next(self._rotation)
        order = {s.key: (i - turn) % len(alive) for i, (_, s) in enumerate(alive)}
        alive.sort(key=lambda pair: (pair[0], order[pair[1].key]))
        return [s for _, s in alive]

    def locate(self, run_id: str) -> tuple[Server, str]:
        parsed = ids.parse_run_id(run_id)
        if parsed is None:
            raise InvalidInputError("not a ComfyUI run id", field="run_id")
        key, prompt_id = parsed
        server = self.servers.get(key)
        if server is None:
            raise RunNotFoundError(
                "the ComfyUI server of this run is not configured", run_id=run_id
            )
        return server, prompt_id
