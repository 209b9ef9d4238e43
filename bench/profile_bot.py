"""``python -m bench.profile_bot OUT.prof``: run ``python -m bot`` under cProfile and write the
stats to ``OUT.prof`` when the bot exits.

uvicorn captures SIGTERM while it serves and re-raises it once it has stopped, so the process
would die before a ``finally`` runs; the SIGTERM handler installed here (restored and called by
uvicorn) writes the profile first."""

from __future__ import annotations

import cProfile
import signal
import sys
from typing import Any


def run_profiled(out: str) -> int:
    from bot.__main__ import main as bot_main

    profiler = cProfile.Profile()

    def on_term(signum: int, frame: Any) -> None:
        profiler.disable()
        profiler.dump_stats(out)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    profiler.enable()
    try:
        return bot_main([])  # [] : run the bot, whatever this script's own arguments are
    finally:
        profiler.disable()
        profiler.dump_stats(out)


def main() -> int:
    return run_profiled(sys.argv[1] if len(sys.argv) > 1 else "bot.prof")


if __name__ == "__main__":
    sys.exit(main())
