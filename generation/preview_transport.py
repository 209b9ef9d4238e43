"""The preview backend's file server (generation/preview.py): an httpx transport that answers
``GET {base_url}/files/...`` from the backend and forwards every other URL to a real
``httpx.AsyncHTTPTransport``, so one download client fetches preview and real files alike."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

FileSource = Callable[[str], Awaitable[tuple[bytes, str] | None]]


class PreviewTransport(httpx.AsyncBaseTransport):
    """Serves ``GET {base_url}/files/<name>`` from the backend; forwards anything else."""

    def __init__(
        self, base_url: str, file: FileSource, fallback: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._file = file
        self._fallback = fallback
        self._owns_fallback = fallback is None
        base = httpx.URL(base_url)
        self._scheme, self._host, self._port = base.scheme, base.host, base.port
        self._prefix = base.path.rstrip("/") + "/files/"

    def _is_ours(self, url: httpx.URL) -> bool:
        return (url.scheme, url.host, url.port) == (self._scheme, self._host, self._port)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self._is_ours(request.url):
            if self._fallback is None:
                self._fallback = httpx.AsyncHTTPTransport()
            return await self._fallback.handle_async_request(request)
        path = request.url.path
        if request.method != "GET":
            return httpx.Response(405, json={"detail": "Method Not Allowed"})
        found = None
        if path.startswith(self._prefix):
            found = await self._file(path.removeprefix(self._prefix))
        if found is None:
            return httpx.Response(404, json={"detail": "Not Found"})
        data, content_type = found
        return httpx.Response(200, headers={"content-type": content_type}, content=data)

    async def aclose(self) -> None:
        """Closes the real transport we created; a later request opens a new one (a
        download client closing this transport must not break the next client)."""
        fallback = self._fallback
        if fallback is not None and self._owns_fallback:
            self._fallback = None
            await fallback.aclose()
