"""One command benchmark: the real bot (``python -m bot``) and a bare PTB baseline, each as a
separate process, against loopback doubles of the Telegram Bot API and ComfyDeploy.

    python -m bench.run            # full run (~10 min on 2 cores)
    python -m bench.run --quick    # smoke run (~1-2 min)
    python -m bench.run --profile  # also cProfile the bot process and print its hot spots

Both programs run in webhook mode behind the same ingress (uvicorn + starlette), so the
difference is the bot's own work. Figures (see README.md):

a. overhead: update POSTed to ``/telegram`` → create-run request inside the ComfyDeploy double
   (same process, same ``time.perf_counter`` clock), p50/p99, 1/10/100 concurrent users, each
   user sending its next ``/make`` once the previous one was answered;
b. delivery latency (bot only): the double posting the ``success`` webhook → ``sendPhoto``
   reaching the Telegram double;
c. throughput: open-loop ramp of offered generations/s; the highest rate whose p99 overhead
   stays ≤ 100 ms and whose generations all complete;
d. memory: VmRSS of the process after 1,000 and 10,000 completed generations;
e. storage (in process): balance holds per second with settle/release, single and concurrent;
plus a 100-user run with the Telegram double's flood control on, counting 429 answers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import pstats
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.probes import INSTANT, BenchComfyDeploy, BenchTelegram, Probes
from bench.stats import ms, percentile, ratio
from bench.storage_bench import storage_benchmark
from tests.fakes.telegram import FakeUser

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-webhook-secret"
ADMIN_ID = 1
TIMEOUT = 30.0  # bounded waits for one request's create / result
RATES = (5, 10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


@dataclass
class Phase:
    name: str
    overhead: list[float] = field(default_factory=list)
    delivery: list[float] = field(default_factory=list)
    failures: int = 0
    wall: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.overhead)


class Target:
    """A running program under test (the bot or the baseline) and how to talk to it."""

    def __init__(self, kind: str, bench: Bench, proc: asyncio.subprocess.Process, url: str) -> None:
        self.kind = kind
        self.bench = bench
        self.proc = proc
        self.url = url
        self.http = httpx.AsyncClient(
            timeout=30.0, limits=httpx.Limits(max_connections=400, max_keepalive_connections=400)
        )

    @property
    def is_bot(self) -> bool:
        return self.kind != "baseline"

    def rss(self) -> float:
        return rss_mb(self.proc.pid)

    async def post_update(self, update: dict[str, Any]) -> float:
        """POST an update to the program's webhook; returns when it was handed over."""
        body = json.dumps(update).encode()
        headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
        started = time.perf_counter()
        response = await self.http.post(f"{self.url}/telegram", content=body, headers=headers)
        response.raise_for_status()
        return started

    async def make(self, user: FakeUser, tag: int) -> float:
        update = user.send_command(f"/make bench-{tag} a lighthouse at dusk", queue=False)
        return await self.post_update(update)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.probes = Probes()
        self.tg = BenchTelegram(self.probes, long_poll_cap=0.5, strict_images=False)
        self.cd = BenchComfyDeploy(self.probes)
        self.deployment = self.cd.add_deployment(
            inputs=("input_prompt", "input_negative", "input_seed", "input_width", "input_height"),
            timeline=INSTANT,
        )
        self.tags = itertools.count(1)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.tg_root = ""
        self.cd_base = ""
        self._users: dict[int, FakeUser] = {}

    def user(self, user_id: int) -> FakeUser:
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = self.tg.user(user_id, f"U{user_id}")
        return user

    # -- processes ------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def target(self, kind: str) -> AsyncIterator[Target]:
        port = free_port()
        env = dict(
            os.environ,
            TELEGRAM_BOT_TOKEN=self.tg.token,
            TELEGRAM_API_URL=self.tg_root,
            COMFYDEPLOY_API_KEY=self.cd.auth_token,
            COMFYDEPLOY_API_URL=self.cd_base,
            PUBLIC_URL=f"http://127.0.0.1:{port}",
            LISTEN_HOST="127.0.0.1",
            LISTEN_PORT=str(port),
            WEBHOOK_SECRET=SECRET,
            ADMIN_IDS=str(ADMIN_ID),
            DATABASE_PATH=str(self.tmp / f"{kind}-{port}.sqlite3"),
            LOG_LEVEL=self.args.log_level,
            # The bot's own in-flight cap is a GPU-budget policy, not a cost: lift it so the
            # benchmark measures the bot's work rather than its queue.
            MAX_IN_FLIGHT="1000",
            BASELINE_DEPLOYMENT_ID=self.deployment,
            PYTHONPATH=str(ROOT),
        )
        if kind == "bot":
            # a-d: Telegram's overall 30/s lifted (see bench/bot_unthrottled.py)
            cmd = [sys.executable, "-m", "bench.bot_unthrottled"]
            if self.args.profile:
                env["BENCH_PROFILE"] = str(self.tmp / "bot.prof")
        elif kind == "bot-flood":
            cmd = [sys.executable, "-m", "bot"]  # the bot exactly as shipped
        else:
            cmd = [sys.executable, "-m", "bench.baseline_bot"]
        log_path = self.tmp / f"{kind}-{port}.log"
        with log_path.open("wb") as log_file:
            proc = await asyncio.create_subprocess_exec(
                *cmd, env=env, cwd=str(ROOT), stdout=log_file, stderr=subprocess.STDOUT
            )
        target = Target(kind, self, proc, f"http://127.0.0.1:{port}")
        try:
            await self._wait_ready(target, log_path)
            if kind != "baseline":
                await self._add_deployment(target)
            yield target
        finally:
            await target.http.aclose()
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 60 if self.args.profile else 20)
                except TimeoutError:
                    print(f"  ({kind} did not stop within the grace period: killed)")
                    proc.kill()
                    await proc.wait()
            self.tg.webhook = None
            if kind == "bot" and self.args.profile:
                print_profile(self.tmp / "bot.prof")

    async def _wait_ready(self, target: Target, log_path: Path) -> None:
        expected = f"{target.url}/telegram"
        for _ in range(600):  # bounded: ≤ 30 s
            if (self.tg.webhook or {}).get("url") == expected:
                return
            if target.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        tail = await asyncio.to_thread(log_path.read_text)
        raise RuntimeError(f"{target.kind} did not start; log:\n{tail[-3000:]}")

    async def _add_deployment(self, target: Target) -> None:
        admin = self.user(ADMIN_ID)
        before = len(self.tg.messages(ADMIN_ID))
        await target.post_update(admin.send_command(f"/deployment add MAKE {self.deployment}"))
        await self.tg.wait_for(
            lambda: len(self.tg.messages(ADMIN_ID)) > before, timeout=10, what="admin answer"
        )

    # -- load -----------------------------------------------------------------------------

    async def one(
        self, target: Target, user: FakeUser, phase: Phase, wait_s: float = TIMEOUT
    ) -> bool:
        """One /make: record overhead (and delivery for the bot); False on a timeout."""
        tag = next(self.tags)
        created = self.probes.wait("created", tag)
        done = self.probes.wait("done", tag)
        try:
            sent = await target.make(user, tag)
            created_at = await asyncio.wait_for(created, wait_s)
            done_at = await asyncio.wait_for(done, wait_s)
        except (TimeoutError, httpx.HTTPError):
            phase.failures += 1
            self.probes.forget(tag)
            return False
        phase.overhead.append(created_at - sent)
        success_at = self.probes.stamps["success"].get(tag)
        if target.is_bot and success_at is not None:
            phase.delivery.append(done_at - success_at)
        self.probes.forget(tag)
        return True

    async def closed_loop(
        self,
        target: Target,
        name: str,
        users: int,
        per_user: int,
        first_user: int = 1000,
        wait_s: float = TIMEOUT,
    ) -> Phase:
        phase = Phase(name)

        async def run_user(user: FakeUser) -> None:
            for _ in range(per_user):
                await self.one(target, user, phase, wait_s)

        started = time.perf_counter()
        await asyncio.gather(*(run_user(self.user(first_user + i)) for i in range(users)))
        phase.wall = time.perf_counter() - started
        await self.quiesce(target)
        return phase

    async def quiesce(self, target: Target, seconds: float = 0.0) -> None:
        """Let trailing work (progress edits, settles) finish before the next phase."""
        delay = seconds or (2.0 if target.is_bot else 0.2)
        await asyncio.sleep(delay)

    async def throughput(self, target: Target, duration: float) -> Phase:
        """Open loop: raise the offered rate until p99 overhead passes 100 ms or requests
        stop completing. ``extra['steps']`` keeps every step; ``extra['sustained']`` the best."""
        steps: list[dict[str, Any]] = []
        sustained = 0.0
        pool = [self.user(20_000 + i) for i in range(1000)]
        counter = itertools.count()
        loop = asyncio.get_running_loop()
        for rate in RATES:
            phase = Phase(f"rate {rate}")
            n = max(1, int(rate * duration))
            tasks: list[asyncio.Task[bool]] = []
            start = loop.time()
            for i in range(n):
                delay = start + i / rate - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                user = pool[next(counter) % len(pool)]
                tasks.append(asyncio.create_task(self.one(target, user, phase)))
            offered_wall = loop.time() - start
            await asyncio.gather(*tasks)
            phase.wall = loop.time() - start
            p99 = percentile(phase.overhead, 99)
            ok = phase.failures == 0 and p99 <= 0.100
            steps.append(
                {
                    "rate": rate,
                    "n": n,
                    "offered_per_s": n / max(offered_wall, 1e-9),
                    "completed_per_s": phase.count / phase.wall,
                    "p50": percentile(phase.overhead, 50),
                    "p99": p99,
                    "failures": phase.failures,
                    "ok": ok,
                }
            )
            print(
                f"  {target.kind:8} rate {rate:4}/s: p50 {ms(percentile(phase.overhead, 50))}, "
                f"p99 {ms(p99)}, failures {phase.failures}",
                flush=True,
            )
            await self.quiesce(target)
            if not ok:
                break
            sustained = float(rate)
        result = Phase("throughput")
        result.extra = {"steps": steps, "sustained": sustained}
        return result

    async def flood(self, target: Target, users: int) -> Phase:
        """100 users at once with Telegram's flood rules on: count 429 answers."""
        self.tg.set_flood_control(True)
        before = self.tg.status_counts[429]
        self.tg.limited.clear()
        try:
            phase = await self.closed_loop(
                target, "flood", users, 1, first_user=30_000, wait_s=15.0
            )
            await self.quiesce(target, 3.0)
        finally:
            self.tg.set_flood_control(False)
        phase.extra["429"] = self.tg.status_counts[429] - before
        phase.extra["429_by_method"] = dict(self.tg.limited)
        return phase

    async def memory(self, target: Target, checkpoints: tuple[int, ...], users: int) -> Phase:
        """``users`` closed-loop users until each checkpoint of completed generations; VmRSS
        of the process at each checkpoint, after in-flight work has settled."""
        phase = Phase("memory")
        samples: dict[int, float] = {0: target.rss()}
        issued = 0
        started = time.perf_counter()

        async def user_loop(user: FakeUser, checkpoint: int) -> None:
            nonlocal issued
            while issued < checkpoint:
                issued += 1
                if issued % 1000 == 0:
                    self.tg.trim()
                    self.cd.trim()
                await self.one(target, user, phase)

        for checkpoint in checkpoints:
            await asyncio.gather(
                *(user_loop(self.user(40_000 + i), checkpoint) for i in range(users))
            )
            await self.quiesce(target, 2.0 if target.is_bot else 0.3)
            samples[checkpoint] = target.rss()
            print(
                f"  {target.kind:8} after {checkpoint:6} generations: "
                f"{samples[checkpoint]:.1f} MB ({time.perf_counter() - started:.0f} s, "
                f"failures {phase.failures})",
                flush=True,
            )
        phase.wall = time.perf_counter() - started
        phase.extra["rss"] = samples
        phase.overhead.clear()  # not a latency phase
        return phase

    # -- the whole run --------------------------------------------------------------------

    async def run_target(self, kind: str) -> dict[str, Any]:
        args = self.args
        out: dict[str, Any] = {}
        print(f"\n== {kind} ==", flush=True)
        async with self.target(kind) as target:
            await self.closed_loop(target, "warm-up", 2, args.warmup, first_user=900)
            for users, per_user in args.levels:
                phase = await self.closed_loop(target, f"{users} users", users, per_user)
                out[f"c{users}"] = phase
                line = (
                    f"  {kind:8} {users:3} users: n={phase.count} overhead p50 "
                    f"{ms(percentile(phase.overhead, 50))} p99 {ms(percentile(phase.overhead, 99))}"
                )
                if phase.delivery:
                    line += (
                        f"; delivery p50 {ms(percentile(phase.delivery, 50))} "
                        f"p99 {ms(percentile(phase.delivery, 99))}"
                    )
                print(line + f"; failures {phase.failures}", flush=True)
            out["throughput"] = await self.throughput(target, args.step_seconds)
            if not args.skip_memory:
                out["memory"] = await self.memory(target, args.checkpoints, args.memory_users)
        flood_kind = "bot-flood" if kind == "bot" else kind
        async with self.target(flood_kind) as target:
            await self.closed_loop(target, "warm-up", 2, 3, first_user=900)
            out["flood"] = await self.flood(target, 100)
            flood = out["flood"]
            print(
                f"  {kind:8} 100 users, flood control on: 429s {flood.extra['429']} "
                f"{flood.extra['429_by_method']}, overhead p50 "
                f"{ms(percentile(flood.overhead, 50))} p99 {ms(percentile(flood.overhead, 99))}, "
                f"delivery p50 {ms(percentile(flood.delivery, 50))} "
                f"p99 {ms(percentile(flood.delivery, 99))}, failures {flood.failures}",
                flush=True,
            )
        return out

    async def main(self) -> dict[str, Any]:
        results: dict[str, Any] = {}
        async with self.tg.serve() as tg_root, self.cd.serve() as cd_base:
            self.tg_root, self.cd_base = tg_root, cd_base
            for kind in self.args.targets:
                results[kind] = await self.run_target(kind)
        if not self.args.skip_storage:
            print("\n== storage ==", flush=True)
            results["storage"] = await storage_benchmark(
                self.tmp, self.args.storage_cycles, concurrency=50
            )
        return results


