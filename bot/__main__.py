"""``python -m bot``: read settings, set up logging, run in polling or webhook mode.

``python -m bot doctor|backup|restore …`` runs an operator command instead (:mod:`bot.cli`).

Exit status 2: a bad setting, or the database is held by another bot process or a restore
(:mod:`storage.lock`); one line on stderr says which.
"""

from __future__ import annotations

import logging
import sys

from bot import event_loop
from bot.config import ConfigError, load_settings
from bot.logging_setup import setup_logging

log = logging.getLogger("bot")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args:
        from bot.cli import main as cli_main

        return cli_main(args)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.secret_values())

    from bot.app import build_application, run_polling
    from bot.local.runner import run_local
    from bot.server import serve_webhook
    from storage.lock import DatabaseInUseError

    try:
        if settings.telegram_bot_token is None:
            return run_local(settings)
        application = build_application(settings)
        if settings.webhook_mode:
            event_loop.run(serve_webhook(application, settings))
        else:
            run_polling(application)
    except DatabaseInUseError as exc:  # another bot, or a restore, holds DATABASE_PATH
        print(str(exc), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
