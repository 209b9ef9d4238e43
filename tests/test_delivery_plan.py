"""The pure delivery plan (handlers/delivery_plan.py): which Bot API sends a result becomes."""

from __future__ import annotations

from generation.models import MediaType
from handlers.delivery_plan import Fetched, plan_delivery
from handlers.telegram_io import UPLOAD_MAX_BYTES, PreparedPhoto


def image(index: int, *, reencoded: bool = False, photo: bool = True, size: int = 10) -> Fetched:
    prepared = PreparedPhoto(b"jpg" if photo else None, reencoded, f"r{index}.jpg")
    return Fetched(index, MediaType.IMAGE, f"r{index}.png", b"x" * size, prepared)


def test_a_fitting_image_is_one_photo_and_offers_the_original() -> None:
    plan = plan_delivery([image(0)], png_as_file=False)
    assert [(i.key, i.method) for i in plan.items] == [("0:photo", "send_photo")]
    assert plan.items[0].kwargs == {"photo": b"jpg", "filename": "r0.jpg"}
    assert plan.offer_original


def test_png_as_file_adds_the_original_as_a_document() -> None:
    plan = plan_delivery([image(0)], png_as_file=True)
    assert [i.key for i in plan.items] == ["0:photo", "0:document"]
    assert plan.items[1].kwargs == {"document": b"x" * 10, "filename": "r0.png"}
    assert not plan.offer_original


def test_a_reencoded_image_also_goes_as_a_document_unless_too_large() -> None:
    plan = plan_delivery([image(0, reencoded=True)], png_as_file=False)
    assert [i.key for i in plan.items] == ["0:photo", "0:document"]
    big = plan_delivery([image(1, reencoded=True, size=UPLOAD_MAX_BYTES + 1)], png_as_file=True)
    assert [i.key for i in big.items] == ["1:photo"] and big.offer_original


def test_an_image_that_cannot_be_a_photo_goes_as_a_document_only() -> None:
    plan = plan_delivery([image(0, photo=False, reencoded=True)], png_as_file=False)
    assert [i.key for i in plan.items] == ["0:document"]


def test_other_media_types_and_keys_per_index() -> None:
    outputs = [
        Fetched(0, MediaType.ANIMATION, "a.gif", b"g"),
        Fetched(1, MediaType.VIDEO, "v.mp4", b"v"),
        Fetched(2, MediaType.UNKNOWN, "f.bin", b"f"),
    ]
    plan = plan_delivery(outputs, png_as_file=False)
    assert [(i.key, i.method) for i in plan.items] == [
        ("0:animation", "send_animation"),
        ("1:video", "send_video"),
        ("2:document", "send_document"),
    ]
    assert plan.items[0].kwargs == {"animation": b"g", "filename": "a.gif"}
    assert not plan.offer_original
