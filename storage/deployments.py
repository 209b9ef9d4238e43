"""Deployments configured by admins, with health counters for the circuit breaker."""

from __future__ import annotations

import dataclasses
import sqlite3
from typing import Any

import aiosqlite

from generation.models import DeploymentConfig, DeploymentRole
from storage.database import Database
from storage.errors import DuplicateError, NotFoundError, ValidationError
from storage.validation import dump_json, load_json, require_bool, require_int, require_text


def _norm_type(type_: Any) -> str:
    return require_text(type_, "type", max_length=64).upper()


def _norm_role(role: Any) -> DeploymentRole:
    try:
        return DeploymentRole(role)
    except ValueError:
        choices = "|".join(r.value for r in DeploymentRole)
        raise ValidationError(f"role must be one of {choices}, got {role!r}") from None


def _norm_inputs(inputs: Any) -> tuple[str, ...] | None:
    if inputs is None:
        return None
    if isinstance(inputs, str) or not isinstance(inputs, list | tuple):
        raise ValidationError("inputs must be a list of input names or None")
    return tuple(require_text(name, "input name") for name in inputs)


def _config(row: aiosqlite.Row) -> DeploymentConfig:
    inputs = None if row["inputs"] is None else tuple(load_json(row["inputs"], "inputs"))
    return DeploymentConfig(
        deployment_id=row["deployment_id"],
        type=row["type"],
        role=DeploymentRole(row["role"]),
        weight=row["weight"],
        enabled=bool(row["enabled"]),
        inputs=inputs,
        success_count=row["success_count"],
        failure_count=row["failure_count"],
        consecutive_failures=row["consecutive_failures"],
        last_failure_at=row["last_failure_at"],
        backend=row["backend"] if "backend" in row.keys() else "comfydeploy",
    )


class DeploymentRepository:
    """Implements :class:`generation.ports.DeploymentStore`.

    The list is read on every generation and changed only through this repository, so it is
    cached in memory: admin writes drop the cache, and the health counters written after each
    create call are applied to the cached entries as well as to the table."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._cache: tuple[DeploymentConfig, ...] | None = None  # all, by type, created_at

    def invalidate(self) -> None:
        """Drop the cached list (another repository wrote deployment rows)."""
        self._cache = None

    def _patch_cache(self, deployment_id: str, **changes: Any) -> None:
        if self._cache is None:
            return
        self._cache = tuple(
            dataclasses.replace(d, **{k: f(d) for k, f in changes.items()})
            if d.deployment_id == deployment_id
            else d
            for d in self._cache
        )

    async def add(
        self,
        type_: str,
        deployment_id: str,
        *,
        role: str | DeploymentRole = DeploymentRole.DEFAULT,
        weight: int = 1,
        inputs: list[str] | None = None,
    ) -> DeploymentConfig:
        type_ = _norm_type(type_)
        deployment_id = require_text(deployment_id, "deployment_id", max_length=128)
        role = _norm_role(role)
        weight = require_int(weight, "weight", minimum=1)
        names = _norm_inputs(inputs)
        async with self._db.write() as conn:
            try:
                await conn.execute(
                    "INSERT INTO deployments(deployment_id, type, role, weight, enabled, inputs,"
                    " created_at) VALUES (?, ?, ?, ?, 1, ?, ?)",
                    (
                        deployment_id,
                        type_,
                        role.value,
                        weight,
                        None if names is None else dump_json(list(names), "inputs"),
                        self._db.clock(),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"deployment {deployment_id!r} already exists") from None
        self._cache = None
        return DeploymentConfig(
            deployment_id=deployment_id, type=type_, role=role, weight=weight, inputs=names
        )

    async def remove(self, deployment_id: str) -> bool:
        async with self._db.write() as conn:
            cur = await conn.execute(
                "DELETE FROM deployments WHERE deployment_id = ?", (deployment_id,)
            )
        self._cache = None
        return cur.rowcount == 1

    async def get(self, deployment_id: str) -> DeploymentConfig | None:
        async with self._db.read() as conn:
            rows = await conn.execute_fetchall(
                "SELECT * FROM deployments WHERE deployment_id = ?", (deployment_id,)
            )
        return _config(rows[0]) if rows else None

    async def set_enabled(self, deployment_id: str, enabled: bool) -> DeploymentConfig:
        enabled = require_bool(enabled, "enabled")
        return await self._update(deployment_id, "enabled = ?", (int(enabled),))

    async def set_inputs(self, deployment_id: str, inputs: list[str] | None) -> DeploymentConfig:
        names = _norm_inputs(inputs)
        value = None if names is None else dump_json(list(names), "inputs")
        return await self._update(deployment_id, "inputs = ?", (value,))

    async def _update(
        self, deployment_id: str, assignment: str, params: tuple[Any, ...]
    ) -> DeploymentConfig:
        async with self._db.write() as conn:
            cur = await conn.execute(
                f"UPDATE deployments SET {assignment} WHERE deployment_id = ?",
                (*params, deployment_id),
            )
            if cur.rowcount != 1:
                raise NotFoundError(f"unknown deployment {deployment_id!r}")
            rows = await conn.execute_fetchall(
                "SELECT * FROM deployments WHERE deployment_id = ?", (deployment_id,)
            )
        self._cache = None
        return _config(rows[0])

    async def list_deployments(self, type_: str | None = None) -> list[DeploymentConfig]:
        """All deployments (enabled or not), for one type or all; oldest first."""
        if self._cache is None:
            async with self._db.read() as conn:
                rows = await conn.execute_fetchall(
                    "SELECT * FROM deployments ORDER BY type, created_at, rowid"
                )
            self._cache = tuple(_config(r) for r in rows)
        if type_ is None:
            return list(self._cache)
        wanted = type_.strip().upper()
        return [d for d in self._cache if d.type == wanted]

    async def record_success(self, deployment_id: str) -> None:
        """Unknown ids are ignored: a deployment may be removed while a run is in flight."""
        await self._db.write_one(
            "UPDATE deployments SET success_count = success_count + 1,"
            " consecutive_failures = 0 WHERE deployment_id = ?",
            (deployment_id,),
        )
        self._patch_cache(
            deployment_id,
            success_count=lambda d: d.success_count + 1,
            consecutive_failures=lambda d: 0,
        )

    async def record_failure(self, deployment_id: str) -> None:
        now = self._db.clock()
        await self._db.write_one(
            "UPDATE deployments SET failure_count = failure_count + 1,"
            " consecutive_failures = consecutive_failures + 1, last_failure_at = ?"
            " WHERE deployment_id = ?",
            (now, deployment_id),
        )
        self._patch_cache(
            deployment_id,
            failure_count=lambda d: d.failure_count + 1,
            consecutive_failures=lambda d: d.consecutive_failures + 1,
            last_failure_at=lambda d: now,
        )
