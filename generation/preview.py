"""A local preview backend: the whole bot works without a ComfyDeploy key.

:class:`PreviewBackend` implements :class:`generation.ports.Backend` like
:class:`generation.client.ComfyDeployClient`, but renders a labelled placeholder image with
Pillow instead of running a GPU workflow. A run follows ComfyDeploy's status timeline
(not-started → queued → started → running with ``live_status``/``progress`` ticks → success
with one PNG output), computed from the injected clock at read time: polling needs no
background task and a fake clock makes it deterministic. Webhooks are pushed too when a
``webhook_sink`` is set (one small task per run).

Output files and uploads are served by :attr:`PreviewBackend.transport`, an httpx transport
that answers ``GET {base_url}/files/...`` itself and forwards every other URL to a real
``httpx.AsyncHTTPTransport``, so one download client fetches preview and real files alike.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import colorsys
import contextlib
import hashlib
import io
import logging
import math
import random
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

from generation.errors import InvalidInputError, RunNotFoundError
from generation.models import DeploymentInfo, RunSnapshot
from generation.status import snapshot_from_payload
from generation.types import GENERATION_TYPES

log = logging.getLogger(__name__)

PREVIEW_LABEL = "preview"
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

MIN_SIDE, MAX_SIDE = 64, 1024
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
_MAX_INPUT_PIXELS = 40_000_000  # refuse decompression bombs in input photos

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]
WebhookSink = Callable[[str, dict[str, Any]], Awaitable[Any]]


# --------------------------------------------------------------------------------- rendering


def clamp_size(width: int, height: int, lo: int = MIN_SIDE, hi: int = MAX_SIDE) -> tuple[int, int]:
    """Scale ``width``×``height`` into ``lo..hi`` per side, keeping the aspect where possible."""
    w, h = max(1, int(width)), max(1, int(height))
    scale = min(1.0, hi / max(w, h))
    if min(w, h) * scale < lo:
        scale = lo / min(w, h)
    return (
        min(hi, max(lo, round(w * scale))),
        min(hi, max(lo, round(h * scale))),
    )


def _decode_data_uri(value: str) -> bytes | None:
    """Bytes of a ``data:<mime>;base64,...`` URI; None for anything else or garbage."""
    head, sep, payload = value.partition(",")
    if not sep or not head.lower().startswith("data:") or ";base64" not in head.lower():
        return None
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


# DejaVu Sans (generation/fonts/LICENSE): Pillow's built-in font has Latin only, so a Cyrillic
# or Greek prompt would be drawn as empty boxes. Opening it is cheap (~20 µs), and a font
# object per render keeps FreeType faces out of the threads' way.
FONT_PATH = Path(__file__).with_name("fonts") / "DejaVuSans.ttf"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(FONT_PATH), size=size)
    except OSError:  # font file missing or Pillow without FreeType
        log.warning("preview font %s unavailable; prompts may lose non-Latin letters", FONT_PATH)
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the fixed-size bitmap font still works
        return ImageFont.load_default()


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _open_input(data: bytes | str | None) -> Image.Image | None:
    """Decode an input photo (bytes or a data URI); None when absent or undecodable (the
    preview then ignores it)."""
    if isinstance(data, str):
        data = _decode_data_uri(data)
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > _MAX_INPUT_PIXELS:
                return None
            image = ImageOps.exif_transpose(probe)
            image.load()
    except Exception:
        log.debug("preview: undecodable input image ignored", exc_info=True)
        return None
    return image


def _sky(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A gradient sky with soft circles and a hill silhouette; colours from ``rng``."""
    w, h = size
    hue = rng.random()
    top = _hsv(hue, 0.55, 0.95)
    bottom = _hsv(hue + 0.12 + rng.random() * 0.2, 0.45, 0.55)
    gradient = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    base = ImageOps.colorize(gradient, top, bottom)
    # Shapes are drawn opaque on a copy and blended through a blurred alpha mask: blurring an
    # RGBA overlay over transparent black would give every shape a dark halo.
    shapes = base.copy()
    mask = Image.new("L", size, 0)
    draw, draw_mask = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    short = min(w, h)
    for _ in range(rng.randint(3, 6)):
        radius = short * (0.08 + rng.random() * 0.22)
        cx, cy = rng.random() * w, rng.random() * h * 0.7
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=_hsv(hue + rng.uniform(-0.25, 0.25), 0.35, 1.0))
        draw_mask.ellipse(box, fill=rng.randint(70, 140))
    points = [(0.0, float(h))]
    steps = 6
    for i in range(steps + 1):
        points.append((w * i / steps, h * (0.62 + rng.random() * 0.2)))
    points.append((float(w), float(h)))
    draw.polygon(points, fill=_hsv(hue + 0.5, 0.4, 0.35))
    draw_mask.polygon(points, fill=190)
    blur = ImageFilter.GaussianBlur(max(1.0, short / 60))
    return Image.composite(shapes.filter(blur), base, mask.filter(blur)).convert("RGBA")


def _photo_background(
    photo: Image.Image, size: tuple[int, int], rng: random.Random, *, sharpen: bool
) -> Image.Image:
    """The input photo resized to ``size`` and lightly tinted (so it reads as "processed")."""
    image = photo.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if sharpen:
        image = image.filter(ImageFilter.SHARPEN)
    tint = Image.new("RGB", size, _hsv(rng.random(), 0.5, 0.9))
    return Image.blend(image, tint, 0.18).convert("RGBA")


