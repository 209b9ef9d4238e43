"""Live state of the prompts this process submitted to ComfyUI, from the WebSocket's
messages (generation/comfyui/progress.py), and the "look again" pushes to the service's update
sink: throttled per prompt, at once when a prompt starts or ends or the socket reconnects."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from generation.comfyui import ids
from generation.comfyui.progress import LiveState
from generation.comfyui.servers import Server
from generation.tasks import TaskSet

log = logging.getLogger("generation.comfyui")

UpdateSink = Callable[[str], Awaitable[Any]]
_PUSH_INTERVAL = 1.0  # seconds between progress pushes per prompt
_MAX_LIVE = 2000


class LivePrompts:
    def __init__(self, servers: Mapping[str, Server]) -> None:
        self._servers = servers
        self.states: dict[str, LiveState] = {}
        self._last_push: dict[str, float] = {}
        self.sink: UpdateSink | None = None
        self._tasks = TaskSet()

    async def aclose(self) -> None:
        await self._tasks.aclose()

    def remember(self, server: Server, prompt_id: str, graph: Mapping[str, Any]) -> None:
        self.states[prompt_id] = LiveState.for_graph(prompt_id, graph)
        server.live.add(prompt_id)
        while len(self.states) > _MAX_LIVE:
            oldest = next(iter(self.states))
            self.states.pop(oldest)
            for s in self._servers.values():
                s.live.discard(oldest)

    def forget(self, server: Server, prompt_id: str) -> None:
        self.states.pop(prompt_id, None)
        self._last_push.pop(prompt_id, None)
        server.live.discard(prompt_id)

    def on_message(self, server: Server, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, Mapping):
            return
        if kind == "status":
            try:
                server.queue_remaining = int(data["status"]["exec_info"]["queue_remaining"])
            except (KeyError, TypeError, ValueError):
                pass
            return
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            # On reconnect the server replays ``executing`` without a prompt_id.
            return
        live = self.states.get(prompt_id)
        if live is None:
            return
        changed = live.apply(str(kind), data)
        final = kind == "executing" and data.get("node") is None
        if changed:
            self._push(server, prompt_id, urgent=final or kind == "execution_start")

    def on_connect(self, server: Server) -> None:
        # Messages sent while we were away are lost: re-read every prompt of this server.
        for prompt_id in list(server.live):
            self._push(server, prompt_id, urgent=True)

    def on_disconnect(self, server: Server) -> None:
        server.queue_remaining = None

    def _push(self, server: Server, prompt_id: str, *, urgent: bool) -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        if not urgent and now - self._last_push.get(prompt_id, 0.0) < _PUSH_INTERVAL:
            return
        self._last_push[prompt_id] = now
        self._tasks.spawn(self._deliver(ids.run_id(server.key, prompt_id)))

    async def _deliver(self, run_id: str) -> None:
        sink = self.sink
        if sink is None:
            return
        try:
            await sink(run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("comfyui: update sink failed for %s", run_id)
