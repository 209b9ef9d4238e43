"""Periodic upkeep of runs and holds (issue 11, point 10).

* **Hold reconciliation.** A run becomes terminal and its hold is resolved in two writes; when
  the second one fails (``release_hold`` raised, the process died in between) the credits
  stayed held until the next restart. :meth:`Maintenance.reconcile_holds` resolves the open
  hold of every terminal run: settled when the result was delivered, released otherwise. A
  success still waiting for delivery is left to delivery.
* **Pruning.** Terminal runs with nothing left to do are deleted ``retention_days`` after they
  finished (``RUN_RETENTION_DAYS``); the ledger is kept forever.

Both are optional capabilities of the run store (SQLite storage has them; a store without them
is simply not maintained). The service runs :meth:`Maintenance.run_once` on a timer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from generation.counters import GenerationCounters
from generation.models import DeliveryState, RunRecord, RunStatus
from generation.ports import BalanceStore, RunStore

log = logging.getLogger(__name__)

DAY = 86_400.0


class Maintenance:
    def __init__(
        self,
        runs: RunStore,
        balances: BalanceStore,
        *,
        retention_days: float = 90.0,
        clock: Callable[[], float] = time.time,
        counters: GenerationCounters | None = None,
    ) -> None:
        self._runs = runs
        self._balances = balances
        self.retention_days = retention_days
        self._clock = clock
        self._counters = counters or GenerationCounters()

    async def reconcile_holds(self) -> int:
        """Resolve the open holds of terminal runs; returns how many were resolved."""
        lister = getattr(self._runs, "list_terminal_runs_with_open_holds", None)
        if lister is None:
            return 0
        resolved = 0
        runs: list[RunRecord] = await lister()
        for run in runs:
            try:
                if run.status is RunStatus.SUCCESS:
                    if run.delivery_state is DeliveryState.PENDING:
                        continue  # delivery still owns it
                    if run.delivery_state is DeliveryState.DELIVERED:
                        done = await self._balances.settle_hold(run.id)
                    else:
                        done = await self._balances.release_hold(run.id)
                else:
                    done = await self._balances.release_hold(run.id)
            except Exception:
                log.exception("run %s: reconciling its hold failed", run.id)
                continue
            if done:
                resolved += 1
                self._counters.inc("generation_holds_reconciled_total")
                log.info("run %s: open hold of a %s run resolved", run.id, run.status.value)
        return resolved

    async def prune(self) -> int:
        """Delete runs finished more than ``retention_days`` ago (nothing to do left)."""
        pruner = getattr(self._runs, "prune_runs", None)
        if pruner is None or self.retention_days <= 0:
            return 0
        cutoff = self._clock() - self.retention_days * DAY
        total = 0
        for _ in range(100):  # bounded: at most 100 batches per tick
            removed = int(await pruner(cutoff))
            total += removed
            if removed == 0:
                break
        if total:
            self._counters.inc("generation_runs_pruned_total", total)
            log.info("pruned %d runs older than %g days", total, self.retention_days)
        return total

    async def run_once(self) -> tuple[int, int]:
        """One maintenance pass: (holds resolved, runs pruned)."""
        return await self.reconcile_holds(), await self.prune()
