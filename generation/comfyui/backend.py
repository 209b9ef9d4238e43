"""The self-hosted ComfyUI backend (implements :class:`generation.ports.Backend`).

* Deployment ids are ``workflow:<name>``; the graph comes from a
  :class:`generation.ports.WorkflowStore`. ``create_run`` picks a server, uploads the input
  images there (``POST /upload/image``), substitutes the External input nodes
  (:mod:`generation.comfyui.graph`) and ``POST /prompt``\\s the graph with this process's
  ``client_id`` and a prompt_id derived from the bot's run id.
* Backend run ids are ``comfyui:<server key>:<prompt_id>`` (:mod:`generation.comfyui.ids`), so
  after a restart the run is polled on the server that has it.
* ``get_run`` takes ``GET /queue`` and ``GET /history/{id}`` as the source of truth; the
  WebSocket (:mod:`generation.comfyui.ws`) adds live progress and pushes "look again" signals
  to the service (``set_update_sink``) so results arrive without waiting for the next poll.
* Several servers: chosen by health and ``queue_remaining`` (lowest first); a per-server
  circuit breaker skips a failing server; a connection error fails over to the next server.
  When every server is down, or every queue is longer than ``max_queue``, ``create_run`` raises
  a retryable error and the service fails over to another deployment of the type (for example
  a ComfyDeploy one).
* Cancel: pending → ``POST /queue {"delete": [id]}``; running → ``POST /interrupt
  {"prompt_id": id}`` (never a global interrupt).
"""

from __future__ import annotations

import base64
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from generation.comfyui import ids
from generation.comfyui.client import ComfyUIClient, normalize_url, ws_url
from generation.comfyui.graph import (
    Analysis,
    analyse,
    parse_workflow,
)
from generation.comfyui.live import LivePrompts, UpdateSink
from generation.comfyui.progress import (
    history_outcome,
    media_outputs,
    output_items,
    snapshot,
)
from generation.comfyui.servers import Server, ServerPool
from generation.comfyui.transport import AuthTransport
from generation.comfyui.uploads import MAX_IMAGE_BYTES, decode_images, prepare
from generation.comfyui.ws import EventStream
from generation.errors import (
    BackendUnavailableError,
    DeploymentNotFoundError,
    GenerationError,
    InvalidInputError,
    RunNotFoundError,
)
from generation.models import DeploymentInfo, RunSnapshot, RunStatus
from generation.ports import WorkflowStore

log = logging.getLogger("generation.comfyui")


