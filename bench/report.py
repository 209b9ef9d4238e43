"""The results table of ``bench/run.py``: every figure of issue 16 with the baseline's, the
ratio (median of the per-round ratios) and a verdict per target; plus the profile printout."""

from __future__ import annotations

import math
import pstats
from collections import Counter
from pathlib import Path
from typing import Any

from bench.stats import (
    growth_verdict,
    median,
    ms,
    round_ratio,
    times,
    verdict_at_least,
    verdict_at_most,
    verdict_below,
)

Row = tuple[str, str, str, str, str, str]
HEADER: Row = ("figure", "bot", "baseline", "ratio", "target", "verdict")
LATENCY_LIMIT = 1.5  # overhead and first reply: ≤ 1.5× the baseline
DELIVERY_LIMITS = {10: 0.050, 100: 0.250}  # delivery p50 (bot only), seconds
THROUGHPUT_LIMIT = 0.5  # ≥ 0.5× the baseline's sustained rate
CPU_LIMIT = 2.0  # CPU per generation ≤ 2× the baseline's


def _users(n: int) -> str:
    return "1 user" if n == 1 else f"{n} users"


def _per_round(side: dict[str, Any], users: int, key: str) -> list[float]:
    return [r[key] for r in side.get("levels", {}).get(users, [])]


def _rounds_cost(side: dict[str, Any], key: str) -> list[float]:
    """Per round: the cost ``key`` per generation over the round's closed loops (the whole
    round's window when measured, else the sum of its levels' windows)."""
    if side.get("rounds"):
        return [r[key] / r["n"] if r["n"] else math.nan for r in side["rounds"]]
    levels = side.get("levels", {})
    n_rounds = max((len(v) for v in levels.values()), default=0)
    out: list[float] = []
    for i in range(n_rounds):
        rounds = [v[i] for v in levels.values() if i < len(v)]
        n = sum(r["n"] for r in rounds)
        total = sum(r[key] for r in rounds)
        out.append(total / n if n else math.nan)
    return out


def _method_mix(side: dict[str, Any]) -> str:
    total: Counter[str] = Counter()
    n = 0
    windows = side.get("rounds") or [r for v in side.get("levels", {}).values() for r in v]
    for r in windows:
        total.update(r["api_by_method"])
        n += r["n"]
    if not n:
        return ""
    return ", ".join(f"{m} {c / n:.2f}" for m, c in total.most_common())


def _latency_rows(mode: str, bot: dict[str, Any], base: dict[str, Any], levels: list) -> list[Row]:
    rows: list[Row] = []
    for users in levels:
        for key, label in (("overhead_p50", "overhead p50"), ("overhead_p99", "overhead p99")):
            c = round_ratio(_per_round(bot, users, key), _per_round(base, users, key))
            rows.append(
                (
                    f"[{mode}] {label}, {_users(users)}",
                    ms(c.bot),
                    ms(c.base),
                    times(c.ratio),
                    f"≤ {LATENCY_LIMIT}×",
                    verdict_at_most(c.ratio, LATENCY_LIMIT),
                )
            )
    for users in levels:
        c = round_ratio(_per_round(bot, users, "reply_p50"), _per_round(base, users, "reply_p50"))
        rows.append(
            (
                f"[{mode}] first reply p50, {_users(users)}",
                ms(c.bot),
                ms(c.base),
                times(c.ratio),
                f"≤ {LATENCY_LIMIT}×",
                verdict_at_most(c.ratio, LATENCY_LIMIT),
            )
        )
    for users, limit in DELIVERY_LIMITS.items():
        if users not in levels:
            continue
        value = median(_per_round(bot, users, "delivery_p50"))
        rows.append(
            (
                f"[{mode}] delivery p50, {_users(users)}",
                ms(value),
                "—",
                "—",
                f"< {limit * 1000:.0f} ms",
                verdict_below(value, limit),
            )
        )
    return rows


