"""Result delivery: on ``GenerationCompleted`` send the outputs as replies to the request.

Images go with ``send_photo`` (re-encoded to JPEG under 10 MB and 10 000 px width+height when
needed, in a worker thread), plus the original with ``send_document`` when the user asked for
PNG files or the photo limits were exceeded; gifs with ``send_animation``; videos with
``send_video``; anything else as a document. The caption carries the prompt and the seed; the
last media carries the result buttons. Sends are retried with tenacity (``retry_after``
honoured, never on ``BadRequest``). After delivery the hold is settled
(``mark_delivered``); when nothing could be delivered the user is told and the hold released.
Each run is delivered once, even when ``GenerationCompleted`` is published twice.

The result buttons live here too: again with a new seed, show parameters, original file.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from PIL import Image
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import FileSizeLimit, MessageLimit
from telegram.ext import Application, CallbackQueryHandler
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from generation.events import GenerationCompleted, GenerationEvent
from generation.models import DeliveryState, MediaOutput, MediaType, RunRecord
from handlers.callbacks import RunAction
from handlers.common import Context, answer_query, caller_of, reply_to
from handlers.deps import Services, get_services
from handlers.progress import is_transient, telegram_wait

log = logging.getLogger(__name__)

PHOTO_MAX_BYTES = int(FileSizeLimit.PHOTOSIZE_UPLOAD)  # 10 MB
UPLOAD_MAX_BYTES = int(FileSizeLimit.FILESIZE_UPLOAD)  # 50 MB
PHOTO_MAX_DIMENSION_SUM = 10_000
PHOTO_MAX_RATIO = 20
CAPTION_LIMIT = int(MessageLimit.CAPTION_LENGTH)  # 1024
SEND_ATTEMPTS = 4
DOWNLOAD_ATTEMPTS = 3
DELIVERED_ITEMS_KEY = "delivered_items"  # RunRecord.meta: items of the result already sent
_LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([0-9.]+))?>")


class DownloadError(Exception):
    pass


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


def _filename(output: MediaOutput, index: int) -> str:
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


class Delivery:
    """Subscribes to ``GenerationCompleted`` and delivers each run's outputs exactly once."""

    def __init__(
        self,
        application: Application,
        services: Services,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        download_timeout: float = 60.0,
    ) -> None:
        self._app = application
        self._services = services
        self._sleep = sleep
        transport = transport or services.extras.get("http_transport")
        self._http = httpx.AsyncClient(
            transport=transport, timeout=download_timeout, follow_redirects=True
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self) -> Delivery:
        self._unsubscribe = self._services.generation.bus.subscribe(
            self._on_completed, GenerationCompleted
        )
        self._services.extras["delivery"] = self
        return self

    async def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._http.aclose()
        if self._services.extras.get("delivery") is self:
            del self._services.extras["delivery"]

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    # -- events ---------------------------------------------------------------------------------

    async def _on_completed(self, event: GenerationEvent) -> None:
        run_id = event.run_id
        if run_id in self._seen or run_id in self._tasks:
            return  # a duplicate Completed (e.g. a replayed webhook)
        self._seen[run_id] = None
        while len(self._seen) > 10_000:
            self._seen.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._deliver(run_id, event))
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t, r=run_id: self._tasks.pop(r, None))

    def _progress(self) -> Any:
        return self._services.extras.get("progress")

    async def _show(self, run_id: str, key: str, *, final: bool = False) -> None:
        progress = self._progress()
        if progress is not None:
            await progress.show(run_id, key, final=final)

    async def _deliver(self, run_id: str, event: GenerationEvent) -> None:
        services = self._services
        run = await services.storage.runs.get_run(run_id)
        if run is None or run.delivery_state is not DeliveryState.PENDING:
            return
        outputs = run.outputs or getattr(event, "outputs", ())
        await self._show(run_id, "progress.sending")
        lang = (run.meta or {}).get("lang") or "en"
        try:
            sent = await self._send_outputs(run, tuple(outputs), lang)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of run %s failed", run_id)
            sent = 0
        if sent:
            await services.generation.mark_delivered(run_id)
            await self._show(run_id, "progress.done", final=True)
            return
        await services.generation.mark_delivery_failed(run_id)
        key = "result.no_outputs" if not outputs else "result.delivery_failed"
        with contextlib.suppress(Exception):
            await self._send(
                "send_message",
                chat_id=run.chat_id,
                text=services.i18n.t(lang, key),
                **self._reply_kwargs(run),
            )
        await self._show(run_id, "progress.delivery_failed", final=True)

    # -- sending --------------------------------------------------------------------------------

    def _reply_kwargs(self, run: RunRecord) -> dict[str, Any]:
        meta = run.meta or {}
        kwargs: dict[str, Any] = {
            "reply_parameters": reply_to(meta.get("reply_to_message_id")),
            "parse_mode": None,
        }
        if meta.get("message_thread_id"):
            kwargs["message_thread_id"] = meta["message_thread_id"]
        return kwargs

    async def _send(self, method: str, **kwargs: Any) -> Any:
        """A Bot API send with bounded retries (flood control honoured)."""
        bot = self._app.bot
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=telegram_wait(),
            stop=stop_after_attempt(SEND_ATTEMPTS),
            sleep=self._sleep,
            reraise=True,
        ):
            with attempt:
                return await getattr(bot, method)(**kwargs)
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    async def download(self, url: str) -> bytes:
        """Fetch an output file (at most 50 MB), retrying transport errors and 5xx."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(
                lambda e: (
                    isinstance(e, httpx.TransportError)
                    or (isinstance(e, httpx.HTTPStatusError) and e.response.status_code >= 500)
                )
            ),
            wait=lambda rs: 0.5 * rs.attempt_number,
            stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
            sleep=self._sleep,
            reraise=True,
        ):
            with attempt:
                async with self._http.stream("GET", url) as response:
                    response.raise_for_status()
                    buf = bytearray()
                    async for chunk in response.aiter_bytes():
                        buf += chunk
                        if len(buf) > UPLOAD_MAX_BYTES:
                            raise DownloadError("output larger than the upload limit")
                    return bytes(buf)
        raise DownloadError("unreachable")  # pragma: no cover

    def caption(self, run: RunRecord, lang: str) -> str:
        request = run.request or {}
        prompt = str((run.meta or {}).get("prompt") or request.get("prompt") or "")
        seed = request.get("seed", -1)
        i18n = self._services.i18n
        return truncate_prompt(
            lambda p: i18n.t(lang, "result.caption", prompt=p, seed=seed), prompt, CAPTION_LIMIT
        )

    def result_markup(self, run: RunRecord, lang: str, *, original: bool) -> InlineKeyboardMarkup:
        t = self._services.i18n.t
        row = [
            InlineKeyboardButton(
                t(lang, "result.again_button"), callback_data=RunAction("ag", run.id).pack()
            ),
            InlineKeyboardButton(
                t(lang, "result.params_button"), callback_data=RunAction("pm", run.id).pack()
            ),
        ]
        rows = [row]
        if original:
            rows.append(
                [
                    InlineKeyboardButton(
                        t(lang, "result.original_button"),
                        callback_data=RunAction("og", run.id).pack(),
                    )
                ]
            )
        return InlineKeyboardMarkup(rows)

    async def _png_as_file(self, user_id: int) -> bool:
        try:
            user = await self._services.storage.users.get(user_id)
        except Exception:
            log.warning("could not read settings of user %s", user_id, exc_info=True)
            return False
        return bool(getattr(getattr(user, "settings", None), "png_as_file", False))

    async def _send_outputs(
        self, run: RunRecord, outputs: tuple[MediaOutput, ...], lang: str
    ) -> int:
        """Send every output; returns how many were delivered."""
        if not outputs:
            return 0
        png_as_file = await self._png_as_file(run.user_id)
        caption = self.caption(run, lang)
        base = {"chat_id": run.chat_id, **self._reply_kwargs(run)}
        plan: list[tuple[str, str, dict[str, Any]]] = []  # (item key, method, kwargs)
        original_offer = False
        for index, output in enumerate(outputs):
            try:
                data = await self.download(output.url)
            except Exception as exc:
                log.warning("run %s: could not download output %d: %s", run.id, index, exc)
                continue
            name = _filename(output, index)
            if output.media_type is MediaType.IMAGE:
                try:
                    prepared = await asyncio.to_thread(prepare_photo, data, name)
                except Exception:
                    log.warning("run %s: output %d is not a readable image", run.id, index)
                    prepared = PreparedPhoto(None, True, name)
                if prepared.photo is not None:
                    plan.append(
                        (
                            f"{index}:photo",
                            "send_photo",
                            {"photo": prepared.photo, "filename": prepared.filename},
                        )
                    )
                as_file = png_as_file or prepared.reencoded
                if as_file and len(data) <= UPLOAD_MAX_BYTES:
                    plan.append(
                        (f"{index}:document", "send_document", {"document": data, "filename": name})
                    )
                else:
                    original_offer = True
            elif output.media_type is MediaType.ANIMATION:
                plan.append(
                    (f"{index}:animation", "send_animation", {"animation": data, "filename": name})
                )
            elif output.media_type is MediaType.VIDEO:
                plan.append((f"{index}:video", "send_video", {"video": data, "filename": name}))
            else:
                plan.append(
                    (f"{index}:document", "send_document", {"document": data, "filename": name})
                )
        # Items already delivered before a crash/restart are not sent again (see
        # _note_delivered); only an item killed between Telegram's answer and our note repeats.
        done = set((run.meta or {}).get(DELIVERED_ITEMS_KEY) or ())
        sent = 0
        for position, (key, method, kwargs) in enumerate(plan):
            if key in done:
                sent += 1
                continue
            last = position == len(plan) - 1
            extra: dict[str, Any] = {"caption": caption}
            if last:
                extra["reply_markup"] = self.result_markup(run, lang, original=original_offer)
            try:
                await self._send(method, **base, **kwargs, **extra)
                sent += 1
            except Exception as exc:
                log.warning("run %s: %s failed: %s", run.id, method, exc)
                continue
            done.add(key)
            await self._note_delivered(run.id, done)
        return sent

    async def _note_delivered(self, run_id: str, keys: set[str]) -> None:
        """Record in the run's meta which items reached Telegram, right after each send, so a
        delivery resumed after a crash sends only the missing ones."""
        runs = self._services.storage.runs
        try:
            current = await runs.get_run(run_id)
            if current is None:
                return
            meta = {**(current.meta or {}), DELIVERED_ITEMS_KEY: sorted(keys)}
            await runs.update_run(run_id, meta=meta)
        except Exception:
            log.warning("run %s: could not record delivery progress", run_id, exc_info=True)

    async def send_original(self, run: RunRecord, lang: str) -> int:
        """Send the image outputs of ``run`` as documents (the "original file" button)."""
        base = {"chat_id": run.chat_id, **self._reply_kwargs(run)}
        sent = 0
        for index, output in enumerate(run.outputs):
            if output.media_type is not MediaType.IMAGE:
                continue
            data = await self.download(output.url)
            await self._send(
                "send_document",
                **base,
                document=data,
                filename=_filename(output, index),
                caption=self.caption(run, lang),
            )
            sent += 1
        return sent


# -- result buttons ------------------------------------------------------------------------------


async def _run_for_button(update: Update, context: Context) -> tuple[RunRecord | None, str]:
    """The run a result button is about, and the presser's language; answers stale buttons."""
    services = get_services(context)
    query = update.callback_query
    caller = await caller_of(update, context)
    lang = caller.lang if caller else "en"
    match = RunAction.regex.match(query.data or "") if query else None
    run = await services.storage.runs.get_run(match.group(2)) if match else None
    if run is None:
        await answer_query(update, services, lang, "common.stale_button")
    return run, lang


