"""A backend that routes between ComfyDeploy and self-hosted ComfyUI.

A type may have targets on both: ComfyDeploy deployments (UUIDs) and ComfyUI workflows
(``workflow:<name>``). Selection, weights and failover stay in the service; this backend only
sends each call to the backend the id belongs to: ``create_run`` by the deployment id,
``get_run``/``cancel_run`` by the backend run id (ComfyUI's start with ``comfyui:``), so crash
recovery after a restart polls the right one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import httpx

from generation.comfyui.backend import ComfyUIBackend
from generation.comfyui.graph import Analysis
from generation.comfyui.ids import is_comfyui_run, is_workflow_id
from generation.errors import DeploymentNotFoundError, RunNotFoundError
from generation.models import DeploymentInfo, RunSnapshot
from generation.ports import Backend


class RoutingBackend:
    kind = "routing"

    def __init__(self, *, comfydeploy: Backend | None, comfyui: ComfyUIBackend | None) -> None:
        if comfydeploy is None and comfyui is None:
            raise ValueError("RoutingBackend needs at least one backend")
        self.comfydeploy = comfydeploy
        self.comfyui = comfyui

    def __repr__(self) -> str:
        return f"RoutingBackend(comfydeploy={self.comfydeploy!r}, comfyui={self.comfyui!r})"

    @property
    def transport(self) -> httpx.AsyncBaseTransport | None:
        """Download transport: ComfyUI ``/view`` URLs get the server's auth, others pass."""
        return self.comfyui.transport if self.comfyui is not None else None

    def _for_deployment(self, deployment_id: str) -> Backend:
        backend: Any = self.comfyui if is_workflow_id(deployment_id) else self.comfydeploy
        if backend is None:
            raise DeploymentNotFoundError(f"no backend configured for {deployment_id!r}")
        return backend  # type: ignore[no-any-return]

    def _for_run(self, run_id: str) -> Backend:
        backend: Any = self.comfyui if is_comfyui_run(run_id) else self.comfydeploy
        if backend is None:
            raise RunNotFoundError("the backend of this run is not configured", run_id=run_id)
        return backend  # type: ignore[no-any-return]

    async def create_run(
        self,
        deployment_id: str,
        inputs: dict[str, Any],
        *,
        webhook: str | None = None,
        webhook_intermediate_status: bool = True,
        run_ref: str | None = None,
    ) -> str:
        return await self._for_deployment(deployment_id).create_run(
            deployment_id,
            inputs,
            webhook=webhook,
            webhook_intermediate_status=webhook_intermediate_status,
            run_ref=run_ref,
        )

    async def get_run(self, run_id: str) -> RunSnapshot:
        return await self._for_run(run_id).get_run(run_id)

    async def cancel_run(self, run_id: str) -> None:
        await self._for_run(run_id).cancel_run(run_id)

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        """ComfyDeploy's upload gives a URL both backends can read (ComfyUI fetches it)."""
        backend: Any = self.comfydeploy or self.comfyui
        return await backend.upload_file(data, filename, content_type)  # type: ignore[no-any-return]

    async def list_deployments(self) -> list[DeploymentInfo]:
        result: list[DeploymentInfo] = []
        for backend in (self.comfydeploy, self.comfyui):
            if backend is not None:
                result += await backend.list_deployments()
        return result

    async def find_submitted(self, deployment_id: str, run_ref: str) -> str | None:
        if is_workflow_id(deployment_id) and self.comfyui is not None:
            return await self.comfyui.find_submitted(deployment_id, run_ref)
        return None

    def set_update_sink(self, sink: Any) -> None:
        if self.comfyui is not None:
            self.comfyui.set_update_sink(sink)

    async def check_workflow(self, document: bytes | str | Mapping[str, Any]) -> Analysis:
        if self.comfyui is None:
            raise DeploymentNotFoundError("COMFYUI_URL is not set")
        return await self.comfyui.check_workflow(document)

    async def aclose(self) -> None:
        for backend in (self.comfyui, self.comfydeploy):
            if backend is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await backend.aclose()
