"""The preview image draws non-Latin prompts with real glyphs (the shipped DejaVu Sans), not
the empty boxes of Pillow's Latin-only built-in font."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageFont

from generation import preview
from generation.preview import FONT_PATH, render_preview

NOT_A_CHARACTER = chr(0x10FFFD)  # private use, in no font: always the .notdef box
SAMPLES = "ЖДЯЁжщы Привет Ωμέγα ÄÖÜß ñ"


def _is_notdef(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, char: str) -> bool:
    return bytes(font.getmask(char)) == bytes(font.getmask(NOT_A_CHARACTER))


def test_the_font_and_its_license_ship_in_the_package() -> None:
    assert FONT_PATH.is_file() and FONT_PATH.stat().st_size > 100_000
    license_text = FONT_PATH.with_name("LICENSE").read_text(encoding="utf-8")
    assert "Bitstream Vera Fonts Copyright" in license_text and "Arev" in license_text


def test_preview_font_has_cyrillic_greek_and_latin_glyphs() -> None:
    font = preview._font(24)
    assert isinstance(font, ImageFont.FreeTypeFont) and font.path == str(FONT_PATH)
    missing = [c for c in SAMPLES if not c.isspace() and _is_notdef(font, c)]
    assert missing == []


def test_pillows_builtin_font_would_have_drawn_boxes() -> None:
    """The check above can fail: the built-in font has no Cyrillic."""
    builtin = ImageFont.load_default(size=24)
    assert _is_notdef(builtin, "Ж")


def test_drawn_caption_tells_cyrillic_letters_apart() -> None:
    blank = Image.new("RGBA", (256, 256), (40, 80, 120, 255))

    def caption(text: str) -> bytes:
        return preview._draw_text(blank.copy(), text, seed=None).tobytes()

    assert caption("Жук") != caption("Дым")  # two .notdef captions would be identical
    assert caption("Жук") != caption(NOT_A_CHARACTER * 3)


@pytest.mark.parametrize("prompt", ["кот в сапогах", "Ωμέγα", "混合 text"])
def test_render_preview_with_non_latin_prompts(prompt: str) -> None:
    png = render_preview(prompt=prompt, seed=3, width=256, height=256)
    with Image.open(io.BytesIO(png)) as image:
        assert image.size == (256, 256)


async def test_a_batch_renders_one_image_per_item() -> None:
    """``input_batch`` 1..4: one SaveImage output with an image per item (seed + i)."""
    import httpx

    from generation.models import RunStatus
    from generation.preview import MAX_BATCH, PREVIEW_DEPLOYMENTS, PREVIEW_INPUTS, PreviewBackend

    assert "input_batch" in PREVIEW_INPUTS
    backend = PreviewBackend(step_seconds=0)
    try:
        run_id = await backend.create_run(
            PREVIEW_DEPLOYMENTS["MAKE"],
            {"input_prompt": "кот", "input_seed": 10, "input_batch": 3, "input_width": 128},
        )
        snap = await backend.get_run(run_id)
        assert snap.status is RunStatus.SUCCESS and len(snap.outputs) == 3
        urls = [o.url for o in snap.outputs]
        assert urls[0].endswith(f"/{run_id}.png") and urls[2].endswith(f"/{run_id}-3.png")
        async with httpx.AsyncClient(transport=backend.transport) as client:
            bodies = [(await client.get(u)).content for u in urls]
            missing = await client.get(urls[0].replace(".png", "-4.png"))
        assert all(b.startswith(b"\x89PNG") for b in bodies) and len(set(bodies)) == 3
        assert missing.status_code == 404
        many = await backend.create_run(PREVIEW_DEPLOYMENTS["MAKE"], {"input_batch": 99})
        assert len((await backend.get_run(many)).outputs) == MAX_BATCH
    finally:
        await backend.aclose()
