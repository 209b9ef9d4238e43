"""Run ``python -m bot`` as a subprocess against FakeTelegram and FakeComfyDeploy served on
127.0.0.1, with a temporary SQLite database, so tests can SIGKILL / SIGTERM it at chosen
moments and start it again on the same database.

Every wait is bounded. Conditions at the fakes are awaited through ``FakeTelegram.wait_for``
(event-driven); the database of the other process and the ComfyDeploy double are observed by
:func:`wait_until`, a bounded loop that re-checks a condition every few milliseconds (there is
no cross-process event to wait on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage import Storage
from tests.fakes.comfydeploy import FakeComfyDeploy, FakeRun, Timeline
from tests.fakes.telegram import FakeMessage, FakeTelegram, FakeUser

REPO_ROOT = Path(__file__).resolve().parents[2]
MAKE_INPUTS = ("input_prompt", "input_negative", "input_seed", "input_width", "input_height")
ADMIN_ID = 1
USER_ID = 2
START_TIMEOUT = 20.0  # interpreter start + imports + migrations, on a slow CI machine
WAIT = 15.0
TICK = 0.02  # re-check period of wait_until (cross-process state has no event to wait on)


async def wait_until(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    *,
    timeout: float = WAIT,  # noqa: ASYNC109 - bounded test wait
    what: str = "condition",
) -> Any:
    """Re-check ``predicate`` (sync or async) until truthy; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(TICK)


def _read_runs(path: str) -> list[dict[str, Any]]:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []  # not created yet
    try:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM runs ORDER BY created_at").fetchall()
    except sqlite3.OperationalError:
        return []  # schema not there yet
    finally:
        conn.close()
    out = []
    for row in rows:
        item = dict(row)
        item["meta"] = json.loads(item["meta"] or "{}")
        out.append(item)
    return out


