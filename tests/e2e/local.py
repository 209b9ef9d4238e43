"""The local-mode end-to-end harness: the real bot behind the Bot API emulator
(``bot/local``), with the preview backend on a fast timeline, driven through the web chat's
HTTP API on 127.0.0.1 (tests/test_local_mode.py) or a real browser
(tests/test_webchat_browser.py). Every wait is bounded by ``WAIT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from bot.config import Settings
from bot.local.runner import LocalRuntime, bind_socket, local_mode

WAIT = 15.0  # upper bound for one scenario step (never reached when things work)
HEADERS = {"X-Local-Chat": "1"}


def make_settings(tmp_path: Path, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_path": str(tmp_path / "bot.sqlite3"),
        "progress_edit_interval": 0.05,
        "run_poll_interval": 0.2,
    }
    values.update(extra)
    return Settings(_env_file=None, **values)


class Chat:
    """Reads the chat through the page's long poll and remembers every state it saw."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.version = -1
        self.state: dict[str, Any] = {}
        self.seen_texts: dict[int, list[str]] = {}

    async def send(self, text: str, lang: str = "en") -> int:
        r = await self.client.post("/api/send", json={"text": text, "lang": lang})
        assert r.status_code == 200, r.text
        return r.json()["message_id"]

    async def refresh(self, wait: float = 2.0) -> dict[str, Any]:
        r = await self.client.get(
            "/api/state", params={"since": self.version, "wait": wait, "lang": "en"}
        )
        assert r.status_code == 200
        self.state = r.json()
        self.version = self.state["version"]
        for m in self.state["messages"]:
            texts = self.seen_texts.setdefault(m["id"], [])
            body = m["text"] if m["text"] is not None else m["caption"]
            if not texts or texts[-1] != body:
                texts.append(body)
        return self.state

    async def until(self, predicate: Callable[[list[dict[str, Any]]], Any], what: str) -> Any:
        """Long-poll until ``predicate(messages)`` is truthy (bounded by WAIT)."""
        try:
            async with asyncio.timeout(WAIT):
                while True:
                    state = await self.refresh()
                    if result := predicate(state["messages"]):
                        return result
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}: {self.state}") from None


def bot_photos(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m for m in messages if not m["out"] and m["kind"] == "photo"]


def reply_to(message_id: int) -> Callable[[list[dict[str, Any]]], Any]:
    def find(messages: list[dict[str, Any]]) -> Any:
        for m in messages:
            if not m["out"] and (m.get("reply_to") or {}).get("id") == message_id:
                return m
        return None

    return find


def answer_to(message_id: int) -> Callable[[list[dict[str, Any]]], Any]:
    """The bot's first message after ``message_id`` (a reply or not)."""

    def find(messages: list[dict[str, Any]]) -> Any:
        return next((m for m in messages if not m["out"] and m["id"] > message_id), None)

    return find


def png_bytes(size: tuple[int, int] = (96, 64), colour: str = "teal") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


@contextlib.asynccontextmanager
async def local_runtime(
    tmp_path: Path, *, step: float = 0.05, **settings: Any
) -> AsyncIterator[LocalRuntime]:
    """Local mode on a free port of 127.0.0.1; ``step``: progress edits, polls and the preview
    timeline run at this pace (seconds)."""
    values = {"progress_edit_interval": step, **settings}
    sock = bind_socket("127.0.0.1", 0)
    async with local_mode(
        make_settings(tmp_path, **values), sock=sock, preview_step_seconds=step
    ) as rt:
        yield rt