class ComfyUIBackend:
    """Run workflows on one or more ComfyUI servers."""

    kind = ids.BACKEND_KIND

    def __init__(
        self,
        urls: Sequence[str],
        *,
        workflows: WorkflowStore,
        auth: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        download_transport: httpx.AsyncBaseTransport | None = None,
        client_id: str | None = None,
        max_queue: int | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown: float = 30.0,
        websocket: bool = True,
        ws_recv_timeout: float = 30.0,
        ws_backoff_initial: float = 0.5,
        ws_backoff_max: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        read_timeout: float = 30.0,
    ) -> None:
        if not urls:
            raise ValueError("at least one ComfyUI URL is needed")
        self.client_id = client_id or uuid.uuid4().hex
        self._workflows = workflows
        self._auth = auth
        self._clock = clock
        self._rng = rng or random.Random()
        self._websocket = websocket
        self._ws_options = {
            "recv_timeout": ws_recv_timeout,
            "backoff_initial": ws_backoff_initial,
            "backoff_max": ws_backoff_max,
        }
        servers: dict[str, Server] = {}
        for raw in urls:
            url = normalize_url(raw)
            key = ids.server_key(url)
            if key in servers:
                continue
            client = ComfyUIClient(url, auth=auth, transport=transport, read_timeout=read_timeout)
            servers[key] = Server(url=url, key=key, client=client)
        self._pool = ServerPool(
            servers,
            clock=clock,
            breaker_threshold=breaker_threshold,
            breaker_cooldown=breaker_cooldown,
            max_queue=max_queue,
        )
        self._servers = servers
        self._live = LivePrompts(servers)
        self._started = False
        self._fetch = httpx.AsyncClient(timeout=30.0, follow_redirects=True)
        self.transport = AuthTransport(
            [s.url for s in self._servers.values()], auth, download_transport
        )

    def __repr__(self) -> str:
        return f"ComfyUIBackend(servers={[s.label for s in self._servers.values()]!r})"

    @property
    def servers(self) -> list[str]:
        return [s.label for s in self._servers.values()]

    def set_update_sink(self, sink: UpdateSink | None) -> None:
        """``sink(backend_run_id)`` is awaited when a prompt changed (progress, end)."""
        self._live.sink = sink

    # -- lifecycle ------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._started or not self._websocket:
            return
        self._started = True
        for server in self._servers.values():
            server.stream = EventStream(
                ws_url(server.url, self.client_id),
                auth=self._auth,
                on_message=lambda msg, s=server: self._live.on_message(s, msg),
                on_connect=lambda s=server: self._live.on_connect(s),
                on_disconnect=lambda s=server: self._live.on_disconnect(s),
                **self._ws_options,
            )
            server.stream.start()

    async def start(self) -> None:
        """Open the WebSockets now (otherwise they open on first use)."""
        self._ensure_started()

    async def aclose(self) -> None:
        for server in self._servers.values():
            if server.stream is not None:
                await server.stream.aclose()
        await self._live.aclose()
        for server in self._servers.values():
            await server.client.aclose()
        await self._fetch.aclose()
        await self.transport.aclose()

    # -- Backend protocol -----------------------------------------------------------------

    async def create_run(
        self,
        deployment_id: str,
        inputs: dict[str, Any],
        *,
        webhook: str | None = None,
        webhook_intermediate_status: bool = True,
        run_ref: str | None = None,
    ) -> str:
        """Submit the workflow ``deployment_id`` with ``inputs`` (webhooks are not used: the
        WebSocket replaces them)."""
        self._ensure_started()
        workflow = await self._workflows.get_workflow(deployment_id)
        if workflow is None:
            raise DeploymentNotFoundError(f"workflow {deployment_id!r} is not registered")
        images = await decode_images(self._fetch, workflow.graph, inputs)
        prompt_id = ids.prompt_id_for(run_ref)
        last: GenerationError | None = None
        for server in await self._pool.candidates():
            try:
                graph = await prepare(server.client, workflow.graph, inputs, images, prompt_id)
                # Known before the POST: the prompt may run and end before the answer arrives.
                self._live.remember(server, prompt_id, graph)
                answer = await server.client.submit(
                    graph, client_id=self.client_id, prompt_id=prompt_id
                )
            except BackendUnavailableError as exc:
                self._live.forget(server, prompt_id)
                self._pool.record_failure(server)
                log.warning("comfyui %s: submit failed (%s); trying the next", server.label, exc)
                last = exc
                continue
            except GenerationError:
                self._live.forget(server, prompt_id)
                raise
            self._pool.record_success(server)
            if answer.get("node_errors"):
                # 200 with node_errors: some output nodes were dropped, the others run
                log.warning(
                    "comfyui %s: prompt %s queued without the outputs of nodes %s",
                    server.label,
                    prompt_id,
                    ", ".join(sorted(str(k) for k in answer["node_errors"])),
                )
            log.info(
                "comfyui %s: prompt %s queued (workflow %s)",
                server.label,
                prompt_id,
                workflow.name,
            )
            return ids.run_id(server.key, prompt_id)
        raise last or BackendUnavailableError("no ComfyUI server is reachable")

    async def get_run(self, run_id: str) -> RunSnapshot:
        server, prompt_id = self._locate(run_id)
        live = self._live.states.get(prompt_id)
        queue = await server.client.queue()
        running = [item[1] for item in queue["queue_running"] if _is_item(item)]
        if prompt_id in running:
            return snapshot(run_id, RunStatus.RUNNING, "running", live=live)
        pending = sorted(
            (item for item in queue["queue_pending"] if _is_item(item)), key=_item_number
        )
        pending_ids = [item[1] for item in pending]
        if prompt_id in pending_ids:
            position = len(running) + pending_ids.index(prompt_id) + 1
            return snapshot(run_id, RunStatus.WAITING, "pending", queue_position=position)
        entry = await server.client.history(prompt_id)
        if entry is None:
            # Neither queued nor in history: deleted, or the server restarted (its history
            # lives in memory). The tracker fails the run after a few such answers.
            raise RunNotFoundError("ComfyUI has no such prompt", run_id=run_id)
        outcome, error = history_outcome(entry)
        if outcome == "success":
            items = output_items(entry.get("outputs") or {})
            if not items and live is not None and live.outputs:
                items = output_items(live.outputs)
            self._live.forget(server, prompt_id)
            outputs = media_outputs(items, server.client.view_url)
            return snapshot(run_id, RunStatus.SUCCESS, "success", outputs=outputs)
        if outcome == "interrupted":
            self._live.forget(server, prompt_id)
            return snapshot(run_id, RunStatus.CANCELLED, "interrupted")
        if outcome == "error":
            self._live.forget(server, prompt_id)
            log.warning("comfyui %s: prompt %s failed: %s", server.label, prompt_id, error)
            return snapshot(run_id, RunStatus.FAILED, f"execution_error {error}")
        return snapshot(run_id, RunStatus.RUNNING, "running", live=live)

    async def cancel_run(self, run_id: str) -> None:
        server, prompt_id = self._locate(run_id)
        queue = await server.client.queue()
        pending = {item[1] for item in queue["queue_pending"] if _is_item(item)}
        if prompt_id in pending:
            await server.client.delete_pending(prompt_id)
            queue = await server.client.queue()  # it may have started meanwhile
        running = {item[1] for item in queue["queue_running"] if _is_item(item)}
        if prompt_id in running:
            await server.client.interrupt(prompt_id)
        log.info("comfyui %s: prompt %s cancelled", server.label, prompt_id)

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        """Input files reach ComfyUI at submit time, on the server that runs the prompt: here
        the bytes are only wrapped as a data URI."""
        if not data:
            raise InvalidInputError("empty upload", field="file")
        if len(data) > MAX_IMAGE_BYTES:
            raise InvalidInputError("upload too large", field="file")
        mime = content_type if content_type.startswith("image/") else "image/png"
        return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

    async def list_deployments(self) -> list[DeploymentInfo]:
        return [
            DeploymentInfo(id=w.deployment_id, name=w.name, inputs=w.inputs)
            for w in await self._workflows.list_workflows()
        ]

    # -- extras used by the service and the admin commands --------------------------------

    async def find_submitted(self, deployment_id: str, run_ref: str) -> str | None:
        """After a crash during ``create_run``: the backend run id of ``run_ref``'s prompt when
        a server has it (queued, running or in history), else None."""
        prompt_id = ids.prompt_id_for(run_ref)
        for server in self._servers.values():
            try:
                queue = await server.client.queue()
                items = queue["queue_running"] + queue["queue_pending"]
                if any(_is_item(i) and i[1] == prompt_id for i in items):
                    return ids.run_id(server.key, prompt_id)
                if await server.client.history(prompt_id) is not None:
                    return ids.run_id(server.key, prompt_id)
            except GenerationError as exc:
                log.warning("comfyui %s: lookup of %s failed: %s", server.label, prompt_id, exc)
        return None

    async def check_workflow(self, document: bytes | str | Mapping[str, Any]) -> Analysis:
        """Parse and analyse a workflow for ``/workflow add`` against the first server that
        answers ``GET /object_info`` (without it, the class check is skipped and said so).
        Raises :class:`GraphError` for documents that are not API-format workflows."""
        graph = parse_workflow(document)
        object_info = None
        for server in self._servers.values():
            try:
                object_info = await server.client.object_info()
                break
            except GenerationError as exc:
                log.warning("comfyui %s: object_info failed: %s", server.label, exc)
        result = analyse(graph, object_info=object_info)
        if object_info is None:
            result.problems.append("server_unreachable")
        return result

    def breaker_open(self, url: str) -> bool:
        return self._pool.breaker_open(url)

    def _locate(self, run_id: str) -> tuple[Server, str]:
        located = self._pool.locate(run_id)
        self._ensure_started()
        return located


def _is_item(item: Any) -> bool:
    return isinstance(item, list | tuple) and len(item) >= 2 and isinstance(item[1], str)


def _item_number(item: Sequence[Any]) -> float:
    try:
        return float(item[0])
    except (TypeError, ValueError):
        return 0.0
