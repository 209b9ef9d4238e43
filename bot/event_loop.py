"""The event loop the bot runs on: uvloop where it is installed (a dependency on Linux and
macOS), asyncio's own loop elsewhere.

Why: every Bot API call, webhook, database hop and timer of a generation is a few callbacks
and socket operations on one loop; uvloop's libuv loop does them with less Python per turn
(bench/README.md has the before/after figures). Nothing in the bot depends on which loop
runs it: the in-process tests run on asyncio's loop, the real-process ones
(tests/e2e/process.py) on this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

try:
    import uvloop
except ImportError:  # pragma: no cover - Windows, or installed without it
    uvloop = None  # type: ignore[assignment]


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A fresh loop: uvloop's when available."""
    if uvloop is not None:
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`new_event_loop`."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)


def install() -> None:
    """Make a new loop the current one (for PTB's ``run_polling``, which takes the current
    loop rather than creating its own)."""
    asyncio.set_event_loop(new_event_loop())
