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

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from generation.comfyui import ids
from generation.comfyui.client import ComfyUIClient, normalize_url, ws_url
from generation.comfyui.graph import (
    Analysis,
    GraphError,
    ImageRef,
    analyse,
    image_input_names,
    parse_workflow,
    substitute,
)
from generation.comfyui.progress import (
    LiveState,
    history_outcome,
    media_outputs,
    output_items,
    snapshot,
)
from generation.comfyui.ws import EventStream
from generation.errors import (
    BackendUnavailableError,
    DeploymentNotFoundError,
    GenerationError,
    InvalidInputError,
    RateLimitedError,
    RunNotFoundError,
    WorkflowInvalidError,
)
from generation.models import DeploymentInfo, RunSnapshot, RunStatus
from generation.ports import WorkflowStore

log = logging.getLogger("generation.comfyui")

UpdateSink = Callable[[str], Awaitable[Any]]
_MAX_IMAGE_BYTES = 50_000_000
_PUSH_INTERVAL = 1.0  # seconds between progress pushes per prompt
_MAX_LIVE = 2000


@dataclass(slots=True)
class _Server:
    url: str
    key: str
    client: ComfyUIClient
    stream: EventStream | None = None
    queue_remaining: int | None = None  # from WS status frames (None: unknown)
    failures: int = 0
    opened_at: float | None = None
    live: set[str] = field(default_factory=set)  # prompt ids submitted by this process

    @property
    def label(self) -> str:
        return self.client.label


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
        self._max_queue = max_queue
        self._threshold = max(1, breaker_threshold)
        self._cooldown = breaker_cooldown
        self._websocket = websocket
        self._ws_options = {
            "recv_timeout": ws_recv_timeout,
            "backoff_initial": ws_backoff_initial,
            "backoff_max": ws_backoff_max,
        }
        self._servers: dict[str, _Server] = {}
        for raw in urls:
            url = normalize_url(raw)
            key = ids.server_key(url)
            if key in self._servers:
                continue
            client = ComfyUIClient(url, auth=auth, transport=transport, read_timeout=read_timeout)
            self._servers[key] = _Server(url=url, key=key, client=client)
        self._live: dict[str, LiveState] = {}
        self._last_push: dict[str, float] = {}
        self._sink: UpdateSink | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._started = False
        self._rotation = itertools.count()
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
        self._sink = sink

    # -- lifecycle ------------------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._started or not self._websocket:
            return
        self._started = True
        for server in self._servers.values():
            server.stream = EventStream(
                ws_url(server.url, self.client_id),
                auth=self._auth,
                on_message=lambda msg, s=server: self._on_message(s, msg),
                on_connect=lambda s=server: self._on_connect(s),
                on_disconnect=lambda s=server: self._on_disconnect(s),
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
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
        images = await self._decode_images(workflow.graph, inputs)
        prompt_id = ids.prompt_id_for(run_ref)
        last: GenerationError | None = None
        for server in await self._candidates():
            try:
                graph = await self._prepare(server, workflow.graph, inputs, images, prompt_id)
                # Known before the POST: the prompt may run and end before the answer arrives.
                self._remember(server, prompt_id, graph)
                answer = await server.client.submit(
                    graph, client_id=self.client_id, prompt_id=prompt_id
                )
            except BackendUnavailableError as exc:
                self._forget(server, prompt_id)
                self._record_failure(server)
                log.warning("comfyui %s: submit failed (%s); trying the next", server.label, exc)
                last = exc
                continue
            except GenerationError:
                self._forget(server, prompt_id)
                raise
            self._record_success(server)
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
        live = self._live.get(prompt_id)
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
            self._forget(server, prompt_id)
            outputs = media_outputs(items, server.client.view_url)
            return snapshot(run_id, RunStatus.SUCCESS, "success", outputs=outputs)
        if outcome == "interrupted":
            self._forget(server, prompt_id)
            return snapshot(run_id, RunStatus.CANCELLED, "interrupted")
        if outcome == "error":
            self._forget(server, prompt_id)
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
        if len(data) > _MAX_IMAGE_BYTES:
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

    # -- server choice --------------------------------------------------------------------

    def _usable(self, server: _Server) -> bool:
        if server.opened_at is None:
            return True
        return self._clock() - server.opened_at >= self._cooldown  # half-open probe

    def _record_failure(self, server: _Server) -> None:
        server.failures += 1
        if server.failures >= self._threshold:
            if server.opened_at is None:
                log.warning(
                    "comfyui %s: circuit open after %d failures", server.label, server.failures
                )
            server.opened_at = self._clock()

    def _record_success(self, server: _Server) -> None:
        if server.opened_at is not None:
            log.info("comfyui %s: circuit closed", server.label)
        server.failures = 0
        server.opened_at = None

    def breaker_open(self, url: str) -> bool:
        server = self._servers.get(ids.server_key(normalize_url(url)))
        return server is not None and not self._usable(server)

    async def _queue_length(self, server: _Server) -> int | None:
        """Queue length (WS status when connected, else ``GET /prompt``); None when down."""
        if (
            server.stream is not None
            and server.stream.connected
            and server.queue_remaining is not None
        ):
            return server.queue_remaining
        try:
            remaining = await server.client.queue_remaining()
        except BackendUnavailableError as exc:
            log.warning("comfyui %s: health check failed: %s", server.label, exc)
            self._record_failure(server)
            return None
        server.queue_remaining = remaining
        return remaining

    async def _candidates(self) -> list[_Server]:
        usable = [s for s in self._servers.values() if self._usable(s)]
        lengths = await asyncio.gather(*(self._queue_length(s) for s in usable))
        alive = [
            (length, s) for length, s in zip(lengths, usable, strict=True) if length is not None
        ]
        if not alive:
            raise BackendUnavailableError("no ComfyUI server is reachable")
        if self._max_queue is not None and all(n >= self._max_queue for n, _ in alive):
            raise RateLimitedError(f"every ComfyUI queue has {self._max_queue}+ prompts")
        turn = next(self._rotation)
        order = {s.key: (i - turn) % len(alive) for i, (_, s) in enumerate(alive)}
        alive.sort(key=lambda pair: (pair[0], order[pair[1].key]))
        return [s for _, s in alive]

    def _locate(self, run_id: str) -> tuple[_Server, str]:
        parsed = ids.parse_run_id(run_id)
        if parsed is None:
            raise InvalidInputError("not a ComfyUI run id", field="run_id")
        key, prompt_id = parsed
        server = self._servers.get(key)
        if server is None:
            raise RunNotFoundError(
                "the ComfyUI server of this run is not configured", run_id=run_id
            )
        self._ensure_started()
        return server, prompt_id

    # -- submit helpers -------------------------------------------------------------------

    async def _decode_images(
        self, graph: Mapping[str, Any], inputs: Mapping[str, Any]
    ) -> dict[str, tuple[bytes, str]]:
        """The image inputs of the request as (bytes, mime), read from data URIs or URLs."""
        images: dict[str, tuple[bytes, str]] = {}
        for name in image_input_names(graph):
            value = inputs.get(name)
            if not isinstance(value, str) or not value:
                continue
            if value.startswith("data:"):
                images[name] = _decode_data_uri(value, name)
            elif value.startswith(("http://", "https://")):
                try:
                    response = await self._fetch.get(value)
                    response.raise_for_status()
                except httpx.HTTPError as exc:
                    raise BackendUnavailableError(
                        f"could not fetch {name}: {type(exc).__name__}"
                    ) from exc
                mime = response.headers.get("content-type", "image/png").split(";")[0]
                images[name] = (response.content, mime)
            else:
                raise InvalidInputError(
                    f"{name} is not an image", field=name.removeprefix("input_")
                )
        return images

    async def _prepare(
        self,
        server: _Server,
        graph: Mapping[str, Any],
        inputs: Mapping[str, Any],
        images: Mapping[str, tuple[bytes, str]],
        prompt_id: str,
    ) -> dict[str, Any]:
        values: dict[str, Any] = {k: v for k, v in inputs.items() if k not in images}
        for name, (data, mime) in images.items():
            ext = "jpg" if mime == "image/jpeg" else "png"
            uploaded = await server.client.upload_image(
                data, f"tgbot_{prompt_id[:8]}_{name.removeprefix('input_')}.{ext}", mime
            )
            values[name] = ImageRef(uploaded["name"], uploaded["subfolder"])
        seed = inputs.get("input_seed")
        try:
            return substitute(graph, values, seed=seed if isinstance(seed, int) else None)
        except GraphError as exc:
            raise WorkflowInvalidError(
                exc.message,
                node_id=exc.node_id,
                input_name=exc.input_name,
                error_type=exc.code,
                reason=exc.message,
            ) from None

    # -- live state -----------------------------------------------------------------------

    def _remember(self, server: _Server, prompt_id: str, graph: Mapping[str, Any]) -> None:
        self._live[prompt_id] = LiveState.for_graph(prompt_id, graph)
        server.live.add(prompt_id)
        while len(self._live) > _MAX_LIVE:
            oldest = next(iter(self._live))
            self._live.pop(oldest)
            for s in self._servers.values():
                s.live.discard(oldest)

    def _forget(self, server: _Server, prompt_id: str) -> None:
        self._live.pop(prompt_id, None)
        self._last_push.pop(prompt_id, None)
        server.live.discard(prompt_id)

    def _on_message(self, server: _Server, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        data = message.get("data")
        if not isinstance(data, Mapping):
            return
        if kind == "status":
            try:
                server.queue_remaining = int(data["status"]["exec_info"]["queue_remaining"])
            except (KeyError, TypeError, ValueError):
                pass
            return
        prompt_id = data.get("prompt_id")
        if not isinstance(prompt_id, str):
            # On reconnect the server replays ``executing`` without a prompt_id.
            return
        live = self._live.get(prompt_id)
        if live is None:
            return
        changed = live.apply(str(kind), data)
        final = kind == "executing" and data.get("node") is None
        if changed:
            self._push(server, prompt_id, urgent=final or kind == "execution_start")

    def _on_connect(self, server: _Server) -> None:
        # Messages sent while we were away are lost: re-read every prompt of this server.
        for prompt_id in list(server.live):
            self._push(server, prompt_id, urgent=True)

    def _on_disconnect(self, server: _Server) -> None:
        server.queue_remaining = None

    def _push(self, server: _Server, prompt_id: str, *, urgent: bool) -> None:
        if self._sink is None:
            return
        now = time.monotonic()
        if not urgent and now - self._last_push.get(prompt_id, 0.0) < _PUSH_INTERVAL:
            return
        self._last_push[prompt_id] = now
        task = asyncio.get_running_loop().create_task(
            self._deliver(ids.run_id(server.key, prompt_id))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, run_id: str) -> None:
        sink = self._sink
        if sink is None:
            return
        try:
            await sink(run_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("comfyui: update sink failed for %s", run_id)


def _is_item(item: Any) -> bool:
    return isinstance(item, list | tuple) and len(item) >= 2 and isinstance(item[1], str)


def _item_number(item: Sequence[Any]) -> float:
    try:
        return float(item[0])
    except (TypeError, ValueError):
        return 0.0


def _decode_data_uri(value: str, name: str) -> tuple[bytes, str]:
    head, sep, payload = value.partition(",")
    if not sep or ";base64" not in head.lower():
        raise InvalidInputError(
            f"{name} is not a base64 data URI", field=name.removeprefix("input_")
        )
    mime = head[5:].split(";", 1)[0].lower() or "image/png"
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"{name} is not valid base64", field=name.removeprefix("input_")
        ) from None
    if not data or len(data) > _MAX_IMAGE_BYTES:
        raise InvalidInputError(f"{name} is empty or too large", field=name.removeprefix("input_"))
    return data, mime


class AuthTransport(httpx.AsyncBaseTransport):
    """Download transport: requests for the configured ComfyUI servers (their ``/view``
    output URLs) go to the network with ``Authorization`` added; everything else goes to
    ``fallback`` (the network when None)."""

    def __init__(
        self,
        urls: Sequence[str],
        auth: str | None,
        fallback: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._origins = {_origin(u) for u in urls}
        self._auth = auth
        self._network = httpx.AsyncHTTPTransport()
        self._fallback = fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(str(request.url)) in self._origins:
            if self._auth:
                request.headers["Authorization"] = self._auth
            return await self._network.handle_async_request(request)
        transport = self._fallback or self._network
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._network.aclose()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, (parts.hostname or "").lower(), port)
