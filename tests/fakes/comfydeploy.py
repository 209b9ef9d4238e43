"""A faithful ComfyDeploy v2 test double (reference/comfydeploy-api.md §1.13).

Use it in process through ``fake.transport`` (an ``httpx.MockTransport``) or as a real HTTP
server on 127.0.0.1 (``async with fake.serve() as base_url``). Runs follow scripted
:class:`Timeline`s that the *test* drives with :meth:`FakeComfyDeploy.advance` and
:meth:`FakeComfyDeploy.run_to_end`; nothing depends on wall time. Every status step sends the
exact webhook payload of §1.9 through ``fake.webhook_sink`` (an ``async (url, payload)``
callable; ``payload is None`` means a GET retry) or, by default, a real HTTP POST.

Example::

    fake = FakeComfyDeploy()
    dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    client = ComfyDeployClient(fake.auth_token, fake.base_url, transport=fake.transport)
    run_id = await client.create_run(dep, {"input_prompt": "a fox"}, webhook="http://bot/wh")
    await fake.run_to_end(run_id)
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import io
import json
import mimetypes
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

TRANSPORT_BASE_URL = "http://comfydeploy.test/api"
TERMINAL = frozenset({"success", "failed", "timeout", "cancelled"})
WAITING = frozenset({"not-started", "queued"})
UPLOAD_LIMIT = 250 * 1024 * 1024

WebhookSink = Callable[[str, dict[str, Any] | None], Awaitable[int | None]]


# --------------------------------------------------------------------------- media bytes


@cache
def _image_bytes(fmt: str, color: tuple[int, int, int] = (200, 60, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "GIF":
        frames = [Image.new("RGB", (32, 32), c) for c in (color, (30, 60, 200))]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    else:
        Image.new("RGB", (64, 48), color).save(buf, fmt)
    return buf.getvalue()


def _mp4_bytes() -> bytes:
    """An ISO-BMFF-looking blob (ftyp + free + mdat): enough for sniffers, not playable."""

    def box(kind: bytes, payload: bytes) -> bytes:
        return (8 + len(payload)).to_bytes(4, "big") + kind + payload

    return (
        box(b"ftyp", b"isom\x00\x00\x02\x00isomiso2avc1mp41")
        + box(b"free", b"")
        + box(b"mdat", b"\x00" * 64)
    )


@dataclass(frozen=True, slots=True)
class OutputVariant:
    key: str  # outputs[].data key
    filename: str
    content_type: str
    extra_item: dict[str, Any] = field(default_factory=dict)
    extra_data: dict[str, Any] = field(default_factory=dict)
    node_class: str = "SaveImage"

    def content(self) -> bytes:
        if self.content_type == "image/png":
            return _image_bytes("PNG")
        if self.content_type == "image/webp":
            return _image_bytes("WEBP")
        if self.content_type == "image/gif":
            return _image_bytes("GIF")
        return _mp4_bytes()


OUTPUT_VARIANTS: dict[str, OutputVariant] = {
    "png": OutputVariant("images", "ComfyUI_00001_.png", "image/png"),
    "webp": OutputVariant(
        "images",
        "ComfyDeploy_00001_.webp",
        "image/webp",
        extra_item={"output_id": "output_images"},
        node_class="ComfyDeployOutputImage",
    ),
    "gif": OutputVariant(
        "gifs",
        "AnimateDiff_00001.gif",
        "image/gif",
        extra_item={"format": "image/gif", "frame_rate": 8.0},
        node_class="VHS_VideoCombine",
    ),
    "mp4_gifs": OutputVariant(
        "gifs",
        "AnimateDiff_00001.mp4",
        "video/mp4",
        extra_item={"format": "video/h264-mp4", "frame_rate": 8.0},
        node_class="VHS_VideoCombine",
    ),
    "mp4_images": OutputVariant(
        "images",
        "ComfyUI_00001_.mp4",
        "video/mp4",
        extra_data={"animated": [True]},
        node_class="SaveVideo",
    ),
}


# --------------------------------------------------------------------------- timelines


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted event: a status post, a live-progress tick, or a stored output."""

    kind: str  # "status" | "tick" | "output"
    status: str | None = None
    progress: float | None = None
    live_status: str | None = None
    output: str | None = None  # key of OUTPUT_VARIANTS

    @classmethod
    def to(cls, status: str) -> Step:
        return cls("status", status=status)

    @classmethod
    def tick(cls, progress: float, live_status: str) -> Step:
        return cls("tick", progress=progress, live_status=live_status)

    @classmethod
    def out(cls, variant: str) -> Step:
        if variant not in OUTPUT_VARIANTS:
            raise ValueError(f"unknown output variant {variant!r}")
        return cls("output", output=variant)


