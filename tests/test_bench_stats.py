"""The benchmark's pure statistics and verdicts (bench/stats.py, bench/report.py): no processes."""

from __future__ import annotations

import math

import pytest

from bench.report import report
from bench.stats import (
    growth_verdict,
    log_growth_bound,
    median,
    percentile,
    round_ratio,
    sustained_rate,
    verdict_at_least,
    verdict_at_most,
    verdict_below,
)

NAN = math.nan


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
    assert math.isnan(percentile([], 50))


def test_median_ignores_missing_values() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert median([NAN, 5.0, NAN]) == 5.0
    assert math.isnan(median([NAN]))


def test_round_ratio_is_the_median_of_per_round_ratios() -> None:
    # round 2 is noisy for the bot only: the per-round ratios are 2, 10, 2 → median 2
    c = round_ratio([2.0, 10.0, 4.0], [1.0, 1.0, 2.0])
    assert c.ratio == 2.0
    assert c.bot == 4.0 and c.base == 1.0
    assert c.rounds == 3


def test_round_ratio_skips_rounds_missing_on_either_side() -> None:
    c = round_ratio([2.0, NAN, 3.0], [1.0, 1.0, 1.0])
    assert c.rounds == 2
    assert c.ratio == 2.5
    assert math.isnan(round_ratio([], []).ratio)


def test_verdicts() -> None:
    assert verdict_at_most(1.5, 1.5) == "met"
    assert verdict_at_most(1.51, 1.5) == "NOT met"
    assert verdict_below(0.05, 0.05) == "NOT met"
    assert verdict_below(0.049, 0.05) == "met"
    assert verdict_at_least(0.5, 0.5) == "met"
    assert verdict_at_least(0.49, 0.5) == "NOT met"
    assert verdict_at_most(NAN, 1.5) == "—"


def test_log_growth_bound_tells_log_from_linear() -> None:
    assert log_growth_bound(1000, 10_000) == pytest.approx(2.0)
    assert growth_verdict(1.0, 1.3, 1000, 10_000) == (pytest.approx(1.3), "met")
    assert growth_verdict(1.0, 10.0, 1000, 10_000)[1] == "NOT met"  # O(n)
    assert growth_verdict(0.0, 1.0, 1000, 10_000)[1] == "—"
    with pytest.raises(ValueError):
        log_growth_bound(10_000, 1000)


def test_sustained_rate_stops_at_the_first_failing_step() -> None:
    steps = [(10, 0.01, 0), (20, 0.02, 0), (40, 0.2, 0), (80, 0.01, 0)]
    assert sustained_rate(steps, 0.1) == 20  # 80 passed only after 40 failed: not counted
    assert sustained_rate([(10, 0.01, 1)], 0.1) == 0  # a lost generation fails the step
    assert sustained_rate([(10, NAN, 0)], 0.1) == 0


def _level(p50: float, n: int = 10) -> dict:
    return {
        "n": n,
        "overhead_p50": p50,
        "overhead_p99": p50 * 2,
        "reply_p50": p50,
        "delivery_p50": 0.01,
        "cpu_s": n * 0.004,
        "api_calls": n * 3,
        "api_by_method": {"sendMessage": n, "sendPhoto": n, "editMessageText": n},
        "sql": n * 20.0,
    }


