"""/cancel and the Cancel button end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from generation.models import ChargeState, RunStatus
from tests.e2e.inprocess import E2E, make_e2e
from tests.fakes.comfydeploy import Timeline


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    try:
        yield env
    finally:
        await close()


async def _funded(e2e: E2E, user_id: int, balance: int) -> None:
    await e2e.storage.users.get_or_create(user_id, language_code="en")
    await e2e.storage.ledger.set_balance(user_id, balance, actor=None)


async def test_cancel_button_cancels_that_run_and_releases_hold(e2e: E2E) -> None:
    await e2e.add_deployment(timeline=Timeline.stall())
    await e2e.storage.prices.set("MAKE", 2)
    alice = e2e.fake.user(3001)
    await _funded(e2e, alice.id, 4)
    await e2e.command(alice, "/make a slow thing")
    run = await e2e.latest_run(alice.id)
    await e2e.backend_id(run.id)
    await e2e.settle()
    assert await e2e.storage.ledger.get_balance(alice.id) == 2
    progress = e2e.progress_message(alice.id, await e2e.storage.runs.get_run(run.id))

    answer = await e2e.tap(alice, progress, e2e.t("progress.cancel_button"))
    assert answer["text"] == e2e.t("cancel.cancelling")
    await e2e.events.wait(lambda: "generation:cancelled" in e2e.events.names(run.id))
    await e2e.settle()
    final = await e2e.storage.runs.get_run(run.id)
    assert final.status is RunStatus.CANCELLED
    assert final.charge_state is ChargeState.RELEASED
    assert await e2e.storage.ledger.get_balance(alice.id) == 4
    shown = e2e.fake.message(alice.id, progress.message_id)
    assert shown.text == e2e.t("progress.cancelled") and not shown.buttons
    assert e2e.cd.cancel_calls  # the backend run was cancelled too


async def test_someone_elses_cancel_button_is_refused(e2e: E2E) -> None:
    await e2e.add_deployment(timeline=Timeline.stall())
    group = e2e.fake.group()
    alice, bob = e2e.fake.user(3002), e2e.fake.user(3003, "Bob")
    await e2e.command(alice, "/make group art", chat_id=group.id)
    run = await e2e.latest_run(alice.id)
    await e2e.backend_id(run.id)
    progress = e2e.progress_message(group.id, await e2e.storage.runs.get_run(run.id))
    answer = await e2e.tap(bob, progress, f"r:cx:{run.id}")
    assert answer["text"] == e2e.t("cancel.not_yours") and answer["show_alert"]
    assert (await e2e.storage.runs.get_run(run.id)).status is not RunStatus.CANCELLED
    assert not e2e.cd.cancel_calls


async def test_cancel_command_cancels_all_queued_and_running(e2e: E2E) -> None:
    await e2e.add_deployment(timeline=Timeline.stall())
    alice = e2e.fake.user(3004)
    for i in range(3):
        await e2e.command(alice, f"/make picture {i}")
    runs = await e2e.storage.runs.list_user_runs(alice.id, active_only=True)
    assert len(runs) == 3
    await e2e.command(alice, "/cancel")
    assert e2e.fake.last_message(alice.id).text == e2e.t("cancel.done", count=3)
    await e2e.settle()
    assert await e2e.storage.runs.list_user_runs(alice.id, active_only=True) == []


async def test_cancel_with_nothing_running(e2e: E2E) -> None:
    alice = e2e.fake.user(3005, language_code="ru")
    await e2e.command(alice, "/cancel")
    assert e2e.fake.last_message(alice.id).text == e2e.t("cancel.nothing", "ru")


async def test_cancel_button_of_finished_run(e2e: E2E) -> None:
    await e2e.add_deployment()
    alice = e2e.fake.user(3006)
    await e2e.command(alice, "/make quick")
    run = await e2e.latest_run(alice.id)
    backend = await e2e.backend_id(run.id)
    await e2e.settle()
    progress_id = (await e2e.storage.runs.get_run(run.id)).progress_message_id
    stale = e2e.fake.message(alice.id, progress_id)
    old_markup = stale.reply_markup
    await e2e.cd.run_to_end(backend)
    await e2e.events.wait(lambda: "generation:completed" in e2e.events.names(run.id))
    await e2e.settle()
    stale.reply_markup = old_markup  # a client still showing the old keyboard
    answer = await e2e.tap(e2e.fake.users[alice.id], stale, f"r:cx:{run.id}")
    assert answer["text"] == e2e.t("cancel.already_finished")