@dataclass
class BotWorld:
    """Both fakes (served), the database path, and the bot process (one at a time)."""

    tg: FakeTelegram
    cd: FakeComfyDeploy
    tg_root: str
    cd_base: str
    tmp: Path
    deployment: str
    env: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0
    sigterm_sent: bool = False

    @property
    def db_path(self) -> str:
        return str(self.tmp / "bot.sqlite3")

    @property
    def user(self) -> FakeUser:
        return self.tg.users.get(USER_ID) or self.tg.user(USER_ID, first_name="Uma")

    # -- process ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start ``python -m bot``; returns once it polls Telegram (recovery has run by then:
        the service resumes runs in post_init, before polling starts)."""
        assert self.proc is None or self.proc.returncode is not None, "bot already running"
        before = len(self.tg.calls("getUpdates"))
        self.starts += 1
        self.sigterm_sent = False
        log = open(self.tmp / f"bot-{self.starts}.log", "wb")  # noqa: ASYNC230 - tiny, local
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            env=self.bot_env(),
            cwd=str(REPO_ROOT),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        log.close()
        proc = self.proc
        await wait_until(
            lambda: len(self.tg.calls("getUpdates")) > before or proc.returncode is not None,
            timeout=START_TIMEOUT,
            what="the bot to poll for updates",
        )
        assert self.proc.returncode is None, f"bot exited at start:\n{self.logs()}"

    def bot_env(self) -> dict[str, str]:
        """The environment ``python -m bot`` (and its operator commands) runs with."""
        env = {
            **os.environ,
            "TELEGRAM_BOT_TOKEN": self.tg.token,
            "TELEGRAM_API_URL": self.tg_root,
            "COMFYDEPLOY_API_KEY": self.cd.auth_token,
            "COMFYDEPLOY_API_URL": self.cd_base,
            "DATABASE_PATH": self.db_path,
            "ADMIN_IDS": str(ADMIN_ID),
            "RUN_POLL_INTERVAL": "0.1",
            "PROGRESS_EDIT_INTERVAL": "0",
            "LOG_LEVEL": "INFO",
            **self.env,
        }
        env.pop("PUBLIC_URL", None)
        return env

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs in the bot."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(self.proc.wait(), 10)

    def sigterm(self) -> None:
        """Send SIGTERM once (a second one would interrupt the graceful shutdown)."""
        assert self.proc is not None
        if self.proc.returncode is None and not self.sigterm_sent:
            self.sigterm_sent = True
            self.proc.send_signal(signal.SIGTERM)

    async def terminate(self, timeout: float = 15.0) -> int:  # noqa: ASYNC109
        """SIGTERM (unless already sent) and wait (bounded) for the exit code."""
        assert self.proc is not None
        self.sigterm()
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
            raise AssertionError(f"bot did not exit within {timeout}s:\n{self.logs()}") from None

    def logs(self, tail: int = 60) -> str:
        lines: list[str] = []
        for n in range(1, self.starts + 1):
            path = self.tmp / f"bot-{n}.log"
            if path.exists():
                lines.append(f"--- start {n} ---")
                lines += path.read_text(errors="replace").splitlines()[-tail:]
        return "\n".join(lines)

    # -- observing ----------------------------------------------------------------------------

    async def runs(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(_read_runs, self.db_path)

    async def run(self, index: int = 0) -> dict[str, Any] | None:
        runs = await self.runs()
        return runs[index] if len(runs) > index else None

    async def wait_run(
        self, predicate: Callable[[dict[str, Any]], bool], *, index: int = 0, what: str = ""
    ) -> dict[str, Any]:
        async def check() -> dict[str, Any] | None:
            run = await self.run(index)
            return run if run is not None and predicate(run) else None

        return await wait_until(check, what=what or f"run {index} in the database")

    async def wait_backend_run(self, index: int = 0) -> FakeRun:
        """The double's ``index``-th run (in creation order)."""

        def find() -> FakeRun | None:
            runs = sorted(self.cd.runs.values(), key=lambda r: r.seq)
            return runs[index] if len(runs) > index else None

        return await wait_until(find, what=f"backend run {index}")

    async def wait_until_held(self, route: str) -> None:
        """A request of ``route`` waits at the ComfyDeploy double's gate."""
        await wait_until(lambda: self.cd.held.get(route), what=f"a held {route} request")

    def photos(self, chat_id: int = USER_ID) -> list[FakeMessage]:
        return [m for m in self.tg.sent_media(chat_id) if m.media_kind == "photo"]

    def bot_texts(self, chat_id: int = USER_ID) -> list[FakeMessage]:
        return [m for m in self.tg.messages(chat_id) if m.media_kind is None]

    async def wait_update_confirmed(self, update_id: int) -> None:
        """Wait until the bot has confirmed ``update_id`` (a getUpdates with a higher offset),
        so Telegram would not hand it out again after a crash."""

        def confirmed() -> bool:
            return any(
                int(c.params.get("offset") or 0) > update_id for c in self.tg.calls("getUpdates")
            )

        await wait_until(confirmed, what=f"update {update_id} confirmed")

    async def make(self, prompt: str) -> int:
        """The user sends ``/make prompt``; returns the update id once it is confirmed."""
        update = self.user.send_command(f"/make {prompt}")
        update_id = int(update["update_id"])
        await self.wait_update_confirmed(update_id)
        return update_id

    async def ledger(self) -> tuple[list[str], int, int]:
        """(consistency problems, available balance, held) of the user — bot must be stopped."""
        storage = await Storage.open(self.db_path)
        try:
            problems = await storage.ledger.check_consistency()
            balance = await storage.ledger.get_balance(USER_ID)
            held = await storage.ledger.get_held(USER_ID)
        finally:
            await storage.close()
        return problems, balance, held


async def seed(
    path: str, deployment: str, *, price: int, balance: int, inputs: tuple[str, ...]
) -> None:
    """A deployment for MAKE, its price, and the user with ``balance`` credits."""
    storage = await Storage.open(path)
    try:
        await storage.deployments.add("MAKE", deployment, inputs=list(inputs))
        if price:
            await storage.prices.set("MAKE", price)
        await storage.users.get_or_create(USER_ID, language_code="en", starting_balance=balance)
    finally:
        await storage.close()


@contextlib.asynccontextmanager
async def bot_world(
    tmp: Path,
    *,
    timeline: Timeline | None = None,
    price: int = 5,
    balance: int = 20,
    env: dict[str, str] | None = None,
) -> AsyncIterator[BotWorld]:
    """Serve both fakes on 127.0.0.1, seed the database; the bot is started by the test.
    On exit any running bot is killed and every gate opened."""
    tg = FakeTelegram(long_poll_cap=0.2)
    cd = FakeComfyDeploy()
    dep = cd.add_deployment(inputs=MAKE_INPUTS, timeline=timeline or Timeline.success("png"))
    tg.user(USER_ID, first_name="Uma", language_code="en")
    async with tg.serve() as tg_root, cd.serve() as cd_base:
        world = BotWorld(tg, cd, tg_root, cd_base, tmp, dep, env=dict(env or {}))
        await seed(world.db_path, dep, price=price, balance=balance, inputs=MAKE_INPUTS)
        try:
            yield world
        finally:
            tg.release()
            cd.release()
            if world.proc is not None and world.proc.returncode is None:
                world.proc.send_signal(signal.SIGKILL)
                await world.proc.wait()
