"""Incoming images: find the image in a message and download it into an ``InputImage``.

Accepts the largest photo size (``photo[-1]``) or a document whose MIME type is ``image/*``.
Files above Telegram's 20 MB ``getFile`` limit are refused before any download. The file is
fetched with the bot's own request object; the Telegram file URL (it contains the bot token)
never leaves this module — the generation module only ever sees the bytes.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError
from telegram import Bot, Message
from telegram.constants import FileSizeLimit
from telegram.error import BadRequest

from generation.images import MAX_PIXELS, MAX_SIDE_PIXELS
from generation.request import InputImage

MAX_DOWNLOAD_BYTES = int(FileSizeLimit.FILESIZE_DOWNLOAD)  # 20 MB through getFile
Image.MAX_IMAGE_PIXELS = 80_000_000  # refuse decompression bombs early


class MediaError(Exception):
    """A user-side problem with an incoming file; ``key`` is the locale key to answer with."""

    def __init__(self, key: str, **params: object) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


@dataclass(frozen=True, slots=True)
class ImageRef:
    """Where an incoming image lives on Telegram (no URL: resolved only when downloading)."""

    file_id: str
    file_size: int | None
    mime_type: str
    filename: str
    is_document: bool


def image_ref(message: Message | None) -> ImageRef | None:
    """The image in ``message``, if any. Raises ``MediaError`` for a non-image document."""
    if message is None:
        return None
    if message.photo:
        size = message.photo[-1]
        return ImageRef(size.file_id, size.file_size, "image/jpeg", "photo.jpg", False)
    doc = message.document
    if doc is not None:
        mime = (doc.mime_type or "").lower()
        if not mime.startswith("image/"):
            raise MediaError("gen.not_an_image")
        return ImageRef(doc.file_id, doc.file_size, mime, doc.file_name or "image", True)
    return None


def _too_large() -> MediaError:
    return MediaError("gen.image_too_large", max_side=MAX_SIDE_PIXELS)


def _inspect(data: bytes) -> tuple[str, int, int]:
    """Decode the header (and verify) in a worker thread: format, width, height.

    Absurd dimensions and decompression bombs are refused from the header alone, with a
    message that says so (not "not an image")."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if max(width, height) > MAX_SIDE_PIXELS or width * height > MAX_PIXELS:
                raise _too_large()
            img.verify()
        with Image.open(io.BytesIO(data)) as img:
            fmt = (img.format or "PNG").upper()
            return fmt, img.width, img.height
    except Image.DecompressionBombError as exc:
        raise _too_large() from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise MediaError("gen.not_an_image") from exc


def _normalize(data: bytes) -> tuple[bytes, str, str, int, int]:
    """Formats ComfyDeploy cannot take as a data URI (webp, bmp, tiff, ...) become PNG."""
    fmt, width, height = _inspect(data)
    if fmt in ("PNG", "JPEG"):
        mime = "image/png" if fmt == "PNG" else "image/jpeg"
        return data, mime, "png" if fmt == "PNG" else "jpg", width, height
    with Image.open(io.BytesIO(data)) as img:
        out = io.BytesIO()
        img.convert("RGBA" if "A" in img.getbands() else "RGB").save(out, "PNG")
    return out.getvalue(), "image/png", "png", width, height


async def download_image(bot: Bot, ref: ImageRef) -> InputImage:
    """Fetch the file behind ``ref`` into memory as an ``InputImage``."""
    if ref.file_size is not None and ref.file_size > MAX_DOWNLOAD_BYTES:
        raise MediaError("gen.file_too_large", limit_mb=MAX_DOWNLOAD_BYTES // 1_000_000)
    try:
        tg_file = await bot.get_file(ref.file_id)
    except BadRequest as exc:  # e.g. no file_size was declared and the file is above 20 MB
        if "too big" in exc.message.lower():
            raise MediaError(
                "gen.file_too_large", limit_mb=MAX_DOWNLOAD_BYTES // 1_000_000
            ) from exc
        raise
    if tg_file.file_size is not None and tg_file.file_size > MAX_DOWNLOAD_BYTES:
        raise MediaError("gen.file_too_large", limit_mb=MAX_DOWNLOAD_BYTES // 1_000_000)
    data = bytes(await tg_file.download_as_bytearray())
    payload, mime, ext, width, height = await asyncio.to_thread(_normalize, data)
    stem = ref.filename.rsplit(".", 1)[0] or "image"
    return InputImage(
        data=payload, mime_type=mime, filename=f"{stem}.{ext}", width=width, height=height
    )


def _binarize_mask(data: bytes, size: tuple[int, int] | None) -> tuple[bytes, int, int]:
    """White = repaint. Photos arrive JPEG-compressed, so threshold to pure black/white; a
    transparent PNG counts its opaque pixels as white. Resized to the photo when they differ."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                alpha = rgba.getchannel("A")
                gray = rgba.convert("L")
                # fully transparent → black; otherwise the luminance decides
                gray.paste(0, mask=alpha.point(lambda a: 255 if a < 128 else 0))
            else:
                gray = img.convert("L")
            bw = gray.point(lambda v: 255 if v >= 128 else 0, mode="L")
            if size is not None and bw.size != size:
                bw = bw.resize(size, Image.Resampling.NEAREST)
            out = io.BytesIO()
            bw.save(out, "PNG")
            return out.getvalue(), bw.width, bw.height
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError("gen.not_an_image") from exc


async def download_mask(bot: Bot, ref: ImageRef, image: InputImage | None) -> InputImage:
    """Fetch a mask and turn it into a lossless black/white PNG the size of ``image``."""
    raw = await download_image(bot, ref)
    size = (image.width, image.height) if image and image.width and image.height else None
    data, width, height = await asyncio.to_thread(_binarize_mask, raw.data, size)
    return InputImage(
        data=data, mime_type="image/png", filename="mask.png", width=width, height=height
    )
