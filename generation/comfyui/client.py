"""HTTP client of one ComfyUI server (``POST /prompt``, ``GET /queue``, ``/history``, ...).

Every failure leaves as a :class:`generation.errors.GenerationError`:

* connection errors, timeouts and 5xx → :class:`BackendUnavailableError` (retryable; for
  ``POST /prompt`` only when the request surely never reached the server — otherwise
  :class:`SubmitUncertainError`);
* 400 with ``node_errors`` → :class:`WorkflowInvalidError` naming the node and input (never
  retried);
* 401/403 → :class:`AuthFailedError` (a proxy refusing ``COMFYUI_AUTH``, or ComfyUI's Origin
  check).

The optional ``auth`` value is sent as the ``Authorization`` header and never logged; URLs are
logged without user info.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx

from generation.errors import (
    AuthFailedError,
    BackendError,
    BackendUnavailableError,
    GenerationError,
    SubmitUncertainError,
    WorkflowInvalidError,
)

log = logging.getLogger("generation.comfyui")

_NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
_MAX_DETAIL = 300


def safe_url(url: str) -> str:
    """``url`` without user info (``http://user:pass@host`` → ``http://host``)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"ComfyUI URL must start with http:// or https://: {safe_url(url)!r}")
    return url


def ws_url(base_url: str, client_id: str) -> str:
    parts = urlsplit(base_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, urlencode({"clientId": client_id}), ""))


@dataclass(frozen=True, slots=True)
class NodeError:
    """The first problem of a 400 answer, for admins: which node, which input, what."""

    node_id: str | None
    class_type: str | None
    input_name: str | None
    error_type: str
    message: str


def parse_validation_error(body: Any) -> tuple[NodeError, list[NodeError]]:
    """The first and all node errors of a ``POST /prompt`` 400 body (observed shapes)."""
    errors: list[NodeError] = []
    if isinstance(body, Mapping):
        node_errors = body.get("node_errors")
        if isinstance(node_errors, Mapping):
            for node_id, entry in node_errors.items():
                if not isinstance(entry, Mapping):
                    continue
                class_type = entry.get("class_type")
                for err in entry.get("errors") or []:
                    if not isinstance(err, Mapping):
                        continue
                    extra = (
                        err.get("extra_info") if isinstance(err.get("extra_info"), Mapping) else {}
                    )
                    message = str(err.get("message") or "")
                    details = str(err.get("details") or "")
                    text = (
                        f"{message}: {details}" if details and details not in message else message
                    )
                    errors.append(
                        NodeError(
                            node_id=str(node_id),
                            class_type=class_type if isinstance(class_type, str) else None,
                            input_name=extra.get("input_name")
                            if isinstance(extra.get("input_name"), str)
                            else None,
                            error_type=str(err.get("type") or "invalid"),
                            message=text[:_MAX_DETAIL],
                        )
                    )
        top = body.get("error")
        if not errors and isinstance(top, Mapping):
            details = str(top.get("details") or "")
            message = str(top.get("message") or top.get("type") or "invalid prompt")
            node_id = None
            if details.startswith("Node ID '#") and details.endswith("'"):
                node_id = details[len("Node ID '#") : -1]
            errors.append(
                NodeError(
                    node_id=node_id,
                    class_type=None,
                    input_name=None,
                    error_type=str(top.get("type") or "invalid_prompt"),
                    message=message[:_MAX_DETAIL],
                )
            )
    if not errors:
        errors.append(NodeError(None, None, None, "invalid_prompt", "invalid prompt"))
    return errors[0], errors


def workflow_error(first: NodeError, all_errors: list[NodeError]) -> WorkflowInvalidError:
    where = f"node {first.node_id}" if first.node_id else "workflow"
    if first.class_type:
        where += f" ({first.class_type})"
    if first.input_name:
        where += f" input {first.input_name}"
    return WorkflowInvalidError(
        f"{where}: {first.error_type}: {first.message}",
        node_id=first.node_id,
        class_type=first.class_type,
        input_name=first.input_name,
        error_type=first.error_type,
        reason=first.message,
        count=len(all_errors),
    )


