"""The download transport of ComfyUI outputs: adds the servers' ``Authorization``."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx


class AuthTransport(httpx.AsyncBaseTransport):
    """Download transport: requests for the configured ComfyUI servers (their ``/view``
    output URLs) go to the network with ``Authorization`` added; everything else goes to
    ``fallback`` (the network when None)."""

    def __init__(
        self,
        urls: Sequence[str],
        auth: str | None,
        fallback: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._origins = {_origin(u) for u in urls}
        self._auth = auth
        self._network = httpx.AsyncHTTPTransport()
        self._fallback = fallback

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if _origin(str(request.url)) in self._origins:
            if self._auth:
                request.headers["Authorization"] = self._auth
            return await self._network.handle_async_request(request)
        transport = self._fallback or self._network
        return await transport.handle_async_request(request)

    async def aclose(self) -> None:
        await self._network.aclose()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return (parts.scheme, (parts.hostname or "").lower(), port)
