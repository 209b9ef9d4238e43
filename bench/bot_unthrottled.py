"""``python -m bench.bot_unthrottled``: the real bot with Telegram's overall 30 messages/s
limit lifted (``bot.rate_limit.OVERALL_PER_SECOND``), nothing else changed.

The bot sends about three Bot API requests per generation (progress message, photo, final
edit), so under Telegram's real overall limit it cannot deliver more than ~10 generations/s
whatever it costs — and the bare baseline has no limiter at all. The overhead, throughput and
memory phases run against the Telegram double with flood control off and use this entry point
so they measure the bot's own work; the flood-control phase runs plain ``python -m bot``.
With ``BENCH_PROFILE=<file>`` the process runs under cProfile (see bench.profile_bot), with
``BENCH_SQL_COUNTER=<file>`` its SQLite statements are counted (see bench.instrument).
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from bench.instrument import install_from_env

    install_from_env()
    import bot.rate_limit

    if hasattr(bot.rate_limit, "OVERALL_PER_SECOND"):
        bot.rate_limit.OVERALL_PER_SECOND = 100_000
    out = os.environ.get("BENCH_PROFILE")
    if out:
        from bench.profile_bot import run_profiled

        return run_profiled(out)
    from bot.__main__ import main as bot_main

    return bot_main([])  # [] : run the bot, whatever this script's own arguments are


if __name__ == "__main__":
    sys.exit(main())
