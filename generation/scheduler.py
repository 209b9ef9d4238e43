"""The bot's own fair queue in front of the backend.

Round-robin across users, each user's requests in FIFO order, with three caps:

* ``max_in_flight``: runs dispatched and not yet finished, for the whole bot;
* ``max_active_per_user``: the same, per user (a user at the cap is skipped, keeping its place);
* ``max_queued_per_user``: waiting requests per user; one more → ``QueueFullError`` at submit.

Workers wait for the next dispatchable item with :meth:`FairScheduler.take` (no polling). A
change wakes one waiting worker, and a worker that took an item wakes the next one while items
are still queued: waking every worker on every change made each submit cost O(workers) wake-ups
(bench/README.md). An item stays "active" from ``take`` (or ``mark_active`` for
resumed runs) until ``release``. The scheduler is synchronous apart from ``take``; it does no
I/O and is safe to call from any coroutine on the loop.

Queue positions are published coalesced: a change only marks them stale, and one flush —
at the end of the event-loop turn, or ``position_interval`` seconds after the first change —
computes the dispatch order once and calls ``on_position`` for the runs whose position
actually changed. With an interval, a newly submitted run's own first position is still
published at once (computed in O(users), without the whole order). Recomputing and scanning
the order on every change made n submits cost
O(n²) (bench/queue_bench.py); with an interval, the work is at most one O(n) pass and n
events per interval, however fast runs arrive. Without a running loop (plain synchronous use)
the flush happens at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from generation.errors import QueueFullError


@dataclass(frozen=True, slots=True)
class QueueItem:
    run_id: str
    user_id: int
    chat_id: int = 0


PositionCallback = Callable[[QueueItem, int], None]


class FairScheduler:
    def __init__(
        self,
        *,
        max_in_flight: int = 10,
        max_active_per_user: int = 2,
        max_queued_per_user: int = 5,
        on_position: PositionCallback | None = None,
        coalesce: bool = True,
        position_interval: float = 0.0,
    ) -> None:
        self.max_in_flight = max(1, max_in_flight)
        self.max_active_per_user = max(1, max_active_per_user)
        self.max_queued_per_user = max(1, max_queued_per_user)
        self._on_position = on_position
        # user id → FIFO of queued items; dict order is the round-robin rotation.
        self._queues: OrderedDict[int, deque[QueueItem]] = OrderedDict()
        self._items: dict[str, QueueItem] = {}
        self._active: dict[str, int] = {}  # run id → user id
        self._active_per_user: dict[int, int] = {}
        self._published: dict[str, int] = {}
        self._coalesce = coalesce
        self._position_interval = max(0.0, position_interval)
        self._positions: dict[str, int] | None = None  # cache; None when stale
        self._flush_scheduled = False
        self.position_flushes = 0  # dispatch-order computations for publishing (bench)
        self._waiters: deque[asyncio.Future[None]] = deque()  # workers blocked in take()

    # -- introspection ------------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        return len(self._active)

    def queued_count(self, user_id: int | None = None) -> int:
        if user_id is None:
            return len(self._items)
        return len(self._queues.get(user_id, ()))

    def active_count(self, user_id: int) -> int:
        return self._active_per_user.get(user_id, 0)

    def is_queued(self, run_id: str) -> bool:
        return run_id in self._items

    def is_active(self, run_id: str) -> bool:
        return run_id in self._active

    def dispatch_order(self) -> list[QueueItem]:
        """Queued items in the order they would be dispatched (round-robin by rounds)."""
        order: list[QueueItem] = []
        queues = list(self._queues.values())
        depth = max((len(q) for q in queues), default=0)
        for i in range(depth):
            order.extend(q[i] for q in queues if i < len(q))
        return order

    def position(self, run_id: str) -> int | None:
        """1-based position of a queued run in the dispatch order; None when not queued."""
        if run_id not in self._items:
            return None
        return self._current_positions().get(run_id)

    def _current_positions(self) -> dict[str, int]:
        if self._positions is None:
            self._positions = {
                item.run_id: index for index, item in enumerate(self.dispatch_order(), start=1)
            }
        return self._positions

    # -- changes ------------------------------------------------------------------------------

    def check_capacity(self, user_id: int) -> None:
        """Raise QueueFullError when ``user_id`` cannot queue another request."""
        if self.queued_count(user_id) >= self.max_queued_per_user:
            raise QueueFullError(
                "too many queued requests", user_id=user_id, limit=self.max_queued_per_user
            )

    def submit(self, item: QueueItem, *, enforce_cap: bool = True) -> None:
        """Queue ``item`` (its position is published with the next flush). Raises
        QueueFullError past the user's cap (``enforce_cap=False`` for runs that were already
        accepted, e.g. resumed ones)."""
        if item.run_id in self._items or item.run_id in self._active:
            raise ValueError(f"run {item.run_id} is already scheduled")
        if enforce_cap:
            self.check_capacity(item.user_id)
        self._queues.setdefault(item.user_id, deque()).append(item)
        self._items[item.run_id] = item
        self._after_change()
        if self._on_position is not None and self._coalesce and self._position_interval > 0:
            # The new run's first position goes out at once (the user sees "queued, #n");
            # the others that moved wait for the interval flush.
            index = self._new_item_position(item)
            self._published[item.run_id] = index
            self._on_position(item, index)

    def remove(self, run_id: str) -> QueueItem | None:
        """Take a queued run out of the queue (cancel). None when it is not queued."""
        item = self._items.pop(run_id, None)
        if item is None:
            return None
        queue = self._queues[item.user_id]
        queue.remove(item)
        if not queue:
            del self._queues[item.user_id]
        self._published.pop(run_id, None)
        self._after_change()
        return item

    def mark_active(self, run_id: str, user_id: int) -> None:
        """Count a run as in flight without queueing it (a run resumed after a restart)."""
        if run_id in self._active:
            return
        self._active[run_id] = user_id
        self._active_per_user[user_id] = self._active_per_user.get(user_id, 0) + 1

    def release(self, run_id: str) -> bool:
        """The run finished (or failed to submit): free its slots. Idempotent."""
        user_id = self._active.pop(run_id, None)
        if user_id is None:
            return False
        left = self._active_per_user.get(user_id, 1) - 1
        if left > 0:
            self._active_per_user[user_id] = left
        else:
            self._active_per_user.pop(user_id, None)
        self._wake_one()
        return True

    def _pick(self) -> QueueItem | None:
        if len(self._active) >= self.max_in_flight:
            return None
        for user_id, queue in self._queues.items():
            if self.active_count(user_id) >= self.max_active_per_user:
                continue
            item = queue.popleft()
            del self._items[item.run_id]
            if queue:
                self._queues.move_to_end(user_id)  # round-robin: go to the back
            else:
                del self._queues[user_id]
            self._published.pop(item.run_id, None)
            self.mark_active(item.run_id, user_id)
            return item
        return None

    def try_take(self) -> QueueItem | None:
        """The next dispatchable item, or None right now."""
        item = self._pick()
        if item is not None:
            self._after_change()
        return item

    async def take(self) -> QueueItem:
        """Wait for the next dispatchable item (no polling: woken on a change)."""
        while True:
            item = self.try_take()
            if item is not None:
                if self._items:
                    self._wake_one()  # more queued: let another worker look
                return item
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # woken, then cancelled: pass the wake-up on
                raise

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _after_change(self) -> None:
        self._wake_one()
        self._positions = None
        if self._on_position is None:
            return
        if not self._coalesce:
            self.flush_positions()
            return
        if self._flush_scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_positions()
            return
        self._flush_scheduled = True
        if self._position_interval > 0:
            loop.call_later(self._position_interval, self.flush_positions)
        else:
            loop.call_soon(self.flush_positions)

    def _new_item_position(self, item: QueueItem) -> int:
        """Position of ``item``, just appended to its user's queue, in O(users): every user
        has min(len, depth) items in earlier rounds, and users ahead in the rotation with an
        item at the same depth come first."""
        depth = len(self._queues[item.user_id]) - 1
        position = 1
        ahead = True
        for user_id, queue in self._queues.items():
            if user_id == item.user_id:
                ahead = False
            position += min(len(queue), depth)
            if ahead and len(queue) > depth:
                position += 1
        return position

    def flush_positions(self) -> None:
        """Publish the positions that changed since the last flush (one O(n) pass)."""
        self._flush_scheduled = False
        if self._on_position is None:
            return
        self.position_flushes += 1
        positions = self._current_positions()
        published = self._published
        for run_id, index in positions.items():
            if published.get(run_id) != index:
                published[run_id] = index
                self._on_position(self._items[run_id], index)
