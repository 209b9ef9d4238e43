"""The preview backend's pictures (generation/preview.py): a labelled placeholder image per
run, drawn with Pillow from the prompt and seed (a sky, or the input photo with its mask
marked), CPU work run in a worker thread."""

from __future__ import annotations

import base64
import binascii
import colorsys
import hashlib
import io
import logging
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps

log = logging.getLogger(__name__)

PREVIEW_LABEL = "preview"  # drawn on every picture; the backend's label too
MIN_SIDE, MAX_SIDE = 64, 1024
_MAX_INPUT_PIXELS = 40_000_000  # refuse decompression bombs in input photos


def clamp_size(width: int, height: int, lo: int = MIN_SIDE, hi: int = MAX_SIDE) -> tuple[int, int]:
    """Scale ``width``×``height`` into ``lo..hi`` per side, keeping the aspect where possible."""
    w, h = max(1, int(width)), max(1, int(height))
    scale = min(1.0, hi / max(w, h))
    if min(w, h) * scale < lo:
        scale = lo / min(w, h)
    return (
        min(hi, max(lo, round(w * scale))),
        min(hi, max(lo, round(h * scale))),
    )


def decode_data_uri(value: str) -> bytes | None:
    """Bytes of a ``data:<mime>;base64,...`` URI; None for anything else or garbage."""
    head, sep, payload = value.partition(",")
    if not sep or not head.lower().startswith("data:") or ";base64" not in head.lower():
        return None
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        return None


# DejaVu Sans (generation/fonts/LICENSE): Pillow's built-in font has Latin only, so a Cyrillic
# or Greek prompt would be drawn as empty boxes. Opening it is cheap (~20 µs), and a font
# object per render keeps FreeType faces out of the threads' way.
FONT_PATH = Path(__file__).with_name("fonts") / "DejaVuSans.ttf"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.truetype(str(FONT_PATH), size=size)
    except OSError:  # font file missing or Pillow without FreeType
        log.warning("preview font %s unavailable; prompts may lose non-Latin letters", FONT_PATH)
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the fixed-size bitmap font still works
        return ImageFont.load_default()


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return round(r * 255), round(g * 255), round(b * 255)


def _open_input(data: bytes | str | None) -> Image.Image | None:
    """Decode an input photo (bytes or a data URI); None when absent or undecodable (the
    preview then ignores it)."""
    if isinstance(data, str):
        data = decode_data_uri(data)
    if not data:
        return None
    try:
        with Image.open(io.BytesIO(data)) as probe:
            if probe.width * probe.height > _MAX_INPUT_PIXELS:
                return None
            image = ImageOps.exif_transpose(probe)
            image.load()
    except Exception:
        log.debug("preview: undecodable input image ignored", exc_info=True)
        return None
    return image


def _sky(size: tuple[int, int], rng: random.Random) -> Image.Image:
    """A gradient sky with soft circles and a hill silhouette; colours from ``rng``."""
    w, h = size
    hue = rng.random()
    top = _hsv(hue, 0.55, 0.95)
    bottom = _hsv(hue + 0.12 + rng.random() * 0.2, 0.45, 0.55)
    gradient = Image.linear_gradient("L").resize(size, Image.Resampling.BILINEAR)
    base = ImageOps.colorize(gradient, top, bottom)
    # Shapes are drawn opaque on a copy and blended through a blurred alpha mask: blurring an
    # RGBA overlay over transparent black would give every shape a dark halo.
    shapes = base.copy()
    mask = Image.new("L", size, 0)
    draw, draw_mask = ImageDraw.Draw(shapes), ImageDraw.Draw(mask)
    short = min(w, h)
    for _ in range(rng.randint(3, 6)):
        radius = short * (0.08 + rng.random() * 0.22)
        cx, cy = rng.random() * w, rng.random() * h * 0.7
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=_hsv(hue + rng.uniform(-0.25, 0.25), 0.35, 1.0))
        draw_mask.ellipse(box, fill=rng.randint(70, 140))
    points = [(0.0, float(h))]
    steps = 6
    for i in range(steps + 1):
        points.append((w * i / steps, h * (0.62 + rng.random() * 0.2)))
    points.append((float(w), float(h)))
    draw.polygon(points, fill=_hsv(hue + 0.5, 0.4, 0.35))
    draw_mask.polygon(points, fill=190)
    blur = ImageFilter.GaussianBlur(max(1.0, short / 60))
    return Image.composite(shapes.filter(blur), base, mask.filter(blur)).convert("RGBA")