DEFAULT_TICKS: tuple[tuple[float, str], ...] = (
    (0.14, "Executing CLIPTextEncode"),
    (0.57, "Executing KSampler"),
    (0.86, "Executing SaveImage"),
)


@dataclass(frozen=True, slots=True)
class Timeline:
    """The scripted life of a run after creation (creation itself is ``not-started``)."""

    steps: tuple[Step, ...] = ()

    @classmethod
    def _start(cls, ticks: Sequence[tuple[float, str]]) -> list[Step]:
        steps = [Step.to("queued"), Step.to("started"), Step.to("running")]
        steps += [Step.tick(p, s) for p, s in ticks]
        return steps

    @classmethod
    def success(
        cls,
        *outputs: str,
        ticks: Sequence[tuple[float, str]] = DEFAULT_TICKS,
        uploading: bool = False,
    ) -> Timeline:
        """queued → started → running → ticks → outputs (one per variant) → success."""
        steps = cls._start(ticks)
        if uploading:
            steps.append(Step.to("uploading"))
        steps += [Step.out(v) for v in (outputs or ("png",))]
        steps.append(Step.to("success"))
        return cls(tuple(steps))

    @classmethod
    def failed(cls, ticks: Sequence[tuple[float, str]] = DEFAULT_TICKS[:1]) -> Timeline:
        """Ends in ``failed`` with no reason anywhere (ComfyDeploy drops error outputs)."""
        return cls((*cls._start(ticks), Step.to("failed")))

    @classmethod
    def timeout(cls, ticks: Sequence[tuple[float, str]] = DEFAULT_TICKS[:2]) -> Timeline:
        return cls((*cls._start(ticks), Step.to("timeout")))

    @classmethod
    def stall(cls) -> Timeline:
        """Stays ``not-started`` forever (queue stall)."""
        return cls(())


# --------------------------------------------------------------------------- state records


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class FakeDeployment:
    id: str
    name: str
    inputs: list[str]
    timeline: Timeline


@dataclass
class FakeRun:
    id: str
    deployment_id: str
    inputs: dict[str, Any]
    webhook: str | None
    webhook_intermediate_status: bool
    timeline: Timeline
    seq: int
    status: str = "not-started"
    progress: float = 0.0
    live_status: str | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    step_index: int = 0
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)
    queued_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    held_webhooks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def wants_output_events(self) -> bool:
        if not self.webhook:
            return False
        query = parse_qs(urlsplit(self.webhook).query)
        events = ",".join(query.get("target_events", []))
        return "run.output" in events.split(",")


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str  # below the /api base, percent-decoded per segment
    query: dict[str, str]
    json: Any
    authorized: bool
    status: int = 0


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    url: str
    method: str  # "POST", or "GET" for retry-as-GET attempts
    payload: dict[str, Any] | None
    status: int | None  # answer of the receiver; None when it raised
    error: str | None = None


@dataclass(slots=True)
class _Gate:
    """A held route: requests wait on ``event``; ``drop`` (set on release) makes the
    requests held before handling vanish, as if they never arrived."""

    event: asyncio.Event
    after_handling: bool
    drop: bool = False


@dataclass
class _Fault:
    remaining: int
    status: int


@dataclass
class _TransportFault:
    remaining: int
    exc_type: type[httpx.TransportError]
    route: str | None
    after_handling: bool


@dataclass(slots=True)
class _Req:
    method: str
    segments: list[str]
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class _Resp:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> _Resp:
    return _Resp(status, json.dumps(body).encode(), "application/json", headers or {})


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _uuid_error(loc: list[Any], value: Any) -> _Resp:
    return _json(
        422,
        {
            "detail": [
                {
                    "type": "uuid_parsing",
                    "loc": loc,
                    "msg": "Input should be a valid UUID, invalid character: expected an "
                    "optional prefix of `urn:uuid:` followed by [0-9a-fA-F-], found `x` at 1",
                    "input": value,
                    "ctx": {"error": "invalid character"},
                }
            ]
        },
    )


