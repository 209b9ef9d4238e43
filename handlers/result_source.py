"""The image a result action works on: one output of a stored run.

Tried in order: the file Telegram holds for the delivered item (the original document, then
the photo — a file id keeps working after a restart and after the backend's output URL has
expired), then the run's stored output URL. Each source is checked like an incoming photo
(:func:`handlers.media.download_image`). ``MediaError("actions.output_gone")`` when none works.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import Bot
from telegram.error import TelegramError

from generation.models import RunRecord
from generation.request import InputImage
from handlers.media import ImageRef, MediaError, _normalize, download_image

log = logging.getLogger(__name__)

Download = Callable[[str], Awaitable[bytes]]


async def output_image(
    bot: Bot, storage: Any, run: RunRecord, item: int, download: Download | None
) -> InputImage:
    """Output ``item`` of ``run`` as an :class:`InputImage` (see the module docstring)."""
    files = await storage.result_files.for_run(run.id)
    by_kind = {f.kind: f for f in files if f.item == item}
    for kind in ("document", "photo"):
        found = by_kind.get(kind)
        if found is None:
            continue
        is_doc = kind == "document"
        ref = ImageRef(
            found.file_id,
            None,
            "image/png" if is_doc else "image/jpeg",
            f"result_{item}.png" if is_doc else f"result_{item}.jpg",
            is_doc,
        )
        try:
            return await download_image(bot, ref)
        except (MediaError, TelegramError) as exc:
            log.info("run %s item %d: %s file not usable (%s)", run.id, item, kind, exc)
    if download is not None and 0 <= item < len(run.outputs):
        try:
            data = await download(run.outputs[item].url)
            payload, mime, ext, width, height = await asyncio.to_thread(_normalize, data)
        except MediaError:
            raise
        except Exception as exc:
            log.info("run %s item %d: stored output not downloadable (%s)", run.id, item, exc)
        else:
            return InputImage(
                data=payload,
                mime_type=mime,
                filename=f"result_{item}.{ext}",
                width=width,
                height=height,
            )
    raise MediaError("actions.output_gone")
