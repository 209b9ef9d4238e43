"""An ``httpx`` transport that sends requests with aiohttp.

Why: the benchmark of issue 16 (bench/README.md) found httpx's default stack (httpcore, anyio,
h11) to cost about 0.5 ms of CPU per request with one in flight and 1.2–1.9 ms with a hundred
(httpcore walks and polls its whole pool on every request), against ~0.1 ms for aiohttp's
C-accelerated client. The ComfyDeploy client keeps its httpx API (tenacity retries, the answer
parsing, the tests' ``MockTransport``) and only the wire underneath changes.

What the client relies on is kept exactly: an error raised before the request could have
reached the server is ``httpx.ConnectError`` / ``httpx.ConnectTimeout`` (safe to retry, see
generation/comfydeploy_answers.py); anything after that — a read timeout, a dropped
connection, a broken body — is a read-side error, which the create call treats as uncertain.
Redirects are not followed (the clients follow them themselves, or not at all); bodies
stream, so generation/safe_fetch.py can stop reading at its size cap.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit
from urllib.request import getproxies_environment, proxy_bypass_environment

import aiohttp
import httpx

# Request headers aiohttp computes itself from the body it sends.
_HOP_BY_HOP = frozenset({"content-length", "transfer-encoding", "connection", "accept-encoding"})
# Response headers that describe the wire form, not the decoded body handed to httpx.
_WIRE_ONLY = frozenset({"content-length", "transfer-encoding", "content-encoding"})
_CHUNK = 64 * 1024


class EnvProxies:
    """``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` as httpx reads them, read once. aiohttp's
    own ``trust_env`` re-reads the environment (and ``~/.netrc``) on every request, which cost
    ~0.5 ms of CPU per request — as much as the rest of the exchange."""

    def __init__(self) -> None:
        found = getproxies_environment()
        self._proxies = {k: v for k, v in found.items() if k in ("http", "https")}
        self._bypass: dict[str, bool] = {}

    def for_url(self, url: str) -> str | None:
        """The proxy for ``url``, or None (none set, or the host is in ``NO_PROXY``)."""
        if not self._proxies:
            return None
        parts = urlsplit(url)
        proxy = self._proxies.get(parts.scheme)
        if proxy is None:
            return None
        host = parts.netloc.rsplit("@", 1)[-1]
        bypass = self._bypass.get(host)
        if bypass is None:
            if len(self._bypass) > 1000:
                self._bypass.clear()
            bypass = self._bypass[host] = bool(proxy_bypass_environment(host))
        return None if bypass else proxy


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One pooled aiohttp session, opened on the first request (inside the running loop)."""

    def __init__(self, *, max_connections: int = 100, trust_env: bool = False) -> None:
        """``trust_env``: honour ``HTTP(S)_PROXY``/``NO_PROXY`` as httpx's own transport does
        (the API clients); off where a proxy would bypass a check (output downloads)."""
        self._limit = max_connections
        self._proxies = EnvProxies() if trust_env else None
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit),
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                trust_env=False,  # proxies: EnvProxies, read once
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._open()
        headers = [(k, v) for k, v in request.headers.multi_items() if k not in _HOP_BY_HOP]
        headers.append(("accept-encoding", "gzip, deflate"))  # what auto_decompress handles
        body = await request.aread()
        with _mapped(request):
            response = await session.request(
                request.method,
                str(request.url),
                data=body or None,
                headers=headers,
                allow_redirects=False,
                timeout=_timeout(request.extensions.get("timeout") or {}),
                # a pinned address (generation/safe_fetch.py) still verifies the host's name
                server_hostname=request.extensions.get("sni_hostname"),
                proxy=self._proxies.for_url(str(request.url)) if self._proxies else None,
            )
        return httpx.Response(
            response.status,
            headers=_response_headers(response),
            stream=_Body(response, request),
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


class _Body(httpx.AsyncByteStream):
    """The answer's body as it arrives (decoded), so callers can cap what they read."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _mapped(self._request):
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                yield chunk

    async def aclose(self) -> None:
        self._response.release()


def _response_headers(response: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    """The headers of the decoded body: a compressed answer's length and encoding describe
    the wire form only (aiohttp already decoded it)."""
    encoded = "content-encoding" in response.headers
    drop = _WIRE_ONLY if encoded else _WIRE_ONLY - {"content-length"}
    return [(k, v) for k, v in response.headers.items() if k.lower() not in drop]


def _timeout(values: dict[str, float | None]) -> aiohttp.ClientTimeout:
    connect, pool, read = values.get("connect"), values.get("pool"), values.get("read")
    waiting = None if connect is None or pool is None else connect + pool  # pool wait + connect
    return aiohttp.ClientTimeout(total=None, connect=waiting, sock_connect=connect, sock_read=read)


@contextmanager
def _mapped(request: httpx.Request) -> Iterator[None]:
    """aiohttp's errors as the httpx errors of the same meaning (before / after sending)."""
    try:
        yield
    except aiohttp.ClientConnectorError as exc:  # no connection: nothing was sent
        raise httpx.ConnectError(str(exc), request=request) from exc
    except aiohttp.ConnectionTimeoutError as exc:  # waiting for a connection: nothing sent
        raise httpx.ConnectTimeout(str(exc), request=request) from exc
    except (TimeoutError, aiohttp.SocketTimeoutError) as exc:
        raise httpx.ReadTimeout(str(exc) or "read timed out", request=request) from exc
    except aiohttp.ServerDisconnectedError as exc:
        raise httpx.RemoteProtocolError(str(exc), request=request) from exc
    except aiohttp.ClientError as exc:  # after connecting: the request may have arrived
        raise httpx.ReadError(f"{type(exc).__name__}: {exc}", request=request) from exc
