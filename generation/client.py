"""ComfyDeploy v2 HTTP client (implements :class:`generation.ports.Backend`).

One ``httpx.AsyncClient`` per instance, Bearer auth, tenacity retries on transport errors, 429
and 5xx only, a client-side concurrency cap and request rate limit, and one log line per HTTP
attempt (never the API key or headers). Every failure leaves as a ``GenerationError``.

``create_run`` is not idempotent: a timeout or a gateway's 500/504 after the request was sent
may already have queued a run. It is retried freely only when the request surely did not
arrive (connect errors, pool timeouts, 429, 502, 503). An uncertain failure (any other
transport error, 500, 504) gets at most one more attempt, and only when the call carries a
webhook URL: every attempt carries the same one, so a run created by a lost attempt reports to
it and the service adopts or cancels it (generation.service). Without a webhook (polling mode)
nothing could ever find such a run, so there is no second attempt. Either way, an uncertain
outcome that stays uncertain raises :class:`SubmitUncertainError`, logged with the deployment.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

import httpx
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    stop_after_attempt,
    wait_random_exponential,
)

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
from generation.models import DeploymentInfo, RunSnapshot
from generation.status import snapshot_from_payload

log = logging.getLogger("generation.client")

DEFAULT_BASE_URL = "https://api.comfydeploy.com/api"
_MAX_RUN_ID_LEN = 200
# Errors raised before any byte of the request could have reached the server.
_NOT_SENT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
)
_CANCEL_NOT_FOUND_MARKER = "error cancel function 404"

Sleep = Callable[[float], Awaitable[None]]


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth retrying; ``error`` is raised at the end."""

    def __init__(self, error: GenerationError, retry_after: float | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.retry_after = retry_after


class _Uncertain(_Retryable):
    """Internal: a create attempt whose request may have reached the backend."""


class _Wait:
    """Exponential backoff with full jitter, but never shorter than a server's Retry-After
    (capped at ``maximum`` so a hostile header cannot stall us)."""

    def __init__(self, initial: float, maximum: float) -> None:
        self._jitter = wait_random_exponential(multiplier=initial, max=maximum)
        self._max = maximum

    def __call__(self, retry_state: RetryCallState) -> float:
        delay = self._jitter(retry_state)
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if isinstance(exc, _Retryable) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._max))
        return delay


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


def _run_path(run_id: str, suffix: str = "") -> str:
    """``/run/<quoted id><suffix>``; rejects ids that could escape the path."""
    if (
        not isinstance(run_id, str)
        or not run_id.strip()
        or len(run_id) > _MAX_RUN_ID_LEN
        or run_id.strip(".") == ""
        or any(ord(c) < 32 for c in run_id)
    ):
        raise InvalidInputError("invalid run id", field="run_id")
    return f"/run/{quote(run_id, safe='')}{suffix}"


