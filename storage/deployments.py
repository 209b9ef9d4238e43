"""Deployments configured by admins, with health counters for the circuit breaker."""

from __future__ import annotations

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
    )


class DeploymentRepository:
    """Implements :class:`generation.ports.DeploymentStore`."""

    def __init__(self, db: Database) -> None:
        self._db = db

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
        return DeploymentConfig(
            deployment_id=deployment_id, type=type_, role=role, weight=weight, inputs=names
        )

    async def remove(self, deployment_id: str) -> bool:
        async with self._db.write() as conn:
            cur = await conn.execute(
                "DELETE FROM deployments WHERE deployment_id = ?", (deployment_id,)
            )
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
        return _config(rows[0])

    async def list_deployments(self, type_: str | None = None) -> list[DeploymentConfig]:
        """All deployments (enabled or not), for one type or all; oldest first."""
        async with self._db.read() as conn:
            if type_ is None:
                rows = await conn.execute_fetchall(
                    "SELECT * FROM deployments ORDER BY type, created_at, rowid"
                )
            else:
                rows = await conn.execute_fetchall(
                    "SELECT * FROM deployments WHERE type = ? ORDER BY created_at, rowid",
                    (type_.strip().upper(),),
                )
        return [_config(r) for r in rows]

    async def record_success(self, deployment_id: str) -> None:
        """Unknown ids are ignored: a deployment may be removed while a run is in flight."""
        async with self._db.write() as conn:
            await conn.execute(
                "UPDATE deployments SET success_count = success_count + 1,"
                " consecutive_failures = 0 WHERE deployment_id = ?",
                (deployment_id,),
            )

    async def record_failure(self, deployment_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(
                "UPDATE deployments SET failure_count = failure_count + 1,"
                " consecutive_failures = consecutive_failures + 1, last_failure_at = ?"
                " WHERE deployment_id = ?",
                (self._db.clock(), deployment_id),
            )
