"""Talking to Telegram and fetching output files: retries that honour flood control, the
upload limits, and fitting an image into the photo limits.

Retries use tenacity: ``RetryAfter`` waits what Telegram asks, time-outs and transport errors
back off, a ``BadRequest`` (a ``NetworkError`` subclass) or ``Forbidden`` is never retried.
A media upload (``send_photo``, ``send_document``...) that timed out is *not* repeated: the
file may well have arrived (the time-out is on the answer), and a repeat would send a copy.
Uploads get time-outs that fit their size (:func:`upload_timeouts`).

Output files are fetched with ``generation/safe_fetch.py`` (only the backend's origin, public
https addresses or ``OUTPUT_URL_ALLOWLIST`` hosts; every redirect hop checked; byte and time
caps); only transient failures are retried.
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

from generation.errors import OutputDownloadError
from generation.http_transport import AiohttpTransport
from generation.images import prepare_output_photo
from generation.models import MediaOutput
from generation.safe_fetch import FetchPolicy, SafeFetcher

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


MEDIA_METHODS = frozenset(
    {"send_photo", "send_document", "send_animation", "send_video", "send_audio"}
)
UPLOAD_BYTES_PER_SECOND = 256 * 1024  # a slow uplink; the time-out must not cut a good upload


def upload_timeouts(size: int) -> dict[str, float]:
    """``write_timeout``/``read_timeout`` for an upload of ``size`` bytes (PTB's 5 s default
    read time-out made large uploads "time out" after they had arrived)."""
    transfer = size / UPLOAD_BYTES_PER_SECOND
    return {"write_timeout": 20.0 + transfer, "read_timeout": 30.0 + transfer / 2}


def is_outage(exc: BaseException) -> bool:
    """Telegram (or the way to it) is down or throttling: 5xx, connection errors, 429."""
    if isinstance(exc, RetryAfter):
        return True
    return isinstance(exc, NetworkError) and not isinstance(exc, BadRequest | Forbidden | TimedOut)


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


def telegram_retrying(attempts: int, sleep: Sleep, *, upload: bool = False) -> AsyncRetrying:
    """Bounded retries of one Bot API call (see the module docstring); ``upload``: a time-out
    is not retried."""
    retry = is_outage if upload else is_transient
    return AsyncRetrying(
        retry=retry_if_exception(retry),
        wait=telegram_wait(),
        stop=stop_after_attempt(attempts),
        sleep=sleep,
        reraise=True,
    )


async def call_with_retry(
    call: Callable[..., Awaitable[Any]],
    sleep: Sleep,
    attempts: int = SEND_ATTEMPTS,
    *,
    upload: bool = False,
    **kwargs: Any,
) -> Any:
    """``await call(**kwargs)`` with :func:`telegram_retrying` (``upload``: see there)."""
    async for attempt in telegram_retrying(attempts, sleep, upload=upload):
        with attempt:
            return await call(**kwargs)
    return None  # pragma: no cover - AsyncRetrying either returns or raises


def _download_retryable(exc: BaseException) -> bool:
    return isinstance(exc, OutputDownloadError) and exc.transient


async def download(fetcher: SafeFetcher, url: str, sleep: Sleep) -> bytes:
    """Fetch an output file through the safe fetcher (at most 50 MB), retrying transient
    failures. :class:`OutputRefusedError` (an address we will not fetch) is never retried."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception(_download_retryable),
        wait=lambda rs: 0.5 * rs.attempt_number,
        stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
        sleep=sleep,
        reraise=True,
    ):
        with attempt:
            return await fetcher.fetch(url)
    raise DownloadError("unreachable")  # pragma: no cover


def output_fetcher(
    backend_urls: list[str],
    allowlist: frozenset[str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    total_timeout: float = 120.0,
) -> SafeFetcher:
    """The fetcher of output files: the backend's origins, the allowlist, the upload cap."""
    policy = FetchPolicy.build(
        backend_urls=backend_urls,
        allowlist=allowlist,
        max_bytes=UPLOAD_MAX_BYTES,
        total_timeout=total_timeout,
    )
    # generation/http_transport.py: aiohttp under httpx, as for the ComfyDeploy API
    return SafeFetcher(policy, transport=transport or AiohttpTransport())


@dataclass(frozen=True, slots=True)
class PreparedPhoto:
    photo: bytes | None  # None: cannot be sent as a photo at all (extreme aspect ratio)
    reencoded: bool  # the original broke a photo limit, so it also goes as a document
    filename: str


def prepare_photo(data: bytes, filename: str = "result.png") -> PreparedPhoto:
    """Fit an image into Telegram's photo limits (runs in a worker thread): decoded only when
    it must be re-encoded, never beyond ``OUTPUT_MAX_PIXELS`` (``generation/images.py``)."""
    out = prepare_output_photo(
        data,
        filename,
        max_bytes=PHOTO_MAX_BYTES,
        max_dimension_sum=PHOTO_MAX_DIMENSION_SUM,
        max_ratio=PHOTO_MAX_RATIO,
    )
    return PreparedPhoto(out.photo, out.reencoded, out.filename)


def _fits_as_is(data: bytes, filename: str) -> PreparedPhoto | None:
    """The common case decided on the event loop: a photo whose header (only the header is
    read, microseconds) says it fits the limits goes as it is, the answer
    :func:`prepare_photo` would give, without a thread hop. ``None``: anything else."""
    if len(data) > PHOTO_MAX_BYTES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Exception:  # also decompression bombs: the thread path decides and logs
        return None
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > PHOTO_MAX_RATIO or width + height > PHOTO_MAX_DIMENSION_SUM:
        return None
    return PreparedPhoto(data, False, filename)


async def prepare_photo_async(data: bytes, filename: str) -> PreparedPhoto:
    """:func:`prepare_photo`, in a worker thread unless the header alone shows the photo fits
    (:func:`_fits_as_is`); an unreadable image cannot be a photo."""
    fits = _fits_as_is(data, filename)
    if fits is not None:
        return fits
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
