"""Input-image preparation: formats, scaling, safety, masks, data URIs and uploads."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from generation.errors import InvalidInputError
from generation.images import (
    aprepare_image,
    aprepare_mask,
    image_input_value,
    prepare_image,
    prepare_mask,
    to_data_uri,
)
from generation.request import InputImage


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _img(size=(64, 48), fmt="PNG", mode="RGB", color=(200, 10, 10), **kw) -> InputImage:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(fmt, "x/y")
    data = _encode(Image.new(mode, size, color), fmt, **kw)
    return InputImage(data=data, mime_type=mime, filename=f"photo.{fmt.lower()}")


def _open(img: InputImage) -> Image.Image:
    im = Image.open(io.BytesIO(img.data))
    im.load()
    return im


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` (1-bit grayscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def test_webp_is_reencoded_as_png() -> None:
    out = prepare_image(_img(fmt="WEBP"))
    assert out.mime_type == "image/png"
    assert out.filename == "photo.png"
    im = _open(out)
    assert im.format == "PNG"
    assert (out.width, out.height) == im.size == (64, 48)


def test_gif_is_reencoded_as_png() -> None:
    out = prepare_image(_img(fmt="GIF", mode="P", color=3))
    assert out.mime_type == "image/png"
    assert _open(out).format == "PNG"


def test_small_png_kept_byte_for_byte() -> None:
    src = _img()
    out = prepare_image(src)
    assert out.data == src.data
    assert (out.width, out.height) == (64, 48)


def test_jpeg_stays_jpeg() -> None:
    out = prepare_image(_img(size=(300, 200), fmt="JPEG"))
    assert out.mime_type == "image/jpeg"
    assert out.filename == "photo.jpg"
    assert _open(out).format == "JPEG"


def test_big_image_scaled_down_keeping_aspect() -> None:
    out = prepare_image(_img(size=(1000, 500)), max_side=256)
    assert (out.width, out.height) == (256, 128)
    assert _open(out).size == (256, 128)


def test_big_jpeg_scaled_down() -> None:
    out = prepare_image(_img(size=(1600, 1200), fmt="JPEG"), max_side=300)
    assert max(out.width, out.height) <= 300
    assert _open(out).size == (out.width, out.height)
    assert out.mime_type == "image/jpeg"


def test_exif_orientation_applied() -> None:
    im = Image.new("RGB", (80, 40), (0, 0, 255))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90°
    data = _encode(im, "JPEG", exif=exif.tobytes())
    out = prepare_image(InputImage(data=data, mime_type="image/jpeg"))
    assert (out.width, out.height) == (40, 80)
    assert _open(out).size == (40, 80)


def test_too_many_bytes_reencoded_as_jpeg() -> None:
    noise = Image.effect_noise((400, 400), 100).convert("RGB")
    src = InputImage(data=_encode(noise, "PNG"), mime_type="image/png")
    limit = len(src.data) // 2
    out = prepare_image(src, max_bytes=limit)
    assert len(out.data) <= limit
    assert out.mime_type == "image/jpeg"
    assert _open(out).format == "JPEG"


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\ngarbage"])
def test_not_an_image_refused(data: bytes) -> None:
    with pytest.raises(InvalidInputError) as info:
        prepare_image(InputImage(data=data), field="image")
    assert info.value.field == "image"


def test_truncated_image_refused() -> None:
    data = _img(size=(200, 200), fmt="JPEG").data
    with pytest.raises(InvalidInputError):
        prepare_image(InputImage(data=data[: len(data) // 3], mime_type="image/jpeg"))


@pytest.mark.parametrize("size", [(12000, 12000), (30000, 10), (200_000, 200_000)])
def test_decompression_bomb_refused(size: tuple[int, int]) -> None:
    bomb = InputImage(data=_png_claiming(*size))
    assert len(bomb.data) < 200
    with pytest.raises(InvalidInputError) as info:
        prepare_image(bomb, field="mask")
    assert info.value.field == "mask"
    with pytest.raises(InvalidInputError):
        prepare_mask(bomb, size=(10, 10))


def test_mask_resized_to_photo_size_grayscale_png() -> None:
    mask = Image.new("RGB", (40, 30), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, 20, 30))  # left half white = repaint
    out = prepare_mask(InputImage(data=_encode(mask, "PNG")), size=(80, 60))
    im = _open(out)
    assert im.format == "PNG" and im.mode == "L"
    assert im.size == (80, 60) == (out.width, out.height)
    assert im.getpixel((5, 5)) == 255
    assert im.getpixel((75, 55)) == 0
    assert {value for _, value in im.getcolors()} == {0, 255}  # NEAREST keeps it crisp


def test_mask_transparent_areas_are_kept() -> None:
    mask = Image.new("RGBA", (10, 10), (255, 255, 255, 0))
    mask.paste((255, 255, 255, 255), (0, 0, 5, 10))
    out = prepare_mask(InputImage(data=_encode(mask, "PNG")), size=(10, 10))
    im = _open(out)
    assert im.getpixel((1, 1)) == 255
    assert im.getpixel((8, 8)) == 0


def test_data_uri_png_and_jpeg() -> None:
    png = prepare_image(_img())
    uri = to_data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png.data
    jpg = prepare_image(_img(fmt="JPEG"))
    assert to_data_uri(jpg).startswith("data:image/jpeg;base64,")


def test_data_uri_refuses_other_formats() -> None:
    with pytest.raises(InvalidInputError):
        to_data_uri(_img(fmt="WEBP"))
    with pytest.raises(InvalidInputError):  # mime says PNG, bytes are not
        to_data_uri(InputImage(data=b"GIF89a....", mime_type="image/png"))


class _UploadBackend:
    def __init__(self) -> None:
        self.uploads: list[tuple[int, str, str]] = []

    async def upload_file(self, data: bytes, filename: str, content_type: str) -> str:
        self.uploads.append((len(data), filename, content_type))
        return "https://files.example/upload/1.png"


async def test_image_input_value_inline_when_small() -> None:
    backend = _UploadBackend()
    img = prepare_image(_img())
    value = await image_input_value(img, backend, inline_max_bytes=len(img.data))
    assert value.startswith("data:image/png;base64,")
    assert backend.uploads == []


async def test_image_input_value_uploads_when_large() -> None:
    backend = _UploadBackend()
    img = prepare_image(_img())
    value = await image_input_value(img, backend, inline_max_bytes=len(img.data) - 1)
    assert value == "https://files.example/upload/1.png"
    assert backend.uploads == [(len(img.data), "photo.png", "image/png")]


async def test_async_wrappers() -> None:
    out = await aprepare_image(_img(fmt="WEBP"), max_side=32)
    assert out.mime_type == "image/png" and max(out.width, out.height) == 32
    mask = await aprepare_mask(_img(), size=(8, 6))
    assert (mask.width, mask.height) == (8, 6)
