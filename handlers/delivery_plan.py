"""What to send for one finished run: a pure function of its downloaded outputs.

Images go with ``send_photo`` (when they fit, or once re-encoded into the photo limits by
``handlers/telegram_io.py``), plus the original with ``send_document`` when the user asked for
PNG files or the photo limits were exceeded; gifs with ``send_animation``; videos with
``send_video``; anything else as a document. An original too large to upload is offered by
the "original file" button instead (``offer_original``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generation.models import MediaType
from handlers.telegram_io import UPLOAD_MAX_BYTES, PreparedPhoto


@dataclass(frozen=True, slots=True)
class Fetched:
    """One output, downloaded: its position, kind, file name and bytes (``photo``: the
    photo-limit version of an image, see ``prepare_photo``)."""

    index: int
    media_type: MediaType
    filename: str
    data: bytes
    photo: PreparedPhoto | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One Bot API send. ``key`` identifies it across restarts (``"<index>:<kind>"``)."""

    key: str
    method: str  # send_photo, send_document, send_animation, send_video
    kwargs: dict[str, Any]


@dataclass(slots=True)
class Plan:
    items: list[Item] = field(default_factory=list)
    offer_original: bool = False  # the last item carries the "original file" button


_SIMPLE = {
    MediaType.ANIMATION: ("animation", "send_animation"),
    MediaType.VIDEO: ("video", "send_video"),
}


def plan_delivery(outputs: list[Fetched], *, png_as_file: bool) -> Plan:
    plan = Plan()
    for out in outputs:
        if out.media_type is MediaType.IMAGE:
            prepared = out.photo or PreparedPhoto(None, True, out.filename)
            if prepared.photo is not None:
                photo = {"photo": prepared.photo, "filename": prepared.filename}
                plan.items.append(Item(f"{out.index}:photo", "send_photo", photo))
            as_file = png_as_file or prepared.reencoded
            if as_file and len(out.data) <= UPLOAD_MAX_BYTES:
                document = {"document": out.data, "filename": out.filename}
                plan.items.append(Item(f"{out.index}:document", "send_document", document))
            else:
                plan.offer_original = True
            continue
        kind, method = _SIMPLE.get(out.media_type, ("document", "send_document"))
        plan.items.append(
            Item(f"{out.index}:{kind}", method, {kind: out.data, "filename": out.filename})
        )
    return plan
