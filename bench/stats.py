"""Statistics and verdicts of the benchmark report (pure: no I/O, unit-tested).

Every compared figure is measured in interleaved rounds (bot, baseline, bot, baseline, ...):
:func:`round_ratio` takes the per-round values of both programs and returns the median of the
per-round values and the median of the per-round ratios, so one noisy round cannot decide a
verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100), nearest-rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The median of the finite values; NaN when there are none."""
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else (finite[mid - 1] + finite[mid]) / 2


@dataclass(frozen=True, slots=True)
class Compared:
    """A figure of the bot next to the baseline's, over rounds."""

    bot: float  # median over rounds
    base: float  # median over rounds
    ratio: float  # median of the per-round ratios bot/baseline
    rounds: int  # rounds where both values exist


def round_ratio(bot: Sequence[float], base: Sequence[float]) -> Compared:
    """Pair round i of the bot with round i of the baseline (adjacent in time)."""
    pairs = [
        (b, s) for b, s in zip(bot, base, strict=False) if not (math.isnan(b) or math.isnan(s))
    ]
    ratios = [b / s for b, s in pairs if s > 0]
    return Compared(median(bot), median(base), median(ratios), len(pairs))


def verdict_at_most(value: float, limit: float) -> str:
    """``"met"`` when ``value ≤ limit``, ``"NOT met"`` when above, ``"—"`` when unknown."""
    if math.isnan(value) or math.isnan(limit):
        return "—"
    return "met" if value <= limit else "NOT met"


def verdict_below(value: float, limit: float) -> str:
    if math.isnan(value) or math.isnan(limit):
        return "—"
    return "met" if value < limit else "NOT met"


def verdict_at_least(value: float, limit: float) -> str:
    if math.isnan(value) or math.isnan(limit):
        return "—"
    return "met" if value >= limit else "NOT met"


def log_growth_bound(n_small: int, n_large: int, slack: float = 1.5) -> float:
    """The largest cost ratio (at ``n_large`` vs ``n_small``) still consistent with
    O(log n) per run: ``log(n_large)/log(n_small)`` times ``slack`` for noise. For 1k vs 10k:
    1.33 × 1.5 = 2.0; O(n) would give 10."""
    if n_small < 2 or n_large <= n_small:
        raise ValueError("need 2 ≤ n_small < n_large")
    return math.log(n_large) / math.log(n_small) * slack


def growth_verdict(
    cost_small: float, cost_large: float, n_small: int, n_large: int, slack: float = 1.5
) -> tuple[float, str]:
    """(cost ratio large/small, verdict against :func:`log_growth_bound`)."""
    if math.isnan(cost_small) or math.isnan(cost_large) or cost_small <= 0:
        return math.nan, "—"
    growth = cost_large / cost_small
    return growth, verdict_at_most(growth, log_growth_bound(n_small, n_large, slack))


def sustained_rate(steps: Sequence[tuple[float, float, int]], p99_limit: float) -> float:
    """Throughput: the highest offered rate of a ramp whose p99 overhead is ≤ ``p99_limit``
    and whose generations all completed, counting only the steps before the first failing one
    (``steps`` = (rate, p99 seconds, failures), in the order they ran). 0 when none passed."""
    best = 0.0
    for rate, p99, failures in steps:
        if failures or math.isnan(p99) or p99 > p99_limit:
            break
        best = max(best, rate)
    return best


def ms(seconds: float) -> str:
    return "—" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def ratio(bot: float, base: float) -> str:
    if math.isnan(bot) or math.isnan(base) or base == 0:
        return "—"
    return f"{bot / base:.2f}×"


def times(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}×"
