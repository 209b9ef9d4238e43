"""In-memory implementations of the four storage ports (RunStore, BalanceStore,
DeploymentStore, LoraStore), strict enough for unit tests of the generation module.

One :class:`MemoryStore` object implements all four, like the real storage; a "restart" is a
new service on the same store. Balances follow the port contract: available = credits minus
open holds; holds settle or release exactly once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from generation.errors import InsufficientBalanceError
from generation.models import (
    RUN_UPDATABLE_FIELDS,
    ChargeState,
    DeliveryState,
    DeploymentConfig,
    DeploymentRole,
    LoraEntry,
    RunRecord,
)


class MemoryStore:
    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.credits: dict[int, int] = {}
        self.holds: dict[str, tuple[int, int]] = {}  # run id → (user id, amount), open only
        self.hold_outcomes: dict[str, ChargeState] = {}  # run id → SETTLED / RELEASED
        self.deployments: dict[str, DeploymentConfig] = {}
        self.loras: list[LoraEntry] = []
        self.update_calls: list[tuple[str, dict[str, Any]]] = []

    # -- setup helpers --------------------------------------------------------------------------

    def add_deployment(
        self,
        deployment_id: str,
        type_: str = "MAKE",
        *,
        role: DeploymentRole = DeploymentRole.DEFAULT,
        weight: int = 1,
        enabled: bool = True,
        inputs: tuple[str, ...] | None = None,
        consecutive_failures: int = 0,
        last_failure_at: float | None = None,
    ) -> DeploymentConfig:
        dep = DeploymentConfig(
            deployment_id=deployment_id,
            type=type_,
            role=role,
            weight=weight,
            enabled=enabled,
            inputs=inputs,
            consecutive_failures=consecutive_failures,
            last_failure_at=last_failure_at,
        )
        self.deployments[deployment_id] = dep
        return dep

    def set_balance(self, user_id: int, credits: int) -> None:
        self.credits[user_id] = credits

    def held(self, user_id: int) -> int:
        return sum(amount for uid, amount in self.holds.values() if uid == user_id)

    # -- DeploymentStore ------------------------------------------------------------------------

    async def list_deployments(self, type_: str | None = None) -> list[DeploymentConfig]:
        return [d for d in self.deployments.values() if type_ is None or d.type == type_]

    async def record_success(self, deployment_id: str) -> None:
        dep = self.deployments.get(deployment_id)
        if dep is not None:
            self.deployments[deployment_id] = dataclasses.replace(
                dep, success_count=dep.success_count + 1, consecutive_failures=0
            )

    async def record_failure(self, deployment_id: str) -> None:
        dep = self.deployments.get(deployment_id)
        if dep is not None:
            self.deployments[deployment_id] = dataclasses.replace(
                dep,
                failure_count=dep.failure_count + 1,
                consecutive_failures=dep.consecutive_failures + 1,
            )

    # -- LoraStore ------------------------------------------------------------------------------

    async def list_loras(self) -> list[LoraEntry]:
        return list(self.loras)

    # -- BalanceStore ---------------------------------------------------------------------------

    async def get_balance(self, user_id: int) -> int:
        return self.credits.get(user_id, 0) - self.held(user_id)

    async def settle_hold(self, run_id: str) -> bool:
        hold = self.holds.pop(run_id, None)
        if hold is None:
            return False
        user_id, amount = hold
        self.credits[user_id] = self.credits.get(user_id, 0) - amount
        self.hold_outcomes[run_id] = ChargeState.SETTLED
        self._set(run_id, charge_state=ChargeState.SETTLED)
        return True

    async def release_hold(self, run_id: str) -> bool:
        if self.holds.pop(run_id, None) is None:
            return False
        self.hold_outcomes[run_id] = ChargeState.RELEASED
        self._set(run_id, charge_state=ChargeState.RELEASED)
        return True

    # -- RunStore -------------------------------------------------------------------------------

    async def create_run(self, run: RunRecord, hold_amount: int = 0) -> RunRecord:
        if run.id in self.runs:
            raise ValueError(f"duplicate run id {run.id}")
        if hold_amount > 0:
            available = await self.get_balance(run.user_id)
            if available < hold_amount:
                raise InsufficientBalanceError(
                    "insufficient balance", required=hold_amount, available=available
                )
            self.holds[run.id] = (run.user_id, hold_amount)
            run = dataclasses.replace(run, charge_state=ChargeState.HELD)
        self.runs[run.id] = run
        return run

    async def update_run_if_active(self, run_id: str, **changes: Any) -> RunRecord | None:
        current = self.runs.get(run_id)
        if current is None or current.is_terminal:
            return None
        return await self.update_run(run_id, **changes)

    async def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        if run_id not in self.runs:
            raise KeyError(run_id)
        bad = set(changes) - RUN_UPDATABLE_FIELDS
        if bad:
            raise ValueError(f"not updatable: {sorted(bad)}")
        self.update_calls.append((run_id, dict(changes)))
        return self._set(run_id, **changes)

    def _set(self, run_id: str, **changes: Any) -> RunRecord:
        run = self.runs.get(run_id)
        if run is None:
            return None  # type: ignore[return-value]
        run = dataclasses.replace(run, **changes)
        self.runs[run_id] = run
        return run

    async def get_run(self, run_id: str) -> RunRecord | None:
        return self.runs.get(run_id)

    async def get_run_by_backend_id(self, backend_run_id: str) -> RunRecord | None:
        for run in self.runs.values():
            if run.backend_run_id == backend_run_id:
                return run
        return None

    async def list_unfinished_runs(self) -> list[RunRecord]:
        def unfinished(run: RunRecord) -> bool:
            if not run.status.is_terminal:
                return True
            if run.charge_state == ChargeState.HELD:
                return True
            return run.status.value == "success" and run.delivery_state == DeliveryState.PENDING

        return sorted((r for r in self.runs.values() if unfinished(r)), key=lambda r: r.created_at)

    async def list_user_runs(self, user_id: int, *, active_only: bool = True) -> list[RunRecord]:
        runs = [
            r
            for r in self.runs.values()
            if r.user_id == user_id and not (active_only and r.status.is_terminal)
        ]
        return sorted(runs, key=lambda r: r.created_at, reverse=True)