def _cost_rows(mode: str, bot: dict[str, Any], base: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    tb = [t["sustained"] for t in bot.get("throughput", [])]
    ts = [t["sustained"] for t in base.get("throughput", [])]
    c = round_ratio(tb, ts)
    rows.append(
        (
            f"[{mode}] throughput, gen/s (p99 ≤ 100 ms, {c.rounds} round{'s' * (c.rounds != 1)})",
            f"{c.bot:g}",
            f"{c.base:g}",
            times(c.ratio),
            f"≥ {THROUGHPUT_LIMIT}×",
            verdict_at_least(c.ratio, THROUGHPUT_LIMIT),
        )
    )
    c = round_ratio(_rounds_cost(bot, "cpu_s"), _rounds_cost(base, "cpu_s"))
    rows.append(
        (
            f"[{mode}] CPU per generation",
            ms(c.bot),
            ms(c.base),
            times(c.ratio),
            f"≤ {CPU_LIMIT}×",
            verdict_at_most(c.ratio, CPU_LIMIT),
        )
    )
    c = round_ratio(_rounds_cost(bot, "api_calls"), _rounds_cost(base, "api_calls"))
    rows.append(
        (
            f"[{mode}] Bot API calls per generation",
            f"{c.bot:.2f}",
            f"{c.base:.2f}",
            times(c.ratio),
            "report",
            "",
        )
    )
    sql = median(_rounds_cost(bot, "sql"))
    rows.append((f"[{mode}] DB statements per generation", f"{sql:.1f}", "0", "—", "report", ""))
    pb, ps = bot.get("peak_rss_kb", math.nan), base.get("peak_rss_kb", math.nan)
    rows.append(
        (
            f"[{mode}] peak RSS (VmHWM)",
            f"{pb / 1024:.1f} MB",
            f"{ps / 1024:.1f} MB",
            times(pb / ps if ps else math.nan),
            "report",
            "",
        )
    )
    return rows


def _num(value: float) -> str:
    return f"{value:.2f}"


def _us(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1e6:.2f} µs"


def _queue_rows(queue: dict[str, Any]) -> list[Row]:
    points = sorted((int(n), v) for n, v in queue.get("checkpoints", {}).items())
    if len(points) < 2:
        return []
    (n1, a), (n2, b) = points[0], points[-1]
    rows: list[Row] = []
    for key, label, fmt in (
        ("submit_s", "submit cost per run", lambda v: ms(v)),
        ("dispatch_s", "dispatch (take the head)", _us),
        ("positions_per_submit", "position updates per submit", lambda v: f"{v:.1f}"),
        ("flush_positions_per_run", "position updates per queued run, a flush", _num),
        ("flush_s_per_run", "position flush time per queued run", _us),
        ("worst_turn_s", "worst loop turn, N submits (queue_bench)", ms),
        ("rss_per_run_kb", "memory per queued run", lambda v: f"{v:.2f} KiB"),
    ):
        if key not in a or key not in b:
            continue
        growth, verdict = growth_verdict(a[key], b[key], n1, n2)
        rows.append(
            (
                f"[queue] {label}, {n1:,} → {n2:,}",
                f"{fmt(a[key])} → {fmt(b[key])}",
                "—",
                times(growth),
                "≤ O(log n)",
                verdict,
            )
        )
    return rows


def _extra_rows(results: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    flood = results.get("flood")
    if flood:
        rows.append(
            (
                "[webhook] 429s, 100 users, flood control on",
                str(flood["bot"]),
                str(flood["baseline"]),
                "—",
                "0",
                "met" if flood["bot"] == 0 else "NOT met",
            )
        )
    memory = results.get("memory")
    if memory:
        first, last = memory["checkpoints"][0], memory["checkpoints"][-1]
        growth = memory["bot"][str(last)] - memory["bot"][str(first)]
        base_growth = memory["baseline"][str(last)] - memory["baseline"][str(first)]
        rows.append(
            (
                f"[webhook] RSS growth {first:,} → {last:,} generations",
                f"{growth:+.1f} MB",
                f"{base_growth:+.1f} MB",
                "—",
                "< 10 MB",
                verdict_below(growth, 10.0),
            )
        )
    for name, value in (results.get("storage") or {}).items():
        rows.append((f"storage: {name}", f"{value:,.0f}/s", "—", "—", "", ""))
    return rows


def rows_of(results: dict[str, Any], levels: list[int]) -> tuple[list[Row], list[str]]:
    """The table rows and the Bot API method mixes printed under it."""
    rows: list[Row] = []
    mixes: list[str] = []
    for mode, sides in results.get("modes", {}).items():
        bot, base = sides.get("bot", {}), sides.get("baseline", {})
        rows += _latency_rows(mode, bot, base, levels)
        rows += _cost_rows(mode, bot, base)
        for kind, side in (("bot", bot), ("baseline", base)):
            mix = _method_mix(side)
            if mix:
                mixes.append(f"  [{mode}] {kind} Bot API calls per generation: {mix}")
    rows += _queue_rows(results.get("queue") or {})
    rows += _extra_rows(results)
    return rows, mixes


def report(results: dict[str, Any], levels: list[int]) -> list[str]:
    """The plain-text table (and the Bot API mixes) that ``bench/run.py`` prints."""
    rows, mixes = rows_of(results, levels)
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return lines + (["", *mixes] if mixes else [])


def markdown(results: dict[str, Any], levels: list[int], when: str) -> list[str]:
    """The same table as Markdown rows for bench/README.md; ``when`` fills the first cell."""
    rows, mixes = rows_of(results, levels)
    lines = ["| " + " | ".join(("run", *HEADER)) + " |", "|---" * (len(HEADER) + 1) + "|"]
    for i, row in enumerate(rows):
        lines.append("| " + " | ".join((when if i == 0 else "", *row)) + " |")
    return lines + [""] + [f"- {m.strip()}" for m in mixes]


_OURS = ("/bot/", "/handlers/", "/generation/", "/storage/")
_PROJECT = ("bot", "handlers", "generation", "storage", "bench", "tests")


def package_of(file: str, func: str) -> str:
    """The package a profiled function belongs to: ``"telegram"``, ``"httpcore"``,
    ``"asyncio"`` (stdlib modules by their top name), ``"handlers"`` (ours), ``"idle (epoll)"``
    for the loop's wait, ``"C builtins"`` for the rest of ``~``."""
    if file == "~":
        if "epoll" in func or "select" in func:
            return "idle (epoll)"
        return "pydantic_core" if "pydantic_core" in func else "C builtins"
    parts = file.replace("\\", "/").split("/")
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].split(".")[0]
    for name in _PROJECT:
        if name in parts[:-1]:
            return name
    stem = parts[-2] if len(parts) > 1 and not parts[-2].startswith("python3") else parts[-1]
    return stem.removesuffix(".py")


# Issue 16's "likely places": (label, file suffix, function) → cumulative time of the function;
# (label, None, package) → own time summed over the package (bench/README.md, profile).
LIKELY: tuple[tuple[str, str | None, str], ...] = (
    ("user lookup", "handlers/context.py", "caller"),
    ("duplicate check", "handlers/submit.py", "_already_started"),
    ("per-chat processor (with the handler)", "bot/processor.py", "do_process_update"),
    ("the /make handler", "handlers/make.py", "make_command"),
    ("the /make handler", "handlers/prompt_commands.py", "command"),
    (
        "webhook of a run not yet known by its backend id",
        "generation/tracker.py",
        "foreign_webhook",
    ),
    ("success confirmed by GET", "generation/tracker.py", "confirm"),
    ("progress message send", "handlers/submit.py", "show_progress_message"),
    ("worker: dispatch to create-run", "generation/service.py", "dispatch"),
    ("photo fitting (to_thread hop)", "handlers/telegram_io.py", "prepare_photo_async"),
    ("thread hand-offs: aiosqlite statements, to_thread", "~", "put_nowait' of '_queue.Simple"),
    ("storage/ code (own)", None, "storage"),
    ("aiosqlite (own, main thread)", None, "aiosqlite"),
    ("pydantic (own)", None, "pydantic"),
    ("pydantic_core (own)", None, "pydantic_core"),
    ("json (own)", None, "json"),
    ("PTB objects, telegram (own)", None, "telegram"),
    ("HTTP client stack (own)", None, "httpx+httpcore+anyio+h11+sniffio"),
)


def _likely(raw: dict[Any, Any], by_package: Counter[str], per: int) -> None:
    print("   ms/gen    calls/gen  issue 16's likely places (cum time; '(own)': package own time)")
    for label, suffix, name in LIKELY:
        if suffix is None:
            own = sum(by_package.get(part, 0.0) for part in name.split("+"))
            print(f"{own * 1e3 / per:9.3f} {'':12}  {label} ({name})")
            continue
        if suffix == "~":  # a C function, matched by part of its name
            hits = [v for k, v in raw.items() if k[0] == "~" and name in k[2]]
        else:
            hits = [v for k, v in raw.items() if k[0].endswith(suffix) and k[2] == name]
        if not hits:
            continue  # not in this version of the code
        ct = sum(v[3] for v in hits)
        nc = sum(v[1] for v in hits)
        print(f"{ct * 1e3 / per:9.3f} {nc / per:12.1f}  {label} ({suffix}:{name})")


def _short(file: str) -> str:
    return file[file.rfind("/", 0, max(file.rfind("/"), 0)) + 1 :]


def print_profile(path: Path, generations: int, limit: int = 25) -> None:
    """The top of a cProfile of the bot's main thread (the event loop): project functions by
    cumulative time, own time by package, and everything by own time, in milliseconds per
    generation (the process's completed /make). Coroutines count only while they run, not
    while suspended; work on other threads (aiosqlite, ``to_thread``) is not in it."""
    if not path.exists():
        print(f"(no profile written at {path})")
        return
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    per = max(generations, 1)
    print(f"\n-- bot profile {path.name}: {generations} generations --")
    print(" cum ms/gen  own ms/gen    calls/gen  function (project code, by cumulative time)")
    ours = [(k, v) for k, v in raw.items() if any(p in k[0] for p in _OURS)]
    for (file, _line, func), (_cc, nc, tt, ct, _callers) in sorted(
        ours, key=lambda kv: kv[1][3], reverse=True
    )[:limit]:
        print(
            f"{ct * 1e3 / per:11.3f} {tt * 1e3 / per:11.3f} {nc / per:12.1f}  {_short(file)}:{func}"
        )
    by_package: Counter[str] = Counter()
    for (file, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        by_package[package_of(file, func)] += tt
    print(" own ms/gen  package (own time summed)")
    for name, tt in by_package.most_common(15):
        print(f"{tt * 1e3 / per:11.3f}  {name}")
    _likely(raw, by_package, per)
    print(" own ms/gen  cum ms/gen    calls/gen  function (all code, by own time)")
    for (file, _line, func), (_cc, nc, tt, ct, _callers) in sorted(
        raw.items(), key=lambda kv: kv[1][2], reverse=True
    )[:limit]:
        print(
            f"{tt * 1e3 / per:11.3f} {ct * 1e3 / per:11.3f} {nc / per:12.1f}  {_short(file)}:{func}"
        )
