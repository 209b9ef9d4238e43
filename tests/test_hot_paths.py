"""The hot paths of a generation, counted rather than timed (issue 16): under load the bot's
latency is about (sequential awaits that yield to the event loop) × (loop turn time), so these
tests bound the database round trips (aiosqlite ``_execute`` hops) and the calls to the
doubles on each path, and fix their order.

Figures on the in-process harness with a near-instant generation (output + success), caches
warm (one generation before), before → after this change (handlers/submit.py,
generation/submission.py, handlers/delivery.py):

* update → create-run: 7 hops and the progress ``sendMessage`` in front of the create (the
  reply, its attach UPDATE under the run's lock and the renderer's re-read of the run all
  ran before the worker's SUBMITTING write) → 5 hops, no Bot API call in front;
* success webhook → ``sendPhoto``: 6 hops, a GET (confirm), the download and an
  ``editMessageText`` ("sending…") → 6 hops, the GET and the download only;
* ``sendPhoto`` → final "done" edit: 7 statements of bookkeeping in front (result file row,
  meta re-read + write, delivery state, settling the hold) → at most 2;
* a webhook that overtakes its create's answer: a foreign-run GET each → none (it waits for
  the answer; generation/webhooks.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from generation.models import DeliveryState, RunStatus
from tests.e2e.inprocess import E2E, make_e2e
from tests.fakes.comfydeploy import FakeComfyDeploy, Step, Timeline
from tests.fakes.telegram import FakeTelegram

INSTANT = Timeline((Step.out("png"), Step.to("success")))
USER = 4001


class Trail:
    """Everything that leaves the bot, in order: ("sql", ...), ("cd", route), ("tg", method),
    and ("webhook", status) when the ComfyDeploy double posts one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, e2e: E2E) -> None:
        self.log: list[tuple[str, str]] = []
        execute = aiosqlite.Connection._execute
        dispatch = FakeComfyDeploy._dispatch
        gate = FakeTelegram._pass_gate

        async def on_execute(conn: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            self.log.append(("sql", getattr(fn, "__name__", "")))
            return await execute(conn, fn, *args, **kwargs)

        async def on_dispatch(cd: FakeComfyDeploy, req: Any) -> Any:
            self.log.append(("cd", cd._route_name(req) or "?"))
            return await dispatch(cd, req)

        async def on_gate(tg: FakeTelegram, method: str, *, after_handling: bool) -> bool:
            if not after_handling:
                self.log.append(("tg", method))
            return await gate(tg, method, after_handling=after_handling)

        monkeypatch.setattr(aiosqlite.Connection, "_execute", on_execute)
        monkeypatch.setattr(FakeComfyDeploy, "_dispatch", on_dispatch)
        monkeypatch.setattr(FakeTelegram, "_pass_gate", on_gate)
        sink = e2e.cd.webhook_sink
        assert sink is not None

        async def on_webhook(url: str, payload: dict[str, Any] | None) -> int:
            self.log.append(("webhook", str((payload or {}).get("status"))))
            return await sink(url, payload)

        e2e.cd.webhook_sink = on_webhook

    def clear(self) -> None:
        self.log.clear()

    def index(self, entry: tuple[str, str], start: int = 0) -> int:
        return self.log.index(entry, start)

    def between(self, kind: str, start: int, end: int) -> list[str]:
        return [what for k, what in self.log[start:end] if k == kind]


async def _turns(predicate: Any, turns: int = 500) -> None:
    """Give the loop up to ``turns`` turns (bounded, no clock) until ``predicate()``."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)


@pytest.fixture
async def e2e(tmp_path: Path) -> AsyncIterator[E2E]:
    env, close = await make_e2e(tmp_path)
    await env.add_deployment(timeline=INSTANT)
    user = env.fake.user(USER)
    await env.command(user, "/make warm up")  # caches warm, the user exists
    await env.finish((await env.latest_run(USER)).id)
    try:
        yield env
    finally:
        await close()


async def test_create_run_leaves_before_the_progress_message(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    trail = Trail(monkeypatch, e2e)
    await e2e.command(e2e.fake.user(USER), "/make a cat")
    await e2e.backend_id((await e2e.latest_run(USER)).id)
    await e2e.settle()
    create = trail.index(("cd", "create"))
    reply = trail.index(("tg", "sendMessage"))
    assert create < reply, trail.log
    # access, the user, the duplicate check, the run + hold, SUBMITTING: nothing else.
    assert len(trail.between("sql", 0, create)) <= 5, trail.log
    assert trail.between("tg", 0, create) == []
    assert trail.between("cd", 0, create) == []
    # The reply goes right behind the create: at most one statement of the worker between.
    assert len(trail.between("sql", create, reply)) <= 1, trail.log
    run = await e2e.latest_run(USER)
    assert run.progress_message_id is not None and run.status is RunStatus.WAITING


async def test_success_webhook_to_photo_and_done_without_detours(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    await e2e.command(e2e.fake.user(USER), "/make a dog")
    run = await e2e.latest_run(USER)
    backend = await e2e.backend_id(run.id)
    await e2e.settle()
    trail = Trail(monkeypatch, e2e)
    await e2e.finish(run.id)
    assert backend in e2e.cd.runs
    success = trail.index(("webhook", "success"))
    photo = trail.index(("tg", "sendPhoto"))
    # The confirming GET (a webhook's word is not enough) and the download; no edit in front.
    assert trail.between("cd", success, photo) == ["get", "files"], trail.log
    assert trail.between("tg", success, photo) == []
    assert len(trail.between("sql", success, photo)) <= 6, trail.log
    # "done" does not wait for the bookkeeping of the photo (7 statements before).
    done = trail.index(("tg", "editMessageText"), photo)
    assert len(trail.between("sql", photo, done)) <= 2, trail.log
    final = await e2e.storage.runs.get_run(run.id)
    assert final is not None and final.delivery_state is DeliveryState.DELIVERED
    assert e2e.fake.message(USER, final.progress_message_id).text == e2e.t("progress.done")
    assert len(await e2e.storage.result_files.for_run(run.id)) == 1  # written all the same
    assert final.meta["delivered_items"]


async def test_webhook_that_beats_the_create_answer_waits_instead_of_a_get(
    e2e: E2E, monkeypatch: pytest.MonkeyPatch
) -> None:
    e2e.cd.hold("create", after_handling=True)  # the run exists; its answer is late
    await e2e.command(e2e.fake.user(USER), "/make a bird")
    await _turns(lambda: e2e.cd.held.get("create") == 1)
    run = await e2e.latest_run(USER)
    assert run.backend_run_id is None and e2e.cd.held.get("create") == 1
    (backend,) = [r.id for r in e2e.cd.runs.values() if not r.terminal]
    trail = Trail(monkeypatch, e2e)
    playing = asyncio.get_running_loop().create_task(e2e.cd.run_to_end(backend))
    await _turns(lambda: ("webhook", "success") in trail.log or playing.done())
    await _turns(lambda: False, 50)  # the webhook has had its turns
    assert trail.between("cd", 0, len(trail.log)) == [], trail.log  # no foreign-run GET
    e2e.cd.release("create")
    await playing
    await e2e.events.wait(lambda: "generation:completed" in e2e.events.names(run.id))
    await e2e.settle()
    assert trail.between("cd", 0, len(trail.log)).count("get") == 1  # the confirmation only
    final = await e2e.storage.runs.get_run(run.id)
    assert final is not None and final.status is RunStatus.SUCCESS
    assert final.backend_run_id == backend
    assert final.delivery_state is DeliveryState.DELIVERED
    assert e2e.cd.cancel_calls == []
    counters = e2e.service.counters.snapshot()
    orphans = {k: v for k, v in counters.items() if "orphans" in k and v}
    assert orphans == {}, orphans
