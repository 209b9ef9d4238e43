"""A faithful ComfyUI server double (HTTP + WebSocket on 127.0.0.1), for tests.

It follows what a real ComfyUI 0.3.64 did in the recorded exchanges
(``shared/reference/comfyui/exchange-*.json``, summarised in the bot's README section "Your own
ComfyUI"):

* ``POST /prompt`` validates like ComfyUI: unknown class → 400 ``invalid_prompt``; no output
  node → 400 ``prompt_no_outputs``; per-node errors (missing required input, value above max /
  below min, value not in list, missing image file) → 400 ``prompt_outputs_failed_validation``
  with ``node_errors`` — or 200 with ``node_errors`` when some output is still valid; no
  ``prompt`` key → 400 ``no_prompt``. ``front: true`` jumps the queue with a negative number.
* One worker runs prompts in order. Per prompt the WebSocket sequence is ``status`` →
  ``execution_start`` → ``execution_cached`` → per node ``progress_state`` + ``executing``
  (and ``progress`` steps for KSampler) → ``executed`` for output nodes →
  ``execution_success`` → ``status`` → ``executing {node: null}``; errors end with
  ``execution_error`` (traceback and tensor-like ``current_inputs`` included, as the real one
  does), interrupts with a *broadcast* ``execution_interrupted``. Messages of a prompt go only
  to the socket of its ``client_id``.
* ``POST /interrupt {"prompt_id"}`` interrupts only that prompt and only while it runs (a
  pending id is a silent no-op); without a body it is global. It takes effect at the next node
  boundary. ``POST /queue {"delete": [...]}`` removes pending prompts; their history stays
  ``{}``.
* Identical nodes are cached: nothing re-executes, ``executed`` is replayed with the same file.
* Uploads without ``overwrite`` are renamed ``name (1).png`` when the name exists with other
  bytes. ``/view`` serves outputs, inputs and temp files.
* :meth:`FakeComfyUI.restart` loses queue, history, cache and temp files (the process died);
  :meth:`stop` makes the port refuse connections.
* A request whose ``Origin`` disagrees with ``Host`` gets 403 (ComfyUI's origin middleware);
  ``require_auth`` simulates an authenticating reverse proxy (401 without the header).

Model nodes (checkpoint loader, text encoder, KSampler, VAE) are simulated with Pillow so the
SDXL example workflows of ``docs/workflows/`` run too; the model-free nodes compute real
pixels. Tests gate execution with :meth:`pause`/:meth:`resume` (no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import json
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from typing import Any
from urllib.parse import urlsplit

from PIL import Image, ImageChops, ImageFilter, ImageOps
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

CHECKPOINTS = ["sd_xl_base_1.0.safetensors", "v1-5-pruned-emaonly.safetensors"]
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras"]
MAX_RES = 16384


def _int(default: int, lo: int, hi: int) -> list[Any]:
    return ["INT", {"default": default, "min": lo, "max": hi, "step": 1}]


def _float(default: float, lo: float, hi: float) -> list[Any]:
    return ["FLOAT", {"default": default, "min": lo, "max": hi, "step": 0.01}]


# class → (required inputs, optional inputs, outputs, output_node)
_SPECS: dict[str, tuple[dict[str, Any], dict[str, Any], list[str], bool]] = {
    "EmptyImage": (
        {
            "width": _int(512, 1, MAX_RES),
            "height": _int(512, 1, MAX_RES),
            "batch_size": _int(1, 1, 4096),
            "color": _int(0, 0, 0xFFFFFF),
        },
        {},
        ["IMAGE"],
        False,
    ),
    "ImageInvert": ({"image": ["IMAGE"]}, {}, ["IMAGE"], False),
    "ImageBlur": (
        {"image": ["IMAGE"], "blur_radius": _int(1, 1, 31), "sigma": _float(1.0, 0.1, 10.0)},
        {},
        ["IMAGE"],
        False,
    ),
    "ImageScale": (
        {
            "image": ["IMAGE"],
            "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
            "width": _int(512, 0, MAX_RES),
            "height": _int(512, 0, MAX_RES),
            "crop": [["disabled", "center"]],
        },
        {},
        ["IMAGE"],
        False,
    ),
    "LoadImage": ({"image": [["<files>"], {"image_upload": True}]}, {}, ["IMAGE", "MASK"], False),
    "LoadImageMask": (
        {
            "image": [["<files>"], {"image_upload": True}],
            "channel": [["alpha", "red", "green", "blue"]],
        },
        {},
        ["MASK"],
        False,
    ),
    "ImageToMask": (
        {"image": ["IMAGE"], "channel": [["red", "green", "blue", "alpha"]]},
        {},
        ["MASK"],
        False,
    ),
    "SolidMask": (
        {
            "value": _float(1.0, 0.0, 1.0),
            "width": _int(512, 1, MAX_RES),
            "height": _int(512, 1, MAX_RES),
        },
        {},
        ["MASK"],
        False,
    ),
    "MaskToImage": ({"mask": ["MASK"]}, {}, ["IMAGE"], False),
    "ImageCompositeMasked": (
        {
            "destination": ["IMAGE"],
            "source": ["IMAGE"],
            "x": _int(0, 0, MAX_RES),
            "y": _int(0, 0, MAX_RES),
            "resize_source": ["BOOLEAN", {"default": False}],
        },
        {"mask": ["MASK"]},
        ["IMAGE"],
        False,
    ),
    "SaveImage": (
        {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]},
        {},
        [],
        True,
    ),
    "PreviewImage": ({"images": ["IMAGE"]}, {}, [], True),
    "CheckpointLoaderSimple": ({"ckpt_name": [CHECKPOINTS]}, {}, ["MODEL", "CLIP", "VAE"], False),
    "CLIPTextEncode": (
        {"text": ["STRING", {"multiline": True}], "clip": ["CLIP"]},
        {},
        ["CONDITIONING"],
        False,
    ),
    "EmptyLatentImage": (
        {
            "width": _int(512, 16, MAX_RES),
            "height": _int(512, 16, MAX_RES),
            "batch_size": _int(1, 1, 4096),
        },
        {},
        ["LATENT"],
        False,
    ),
    "KSampler": (
        {
            "model": ["MODEL"],
            "seed": _int(0, 0, 2**64 - 1),
            "steps": _int(20, 1, 10000),
            "cfg": _float(8.0, 0.0, 100.0),
            "sampler_name": [SAMPLERS],
            "scheduler": [SCHEDULERS],
            "positive": ["CONDITIONING"],
            "negative": ["CONDITIONING"],
            "latent_image": ["LATENT"],
            "denoise": _float(1.0, 0.0, 1.0),
        },
        {},
        ["LATENT"],
        False,
    ),
    "VAEDecode": ({"samples": ["LATENT"], "vae": ["VAE"]}, {}, ["IMAGE"], False),
    "VAEEncode": ({"pixels": ["IMAGE"], "vae": ["VAE"]}, {}, ["LATENT"], False),
    "SetLatentNoiseMask": ({"samples": ["LATENT"], "mask": ["MASK"]}, {}, ["LATENT"], False),
}


def object_info(files: list[str]) -> dict[str, Any]:
    info: dict[str, Any] = {}
    for name, (required, optional, outputs, output_node) in _SPECS.items():
        req = copy.deepcopy(required)
        for spec in req.values():
            if spec and spec[0] == ["<files>"]:
                spec[0] = sorted(files)
        info[name] = {
            "input": {"required": req, **({"optional": optional} if optional else {})},
            "input_order": {
                "required": list(req),
                **({"optional": list(optional)} if optional else {}),
            },
            "output": outputs,
            "output_is_list": [False] * len(outputs),
            "output_name": outputs,
            "name": name,
            "display_name": name,
            "description": "",
            "python_module": "nodes",
            "category": "fake",
            "output_node": output_node,
        }
    return info


class _Interrupted(Exception):
    pass


class _NodeFailure(Exception):
    def __init__(self, message: str, exception_type: str = "Exception") -> None:
        super().__init__(message)
        self.exception_type = exception_type


@dataclass
class _Job:
    number: float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]

    def item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


@dataclass
class _Latent:
    width: int
    height: int
    seed: int = 0
    source: Image.Image | None = None


@dataclass
class FakeComfyUI:
    require_auth: str | None = None
    checkpoints: list[str] = field(default_factory=lambda: list(CHECKPOINTS))
    port: int = 0
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.inputs: dict[str, bytes] = {"example.png": _png(Image.new("RGB", (64, 64), "gray"))}
        self.outputs: dict[tuple[str, str], bytes] = {}  # (subfolder, name) → bytes
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._reset_process_state()
        self.gate = asyncio.Event()
        self.gate.set()
        self.started_nodes = 0
        self.ws_connects = 0
        self.ws_upgrade_headers: list[dict[str, str]] = []
        self.worker_errors: list[str] = []

    # -- process state (lost on restart) ----------------------------------------------------

    def _reset_process_state(self) -> None:
        self.queue: list[_Job] = []
        self.running: _Job | None = None
        self.current_node: str | None = None
        self.history: dict[str, dict[str, Any]] = {}
        self.temp: dict[str, bytes] = {}
        self.cache: dict[str, Any] = {}  # node key → node result (outputs + ui)
        self.sockets: dict[str, set[WebSocket]] = {}
        self._outboxes: dict[WebSocket, asyncio.Queue[str | None]] = {}
        self._interrupt = False
        self._numbers = itertools.count()
        self._counters: dict[str, int] = {}
        self._wake = asyncio.Event()
        self.executed_prompts: list[str] = []
        self.events: dict[str, list[dict[str, Any]]] = {}  # per client id, every frame sent

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> str:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(128)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            log_level="warning",
            lifespan="off",
            access_log=False,
            timeout_graceful_shutdown=1,
            ws="websockets-sansio",
        )
        self._server = uvicorn.Server(config)
        self._serve_task = asyncio.create_task(self._server.serve(sockets=[sock]))
        for _ in range(500):  # bounded readiness wait (≤ ~5 s)
            if self._server.started or self._serve_task.done():
                break
            await asyncio.sleep(0.01)
        if self._serve_task.done():
            self._serve_task.result()
        self._task = asyncio.create_task(self._worker())
        return self.url

    async def stop(self) -> None:
        """The process dies: sockets close, the port refuses connections."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_sockets(1001)
        if self._server is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._serve_task, 5)
            self._server = None

    async def restart(self) -> None:
        """Stop, lose everything held in memory (queue, history, cache, temp), start again on
        the same port. Files in input/ and output/ survive, as on disk."""
        await self.stop()
        self._reset_process_state()
        await self.start()

    async def drop_websockets(self) -> None:
        """Close every WebSocket (the server stays up): clients must reconnect."""
        await self._close_sockets(1011)

    async def _close_sockets(self, code: int) -> None:
        for sockets in list(self.sockets.values()):
            for ws in list(sockets):
                with contextlib.suppress(Exception):
                    # bounded: a peer that is already gone never answers the close
                    await asyncio.wait_for(ws.close(code=code), 1.0)

    def pause(self) -> None:
        """Hold the worker before its next node: a prompt taken from the queue is running
        (``/queue`` lists it so) but executes nothing until :meth:`resume`."""
        self.gate.clear()

    def resume(self) -> None:
        self.gate.set()

    async def wait_running(self, prompt_id: str | None = None, seconds: float = 5.0) -> str:
        """Wait (bounded) until a prompt (``prompt_id`` or any) is running; returns its id."""
        for _ in range(int(seconds / 0.005)):
            job = self.running
            if job is not None and (prompt_id is None or job.prompt_id == prompt_id):
                return job.prompt_id
            await asyncio.sleep(0.005)
        raise TimeoutError(
            f"no running prompt {prompt_id or ''}:"
            f" running={self.running and self.running.prompt_id}"
            f" queue={[j.prompt_id for j in self.queue]} done={self.executed_prompts}"
            f" errors={self.worker_errors}"
        )

    async def wait_idle(self, seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.005)):
            if self.running is None and not self.queue:
                return
            await asyncio.sleep(0.005)
        raise TimeoutError("the fake ComfyUI is still busy")

    # -- ASGI app --------------------------------------------------------------------------

    def app(self) -> Starlette:
        routes = []
        table = [
            ("/prompt", self.post_prompt, ["POST"]),
            ("/prompt", self.get_prompt, ["GET"]),
            ("/queue", self.get_queue, ["GET"]),
            ("/queue", self.post_queue, ["POST"]),
            ("/interrupt", self.post_interrupt, ["POST"]),
            ("/history", self.get_history_list, ["GET"]),
            ("/history/{prompt_id}", self.get_history, ["GET"]),
            ("/upload/image", self.post_upload, ["POST"]),
            ("/view", self.get_view, ["GET"]),
            ("/object_info", self.get_object_info, ["GET"]),
            ("/object_info/{node_class}", self.get_object_info_class, ["GET"]),
            ("/system_stats", self.get_system_stats, ["GET"]),
            ("/features", self.get_features, ["GET"]),
            ("/free", self.post_free, ["POST"]),
        ]
        for prefix in ("", "/api"):
            for path, handler, methods in table:
                routes.append(Route(prefix + path, self._guard(handler), methods=methods))
            routes.append(WebSocketRoute(prefix + "/ws", self.websocket))
        return Starlette(routes=routes)

    def _refused(self, headers: Mapping[str, str]) -> int | None:
        origin = headers.get("origin")
        if origin:
            host = headers.get("host", "")
            if urlsplit(origin).netloc.lower() != host.lower():
                return 403  # create_origin_only_middleware
        if self.require_auth and headers.get("authorization") != self.require_auth:
            return 401
        return None

    def _guard(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            status = self._refused(request.headers)
            body: Any = None
            if request.headers.get("content-type", "").startswith("application/json"):
                with contextlib.suppress(ValueError):
                    body = json.loads(await request.body() or b"null")
            self.requests.append((request.method, request.url.path, dict(request.headers), body))
            if status is not None:
                return Response(status_code=status)
            return await handler(request)

        return endpoint

    # -- WebSocket -------------------------------------------------------------------------

    async def websocket(self, ws: WebSocket) -> None:
        headers = dict(ws.headers)
        self.ws_upgrade_headers.append(headers)
        status = self._refused(headers)
        if status is not None:
            await ws.send_denial_response(Response(status_code=status))
            return
        client_id = ws.query_params.get("clientId") or uuid.uuid4().hex
        await ws.accept()
        self.ws_connects += 1
        outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._outboxes[ws] = outbox
        self.sockets.setdefault(client_id, set()).add(ws)
        sender = asyncio.create_task(self._sender(ws, outbox))
        try:
            await self._send(
                ws,
                client_id,
                "status",
                {"status": {"exec_info": {"queue_remaining": self._remaining()}}, "sid": client_id},
            )
            job = self.running
            if (
                job is not None
                and job.extra_data.get("client_id") == client_id
                and self.current_node
            ):
                # server.py: a reconnecting client is told the running node, without prompt_id
                await self._send(ws, client_id, "executing", {"node": self.current_node})
            while True:
                text = await ws.receive_text()
                with contextlib.suppress(ValueError):
                    message = json.loads(text)
                    if isinstance(message, dict) and message.get("type") == "feature_flags":
                        await self._send(
                            ws,
                            client_id,
                            "feature_flags",
                            {"supports_preview_metadata": True, "max_upload_size": 104857600},
                        )
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            self.sockets.get(client_id, set()).discard(ws)
            self._outboxes.pop(ws, None)
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    @staticmethod
    async def _sender(ws: WebSocket, outbox: asyncio.Queue[str | None]) -> None:
        """Frames leave in order from one task, so no HTTP handler waits on a socket."""
        while True:
            text = await outbox.get()
            if text is None:
                return
            try:
                await ws.send_text(text)
            except Exception:
                return

    async def _send(self, ws: WebSocket, client_id: str, kind: str, data: dict[str, Any]) -> None:
        self.events.setdefault(client_id, []).append({"type": kind, "data": data})
        outbox = self._outboxes.get(ws)
        if outbox is not None:
            outbox.put_nowait(json.dumps({"type": kind, "data": data}))

    async def _emit(self, client_id: str | None, kind: str, data: dict[str, Any]) -> None:
        """To the prompt's client only (``send_sync(..., client_id)``); None → broadcast."""
        targets = (
            [(cid, ws) for cid, sockets in self.sockets.items() for ws in sockets]
            if client_id is None
            else [(client_id, ws) for ws in self.sockets.get(client_id, set())]
        )
        if client_id is not None and not targets:
            self.events.setdefault(client_id, []).append({"type": kind, "data": data})
        for cid, ws in targets:
            await self._send(ws, cid, kind, data)

    def _remaining(self) -> int:
        return len(self.queue) + (1 if self.running else 0)

    async def _status(self) -> None:
        await self._emit(
            None, "status", {"status": {"exec_info": {"queue_remaining": self._remaining()}}}
        )

    # -- HTTP handlers ---------------------------------------------------------------------

    async def post_prompt(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "invalid json"}, status_code=400)
        if not isinstance(body, dict) or "prompt" not in body:
            return _error(400, "no_prompt", "No prompt provided", "No prompt provided")
        prompt = body["prompt"]
        if not isinstance(prompt, dict):
            return _error(400, "invalid_prompt", "Invalid prompt", "")
        for node_id, node in prompt.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return _error(
                    400,
                    "invalid_prompt",
                    "Cannot execute because a node is missing the class_type property.",
                    f"Node ID '#{node_id}'",
                )
            if node["class_type"] not in _SPECS:
                return _error(
                    400,
                    "invalid_prompt",
                    f"Cannot execute because node {node['class_type']} does not exist.",
                    f"Node ID '#{node_id}'",
                )
        outputs = [nid for nid, node in prompt.items() if _SPECS[node["class_type"]][3]]
        if not outputs:
            return _error(400, "prompt_no_outputs", "Prompt has no outputs", "")
        node_errors: dict[str, Any] = {}
        good: list[str] = []
        for out in outputs:
            errors = self._validate(prompt, out, set())
            if errors:
                for node_id, errs in errors.items():
                    entry = node_errors.setdefault(
                        node_id,
                        {
                            "errors": errs,
                            "dependent_outputs": [],
                            "class_type": prompt[node_id]["class_type"],
                        },
                    )
                    entry["dependent_outputs"].append(out)
            else:
                good.append(out)
        if not good:
            return JSONResponse(
                {
                    "error": {
                        "type": "prompt_outputs_failed_validation",
                        "message": "Prompt outputs failed validation",
                        "details": "",
                        "extra_info": {},
                    },
                    "node_errors": node_errors,
                },
                status_code=400,
            )
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        number = next(self._numbers)
        if body.get("front"):
            number = -number - 1
        extra = dict(body.get("extra_data") or {})
        if body.get("client_id"):
            extra["client_id"] = body["client_id"]
        self.queue.append(_Job(number, prompt_id, prompt, extra, good))
        self._wake.set()
        await self._status()
        return JSONResponse({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _validate(
        self, prompt: dict[str, Any], node_id: str, seen: set[str]
    ) -> dict[str, list[Any]]:
        if node_id in seen:
            return {}
        seen.add(node_id)
        node = prompt[node_id]
        required, optional, _, _ = _SPECS[node["class_type"]]
        inputs = node.get("inputs") or {}
        errors: list[dict[str, Any]] = []
        result: dict[str, list[Any]] = {}
        for name, spec in {**required, **optional}.items():
            if name not in inputs:
                if name in required:
                    errors.append(
                        {
                            "type": "required_input_missing",
                            "message": "Required input is missing",
                            "details": name,
                            "extra_info": {"input_name": name},
                        }
                    )
                continue
            value = inputs[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                src = str(value[0])
                if src not in prompt:
                    errors.append(
                        _err("exception_during_inner_validation", "Link to missing node", name)
                    )
                    continue
                for nid, errs in self._validate(prompt, src, seen).items():
                    result.setdefault(nid, []).extend(errs)
                continue
            errors.extend(self._check_value(node["class_type"], name, spec, value))
        if errors:
            result[node_id] = errors
        return result

    def _check_value(self, class_type: str, name: str, spec: list[Any], value: Any) -> list[Any]:
        kind = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        if class_type in ("LoadImage", "LoadImageMask") and name == "image":
            if value not in self.inputs:
                return [
                    {
                        "type": "custom_validation_failed",
                        "message": "Custom validation failed for node",
                        "details": f"image - Invalid image file: {value}",
                        "extra_info": {"input_name": "image"},
                    }
                ]
            return []
        if isinstance(kind, list):
            choices = self.checkpoints if name == "ckpt_name" else kind
            if value not in choices:
                return [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": f"{name}: '{value}' not in {choices}",
                        "extra_info": {
                            "input_name": name,
                            "input_config": spec,
                            "received_value": value,
                        },
                    }
                ]
            return []
        if kind in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return [
                    _err(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {kind} value",
                        name,
                        value,
                    )
                ]
            if "max" in options and value > options["max"]:
                return [
                    {
                        "type": "value_bigger_than_max",
                        "message": f"Value {value} bigger than max of {options['max']}",
                        "details": name,
                        "extra_info": {
                            "input_name": name,
                            "input_config": spec,
                            "received_value": value,
                        },
                    }
                ]
            if "min" in options and value < options["min"]:
                return [
                    {
                        "type": "value_smaller_than_min",
                        "message": f"Value {value} smaller than min of {options['min']}",
                        "details": name,
                        "extra_info": {
                            "input_name": name,
                            "input_config": spec,
                            "received_value": value,
                        },
                    }
                ]
        if kind == "STRING" and not isinstance(value, str):
            return [
                _err(
                    "invalid_input_type",
                    "Failed to convert an input value to a STRING value",
                    name,
                    value,
                )
            ]
        return []

    async def get_prompt(self, request: Request) -> Response:
        return JSONResponse({"exec_info": {"queue_remaining": self._remaining()}})

    async def get_queue(self, request: Request) -> Response:
        return JSONResponse(
            {
                "queue_running": [self.running.item()] if self.running else [],
                "queue_pending": [job.item() for job in sorted(self.queue, key=lambda j: j.number)],
            }
        )

    async def post_queue(self, request: Request) -> Response:
        body = json.loads(await request.body() or b"{}")
        if body.get("clear"):
            self.queue.clear()
        for prompt_id in body.get("delete") or []:
            self.queue = [job for job in self.queue if job.prompt_id != prompt_id]
        await self._status()
        return Response(status_code=200)

    async def post_interrupt(self, request: Request) -> Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        if wanted is None:
            self._interrupt = self.running is not None  # global
        elif self.running is not None and self.running.prompt_id == wanted:
            self._interrupt = True
        # a pending (or unknown) id: silent no-op, still 200
        return Response(status_code=200)

    async def get_history_list(self, request: Request) -> Response:
        items = list(self.history.items())
        max_items = request.query_params.get("max_items")
        if max_items:
            items = items[-int(max_items) :]
        return JSONResponse(dict(reversed(items)))

    async def get_history(self, request: Request) -> Response:
        prompt_id = request.path_params["prompt_id"]
        entry = self.history.get(prompt_id)
        return JSONResponse({prompt_id: entry} if entry else {})

    async def post_upload(self, request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        raw = await request.body()
        message = BytesParser(policy=email_policy).parsebytes(
            f"Content-Type: {content_type}\r\n\r\n".encode() + raw
        )
        fields: dict[str, Any] = {}
        image: tuple[str, bytes] | None = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            filename = part.get_filename()
            payload = part.get_payload(decode=True) or b""
            if name == "image" and filename:
                image = (filename, payload)
            elif name:
                fields[name] = payload.decode()
        if image is None:
            return Response(status_code=400)
        filename, data = image
        if "/" in filename or ".." in filename:
            return Response(status_code=400)
        overwrite = fields.get("overwrite", "").lower() in ("true", "1")
        name = filename
        if not overwrite:
            stem, dot, ext = filename.rpartition(".")
            if not dot:
                stem, ext = filename, ""
            counter = 1
            while name in self.inputs and self.inputs[name] != data:
                name = f"{stem} ({counter}){'.' + ext if ext else ''}"
                counter += 1
        self.inputs[name] = data
        return JSONResponse(
            {"name": name, "subfolder": fields.get("subfolder", ""), "type": "input"}
        )

    async def get_view(self, request: Request) -> Response:
        filename = request.query_params.get("filename", "")
        subfolder = request.query_params.get("subfolder", "")
        kind = request.query_params.get("type", "output")
        if not filename or "/" in filename or ".." in filename:
            return Response(status_code=400)
        if ".." in subfolder:
            return Response(status_code=403)
        if kind == "input":
            data = self.inputs.get(filename)
        elif kind == "temp":
            data = self.temp.get(filename)
        else:
            data = self.outputs.get((subfolder, filename))
        if data is None:
            return Response(status_code=404)
        return Response(
            data,
            media_type="image/png",
            headers={"Content-Disposition": f'filename="{filename}"'},
        )

    async def get_object_info(self, request: Request) -> Response:
        return JSONResponse(object_info(list(self.inputs)))

    async def get_object_info_class(self, request: Request) -> Response:
        info = object_info(list(self.inputs))
        name = request.path_params["node_class"]
        return JSONResponse({name: info[name]} if name in info else {})

    async def get_system_stats(self, request: Request) -> Response:
        return JSONResponse(
            {
                "system": {"os": "posix", "comfyui_version": "0.3.64", "pytorch_version": "fake"},
                "devices": [{"name": "cpu", "type": "cpu"}],
            }
        )

    async def get_features(self, request: Request) -> Response:
        return JSONResponse({"supports_preview_metadata": True, "max_upload_size": 104857600})

    async def post_free(self, request: Request) -> Response:
        return Response(status_code=200)

    # -- execution -------------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            while not self.queue:
                self._wake.clear()
                await self._wake.wait()
            self.queue.sort(key=lambda j: j.number)
            job = self.queue.pop(0)
            self.running = job
            self._interrupt = False
            try:
                await self._execute(job)
            except Exception as exc:  # a bug in the double: keep serving, tell the test
                self.worker_errors.append(repr(exc))
            finally:
                self.running = None
                self.current_node = None
                client = job.extra_data.get("client_id")
                await self._status()
                await self._emit(client, "executing", {"node": None, "prompt_id": job.prompt_id})

    def _order(self, prompt: dict[str, Any], outputs: list[str]) -> list[str]:
        order: list[str] = []

        def visit(node_id: str) -> None:
            if node_id in order:
                return
            for value in (prompt[node_id].get("inputs") or {}).values():
                if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                    visit(str(value[0]))
            order.append(node_id)

        for out in outputs:
            visit(out)
        return order

    def _key(self, prompt: dict[str, Any], node_id: str) -> str:
        node = prompt[node_id]
        parts = {}
        for name, value in sorted((node.get("inputs") or {}).items()):
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                parts[name] = [self._key(prompt, str(value[0])), value[1]]
            else:
                parts[name] = value
        return json.dumps([node["class_type"], parts], sort_keys=True, default=str)

    async def _execute(self, job: _Job) -> None:
        client = job.extra_data.get("client_id")
        pid = job.prompt_id
        messages: list[list[Any]] = []

        async def note(kind: str, data: dict[str, Any], *, broadcast: bool = False) -> None:
            data = {**data, "prompt_id": pid, "timestamp": int(time.time() * 1000)}
            messages.append([kind, data])
            await self._emit(None if broadcast else client, kind, data)

        await self._status()
        await note("execution_start", {})
        order = self._order(job.prompt, job.outputs)
        keys = {nid: self._key(job.prompt, nid) for nid in order}
        cached = [nid for nid in order if keys[nid] in self.cache]
        await note("execution_cached", {"nodes": cached})
        values: dict[str, Any] = {}
        outputs: dict[str, Any] = {}
        states: dict[str, dict[str, Any]] = {}
        executed: list[str] = []
        for nid in cached:
            values[nid] = self.cache[keys[nid]]["values"]
            ui = self.cache[keys[nid]]["ui"]
            if ui is not None:
                outputs[nid] = ui
                await self._emit(
                    client,
                    "executed",
                    {"node": nid, "display_node": nid, "output": ui, "prompt_id": pid},
                )
                states[nid] = _state(pid, nid, 1, 1, "finished")
                await self._emit(
                    client, "progress_state", {"prompt_id": pid, "nodes": dict(states)}
                )
        node_id = None
        try:
            for node_id in order:
                if node_id in cached:
                    continue
                if self._interrupt:  # checked at node boundaries
                    raise _Interrupted()
                self.current_node = node_id
                self.started_nodes += 1
                states[node_id] = _state(pid, node_id, 0.0, 1.0, "running")
                await self._emit(
                    client, "progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(states)}
                )
                await self._emit(
                    client,
                    "executing",
                    {"node": node_id, "display_node": node_id, "prompt_id": pid},
                )
                await self.gate.wait()  # the node "runs" until resumed
                result, ui = await self._run_node(job, node_id, values)
                values[node_id] = result
                self.cache[keys[node_id]] = {"values": result, "ui": ui}
                executed.append(node_id)
                if ui is not None:
                    outputs[node_id] = ui
                    await self._emit(
                        client,
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": pid},
                    )
                states[node_id] = _state(pid, node_id, 1.0, 1.0, "finished")
                await self._emit(
                    client, "progress_state", {"prompt_id": pid, "nodes": copy.deepcopy(states)}
                )
                await asyncio.sleep(0)
        except _Interrupted:
            await note(
                "execution_interrupted",
                {
                    "node_id": node_id,
                    "node_type": job.prompt[node_id]["class_type"],
                    "executed": executed,
                },
                broadcast=True,
            )
            self._finish(job, {}, "error", False, messages)
            return
        except _NodeFailure as exc:
            node = job.prompt[node_id]
            await note(
                "execution_error",
                {
                    "node_id": node_id,
                    "node_type": node["class_type"],
                    "executed": executed,
                    "exception_message": str(exc),
                    "exception_type": exc.exception_type,
                    "traceback": ['  File "<comfyui>/execution.py", line 496, in execute\n'],
                    "current_inputs": {
                        "images": ["tensor([[[[0.9294, 0.7961, 0.6627],\n ...]]]])"]
                    },
                    "current_outputs": [],
                },
            )
            self._finish(job, {}, "error", False, messages)
            return
        await note("execution_success", {})
        self._finish(job, outputs, "success", True, messages)

    def _finish(
        self, job: _Job, outputs: dict[str, Any], status: str, completed: bool, messages: list[Any]
    ) -> None:
        self.executed_prompts.append(job.prompt_id)
        self.history[job.prompt_id] = {
            "prompt": job.item(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": completed, "messages": messages},
            "meta": {nid: {"node_id": nid, "display_node": nid} for nid in outputs},
        }

    async def _run_node(self, job: _Job, node_id: str, values: dict[str, Any]) -> tuple[Any, Any]:
        node = job.prompt[node_id]
        inputs: dict[str, Any] = {}
        for name, value in (node.get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                inputs[name] = values[str(value[0])][value[1]]
            else:
                inputs[name] = value
        method = getattr(self, f"_node_{node['class_type']}")
        if node["class_type"] == "KSampler":
            return await method(job, node_id, **inputs), None
        result = method(**inputs)
        if node["class_type"] in ("SaveImage", "PreviewImage"):
            return (), result
        return result, None

    # node implementations: tuples of outputs, like ComfyUI's FUNCTION results

    @staticmethod
    def _node_EmptyImage(width: int, height: int, batch_size: int, color: int) -> tuple[Any, ...]:
        rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
        return (Image.new("RGB", (width, height), rgb),)

    @staticmethod
    def _node_ImageInvert(image: Image.Image) -> tuple[Any, ...]:
        return (ImageOps.invert(image.convert("RGB")),)

    @staticmethod
    def _node_ImageBlur(image: Image.Image, blur_radius: int, sigma: float) -> tuple[Any, ...]:
        return (image.filter(ImageFilter.GaussianBlur(min(blur_radius, sigma * 3))),)

    @staticmethod
    def _node_ImageScale(
        image: Image.Image, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Any, ...]:
        return (image.resize((width or image.width, height or image.height)),)

    def _node_LoadImage(self, image: str, upload: Any = None) -> tuple[Any, ...]:
        im = Image.open(io.BytesIO(self.inputs[image]))
        im = ImageOps.exif_transpose(im)
        if "A" in im.getbands():
            mask = ImageChops.invert(im.getchannel("A"))
        else:
            mask = Image.new("L", im.size, 0)
        return (im.convert("RGB"), mask)

    def _node_LoadImageMask(self, image: str, channel: str, upload: Any = None) -> tuple[Any, ...]:
        im = Image.open(io.BytesIO(self.inputs[image])).convert("RGBA")
        band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
        mask = im.getchannel(band)
        if channel == "alpha":
            mask = ImageChops.invert(mask)
        return (mask,)

    @staticmethod
    def _node_ImageToMask(image: Image.Image, channel: str) -> tuple[Any, ...]:
        band = {"alpha": "A", "red": "R", "green": "G", "blue": "B"}[channel]
        return (image.convert("RGBA").getchannel(band),)

    @staticmethod
    def _node_SolidMask(value: float, width: int, height: int) -> tuple[Any, ...]:
        return (Image.new("L", (width, height), round(value * 255)),)

    @staticmethod
    def _node_MaskToImage(mask: Image.Image) -> tuple[Any, ...]:
        return (mask.convert("RGB"),)

    @staticmethod
    def _node_ImageCompositeMasked(
        destination: Image.Image,
        source: Image.Image,
        x: int,
        y: int,
        resize_source: bool,
        mask: Image.Image | None = None,
    ) -> tuple[Any, ...]:
        out = destination.convert("RGB").copy()
        src = source.convert("RGB")
        if resize_source:
            src = src.resize(out.size)
        if mask is None:
            mask = Image.new("L", src.size, 255)
        mask = mask.resize(src.size)
        out.paste(src, (x, y), mask)
        return (out,)

    def _save(self, images: Image.Image, prefix: str, kind: str) -> dict[str, Any]:
        if ".." in prefix.split("/") or prefix.startswith("/"):
            raise _NodeFailure(
                "**** ERROR: Saving image outside the output folder is not allowed.\n"
                " full_output_folder: <root>\n         output_dir: <comfyui>/output\n"
            )
        subfolder, _, base = prefix.rpartition("/")
        counter = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = counter
        name = f"{base}_{counter:05d}_.png"
        data = _png(images)
        if kind == "temp":
            self.temp[name] = data
        else:
            self.outputs[(subfolder, name)] = data
        return {"images": [{"filename": name, "subfolder": subfolder, "type": kind}]}

    def _node_SaveImage(
        self, images: Image.Image, filename_prefix: str = "ComfyUI"
    ) -> dict[str, Any]:
        return self._save(images, filename_prefix, "output")

    def _node_PreviewImage(self, images: Image.Image) -> dict[str, Any]:
        return self._save(images, f"ComfyUI_temp_{uuid.uuid4().hex[:5]}", "temp")

    # simulated model nodes

    @staticmethod
    def _node_CheckpointLoaderSimple(ckpt_name: str) -> tuple[Any, ...]:
        return (f"model:{ckpt_name}", f"clip:{ckpt_name}", f"vae:{ckpt_name}")

    @staticmethod
    def _node_CLIPTextEncode(text: str, clip: str) -> tuple[Any, ...]:
        return (f"cond:{text}",)

    @staticmethod
    def _node_EmptyLatentImage(width: int, height: int, batch_size: int) -> tuple[Any, ...]:
        return (_Latent(width, height),)

    async def _node_KSampler(self, job: _Job, node_id: str, **inputs: Any) -> tuple[Any, ...]:
        latent: _Latent = inputs["latent_image"]
        steps = int(inputs["steps"])
        client = job.extra_data.get("client_id")
        for step in range(1, steps + 1):
            if self._interrupt:  # samplers check between steps (comfy.model_management)
                raise _Interrupted()
            await self._emit(
                client,
                "progress",
                {"value": step, "max": steps, "prompt_id": job.prompt_id, "node": node_id},
            )
            await asyncio.sleep(0)
        return (_Latent(latent.width, latent.height, int(inputs["seed"]), latent.source),)

    @staticmethod
    def _node_VAEDecode(samples: _Latent, vae: str) -> tuple[Any, ...]:
        color = (samples.seed * 2654435761) & 0xFFFFFF
        image = Image.new(
            "RGB",
            (samples.width, samples.height),
            ((color >> 16) & 255, (color >> 8) & 255, color & 255),
        )
        if samples.source is not None:
            image = Image.blend(samples.source.resize(image.size), image, 0.5)
        return (image,)

    @staticmethod
    def _node_VAEEncode(pixels: Image.Image, vae: str) -> tuple[Any, ...]:
        return (_Latent(pixels.width, pixels.height, 0, pixels.convert("RGB")),)

    @staticmethod
    def _node_SetLatentNoiseMask(samples: _Latent, mask: Image.Image) -> tuple[Any, ...]:
        return (samples,)


def _state(pid: str, nid: str, value: float, maximum: float, state: str) -> dict[str, Any]:
    return {
        "value": value,
        "max": maximum,
        "state": state,
        "node_id": nid,
        "prompt_id": pid,
        "display_node_id": nid,
        "parent_node_id": None,
        "real_node_id": nid,
    }


def _err(kind: str, message: str, name: str, value: Any = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"input_name": name}
    if value is not None:
        extra["received_value"] = value
    return {"type": kind, "message": message, "details": name, "extra_info": extra}


def _error(status: int, kind: str, message: str, details: str) -> JSONResponse:
    return JSONResponse(
        {
            "error": {"type": kind, "message": message, "details": details, "extra_info": {}},
            "node_errors": {},
        },
        status_code=status,
    )


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
