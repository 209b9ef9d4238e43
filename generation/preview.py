"""A local preview backend: the whole bot works without a ComfyDeploy key.

:class:`PreviewBackend` implements :class:`generation.ports.Backend` like
:class:`generation.client.ComfyDeployClient`, but renders a labelled placeholder image with
Pillow instead of running a GPU workflow. A run follows ComfyDeploy's status timeline
(not-started → queued → started → running with ``live_status``/``progress`` ticks → success
with one PNG output), computed from the injected clock at read time: polling needs no
background task and a fake clock makes it deterministic. Webhooks are pushed too when a
``webhook_sink`` is set (one small task per run).

Output files and uploads are served by :attr:`PreviewBackend.transport`
(generation/preview_transport.py); the pictures are drawn by generation/preview_render.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from generation.errors import InvalidInputError, RunNotFoundError
from generation.models import DeploymentInfo, RunSnapshot
from generation.preview_render import PREVIEW_LABEL, render_batch
from generation.preview_transport import PreviewTransport
from generation.status import snapshot_from_payload
from generation.tasks import TaskSet
from generation.types import GENERATION_TYPES

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://preview.local"

# Stable deployment ids (uuid5) per generation type; the composition root registers them in
# storage when it starts in preview mode.
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/comfy-telegram-bot/preview")
PREVIEW_DEPLOYMENTS: dict[str, str] = {
    name: str(uuid.uuid5(_NAMESPACE, name)) for name in GENERATION_TYPES
}
PREVIEW_INPUTS: tuple[str, ...] = (
    "input_prompt",
    "input_negative",
    "input_seed",
    "input_width",
    "input_height",
    "input_steps",
    "input_cfg",
    "input_strength",
    "input_image",
    "input_mask",
    "input_checkpoint",
    "input_batch",
)
MAX_BATCH = 4  # like the bot's --batch: at most four images per run
_TYPE_BY_DEPLOYMENT = {dep_id: name for name, dep_id in PREVIEW_DEPLOYMENTS.items()}

# (raw status, progress, live_status) per step of ``step_seconds``; success follows the last.
TIMELINE: tuple[tuple[str, float, str | None], ...] = (
    ("not-started", 0.0, None),
    ("queued", 0.0, None),
    ("started", 0.0, None),
    ("running", 0.1, "Executing CLIPTextEncode"),
    ("running", 0.3, "Executing KSampler"),
    ("running", 0.5, "Executing KSampler"),
    ("running", 0.7, "Executing KSampler"),
    ("running", 0.8, "Executing VAEDecode"),
    ("running", 0.9, "Executing SaveImage"),
)
_SUCCESS_STEP = len(TIMELINE)

MAX_UPLOAD_BYTES = 20 * 1024 * 1024

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
WebhookSink = Callable[[str, dict[str, Any]], Awaitable[Any]]


def _as_int(value: Any, default: int | None) -> int | None:
    if isinstance(value, bool):
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return int(number) if math.isfinite(number) else default


@dataclass(slots=True)
class _Run:
    id: str
    deployment_id: str
    created_at: float
    prompt: str
    seed: int | None
    width: int
    height: int
    image: bytes | str | None  # bytes of an upload, or a data URI decoded off the loop
    mask: bytes | str | None
    upscale: bool
    batch: int = 1  # images per run (input_batch, 1..MAX_BATCH): output i has seed + i
    cancelled_step: int | None = None  # step index at which it was cancelled
    failed: bool = False
    png: bytes | None = None  # the first image
    extra: list[bytes] = field(default_factory=list)  # images 2..batch
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PreviewBackend:
    """Backend that renders labelled placeholder images locally (no GPU, no network)."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        step_seconds: float = 0.6,
        base_url: str = DEFAULT_BASE_URL,
        webhook_sink: WebhookSink | None = None,
        sleep: Sleep = asyncio.sleep,
        max_runs: int = 200,
        max_uploads: int = 50,
        fallback_transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._clock = clock
        self._step = max(0.0, float(step_seconds))
        self.base_url = base_url.rstrip("/")
        self.webhook_sink = webhook_sink
        self._sleep = sleep
        self._max_runs = max(1, max_runs)
        self._max_uploads = max(1, max_uploads)
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._uploads: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self._tasks = TaskSet()
        self.transport = PreviewTransport(self.base_url, self.file, fallback_transport)

    def __repr__(self) -> str:
        return f"PreviewBackend(base_url={self.base_url!r})"

    # -- Backend protocol ------------------------------------------------------------------

    async def create_run(
        self,
        deployment_id: str,
        inputs: dict[str, Any],
        *,
        webhook: str | None = None,
        webhook_intermediate_status: bool = True,
        run_ref: str | None = None,  # unused: run ids are chosen by the backend
    ) -> str:
        if not isinstance(deployment_id, str) or not deployment_id.strip():
            raise InvalidInputError("deployment id is empty", field="deployment_id")
        if not isinstance(inputs, Mapping):
            raise InvalidInputError("inputs must be an object", field="inputs")
        prompt = inputs.get("input_prompt")
        run = _Run(
            id=str(uuid.uuid4()),
            deployment_id=deployment_id,
            created_at=self._clock(),
            prompt=prompt.strip() if isinstance(prompt, str) else "",
            seed=_as_int(inputs.get("input_seed"), None),
            width=_as_int(inputs.get("input_width"), 1024) or 1024,
            height=_as_int(inputs.get("input_height"), 1024) or 1024,
            image=self._input_ref(inputs.get("input_image")),
            mask=self._input_ref(inputs.get("input_mask")),
            upscale=_TYPE_BY_DEPLOYMENT.get(deployment_id) == "UPSCALE",
            batch=min(MAX_BATCH, max(1, _as_int(inputs.get("input_batch"), 1) or 1)),
        )
        self._runs[run.id] = run
        self._evict_runs()
        log.info("preview run %s created (deployment %s)", run.id, deployment_id)
        if webhook and self.webhook_sink is not None:
            self._tasks.spawn(
                self._push_webhooks(run, webhook, webhook_intermediate_status),
                name=f"preview-webhooks-{run.id[:8]}",
            )
        return run.id

    async def get_run(self, run_id: str) -> RunSnapshot:
        return snapshot_from_payload(await self._body(self._get(run_id)))

    async def cancel_run(self, run_id: str) -> None:
        run = self._get(run_id)
        step = self._step_index(run)
        if run.cancelled_step is None and not run.failed and step < _SUCCESS_STEP:
            run.cancelled_step = step
            run.image = run.mask = None
            log.info("preview run %s cancelled", run_id)

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        if not isinstance(data, bytes | bytearray) or not data:
            raise InvalidInputError("empty upload", field="file")
        if len(data) > MAX_UPLOAD_BYTES:
            raise InvalidInputError("upload too large", field="file")
        ext = ""
        if isinstance(filename, str) and "." in filename:
            suffix = filename.rsplit(".", 1)[1].lower()
            if suffix.isalnum() and len(suffix) <= 5:
                ext = "." + suffix
        name = f"{uuid.uuid4().hex}{ext}"
        self._uploads[name] = (bytes(data), content_type or "application/octet-stream")
        while len(self._uploads) > self._max_uploads:
            self._uploads.popitem(last=False)
        return f"{self.base_url}/files/uploads/{name}"

    async def list_deployments(self) -> list[DeploymentInfo]:
        return [
            DeploymentInfo(id=dep_id, name=f"{PREVIEW_LABEL} {name}", inputs=PREVIEW_INPUTS)
            for name, dep_id in PREVIEW_DEPLOYMENTS.items()
        ]

    async def aclose(self) -> None:
        await self._tasks.aclose()
        await self.transport.aclose()

    # -- files -----------------------------------------------------------------------------

    async def file(self, name: str) -> tuple[bytes, str] | None:
        """Bytes and content type of ``{base_url}/files/<name>``, or None."""
        if name.startswith("uploads/"):
            return self._uploads.get(name.removeprefix("uploads/"))
        if not name.endswith(".png"):
            return None
        stem = name.removesuffix(".png")
        # "<run id>-<n>.png" is image n (2..batch) of a batch; run ids end in 12 hex digits
        numbered = re.fullmatch(r"(.+)-([2-9])", stem)
        run = self._runs.get(numbered.group(1) if numbered else stem)
        if run is None or self._raw_state(run)[0] != "success":
            return None
        png = await self._render(run)
        if numbered:
            number = int(numbered.group(2))
            png = run.extra[number - 2] if number <= len(run.extra) + 1 else None
        return (png, "image/png") if png is not None else None

    def _input_ref(self, value: Any) -> bytes | str | None:
        """An input image: a data URI (decoded later, in the render thread) or the bytes of
        one of our own uploads; anything else is ignored."""
        if not isinstance(value, str) or not value:
            return None
        if value[:5].lower() == "data:":
            return value
        prefix = f"{self.base_url}/files/uploads/"
        if value.startswith(prefix):
            upload = self._uploads.get(value.removeprefix(prefix))
            return upload[0] if upload else None
        return None  # a remote URL: the preview never fetches anything

    # -- timeline --------------------------------------------------------------------------

    def _get(self, run_id: str) -> _Run:
        run = self._runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise RunNotFoundError("unknown preview run", run_id=str(run_id)[:64])
        return run

    def _step_index(self, run: _Run) -> int:
        if self._step <= 0:
            return _SUCCESS_STEP
        elapsed = max(0.0, self._clock() - run.created_at)
        # The epsilon keeps float noise (1.7999999 steps) from holding a step back.
        return min(_SUCCESS_STEP, int(elapsed / self._step + 1e-9))

    def _raw_state(self, run: _Run) -> tuple[str, float, str | None]:
        if run.failed:
            return "failed", TIMELINE[-1][1], TIMELINE[-1][2]
        if run.cancelled_step is not None:
            _, progress, live = TIMELINE[min(run.cancelled_step, _SUCCESS_STEP - 1)]
            return "cancelled", progress, live
        step = self._step_index(run)
        if step >= _SUCCESS_STEP:
            return "success", 1.0, TIMELINE[-1][2]
        return TIMELINE[step]

    async def _render(self, run: _Run) -> bytes | None:
        async with run.lock:
            if run.png is None and not run.failed:
                try:
                    pngs = await asyncio.to_thread(
                        render_batch,
                        run.batch,
                        prompt=run.prompt,
                        seed=run.seed,
                        width=run.width,
                        height=run.height,
                        image=run.image,
                        mask=run.mask,
                        upscale=run.upscale,
                    )
                    run.png, run.extra = pngs[0], pngs[1:]
                except Exception:
                    log.exception("preview run %s: rendering failed", run.id)
                    run.failed = True
                run.image = run.mask = None  # inputs are not needed any more
                self._evict_runs()
        return run.png

    def _outputs(self, run: _Run) -> list[dict[str, Any]]:
        """One SaveImage output node with an image per batch item (as ComfyUI saves them)."""
        images = []
        for number in range(1, 1 + 1 + len(run.extra)):
            tail = "" if number == 1 else f"-{number}"
            images.append(
                {
                    "url": f"{self.base_url}/files/{run.id}{tail}.png",
                    "type": "output",
                    "filename": f"preview_{run.id[:8]}{tail}.png",
                    "subfolder": "",
                    "is_public": True,
                }
            )
        return [
            {
                "id": str(uuid.uuid5(_NAMESPACE, run.id)),
                "run_id": run.id,
                "node_meta": {"node_id": "9", "node_class": "SaveImage"},
                "data": {"images": images},
            }
        ]

    async def _body(self, run: _Run) -> dict[str, Any]:
        """The run as ComfyDeploy's GET /run/{id} would describe it (the fields we use)."""
        status, progress, live = self._raw_state(run)
        outputs: list[dict[str, Any]] = []
        if status == "success":
            await self._render(run)
            status, progress, live = self._raw_state(run)  # rendering may have failed
            if status == "success":
                outputs = self._outputs(run)
        return {
            "id": run.id,
            "status": status,
            "progress": progress,
            "live_status": live,
            "outputs": outputs,
            "queue_position": None,
        }

    def _evict_runs(self) -> None:
        """Keep at most ``max_runs`` runs: drop the oldest finished ones first; a hard cap
        (4×) bounds memory even when the clock never advances."""
        if len(self._runs) <= self._max_runs:
            return
        for run_id, run in list(self._runs.items()):
            if len(self._runs) <= self._max_runs:
                break
            if self._raw_state(run)[0] in ("success", "cancelled", "failed"):
                del self._runs[run_id]
        while len(self._runs) > 4 * self._max_runs:
            self._runs.popitem(last=False)

    # -- webhooks --------------------------------------------------------------------------

    async def _push_webhooks(self, run: _Run, url: str, intermediate: bool) -> None:
        """Post a ComfyDeploy-shaped ``run.updated`` webhook on every change until the run
        ends. Progress ticks only with ``webhook_intermediate_status`` (like ComfyDeploy)."""
        sink = self.webhook_sink
        assert sink is not None
        last: tuple[str, float, str | None] | None = None
        for _ in range(4 * (_SUCCESS_STEP + 2)):  # bounded; a run ends in ~10 steps
            if run.id not in self._runs:
                return
            body = await self._body(run)
            state = (body["status"], body["progress"], body["live_status"])
            if state != last:
                status_changed = last is None or last[0] != state[0]
                if status_changed or intermediate:
                    fields = ("status", "live_status", "progress", "outputs")
                    payload = {"event_type": "run.updated", "run_id": run.id}
                    payload.update({k: body[k] for k in fields})
                    try:
                        await sink(url, payload)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning("preview run %s: webhook failed: %r", run.id, exc)
                last = state
            if body["status"] in ("success", "failed", "cancelled"):
                return
            step = self._step_index(run)
            wait = run.created_at + (step + 1) * self._step - self._clock()
            await self._sleep(max(0.0, wait) + 1e-3)  # wake just after the step boundary
        log.warning("preview run %s: webhook pusher gave up", run.id)
