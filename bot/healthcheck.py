"""``python -m bot.healthcheck``: the container's HEALTHCHECK (exit 0 healthy, 1 unhealthy).

Webhook mode (``PUBLIC_URL`` set): ``GET http://127.0.0.1:<LISTEN_PORT>/healthz`` must answer
200 (the bot's HTTP server checks that the database answers). Long polling has no HTTP server,
so there the check is that a running bot holds the database's "in use" lock
(:mod:`storage.lock`). Standard library and our settings only; prints one line, never a secret.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from bot.config import ConfigError, load_settings
from storage.lock import database_in_use

TIMEOUT_SECONDS = 4.0


def check(settings_overrides: dict[str, object] | None = None) -> tuple[bool, str]:
    """(healthy, one-line reason)."""
    try:
        settings = load_settings(**(settings_overrides or {}))
    except ConfigError as exc:
        return False, str(exc)
    if settings.webhook_mode:
        host = settings.listen_host
        if host in ("", "0.0.0.0", "::"):  # every interface: ask on the loopback one
            host = "127.0.0.1"
        url = f"http://{host}:{settings.listen_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                return response.status == 200, f"{url} answered {response.status}"
        except urllib.error.HTTPError as exc:
            return False, f"{url} answered {exc.code}"
        except OSError as exc:
            return False, f"{url} unreachable: {exc}"
    if database_in_use(settings.database_path):
        return True, "the bot holds its database open"
    return False, f"no running bot has {settings.database_path} open"


def main() -> int:
    healthy, reason = check()
    print(("healthy: " if healthy else "unhealthy: ") + reason)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
