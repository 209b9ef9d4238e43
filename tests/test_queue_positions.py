"""Queue positions in O(log n) and the sliced publishing pass (issue 16, point 6), checked
against the brute-force ``FairScheduler.dispatch_order``."""

from __future__ import annotations

import asyncio
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from generation.queue_positions import RotationIndex
from generation.scheduler import FairScheduler, QueueItem

OPS = st.lists(
    st.tuples(
        st.sampled_from(["submit", "submit", "submit", "remove", "take", "release", "turn"]),
        st.integers(0, 6),  # a user (submit) or which queued/active run (remove, release)
    ),
    max_size=150,
)


def brute_positions(s: FairScheduler) -> dict[str, int]:
    return {item.run_id: n for n, item in enumerate(s.dispatch_order(), start=1)}


class Driver:
    """Applies random operations to a scheduler, recording what it publishes."""

    def __init__(self, s: FairScheduler) -> None:
        self.s = s
        self.serial = 0
        self.active: list[str] = []
        self.published: dict[str, int] = {}
        self.gone_but_published: list[str] = []

    def on_position(self, item: QueueItem, position: int) -> None:
        if not self.s.is_queued(item.run_id):
            self.gone_but_published.append(item.run_id)
        self.published[item.run_id] = position

    def apply(self, op: str, arg: int) -> QueueItem | None:
        """Runs ``op``; the item when it was a submit."""
        s = self.s
        queued = [item.run_id for item in s.dispatch_order()]
        if op == "submit":
            self.serial += 1
            item = QueueItem(f"r{self.serial}", arg)
            s.submit(item, enforce_cap=False)  # past the cap too: resumed runs do that
            return item
        if op == "remove" and queued:
            s.remove(queued[arg % len(queued)])
        elif op == "take":
            taken = s.try_take()
            if taken is not None:
                self.active.append(taken.run_id)
        elif op == "release" and self.active:
            s.release(self.active.pop(arg % len(self.active)))
        return None


def new_scheduler(driver_box: list[Driver], **kwargs: object) -> FairScheduler:
    s = FairScheduler(
        max_in_flight=3,
        max_active_per_user=1,
        max_queued_per_user=3,
        on_position=lambda item, pos: driver_box[0].on_position(item, pos),
        **kwargs,  # type: ignore[arg-type]
    )
    driver_box.append(Driver(s))
    return s


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_position_matches_the_dispatch_order_after_every_change(ops: list) -> None:
    box: list[Driver] = []
    s = new_scheduler(box)  # no running loop: every change is published at once
    driver = box[0]
    for op, arg in ops:
        driver.apply(op, arg)
        expected = brute_positions(s)
        assert {run_id: s.position(run_id) for run_id in expected} == expected
        assert driver.published == {**driver.published, **expected}
        for run_id in driver.active:
            assert s.position(run_id) is None
    assert not driver.gone_but_published


@settings(max_examples=100, deadline=None)
@given(OPS)
def test_new_runs_first_position_is_the_dispatch_orders(ops: list) -> None:
    async def scenario() -> None:
        box: list[Driver] = []
        s = new_scheduler(box, position_interval=3600.0)  # only the at-once publication
        driver = box[0]
        for op, arg in ops:
            item = driver.apply(op, arg)
            if item is not None:
                assert driver.published[item.run_id] == brute_positions(s)[item.run_id]
        s.flush_positions()
        expected = brute_positions(s)
        assert {r: p for r, p in driver.published.items() if r in expected} == expected
        assert not s.flush_pending

    asyncio.run(scenario())


@settings(max_examples=100, deadline=None)
@given(OPS, st.integers(1, 4))
def test_sliced_passes_end_with_every_position_right(ops: list, flush_slice: int) -> None:
    """Changes land between slices of a pass (a "turn" lets one slice run)."""

    async def scenario() -> None:
        box: list[Driver] = []
        s = new_scheduler(box, flush_slice=flush_slice)
        driver = box[0]
        for op, arg in ops:
            if op == "turn":
                await asyncio.sleep(0)
            else:
                driver.apply(op, arg)
        for _ in range(1000):  # bounded: a pass of ≤ 150 runs, then at most one more
            if not s.flush_pending:
                break
            await asyncio.sleep(0)
        assert not s.flush_pending
        expected = brute_positions(s)
        assert {r: p for r, p in driver.published.items() if r in expected} == expected
        assert not driver.gone_but_published

    asyncio.run(scenario())


