"""Talking to Telegram and fetching output files: retries that honour flood control, the
upload limits, and fitting an image into the photo limits.

Retries use tenacity: ``RetryAfter`` waits what Telegram asks, time-outs and transport errors
back off, a ``BadRequest`` (a ``NetworkError`` subclass) or ``Forbidden`` is never retried.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
from PIL import Image
from telegram.constants import FileSizeLimit, MessageLimit
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter, TimedOut
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from generation.models import MediaOutput

log = logging.getLogger(__name__)

PHOTO_MAX_BYTES = int(FileSizeLimit.PHOTOSIZE_UPLOAD)  # 10 MB
UPLOAD_MAX_BYTES = int(FileSizeLimit.FILESIZE_UPLOAD)  # 50 MB
PHOTO_MAX_DIMENSION_SUM = 10_000
PHOTO_MAX_RATIO = 20
CAPTION_LIMIT = int(MessageLimit.CAPTION_LENGTH)  # 1024
SEND_ATTEMPTS = 4
DOWNLOAD_ATTEMPTS = 3

Sleep = Callable[[float], Awaitable[Any]]


class DownloadError(Exception):
    pass


def retry_after_seconds(exc: RetryAfter) -> float:
    """``RetryAfter.retry_after`` is ``int`` or ``timedelta`` depending on PTB settings."""
    with warnings.catch_warnings():  # the int form is deprecated; both are handled here
        warnings.simplefilter("ignore")
        value: Any = exc.retry_after
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: flood control, time-outs, transport errors — never a ``BadRequest``
    (which subclasses ``NetworkError``) nor ``Forbidden``."""
    if isinstance(exc, RetryAfter | TimedOut):
        return True
    return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest | Forbidden)


def telegram_wait(fallback: float = 1.0) -> Callable[[RetryCallState], float]:
    """A tenacity ``wait`` that honours ``retry_after`` and otherwise waits ``fallback``·n."""

    def wait(retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetryAfter):
            return retry_after_seconds(exc) + 0.1
        return fallback * retry_state.attempt_number

    return wait


def telegram_retrying(attempts: int, sleep: Sleep) -> AsyncRetrying:
    """Bounded retries of one Bot API call (see the module docstring)."""
    return AsyncRetrying(
        retry=retry_if_exception(is_transient),
        wait=telegram_wait(),
        stop=stop_after_attempt(attempts),
        sleep=sleep,
        reraise=True,
    )


async def call_with_retry(
    call: Callable[..., Awaitable[Any]], sleep: Sleep, attempts: int = SEND_ATTEMPTS, **kwargs: Any
) -> Any:
    """``await call(**kwargs)`` with :func:`telegram_retrying`."""
    async for attempt in telegram_retrying(attempts, sleep):
        with attempt:
            return await call(**kwargs)
    return None  # pragma: no cover - AsyncRetrying either returns or raises


def _download_retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, httpx.TransportError)


async def download(http: httpx.AsyncClient, url: str, sleep: Sleep) -> bytes:
    """Fetch an output file (at most 50 MB), retrying transport errors and 5xx."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_download_retryable),
        wait=lambda rs: 0.5 * rs.attempt_number,
        stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            async with http.stream("GET", url) as response:
                response.raise_for_status()
                buf = bytearray()
                async for chunk in response.aiter_bytes():
                    buf += chunk
                    if len(buf) > UPLOAD_MAX_BYTES:
                        raise DownloadError("output larger than the upload limit")
                return bytes(buf)
    raise DownloadError("unreachable")  # pragma: no cover


@dataclass(frozen=True, slots=True)
class PreparedPhoto:
    photo: bytes | None  # None: cannot be sent as a photo at all (extreme aspect ratio)
    reencoded: bool  # the original broke a photo limit, so it also goes as a document
    filename: str


def prepare_photo(data: bytes, filename: str = "result.png") -> PreparedPhoto:
    """Fit an image into Telegram's photo limits (runs in a worker thread)."""
    with Image.open(io.BytesIO(data)) as img:
        width, height = img.size
        ratio = max(width, height) / max(1, min(width, height))
        if ratio > PHOTO_MAX_RATIO:
            return PreparedPhoto(None, True, filename)
        fits = len(data) <= PHOTO_MAX_BYTES and width + height <= PHOTO_MAX_DIMENSION_SUM
        if fits:
            return PreparedPhoto(data, False, filename)
        rgb = img.convert("RGB")
    scale = min(1.0, PHOTO_MAX_DIMENSION_SUM / (width + height))
    quality = 90
    for _ in range(12):  # bounded: quality first, then size
        w, h = max(1, int(width * scale)), max(1, int(height * scale))
        frame = rgb if (w, h) == rgb.size else rgb.resize((w, h), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        frame.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= PHOTO_MAX_BYTES:
            stem = filename.rsplit(".", 1)[0] or "result"
            return PreparedPhoto(out.getvalue(), True, f"{stem}.jpg")
        if quality > 70:
            quality -= 10
        else:
            scale *= 0.75
    return PreparedPhoto(None, True, filename)


async def prepare_photo_async(data: bytes, filename: str) -> PreparedPhoto:
    """:func:`prepare_photo` in a worker thread; an unreadable image cannot be a photo."""
    try:
        return await asyncio.to_thread(prepare_photo, data, filename)
    except Exception:
        log.warning("output %s is not a readable image", filename)
        return PreparedPhoto(None, True, filename)


def output_filename(output: MediaOutput, index: int) -> str:
    if output.filename:
        return output.filename.rsplit("/", 1)[-1]
    tail = output.url.split("?", 1)[0].rsplit("/", 1)[-1]
    return tail or f"result_{index}"


def truncate_prompt(template: Callable[[str], str], prompt: str, limit: int) -> str:
    """Shorten ``prompt`` so that ``template(prompt)`` fits into ``limit`` characters."""
    text = template(prompt)
    if len(text) <= limit:
        return text
    room = limit - len(template(""))
    if room <= 1:
        return template("")[:limit]
    return template(prompt[: room - 1].rstrip() + "…")
