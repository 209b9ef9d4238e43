"""In-process counters of the generation module, for ``/metrics`` (issue 11, point 10).

``/metrics`` used to count runs with ``COUNT … GROUP BY`` over the whole runs table under the
database lock on every scrape. These counters are plain integers bumped where things happen
(the service and the tracker), so a scrape costs a dictionary copy. They start at zero with the
process, as Prometheus counters do (``rate()`` handles resets).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

LabelKey = tuple[tuple[str, str], ...]

# name → help text; every counter the generation module bumps.
COUNTERS: dict[str, str] = {
    "generation_runs_created_total": "Generation requests accepted (queued)",
    "generation_runs_refused_total": "Generation requests refused before queueing, by code",
    "generation_runs_finished_total": "Runs that reached a terminal state, by status and code",
    "generation_runs_delivered_total": "Successful runs delivered to the user (charged)",
    "generation_creates_uncertain_total": "Create calls whose outcome stayed uncertain",
    "generation_orphans_adopted_total": "Backend runs adopted after their create answer was lost",
    "generation_orphans_cancelled_total": "Backend runs cancelled because no run used them",
    "generation_webhooks_total": "ComfyDeploy webhooks processed, by result",
    "generation_holds_reconciled_total": "Holds of terminal runs resolved by reconciliation",
    "generation_runs_pruned_total": "Old terminal runs deleted after the retention period",
}


def _key(labels: Mapping[str, object]) -> LabelKey:
    return tuple(sorted((str(k), str(v)) for k, v in labels.items()))


class GenerationCounters:
    """Monotonic counters with labels. Not thread-safe: bumped on the event loop only."""

    def __init__(self) -> None:
        self._values: dict[str, Counter[LabelKey]] = {name: Counter() for name in COUNTERS}

    def inc(self, name: str, amount: int = 1, **labels: object) -> None:
        if name not in self._values:
            raise KeyError(f"unknown counter {name!r}")
        self._values[name][_key(labels)] += amount

    def value(self, name: str, **labels: object) -> int:
        return self._values[name][_key(labels)]

    def total(self, name: str) -> int:
        return sum(self._values[name].values())

    def snapshot(self) -> dict[str, dict[LabelKey, int]]:
        """A copy: ``{name: {labels: value}}`` (every known counter, possibly empty)."""
        return {name: dict(values) for name, values in self._values.items()}
