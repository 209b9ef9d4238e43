"""The progress message of each generation: one message, kept up to date by editing it.

:class:`ProgressRenderer` subscribes to the generation ``EventBus``. For every run it keeps the
newest state the user should see and one flush task that edits the message:

* an edit is made only when the text (or the presence of the Cancel button) changes;
* at most one edit per ``progress_edit_interval`` per message (``max(interval, 3 s)`` in groups),
  the first edit counting from when the message was sent;
* while an edit is not yet due, newer states simply replace older ones (coalescing);
* ``RetryAfter`` on an intermediate edit drops that edit and backs off for ``retry_after``;
* "message is not modified" counts as success;
* final states (done, failed with a reason, cancelled) are always shown: they wait out the
  throttle and are retried (tenacity, honouring ``retry_after``); they remove the Cancel button.

The clock and sleep are injectable so tests drive time by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from telegram import Bot, InlineKeyboardMarkup
from telegram.error import BadRequest, Forbidden, NetworkError, RetryAfter

from generation.events import (
    GenerationCancelled,
    GenerationEvent,
    GenerationFailed,
    GenerationProgress,
    GenerationQueued,
    GenerationStarted,
)
from generation.models import RunRecord, RunStatus
from handlers.deps import Services
from handlers.errors import reason_text
from handlers.keyboards import cancel_keyboard
from handlers.origin import Origin
from handlers.telegram_io import retry_after_seconds, telegram_retrying
from handlers.text_fit import localize_live_status

log = logging.getLogger(__name__)

MAX_TRACKED = 5000  # runs kept in memory; the oldest finished-or-orphaned ones go first
FINAL_EDIT_ATTEMPTS = 5


def _not_modified(exc: BadRequest) -> bool:
    return "not modified" in exc.message.lower()


def _message_gone(exc: BadRequest) -> bool:
    text = exc.message.lower()
    return "not found" in text or "can't be edited" in text or "message_id_invalid" in text


@dataclass(eq=False)
class _Progress:
    run_id: str
    user_id: int
    chat_id: int
    lang: str
    group: bool
    message_id: int | None = None
    sent: tuple[str, bool] | None = None  # (text, has cancel button) last shown
    desired: tuple[str, bool] | None = None
    final: bool = False  # the desired state is final: later intermediate states are ignored
    started: bool = False  # an event after the queue (started, progress) set ``desired``
    last_edit_at: float = float("-inf")
    blocked_until: float = float("-inf")
    task: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class ProgressRenderer:
    """Renders progress messages from generation events. Create once, then ``attach()``."""

    def __init__(
        self,
        bot: Bot,
        services: Services,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._bot = bot
        self._services = services
        self._clock = clock
        self._sleep = sleep
        self._runs: OrderedDict[str, _Progress] = OrderedDict()
        self._unsubscribe: Callable[[], None] | None = None
        self.edits = 0  # edit calls made (metrics/tests)

    # -- wiring ---------------------------------------------------------------------------------

    def attach(self) -> ProgressRenderer:
        """Subscribe to the bus and become ``services.progress``."""
        bus = self._services.generation.bus
        self._unsubscribe = bus.subscribe(
            self._on_event,
            GenerationQueued,
            GenerationStarted,
            GenerationProgress,
            GenerationFailed,
            GenerationCancelled,
        )
        self._services.progress = self
        return self

    async def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [p.task for p in self._runs.values() if p.task is not None and not p.task.done()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._services.progress is self:
            self._services.progress = None

    # -- text -----------------------------------------------------------------------------------

    def _t(self, lang: str, key: str, **params: object) -> str:
        text = self._services.i18n.t(lang, key, **params)
        if self._services.backend_label:  # e.g. the local preview backend
            text = f"{text} · {self._services.i18n.t(lang, 'progress.preview')}"
        return text

    def queued_text(self, lang: str, position: int | None) -> str:
        if position:
            return self._t(lang, "progress.queued", position=position)
        return self._t(lang, "progress.submitting")

    def initial_text(self, run: RunRecord, lang: str) -> str:
        """The text of a fresh progress message for ``run``: the newest state its events
        brought (e.g. "waiting" once the create was answered), so no edit has to follow."""
        position = self._services.generation.queue_position(run.id)
        p = self._runs.get(run.id)
        if position is None and p is not None and p.started and p.message_id is None:
            if p.desired is not None and not p.final:
                return p.desired[0]
        if run.status is RunStatus.QUEUED:
            return self.queued_text(lang, position or run.queue_position)
        return self._status_text(lang, run.status, run.progress, run.live_status, None)

    def _status_text(
        self,
        lang: str,
        status: RunStatus,
        progress: float,
        live_status: str | None,
        queue_position: int | None,
    ) -> str:
        if status is RunStatus.QUEUED:
            return self.queued_text(lang, queue_position)
        if status is RunStatus.SUBMITTING:
            return self._t(lang, "progress.submitting")
        if status is RunStatus.WAITING:
            if queue_position:
                return self._t(lang, "progress.waiting_position", position=queue_position)
            return self._t(lang, "progress.waiting")
        if status is RunStatus.STARTING:
            return self._t(lang, "progress.starting")
        percent = max(0, min(100, round(progress * 100)))
        status = localize_live_status(self._services.i18n.t, lang, live_status)
        if status:  # "Executing KSampler" → the localized "step KSampler"
            return self._t(lang, "progress.running_status", percent=percent, status=status)
        return self._t(lang, "progress.running", percent=percent)

    def cancel_markup(self, run_id: str, lang: str) -> InlineKeyboardMarkup:
        return cancel_keyboard(self._services.i18n, run_id, lang)

    # -- state ----------------------------------------------------------------------------------

    def _interval(self, p: _Progress) -> float:
        cfg = self._services.config
        if p.group:
            return max(cfg.progress_edit_interval, cfg.group_edit_interval, 3.0)
        return cfg.progress_edit_interval

    def _remember(self, p: _Progress) -> None:
        self._runs[p.run_id] = p
        self._runs.move_to_end(p.run_id)
        while len(self._runs) > MAX_TRACKED:
            old_id, old = next(iter(self._runs.items()))
            if old.task is not None and not old.task.done():
                break  # never drop a message that is being edited
            del self._runs[old_id]

    async def _state(self, run_id: str) -> _Progress | None:
        p = self._runs.get(run_id)
        if p is not None:
            return p
        run = await self._services.storage.runs.get_run(run_id)
        if run is None:
            return None
        if run_id in self._runs:  # registered while we were reading
            return self._runs[run_id]
        p = self._from_record(run)
        self._remember(p)
        return p

    def _from_record(self, run: RunRecord) -> _Progress:
        origin = Origin.of(run)
        lang = origin.lang or self._services.i18n.resolve_language(None, None)
        return _Progress(
            run_id=run.id,
            user_id=run.user_id,
            chat_id=run.chat_id,
            lang=lang,
            group=origin.group,
            message_id=run.progress_message_id,
        )

    def track(self, run: RunRecord) -> None:
        """``run`` was just accepted and its progress message is on the way: keep its state
        from the record at hand, so its first events need no database read."""
        if run.id not in self._runs:
            self._remember(self._from_record(run))

    def register(
        self, run: RunRecord, message_id: int, text: str, *, has_button: bool = True
    ) -> None:
        """The handler sent the progress message for ``run`` (showing ``text``)."""
        p = self._runs.get(run.id) or self._from_record(run)
        p.message_id = message_id
        p.sent = (text, has_button)
        p.last_edit_at = self._clock()
        if p.desired is None:
            p.desired = p.sent
        elif not p.started and not p.final:
            # Only queue positions came before: the queue as it is now decides (the message
            # just sent shows it, unless the position moved meanwhile).
            position = self._services.generation.queue_position(run.id)
            p.desired = (self.queued_text(p.lang, position), has_button) if position else p.sent
        self._remember(p)
        self._kick(p)

    async def show(self, run_id: str, key: str, *, final: bool = False, **params: object) -> None:
        """Show a state by locale key (used by delivery: "sending", then "done")."""
        p = await self._state(run_id)
        if p is None:
            return
        self._set(p, self._t(p.lang, key, **params), final=final)

    async def show_after(self, delay: float, run_id: str, key: str) -> None:
        """Show an intermediate state by locale key after ``delay`` seconds of this renderer's
        clock, unless the caller cancels this first (delivery: "sending", only when slow)."""
        await self._sleep(delay)
        await self.show(run_id, key)

    def _set(self, p: _Progress, text: str, *, final: bool) -> None:
        if p.final and not final:
            return  # a stale intermediate state after the end
        p.desired = (text, not final)
        p.final = p.final or final
        self._kick(p)

    def is_finished(self, run_id: str) -> bool:
        p = self._runs.get(run_id)
        return p is None or p.finished.is_set()

    async def drain(self) -> None:
        """Wait for every flush task running now (tests, shutdown)."""
        while True:
            tasks = [p.task for p in self._runs.values() if p.task and not p.task.done()]
            if not tasks:
                return
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- events ---------------------------------------------------------------------------------

    async def _on_event(self, event: GenerationEvent) -> None:
        p = await self._state(event.run_id)
        if p is None:
            return
        lang = p.lang
        if isinstance(event, GenerationQueued):
            self._set(p, self.queued_text(lang, event.position), final=False)
        elif isinstance(event, GenerationStarted):
            p.started = True
            self._set(p, self._t(lang, "progress.waiting"), final=False)
        elif isinstance(event, GenerationProgress):
            p.started = True
            text = self._status_text(
                lang, event.status, event.progress, event.live_status, event.queue_position
            )
            self._set(p, text, final=False)
        elif isinstance(event, GenerationFailed):
            reason = reason_text(self._services.i18n, lang, event.error_code)
            self._set(p, self._t(lang, "progress.failed", reason=reason), final=True)
        elif isinstance(event, GenerationCancelled):
            self._set(p, self._t(lang, "progress.cancelled"), final=True)

    # -- flushing -------------------------------------------------------------------------------

    def _kick(self, p: _Progress) -> None:
        if p.message_id is None:
            return  # shown once the handler registers the message
        if p.task is None or p.task.done():
            p.task = asyncio.get_running_loop().create_task(self._flush(p))

    async def _flush(self, p: _Progress) -> None:
        try:
            while True:
                if p.desired is None or p.desired == p.sent:
                    if p.final:
                        self._finish(p)
                    return
                now = self._clock()
                due = max(p.last_edit_at + self._interval(p), p.blocked_until)
                if now < due:
                    await self._sleep(due - now)
                    continue  # the newest desired state is read again after the wait
                text, has_button = p.desired
                final = p.final
                if final:
                    ok = await self._edit_final(p, text)
                else:
                    ok = await self._edit_once(p, text, has_button)
                if ok is None:  # the message is gone: nothing more to show
                    self._finish(p)
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("progress flush failed for run %s", p.run_id)
            if p.final:
                self._finish(p)

    def _finish(self, p: _Progress) -> None:
        p.finished.set()
        if self._runs.get(p.run_id) is p:
            del self._runs[p.run_id]

    async def _call_edit(self, p: _Progress, text: str, has_button: bool) -> None:
        self.edits += 1
        markup = self.cancel_markup(p.run_id, p.lang) if has_button else None
        try:
            await self._bot.edit_message_text(
                text,
                chat_id=p.chat_id,
                message_id=p.message_id,
                reply_markup=markup,
                parse_mode=None,
            )
        except BadRequest as exc:
            if not _not_modified(exc):
                raise

    async def _edit_once(self, p: _Progress, text: str, has_button: bool) -> bool | None:
        """One attempt for an intermediate state; True when shown, None when the message is
        gone. Failed attempts are dropped (a newer state will follow, or the final one)."""
        try:
            await self._call_edit(p, text, has_button)
        except RetryAfter as exc:
            p.blocked_until = self._clock() + retry_after_seconds(exc)
            return False
        except BadRequest as exc:
            if _message_gone(exc):
                return None
            log.warning("progress edit refused for run %s: %s", p.run_id, exc.message)
            p.sent = (text, has_button)  # do not retry the same refused text
            p.last_edit_at = self._clock()
            return False
        except Forbidden:
            return None
        except NetworkError as exc:
            log.info("progress edit failed for run %s: %s", p.run_id, exc)
            p.last_edit_at = self._clock()
            return False
        p.sent = (text, has_button)
        p.last_edit_at = self._clock()
        return True

    async def _edit_final(self, p: _Progress, text: str) -> bool | None:
        """The final state: retried with tenacity, honouring ``retry_after``."""
        try:
            async for attempt in telegram_retrying(FINAL_EDIT_ATTEMPTS, self._sleep):
                with attempt:
                    await self._call_edit(p, text, False)
        except BadRequest as exc:
            if not _message_gone(exc):
                log.warning("final progress edit refused for run %s: %s", p.run_id, exc.message)
            return None
        except (Forbidden, NetworkError, RetryAfter) as exc:
            log.warning("final progress edit failed for run %s: %s", p.run_id, exc)
            return None
        p.sent = (text, False)
        p.last_edit_at = self._clock()
        return True