async def again_button(update: Update, context: Context) -> None:
    """Again with a new seed: the stored request, seed −1, as a new run of the presser."""
    from handlers.generate import resubmit  # local: generate imports progress → delivery

    run, lang = await _run_for_button(update, context)
    if run is None:
        return
    services = get_services(context)
    request = run.request or {}
    if any(
        request.get(name)
        for name in ("image", "mask", "control_image", "style_image", "pose_image")
    ):
        await answer_query(update, services, lang, "result.again_needs_photo", show_alert=True)
        return
    await answer_query(update, services, lang, "result.again_started")
    await resubmit(update, context, run)


async def params_button(update: Update, context: Context) -> None:
    run, lang = await _run_for_button(update, context)
    if run is None:
        return
    services = get_services(context)
    await answer_query(update, services, lang, "result.params_shown")
    r = run.request or {}
    loras = (
        ", ".join(
            f"{name}:{weight or '1'}"
            for name, weight in _LORA_TAG.findall(str(r.get("prompt", "")))
        )
        or "—"
    )
    negative = r.get("negative_prompt")
    text = services.i18n.t(
        lang,
        "result.params",
        type=run.type,
        prompt=(run.meta or {}).get("prompt") or r.get("prompt", ""),
        negative=negative if negative else "—",
        width=r.get("width", "?"),
        height=r.get("height", "?"),
        steps=r.get("steps", "?"),
        cfg=r.get("cfg", "?"),
        seed=r.get("seed", "?"),
        checkpoint=r.get("checkpoint") or "—",
        loras=loras,
    )
    message = update.effective_message
    await context.bot.send_message(
        run.chat_id if message is None else message.chat_id,
        text[: MessageLimit.MAX_TEXT_LENGTH],
        parse_mode=None,
        reply_parameters=reply_to(message.message_id if message else None),
    )


async def original_button(update: Update, context: Context) -> None:
    run, lang = await _run_for_button(update, context)
    if run is None:
        return
    services = get_services(context)
    delivery: Delivery | None = services.extras.get("delivery")
    if delivery is None or not run.outputs:
        await answer_query(update, services, lang, "common.stale_button")
        return
    await answer_query(update, services, lang, "result.original_sending")
    try:
        sent = await delivery.send_original(run, lang)
    except Exception:
        log.warning("original file of run %s could not be sent", run.id, exc_info=True)
        sent = 0
    if not sent:
        message = update.effective_message
        if message is not None:
            await message.reply_text(
                services.i18n.t(lang, "result.delivery_failed"), parse_mode=None
            )


def register_result_buttons(application: Application) -> None:
    application.add_handler(
        CallbackQueryHandler(again_button, pattern=RunAction.action_pattern("ag"))
    )
    application.add_handler(
        CallbackQueryHandler(params_button, pattern=RunAction.action_pattern("pm"))
    )
    application.add_handler(
        CallbackQueryHandler(original_button, pattern=RunAction.action_pattern("og"))
    )
