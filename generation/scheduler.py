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

Queue positions are published coalesced: a change only marks them stale, and one pass —
at the end of the event-loop turn, or ``position_interval`` seconds after the first change —
calls ``on_position`` for the runs whose position actually changed. The pass walks the
dispatch order in slices of ``flush_slice`` runs, one slice per loop turn, each run's position
in O(log n) (generation/queue_positions.py), so no turn is O(n); a change during a pass is
followed by another pass. With an interval, a newly submitted run's own first position is
still published at once, in O(log n). Recomputing and scanning the order on every change
made n submits cost O(n²) (bench/queue_bench.py); with an interval, the work is at most one
pass and n events per interval, however fast runs arrive. Without a running loop (plain
synchronous use) the flush happens at once.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from generation.errors import QueueFullError
from generation.queue_positions import RotationIndex

FLUSH_SLICE = 256  # positions computed per loop turn by a pass


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
        flush_slice: int = FLUSH_SLICE,
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
        self._index = RotationIndex()  # the same lengths and rotation, for positions
        self._published: dict[str, int] = {}
        self._coalesce = coalesce
        self._position_interval = max(0.0, position_interval)
        self._flush_slice = max(1, flush_slice)
        self._flush_handle: asyncio.Handle | None = None  # the next pass or slice
        self._cursor: tuple[int, int] | None = None  # a pass in progress: (round, rank done)
        self._stale = False  # changed during the pass in progress: another one follows
        self.position_flushes = 0  # publishing passes (bench)
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
        """1-based position of a queued run in the dispatch order; None when not queued.
        O(per-user queue + log users), without the whole order."""
        item = self._items.get(run_id)
        if item is None:
            return None
        return self._index.position(item.user_id, self._queues[item.user_id].index(item))

    @property
    def flush_pending(self) -> bool:
        """A publishing pass is scheduled or in progress."""
        return self._flush_handle is not None

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
        queue = self._queues.setdefault(item.user_id, deque())
        queue.append(item)
        self._index.append(item.user_id)
        self._items[item.run_id] = item
        self._after_change()
        if self._on_position is not None and self._coalesce and self._position_interval > 0:
            # The new run's first position goes out at once (the user sees "queued, #n");
            # the others that moved wait for the interval flush.
            index = self._index.position(item.user_id, len(queue) - 1)
            self._published[item.run_id] = index
            self._on_position(item, index)

    def remove(self, run_id: str) -> QueueItem | None:
        """Take a queued run out of the queue (cancel). None when it is not queued."""
        item = self._items.pop(run_id, None)
        if item is None:
            return None
        queue = self._queues[item.user_id]
        queue.remove(item)
        self._index.pop(item.user_id)
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
            self._index.pop(user_id)
            if queue:
                self._queues.move_to_end(user_id)  # round-robin: go to the back
                self._index.move_to_back(user_id)
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
        if self._on_position is None:
            return
        if not self._coalesce:
            self.flush_positions()
            return
        if self._cursor is not None:
            self._stale = True  # the pass goes on with fresh positions; another one follows
            return
        if self._flush_handle is None:
            self._schedule_pass()

    def _schedule_pass(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush_positions()
            return
        if self._position_interval > 0:
            self._flush_handle = loop.call_later(self._position_interval, self._flush_step)
        else:
            self._flush_handle = loop.call_soon(self._flush_step)

    def _flush_step(self) -> None:
        """One slice of the pass (starting it if none is in progress), the next one queued."""
        self._flush_handle = None
        if self._cursor is None:
            self._cursor = (0, 0)
            self._stale = False
            self.position_flushes += 1
        if not self._publish_slice(self._flush_slice):
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush_step)
            return
        self._cursor = None
        if self._stale:
            self._stale = False
            self._schedule_pass()

    def _publish_slice(self, budget: int | None) -> bool:
        """Publish the changed positions of up to ``budget`` runs (None: all) from the cursor
        on, in dispatch order; True when the pass is done. A change between slices (or by
        ``on_position``) only moves the cursor against the order: the pass that follows it
        corrects what this one skipped."""
        assert self._cursor is not None and self._on_position is not None
        index, queues, published = self._index, self._queues, self._published
        depth, rank = self._cursor
        while depth < index.depth:
            if rank >= index.count(depth):
                depth, rank = depth + 1, 0
                continue
            if budget == 0:
                self._cursor = (depth, rank)
                return False
            base = index.before(depth)
            limit = index.count(depth) if budget is None else budget
            users = index.users_in_round(depth, rank, limit)
            if budget is not None:
                budget -= len(users)
            for user in users:
                rank += 1
                queue = queues.get(user)
                if queue is None or len(queue) <= depth:
                    continue  # changed by on_position: the pass that follows publishes it
                item = queue[depth]
                if published.get(item.run_id) != base + rank:
                    published[item.run_id] = base + rank
                    self._on_position(item, base + rank)
        return True

    def flush_positions(self) -> None:
        """Publish every position that changed, now, in one pass (tests, benchmarks and
        synchronous use; on a loop the scheduler itself publishes in slices)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._on_position is None:
            return
        self.position_flushes += 1
        self._cursor, self._stale = (0, 0), False
        self._publish_slice(None)
        self._cursor = None
