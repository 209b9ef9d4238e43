"""The long-lived ``/ws?clientId=`` connection to one ComfyUI server.

One :class:`EventStream` per server and bot process. It reconnects forever with exponential
backoff (full jitter, capped) until closed; a receive timeout sends a ping, and a missing pong
counts as a dead connection. ``on_connect`` runs after every (re)connect — messages sent while
the socket was down are lost, so the owner re-reads ``/queue`` and ``/history`` then.
Binary frames (previews) are ignored. The ``Authorization`` value goes on the upgrade request
and is never logged; no ``Origin`` header is sent (ComfyUI answers 403 when Origin and Host
disagree).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus, WebSocketException

from generation.comfyui.client import safe_url

log = logging.getLogger("generation.comfyui.ws")
# websockets logs the upgrade request's headers at DEBUG (the Authorization value among them):
# its records go to this logger, which never passes DEBUG on.
_PROTOCOL_LOG = logging.getLogger("generation.comfyui.ws.protocol")
_PROTOCOL_LOG.setLevel(logging.INFO)

MessageHandler = Callable[[Mapping[str, Any]], None]
Sleep = Callable[[float], Awaitable[Any]]


class EventStream:
    def __init__(
        self,
        url: str,
        *,
        auth: str | None = None,
        on_message: MessageHandler,
        on_connect: Callable[[], None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
        recv_timeout: float = 30.0,
        ping_timeout: float = 10.0,
        open_timeout: float = 10.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        sleep: Sleep | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._url = url
        self._headers = {"Authorization": auth} if auth else {}
        self._on_message = on_message
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._recv_timeout = recv_timeout
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rng = rng or random.Random()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.connected = False
        self.connects = 0  # successful connects so far (the first one included)
        self.failures = 0  # consecutive failed attempts
        self.label = safe_url(url.replace("ws://", "http://", 1).replace("wss://", "https://", 1))
        self._connected_event = asyncio.Event()

    def start(self) -> None:
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"comfyui-ws-{self.label}"
            )

    async def wait_connected(self, seconds: float) -> bool:
        """Wait (bounded) until the socket is open; True when it is."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected_event.wait(), seconds)
        return self.connected

    async def aclose(self) -> None:
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # bounded: a close handshake with a server that stopped answering must not hang
            # the bot's shutdown (the connection's own close_timeout is 2 s)
            await asyncio.wait({task}, timeout=5.0)
            if task.done() and not task.cancelled():
                with contextlib.suppress(Exception):
                    task.exception()
        self._set_connected(False)

    def _set_connected(self, value: bool) -> None:
        was = self.connected
        self.connected = value
        if value:
            self._connected_event.set()
        else:
            self._connected_event.clear()
            if was and self._on_disconnect is not None:
                self._on_disconnect()

    def backoff(self, attempt: int) -> float:
        """Delay before reconnect attempt ``attempt`` (1-based): full jitter, capped."""
        ceiling = min(self._backoff_max, self._backoff_initial * (2 ** max(0, attempt - 1)))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    async def _run(self) -> None:
        while not self._closed:
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except InvalidStatus as exc:
                status = exc.response.status_code
                log.warning("comfyui ws %s: upgrade refused (HTTP %s)", self.label, status)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("comfyui ws %s: connection lost (%s)", self.label, type(exc).__name__)
            except Exception:
                log.exception("comfyui ws %s: listener error", self.label)
            self._set_connected(False)
            if self._closed:
                break
            self.failures += 1
            await self._sleep(self.backoff(self.failures))

    async def _session(self) -> None:
        async with connect(
            self._url,
            additional_headers=self._headers,
            open_timeout=self._open_timeout,
            ping_interval=None,  # our receive timeout pings instead
            close_timeout=2,
            max_size=2**24,
            logger=_PROTOCOL_LOG,
        ) as ws:
            self.failures = 0
            self.connects += 1
            self._set_connected(True)
            log.info("comfyui ws %s: connected (#%d)", self.label, self.connects)
            if self._on_connect is not None:
                self._on_connect()
            while True:
                try:
                    async with asyncio.timeout(self._recv_timeout):
                        frame = await ws.recv()
                except TimeoutError:
                    # silence: is the server still there? A missing pong ends the session.
                    pong = await ws.ping()
                    async with asyncio.timeout(self._ping_timeout):
                        await pong
                    continue
                if isinstance(frame, bytes):
                    continue
                try:
                    message = json.loads(frame)
                except ValueError:
                    continue
                if isinstance(message, Mapping) and isinstance(message.get("type"), str):
                    try:
                        self._on_message(message)
                    except Exception:
                        log.exception("comfyui ws %s: message handler failed", self.label)