# --------------------------------------------------------------------------- the double


class FakeComfyDeploy:
    """In-process ComfyDeploy. All state is public for test introspection."""

    def __init__(self, *, auth_token: str = "test-api-key") -> None:
        self.auth_token = auth_token
        self.base_url = TRANSPORT_BASE_URL
        self.deployments: dict[str, FakeDeployment] = {}
        self.runs: dict[str, FakeRun] = {}
        self.files: dict[str, tuple[bytes, str]] = {}  # name -> (bytes, content type)
        self.uploads: list[dict[str, Any]] = []
        self.requests: list[RecordedRequest] = []
        self.create_calls: list[Any] = []  # JSON bodies of every create request (any outcome)
        self.cancel_calls: list[str] = []
        self.webhooks_sent: list[WebhookRecord] = []
        self.webhooks_dropped: list[dict[str, Any]] = []
        self.transport_faults_raised: list[str | None] = []  # route of each injected fault
        # webhook knobs
        self.webhook_sink: WebhookSink | None = None
        self.webhook_transport: httpx.AsyncBaseTransport | None = None
        self.duplicate_webhooks = False
        self.reorder_webhooks = False
        self.drop_final_webhook = False
        self.retry_as_get = False
        self.upload_limit = UPLOAD_LIMIT
        self.presigned_outputs = False  # output URLs carry an S3-style signature query
        # faults
        self._create_faults: list[_Fault] = []
        self._lost_answers: list[_Fault] = []
        self._get_faults: list[_Fault] = []
        self._transport_faults: list[_TransportFault] = []
        self._seq = 0
        self._background: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._transport = httpx.MockTransport(self._handle_httpx)
        # gates: hold requests of a route (see hold()); counters for tests to wait on
        self._gates: dict[str, _Gate] = {}
        self.held: dict[str, int] = {}  # route -> requests waiting at a gate right now
        self.arrivals: dict[str, int] = {}  # route -> requests that arrived (any outcome)

    # ---------------------------------------------------------------- setup

    @property
    def transport(self) -> httpx.MockTransport:
        return self._transport

    def add_deployment(
        self,
        deployment_id: str | None = None,
        *,
        inputs: Sequence[str] = ("input_prompt",),
        timeline: Timeline | None = None,
        name: str | None = None,
    ) -> str:
        dep_id = deployment_id or str(uuid.uuid4())
        self.deployments[dep_id] = FakeDeployment(
            id=dep_id,
            name=name or f"deployment-{len(self.deployments) + 1}",
            inputs=list(inputs),
            timeline=timeline if timeline is not None else Timeline.success(),
        )
        return dep_id

    def fail_next_creates(self, k: int, status: int = 500) -> None:
        """The next ``k`` create calls answer ``status``; no run is created."""
        self._create_faults.append(_Fault(k, status))

    def lose_next_create_answers(self, k: int, status: int = 504) -> None:
        """The next ``k`` create calls DO queue their run (webhooks and all), then answer
        ``status`` as a gateway does when it gives up waiting (e.g. Cloudflare's 504)."""
        self._lost_answers.append(_Fault(k, status))

    def fail_next_gets(self, k: int, status: int = 500) -> None:
        self._get_faults.append(_Fault(k, status))

    def fail_next_transport(
        self,
        k: int,
        exc_type: type[httpx.TransportError] = httpx.ConnectError,
        *,
        route: str | None = None,
        after_handling: bool = False,
    ) -> None:
        """Transport mode only: raise ``exc_type`` for the next ``k`` requests (of ``route``:
        "create", "get", "cancel", "upload", "deployments"). With ``after_handling`` the
        request IS processed (a run gets created) and the answer is lost."""
        self._transport_faults.append(_TransportFault(k, exc_type, route, after_handling))

    def hold(self, route: str, *, after_handling: bool = False) -> None:
        """Hold every request of ``route`` ("create", "get", "files", ...) until
        :meth:`release`. Before handling, the request has not reached the double (no run is
        created); with ``after_handling`` it is processed and only the answer waits (a run
        exists but the caller has not heard of it). ``held[route]`` counts waiting requests."""
        self._gates[route] = _Gate(asyncio.Event(), after_handling)

    def release(self, route: str | None = None, *, drop: bool = False) -> None:
        """Open the gate of ``route`` (all gates when None); later requests pass freely."""
        for name in [route] if route is not None else list(self._gates):
            gate = self._gates.pop(name, None)
            if gate is not None:
                gate.drop = drop
                gate.event.set()

    async def _pass_gate(self, route: str | None, *, after_handling: bool) -> bool:
        """Wait at the gate of ``route`` if any; True when the request is to be dropped."""
        gate = self._gates.get(route or "")
        if route is None or gate is None or gate.after_handling != after_handling:
            return False
        self.held[route] = self.held.get(route, 0) + 1
        try:
            await gate.event.wait()
        finally:
            self.held[route] -= 1
        return gate.drop and not after_handling

    def file_bytes(self, url: str) -> bytes | None:
        """Bytes behind an output or upload URL of this double (any base)."""
        path = urlsplit(url).path
        marker = "/files/"
        if marker not in path:
            return None
        entry = self.files.get(unquote(path.split(marker, 1)[1]))
        return entry[0] if entry else None

    # ---------------------------------------------------------------- driving runs

    async def advance(self, run_id: str | None = None, steps: int = 1) -> int:
        """Move one run (or every run) ``steps`` steps forward; returns steps applied."""
        targets = [self.runs[run_id]] if run_id is not None else list(self.runs.values())
        applied = 0
        for _ in range(max(0, steps)):
            for run in targets:
                if await self._step(run):
                    applied += 1
        return applied

    async def run_to_end(self, run_id: str) -> FakeRun:
        """Play the rest of the run's timeline (a stalled run stays ``not-started``)."""
        run = self.runs[run_id]
        for _ in range(len(run.timeline.steps) + 1):
            if not await self._step(run):
                break
        await self._flush_held(run)
        return run

    async def set_status(self, run_id: str, status: str, *, webhook: bool = True) -> None:
        """Force a status post (e.g. a duplicate or a late ``running`` after ``success``)."""
        run = self.runs[run_id]
        if not run.terminal:
            self._apply_status(run, status)
        if webhook:
            await self._deliver(run, [self._payload(run, "run.updated")], final=run.terminal)

    async def flush_webhooks(self) -> None:
        """Wait for background webhook deliveries (the cancel webhook)."""
        for _ in range(100):  # bounded: deliveries may schedule nothing new but be safe
            if not self._background:
                return
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def aclose(self) -> None:
        await self.flush_webhooks()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> FakeComfyDeploy:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _step(self, run: FakeRun) -> bool:
        if run.terminal or run.step_index >= len(run.timeline.steps):
            return False
        step = run.timeline.steps[run.step_index]
        run.step_index += 1
        run.updated_at = _now()
        payloads: list[dict[str, Any]] = []
        if step.kind == "status":
            assert step.status is not None
            self._apply_status(run, step.status)
            payloads.append(self._payload(run, "run.updated"))
        elif step.kind == "tick":
            run.progress = float(step.progress or 0.0)
            run.live_status = step.live_status
            if run.webhook_intermediate_status:
                payloads.append(self._payload(run, "run.updated", outputs=[]))
        elif step.kind == "output":
            assert step.output is not None
            output = self._make_output(run, OUTPUT_VARIANTS[step.output])
            run.outputs.append(output)
            if run.wants_output_events:
                payloads.append(self._payload(run, "run.output", outputs=[output]))
        await self._deliver(run, payloads, final=run.terminal)
        return True

    def _apply_status(self, run: FakeRun, status: str) -> None:
        now = _now()
        run.status = status
        run.updated_at = now
        if status == "queued":
            run.queued_at = run.queued_at or now
        elif status == "started":
            run.started_at = run.started_at or now
        if status in TERMINAL:
            run.ended_at = now

    def _make_output(self, run: FakeRun, variant: OutputVariant) -> dict[str, Any]:
        index = len(run.outputs) + 1
        base, ext = variant.filename.rsplit(".", 1)
        filename = f"{base}{index:02d}.{ext}" if index > 1 else variant.filename
        name = f"{run.id}_{filename}"
        self.files[name] = (variant.content(), variant.content_type)
        url = f"{self.base_url}/files/{name}"
        if self.presigned_outputs:  # like S3: the query is a credential (the path still serves)
            url += "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=" + secrets.token_hex(32)
        item = {
            "url": url,
            "type": "output",
            "filename": filename,
            "subfolder": "",
            "is_public": True,
            "upload_duration": 0.41,
            **variant.extra_item,
        }
        now = _now()
        return {
            "id": str(uuid.uuid4()),
            "run_id": run.id,
            "output_id": variant.extra_item.get("output_id"),
            "type": None,
            "node_id": None,
            "node_meta": {"node_id": str(8 + index), "node_class": variant.node_class},
            "created_at": now,
            "updated_at": now,
            "data": {variant.key: [item], **variant.extra_data},
        }

    @staticmethod
    def _payload(
        run: FakeRun, event_type: str, outputs: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        return {
            "event_type": event_type,
            "status": run.status,
            "live_status": run.live_status,
            "progress": run.progress,
            "run_id": run.id,
            "outputs": json.loads(json.dumps(run.outputs if outputs is None else outputs)),
        }

    # ---------------------------------------------------------------- webhooks

    async def _deliver(self, run: FakeRun, payloads: list[dict[str, Any]], *, final: bool) -> None:
        if not run.webhook:
            return
        if final and self.drop_final_webhook:
            terminal = [p for p in payloads if p["status"] in TERMINAL]
            self.webhooks_dropped.extend(terminal)
            payloads = [p for p in payloads if p["status"] not in TERMINAL]
        if self.reorder_webhooks:
            # A step's own webhooks go out in reverse, and every other step is held back and
            # delivered after the next step's (an earlier status arriving after a later one).
            payloads = list(reversed(payloads))
            if not final:
                if not payloads:
                    return
                if not run.held_webhooks:
                    run.held_webhooks = payloads
                    return
            payloads, run.held_webhooks = payloads + run.held_webhooks, []
        for payload in payloads:
            for _ in range(2 if self.duplicate_webhooks else 1):
                await self._send(run.webhook, payload)

    async def _flush_held(self, run: FakeRun) -> None:
        held, run.held_webhooks = run.held_webhooks, []
        for payload in held:
            await self._send(run.webhook or "", payload)

    async def _send(self, url: str, payload: dict[str, Any]) -> None:
        ok = await self._send_once(url, "POST", payload)
        if ok or not self.retry_as_get:
            return
        # ComfyDeploy's retry bug (§1.9): attempts 2 and 3 go out as GET, without the body.
        for _ in range(2):
            if await self._send_once(url, "GET", None):
                return

    async def _send_once(self, url: str, method: str, payload: dict[str, Any] | None) -> bool:
        status: int | None
        try:
            if self.webhook_sink is not None:
                answer = await self.webhook_sink(url, payload)
                status = 200 if answer is None else int(answer)
            else:
                if self._http is None:
                    self._http = httpx.AsyncClient(transport=self.webhook_transport, timeout=20.0)
                response = await self._http.request(method, url, json=payload)
                status = response.status_code
        except Exception as exc:
            self.webhooks_sent.append(WebhookRecord(url, method, payload, None, repr(exc)))
            return False
        self.webhooks_sent.append(WebhookRecord(url, method, payload, status))
        return 200 <= status < 300

    # ---------------------------------------------------------------- HTTP entry points

    async def _handle_httpx(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        req = self._parse(request.method, request.url.raw_path, dict(request.headers), body)
        route = self._route_name(req)
        fault = self._take_transport_fault(route)
        if fault is not None:
            self.transport_faults_raised.append(route)
        if fault is not None and not fault.after_handling:
            raise fault.exc_type("injected transport fault", request=request)
        resp = await self._dispatch(req)
        if fault is not None:
            raise fault.exc_type("injected transport fault (after handling)", request=request)
        return httpx.Response(
            resp.status,
            content=resp.body,
            headers={"content-type": resp.content_type, **resp.headers},
        )

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Tiny ASGI app used by :meth:`serve` (and usable with ``httpx.ASGITransport``)."""
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        raw_path = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            raw_path += b"?" + scope["query_string"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        req = self._parse(scope["method"], raw_path, headers, b"".join(chunks))
        resp = await self._dispatch(req)
        out_headers = [(b"content-type", resp.content_type.encode())]
        out_headers += [(k.encode(), v.encode()) for k, v in resp.headers.items()]
        await send({"type": "http.response.start", "status": resp.status, "headers": out_headers})
        await send({"type": "http.response.body", "body": resp.body})

    @contextlib.asynccontextmanager
    async def serve(self) -> AsyncIterator[str]:
        """Serve on 127.0.0.1 (free port); yields the base URL ending in ``/api``."""
        from tests.fakes.loopback import serve_asgi

        previous = self.base_url
        async with serve_asgi(self.asgi) as root:
            self.base_url = f"{root}/api"
            try:
                yield self.base_url
            finally:
                self.base_url = previous

    # ---------------------------------------------------------------- routing

    @staticmethod
    def _parse(method: str, raw_path: bytes, headers: dict[str, str], body: bytes) -> _Req:
        path, _, query = raw_path.decode("latin-1").partition("?")
        segments = [unquote(s) for s in path.split("/") if s]
        return _Req(
            method=method.upper(),
            segments=segments,
            query={k: v[0] for k, v in parse_qs(query).items()},
            headers={k.lower(): v for k, v in headers.items()},
            body=body,
        )

    @staticmethod
    def _route_name(req: _Req) -> str | None:
        seg = req.segments[1:] if req.segments[:1] == ["api"] else req.segments
        if seg == ["run", "deployment", "queue"] or (seg == ["run"] and req.method == "POST"):
            return "create"
        if seg[:1] == ["run"] and len(seg) == 3 and seg[2] == "cancel":
            return "cancel"
        if seg[:1] == ["run"]:
            return "get"
        if seg == ["file", "upload"]:
            return "upload"
        if seg == ["deployments"]:
            return "deployments"
        if seg[:1] == ["files"]:
            return "files"
        return None

    def _take_transport_fault(self, route: str | None) -> _TransportFault | None:
        for fault in self._transport_faults:
            if fault.remaining > 0 and (fault.route is None or fault.route == route):
                fault.remaining -= 1
                return fault
        return None

    @staticmethod
    def _take(faults: list[_Fault]) -> _Fault | None:
        for fault in faults:
            if fault.remaining > 0:
                fault.remaining -= 1
                return fault
        return None

    async def _dispatch(self, req: _Req) -> _Resp:
        authorized = req.headers.get("authorization") == f"Bearer {self.auth_token}"
        body_json: Any = None
        if req.body and req.headers.get("content-type", "").startswith("application/json"):
            try:
                body_json = json.loads(req.body)
            except ValueError:
                body_json = ...
        route = self._route_name(req)
        if route is not None:
            self.arrivals[route] = self.arrivals.get(route, 0) + 1
        if await self._pass_gate(route, after_handling=False):
            return _json(503, {"detail": "dropped before it arrived (test gate)"})
        if route == "create":
            self.create_calls.append(body_json)
        resp = self._route(req, route, authorized, body_json)
        resp = await resp if asyncio.iscoroutine(resp) else resp
        await self._pass_gate(route, after_handling=True)
        seg = req.segments[1:] if req.segments[:1] == ["api"] else req.segments
        self.requests.append(
            RecordedRequest(
                req.method,
                "/" + "/".join(seg),
                req.query,
                None if body_json is ... else body_json,
                authorized,
                resp.status,
            )
        )
        return resp

    def _route(self, req: _Req, route: str | None, authorized: bool, body: Any) -> Any:
        if req.segments[:1] != ["api"] or route is None:
            return _json(404, {"detail": "Not Found"})
        seg = req.segments[1:]
        if route == "files":
            return self._serve_file("/".join(seg[1:]), req.method)
        if not authorized:
            return _json(401, {"detail": "Invalid or missing token"})
        if route == "create":
            if req.method != "POST":
                return _json(405, {"detail": "Method Not Allowed"})
            return self._create(body)
        if route == "cancel":
            if req.method != "POST":
                return _json(405, {"detail": "Method Not Allowed"})
            return self._cancel(seg[1])
        if route == "get":
            if req.method != "GET":
                return _json(405, {"detail": "Method Not Allowed"})
            if len(seg) == 1:  # legacy GET /run?run_id=
                return self._get(req.query.get("run_id", ""), req.query, ["query", "run_id"])
            if len(seg) != 2:
                return _json(404, {"detail": "Not Found"})
            return self._get(seg[1], req.query, ["path", "run_id"])
        if route == "upload":
            if req.method != "POST":
                return _json(405, {"detail": "Method Not Allowed"})
            return self._upload(req)
        if route == "deployments":
            if req.method != "GET":
                return _json(405, {"detail": "Method Not Allowed"})
            return _json(200, [self._deployment_body(d) for d in self.deployments.values()])
        return _json(404, {"detail": "Not Found"})  # pragma: no cover

    # ---------------------------------------------------------------- handlers

    def _create(self, body: Any) -> _Resp:
        fault = self._take(self._create_faults)
        if fault is not None:
            if fault.status == 429:
                return _json(429, {"detail": "Too Many Requests"}, {"retry-after": "1"})
            return _Resp(fault.status, b"Internal Server Error", "text/plain")
        if body is ... or not isinstance(body, dict):
            return _json(
                422,
                {
                    "detail": [
                        {
                            "type": "model_attributes_type",
                            "loc": ["body"],
                            "msg": "Input should be a valid dictionary or object to extract fields "
                            "from",
                            "input": None if body is ... else body,
                        }
                    ]
                },
            )
        dep_id = body.get("deployment_id")
        if dep_id is None:
            return _json(
                422,
                {
                    "detail": [
                        {
                            "type": "missing",
                            "loc": ["body", "deployment_id"],
                            "msg": "Field required",
                            "input": body,
                        }
                    ]
                },
            )
        if not _is_uuid(dep_id):
            return _uuid_error(["body", "deployment_id"], dep_id)
        inputs = body.get("inputs", {})
        if inputs is None:
            inputs = {}
        if not isinstance(inputs, dict):
            return _json(
                422,
                {
                    "detail": [
                        {
                            "type": "dict_type",
                            "loc": ["body", "inputs"],
                            "msg": "Input should be a valid dictionary",
                            "input": inputs,
                        }
                    ]
                },
            )
        deployment = self.deployments.get(str(uuid.UUID(dep_id))) or self.deployments.get(dep_id)
        if deployment is None:
            return _json(404, {"detail": "Deployment not found"})
        webhook = body.get("webhook")
        self._seq += 1
        run = FakeRun(
            id=str(uuid.uuid4()),
            deployment_id=deployment.id,
            inputs=inputs,
            webhook=webhook if isinstance(webhook, str) and webhook else None,
            webhook_intermediate_status=body.get("webhook_intermediate_status") is True,
            timeline=deployment.timeline,
            seq=self._seq,
        )
        self.runs[run.id] = run
        lost = self._take(self._lost_answers)
        if lost is not None:
            return _Resp(
                lost.status, b"<html><body>504 Gateway Time-out</body></html>", "text/html"
            )
        return _json(200, {"run_id": run.id})

    def _get(self, run_id: str, query: dict[str, str], loc: list[str]) -> _Resp:
        fault = self._take(self._get_faults)
        if fault is not None:
            return _Resp(fault.status, b"Internal Server Error", "text/plain")
        if not _is_uuid(run_id):
            return _uuid_error(loc, run_id)
        run = self.runs.get(run_id)
        if run is None:
            return _json(404, {"detail": "Run not found"})
        return _json(200, self.run_body(run, queue_position=query.get("queue_position") == "true"))

    def run_body(self, run: FakeRun, *, queue_position: bool = False) -> dict[str, Any]:
        """The §1.4 ``WorkflowRunModel`` of a run."""
        position = None
        if queue_position and run.status in WAITING:
            position = sum(
                1
                for other in self.runs.values()
                if other.deployment_id == run.deployment_id
                and other.status in WAITING
                and other.seq < run.seq
            )
        return {
            "id": run.id,
            "status": run.status,
            "progress": run.progress,
            "live_status": run.live_status,
            "outputs": json.loads(json.dumps(run.outputs)),
            "created_at": run.created_at,
            "updated_at": run.updated_at,
            "queued_at": run.queued_at,
            "started_at": run.started_at,
            "ended_at": run.ended_at,
            "duration": None,
            "cold_start_duration": None,
            "cold_start_duration_total": None,
            "run_duration": None,
            "workflow_inputs": run.inputs,
            "workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, run.deployment_id + "/wf")),
            "workflow_version_id": None,
            "machine_id": str(uuid.uuid5(uuid.NAMESPACE_URL, run.deployment_id + "/m")),
            "origin": "api",
            "gpu": "A10G",
            "gpu_event_id": None,
            "machine_type": "comfy-deploy-serverless",
            "machine_version": None,
            "modal_function_call_id": f"fc-{run.id[:8]}",
            "user_id": "user_test",
            "org_id": None,
            "webhook": run.webhook,
            "webhook_status": None,
            "webhook_intermediate_status": run.webhook_intermediate_status,
            "is_realtime": False,
            "number": 0,
            "queue_position": position,
        }

    async def _cancel(self, run_id: str) -> _Resp:
        self.cancel_calls.append(run_id)
        run = self.runs.get(run_id)
        if run is None:
            return _json(
                500,
                {
                    "detail": "Error cancel function 404: Run not found or has no modal function "
                    "call ID"
                },
            )
        if not run.terminal:
            self._apply_status(run, "cancelled")
            run.held_webhooks = []  # a cancelled run's pending status posts are ignored
            # Like the real API, the webhook is fire-and-forget: the 200 does not wait for it
            # (so a receiver that calls back into us cannot deadlock). See flush_webhooks().
            task = asyncio.create_task(
                self._deliver(run, [self._payload(run, "run.updated")], final=True)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return _json(200, {"status": "success", "message": "Function cancelled"})

    def _upload(self, req: _Req) -> _Resp:
        content_type = req.headers.get("content-type", "")
        parts = _parse_multipart(content_type, req.body)
        file_part = parts.get("file")
        if file_part is None:
            return _json(
                422,
                {
                    "detail": [
                        {
                            "type": "missing",
                            "loc": ["body", "file"],
                            "msg": "Field required",
                            "input": None,
                        }
                    ]
                },
            )
        filename, data = file_part
        guessed = mimetypes.guess_type(filename or "")[0] or ""
        if not guessed.startswith(("image/", "video/", "application/", "audio/")):
            return _json(400, {"detail": "Unsupported file type"})
        if len(data) > self.upload_limit:
            return _json(400, {"detail": "File size exceeds 250MB limit"})
        file_id = "img_" + secrets.token_hex(8)
        ext = "." + filename.rsplit(".", 1)[1] if "." in filename else ""
        name = f"{file_id}{ext}"
        self.files[name] = (data, guessed)
        url = f"{self.base_url}/files/{name}"
        self.uploads.append(
            {"file_id": file_id, "file_name": filename, "url": url, "size": len(data)}
        )
        return _json(
            200,
            {
                "message": "File uploaded successfully",
                "file_id": file_id,
                "file_name": filename,
                "file_url": url,
            },
        )

    def _serve_file(self, name: str, method: str) -> _Resp:
        if method not in ("GET", "HEAD"):
            return _json(405, {"detail": "Method Not Allowed"})
        entry = self.files.get(name)
        if entry is None:
            return _Resp(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
        data, content_type = entry
        return _Resp(200, data if method == "GET" else b"", content_type)

    @staticmethod
    def _deployment_body(dep: FakeDeployment) -> dict[str, Any]:
        return {
            "id": dep.id,
            "name": dep.name,
            "environment": "production",
            "workflow_id": str(uuid.uuid5(uuid.NAMESPACE_URL, dep.id + "/wf")),
            "input_types": [
                {
                    "input_id": input_id,
                    "class_type": "ComfyUIDeployExternalText",
                    "type": "string",
                    "default_value": "",
                    "display_name": input_id,
                    "description": "",
                    "inputs": {"input_id": input_id},
                }
                for input_id in dep.inputs
            ],
        }


def _parse_multipart(content_type: str, body: bytes) -> dict[str, tuple[str, bytes]]:
    """Parse multipart/form-data with the stdlib (python-multipart is not installed)."""
    if not content_type.startswith("multipart/form-data"):
        return {}
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    parts: dict[str, tuple[str, bytes]] = {}
    if not message.is_multipart():
        return parts
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        parts[name] = (part.get_filename() or "", payload if isinstance(payload, bytes) else b"")
    return parts
