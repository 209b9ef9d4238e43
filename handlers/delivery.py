"""Result delivery: on ``GenerationCompleted`` send the outputs as replies to the request.

The send loop: download every output (``handlers/telegram_io.py``), plan the sends
(``handlers/delivery_plan.py``), send them with bounded retries; the caption carries the
prompt and the seed, the last item the result buttons (``handlers/results.py``). Each item
sent is noted in the run's ``meta`` right away, so a delivery resumed after a crash sends only
the missing ones. After delivery the hold is settled (``mark_delivered``); when nothing could
be delivered the user is told and the hold released. Each run is delivered once, even when
``GenerationCompleted`` is published twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import httpx
from telegram import Bot

from generation.events import GenerationCompleted, GenerationEvent
from generation.models import DeliveryState, MediaOutput, MediaType, RunRecord
from handlers.actions import deployed_types, record_delivered, result_keyboard
from handlers.albums import send_album
from handlers.delivery_plan import Fetched, Item, plan_delivery
from handlers.deps import Services
from handlers.origin import DELIVERED_ITEMS_KEY, Origin
from handlers.telegram_io import (
    CAPTION_LIMIT,
    Sleep,
    call_with_retry,
    download,
    output_filename,
    prepare_photo_async,
    truncate_prompt,
)

log = logging.getLogger(__name__)


class Delivery:
    """Subscribes to ``GenerationCompleted`` and delivers each run's outputs exactly once."""

    def __init__(
        self,
        bot: Bot,
        services: Services,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        download_timeout: float = 60.0,
    ) -> None:
        self._bot = bot
        self._services = services
        self._sleep = sleep
        self._http = httpx.AsyncClient(
            transport=transport or services.http_transport,
            timeout=download_timeout,
            follow_redirects=True,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
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
        services = self._services
        run = await services.storage.runs.get_run(run_id)
        if run is None or run.delivery_state is not DeliveryState.PENDING:
            return
        outputs = run.outputs or event_outputs
        await self._show(run_id, "progress.sending")
        origin = Origin.of(run)
        lang = origin.lang or "en"
        try:
            sent = await self._send_outputs(run, tuple(outputs), lang)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery of run %s failed", run_id)
            sent = 0
        if sent:
            await services.generation.mark_delivered(run_id)
            log.info(
                "run %s delivered: %d message(s) for %d output(s), charged %d",
                run_id,
                sent,
                len(outputs),
                run.price,
            )
            await self._show(run_id, "progress.done", final=True)
            return
        await services.generation.mark_delivery_failed(run_id)
        log.info("run %s not delivered (%d output(s)); hold released", run_id, len(outputs))
        key = "result.no_outputs" if not outputs else "result.delivery_failed"
        with contextlib.suppress(Exception):
            await self._send(
                "send_message",
                chat_id=run.chat_id,
                text=services.i18n.t(lang, key),
                **origin.reply_kwargs(),
            )
        await self._show(run_id, "progress.delivery_failed", final=True)

    # -- sending --------------------------------------------------------------------------------

    async def _send(self, method: str, **kwargs: Any) -> Any:
        """A Bot API send with bounded retries (flood control honoured)."""
        return await call_with_retry(getattr(self._bot, method), self._sleep, **kwargs)

    async def download(self, url: str) -> bytes:
        return await download(self._http, url, self._sleep)

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

    async def _fetch(self, run: RunRecord, outputs: tuple[MediaOutput, ...]) -> list[Fetched]:
        fetched: list[Fetched] = []
        for index, output in enumerate(outputs):
            try:
                data = await self.download(output.url)
            except Exception as exc:
                log.warning("run %s: could not download output %d: %s", run.id, index, exc)
                continue
            name = output_filename(output, index)
            photo = None
            if output.media_type is MediaType.IMAGE:
                photo = await prepare_photo_async(data, name)
            fetched.append(Fetched(index, output.media_type, name, data, photo))
        return fetched

    async def _send_outputs(
        self, run: RunRecord, outputs: tuple[MediaOutput, ...], lang: str
    ) -> int:
        """Send every output; returns how many were delivered. Two or more photos go as one
        album, followed by the message with the per-image buttons (U1…, V1…)."""
        if not outputs:
            return 0
        png_as_file = await self._png_as_file(run.user_id)
        plan = plan_delivery(await self._fetch(run, outputs), png_as_file=png_as_file)
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
        sent = 0
        if len(photos) >= 2:
            sent += await self._send_album(run, photos, lang, caption, base, deployed, done)
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
            try:
                message = await self._send(item.method, **base, **item.kwargs, **extra)
                sent += 1
            except Exception as exc:
                log.warning("run %s: %s failed: %s", run.id, item.method, exc)
                continue
            await record_delivered(self._services.storage, run.id, _index(item), message)
            done.add(item.key)
            await self._note_delivered(run.id, done)
        return sent

    async def _send_album(
        self,
        run: RunRecord,
        photos: list[Item],
        lang: str,
        caption: str,
        base: dict[str, Any],
        deployed: set[str],
        done: set[str],
    ) -> int:
        if all(item.key in done for item in photos):
            return len(photos)
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
            log.warning("run %s: the album failed: %s", run.id, exc)
            return 0
        done.update(item.key for item in photos)
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


def _index(item: Item) -> int:
    return int(item.key.split(":", 1)[0])
