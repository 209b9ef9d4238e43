"""The processes under test and the load that drives them (used by ``bench/run.py``).

A :class:`Target` is one running program — the real bot (``bench.bot_unthrottled``, i.e.
``python -m bot`` with Telegram's overall 30/s lifted) or the baseline
(``bench.baseline_bot``) — in one mode:

* ``webhook``: ``PUBLIC_URL`` set; the benchmark POSTs each update to the program's
  ``/telegram`` (t0 = just before the POST); ComfyDeploy posts webhooks back;
* ``polling``: no ``PUBLIC_URL``; the update is queued in the Telegram double (t0) and handed
  over by ``getUpdates`` long polling; runs are followed with ``GET /run/{id}`` every
  ``RUN_POLL_INTERVAL`` seconds.

Each target has its own Telegram double (two programs cannot share one bot's ``getUpdates``);
the ComfyDeploy double and the probes are shared. :class:`Load` runs the phases: closed loops
(each user sends its next ``/make`` once the previous result arrived) with the process's CPU,
Bot API calls and SQL statements read before and after, and the open-loop throughput ramp.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.instrument import SqlCounter
from bench.probes import BenchComfyDeploy, BenchTelegram, Probes
from bench.procstat import cpu_seconds, peak_rss_kb, rss_kb
from bench.stats import percentile, sustained_rate
from tests.fakes.telegram import FakeUser

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret"
ADMIN_ID = 1
TIMEOUT = 30.0  # bounded waits for one request's create / result
P99_LIMIT = 0.100  # throughput: the highest rate with p99 overhead ≤ 100 ms


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Phase:
    """What one load phase measured (latencies in seconds, costs as deltas)."""

    name: str
    overhead: list[float] = field(default_factory=list)
    reply: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    failures: int = 0
    failure_reasons: Counter[str] = field(default_factory=Counter)  # why (printed with them)
    wall: float = 0.0
    cpu_s: float = math.nan
    api_calls: int = 0
    api_by_method: Counter[str] = field(default_factory=Counter)
    sql: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.overhead)

    def p(self, attr: str, q: float) -> float:
        return percentile(getattr(self, attr), q)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.count,
            "failures": self.failures,
            "wall_s": self.wall,
            "overhead_p50": self.p("overhead", 50),
            "overhead_p99": self.p("overhead", 99),
            "reply_p50": self.p("reply", 50),
            "delivery_p50": self.p("delivery", 50),
            "delivery_p99": self.p("delivery", 99),
            "cpu_s": self.cpu_s,
            "api_calls": self.api_calls,
            "api_by_method": dict(self.api_by_method),
            "sql": self.sql,
            **self.extra,
        }


class Target:
    """A running program under test and how to talk to it."""

    def __init__(
        self,
        kind: str,
        mode: str,
        proc: asyncio.subprocess.Process,
        tg: BenchTelegram,
        url: str,
        sql: SqlCounter | None,
    ) -> None:
        self.kind = kind
        self.mode = mode
        self.proc = proc
        self.tg = tg
        self.url = url
        self.sql = sql
        self.generations = 0  # completed in this process (profile: per-generation figures)
        self._users: dict[int, FakeUser] = {}
        self.http = httpx.AsyncClient(
            timeout=30.0, limits=httpx.Limits(max_connections=400, max_keepalive_connections=400)
        )

    @property
    def is_bot(self) -> bool:
        return self.kind != "baseline"

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.mode}"

    def user(self, user_id: int) -> FakeUser:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = self.tg.user(user_id, f"U{user_id}")
        return user

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_kb(self) -> float:
        return rss_kb(self.proc.pid)

    def peak_rss_kb(self) -> float:
        return peak_rss_kb(self.proc.pid)

    def statements(self) -> float:
        return float(self.sql.read()) if self.sql is not None else math.nan

    def costs(self) -> dict[str, Any]:
        """Cumulative costs so far; :func:`cost_delta` of two is a window's cost."""
        return {
            "generations": self.generations,
            "cpu_s": self.cpu(),
            "api_calls": self.tg.api_calls(),
            "api_by_method": Counter(self.tg.method_counts),
            "sql": self.statements(),
        }

    async def send(self, user: FakeUser, text: str) -> float:
        """Hand ``text`` from ``user`` to the program; returns t0 (``perf_counter``)."""
        if self.mode == "polling":
            started = time.perf_counter()
            user.send_command(text, queue=True)  # the pending getUpdates answers with it
            return started
        update = user.send_command(text, queue=False)
        body = json.dumps(update).encode()
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
        started = time.perf_counter()
        response = await self.http.post(f"{self.url}/telegram", content=body, headers=headers)
        response.raise_for_status()
        return started


