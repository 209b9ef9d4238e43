"""A tiny metrics registry rendered as Prometheus text format 0.0.4.

Counters, gauges and histograms with optional labels; gauges and counters may also be
*callbacks* read at scrape time (queue sizes, the service's counters, credits spent).
Every series is listed in docs/metrics.md. Small on purpose: a dependency on prometheus_client
would buy little for a handful of series.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LabelKey = tuple[tuple[str, str], ...]


def _key(labels: Mapping[str, str] | LabelKey | None) -> LabelKey:
    if not labels:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((str(k), str(v)) for k, v in items))


def _escape(value: str) -> str:
    """Label values escape backslash, newline and double quote."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    """HELP text escapes only backslash and newline."""
    return value.replace("\\", "\\\\").replace("\n", "\\n")


def _fmt_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _series(name: str, key: LabelKey, value: float) -> str:
    if key:
        labels = ",".join(f'{k}="{_escape(v)}"' for k, v in key)
        return f"{name}{{{labels}}} {_fmt_value(value)}"
    return f"{name} {_fmt_value(value)}"


DEFAULT_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)  # seconds


@dataclass(slots=True)
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int]
    total: float = 0.0
    count: int = 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, key: LabelKey) -> list[str]:
        out = [
            _series(f"{name}_bucket", _key((*key, ("le", _fmt_value(bound)))), n)
            for bound, n in zip(self.buckets, self.counts, strict=True)
        ]
        out.append(_series(f"{name}_bucket", _key((*key, ("le", "+Inf"))), self.count))
        out.append(_series(f"{name}_sum", key, self.total))
        out.append(_series(f"{name}_count", key, self.count))
        return out


@dataclass(slots=True)
class _Metric:
    name: str
    help: str
    kind: str  # "counter" | "gauge" | "histogram"
    values: dict[LabelKey, float] = field(default_factory=dict)
    collector: Callable[[], object] | None = None
    histograms: dict[LabelKey, _Histogram] = field(default_factory=dict)
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


class Metrics:
    """Counters (``inc``) and gauges (``set``/collector callbacks), rendered on scrape."""

    def __init__(self, prefix: str = "bot") -> None:
        self._prefix = prefix
        self._metrics: dict[str, _Metric] = {}

    def _name(self, name: str) -> str:
        return f"{self._prefix}_{name}" if self._prefix else name

    def _get(self, name: str, kind: str, help_: str) -> _Metric:
        full = self._name(name)
        metric = self._metrics.get(full)
        if metric is None:
            metric = self._metrics[full] = _Metric(full, help_ or name, kind)
        elif metric.kind != kind:
            raise ValueError(f"metric {full} is a {metric.kind}, not a {kind}")
        return metric

    def counter(self, name: str, help_: str = "") -> None:
        """Declare a counter so it renders (as 0) before its first increment."""
        metric = self._get(name, "counter", help_)
        metric.values.setdefault((), 0.0)

    def inc(
        self,
        name: str,
        amount: float = 1.0,
        labels: Mapping[str, str] | None = None,
        help_: str = "",
    ) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        metric = self._get(name, "counter", help_)
        key = _key(labels)
        metric.values[key] = metric.values.get(key, 0.0) + amount

    def set(
        self, name: str, value: float, labels: Mapping[str, str] | None = None, help_: str = ""
    ) -> None:
        self._get(name, "gauge", help_).values[_key(labels)] = float(value)

    def gauge_callback(self, name: str, collect: Callable[[], object], help_: str = "") -> None:
        """A gauge read at scrape time. ``collect`` returns a number or ``{labels: value}``;
        it may be a coroutine function (e.g. a storage query)."""
        self._get(name, "gauge", help_).collector = collect

    def counter_callback(self, name: str, collect: Callable[[], object], help_: str = "") -> None:
        """A counter kept elsewhere (e.g. ``generation/counters.py``), read at scrape time."""
        self._get(name, "counter", help_).collector = collect

    def histogram(
        self, name: str, help_: str = "", buckets: tuple[float, ...] = DEFAULT_BUCKETS
    ) -> None:
        """Declare a histogram (its buckets are fixed by the first declaration)."""
        metric = self._get(name, "histogram", help_)
        if not metric.histograms:
            metric.buckets = tuple(sorted(buckets))

    def observe(
        self, name: str, value: float, labels: Mapping[str, str] | None = None, help_: str = ""
    ) -> None:
        metric = self._get(name, "histogram", help_)
        key = _key(labels)
        hist = metric.histograms.get(key)
        if hist is None:
            hist = metric.histograms[key] = _Histogram(metric.buckets, [0] * len(metric.buckets))
        hist.observe(value)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        metric = self._metrics.get(self._name(name))
        return 0.0 if metric is None else metric.values.get(_key(labels), 0.0)

    async def _collect(self, metric: _Metric) -> dict[LabelKey, float]:
        if metric.collector is None:
            return dict(metric.values)
        try:
            result = metric.collector()
            if inspect.isawaitable(result):
                result = await result
        except Exception:  # a broken collector must not break the scrape
            log.exception("metrics collector %s failed", metric.name)
            return dict(metric.values)
        if isinstance(result, Mapping):
            return {_key(k): float(v) for k, v in result.items()}
        return {(): float(result)}  # type: ignore[arg-type]

    async def render(self) -> str:
        """The whole registry as Prometheus text format 0.0.4."""
        lines: list[str] = []
        for name in sorted(self._metrics):
            metric = self._metrics[name]
            lines.append(f"# HELP {name} {_escape_help(metric.help)}")
            lines.append(f"# TYPE {name} {metric.kind}")
            if metric.kind == "histogram":
                for key, hist in sorted(metric.histograms.items()):
                    lines.extend(hist.lines(name, key))
                continue
            for key, value in sorted((await self._collect(metric)).items()):
                lines.append(_series(name, key, value))
        return "\n".join(lines) + "\n"


def default_metrics() -> Metrics:
    """The registry with the bot's standard series declared."""
    metrics = Metrics()
    metrics.counter("updates_total", "Telegram updates received")
    metrics.counter("errors_total", "Errors raised while handling updates")
    metrics.counter("comfydeploy_webhooks_total", "ComfyDeploy webhook calls received")
    return metrics


def install_generation_metrics(metrics: Metrics, service: Any) -> None:
    """Run figures from the service's in-process counters (``generation/counters.py``) and
    live gauges — not a ``COUNT ... GROUP BY`` over the runs table under the database lock at
    every scrape."""
    from generation.counters import COUNTERS

    def series(name: str) -> Callable[[], dict[Any, float]]:
        return lambda: {k: float(v) for k, v in service.counters.snapshot()[name].items()}

    for name, help_ in COUNTERS.items():
        metrics.counter_callback(name, series(name), help_)

    def gauge(name: str) -> Callable[[], float]:
        return lambda: float(service.metrics_snapshot()["gauges"][name])

    for name in ("generation_queued", "generation_in_flight", "generation_tracked"):
        metrics.gauge_callback(name, gauge(name), name.replace("_", " "))
