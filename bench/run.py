"""One command benchmark of issue 16: the real bot and a bare PTB baseline, each a separate
process, against loopback doubles of the Telegram Bot API and ComfyDeploy, in webhook mode and
in polling mode.

    python -m bench.run            # full run
    python -m bench.run --quick    # smoke run (< ~3 min on 2 cores)
    python -m bench.run --profile  # also cProfile the bot processes and print their hot spots

Per mode, the bot and the baseline run side by side and are measured in interleaved rounds
(bot, baseline, bot, baseline, ...); every compared figure is the median of the per-round
values, every ratio the median of the per-round ratios. Figures (bench/README.md):

1. overhead: update received (POSTed / queued for getUpdates) → create-run at the ComfyDeploy
   double, p50 and p99 at 1, 10 and 100 closed-loop users;
2. first reply: update received → the first message to that chat accepted by the Telegram
   double (the bot's progress message, the baseline's answer), p50;
3. throughput: open-loop ramp; the highest offered rate with p99 overhead ≤ 100 ms and every
   generation completed;
4. delivery (bot): success visible to the bot (webhook posted / GET answered) → the result
   photo accepted by Telegram, p50 at 10 and 100 users;
5. cost per generation over the closed loops: process CPU (``/proc/<pid>/stat``), Bot API calls
   (counted by the double; ``getUpdates`` excluded), SQLite statements (bench/instrument.py),
   peak RSS (VmHWM);
6. queue scale (bench/queue_scale.py): 1,000 and 10,000 queued runs;
plus, in full runs, RSS growth over 1,000 → 10,000 generations and the 429s of 100 users with
the double's flood control on, and the storage figure (bench/storage_bench.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, Load, Phase, Processes, Target, cost_delta
from bench.probes import INSTANT, BenchComfyDeploy, Probes
from bench.report import markdown, print_profile, report
from bench.storage_bench import storage_benchmark

QUICK_RATES = (10, 20, 40, 80, 130, 200, 300, 400)
FULL_RATES = (10, 20, 40, 60, 80, 100, 130, 160, 200, 250, 300, 400, 500)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.probes = Probes()
        self.cd = BenchComfyDeploy(self.probes)
        self.deployment = self.cd.add_deployment(
            inputs=("input_prompt", "input_negative", "input_seed", "input_width", "input_height"),
            timeline=INSTANT,
        )
        self.load = Load(self.probes, args.quiesce)
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-"))
        self.procs: Processes | None = None

    def _print_level(self, target: Target, phase: Phase) -> None:
        s = phase.summary()
        line = (
            f"    {target.label:16} {phase.name:>9}: n={phase.count} overhead p50 "
            f"{s['overhead_p50'] * 1e3:.1f} p99 {s['overhead_p99'] * 1e3:.1f} ms, reply p50 "
            f"{s['reply_p50'] * 1e3:.1f} ms"
        )
        if phase.delivery:
            line += f", delivery p50 {s['delivery_p50'] * 1e3:.1f} ms"
        cpu = phase.cpu_s / max(phase.count, 1) * 1e3
        line += f", {cpu:.1f} CPU ms/gen, failures {phase.failures}"
        if phase.failure_reasons:
            line += f" ({dict(phase.failure_reasons)})"
        print(line, flush=True)

    async def rounds(self, targets: list[Target], out: dict[str, Any]) -> None:
        args = self.args
        for r in range(args.rounds):
            print(f"  round {r + 1}/{args.rounds}", flush=True)
            for target in targets:
                before = target.costs()
                for users, per_user in args.levels:
                    name = "1 user" if users == 1 else f"{users} users"
                    phase = await self.load.closed_loop(target, name, users, per_user)
                    self._print_level(target, phase)
                    out[target.kind]["levels"][users].append(phase.summary())
                # the round's trailing work (throttled final edits, settles) is its cost, and
                # must not run while the other program is measured
                await self.load.quiesce(target, args.round_quiesce)
                out[target.kind]["rounds"].append(cost_delta(before, target.costs()))
        for r in range(args.throughput_rounds):
            print(f"  throughput round {r + 1}/{args.throughput_rounds}", flush=True)
            for target in targets:
                result = await self.load.throughput(target, args.rates, args.step_seconds)
                out[target.kind]["throughput"].append(result)

    async def run_mode(self, mode: str) -> dict[str, Any]:
        assert self.procs is not None
        print(f"\n== {mode} mode ==", flush=True)
        out: dict[str, Any] = {
            kind: {"levels": {u: [] for u, _ in self.args.levels}, "rounds": [], "throughput": []}
            for kind in ("bot", "baseline")
        }
        profiled: Target | None = None
        async with (
            self.procs.target("bot", mode) as bot,
            self.procs.target("baseline", mode) as base,
        ):
            targets = [bot, base]
            for target in targets:
                await self.load.closed_loop(target, "warm-up", 2, self.args.warmup, 900)
            await self.rounds(targets, out)
            for target in targets:
                out[target.kind]["peak_rss_kb"] = target.peak_rss_kb()
                out[target.kind]["generations"] = target.generations
            profiled = bot
        if self.args.profile and profiled is not None:
            print_profile(self.tmp / f"bot-{mode}.prof", profiled.generations)
        return out

    async def memory(self) -> dict[str, Any]:
        """VmRSS after each checkpoint of completed generations (webhook mode)."""
        assert self.procs is not None
        out: dict[str, Any] = {"checkpoints": list(self.args.checkpoints)}
        for kind in ("bot", "baseline"):
            async with self.procs.target(kind, "webhook") as target:
                samples: dict[str, float] = {}
                done = 0
                phase = Phase("memory")
                for checkpoint in self.args.checkpoints:
                    while done < checkpoint:
                        batch = min(self.args.memory_users, checkpoint - done)
                        users = [target.user(40_000 + i) for i in range(batch)]
                        await asyncio.gather(*(self.load.one(target, u, phase) for u in users))
                        done += batch
                        if done % 1000 == 0:
                            target.tg.trim()
                            self.cd.trim()
                    await self.load.quiesce(target, 2.0)
                    rss = samples[str(checkpoint)] = target.rss_kb() / 1024
                    print(
                        f"    {kind} after {checkpoint} generations: {rss:.1f} MB"
                        f" (failures {phase.failures}"
                        f"{': ' + str(dict(phase.failure_reasons)) if phase.failures else ''})",
                        flush=True,
                    )
                out[kind] = samples
        return out

    async def flood(self) -> dict[str, Any]:
        """100 users at once with the double's flood control on: 429 answers per program."""
        assert self.procs is not None
        out: dict[str, Any] = {}
        for kind, label in (("bot-flood", "bot"), ("baseline", "baseline")):
            async with self.procs.target(kind, "webhook") as target:
                await self.load.closed_loop(target, "warm-up", 2, 3, first_user=900)
                target.tg.set_flood_control(True)
                before = target.tg.status_counts[429]
                phase = await self.load.closed_loop(target, "flood", 100, 1, first_user=30_000)
                await self.load.quiesce(target, 3.0)
                out[label] = target.tg.status_counts[429] - before
                out[f"{label}_failures"] = phase.failures
                print(f"    {kind}: 429s {out[label]}, failures {phase.failures}", flush=True)
        return out

    async def queue_scale(self) -> dict[str, Any]:
        print("\n== queue scale ==", flush=True)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.queue_scale",
            *map(str, self.args.queue_sizes),
            cwd=str(ROOT),
            env=env,
            stdout=subprocess.PIPE,
        )
        stdout, _ = await proc.communicate()
        lines = stdout.decode().rstrip().splitlines()
        for line in lines[:-1]:
            print(line, flush=True)
        return json.loads(lines[-1]) if proc.returncode == 0 and lines else {}

    async def main(self) -> dict[str, Any]:
        results: dict[str, Any] = {"modes": {}}
        async with self.cd.serve() as cd_base:
            self.procs = Processes(self.args, self.probes, self.cd, cd_base, self.tmp)
            self.procs.deployment = self.deployment
            for mode in self.args.modes:
                results["modes"][mode] = await self.run_mode(mode)
            if self.args.memory:
                print("\n== memory ==", flush=True)
                results["memory"] = await self.memory()
            if self.args.flood:
                print("\n== flood control ==", flush=True)
                results["flood"] = await self.flood()
        results["queue"] = await self.queue_scale()
        if not self.args.skip_storage:
            print("\n== storage ==", flush=True)
            results["storage"] = await storage_benchmark(
                self.tmp, self.args.storage_cycles, concurrency=50
            )
        return results