def cost_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The costs between two :meth:`Target.costs` snapshots (``n`` = generations completed);
    ``getUpdates`` (polling itself) is not a Bot API call of a generation."""
    methods = Counter(after["api_by_method"])
    methods.subtract(before["api_by_method"])
    methods.pop("getUpdates", None)
    return {
        "n": after["generations"] - before["generations"],
        "cpu_s": after["cpu_s"] - before["cpu_s"],
        "api_calls": after["api_calls"] - before["api_calls"],
        "api_by_method": dict(+methods),
        "sql": after["sql"] - before["sql"],
    }


class Processes:
    """Starts and stops targets against the shared ComfyDeploy double."""

    def __init__(
        self, args: Any, probes: Probes, cd: BenchComfyDeploy, cd_base: str, tmp: Path
    ) -> None:
        self.args = args
        self.probes = probes
        self.cd = cd
        self.cd_base = cd_base
        self.tmp = tmp
        self.deployment = ""

    def _env(self, kind: str, mode: str, tg: BenchTelegram, tg_root: str, port: int) -> dict:
        env = dict(
            os.environ,
            TELEGRAM_BOT_TOKEN=tg.token,
            TELEGRAM_API_URL=tg_root,
            COMFYDEPLOY_API_KEY=self.cd.auth_token,
            COMFYDEPLOY_API_URL=self.cd_base,
            LISTEN_HOST="127.0.0.1",
            LISTEN_PORT=str(port),
            WEBHOOK_SECRET=SECRET,
            ADMIN_IDS=str(ADMIN_ID),
            DATABASE_PATH=str(self.tmp / f"{kind}-{mode}-{port}.sqlite3"),
            LOG_LEVEL=self.args.log_level,
            RUN_POLL_INTERVAL=str(self.args.run_poll_interval),
            # The bot's own in-flight cap is a GPU-budget policy, not a cost: lift it so the
            # benchmark measures the bot's work rather than its queue.
            MAX_IN_FLIGHT="1000",
            BASELINE_DEPLOYMENT_ID=self.deployment,
            PYTHONPATH=str(ROOT),
        )
        env.pop("PUBLIC_URL", None)
        if mode == "webhook":
            env["PUBLIC_URL"] = f"http://127.0.0.1:{port}"
        return env

    def _command(self, kind: str, mode: str, env: dict[str, str]) -> list[str]:
        if kind == "bot":
            if self.args.profile:
                env["BENCH_PROFILE"] = str(self.tmp / f"bot-{mode}.prof")
            return [sys.executable, "-m", "bench.bot_unthrottled"]
        if kind == "bot-flood":
            return [sys.executable, "-m", "bot"]  # the bot exactly as shipped
        return [sys.executable, "-m", "bench.baseline_bot"]

    @contextlib.asynccontextmanager
    async def target(self, kind: str, mode: str) -> AsyncIterator[Target]:
        tg = BenchTelegram(self.probes, long_poll_cap=0.5, strict_images=False)
        tg.done_prefix = None if kind != "baseline" else ("result" if mode == "polling" else "")
        async with tg.serve() as tg_root:
            port = free_port()
            env = self._env(kind, mode, tg, tg_root, port)
            sql: SqlCounter | None = None
            if kind == "bot":
                sql_path = self.tmp / f"sql-{mode}-{port}.counter"
                sql = SqlCounter(sql_path, create=True)
                env["BENCH_SQL_COUNTER"] = str(sql_path)
            cmd = self._command(kind, mode, env)
            log_path = self.tmp / f"{kind}-{mode}-{port}.log"
            with log_path.open("wb") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *cmd, env=env, cwd=str(ROOT), stdout=log_file, stderr=subprocess.STDOUT
                )
            target = Target(kind, mode, proc, tg, f"http://127.0.0.1:{port}", sql)
            try:
                await self._wait_ready(target, log_path)
                if target.is_bot:
                    await self._add_deployment(target)
                yield target
            finally:
                await self._stop(target)

    async def _stop(self, target: Target) -> None:
        await target.http.aclose()
        proc = target.proc
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 60 if self.args.profile else 20)
            except TimeoutError:
                print(f"  ({target.label} did not stop within the grace period: killed)")
                proc.kill()
                await proc.wait()
        if target.sql is not None:
            target.sql.close()

    async def _wait_ready(self, target: Target, log_path: Path) -> None:
        expected = f"{target.url}/telegram"
        for _ in range(600):  # bounded: ≤ 30 s
            if target.mode == "webhook" and (target.tg.webhook or {}).get("url") == expected:
                return
            if target.mode == "polling" and target.tg.method_counts["getUpdates"] > 0:
                return
            if target.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        tail = await asyncio.to_thread(log_path.read_text)
        raise RuntimeError(f"{target.label} did not start; log:\n{tail[-3000:]}")

    async def _add_deployment(self, target: Target) -> None:
        tg = target.tg
        before = len(tg.messages(ADMIN_ID))
        await target.send(target.user(ADMIN_ID), f"/deployment add MAKE {self.deployment}")
        await tg.wait_for(lambda: len(tg.messages(ADMIN_ID)) > before, timeout=10, what="admin")


class Load:
    """The load phases; every request carries a fresh ``bench-<n>`` tag."""

    def __init__(self, probes: Probes, quiesce_s: float) -> None:
        self.probes = probes
        self.quiesce_s = quiesce_s
        self.tags = itertools.count(1)

    async def one(
        self, target: Target, user: FakeUser, phase: Phase, *, closed: bool = True
    ) -> bool:
        """One /make: overhead, first reply (closed loops: one request per chat at a time)
        and, for the bot, delivery. False (a failure) on a timeout."""
        tag = next(self.tags)
        probes = self.probes
        created, done = probes.wait("created", tag), probes.wait("done", tag)
        reply = probes.wait("reply", tag) if closed else None
        if closed:
            target.tg.expect_reply(user.id, tag)
        stage = "update not accepted"
        try:
            sent = await target.send(user, f"/make bench-{tag} a lighthouse at dusk")
            stage = "no create-run"
            created_at = await asyncio.wait_for(created, TIMEOUT)
            stage = "no result"
            done_at = await asyncio.wait_for(done, TIMEOUT)
            stage = "no reply"
            reply_at = await asyncio.wait_for(reply, TIMEOUT) if reply is not None else None
        except (TimeoutError, httpx.HTTPError) as exc:
            phase.failures += 1
            status = getattr(getattr(exc, "response", None), "status_code", None)
            why = f"HTTP {status}" if status else type(exc).__name__
            phase.failure_reasons[f"{stage}: {why}"] += 1
            probes.forget(tag)
            target.tg.forget_reply(user.id)
            return False
        phase.overhead.append(created_at - sent)
        if reply_at is not None:
            phase.reply.append(reply_at - sent)
        success_at = probes.stamps["success"].get(tag)
        if target.is_bot and success_at is not None:
            phase.delivery.append(done_at - success_at)
        probes.forget(tag)
        target.generations += 1
        return True

    async def quiesce(self, target: Target, seconds: float | None = None) -> None:
        """Let trailing work (final progress edits, settles) finish inside the phase."""
        await asyncio.sleep(seconds if seconds is not None else self.quiesce_s)

    async def closed_loop(
        self, target: Target, name: str, users: int, per_user: int, first_user: int = 1000
    ) -> Phase:
        phase = Phase(name)
        before = target.costs()

        async def run_user(user: FakeUser) -> None:
            for _ in range(per_user):
                await self.one(target, user, phase)

        started = time.perf_counter()
        await asyncio.gather(*(run_user(target.user(first_user + i)) for i in range(users)))
        phase.wall = time.perf_counter() - started
        await self.quiesce(target)
        cost = cost_delta(before, target.costs())
        phase.cpu_s, phase.api_calls, phase.sql = cost["cpu_s"], cost["api_calls"], cost["sql"]
        phase.api_by_method = Counter(cost["api_by_method"])
        return phase

    async def ramp_step(self, target: Target, rate: float, seconds: float, pool: int) -> Phase:
        phase = Phase(f"rate {rate:g}")
        n = max(1, int(rate * seconds))
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[bool]] = []
        start = loop.time()
        for i in range(n):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            user = target.user(20_000 + i % pool)
            tasks.append(asyncio.create_task(self.one(target, user, phase, closed=False)))
        await asyncio.gather(*tasks)
        phase.wall = loop.time() - start
        return phase

    async def throughput(
        self, target: Target, rates: Sequence[float], seconds: float, pool: int = 1000
    ) -> dict[str, Any]:
        """Open loop: raise the offered rate until p99 overhead passes 100 ms or requests
        stop completing; returns every step and the sustained rate."""
        steps: list[dict[str, Any]] = []
        for rate in rates:
            phase = await self.ramp_step(target, rate, seconds, pool)
            p99 = phase.p("overhead", 99)
            steps.append({"rate": rate, "p99": p99, "failures": phase.failures, "n": phase.count})
            print(
                f"    {target.label:16} rate {rate:5g}/s: p50 {phase.p('overhead', 50) * 1e3:7.1f}"
                f" ms, p99 {p99 * 1e3:7.1f} ms, failures {phase.failures}",
                flush=True,
            )
            await self.quiesce(target)
            if phase.failures or p99 > P99_LIMIT:
                break
        sustained = sustained_rate([(s["rate"], s["p99"], s["failures"]) for s in steps], P99_LIMIT)
        return {"steps": steps, "sustained": sustained}
