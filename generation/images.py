"""Input-image preparation: what we send to ComfyDeploy must be a PNG or JPEG.

ComfyDeploy's External Image node decodes only ``data:image/png|jpeg;base64,...`` data URIs
(a WebP data URI silently falls back to the workflow's default image) and drops alpha
(docs/comfydeploy.md). So every input is opened safely (decompression-bomb checks), rotated
by its EXIF orientation, re-encoded to PNG unless it is a JPEG, scaled down to ``max_side`` and,
if still too large, re-encoded as JPEG. Telegram file URLs are never sent: they contain the
bot token.

The functions here are synchronous CPU work; the ``a*`` wrappers run them in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import warnings
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import PurePath

from PIL import Image, ImageOps, UnidentifiedImageError

from generation.errors import InvalidInputError
from generation.ports import Backend
from generation.request import InputImage

MAX_PIXELS = 50_000_000  # refuse anything larger before decoding it
MAX_SIDE_PIXELS = 20_000
JPEG_QUALITY = 92
_ALLOWED_MIME = {"image/png": "image/png", "image/jpeg": "image/jpeg", "image/jpg": "image/jpeg"}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_MAX_SHRINK_STEPS = 6


def _open(
    data: bytes, field: str, draft_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Open and fully decode ``data``, refusing non-images, corrupt files and bombs.

    Returns the image and its size as stored in the file (before any draft reduction).
    """
    if not data:
        raise InvalidInputError("the image is empty", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w <= 0 or h <= 0 or w > MAX_SIDE_PIXELS or h > MAX_SIDE_PIXELS or w * h > MAX_PIXELS:
                raise InvalidInputError(
                    f"the image is too large ({w}x{h} pixels)", field=field, width=w, height=h
                )
            if draft_side and im.format == "JPEG" and max(w, h) > draft_side:
                # Decode big JPEGs at a reduced scale (never below draft_side): faster, less RAM.
                im.draft(im.mode, (draft_side, draft_side))
            im.load()
    except InvalidInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidInputError("the image has absurd dimensions", field=field) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInputError("the file is not a readable image", field=field) from exc
    return im, (w, h)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def _encode(im: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "JPEG":
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    else:
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if _has_alpha(im) else "RGB")
        im.save(buf, format="PNG")
    return buf.getvalue()


def _renamed(filename: str, fmt: str) -> str:
    stem = PurePath(filename or "image").stem or "image"
    return f"{stem}.{'jpg' if fmt == 'JPEG' else 'png'}"


def _mime(fmt: str) -> str:
    return "image/jpeg" if fmt == "JPEG" else "image/png"


def prepare_image(
    img: InputImage,
    *,
    max_side: int = 2048,
    max_bytes: int = 8_000_000,
    field: str = "image",
) -> InputImage:
    """Return ``img`` as a PNG or JPEG no larger than ``max_side`` and ``max_bytes``.

    A PNG/JPEG that needs no change is returned with its original bytes (no recompression).
    Raises :class:`InvalidInputError` (``field``) for non-images, corrupt files, bombs, or an
    image that cannot be brought under ``max_bytes``.
    """
    im, source_size = _open(img.data, field, draft_side=max_side)
    src_format = im.format
    fmt = "JPEG" if src_format == "JPEG" else "PNG"
    # Re-encode when the format is not PNG/JPEG or the pixels changed (draft decoding, EXIF
    # rotation, scaling); otherwise the original bytes are kept.
    changed = src_format not in ("JPEG", "PNG") or im.size != source_size
    if im.getexif().get(0x0112, 1) != 1:  # orientation tag: pixels must be rotated
        im = ImageOps.exif_transpose(im)
        changed = True

    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        changed = True

    if changed:
        data = _encode(im, fmt)
    else:
        data = img.data
    steps = 0
    while len(data) > max_bytes:
        if steps >= _MAX_SHRINK_STEPS:
            raise InvalidInputError(
                f"the image cannot be made smaller than {max_bytes} bytes", field=field
            )
        if fmt == "JPEG" or steps > 0:
            # JPEG already tried at this size: shrink it.
            im = im.resize(
                (max(1, int(im.width * 0.75)), max(1, int(im.height * 0.75))),
                Image.Resampling.LANCZOS,
            )
        fmt = "JPEG"
        data = _encode(im, fmt)
        steps += 1

    return InputImage(
        data=data,
        mime_type=_mime(fmt),
        filename=_renamed(img.filename, fmt),
        width=im.width,
        height=im.height,
    )


def prepare_mask(mask: InputImage, *, size: tuple[int, int], field: str = "mask") -> InputImage:
    """Return the mask as a grayscale PNG of ``size`` (white = area to repaint).

    Transparent areas of a mask with alpha count as black (keep); the mask is scaled with
    NEAREST so it stays crisp.
    """
    im, _ = _open(mask.data, field)
    if im.getexif().get(0x0112, 1) != 1:
        im = ImageOps.exif_transpose(im)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba)
    im = im.convert("L")
    if im.size != tuple(size):
        im = im.resize(tuple(size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return InputImage(
        data=buf.getvalue(),
        mime_type="image/png",
        filename=_renamed(mask.filename or "mask", "PNG"),
        width=im.width,
        height=im.height,
    )


def _checked_mime(img: InputImage) -> str:
    mime = _ALLOWED_MIME.get(img.mime_type.lower())
    if mime is None:
        raise InvalidInputError(f"unsupported image type {img.mime_type}", field="image")
    magic = _PNG_MAGIC if mime == "image/png" else _JPEG_MAGIC
    if not img.data.startswith(magic):
        raise InvalidInputError(f"image bytes are not {mime}", field="image")
    return mime


def to_data_uri(img: InputImage) -> str:
    """``data:image/png;base64,...`` or ``data:image/jpeg;base64,...``; nothing else."""
    mime = _checked_mime(img)
    return f"data:{mime};base64,{base64.b64encode(img.data).decode('ascii')}"


async def image_input_value(img: InputImage, backend: Backend, *, inline_max_bytes: int) -> str:
    """The value to send for an image input: a data URI when small, else an uploaded URL."""
    mime = _checked_mime(img)
    if len(img.data) <= inline_max_bytes:
        return to_data_uri(img)
    return await backend.upload_file(img.data, img.filename, mime)


async def aprepare_image(
    img: InputImage,
    *,
    max_side: int = 2048,
    max_bytes: int = 8_000_000,
    field: str = "image",
) -> InputImage:
    return await asyncio.to_thread(
        prepare_image, img, max_side=max_side, max_bytes=max_bytes, field=field
    )


async def aprepare_mask(
    mask: InputImage, *, size: tuple[int, int], field: str = "mask"
) -> InputImage:
    return await asyncio.to_thread(prepare_mask, mask, size=size, field=field)


# -- memory budget ------------------------------------------------------------------------------


def decoded_size_estimate(data: bytes) -> int:
    """Bytes an image takes while being prepared: the file plus its decoded RGBA pixels (from
    the header only; an unreadable file counts as its length)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except Exception:
        return len(data)
    return len(data) + max(0, w) * max(0, h) * 4


class ImageMemoryBudget:
    """A process-wide cap on image bytes being held/decoded at once (issue 11, point 7).

    :meth:`hold` waits until ``n`` bytes fit under ``max_bytes``; a single job larger than the
    whole budget runs only when nothing else holds any."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(1, int(max_bytes))
        self.used = 0
        self.peak = 0
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        n = max(0, min(int(n), self.max_bytes))
        async with self._cond:
            await self._cond.wait_for(lambda: self.used + n <= self.max_bytes)
            self.used += n
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with self._cond:
                self.used -= n
                self._cond.notify_all()


class HeldImageBytes:
    """Bytes of images held by long-lived objects (the photo of an open /i2i or /inpaint flow),
    counted process-wide until the object is garbage-collected (``weakref.finalize``), so a
    flow dropped in any way (done, cancelled, timed out, replaced) gives its bytes back."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0

    def hold(self, owner: object, n: int) -> bool:
        """Count ``n`` bytes for ``owner`` while it lives; False (nothing counted) when they
        do not fit under ``max_bytes``."""
        if self.used + n > self.max_bytes:
            return False
        self.used += n
        weakref.finalize(owner, self._release, n)
        return True

    def _release(self, n: int) -> None:
        self.used -= n


# Images held by open flows, all users together (each at most 20 MB, Telegram's bot download cap).
FLOW_IMAGES = HeldImageBytes(256 * 1024 * 1024)


# -- outputs --------------------------------------------------------------------------------------

OUTPUT_MAX_PIXELS = 40_000_000  # never decode a larger output (12,600² would be ~0.5 GB)


@dataclass(frozen=True, slots=True)
class PreparedOutputPhoto:
    photo: bytes | None  # None: cannot (or will not) be sent as a photo; send as a document
    reencoded: bool  # the original broke a photo limit, so it also goes as a document
    filename: str


def prepare_output_photo(
    data: bytes,
    filename: str = "result.png",
    *,
    max_bytes: int,
    max_dimension_sum: int,
    max_ratio: float,
    max_pixels: int = OUTPUT_MAX_PIXELS,
) -> PreparedOutputPhoto:
    """Fit an output into a chat's photo limits, decoding it only when it must be re-encoded.

    The header gives the size: an output that already fits is sent as it is, undecoded; one
    with an extreme ratio, or more than ``max_pixels`` pixels, is not decoded at all (it goes
    as a document only). Otherwise it is re-encoded as JPEG, quality first, then size. CPU work:
    call it in a worker thread."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                ratio = max(width, height) / max(1, min(width, height))
                if ratio > max_ratio:
                    return PreparedOutputPhoto(None, True, filename)
                if len(data) <= max_bytes and width + height <= max_dimension_sum:
                    return PreparedOutputPhoto(data, False, filename)
                if width * height > max_pixels:
                    return PreparedOutputPhoto(None, True, filename)
                if img.format == "JPEG":
                    img.draft("RGB", (max_dimension_sum, max_dimension_sum))
                rgb = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return PreparedOutputPhoto(None, True, filename)
    scale = min(1.0, max_dimension_sum / (rgb.width + rgb.height))
    quality = 90
    for _ in range(12):  # bounded: quality first, then size
        w, h = max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale))
        frame = rgb if (w, h) == rgb.size else rgb.resize((w, h), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        frame.save(out, "JPEG", quality=quality, optimize=True)
        if out.tell() <= max_bytes:
            stem = filename.rsplit(".", 1)[0] or "result"
            return PreparedOutputPhoto(out.getvalue(), True, f"{stem}.jpg")
        if quality > 70:
            quality -= 10
        else:
            scale *= 0.75
    return PreparedOutputPhoto(None, True, filename)