def _photo_background(
    photo: Image.Image, size: tuple[int, int], rng: random.Random, *, sharpen: bool
) -> Image.Image:
    """The input photo resized to ``size`` and lightly tinted (so it reads as "processed")."""
    image = photo.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    if sharpen:
        image = image.filter(ImageFilter.SHARPEN)
    tint = Image.new("RGB", size, _hsv(rng.random(), 0.5, 0.9))
    return Image.blend(image, tint, 0.18).convert("RGBA")


def _mark_mask(image: Image.Image, mask_data: bytes | str | None) -> Image.Image:
    """Blend magenta over the white (repaint) area of the mask and outline it."""
    mask = _open_input(mask_data)
    if mask is None:
        return image
    area = mask.convert("L").resize(image.size, Image.Resampling.NEAREST)
    area = area.point(lambda v: 255 if v > 127 else 0)
    marked = Image.blend(image, Image.new("RGBA", image.size, (255, 0, 200, 255)), 0.55)
    image = Image.composite(marked, image, area)
    edges = area.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(3))
    image.paste((255, 255, 255, 255), mask=edges)
    return image


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, max_lines: int
) -> list[str]:
    """Greedy word wrap by pixel width; long words are cut, overflow ends with an ellipsis."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word)
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
        else:
            if current:
                lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1].rstrip(".") + "…"
    return lines


def _draw_text(image: Image.Image, prompt: str, seed: int | None) -> Image.Image:
    """The "PREVIEW" band on top and the wrapped prompt in a dark box at the bottom."""
    w, h = image.size
    overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    pad = max(4, min(w, h) // 40)

    label_size = max(10, min(w, h) // 10)
    label_font = _font(label_size)
    band = round(label_size * 1.6)
    draw.rectangle((0, 0, w, band), fill=(0, 0, 0, 170))
    label = PREVIEW_LABEL.upper()
    label_w = draw.textlength(label, font=label_font)
    draw.text(
        ((w - label_w) / 2, (band - label_size) / 2),
        label,
        font=label_font,
        fill=(255, 214, 0, 255),
        stroke_width=max(1, label_size // 16),
        stroke_fill=(0, 0, 0, 255),
    )

    text_size = max(9, min(w, h) // 22)
    font = _font(text_size)
    caption = prompt.strip()
    if seed is not None:
        caption = f"{caption}  · seed {seed}" if caption else f"seed {seed}"
    lines = _wrap(draw, caption, font, w - 4 * pad, max_lines=4) if caption else []
    if lines:
        line_h = round(text_size * 1.25)
        box_h = line_h * len(lines) + 2 * pad
        top = h - box_h - pad
        draw.rounded_rectangle((pad, top, w - pad, h - pad), radius=pad, fill=(0, 0, 0, 140))
        for i, line in enumerate(lines):
            draw.text((2 * pad, top + pad + i * line_h), line, font=font, fill=(255, 255, 255, 235))
    return Image.alpha_composite(image, overlay)


def render_preview(
    *,
    prompt: str,
    seed: int | None,
    width: int,
    height: int,
    image: bytes | str | None = None,
    mask: bytes | str | None = None,
    upscale: bool = False,
) -> bytes:
    """Render the preview PNG (CPU work: call it through ``asyncio.to_thread``).

    Without an input photo: a sky scene derived deterministically from prompt + seed. With
    one: the photo (its own aspect; doubled for upscale) tinted, the mask area marked."""
    digest = hashlib.sha256(f"{seed}\x00{prompt}".encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    photo = _open_input(image)
    if photo is not None:
        factor = 2 if upscale else 1
        size = clamp_size(photo.width * factor, photo.height * factor)
        canvas = _photo_background(photo, size, rng, sharpen=upscale)
        canvas = _mark_mask(canvas, mask)
    else:
        canvas = _sky(clamp_size(width, height), rng)
    canvas = _draw_text(canvas, prompt, seed)
    buf = io.BytesIO()
    canvas.convert("RGB").save(buf, "PNG", compress_level=3)
    return buf.getvalue()


# --------------------------------------------------------------------------------- run state


def render_batch(batch: int, *, seed: int | None, **params: Any) -> list[bytes]:
    """``batch`` images of one run (CPU work, in a worker thread): item i uses seed + i."""
    return [render_preview(seed=None if seed is None else seed + i, **params) for i in range(batch)]