def machine() -> str:
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    load = ""
    with contextlib.suppress(OSError):
        load = ", load " + " ".join(Path("/proc/loadavg").read_text().split()[:3])
    gib = mem_kb / 1024 / 1024
    return f"{os.cpu_count()} cores, {gib:.0f} GiB RAM, Python {platform.python_version()}{load}"


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--profile", action="store_true", help="cProfile the bot processes")
    parser.add_argument("--mode", choices=("webhook", "polling"), help="one mode only")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--run-poll-interval", type=float, default=0.2, help="RUN_POLL_INTERVAL, polling mode"
    )
    parser.add_argument("--skip-storage", action="store_true")
    parser.add_argument(
        "--extras", action="store_true", help="--quick too: RSS growth and flood-control runs"
    )
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the bot (default INFO)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument("--markdown", type=Path, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    args.modes = [args.mode] if args.mode else ["webhook", "polling"]
    args.queue_sizes = (1000, 10_000)
    if args.quick:
        args.rounds = args.rounds or 3
        args.warmup = 5
        args.levels = [(1, 15), (10, 3), (100, 1)]
        args.throughput_rounds = 1
        args.rates = QUICK_RATES
        args.step_seconds = 1.0
        args.quiesce = 0.4
        args.round_quiesce = 2.0  # > the progress renderer's 1.5 s edit interval
        args.memory = args.flood = args.extras
        args.checkpoints = (200, 1000)
        args.memory_users = 50
        args.storage_cycles = 1000
    else:
        args.rounds = args.rounds or 3
        args.warmup = 20
        args.levels = [(1, 100), (10, 20), (100, 3)]
        args.throughput_rounds = 3
        args.rates = FULL_RATES
        args.step_seconds = 3.0
        args.quiesce = 1.0
        args.round_quiesce = 3.0
        args.memory = args.flood = True
        args.checkpoints = (1000, 10_000)
        args.memory_users = 100
        args.storage_cycles = 5000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(Bench(args).main())
    if args.json:  # first: the raw figures survive a report error
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(
        f"\n== results ({'quick' if args.quick else 'full'} run, {args.rounds} rounds, "
        f"{time.perf_counter() - started:.0f} s) =="
    )
    when = (
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {machine()}, commit {commit()}, "
        f"{'--quick' if args.quick else 'full'}, {args.rounds} rounds"
    )
    print(f"{when}\n")
    levels = [u for u, _ in args.levels]
    for line in report(results, levels):
        print(line)
    if args.markdown:
        args.markdown.write_text("\n".join(markdown(results, levels, when)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
