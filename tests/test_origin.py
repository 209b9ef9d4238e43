"""``Origin`` (handlers/origin.py) reads the ``meta`` dicts runs have always stored, so runs
written before it existed (old databases, crash recovery) are delivered the same way."""

from __future__ import annotations

from generation.models import RunRecord
from handlers.origin import Origin

LEGACY_META = {
    "lang": "de",
    "reply_to_message_id": 41,
    "chat_type": "supergroup",
    "prompt": "ein Fuchs",
    "message_thread_id": 7,
    "delivered_items": ["0:photo"],
}


def run(meta: dict[str, object], prompt: str = "a fox <lora:x:0.5>") -> RunRecord:
    return RunRecord(
        id="r" * 32, user_id=1, chat_id=-5, type="MAKE", request={"prompt": prompt}, meta=meta
    )


def test_an_old_meta_dict_reads_into_the_record() -> None:
    origin = Origin.of(run(LEGACY_META))
    assert origin == Origin("de", 41, "supergroup", "ein Fuchs", 7)
    assert origin.group
    kwargs = origin.reply_kwargs()
    assert kwargs["message_thread_id"] == 7 and kwargs["parse_mode"] is None
    assert kwargs["reply_parameters"].message_id == 41
    assert kwargs["reply_parameters"].allow_sending_without_reply


def test_round_trip_writes_the_same_keys() -> None:
    origin = Origin.of(run(LEGACY_META))
    written = origin.to_meta()
    assert written == {k: v for k, v in LEGACY_META.items() if k != "delivered_items"}
    assert Origin.of(run(written)) == origin


def test_missing_keys_fall_back() -> None:
    origin = Origin.of(run({}))
    assert origin == Origin()
    assert not origin.group
    assert origin.prompt_of(run({})) == "a fox <lora:x:0.5>"
    assert "message_thread_id" not in origin.reply_kwargs()
    assert origin.reply_kwargs()["reply_parameters"] is None
