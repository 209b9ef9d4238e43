"""A message redelivered by Telegram starts no second run, and a message that cannot be a
redelivery from an earlier process costs no database read (handlers/redelivery.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from handlers.redelivery import CLOCK_MARGIN, FRESH_SECONDS, RecentMessages
from tests.e2e.inprocess import make_e2e


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_only_messages_sent_after_the_start_and_recently_skip_the_lookup() -> None:
    clock = Clock(1_000.0)
    recent = RecentMessages(clock=clock)
    clock.now += 120
    assert recent.needs_lookup(None)
    assert recent.needs_lookup(1_000.0 - 5)  # before this process started
    assert recent.needs_lookup(1_000.0 + CLOCK_MARGIN - 1)  # this host's clock may be behind
    assert not recent.needs_lookup(clock.now - 1)  # fresh and after the start
    assert recent.needs_lookup(clock.now - FRESH_SECONDS - 1)  # old: may have left the memory
    recent.remember((1, 2, 3), "run-a")
    assert recent.run_id((1, 2, 3)) == "run-a" and recent.run_id((1, 2, 4)) is None


def test_memory_is_bounded_and_what_left_it_is_looked_up(monkeypatch: pytest.MonkeyPatch) -> None:
    import handlers.redelivery as redelivery

    monkeypatch.setattr(redelivery, "REMEMBERED", 3)
    clock = Clock(1_000.0)
    recent = RecentMessages(clock=clock)
    clock.now += 100
    for i in range(5):  # one a second, all fresh: the count bound evicts the two oldest
        clock.now += 1
        recent.remember((1, 1, i), f"run-{i}", sent_at=clock.now)
    assert [recent.run_id((1, 1, i)) for i in range(5)] == [None, None, "run-2", "run-3", "run-4"]
    assert recent.needs_lookup(1_102.0)  # message 1 was evicted: a duplicate is looked up
    assert not recent.needs_lookup(1_104.0)  # message 3 is still known
    clock.now += FRESH_SECONDS + 1
    recent.remember((1, 1, 9), "run-9", sent_at=clock.now)  # the old ones age out
    assert [recent.run_id((1, 1, i)) for i in (2, 3, 4, 9)] == [None, None, None, "run-9"]


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The "run for this message" reads the bot makes (SQL seen by SQLite)."""
    seen: list[str] = []
    original = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = original(*args, **kwargs)
        conn.set_trace_callback(
            lambda sql: seen.append(sql) if "reply_to_message_id" in sql else None
        )
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


async def test_duplicate_in_process_and_after_a_restart_start_one_run(
    tmp_path: Path, lookups: list[str]
) -> None:
    e2e, close = await make_e2e(tmp_path)
    try:
        await e2e.add_deployment()
        services = e2e.services
        now = services.recent_messages.clock()
        services.recent_messages = RecentMessages(started_at=now - 3600)  # up for an hour
        alice = e2e.fake.user(4101)
        update = alice.send_command("/make a lighthouse", queue=False)
        await e2e.feed(update)
        first = await e2e.latest_run(4101)
        assert [sql for sql in lookups if "SELECT" in sql] == []  # fresh: no read

        await e2e.feed(update)  # Telegram delivers it again to the same process
        assert [r.id for r in await e2e.storage.runs.list_user_runs(4101, active_only=False)] == [
            first.id
        ]

        services.recent_messages = RecentMessages()  # a new process: started just now
        await e2e.feed(update)  # the redelivery after a restart is looked up in the database
        assert any("SELECT" in sql for sql in lookups)
        runs = await e2e.storage.runs.list_user_runs(4101, active_only=False)
        assert [r.id for r in runs] == [first.id]
    finally:
        await close()
