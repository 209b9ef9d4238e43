"""Input limits end to end (issue #5 point 6): prompt length, files above Telegram's 20 MB
download limit, absurd dimensions, decompression bombs, masks of another size.

Each refusal must be a clear message in the user's language, and nothing may reach ComfyDeploy.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

import handlers.media  # noqa: F401  (sets Pillow's decompression-bomb limit)
from generation.images import MAX_SIDE_PIXELS as IMAGE_MAX_SIDE
from generation.request import MAX_PROMPT_LENGTH
from tests.e2e.inprocess import E2E, MAKE_INPUTS, build_harness, jpeg, png

I2I_INPUTS = (*MAKE_INPUTS, "input_image")


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[E2E]:
    harness, close = await build_harness(tmp_path)
    try:
        yield harness
    finally:
        await close()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` with a tiny (truncated) body: a bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _sent(env: E2E, user_id: int) -> str:
    message = env.fake.last_message(user_id)
    assert message is not None
    return message.text


async def _nothing_submitted(env: E2E, user_id: int) -> None:
    await env.service.bus.drain()
    assert not env.cd.create_calls
    assert await env.storage.runs.list_user_runs(user_id, active_only=False) == []


def test_pillow_decompression_bomb_protection_is_on() -> None:
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS <= 100_000_000


async def test_long_prompt_is_refused_in_the_users_language(env: E2E) -> None:
    await env.add_deployment()
    user = env.fake.user(6001, language_code="ru")
    await env.command(user, "/make " + "ж" * 5000)
    assert _sent(env, user.id) == env.t(
        "gen.prompt_too_long", "ru", limit=MAX_PROMPT_LENGTH, length=5000
    )
    await _nothing_submitted(env, user.id)


async def test_file_above_20_mb_is_refused_before_download(env: E2E) -> None:
    await env.add_deployment("I2I", inputs=I2I_INPUTS)
    user = env.fake.user(6002, language_code="de")
    big = png() + b"\0" * (21 * 1024 * 1024)
    await env.feed(
        user.send_document(big, "big.png", "image/png", caption="/i2i bigger", queue=False)
    )
    assert _sent(env, user.id) == env.t("gen.file_too_large", "de", limit_mb=20)
    assert not env.fake.calls("getFile")
    await _nothing_submitted(env, user.id)


async def test_file_too_big_for_getfile_without_a_declared_size(env: E2E) -> None:
    """Telegram does not always send ``file_size``: then getFile's refusal must be explained."""
    await env.add_deployment("I2I", inputs=I2I_INPUTS)
    user = env.fake.user(6003, language_code="es")
    update = user.send_document(
        png() + b"\0" * (21 * 1024 * 1024), "big.png", "image/png", caption="/i2i x", queue=False
    )
    del update["message"]["document"]["file_size"]
    await env.feed(update)
    assert _sent(env, user.id) == env.t("gen.file_too_large", "es", limit_mb=20)
    await _nothing_submitted(env, user.id)


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("absurd.png", png((30000, 10), color=0, mode="1")),
        ("bomb.png", png_header_only(100_000, 100_000)),
        ("tall.png", png_header_only(10, 25_000)),
    ],
)
async def test_absurd_dimensions_and_bombs_are_refused_clearly(
    env: E2E, name: str, data: bytes
) -> None:
    await env.add_deployment("I2I", inputs=I2I_INPUTS)
    user = env.fake.user(6004, language_code="en")
    await env.feed(user.send_document(data, name, "image/png", caption="/i2i y", queue=False))
    text = _sent(env, user.id)
    assert text == env.t("gen.image_too_large", "en", max_side=IMAGE_MAX_SIDE), text
    await _nothing_submitted(env, user.id)


async def test_mask_of_another_size_is_scaled_to_the_photo(env: E2E) -> None:
    await env.add_deployment("INPAINT", inputs=(*I2I_INPUTS, "input_mask"))
    user = env.fake.user(6005)
    await env.feed(user.send_photo(jpeg((96, 64)), caption="/inpaint a hat", queue=False))
    mask = png((17, 300), color=255, mode="L")  # other size and other aspect ratio
    await env.feed(user.send_document(mask, "mask.png", "image/png", queue=False))
    run = await env.latest_run(user.id)
    await env.backend_id(run.id)
    inputs = env.cd.create_calls[-1]["inputs"]
    sent_mask = Image.open(io.BytesIO(base64.b64decode(inputs["input_mask"].split(",", 1)[1])))
    sent_photo = Image.open(io.BytesIO(base64.b64decode(inputs["input_image"].split(",", 1)[1])))
    assert sent_mask.size == sent_photo.size == (96, 64)
