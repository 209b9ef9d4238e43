"""Result delivery: on ``GenerationCompleted`` send the outputs as replies to the request.

The send loop: download every output (``handlers/telegram_io.py``), plan the sends
(``handlers/delivery_plan.py``), send them with bounded retries; the caption carries the
prompt and the seed, the last item the result buttons (``handlers/results.py``). Each item
sent is noted in the run's ``meta`` right away, so a delivery resumed after a crash sends only
the missing ones. After delivery the hold is settled (``mark_delivered``); when nothing could
be delivered the user is told and the hold released. Each run is delivered once, even when
``GenerationCompleted`` is published twice.

Telegram outages (issue 11, point 5): a send that fails with a 5xx, a connection error or
429 after its own retries leaves the result PENDING (hold kept); the whole round is retried
with backoff until ``DELIVERY_RETRY_WINDOW`` after the run finished — across restarts too, as
a restart republishes undelivered results. Items already sent are never sent again, so the
result arrives once and is charged once. Only after the window is the user told and the hold
released. A media upload that timed out is counted as sent, not repeated (its answer was lost,
not necessarily the upload). An output the safe fetcher refuses fails the run (localized
``error.OUTPUT_REFUSED``, hold released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
from telegram import Bot
from telegram.error import TimedOut

from generation.errors import OutputRefusedError
from generation.events import GenerationCompleted, GenerationEvent
from generation.models import DeliveryState, MediaOutput, MediaType, RunRecord
from handlers.actions import deployed_types, result_keyboard
from handlers.albums import send_album
from handlers.delivery_plan import Item, plan_delivery
from handlers.delivery_steps import Marks, fetch_outputs, note_delivered
from handlers.deps import Services
from handlers.origin import DELIVERED_ITEMS_KEY, Origin
from handlers.telegram_io import (
    CAPTION_LIMIT,
    Sleep,
    call_with_retry,
    download,
    is_outage,
    output_fetcher,
    output_filename,
    truncate_prompt,
    upload_timeouts,
)

log = logging.getLogger(__name__)

RETRY_BACKOFF_INITIAL = 2.0  # seconds before the first delivery retry after an outage
RETRY_BACKOFF_MAX = 60.0
# "Sending…" is shown only when a delivery takes longer than this (the renderer's clock): a
# quick one goes from the progress straight to the photo and "done", no edit in front of it.
SENDING_SHOWN_AFTER = 1.0


@dataclass(frozen=True, slots=True)
class _Outcome:
    sent: int  # items of the result that are out (now or before)
    outage: bool  # some item failed because Telegram was down or throttling


class Delivery:
    """Subscribes to ``GenerationCompleted`` and delivers each run's outputs exactly once."""

    def __init__(
        self,
        bot: Bot,
        services: Services,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        download_timeout: float = 120.0,
    ) -> None:
        self._bot = bot
        self._services = services
        self._sleep = sleep
        self._clock = clock
        config = services.config
        origins = [*config.trusted_output_urls]
        backend_url = getattr(services.backend, "base_url", None)
        if isinstance(backend_url, str):
            origins.append(backend_url)
        self._http = output_fetcher(
            origins,
            config.output_url_allowlist,
            transport=transport or services.http_transport,
            total_timeout=download_timeout,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._marks: set[asyncio.Task[None]] = set()  # bookkeeping writes after the sends
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self) -> Delivery:
        """Subscribe to the bus and become ``services.delivery``."""
        self._unsubscribe = self._services.generation.bus.subscribe(
            self._on_completed, GenerationCompleted
        )
        self._services.delivery = self
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
        # Bookkeeping of items already sent is never cut short: it keeps them from repeating.
        await asyncio.gather(*self._marks, return_exceptions=True)
        await self._http.aclose()
        if self._services.delivery is self:
            self._services.delivery = None

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
        outputs = event.outputs if isinstance(event, GenerationCompleted) else ()
        task = asyncio.get_running_loop().create_task(self._deliver(run_id, tuple(outputs)))
        self._tasks[run_id] = task
        task.add_done_callback(lambda _t, r=run_id: self._tasks.pop(r, None))

    async def _show(self, run_id: str, key: str, *, final: bool = False) -> None:
        progress = self._services.progress
        if progress is not None:
            await progress.show(run_id, key, final=final)

    async def _deliver(self, run_id: str, event_outputs: tuple[MediaOutput, ...]) -> None:
        progress = self._services.progress
        sending = None
        if progress is not None:
            show = progress.show_after(SENDING_SHOWN_AFTER, run_id, "progress.sending")
            sending = asyncio.get_running_loop().create_task(show)
        try:
            await self._deliver_run(run_id, event_outputs)
        finally:
            if sending is not None:
                sending.cancel()

    async def _delivered(self, run: RunRecord, sent: int, outputs: int, marks: Marks) -> None:
        """Everything that arrived is out: "done" first (its edit runs while the bookkeeping
        is written), then the items' marks, then the hold settled (exactly once)."""
        await self._show(run.id, "progress.done", final=True)
        await marks.wait()
        await self._services.generation.mark_delivered(run.id)
        _log_delivered(run, sent, outputs)

    async def _deliver_run(self, run_id: str, event_outputs: tuple[MediaOutput, ...]) -> None:
        services = self._services
        run = await services.storage.runs.get_run(run_id)
        if run is None or run.delivery_state is not DeliveryState.PENDING:
            return
        outputs = tuple(run.outputs or event_outputs)
        lang = Origin.of(run).lang or "en"
        deadline = (run.finished_at or self._clock()) + services.config.delivery_retry_window
        backoff = RETRY_BACKOFF_INITIAL
        failure = "result.no_outputs" if not outputs else "result.delivery_failed"
        marks = Marks(self._services.storage, run, self._marks)
        for _ in range(10_000):  # bounded; the window ends the loop long before
            try:
                outcome = await self._send_outputs(run, outputs, lang, marks)
            except asyncio.CancelledError:
                raise
            except OutputRefusedError as exc:
                log.warning("run %s: an output was refused: %s", run_id, exc.message)
                failure = "error.OUTPUT_REFUSED"
                break
            except Exception:
                log.exception("delivery of run %s failed", run_id)
                break
            if outcome.sent and not outcome.outage:
                await self._delivered(run, outcome.sent, len(outputs), marks)
                return
            if not outcome.outage or self._clock() + backoff > deadline:
                if outcome.sent:  # part of it arrived: that part is what the user paid for
                    await self._delivered(run, outcome.sent, len(outputs), marks)
                    return
                break
            log.warning(
                "run %s: Telegram unavailable; retrying delivery in %.0f s", run_id, backoff
            )
            await marks.wait()
            await self._sleep(backoff)
            backoff = min(backoff * 2, RETRY_BACKOFF_MAX)
            run = await services.storage.runs.get_run(run_id) or run
            if run.delivery_state is not DeliveryState.PENDING:
                return
            marks = Marks(self._services.storage, run, self._marks)
        await marks.wait()
        await self._give_up(run, lang, failure)

    async def _give_up(self, run: RunRecord, lang: str, key: str) -> None:
        """Release the hold and tell the user (best effort: Telegram may still be down)."""
        await self._services.generation.mark_delivery_failed(run.id)
        log.info("run %s not delivered (%s); hold released", run.id, key)
        with contextlib.suppress(Exception):
            await self._send(
                "send_message",
                chat_id=run.chat_id,
                text=self._services.i18n.t(lang, key),
                **Origin.of(run).reply_kwargs(),
            )
        await self._show(run.id, "progress.delivery_failed", final=True)

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, method: str, **kwargs: Any) -> Any:
        """A Bot API send with bounded retries (flood control honoured)."""
        return await call_with_retry(getattr(self._bot, method), self._sleep, **kwargs)

    async def download(self, url: str) -> bytes:
        return await download(self._http, url, self._sleep)

    async def _send_media(self, method: str, size: int, **kwargs: Any) -> Any:
        """An upload: time-outs fitting its size, a time-out never repeated."""
        kwargs = {**upload_timeouts(size), **kwargs}
        return await call_with_retry(getattr(self._bot, method), self._sleep, upload=True, **kwargs)

    def caption(self, run: RunRecord, lang: str) -> str:
        prompt = Origin.of(run).prompt_of(run)
        seed = (run.request or {}).get("seed", -1)
        i18n = self._services.i18n
        return truncate_prompt(
            lambda p: i18n.t(lang, "result.caption", prompt=p, seed=seed), prompt, CAPTION_LIMIT
        )

    async def _png_as_file(self, user_id: int) -> bool:
        try:
            user = await self._services.storage.users.get(user_id)
        except Exception:
            log.warning("could not read settings of user %s", user_id, exc_info=True)
            return False
        return user is not None and user.settings.png_as_file

    async def _send_outputs(
        self, run: RunRecord, outputs: tuple[MediaOutput, ...], lang: str, marks: Marks
    ) -> _Outcome:
        """Send every output not sent yet; how many are out, and whether Telegram was down.
        Two or more photos go as one album, followed by the message with the per-image
        buttons (U1…, V1…). Each send's bookkeeping goes to ``marks`` (written in order, while
        the next item is sent)."""
        if not outputs:
            return _Outcome(0, False)
        # The user's PNG-as-file setting is read while the outputs download.
        setting = asyncio.get_running_loop().create_task(self._png_as_file(run.user_id))
        try:
            fetched = await fetch_outputs(self.download, run.id, outputs)
        finally:
            png_as_file = await setting
        plan = plan_delivery(fetched, png_as_file=png_as_file)
        caption = self.caption(run, lang)
        base = {"chat_id": run.chat_id, **Origin.of(run).reply_kwargs()}
        deployed = await deployed_types(self._services.storage)
        documents = {
            item.key.split(":")[0] for item in plan.items if item.method == "send_document"
        }
        photos = [item for item in plan.items if item.method == "send_photo"]
        # Items already delivered before a crash/restart are not sent again (see
        # _note_delivered); only an item killed between Telegram's answer and our note repeats.
        done = set((run.meta or {}).get(DELIVERED_ITEMS_KEY) or ())
        sent, outage = 0, False
        if len(photos) >= 2:
            in_album, outage = await self._send_album(
                run, photos, lang, caption, base, deployed, done
            )
            sent += in_album
        rest = [item for item in plan.items if len(photos) < 2 or item not in photos]
        for position, item in enumerate(rest):
            if item.key in done:
                sent += 1
                continue
            extra: dict[str, Any] = {"caption": caption}
            if position == len(rest) - 1 and len(photos) < 2:
                original = any(i.key.split(":")[0] not in documents for i in photos)
                keyboard = result_keyboard(
                    self._services, lang, run, deployed, original=original or plan.offer_original
                )
                if keyboard is not None:
                    extra["reply_markup"] = keyboard
            size = sum(len(v) for v in item.kwargs.values() if isinstance(v, bytes))
            # The previous item's mark is durable before the next send: a crash repeats at
            # most the one item in flight (the last item's mark does not delay "done").
            await marks.wait()
            message = None
            try:
                message = await self._send_media(item.method, size, **base, **item.kwargs, **extra)
            except TimedOut:
                log.warning("run %s: %s timed out; not repeated", run.id, item.method)
            except Exception as exc:
                outage = outage or is_outage(exc)
                log.warning("run %s: %s failed: %s", run.id, item.method, type(exc).__name__)
                continue
            sent += 1
            done.add(item.key)
            marks.add(_index(item), message, done)
        return _Outcome(sent, outage)

    async def _send_album(
        self,
        run: RunRecord,
        photos: list[Item],
        lang: str,
        caption: str,
        base: dict[str, Any],
        deployed: set[str],
        done: set[str],
    ) -> tuple[int, bool]:
        """The photos as one album: (how many are out, whether Telegram was down)."""
        if all(item.key in done for item in photos):
            return len(photos), False
        items = [(_index(i), i.kwargs["photo"], i.kwargs["filename"]) for i in photos][:10]
        keyboard = result_keyboard(
            self._services, lang, run, deployed, items=[i for i, _, _ in items]
        )
        try:
            sent = await send_album(
                self._send,
                self._services.storage,
                run.id,
                items,
                caption=caption,
                base=base,
                keyboard=keyboard,
                keyboard_text=self._services.i18n.t(lang, "actions.batch_pick", count=len(items)),
            )
        except Exception as exc:
            log.warning("run %s: the album failed: %s", run.id, type(exc).__name__)
            return 0, is_outage(exc)
        done.update(item.key for item in photos)
        await note_delivered(self._services.storage, run, done)
        return sent, False

    async def send_original(self, run: RunRecord, lang: str) -> int:
        """Send the image outputs of ``run`` as documents (the "original file" button)."""
        base = {"chat_id": run.chat_id, **Origin.of(run).reply_kwargs()}
        sent = 0
        for index, output in enumerate(run.outputs):
            if output.media_type is not MediaType.IMAGE:
                continue
            data = await self.download(output.url)
            await self._send(
                "send_document",
                **base,
                document=data,
                filename=output_filename(output, index),
                caption=self.caption(run, lang),
            )
            sent += 1
        return sent


def _log_delivered(run: RunRecord, sent: int, outputs: int) -> None:
    """The last INFO line of a generation's story (docs: README "Operating it")."""
    log.info(
        "run %s delivered: %d message(s) for %d output(s), charged %d",
        run.id,
        sent,
        outputs,
        run.price,
    )


def _index(item: Item) -> int:
    return int(item.key.split(":", 1)[0])