class ComfyDeployClient:
    """Async ComfyDeploy API client. Safe to share between tasks; close with :meth:`aclose`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 4,
        backoff_initial: float = 0.5,
        backoff_max: float = 8.0,
        max_concurrency: int = 32,
        max_per_second: float | None = 100.0,
        sleep: Sleep | None = None,
    ) -> None:
        # Limits (bench/README.md): ComfyDeploy has no request rate limit of its own (excess
        # runs just wait as not-started), and 8 at once / 10 per second — polls included —
        # made create-run calls queue behind the client once ~10 users were active.
        # An empty key is allowed (the bot may start unconfigured): calls then fail with
        # AuthFailedError from the server's 401 instead of crashing at start-up.
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            transport=transport,
            headers=headers,
            timeout=httpx.Timeout(
                read_timeout, connect=connect_timeout, pool=connect_timeout + read_timeout
            ),
            follow_redirects=False,
        )
        self._max_attempts = max(1, max_attempts)
        self._wait = _Wait(backoff_initial, backoff_max)
        self._sleep: Sleep = sleep or asyncio.sleep
        self._semaphore = asyncio.Semaphore(max(1, max_concurrency))
        self._limiter = (
            AsyncLimiter(max_per_second, 1.0) if max_per_second and max_per_second > 0 else None
        )

    @property
    def base_url(self) -> str:
        """The API root (output files of ComfyDeploy may live under the same origin)."""
        return str(self._http.base_url).rstrip("/")

    def __repr__(self) -> str:  # never show the key
        return f"ComfyDeployClient(base_url={str(self._http.base_url)!r})"

    async def __aenter__(self) -> ComfyDeployClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ public API

    async def create_run(
        self,
        deployment_id: str,
        inputs: dict[str, Any],
        *,
        webhook: str | None = None,
        webhook_intermediate_status: bool = True,
        run_ref: str | None = None,  # unused: run ids are chosen by the backend
    ) -> str:
        """Queue a run of ``deployment_id`` and return ComfyDeploy's run id."""
        payload = {
            "deployment_id": deployment_id,
            "inputs": inputs,
            "webhook": webhook,
            "webhook_intermediate_status": webhook_intermediate_status,
        }
        try:
            body = await self._request(
                "create",
                "POST",
                "/run/deployment/queue",
                json=payload,
                uncertain_retries=1 if webhook else 0,
            )
        except SubmitUncertainError:
            log.warning(
                "create-run outcome uncertain: deployment=%s at=%s; a run may exist at the "
                "backend%s",
                deployment_id,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "" if webhook else " (polling mode: check the ComfyDeploy dashboard)",
            )
            raise
        run_id = body.get("run_id") if isinstance(body, Mapping) else None
        if not isinstance(run_id, str) or not run_id:
            raise BackendError("create-run answer has no run_id")
        return run_id

    async def get_run(self, run_id: str) -> RunSnapshot:
        """The authoritative state of a run (``GET /run/{id}?queue_position=true``)."""
        path = _run_path(run_id)
        body = await self._request(
            "get", "GET", path, params={"queue_position": "true"}, run_id=run_id
        )
        return snapshot_from_payload(body)

    async def cancel_run(self, run_id: str) -> None:
        """Cancel a run. Succeeds (no-op) for runs that are already terminal."""
        path = _run_path(run_id, "/cancel")
        await self._request("cancel", "POST", path, run_id=run_id)

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        """Upload an input file (``POST /file/upload``) and return its ``file_url``."""
        files = {"file": (filename, data, content_type)}
        body = await self._request("upload", "POST", "/file/upload", files=files)
        url = body.get("file_url") if isinstance(body, Mapping) else None
        if not isinstance(url, str) or not url:
            raise BackendError("upload answer has no file_url")
        return url

    async def list_deployments(self) -> list[DeploymentInfo]:
        """Deployments visible to the key, with the ``input_id``s of their external inputs."""
        body = await self._request("list", "GET", "/deployments")
        if isinstance(body, Mapping):
            body = next(
                (
                    body[k]
                    for k in ("deployments", "data", "items")
                    if isinstance(body.get(k), list)
                ),
                None,
            )
        if not isinstance(body, list):
            raise BackendError("deployments answer is not a list")
        result: list[DeploymentInfo] = []
        for entry in body:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                continue
            name = entry.get("name")
            inputs: list[str] = []
            input_types = entry.get("input_types")
            if isinstance(input_types, list):
                for item in input_types:
                    input_id = item.get("input_id") if isinstance(item, Mapping) else None
                    if isinstance(input_id, str) and input_id and input_id not in inputs:
                        inputs.append(input_id)
            result.append(
                DeploymentInfo(
                    id=entry["id"],
                    name=name if isinstance(name, str) else None,
                    inputs=tuple(inputs),
                )
            )
        return result

    async def aclose(self) -> None:
        await self._http.aclose()

    # ------------------------------------------------------------------ internals

    async def _request(
        self,
        op: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        files: Mapping[str, Any] | None = None,
        run_id: str | None = None,
        uncertain_retries: int = 0,
    ) -> Any:
        uncertain = 0

        def should_retry(state: RetryCallState) -> bool:
            nonlocal uncertain
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, _Uncertain):
                uncertain += 1
                return uncertain <= uncertain_retries
            return isinstance(exc, _Retryable)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=self._wait,
            retry=should_retry,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    number = attempt.retry_state.attempt_number
                    return await self._attempt(
                        op,
                        method,
                        path,
                        number,
                        json=json,
                        params=params,
                        files=files,
                        run_id=run_id,
                    )
        except _Retryable as exhausted:
            raise exhausted.error from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def _attempt(
        self,
        op: str,
        method: str,
        path: str,
        attempt: int,
        *,
        json: Any,
        params: Mapping[str, str] | None,
        files: Mapping[str, Any] | None,
        run_id: str | None,
    ) -> Any:
        async with self._semaphore:
            if self._limiter is not None:
                await self._limiter.acquire()
            started = time.perf_counter()
            try:
                response = await self._http.request(
                    method, path, json=json, params=params, files=files
                )
            except httpx.TransportError as exc:
                self._log(method, path, None, started, run_id, attempt, error=type(exc).__name__)
                raise self._transport_error(op, exc) from exc
        self._log(method, path, response.status_code, started, run_id, attempt)
        return self._handle_response(op, response, run_id)

    def _transport_error(self, op: str, exc: httpx.TransportError) -> Exception:
        if op == "create" and not isinstance(exc, _NOT_SENT_ERRORS):
            return _Uncertain(
                SubmitUncertainError(
                    f"create-run request may have reached the backend ({type(exc).__name__})"
                )
            )
        return _Retryable(BackendUnavailableError(f"transport error: {type(exc).__name__}"))

    def _handle_response(self, op: str, response: httpx.Response, run_id: str | None) -> Any:
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
            raise _Retryable(RateLimitedError("ComfyDeploy rate limit"), _retry_after(response))
        if op == "create" and status >= 500 and status not in (502, 503):
            # 500/504: a gateway may have given up while the backend queued the run.
            raise _Uncertain(
                SubmitUncertainError(
                    f"create-run answered {status}; a run may exist", status=status
                )
            )
        if status >= 500:
            if op == "cancel" and _CANCEL_NOT_FOUND_MARKER in detail.lower():
                # ComfyDeploy wraps its own 404 in a 500 (docs/comfydeploy.md): not retryable.
                raise RunNotFoundError(detail, run_id=run_id)
            raise _Retryable(
                BackendUnavailableError(f"ComfyDeploy {status}", status=status),
                _retry_after(response),
            )
        raise BackendError(f"unexpected HTTP {status} on {op}: {detail}", status=status)

    @staticmethod
    def _log(
        method: str,
        path: str,
        status: int | None,
        started: float,
        run_id: str | None,
        attempt: int,
        *,
        error: str | None = None,
    ) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        if status is None or status >= 400:
            level = logging.WARNING
        else:
            # Successful calls are DEBUG: the service logs each run's story at INFO (accepted,
            # submitted, finished) with the run id; polls alone come every few seconds.
            level = logging.DEBUG
        log.log(
            level,
            "comfydeploy %s %s status=%s duration_ms=%.1f run_id=%s attempt=%d%s",
            method,
            path,
            status if status is not None else "-",
            duration_ms,
            run_id or "-",
            attempt,
            f" error={error}" if error else "",
            extra={
                "http_method": method,
                "http_path": path,
                "http_status": status,
                "duration_ms": round(duration_ms, 1),
                "run_id": run_id,
                "attempt": attempt,
            },
        )
