"""Protocols the generation module depends on; ``storage/`` implements them.

Keep these small: they are the whole contract between the two packages.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from generation.models import (
    DeploymentConfig,
    DeploymentInfo,
    LoraEntry,
    RunRecord,
    RunSnapshot,
    WorkflowRecord,
)


@runtime_checkable
class DeploymentStore(Protocol):
    async def list_deployments(self, type_: str | None = None) -> list[DeploymentConfig]:
        """All deployments (enabled or not) for a deployment key, or all when ``None``."""

    async def record_success(self, deployment_id: str) -> None:
        """Health: one successful create on this deployment (resets consecutive failures)."""

    async def record_failure(self, deployment_id: str) -> None:
        """Health: one failed create on this deployment."""


@runtime_checkable
class WorkflowStore(Protocol):
    """Self-hosted ComfyUI workflows (the graphs behind ``workflow:<name>`` deployments)."""

    async def get_workflow(self, deployment_id: str) -> WorkflowRecord | None:
        """The workflow of a ``workflow:<name>`` deployment id, or None when removed."""

    async def list_workflows(self) -> list[WorkflowRecord]: ...


@runtime_checkable
class LoraStore(Protocol):
    async def list_loras(self) -> list[LoraEntry]:
        """The whole catalogue, disabled entries included (callers filter)."""


@runtime_checkable
class BalanceStore(Protocol):
    async def get_balance(self, user_id: int) -> int:
        """Available credits: the ledger sum minus open holds. Unknown users have 0."""

    async def settle_hold(self, run_id: str) -> bool:
        """Turn the hold of ``run_id`` into a debit. True only the first time; False if the
        hold was already settled or released, or never existed."""

    async def release_hold(self, run_id: str) -> bool:
        """Drop the hold of ``run_id`` without charging. True only the first time."""


@runtime_checkable
class RunStore(Protocol):
    async def create_run(self, run: RunRecord, hold_amount: int = 0) -> RunRecord:
        """Insert ``run`` and, when ``hold_amount > 0``, hold that many credits of
        ``run.user_id`` keyed by ``run.id`` — both in one transaction. Raises
        ``generation.errors.InsufficientBalanceError`` (and writes nothing) when the available
        balance is below ``hold_amount``. Returns the stored record (``charge_state`` HELD
        when a hold was placed)."""

    async def update_run(self, run_id: str, **changes: Any) -> RunRecord:
        """Update the given fields (names from ``models.RUN_UPDATABLE_FIELDS``) and return the
        new record. Raises ``KeyError`` for an unknown run id, ``ValueError`` for a bad field."""

    async def update_run_if_active(self, run_id: str, **changes: Any) -> RunRecord | None:
        """Like ``update_run``, but only while the run exists and is not terminal (one
        statement); ``None`` when nothing was written."""

    async def get_run(self, run_id: str) -> RunRecord | None: ...

    async def get_run_by_backend_id(self, backend_run_id: str) -> RunRecord | None: ...

    async def list_unfinished_runs(self) -> list[RunRecord]:
        """Runs that are not terminal, or terminal but not yet delivered / charge not
        resolved — everything a restart must pick up again. Oldest first."""

    async def list_user_runs(self, user_id: int, *, active_only: bool = True) -> list[RunRecord]:
        """A user's runs, newest first; ``active_only`` keeps the non-terminal ones."""


@runtime_checkable
class Backend(Protocol):
    """A generation backend: ComfyDeploy today, self-hosted ComfyUI or a preview later."""

    async def create_run(
        self,
        deployment_id: str,
        inputs: dict[str, Any],
        *,
        webhook: str | None = None,
        webhook_intermediate_status: bool = True,
        run_ref: str | None = None,
    ) -> str:
        """Start a run and return the backend's run id. ``run_ref`` is the bot's own run id;
        a backend that can name its run after it does (ComfyUI's client-chosen prompt_id), so
        a crash during the call can be reconciled on restart."""

    async def get_run(self, run_id: str) -> RunSnapshot: ...

    async def cancel_run(self, run_id: str) -> None: ...

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload an input file and return a URL the backend can read."""

    async def list_deployments(self) -> list[DeploymentInfo]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ImageStore(Protocol):
    """Input images of accepted runs, on disk (``storage.images.FileImageStore``)."""

    async def put(self, data: bytes) -> str:
        """Store the bytes; returns a reference (content-addressed: same bytes, same ref)."""

    async def get(self, ref: str) -> bytes | None:
        """The bytes of ``ref``; None when they are gone."""

    async def delete(self, ref: str) -> None: ...

    async def sweep(self, keep: set[str]) -> int:
        """Delete every stored image not in ``keep``; returns how many."""
