"""``python -m bot.healthcheck`` (the image's HEALTHCHECK): /healthz in webhook mode, the
database's "in use" lock in long polling."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.healthcheck import check
from storage import Storage


@contextmanager
def healthz_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _webhook(port: int) -> dict[str, object]:
    return {
        "_env_file": None,
        "telegram_bot_token": "123:abc",
        "public_url": "https://bot.example",
        "listen_port": port,
    }


def test_webhook_mode_asks_healthz() -> None:
    with healthz_server(200) as port:
        healthy, reason = check(_webhook(port))
    assert healthy and f"127.0.0.1:{port}/healthz answered 200" in reason
    with healthz_server(503) as port:
        healthy, reason = check(_webhook(port))
    assert not healthy and "answered 503" in reason


def test_webhook_mode_with_nothing_listening() -> None:
    with healthz_server(200) as port:
        pass  # closed again: nothing listens there now
    healthy, reason = check(_webhook(port))
    assert not healthy and "unreachable" in reason


async def test_polling_mode_checks_that_a_bot_holds_the_database(tmp_path: Path) -> None:
    db = tmp_path / "bot.sqlite3"
    settings = {"_env_file": None, "telegram_bot_token": "123:abc", "database_path": str(db)}
    healthy, reason = check(settings)
    assert not healthy and "no running bot" in reason
    store = await Storage.open(db)
    try:
        assert check(settings) == (True, "the bot holds its database open")
    finally:
        await store.close()
    assert not check(settings)[0]


def test_a_bad_setting_is_unhealthy() -> None:
    healthy, reason = check({"_env_file": None, "listen_port": 0})
    assert not healthy and "LISTEN_PORT" in reason
