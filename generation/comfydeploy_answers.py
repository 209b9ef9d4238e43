"""What ComfyDeploy's HTTP answers mean (generation/client.py sends the requests): every
failure becomes a ``GenerationError``; those worth another attempt are wrapped in
:class:`Retryable`, and a create whose request may have reached the backend in
:class:`Uncertain` (see the client's docstring for when that is retried)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

from generation.errors import (
    AuthFailedError,
    BackendError,
    BackendUnavailableError,
    DeploymentNotFoundError,
    GenerationError,
    InvalidInputError,
    RateLimitedError,
    RunNotFoundError,
    SubmitUncertainError,
)

# Errors raised before any byte of the request could have reached the server.
_NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
_CANCEL_NOT_FOUND_MARKER = "error cancel function 404"


class Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying; ``error`` is raised at the end."""

    def __init__(self, error: GenerationError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class Uncertain(Retryable):
    """Internal: a create attempt whose request may have reached the backend."""


def _detail_text(body: Any) -> str:
    """Human text of a FastAPI error body: ``{"detail": str}`` or a 422 list (without the
    echoed ``input`` values, which may be huge data URIs)."""
    if isinstance(body, Mapping):
        detail = body.get("detail", body.get("error", body.get("message")))
    else:
        detail = body
    if isinstance(detail, str):
        return detail[:500]
    if isinstance(detail, list):
        parts = []
        for entry in detail[:10]:
            if isinstance(entry, Mapping):
                loc = entry.get("loc")
                where = ".".join(str(p) for p in loc) if isinstance(loc, list | tuple) else ""
                msg = str(entry.get("msg", ""))[:200]
                parts.append(f"{where}: {msg}" if where else msg)
            else:
                parts.append(str(entry)[:200])
        return "; ".join(parts)
    return ""


def _detail_field(body: Any) -> str | None:
    """The offending field of a 422 body (last ``loc`` element), when there is one."""
    if isinstance(body, Mapping) and isinstance(body.get("detail"), list):
        for entry in body["detail"]:
            if isinstance(entry, Mapping) and isinstance(entry.get("loc"), list | tuple):
                loc = entry["loc"]
                if loc:
                    return str(loc[-1])
    return None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def transport_error(op: str, exc: httpx.TransportError) -> Exception:
    if op == "create" and not isinstance(exc, _NOT_SENT_ERRORS):
        return Uncertain(
            SubmitUncertainError(
                f"create-run request may have reached the backend ({type(exc).__name__})"
            )
        )
    return Retryable(BackendUnavailableError(f"transport error: {type(exc).__name__}"))


def read_response(op: str, response: httpx.Response, run_id: str | None) -> Any:
    status = response.status_code
    if 200 <= status < 300:
        body = _json_body(response)
        if body is None:
            raise BackendError(f"malformed JSON in {op} answer", status=status)
        return body
    body = _json_body(response)
    detail = _detail_text(body) if body is not None else ""
    if status in (401, 403):
        raise AuthFailedError(f"ComfyDeploy refused the API key: {detail}", status=status)
    if status == 404:
        if op in ("get", "cancel"):
            raise RunNotFoundError(detail or "Run not found", run_id=run_id)
        if op == "create":
            raise DeploymentNotFoundError(detail or "Deployment not found")
        raise BackendError(f"{op}: 404 {detail}", status=status)
    if status in (400, 422):
        raise InvalidInputError(detail or f"HTTP {status}", field=_detail_field(body))
    if status == 429:
        raise Retryable(RateLimitedError("ComfyDeploy rate limit"), _retry_after(response))
    if op == "create" and status >= 500 and status not in (502, 503):
        # 500/504: a gateway may have given up while the backend queued the run.
        raise Uncertain(
            SubmitUncertainError(f"create-run answered {status}; a run may exist", status=status)
        )
    if status >= 500:
        if op == "cancel" and _CANCEL_NOT_FOUND_MARKER in detail.lower():
            # ComfyDeploy wraps its own 404 in a 500 (docs/comfydeploy.md): not retryable.
            raise RunNotFoundError(detail, run_id=run_id)
        raise Retryable(
            BackendUnavailableError(f"ComfyDeploy {status}", status=status),
            _retry_after(response),
        )
    raise BackendError(f"unexpected HTTP {status} on {op}: {detail}", status=status)
