"""Which incoming messages could be Telegram redeliveries of one a bot process already started.

Telegram delivers an update again when the bot did not confirm it (a crash, a lost webhook
answer). A message that started a run must not start a second one, so ``handlers/submit.py``
asks the database for "the run this message started" — one read on every /make's way to the
create-run. Most messages cannot be redeliveries from an earlier process: they were sent after
this process started. For those, this process's own memory of the messages it started runs for
is the whole truth, and the read is skipped (issue 16: one hop less before the create).

Conservative on purpose: a message is looked up in the database unless it was sent more than
``CLOCK_MARGIN`` seconds after this process started (this host's clock may be behind
Telegram's) and within the last ``FRESH_SECONDS`` (an in-process duplicate of an older message
could have left the bounded memory).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

CLOCK_MARGIN = 30.0
FRESH_SECONDS = 60.0
REMEMBERED = 10_000  # hard bound; only the last FRESH_SECONDS + CLOCK_MARGIN are ever needed

MessageKey = tuple[int, int, int]  # user id, chat id, message id


@dataclass(eq=False)
class RecentMessages:
    """The runs this process started per message, for as long as a duplicate of the message
    would not be looked up in the database anyway (bounded in age and count)."""

    clock: Callable[[], float] = time.time
    started_at: float = field(default=0.0)
    _runs: OrderedDict[MessageKey, tuple[str, float]] = field(default_factory=OrderedDict)
    # Messages sent at or before this moment may have left the memory: they are looked up.
    _horizon: float = 0.0

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock()
        self._horizon = self.started_at + CLOCK_MARGIN

    def remember(self, key: MessageKey, run_id: str, sent_at: float | None = None) -> None:
        now = self.clock()
        self._runs[key] = (run_id, now if sent_at is None else sent_at)
        self._runs.move_to_end(key)
        too_old = now - FRESH_SECONDS
        while self._runs:
            oldest_key, (_, sent) = next(iter(self._runs.items()))
            if sent >= too_old and len(self._runs) <= REMEMBERED:
                break
            del self._runs[oldest_key]
            self._horizon = max(self._horizon, sent)  # anything as old is looked up

    def run_id(self, key: MessageKey) -> str | None:
        entry = self._runs.get(key)
        return entry[0] if entry is not None else None

    def needs_lookup(self, sent_at: float | None) -> bool:
        """True when the database must be asked (the message may predate this process, or
        its entry may have left the memory)."""
        if sent_at is None:
            return True
        return sent_at <= self._horizon or sent_at < self.clock() - FRESH_SECONDS
