"""The Bot API transport: PTB's ``BaseRequest`` on aiohttp (PTB's documented extension point).

Why not PTB's default ``HTTPXRequest``: the benchmark of issue 16 (bench/README.md) found the
httpx/httpcore/anyio/h11 stack to be the largest single cost of a generation — about 0.5 ms of
CPU per Bot API call at one request in flight, 1.2–1.9 ms at a hundred (httpcore walks its whole
connection pool, polling every idle socket, on each request), against ~0.1 ms for aiohttp's
C-accelerated client on the same loopback server. The bot makes three Bot API calls per
generation (progress message, photo, final edit), so this is where most of its CPU went.

Semantics follow ``HTTPXRequest``: the same timeouts and defaults (5 s connect/read/write,
1 s pool, 20 s write for uploads), ``TimedOut`` for a timeout, ``NetworkError`` for anything else
on the wire, and ``(status, body)`` for every answer (PTB turns error codes into its own
exceptions). aiohttp has no separate write timeout; the whole exchange is bounded by the sum of
the four, so an upload that stalls still ends in ``TimedOut`` (handlers/telegram_io.py sizes
them to the file).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from telegram.error import NetworkError, TimedOut
from telegram.request import BaseRequest, RequestData

from generation.http_transport import EnvProxies

ODV = Any  # PTB's "float | None | DefaultValue" timeout arguments

MEDIA_WRITE_TIMEOUT = 20.0


class AiohttpRequest(BaseRequest):
    """One aiohttp ``ClientSession`` (opened in ``initialize``, closed in ``shutdown``)."""

    __slots__ = ("_connect", "_pool", "_proxies", "_read", "_session", "_size", "_write")

    def __init__(
        self,
        connection_pool_size: int = 256,
        *,
        read_timeout: float | None = 5.0,
        write_timeout: float | None = 5.0,
        connect_timeout: float | None = 5.0,
        pool_timeout: float | None = 1.0,
    ) -> None:
        self._size = connection_pool_size
        self._read = read_timeout
        self._write = write_timeout
        self._connect = connect_timeout
        self._pool = pool_timeout
        self._session: aiohttp.ClientSession | None = None
        self._proxies = EnvProxies()  # HTTP(S)_PROXY / NO_PROXY, as HTTPXRequest honours

    @property
    def read_timeout(self) -> float | None:
        return self._read

    async def initialize(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._size, limit_per_host=self._size)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": self.USER_AGENT},
                timeout=aiohttp.ClientTimeout(total=None),
                skip_auto_headers=("Accept-Encoding",),  # answers are small JSON
                trust_env=False,  # proxies: as PTB's httpx default, read once (EnvProxies)
            )

    async def shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    def _timeout(self, read: ODV, write: ODV, connect: ODV, pool: ODV, upload: bool) -> Any:
        default = BaseRequest.DEFAULT_NONE.__class__
        read = self._read if isinstance(read, default) else read
        connect = self._connect if isinstance(connect, default) else connect
        pool = self._pool if isinstance(pool, default) else pool
        if isinstance(write, default):
            write = MEDIA_WRITE_TIMEOUT if upload else self._write
        parts = (read, write, connect, pool)
        total = None if any(p is None for p in parts) else sum(parts)
        wait = None if connect is None or pool is None else connect + pool
        return aiohttp.ClientTimeout(
            total=total, connect=wait, sock_connect=connect, sock_read=read
        )

    async def do_request(
        self,
        url: str,
        method: str,
        request_data: RequestData | None = None,
        read_timeout: ODV = BaseRequest.DEFAULT_NONE,
        write_timeout: ODV = BaseRequest.DEFAULT_NONE,
        connect_timeout: ODV = BaseRequest.DEFAULT_NONE,
        pool_timeout: ODV = BaseRequest.DEFAULT_NONE,
    ) -> tuple[int, bytes]:
        """See ``BaseRequest.do_request``."""
        session = self._session
        if session is None or session.closed:
            raise RuntimeError("This AiohttpRequest is not initialized!")
        files = request_data.multipart_data if request_data else None
        timeout = self._timeout(
            read_timeout, write_timeout, connect_timeout, pool_timeout, bool(files)
        )
        body = _body(request_data, files)
        try:
            proxy = self._proxies.for_url(url)
            async with session.request(
                method, url, data=body, timeout=timeout, proxy=proxy
            ) as response:
                return response.status, await response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as err:
            raise TimedOut from err
        except aiohttp.ClientError as err:
            raise NetworkError(f"aiohttp.{err.__class__.__name__}: {err}") from err


def _body(request_data: RequestData | None, files: dict[str, Any] | None) -> Any:
    """Form fields as ``HTTPXRequest`` sends them: urlencoded, or multipart with files."""
    fields = request_data.json_parameters if request_data else None
    if not files:
        return fields or None
    form = aiohttp.FormData(quote_fields=False)
    for name, value in (fields or {}).items():
        form.add_field(name, value)
    for name, part in files.items():
        filename, content, mimetype = _part(part)
        form.add_field(name, content, filename=filename, content_type=mimetype)
    return form


def _part(part: Any) -> tuple[str | None, Any, str | None]:
    """PTB's multipart values are ``(filename, bytes, mimetype)`` tuples (or plain bytes)."""
    if isinstance(part, tuple):
        filename, content, *rest = part
        return filename, content, rest[0] if rest else None
    return None, part, None