def print_profile(path: Path, limit: int = 30) -> None:
    if not path.exists():
        print(f"(no profile written at {path})")
        return
    stats = pstats.Stats(str(path))
    print("\n-- bot profile: top by own time --")
    stats.sort_stats("tottime").print_stats(limit)
    print("-- bot profile: top by cumulative time --")
    stats.sort_stats("cumulative").print_stats(limit)


# -- report ------------------------------------------------------------------------------------


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    gib = mem_kb / 1024 / 1024
    return f"{os.cpu_count()} cores, {gib:.0f} GiB RAM, Python {platform.python_version()}"


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        return "?"


def report(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    bot = results.get("bot", {})
    base = results.get("baseline", {})
    rows: list[tuple[str, str, str, str, str]] = []

    def pct(side: dict[str, Any], key: str, q: float, attr: str = "overhead") -> float:
        phase = side.get(key)
        return percentile(getattr(phase, attr), q) if phase else math.nan

    for users, _ in args.levels:
        key = f"c{users}"
        for q, limit in ((50, 1.2), (99, 1.5)):
            b, s = pct(bot, key, q), pct(base, key, q)
            met = "—" if math.isnan(b) or math.isnan(s) else ("yes" if b <= limit * s else "NO")
            rows.append(
                (f"overhead p{q}, {users} users", ms(b), ms(s), ratio(b, s), f"≤ {limit}× ({met})")
            )
    for users, _ in args.levels:
        key = f"c{users}"
        for q in (50, 99):
            b = pct(bot, key, q, "delivery")
            met = "—" if math.isnan(b) else ("yes" if b < 0.050 else "NO")
            rows.append((f"delivery p{q}, {users} users", ms(b), "—", "—", f"< 50 ms ({met})"))
    fb, fs = bot.get("flood"), base.get("flood")
    rows.append(
        (
            "429s, 100 users, flood control on",
            str(fb.extra["429"]) if fb else "—",
            str(fs.extra["429"]) if fs else "—",
            "—",
            "0" + (f" ({'yes' if fb.extra['429'] == 0 else 'NO'})" if fb else ""),
        )
    )
    rows.append(
        (
            "overhead p99, 100 users, flood on",
            ms(percentile(fb.overhead, 99)) if fb else "—",
            ms(percentile(fs.overhead, 99)) if fs else "—",
            ratio(percentile(fb.overhead, 99), percentile(fs.overhead, 99)) if fb and fs else "—",
            "",
        )
    )
    tb, ts = bot.get("throughput"), base.get("throughput")
    sb = tb.extra["sustained"] if tb else math.nan
    ss = ts.extra["sustained"] if ts else math.nan
    rows.append(
        (
            "throughput (gen/s, p99 ≤ 100 ms)",
            f"{sb:g}",
            f"{ss:g}",
            f"{sb / ss:.2f}×" if ss and not math.isnan(ss) and not math.isnan(sb) else "—",
            "",
        )
    )
    mb, msb = bot.get("memory"), base.get("memory")
    for checkpoint in args.checkpoints:
        vb = mb.extra["rss"].get(checkpoint, math.nan) if mb else math.nan
        vs = msb.extra["rss"].get(checkpoint, math.nan) if msb else math.nan
        rows.append(
            (f"RSS after {checkpoint:,} generations", f"{vb:.1f} MB", f"{vs:.1f} MB", "—", "")
        )
    if mb and len(args.checkpoints) >= 2:
        first, last = args.checkpoints[0], args.checkpoints[-1]
        growth = mb.extra["rss"][last] - mb.extra["rss"][first]
        growth_s = msb.extra["rss"][last] - msb.extra["rss"][first] if msb else math.nan
        met = "yes" if growth < 10 else "NO"
        rows.append(
            (
                f"RSS growth {first:,} → {last:,}",
                f"{growth:+.1f} MB",
                f"{growth_s:+.1f} MB",
                "—",
                f"< 10 MB ({met})",
            )
        )
    storage = results.get("storage")
    if storage:
        for name, value in storage.items():
            rows.append((f"storage: {name}", f"{value:,.0f}/s", "—", "—", ""))

    header = ("figure", "bot", "baseline", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the bot process")
    parser.add_argument("--only", choices=("bot", "baseline"), help="run one program only")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the bot (default INFO)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    args.targets = [args.only] if args.only else ["bot", "baseline"]
    if args.quick:
        args.warmup = 5
        args.levels = [(1, 30), (10, 5), (100, 1)]
        args.step_seconds = 1.5
        args.checkpoints = (200, 1000)
        args.memory_users = 50
        args.storage_cycles = 1000
    else:
        args.warmup = 20
        args.levels = [(1, 200), (10, 40), (100, 5)]
        args.step_seconds = 4.0
        args.checkpoints = (1000, 10_000)
        args.memory_users = 100
        args.storage_cycles = 5000
    return args


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    def conv(value: Any) -> Any:
        if isinstance(value, Phase):
            return {
                "n": value.count,
                "failures": value.failures,
                "wall_s": value.wall,
                "overhead_p50_ms": percentile(value.overhead, 50) * 1000,
                "overhead_p99_ms": percentile(value.overhead, 99) * 1000,
                "delivery_p50_ms": percentile(value.delivery, 50) * 1000,
                "delivery_p99_ms": percentile(value.delivery, 99) * 1000,
                **{k: conv(v) for k, v in value.extra.items()},
            }
        if isinstance(value, dict):
            return {str(k): conv(v) for k, v in value.items()}
        if isinstance(value, list):
            return [conv(v) for v in value]
        return value

    return conv(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(Bench(args).main())
    print(
        f"\n== results ({'quick' if args.quick else 'full'} run, "
        f"{time.perf_counter() - started:.0f} s) =="
    )
    print(f"date {time.strftime('%Y-%m-%d')}, machine: {machine()}, commit {commit()}\n")
    for line in report(results, args):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(to_json(results), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
