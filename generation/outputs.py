"""Turn ComfyDeploy ``outputs`` into :class:`MediaOutput` records.

ComfyDeploy stores one output per output node; each has ``data: {<key>: [item, ...]}`` where the
key depends on the node (``images``, ``gifs``, ``files``, ``videos``, ...). VideoHelperSuite writes
mp4 files under ``gifs`` and native video nodes under ``images``, so the media type is decided by
the file extension, never by the key. Parsing never raises: malformed parts are skipped.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from generation.models import MediaOutput, MediaType

log = logging.getLogger(__name__)

_EXTENSIONS: dict[str, MediaType] = {
    "png": MediaType.IMAGE,
    "jpg": MediaType.IMAGE,
    "jpeg": MediaType.IMAGE,
    "webp": MediaType.IMAGE,
    "gif": MediaType.ANIMATION,
    "mp4": MediaType.VIDEO,
    "webm": MediaType.VIDEO,
    "mov": MediaType.VIDEO,
}
MEDIA_EXTENSIONS: Mapping[str, MediaType] = MappingProxyType(_EXTENSIONS)  # read-only view


def _extension(url_or_filename: str) -> str:
    """Lower-case extension of a URL's path (query and fragment ignored) or of a file name."""
    text = url_or_filename.strip()
    try:
        parts = urlsplit(text)
        path = parts.path if (parts.scheme or parts.netloc) else text.split("?", 1)[0]
    except ValueError:
        path = text.split("?", 1)[0]
    path = path.split("#", 1)[0]
    _, ext = posixpath.splitext(posixpath.basename(path))
    return ext[1:].lower()


def media_type_for(url_or_filename: str) -> MediaType:
    """Media type from the file extension (case-insensitive; query strings ignored)."""
    if not isinstance(url_or_filename, str):
        return MediaType.UNKNOWN
    return _EXTENSIONS.get(_extension(url_or_filename), MediaType.UNKNOWN)


def _int_or_none(value: Any) -> int | None:
    # bool is an int subclass; a True "width" is garbage, not 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _media_from_item(item: Mapping[str, Any], key: str) -> MediaOutput | None:
    url = item.get("url")
    if not isinstance(url, str) or not url.strip():
        return None
    url = url.strip()
    filename = _str_or_none(item.get("filename"))
    media_type = media_type_for(url)
    if media_type is MediaType.UNKNOWN and filename:
        # Presigned or CDN URLs may hide the extension; the filename still has it.
        media_type = media_type_for(filename)
    return MediaOutput(
        url=url,
        media_type=media_type,
        filename=filename,
        format=_str_or_none(item.get("format")),
        width=_int_or_none(item.get("width")),
        height=_int_or_none(item.get("height")),
        size=_int_or_none(item.get("size")),
        key=key,
    )


def _iter_items(outputs: Any) -> Iterable[tuple[str, Mapping[str, Any]]]:
    if isinstance(outputs, Mapping):  # a single output object instead of a list
        outputs = [outputs]
    if not isinstance(outputs, list | tuple):
        return
    for output in outputs:
        if not isinstance(output, Mapping):
            continue
        data = output.get("data")
        if not isinstance(data, Mapping):
            continue
        for key, items in data.items():
            if not isinstance(items, list | tuple):
                continue
            for item in items:
                if isinstance(item, Mapping):
                    yield str(key), item


def parse_outputs(outputs: Any) -> tuple[MediaOutput, ...]:
    """Every ``outputs[].data.<key>[]`` item that has a ``url``, in order, without duplicates."""
    result: list[MediaOutput] = []
    seen: set[str] = set()
    try:
        for key, item in _iter_items(outputs):
            media = _media_from_item(item, key)
            if media is None or media.url in seen:
                continue
            seen.add(media.url)
            result.append(media)
    except Exception:  # never let a weird payload break run tracking
        log.warning("unexpected outputs shape; kept %d items", len(result), exc_info=True)
    return tuple(result)
