"""Self-hosted ComfyUI workflows (``/workflow add``), stored beside their deployment row.

A workflow is a deployment-like target: registering one inserts a ``deployments`` row with
``deployment_id = "workflow:<name>"`` and ``backend = 'comfyui'`` plus its graph in
``workflows``, in one transaction. Removing the deployment row removes the graph too
(``ON DELETE CASCADE``). Implements :class:`generation.ports.WorkflowStore`.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

import aiosqlite

from generation.models import DeploymentRole, WorkflowRecord
from storage.database import Database
from storage.deployments import DeploymentRepository
from storage.errors import DuplicateError, ValidationError
from storage.validation import dump_json, load_json, require_int, require_text

WORKFLOW_PREFIX = "workflow:"  # generation.comfyui.ids.WORKFLOW_PREFIX
BACKEND_KIND = "comfyui"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,47}$")
MAX_GRAPH_BYTES = 2_000_000


def normalize_name(name: Any) -> str:
    text = require_text(name, "workflow name", max_length=48).lower()
    if not _NAME_RE.match(text):
        raise ValidationError(
            "workflow name: 1-48 characters of a-z, 0-9, '_', '-', '.', starting with a letter "
            "or digit"
        )
    return text


def _record(row: aiosqlite.Row) -> WorkflowRecord:
    return WorkflowRecord(
        deployment_id=row["deployment_id"],
        name=row["name"],
        type=row["type"],
        graph=load_json(row["graph"], "graph"),
        input_map=tuple(load_json(row["input_map"], "input_map")),
        created_at=row["created_at"],
    )


_SELECT = (
    "SELECT w.deployment_id, w.name, w.graph, w.input_map, w.created_at, d.type"
    " FROM workflows w JOIN deployments d ON d.deployment_id = w.deployment_id"
)


class WorkflowRepository:
    def __init__(self, db: Database, deployments: DeploymentRepository) -> None:
        self._db = db
        self._deployments = deployments
        self._cache: dict[str, WorkflowRecord] | None = None

    async def add(
        self,
        type_: str,
        name: str,
        graph: Mapping[str, Any],
        input_map: Sequence[Mapping[str, Any]],
        *,
        role: str | DeploymentRole = DeploymentRole.DEFAULT,
        weight: int = 1,
        replace: bool = False,
    ) -> WorkflowRecord:
        """Register (or with ``replace`` re-register, keeping health/enabled) a workflow."""
        type_ = require_text(type_, "type", max_length=64).upper()
        name = normalize_name(name)
        try:
            role = DeploymentRole(role)
        except ValueError:
            raise ValidationError(f"unknown role {role!r}") from None
        weight = require_int(weight, "weight", minimum=1)
        if not isinstance(graph, Mapping) or not graph:
            raise ValidationError("graph must be a non-empty object")
        graph_json = dump_json(dict(graph), "graph")
        if len(graph_json.encode()) > MAX_GRAPH_BYTES:
            raise ValidationError("graph is too large")
        map_json = dump_json([dict(i) for i in input_map], "input_map")
        names = list(dict.fromkeys(str(i.get("name")) for i in input_map))
        deployment_id = f"{WORKFLOW_PREFIX}{name}"
        now = self._db.clock()
        async with self._db.write() as conn:
            exists = await conn.execute_fetchall(
                "SELECT 1 FROM deployments WHERE deployment_id = ?", (deployment_id,)
            )
            if exists and not replace:
                raise DuplicateError(f"workflow {name!r} already exists")
            try:
                if exists:
                    await conn.execute(
                        "UPDATE deployments SET type = ?, inputs = ? WHERE deployment_id = ?",
                        (type_, dump_json(names, "inputs"), deployment_id),
                    )
                    await conn.execute(
                        "UPDATE workflows SET graph = ?, input_map = ? WHERE deployment_id = ?",
                        (graph_json, map_json, deployment_id),
                    )
                else:
                    await conn.execute(
                        "INSERT INTO deployments(deployment_id, type, role, weight, enabled,"
                        " inputs, created_at, backend) VALUES (?, ?, ?, ?, 1, ?, ?, ?)",
                        (
                            deployment_id,
                            type_,
                            role.value,
                            weight,
                            dump_json(names, "inputs"),
                            now,
                            BACKEND_KIND,
                        ),
                    )
                    await conn.execute(
                        "INSERT INTO workflows(deployment_id, name, graph, input_map, created_at)"
                        " VALUES (?, ?, ?, ?, ?)",
                        (deployment_id, name, graph_json, map_json, now),
                    )
            except sqlite3.IntegrityError as exc:
                raise DuplicateError(f"workflow {name!r} clashes: {exc}") from None
        self._changed()
        record = await self.get_workflow(deployment_id)
        assert record is not None
        return record

    async def remove(self, name: str) -> bool:
        """Remove a workflow and its deployment row. Runs in flight finish: their backend run
        id names the server and prompt, not the workflow."""
        deployment_id = f"{WORKFLOW_PREFIX}{normalize_name(name)}"
        async with self._db.write() as conn:
            cur = await conn.execute(
                "DELETE FROM deployments WHERE deployment_id = ? AND backend = ?",
                (deployment_id, BACKEND_KIND),
            )
        self._changed()
        return cur.rowcount == 1

    def _changed(self) -> None:
        self._cache = None
        self._deployments.invalidate()

    async def _all(self) -> dict[str, WorkflowRecord]:
        if self._cache is None:
            async with self._db.read() as conn:
                rows = await conn.execute_fetchall(_SELECT + " ORDER BY w.created_at, w.rowid")
            self._cache = {r["deployment_id"]: _record(r) for r in rows}
        return self._cache

    async def get_workflow(self, deployment_id: str) -> WorkflowRecord | None:
        # Deployment rows can also be removed through DeploymentRepository (cascade): read
        # through when the cached entry's row is gone.
        record = (await self._all()).get(deployment_id)
        if record is not None and await self._deployments.get(deployment_id) is None:
            self._cache = None
            return None
        return record

    async def get_by_name(self, name: str) -> WorkflowRecord | None:
        return await self.get_workflow(f"{WORKFLOW_PREFIX}{normalize_name(name)}")

    async def list_workflows(self) -> list[WorkflowRecord]:
        self._cache = None  # cheap, admin-only path: always current
        return list((await self._all()).values())
