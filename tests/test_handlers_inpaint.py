"""/inpaint end to end: photo → mask → prompt, and the text-target variant."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image

from tests.e2e.inprocess import E2E, MAKE_INPUTS, jpeg, make_e2e, png


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


def _decode(value: str) -> Image.Image:
    assert value.startswith("data:image/"), value[:40]
    return Image.open(io.BytesIO(base64.b64decode(value.split(",", 1)[1])))


async def test_inpaint_photo_mask_prompt(e2e: E2E) -> None:
    await e2e.add_deployment("INPAINT", inputs=(*MAKE_INPUTS, "input_image", "input_mask"))
    alice = e2e.fake.user(2001)
    await e2e.command(alice, "/inpaint")
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_photo")
    await e2e.feed(alice.send_photo(jpeg((80, 60)), queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_mask")
    # a grey-ish mask as a PNG document of another size: binarized and resized to the photo
    mask = png((40, 30), color=200, mode="L")
    await e2e.feed(alice.send_document(mask, "mask.png", "image/png", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_prompt")
    await e2e.feed(alice.send_text("a golden crown", queue=False))

    run = await e2e.latest_run(alice.id)
    assert run.type == "INPAINT"
    await e2e.backend_id(run.id)
    inputs = e2e.cd.create_calls[-1]["inputs"]
    assert inputs["input_prompt"].startswith("a golden crown")
    sent_mask = _decode(inputs["input_mask"])
    assert sent_mask.size == (80, 60)
    assert sent_mask.convert("L").getextrema() == (255, 255)  # 200 ≥ 128 → white
    assert "input_inpaint_target" not in inputs


async def test_inpaint_caption_prompt_skips_last_step(e2e: E2E) -> None:
    await e2e.add_deployment("INPAINT", inputs=(*MAKE_INPUTS, "input_image", "input_mask"))
    alice = e2e.fake.user(2002)
    await e2e.feed(alice.send_photo(jpeg(), caption="/inpaint a red hat", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_mask")
    await e2e.feed(alice.send_photo(jpeg(), queue=False))  # a mask sent as a photo works too
    run = await e2e.latest_run(alice.id)
    await e2e.backend_id(run.id)
    assert e2e.cd.create_calls[-1]["inputs"]["input_prompt"].startswith("a red hat")


async def test_inpaint_text_target_when_deployment_takes_one(e2e: E2E) -> None:
    await e2e.add_deployment(
        "INPAINT", inputs=(*MAKE_INPUTS, "input_image", "input_inpaint_target")
    )
    alice = e2e.fake.user(2003, language_code="de")
    photo = await e2e.feed(alice.send_photo(jpeg(), queue=False))
    await e2e.command(alice, "/inpaint", reply_to=photo["message"]["message_id"])
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_target", "de")
    await e2e.feed(alice.send_text("der Hut", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_prompt", "de")
    await e2e.feed(alice.send_text("eine Krone", queue=False))
    run = await e2e.latest_run(alice.id)
    await e2e.backend_id(run.id)
    inputs = e2e.cd.create_calls[-1]["inputs"]
    assert inputs["input_inpaint_target"] == "der Hut"
    assert "input_mask" not in inputs


async def test_inpaint_rejects_non_image_mask_and_cancel_ends_flow(e2e: E2E) -> None:
    await e2e.add_deployment("INPAINT", inputs=(*MAKE_INPUTS, "input_image", "input_mask"))
    alice = e2e.fake.user(2004)
    await e2e.feed(alice.send_photo(jpeg(), caption="/inpaint", queue=False))
    await e2e.feed(alice.send_document(b"hello", "notes.txt", "text/plain", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("gen.not_an_image")
    await e2e.feed(alice.send_text("hm", queue=False))
    assert e2e.fake.last_message(alice.id).text == e2e.t("inpaint.send_mask")
    await e2e.command(alice, "/cancel")
    assert e2e.fake.last_message(alice.id).text == e2e.t("cancel.flow_ended")
    assert not e2e.cd.create_calls