class ComfyUIClient:
    """Async HTTP client of one ComfyUI server. Share it between tasks; close with
    :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        *,
        auth: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.base_url = normalize_url(base_url)
        headers = {"Accept": "application/json"}
        if auth:
            headers["Authorization"] = auth
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
            follow_redirects=False,
        )
        self.label = safe_url(self.base_url)

    def __repr__(self) -> str:  # never shows the auth header
        return f"ComfyUIClient({self.label!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- requests -------------------------------------------------------------------------

    async def submit(
        self, graph: Mapping[str, Any], *, client_id: str, prompt_id: str
    ) -> dict[str, Any]:
        """``POST /prompt``; returns ``{prompt_id, number, node_errors}``."""
        payload = {"prompt": graph, "client_id": client_id, "prompt_id": prompt_id}
        response = await self._send("POST", "/prompt", op="submit", json=payload)
        if response.status_code == 400:
            body = _json(response)
            first, all_errors = parse_validation_error(body)
            log.warning("comfyui %s: prompt refused: %s", self.label, first.error_type)
            raise workflow_error(first, all_errors)
        body = self._ok(response, "submit")
        if not isinstance(body, Mapping) or not isinstance(body.get("prompt_id"), str):
            raise BackendError("POST /prompt answer has no prompt_id")
        return dict(body)

    async def queue(self) -> dict[str, list[Any]]:
        body = self._ok(await self._send("GET", "/queue", op="queue"), "queue")
        if not isinstance(body, Mapping):
            raise BackendError("GET /queue answer is not an object")
        return {
            "queue_running": list(body.get("queue_running") or []),
            "queue_pending": list(body.get("queue_pending") or []),
        }

    async def history(self, prompt_id: str) -> dict[str, Any] | None:
        """The history entry of ``prompt_id``; None while it is not finished (or unknown)."""
        body = self._ok(await self._send("GET", f"/history/{prompt_id}", op="history"), "history")
        if isinstance(body, Mapping) and isinstance(body.get(prompt_id), Mapping):
            return dict(body[prompt_id])
        return None

    async def queue_remaining(self) -> int:
        """``GET /prompt`` → ``exec_info.queue_remaining`` (also the health check)."""
        body = self._ok(await self._send("GET", "/prompt", op="health"), "health")
        try:
            return int(body["exec_info"]["queue_remaining"])
        except (KeyError, TypeError, ValueError):
            raise BackendError("GET /prompt answer has no queue_remaining") from None

    async def interrupt(self, prompt_id: str) -> None:
        """Interrupt ``prompt_id`` if it is running (never a global interrupt)."""
        self._ok(
            await self._send("POST", "/interrupt", op="interrupt", json={"prompt_id": prompt_id}),
            "interrupt",
            empty=True,
        )

    async def delete_pending(self, prompt_id: str) -> None:
        self._ok(
            await self._send("POST", "/queue", op="delete", json={"delete": [prompt_id]}),
            "delete",
            empty=True,
        )

    async def upload_image(self, data: bytes, filename: str, content_type: str) -> dict[str, str]:
        """``POST /upload/image`` without overwrite; use the returned ``name``."""
        files = {"image": (filename, data, content_type)}
        response = await self._send(
            "POST", "/upload/image", op="upload", files=files, data={"type": "input"}
        )
        body = self._ok(response, "upload")
        if not isinstance(body, Mapping) or not isinstance(body.get("name"), str):
            raise BackendError("upload answer has no name")
        return {"name": body["name"], "subfolder": str(body.get("subfolder") or "")}

    async def object_info(self) -> dict[str, Any]:
        body = self._ok(await self._send("GET", "/object_info", op="object_info"), "object_info")
        if not isinstance(body, Mapping):
            raise BackendError("object_info answer is not an object")
        return dict(body)

    def view_url(self, item: Mapping[str, Any]) -> str:
        query = urlencode(
            {
                "filename": str(item.get("filename", "")),
                "subfolder": str(item.get("subfolder", "")),
                "type": str(item.get("type", "output")),
            }
        )
        return f"{self.base_url}/view?{query}"

    # -- internals ------------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, op: str, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            self._log(method, path, None, started, type(exc).__name__)
            if op == "submit" and not isinstance(exc, _NOT_SENT):
                raise SubmitUncertainError(
                    f"POST /prompt may have reached {self.label} ({type(exc).__name__})"
                ) from exc
            raise BackendUnavailableError(
                f"{self.label} unreachable ({type(exc).__name__})", server=self.label
            ) from exc
        self._log(method, path, response.status_code, started)
        return response

    def _ok(self, response: httpx.Response, op: str, *, empty: bool = False) -> Any:
        status = response.status_code
        if status in (401, 403):
            raise AuthFailedError(
                f"{self.label} refused the request ({status}): check COMFYUI_AUTH and the proxy's "
                "Origin handling",
                status=status,
            )
        if status >= 500:
            raise BackendUnavailableError(f"{self.label} answered {status}", status=status)
        if not 200 <= status < 300:
            raise BackendError(f"{op}: unexpected HTTP {status} from {self.label}", status=status)
        if empty:
            return None
        body = _json(response)
        if body is None:
            raise BackendError(f"{op}: malformed JSON from {self.label}")
        return body

    def _log(
        self,
        method: str,
        path: str,
        status: int | None,
        started: float,
        error: str | None = None,
    ) -> None:
        level = logging.DEBUG if method == "GET" and status == 200 else logging.INFO
        if status is None or status >= 400:
            level = logging.WARNING
        log.log(
            level,
            "comfyui %s %s%s status=%s duration_ms=%.1f%s",
            method,
            self.label,
            path,
            status if status is not None else "-",
            (time.perf_counter() - started) * 1000,
            f" error={error}" if error else "",
        )


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def is_retryable(exc: GenerationError) -> bool:
    return isinstance(exc, BackendUnavailableError)
