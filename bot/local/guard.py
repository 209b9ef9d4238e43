"""Local mode off loopback (issue 11, point 4): the web chat's user is an admin who spends
real GPU credit, so on a non-loopback ``LISTEN_HOST`` it needs ``LOCAL_MODE_TOKEN``.

* :func:`exposure_error`: the one line local mode exits with (code 2) when ``LISTEN_HOST`` is
  not a loopback address and no token is set.
* :class:`LocalTokenMiddleware`: with a token, every page and API request needs it — as
  ``?token=`` (the start-up line prints that URL; the answer then sets an HttpOnly cookie so
  the page's own requests carry it), the cookie, or an ``X-Local-Token`` header. Compared in
  constant time. ``/healthz`` stays open (it tells nothing).
"""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

COOKIE = "local_token"
HEADER = b"x-local-token"
OPEN_PATHS = frozenset({"/healthz"})


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_error(listen_host: str, token: str | None) -> str | None:
    """Why local mode must not start, as one line; None when it may."""
    if is_loopback_host(listen_host) or token:
        return None
    return (
        f"Local mode refuses to listen on LISTEN_HOST={listen_host} without LOCAL_MODE_TOKEN: "
        "the web chat is an admin console; set LOCAL_MODE_TOKEN or use LISTEN_HOST=127.0.0.1"
    )


def _given_tokens(scope: dict[str, Any]) -> tuple[str | None, list[str]]:
    """(the ``?token=`` value, every other token the request carries)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    from_query = (query.get("token") or [None])[0]
    others: list[str] = []
    for name, value in scope.get("headers", []):
        if name == HEADER:
            others.append(value.decode("latin-1"))
        elif name == b"cookie":
            cookie: SimpleCookie = SimpleCookie()
            try:
                cookie.load(value.decode("latin-1"))
            except Exception:
                continue
            if COOKIE in cookie:
                others.append(cookie[COOKIE].value)
    return from_query, others


class LocalTokenMiddleware:
    """ASGI middleware: the request must carry ``token`` (see the module docstring)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    def _ok(self, value: str | None) -> bool:
        return bool(value) and hmac.compare_digest(value.encode(), self._token)  # type: ignore[union-attr]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        from_query, others = _given_tokens(scope)
        if any(self._ok(v) for v in others):
            await self.app(scope, receive, send)
            return
        if not self._ok(from_query):
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8")],
                }
            )
            body = b"local mode: open the address printed at start-up (it carries ?token=)"
            await send({"type": "http.response.body", "body": body})
            return
        cookie = f"{COOKIE}={from_query}; HttpOnly; SameSite=Strict; Path=/".encode()

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"set-cookie", cookie)]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_cookie)