def _mark_mask(image: Image.Image, mask_data: bytes | str | None) -> Image.Image:
    """Blend magenta over the white (repaint) area of the mask and outline it."""
    mask = _open_input(mask_data)
    if mask is None:
        return image
    area = mask.convert("L").resize(image.size, Image.Resampling.NEAREST)
    area = area.point(lambda v: 255 if v > 127 else 0)
    marked = Image.blend(image, Image.new("RGBA", image.size, (255, 0, 200, 255)), 0.55)
    image = Image.composite(marked, image, area)
    edges = area.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
    image.paste((255, 255, 255, 255), mask=edges)
    return image


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, max_lines: int
) -> list[str]:
    """Greedy word wrap by pixel width; long words are cut, overflow ends with an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
        else:
            if current:
                lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "…"
    return lines


def _draw_text(image: Image.Image, prompt: str, seed: int | None) -> Image.Image:
    """The "PREVIEW" band on top and the wrapped prompt in a dark box at the bottom."""
    w, h = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pad = max(4, min(w, h) // 40)

    label_size = max(10, min(w, h) // 10)
    label_font = _font(label_size)
    band = round(label_size * 1.6)
    draw.rectangle((0, 0, w, band), fill=(0, 0, 0, 170))
    label = PREVIEW_LABEL.upper()
    label_w = draw.textlength(label, font=label_font)
    draw.text(
        ((w - label_w) / 2, (band - label_size) / 2),
        label,
        font=label_font,
        fill=(255, 214, 0, 255),
        stroke_width=max(1, label_size // 16),
        stroke_fill=(0, 0, 0, 255),
    )

    text_size = max(9, min(w, h) // 22)
    font = _font(text_size)
    caption = prompt.strip()
    if seed is not None:
        caption = f"{caption}  · seed {seed}" if caption else f"seed {seed}"
    lines = _wrap(draw, caption, font, w - 4 * pad, max_lines=4) if caption else []
    if lines:
        line_h = round(text_size * 1.25)
        box_h = line_h * len(lines) + 2 * pad
        top = h - box_h - pad
        draw.rounded_rectangle((pad, top, w - pad, h - pad), radius=pad, fill=(0, 0, 0, 140))
        for i, line in enumerate(lines):
            draw.text((2 * pad, top + pad + i * line_h), line, font=font, fill=(255, 255, 255, 235))
    return Image.alpha_composite(image, overlay)


def render_preview(
    *,
    prompt: str,
    seed: int | None,
    width: int,
    height: int,
    image: bytes | str | None = None,
    mask: bytes | str | None = None,
    upscale: bool = False,
) -> bytes:
    """Render the preview PNG (CPU work: call it through ``asyncio.to_thread``).

    Without an input photo: a sky scene derived deterministically from prompt + seed. With
    one: the photo (its own aspect; doubled for upscale) tinted, the mask area marked."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    photo = _open_input(image)
    if photo is not None:
        factor = 2 if upscale else 1
        size = clamp_size(photo.width * factor, photo.height * factor)
        canvas = _photo_background(photo, size, rng, sharpen=upscale)
        canvas = _mark_mask(canvas, mask)
    else:
        canvas = _sky(clamp_size(width, height), rng)
    canvas = _draw_text(canvas, prompt, seed)
    buf = io.BytesIO()
    canvas.convert("RGB").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# --------------------------------------------------------------------------------- run state


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


def _render_batch(run: _Run) -> list[bytes]:
    """Every image of ``run`` (CPU work, in a worker thread): item i uses seed + i."""
    return [
        render_preview(
            prompt=run.prompt,
            seed=None if run.seed is None else run.seed + i,
            width=run.width,
            height=run.height,
            image=run.image,
            mask=run.mask,
            upscale=run.upscale,
        )
        for i in range(run.batch)
    ]


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
        self._tasks: set[asyncio.Task[None]] = set()
        self.transport = PreviewTransport(self, fallback_transport)

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
            task = asyncio.get_running_loop().create_task(
                self._push_webhooks(run, webhook, webhook_intermediate_status),
                name=f"preview-webhooks-{run.id[:8]}",
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
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
        tasks, self._tasks = list(self._tasks), set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
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
                    pngs = await asyncio.to_thread(_render_batch, run)
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
                    payload = {
                        "event_type": "run.updated",
                        "status": body["status"],
                        "live_status": body["live_status"],
                        "progress": body["progress"],
                        "run_id": run.id,
                        "outputs": body["outputs"],
                    }
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


class PreviewTransport(httpx.AsyncBaseTransport):
    """Serves ``GET {base_url}/files/<name>`` from the backend; forwards anything else."""

    def __init__(
        self, backend: PreviewBackend, fallback: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._backend = backend
        self._fallback = fallback
        self._owns_fallback = fallback is None
        base = httpx.URL(backend.base_url)
        self._scheme, self._host, self._port = base.scheme, base.host, base.port
        self._prefix = base.path.rstrip("/") + "/files/"

    def _is_ours(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == (self._scheme, self._host, self._port)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._is_ours(request.url):
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        path = request.url.path
        if request.method != "GET":
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        found = None
        if path.startswith(self._prefix):
            found = await self._backend.file(path.removeprefix(self._prefix))
        if found is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        data, content_type = found
        return httpx.Response(200, headers={"content-type": content_type}, content=data)

    async def aclose(self) -> None:
        """Closes the real transport we created; a later request opens a new one (a
        download client closing this transport must not break the next client)."""
        fallback = self._fallback
        if fallback is not None and self._owns_fallback:
            self._fallback = None
            await fallback.aclose()
