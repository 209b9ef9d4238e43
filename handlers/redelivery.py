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
REMEMBERED = 20_000

MessageKey = tuple[int, int, int]  # user id, chat id, message id


@dataclass(eq=False)
class RecentMessages:
    """The runs this process started per message (bounded, newest kept)."""

    clock: Callable[[], float] = time.time
    started_at: float = field(default=0.0)
    _runs: OrderedDict[MessageKey, str] = field(default_factory=OrderedDict)

    def __post_init__(self) -> None:
        if not self.started_at:
            self.started_at = self.clock()

    def remember(self, key: MessageKey, run_id: str) -> None:
        self._runs[key] = run_id
        while len(self._runs) > REMEMBERED:
            self._runs.popitem(last=False)

    def run_id(self, key: MessageKey) -> str | None:
        return self._runs.get(key)

    def needs_lookup(self, sent_at: float | None) -> bool:
        """True when the database must be asked (the message may predate this process)."""
        if sent_at is None:
            return True
        return sent_at < self.started_at + CLOCK_MARGIN or sent_at < self.clock() - FRESH_SECONDS
