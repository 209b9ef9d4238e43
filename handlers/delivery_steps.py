"""The steps around the sends of ``handlers/delivery.py``: fetching the outputs, and the
bookkeeping of delivered items. Each item that reached Telegram is noted in the run's meta (a
delivery resumed after a crash sends only the missing ones) and its file id is kept for the
result buttons.

:class:`Marks` writes them in send order in a chain of tasks, so neither the next send nor
the final "done" edit waits for the database; the next send waits for the previous item's
mark (a crash repeats at most the item in flight), the delivery for the whole chain before the
hold is settled, and ``Delivery.detach`` before shutting down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from generation.errors import GenerationError, OutputRefusedError
from generation.models import MediaOutput, MediaType, RunRecord
from handlers.actions import record_delivered
from handlers.delivery_plan import Fetched
from handlers.origin import DELIVERED_ITEMS_KEY
from handlers.telegram_io import output_filename, prepare_photo_async

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    """A log-safe reason: our errors' messages, else the exception type (an httpx error's
    text would carry the URL)."""
    return exc.message if isinstance(exc, GenerationError) else type(exc).__name__


async def fetch_outputs(
    download: Callable[[str], Awaitable[bytes]], run_id: str, outputs: tuple[MediaOutput, ...]
) -> list[Fetched]:
    """Download every output (one that fails is left out) and fit each image into the photo
    limits; an output the safe fetcher refuses ends the delivery (OutputRefusedError)."""
    fetched: list[Fetched] = []
    for index, output in enumerate(outputs):
        try:
            data = await download(output.url)
        except OutputRefusedError:
            raise  # ends the run: nothing of it is sent
        except Exception as exc:  # messages carry no URL (presigned URLs are secrets)
            log.warning("run %s: could not download output %d: %s", run_id, index, _reason(exc))
            continue
        name = output_filename(output, index)
        photo = None
        if output.media_type is MediaType.IMAGE:
            photo = await prepare_photo_async(data, name)
        fetched.append(Fetched(index, output.media_type, name, data, photo))
    return fetched


async def note_delivered(storage: Any, run: RunRecord, keys: set[str]) -> None:
    """Record in the run's meta which items reached Telegram. Only the delivery writes the
    meta of a finished run, so the record it holds is the base (no re-read)."""
    try:
        meta = {**(run.meta or {}), DELIVERED_ITEMS_KEY: sorted(keys)}
        await storage.runs.update_run(run.id, meta=meta)
    except Exception:
        log.warning("run %s: could not record delivery progress", run.id, exc_info=True)


class Marks:
    """The bookkeeping of one delivery round's sent items, written in order off the send
    path; ``wait`` for it before the next send and before the hold is settled."""

    def __init__(self, storage: Any, run: RunRecord, running: set[asyncio.Task[None]]) -> None:
        self._storage = storage
        self._run = run
        self._running = running  # every chain's tasks, for Delivery.detach
        self._last: asyncio.Task[None] | None = None

    def add(self, item: int, message: Any, done: set[str]) -> None:
        """Item ``item`` was sent (``message``: Telegram's answer, None when it timed out);
        ``done``: the keys of every item of the result out so far."""
        write = self._write(self._last, item, message, set(done))
        task = asyncio.get_running_loop().create_task(write)
        self._last = task
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _write(
        self, before: asyncio.Task[None] | None, item: int, message: Any, done: set[str]
    ) -> None:
        if before is not None:  # in order: a later note never loses to an earlier one
            await asyncio.gather(before, return_exceptions=True)
        await asyncio.gather(
            record_delivered(self._storage, self._run.id, item, message),
            note_delivered(self._storage, self._run, done),
            return_exceptions=True,
        )

    async def wait(self) -> None:
        if self._last is not None:
            await asyncio.gather(self._last, return_exceptions=True)
