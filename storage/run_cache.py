"""A process-local, write-through cache of run records (what ``RunRepository.get_run`` serves).

Correct only because exactly one process writes the database, the running bot, and that is
enforced (storage/lock.py): the bot opens storage with ``writer=True`` and so holds the
exclusive ``<database>.writer.lock``, and a second bot on the same database refuses to start;
the other tools never write while it runs (``python -m bot doctor`` and ``backup`` only read;
``restore`` cannot start while the bot holds the shared "in use" lock). Every write to
``runs`` in this process goes through code that keeps this cache true:

* :class:`storage.runs.RunRepository` puts the record each ``INSERT`` / ``UPDATE ... RETURNING``
  produced, and drops the ids ``prune_runs`` deleted;
* the ledger (storage/ledger.py) updates the cached ``charge_state`` after the transaction that
  settled or released a hold changed it.

Every mutation happens while the caller holds the database lock (``Database.exclusive``), and a
run is dropped *before* a write is sent to SQLite: a reader that misses must take the same lock,
and aiosqlite runs statements in order on its one thread, so it reads what the write left even
when the writer was cancelled while waiting for it (the write still happens; its result is just
not seen). No reader can put an older row back after a newer write.

Records are immutable: ``RunRecord`` is a frozen dataclass and the cache stores frozen copies of
its JSON fields (:func:`freeze`), so a caller cannot change what the next caller gets.

Bounded LRU: at most ``capacity`` records, of which at most ``terminal_capacity`` finished ones;
terminal runs go first (nothing tracks them any more), then the least recently used active
ones. A miss only costs one read.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, NoReturn

from generation.models import RunRecord

DEFAULT_CAPACITY = 4096
# Finished runs kept: delivery and the result buttons of recent results read them; older
# ones cost one read. Bounded apart so finished runs never crowd the memory (issue 16's RSS
# growth figure: 4,096 finished records were ~20 MB).
DEFAULT_TERMINAL_CAPACITY = 256


def _immutable(self: Any, *args: Any, **kwargs: Any) -> NoReturn:
    raise TypeError(f"{type(self).__name__} of a stored run is read-only; copy it to change it")


class FrozenDict(dict):  # type: ignore[type-arg]
    """A ``dict`` (JSON-serializable, equal to plain dicts) that refuses every change."""

    __slots__ = ()
    __setitem__ = __delitem__ = __ior__ = _immutable
    clear = pop = popitem = setdefault = update = _immutable

    def __reduce__(self) -> tuple[Any, ...]:  # copy / deepcopy / pickle give a plain dict
        return (dict, (dict(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'FrozenDict'")


class FrozenList(list):  # type: ignore[type-arg]
    """A ``list`` (JSON-serializable, equal to plain lists) that refuses every change."""

    __slots__ = ()
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _immutable
    append = extend = insert = pop = remove = clear = sort = reverse = _immutable

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))

    def __hash__(self) -> int:  # type: ignore[override]
        raise TypeError("unhashable type: 'FrozenList'")


def freeze(value: Any) -> Any:
    """A deep read-only copy of JSON data (dicts and lists; other values are immutable)."""
    if isinstance(value, FrozenDict | FrozenList):
        return value
    if isinstance(value, dict):
        frozen = FrozenDict()
        dict.update(frozen, ((k, freeze(v)) for k, v in value.items()))
        return frozen
    if isinstance(value, tuple):
        return tuple(freeze(v) for v in value)
    if isinstance(value, list):
        frozen_list = FrozenList()
        list.extend(frozen_list, (freeze(v) for v in value))
        return frozen_list
    return value


def frozen_record(run: RunRecord) -> RunRecord:
    """``run`` with read-only ``request`` and ``meta`` (the only mutable fields)."""
    if isinstance(run.request, FrozenDict) and isinstance(run.meta, FrozenDict):
        return run
    return dataclasses.replace(run, request=freeze(run.request), meta=freeze(run.meta))


class RunCache:
    """Run records by id (two LRU orders: active and terminal) and backend run id → run id."""

    def __init__(
        self, capacity: int = DEFAULT_CAPACITY, terminal_capacity: int = DEFAULT_TERMINAL_CAPACITY
    ) -> None:
        if capacity < 1 or terminal_capacity < 1:
            raise ValueError("capacities must be at least 1")
        self.capacity = capacity
        self.terminal_capacity = min(terminal_capacity, capacity)
        self._active: OrderedDict[str, RunRecord] = OrderedDict()
        self._done: OrderedDict[str, RunRecord] = OrderedDict()
        self._backend: dict[str, str] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._active) + len(self._done)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._active or run_id in self._done

    def get(self, run_id: str) -> RunRecord | None:
        for order in (self._active, self._done):
            run = order.get(run_id)
            if run is not None:
                order.move_to_end(run_id)
                self.hits += 1
                return run
        self.misses += 1
        return None

    def put(self, run: RunRecord) -> RunRecord:
        """Store ``run`` (frozen) as the current state of its id; returns what was stored."""
        run = frozen_record(run)
        self._active.pop(run.id, None)
        self._done.pop(run.id, None)
        (self._done if run.is_terminal else self._active)[run.id] = run
        while len(self._done) > self.terminal_capacity:
            self._done.popitem(last=False)
        while len(self) > self.capacity:
            (self._done if self._done else self._active).popitem(last=False)
        return run

    def discard(self, run_id: str) -> RunRecord | None:
        """Forget ``run_id``; returns the record it had."""
        run = self._active.pop(run_id, None)
        return run if run is not None else self._done.pop(run_id, None)

    def drop_terminal(self) -> None:
        """Forget every terminal run (what ``prune_runs`` may have deleted)."""
        self._done.clear()

    def clear(self) -> None:
        self._active.clear()
        self._done.clear()
        self._backend.clear()

    # -- backend run id → run id (the newest run with it, as the database last said) ---------

    def by_backend(self, backend_run_id: str) -> RunRecord | None:
        run_id = self._backend.get(backend_run_id)
        if run_id is None:
            return None
        run = self.get(run_id)
        if run is None or run.backend_run_id != backend_run_id:
            self._backend.pop(backend_run_id, None)
            return None
        return run

    def remember_backend(self, run: RunRecord) -> None:
        """``run`` is, per a read just made under the lock, the newest with its backend id."""
        if run.backend_run_id is None:
            return
        self.put(run)
        self._backend[run.backend_run_id] = run.id
        if len(self._backend) > 2 * self.capacity:  # drop the entries of evicted runs
            self._backend = {b: r for b, r in self._backend.items() if r in self}

    def forget_backend(self, backend_run_id: str | None) -> None:
        """A write may have given another run this backend id: the next lookup reads."""
        if backend_run_id is not None:
            self._backend.pop(backend_run_id, None)
