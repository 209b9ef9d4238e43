"""Crash recovery (issue #5 point 1): the real bot process is SIGKILLed at chosen moments of a
generation and started again on the same database.

Kill points (each reached deterministically by holding a request at a fake, or by waiting for
a state in the database; never by timing):

* ``queued``: the run is persisted QUEUED in the bot's own queue, no create call made yet;
* ``create_not_reached``: the create call is held before it reaches ComfyDeploy;
* ``create_answer_lost``: ComfyDeploy created the run, its answer is held (never heard);
* ``waiting``: create returned, the run waits for a GPU at the double;
* ``running``: the double reports progress, the progress message shows it;
* ``success_before_delivery``: the run succeeded, the output download is held;
* ``during_delivery``: ``sendPhoto`` is held before Telegram accepted it;
* ``photo_sent_answer_lost``: Telegram stored the photo, its answer is held.

After each restart: exactly one photo (or one clear failure in the progress message with the
hold released), the progress message edited in place to its final state, the ledger consistent
and the balance charged at most once. The last kill point is the one window no bot can close
(Telegram has no idempotency key): the photo Telegram accepted but the bot never heard of is
sent once more — at most one duplicate, never a double charge.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.process import USER_ID, BotWorld, bot_world
from tests.fakes.comfydeploy import Timeline

LOCALE = json.loads((Path(__file__).resolve().parents[1] / "locales" / "en.json").read_text())
DONE = LOCALE["progress.done"]
FAILED_UNCERTAIN = LOCALE["progress.failed"].format(reason=LOCALE["error.SUBMIT_UNCERTAIN"])
PRICE = 5
BALANCE = 20


async def _progress_text(world: BotWorld, run: dict) -> str:
    message = world.tg.message(USER_ID, run["progress_message_id"])
    assert message is not None
    return message.content


async def _wait_progress(world: BotWorld, run: dict, text: str) -> None:
    mid = run["progress_message_id"]
    await world.tg.wait_for(
        lambda: (m := world.tg.message(USER_ID, mid)) is not None and m.content == text,
        timeout=15,
        what=f"progress message {mid} to read {text!r}",
    )


async def _finish_delivered(world: BotWorld, *, photos: int = 1, index: int = 0) -> dict:
    """Let the double finish, wait for delivery, stop the bot; check the common outcome."""
    backend = await world.wait_backend_run(index)
    await world.cd.run_to_end(backend.id)
    run = await world.wait_run(
        lambda r: r["delivery_state"] == "delivered", index=index, what="delivery"
    )
    await _wait_progress(world, run, DONE)
    assert await world.terminate() == 0, world.logs()
    assert len(world.photos()) == photos, world.logs()
    run = await world.run(index)
    assert run is not None and run["status"] == "success"
    assert run["charge_state"] == "settled"
    message = world.tg.message(USER_ID, run["progress_message_id"])
    assert message is not None and message.content == DONE and not message.buttons
    return run


async def _check_ledger(world: BotWorld, balance: int) -> None:
    problems, available, held = await world.ledger()
    assert problems == []
    assert (available, held) == (balance, 0)


async def _start_and_make(world: BotWorld) -> dict:
    await world.start()
    await world.make("a red fox in snow")
    return await world.wait_run(
        lambda r: r["progress_message_id"] is not None, what="the progress message attached"
    )


async def test_kill_while_queued_before_create(tmp_path: Path) -> None:
    """With one slot in flight, the second run waits QUEUED in our own queue; after the kill
    it is rebuilt from the database and submitted exactly once."""
    async with bot_world(tmp_path, env={"MAX_IN_FLIGHT": "1"}) as world:
        await world.start()
        await world.make("first")
        await world.wait_run(lambda r: r["backend_run_id"] is not None, what="run 0 created")
        await world.make("second")
        queued = await world.wait_run(
            lambda r: r["progress_message_id"] is not None, index=1, what="run 1 queued"
        )
        assert queued["status"] == "queued" and len(world.cd.runs) == 1
        await world.kill()

        await world.start()
        first = await world.wait_backend_run(0)
        await world.cd.run_to_end(first.id)
        await world.wait_run(lambda r: r["delivery_state"] == "delivered", index=0)
        run = await _finish_delivered(world, photos=2, index=1)
        assert len(world.cd.runs) == 2  # each run created once at ComfyDeploy
        assert len(world.cd.create_calls) == 2
        assert len(world.bot_texts()) == 2  # one progress message per run, no new ones
        assert run["status"] == "success"
        await _check_ledger(world, BALANCE - 2 * PRICE)


@pytest.mark.parametrize("after_handling", [False, True], ids=["not_reached", "answer_lost"])
async def test_kill_during_create(tmp_path: Path, after_handling: bool) -> None:
    """The create call may or may not have reached ComfyDeploy: never resubmitted (no double
    run, no double charge); the run fails with SUBMIT_UNCERTAIN, the hold is released and
    the progress message says so."""
    async with bot_world(tmp_path) as world:
        world.cd.hold("create", after_handling=after_handling)
        run = await _start_and_make(world)
        await world.wait_run(lambda r: r["status"] == "submitting", what="submitting")
        await world.wait_until_held("create")
        await world.kill()
        world.cd.release(drop=True)

        await world.start()
        run = await world.wait_run(lambda r: r["status"] == "failed", what="the failure")
        await _wait_progress(world, run, FAILED_UNCERTAIN)
        assert await world.terminate() == 0
        run = await world.run()
        assert run is not None
        assert run["error_code"] == "SUBMIT_UNCERTAIN"
        assert run["charge_state"] == "released"
        assert world.photos() == []
        assert len(world.bot_texts()) == 1  # the progress message itself carries the failure
        assert world.cd.arrivals["create"] == 1  # never resubmitted
        assert len(world.cd.runs) == (1 if after_handling else 0)
        assert not world.tg.message(USER_ID, run["progress_message_id"]).buttons
        await _check_ledger(world, BALANCE)


async def test_kill_while_waiting_for_gpu(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        await _start_and_make(world)
        await world.wait_run(
            lambda r: r["status"] == "waiting" and r["backend_run_id"], what="waiting"
        )
        await world.kill()

        await world.start()
        await _finish_delivered(world)
        assert len(world.cd.create_calls) == 1
        assert len(world.bot_texts()) == 1
        await _check_ledger(world, BALANCE - PRICE)


async def test_kill_while_running_progress_picks_up(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        run = await _start_and_make(world)
        backend = await world.wait_backend_run()
        await world.cd.advance(backend.id, steps=5)  # queued, started, running, 2 ticks
        await world.wait_run(lambda r: r["progress"] > 0.5, what="progress in the database")
        step = LOCALE["actions.executing"].format(node="KSampler")
        running = LOCALE["progress.running_status"].format(percent=57, status=step)
        await _wait_progress(world, run, running)
        await world.kill()

        await world.start()
        await world.wait_run(lambda r: r["status"] == "running")  # still tracked
        await _finish_delivered(world)
        message = world.tg.message(USER_ID, run["progress_message_id"])
        assert message is not None and message.content == DONE
        assert len(world.bot_texts()) == 1  # edited in place, never a second progress message
        await _check_ledger(world, BALANCE - PRICE)


async def test_kill_after_success_before_delivery(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        await _start_and_make(world)
        world.cd.hold("files")
        backend = await world.wait_backend_run()
        await world.cd.run_to_end(backend.id)
        await world.wait_until_held("files")
        await world.wait_run(lambda r: r["status"] == "success")
        await world.kill()
        world.cd.release(drop=True)

        await world.start()
        await _finish_delivered(world)
        assert len(world.bot_texts()) == 1
        await _check_ledger(world, BALANCE - PRICE)


async def test_kill_during_delivery(tmp_path: Path) -> None:
    async with bot_world(tmp_path) as world:
        await _start_and_make(world)
        world.tg.hold("sendPhoto")
        backend = await world.wait_backend_run()
        await world.cd.run_to_end(backend.id)
        await world.tg.wait_for(lambda: world.tg.held.get("sendPhoto"), what="sendPhoto held")
        await world.kill()
        world.tg.release(drop=True)

        await world.start()
        await _finish_delivered(world)
        assert len(world.bot_texts()) == 1
        await _check_ledger(world, BALANCE - PRICE)


async def test_kill_between_two_items_sends_only_the_missing_one(tmp_path: Path) -> None:
    """A run with an image and a gif: the photo is delivered, the bot dies while the
    animation is on its way. After the restart only the animation is sent (per-item delivery
    progress is recorded in the run), so the chat has each output exactly once. (Two or more
    images go as one album: one call, nothing to resume in between.)"""
    async with bot_world(tmp_path, timeline=Timeline.success("png", "gif")) as world:
        await _start_and_make(world)
        world.tg.hold("sendAnimation")
        backend = await world.wait_backend_run()
        await world.cd.run_to_end(backend.id)
        await world.tg.wait_for(
            lambda: world.tg.held.get("sendAnimation"), what="the animation held"
        )
        assert len(world.photos()) == 1
        await world.wait_run(lambda r: r["meta"].get("delivered_items"), what="photo noted")
        await world.kill()
        world.tg.release(drop=True)

        await world.start()
        await _finish_delivered(world, photos=1)
        animations = [m for m in world.tg.sent_media(USER_ID) if m.media_kind == "animation"]
        assert len(animations) == 1  # sent once, after the restart
        await _check_ledger(world, BALANCE - PRICE)


async def test_kill_after_telegram_accepted_photo(tmp_path: Path) -> None:
    """The documented window: Telegram stored the photo, the bot died before hearing so.
    The photo is sent once more (at most one duplicate); the charge is still taken once."""
    async with bot_world(tmp_path) as world:
        await _start_and_make(world)
        world.tg.hold("sendPhoto", after_handling=True)
        backend = await world.wait_backend_run()
        await world.cd.run_to_end(backend.id)
        await world.tg.wait_for(lambda: world.tg.held.get("sendPhoto"), what="sendPhoto held")
        assert len(world.photos()) == 1
        await world.kill()
        world.tg.release()

        await world.start()
        await _finish_delivered(world, photos=2)
        await _check_ledger(world, BALANCE - PRICE)