def test_report_gives_a_verdict_per_target() -> None:
    bot = {
        "levels": {1: [_level(0.003), _level(0.009), _level(0.004)]},
        "throughput": [{"sustained": 100.0}],
        "peak_rss_kb": 90 * 1024.0,
    }
    base = {
        "levels": {1: [_level(0.002), _level(0.002), _level(0.002)]},
        "throughput": [{"sustained": 400.0}],
        "peak_rss_kb": 60 * 1024.0,
    }
    for r in base["levels"][1]:
        r["cpu_s"] = r["n"] * 0.001
    queue = {
        "checkpoints": {
            "1000": {
                "submit_s": 0.001,
                "dispatch_s": 0.001,
                "positions_per_submit": 1.0,
                "flush_positions_per_run": 1.0,
                "flush_s_per_run": 1e-6,
                "worst_turn_s": 0.001,
                "rss_per_run_kb": 4.0,
            },
            "10000": {
                "submit_s": 0.0012,
                "dispatch_s": 0.01,
                "positions_per_submit": 1.0,
                "flush_positions_per_run": 1.0,
                "flush_s_per_run": 1.1e-6,
                "worst_turn_s": 0.012,
                "rss_per_run_kb": 4.0,
            },
        }
    }
    lines = report({"modes": {"webhook": {"bot": bot, "baseline": base}}, "queue": queue}, [1])
    rows = {line.split("|")[0].strip(): [c.strip() for c in line.split("|")] for line in lines}
    p50 = rows["[webhook] overhead p50, 1 user"]
    assert p50[1:4] == ["4.0 ms", "2.0 ms", "2.00×"] and p50[-1] == "NOT met"
    assert rows["[webhook] throughput, gen/s (p99 ≤ 100 ms, 1 round)"][3:] == [
        "0.25×",
        "≥ 0.5×",
        "NOT met",
    ]
    cpu = rows["[webhook] CPU per generation"]
    assert cpu[1:4] == ["4.0 ms", "1.0 ms", "4.00×"] and cpu[-1] == "NOT met"
    assert rows["[webhook] DB statements per generation"][1] == "20.0"
    assert rows["[queue] submit cost per run, 1,000 → 10,000"][-1] == "met"
    assert rows["[queue] position flush time per queued run, 1,000 → 10,000"][-1] == "met"
    assert rows["[queue] worst loop turn, N submits (queue_bench), 1,000 → 10,000"][-1] == "NOT met"
    assert any("editMessageText 1.00" in line for line in lines)


def test_profile_groups_own_time_by_package() -> None:
    from bench.report import package_of

    site = "/usr/lib/python3.11/site-packages"
    assert package_of(f"{site}/telegram/_bot.py", "send_message") == "telegram"
    assert package_of(f"{site}/aiosqlite/core.py", "_execute") == "aiosqlite"
    assert package_of("/work/repo/handlers/delivery.py", "_deliver") == "handlers"
    assert package_of("/usr/lib/python3.11/asyncio/base_events.py", "_run_once") == "asyncio"
    assert package_of("/usr/lib/python3.11/ssl.py", "wrap") == "ssl"
    assert package_of("~", "<method 'poll' of 'select.epoll' objects>") == "idle (epoll)"
    assert package_of("~", "<built-in method builtins.isinstance>") == "C builtins"
    validate = "<method 'validate_python' of 'pydantic_core._pydantic_core.SchemaValidator'>"
    assert package_of("~", validate) == "pydantic_core"


async def test_sql_counter_counts_aiosqlite_statements(tmp_path) -> None:
    import aiosqlite

    from bench.instrument import SqlCounter, install_sql_counter

    path = tmp_path / "sql.counter"
    SqlCounter(path, create=True)
    counter = install_sql_counter(str(path))
    try:
        async with aiosqlite.connect(":memory:") as conn:
            await conn.execute("CREATE TABLE t(x)")
            await conn.execute("INSERT INTO t VALUES (1)")
            await conn.execute_fetchall("SELECT x FROM t")
    finally:
        counter.restore()
    reader = SqlCounter(path)
    assert reader.read() >= 3  # plus the implicit BEGIN before the INSERT
    reader.close()
    counter.close()


def test_round_costs_come_from_the_whole_round_window() -> None:
    from collections import Counter

    from bench.harness import cost_delta
    from bench.report import rows_of

    before = {
        "generations": 5,
        "cpu_s": 1.0,
        "api_calls": 10,
        "api_by_method": Counter({"sendMessage": 5, "getUpdates": 40}),
        "sql": 100.0,
    }
    after = {
        "generations": 15,
        "cpu_s": 1.2,
        "api_calls": 40,
        "api_by_method": Counter({"sendMessage": 15, "editMessageText": 20, "getUpdates": 90}),
        "sql": 300.0,
    }
    delta = cost_delta(before, after)
    assert delta["n"] == 10
    assert delta["api_by_method"] == {"sendMessage": 10, "editMessageText": 20}  # no getUpdates
    bot = {"levels": {1: [_level(0.003)]}, "rounds": [delta]}
    base = {"levels": {1: [_level(0.002)]}, "rounds": [{**delta, "cpu_s": 0.05}]}
    rows, mixes = rows_of({"modes": {"polling": {"bot": bot, "baseline": base}}}, [1])
    cpu = next(r for r in rows if r[0] == "[polling] CPU per generation")
    assert cpu[1:4] == ("20.0 ms", "5.0 ms", "4.00×")
    assert rows[[r[0] for r in rows].index("[polling] DB statements per generation")][1] == "20.0"
    assert any("editMessageText 2.00" in m for m in mixes)