async def test_a_pass_over_many_runs_takes_several_turns_of_a_bounded_slice() -> None:
    per_turn: list[int] = []
    s = FairScheduler(
        max_in_flight=1,
        max_queued_per_user=5,
        on_position=lambda _item, _pos: per_turn.__setitem__(-1, per_turn[-1] + 1),
        flush_slice=256,
    )
    for user in range(400):
        for n in range(5):
            s.submit(QueueItem(f"{user}-{n}", user))
    for _ in range(100):
        per_turn.append(0)
        await asyncio.sleep(0)
        if not s.flush_pending:
            break
    assert per_turn == [256] * 7 + [2000 - 7 * 256]  # 8 turns, none past the slice
    assert s.position_flushes == 1


async def test_a_change_during_a_pass_is_followed_by_another_pass() -> None:
    events: list[tuple[str, int]] = []
    s = FairScheduler(
        max_in_flight=1,
        max_queued_per_user=5,
        on_position=lambda item, pos: events.append((item.run_id, pos)),
        flush_slice=100,
    )
    for user in range(200):
        for n in range(3):
            s.submit(QueueItem(f"{user}-{n}", user))
    await asyncio.sleep(0)  # the first slice: 100 runs
    assert len(events) == 100 and s.flush_pending
    assert s.try_take() is not None  # every queued run moves up one
    s.remove("150-2")  # not published yet: it must never be
    for _ in range(100):
        if not s.flush_pending:
            break
        await asyncio.sleep(0)
    assert s.position_flushes == 2
    final = dict(events)
    assert "150-2" not in final
    assert final == {**final, **brute_positions(s)}
    assert set(brute_positions(s)) <= set(final)


def test_rotation_index_survives_compaction_and_growth() -> None:
    """Thousands of moves to the back (sequence numbers compacted many times) and a few
    hundred users (the Fenwick trees doubled), against a plain list model."""
    rng = random.Random(16)
    index = RotationIndex()
    order: list[int] = []
    length: dict[int, int] = {}
    for step in range(6000):
        users = 300 if step < 600 else 8
        user = rng.randrange(users)
        action = rng.random()
        if action < 0.45 or not order:
            index.append(user)
            if user not in length:
                order.append(user)
            length[user] = length.get(user, 0) + 1
        elif action < 0.9:
            moved = rng.choice(order)
            index.move_to_back(moved)
            order.remove(moved)
            order.append(moved)
        else:
            popped = rng.choice(order)
            index.pop(popped)
            length[popped] -= 1
            if not length[popped]:
                del length[popped]
                order.remove(popped)
        if step % 50 == 0 or step > 5900:
            for rank, u in enumerate(order):
                for depth in range(length[u]):
                    before = sum(min(length[v], depth) for v in order)
                    ahead = sum(1 for v in order[:rank] if length[v] > depth)
                    assert index.position(u, depth) == 1 + before + ahead
    assert index.depth == max(length.values())


def test_renumbering_drops_the_rounds_nobody_reaches_any_more() -> None:
    index = RotationIndex()
    for _ in range(10):
        index.append(1)  # ten rounds
    index.append(2)
    index.append(2)
    for _ in range(9):
        index.pop(1)
    assert index.depth == 10  # kept until the next renumbering
    for _ in range(200):  # past the 64 first sequence numbers: renumbered
        index.move_to_back(1)
        index.move_to_back(2)
    assert index.depth == 2
    # user 2 moved last: user 1 first, then both of user 2's rounds
    assert [index.position(1, 0), index.position(2, 0), index.position(2, 1)] == [1, 2, 3]
