"""Deployment selection: role, weight, health (circuit breaker) and failover.

Candidates are the enabled deployments of the first deployment key that has any (a combined
type such as ``MAKE_STYLE`` falls back to its base type's deployments). Among them the role
decides (cook → cook; api → api, else default; otherwise default) and a weighted random draw
picks one of the healthy ones.

The circuit breaker is in memory, seeded from the store's ``consecutive_failures`` the first
time a deployment is seen. It opens after ``breaker_threshold`` consecutive create failures;
while open the deployment is skipped for ``breaker_cooldown`` seconds; then one probe request
is let through (half-open). Success closes it, failure opens it again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from generation.errors import NoDeploymentsAvailableError
from generation.models import DeploymentConfig, DeploymentRole
from generation.ports import DeploymentStore
from generation.request import RequestMode

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Breaker:
    failures: int = 0
    opened_at: float | None = None
    probe_started_at: float | None = None  # set while a half-open probe is in flight


class DeploymentSelector:
    def __init__(
        self,
        store: DeploymentStore,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 60.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._rng = rng or random.Random()
        self._threshold = max(1, breaker_threshold)
        self._cooldown = breaker_cooldown
        self._breakers: dict[str, _Breaker] = {}

    # -- candidates ---------------------------------------------------------------------------

    async def _enabled_for(self, keys: Sequence[str]) -> list[DeploymentConfig]:
        for key in keys:
            enabled = [d for d in await self._store.list_deployments(key) if d.enabled]
            if enabled:
                return enabled
        return []

    @staticmethod
    def _by_role(deployments: list[DeploymentConfig], mode: RequestMode) -> list[DeploymentConfig]:
        if mode == RequestMode.COOK:
            return [d for d in deployments if d.role == DeploymentRole.COOK]
        if mode == RequestMode.API:
            return [d for d in deployments if d.role == DeploymentRole.API]
        return [d for d in deployments if d.role == DeploymentRole.DEFAULT]

    def _role_groups(
        self, deployments: list[DeploymentConfig], mode: RequestMode
    ) -> list[list[DeploymentConfig]]:
        """Candidate groups in preference order (api falls back to default)."""
        groups = [self._by_role(deployments, mode)]
        if mode == RequestMode.API:
            groups.append(self._by_role(deployments, RequestMode.DEFAULT))
        return groups

    async def has_candidates(self, keys: Sequence[str], mode: RequestMode) -> bool:
        """True when some enabled deployment could serve the request (health ignored)."""
        enabled = await self._enabled_for(keys)
        return any(self._role_groups(enabled, mode))

    # -- breaker ------------------------------------------------------------------------------

    def _breaker(self, deployment: DeploymentConfig) -> _Breaker:
        breaker = self._breakers.get(deployment.deployment_id)
        if breaker is None:
            breaker = _Breaker(failures=deployment.consecutive_failures)
            if breaker.failures >= self._threshold:
                opened = deployment.last_failure_at
                breaker.opened_at = opened if opened is not None else self._clock()
            self._breakers[deployment.deployment_id] = breaker
        return breaker

    def _usable(self, breaker: _Breaker, now: float) -> bool:
        if breaker.opened_at is None:
            return True
        if now - breaker.opened_at < self._cooldown:
            return False  # open
        # Half-open: one probe at a time; a probe whose outcome never came expires.
        return breaker.probe_started_at is None or now - breaker.probe_started_at >= self._cooldown

    def is_open(self, deployment_id: str) -> bool:
        """True while the breaker of ``deployment_id`` blocks new requests."""
        breaker = self._breakers.get(deployment_id)
        return breaker is not None and not self._usable(breaker, self._clock())

    # -- selection ----------------------------------------------------------------------------

    async def select(
        self, keys: Sequence[str], mode: RequestMode, exclude: set[str] | None = None
    ) -> DeploymentConfig:
        """Pick one deployment for a request; raises NoDeploymentsAvailableError."""
        exclude = exclude or set()
        enabled = await self._enabled_for(keys)
        now = self._clock()
        for group in self._role_groups(enabled, mode):
            healthy = [
                d
                for d in group
                if d.deployment_id not in exclude and self._usable(self._breaker(d), now)
            ]
            if not healthy:
                continue
            weights = [max(0, d.weight) for d in healthy]
            if sum(weights) <= 0:
                weights = [1] * len(healthy)
            chosen = self._rng.choices(healthy, weights=weights, k=1)[0]
            breaker = self._breaker(chosen)
            if breaker.opened_at is not None:
                breaker.probe_started_at = now
                log.info("deployment %s: half-open probe", chosen.deployment_id)
            return chosen
        raise NoDeploymentsAvailableError(
            "no healthy deployment", keys=list(keys), mode=mode.value, excluded=len(exclude)
        )

    async def record_success(self, deployment_id: str) -> None:
        breaker = self._breakers.setdefault(deployment_id, _Breaker())
        if breaker.opened_at is not None:
            log.info("deployment %s: breaker closed", deployment_id)
        breaker.failures = 0
        breaker.opened_at = None
        breaker.probe_started_at = None
        await self._store.record_success(deployment_id)

    async def record_failure(self, deployment_id: str) -> None:
        breaker = self._breakers.setdefault(deployment_id, _Breaker())
        breaker.failures += 1
        breaker.probe_started_at = None
        if breaker.failures >= self._threshold:
            if breaker.opened_at is None:
                log.warning(
                    "deployment %s: breaker open after %d failures", deployment_id, breaker.failures
                )
            breaker.opened_at = self._clock()
        await self._store.record_failure(deployment_id)
