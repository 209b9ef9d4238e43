"""Download run outputs without letting a URL reach inside our network (issue 11, point 2).

An output URL comes from the backend (or from whoever can post a webhook), so it is untrusted.
:class:`SafeFetcher` downloads one only when every hop of it is one of:

* the backend's own origin (scheme, host and port of its base URL), or
* a host in the operator's allowlist (``OUTPUT_URL_ALLOWLIST``), or
* an ``https`` URL whose host resolves only to public addresses (no loopback, private,
  link-local, multicast, reserved or unspecified address; IPv4 inside IPv6 is unwrapped).

For the third kind the connection is pinned to the address that was checked (the URL's host
is replaced by that address, the ``Host`` header and the TLS server name stay the hostname), so
a DNS answer that changes between the check and the connect cannot redirect us. Names are
resolved with the event loop's ``getaddrinfo`` (a worker thread, never blocking the loop).
Redirects are followed by hand, each hop checked again, at most ``max_redirects``. The body
is streamed with a byte cap (``Content-Length`` checked first), and one download, redirects
included, gets ``total_timeout`` seconds in all.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from generation.errors import OutputDownloadError, OutputRefusedError

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
DEFAULT_MAX_BYTES = 50 * 1024 * 1024  # Telegram's upload limit for bots
DEFAULT_TOTAL_TIMEOUT = 120.0
DEFAULT_MAX_REDIRECTS = 5


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (getaddrinfo in the loop's executor)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    seen: list[str] = []
    for info in infos:
        address = str(info[4][0])
        if address not in seen:
            seen.append(address)
    return seen


def is_public_address(address: str) -> bool:
    """True for an address on the public internet; False for anything internal or special."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
    return not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def origin_of(url: str | httpx.URL) -> str:
    """``scheme://host:port`` with the default port filled in (lower-case)."""
    u = httpx.URL(url) if isinstance(url, str) else url
    port = u.port or _DEFAULT_PORTS.get(u.scheme, 0)
    return f"{u.scheme}://{u.host.lower()}:{port}"


def _norm_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What may be downloaded. ``trusted_origins`` are URLs (only their origin counts)."""

    trusted_origins: frozenset[str] = frozenset()
    allowlist: frozenset[str] = frozenset()
    max_bytes: int = DEFAULT_MAX_BYTES
    total_timeout: float = DEFAULT_TOTAL_TIMEOUT
    max_redirects: int = DEFAULT_MAX_REDIRECTS

    @classmethod
    def build(
        cls,
        *,
        backend_urls: Iterable[str] = (),
        allowlist: Iterable[str] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
        total_timeout: float = DEFAULT_TOTAL_TIMEOUT,
        max_redirects: int = DEFAULT_MAX_REDIRECTS,
    ) -> FetchPolicy:
        origins = frozenset(origin_of(u) for u in backend_urls if u)
        hosts = frozenset(_norm_host(h) for h in allowlist if h and h.strip())
        return cls(origins, hosts, max_bytes, total_timeout, max_redirects)


@dataclass(slots=True)
class _Hop:
    url: httpx.URL
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


class SafeFetcher:
    """One pooled client for output downloads. Close with :meth:`aclose`."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        resolver: Resolver | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 30.0,
    ) -> None:
        self.policy = policy
        self._resolve = resolver or system_resolver
        self._http = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
            trust_env=False,  # a proxy from the environment would bypass the address check
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def fetch(self, url: str) -> bytes:
        """The body behind ``url``. Raises :class:`OutputRefusedError` when a hop is not allowed
        or the body is too large, :class:`OutputDownloadError` for transport errors, HTTP
        errors and the total time running out (``transient`` says whether a retry may help)."""
        try:
            async with asyncio.timeout(self.policy.total_timeout):
                return await self._fetch(url)
        except TimeoutError:
            raise OutputDownloadError("output download took too long", transient=True) from None

    async def _fetch(self, url: str) -> bytes:
        current = self._parse(url)
        for _ in range(self.policy.max_redirects + 1):
            hop = await self.check(current)
            try:
                async with self._http.stream(
                    "GET", hop.url, headers=hop.headers, extensions=hop.extensions
                ) as response:
                    if response.status_code in _REDIRECTS:
                        location = response.headers.get("location")
                        if not location:
                            raise OutputRefusedError("redirect without a location")
                        current = self._parse(str(current.join(location)))
                        continue
                    if response.status_code >= 400:
                        raise OutputDownloadError(
                            f"output answered HTTP {response.status_code}",
                            status=response.status_code,
                            transient=response.status_code >= 500 or response.status_code == 429,
                        )
                    return await self._read_capped(response)
            except httpx.TransportError as exc:
                raise OutputDownloadError(
                    f"output download failed ({type(exc).__name__})", transient=True
                ) from exc
        raise OutputRefusedError("too many redirects")

    async def _read_capped(self, response: httpx.Response) -> bytes:
        limit = self.policy.max_bytes
        declared = response.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            raise OutputRefusedError("output larger than the size limit", size=int(declared))
        buf = bytearray()
        async for chunk in response.aiter_bytes():  # decoded: the cap also stops gzip bombs
            buf += chunk
            if len(buf) > limit:
                raise OutputRefusedError("output larger than the size limit")
        return bytes(buf)

    @staticmethod
    def _parse(url: str) -> httpx.URL:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise OutputRefusedError("malformed output URL") from exc
        if parsed.scheme not in _DEFAULT_PORTS or not parsed.host:
            raise OutputRefusedError("output URL is not http(s)")
        if parsed.userinfo:
            raise OutputRefusedError("output URL carries credentials")
        return parsed

    async def check(self, url: httpx.URL) -> _Hop:
        """The request to make for ``url``, or :class:`OutputRefusedError`."""
        policy = self.policy
        if origin_of(url) in policy.trusted_origins:
            return _Hop(url)
        host = _norm_host(url.host)
        if host in policy.allowlist:
            return _Hop(url)
        if url.scheme != "https":
            raise OutputRefusedError("output URL is not https", host=host)
        port = url.port or 443
        try:
            ipaddress.ip_address(host)
            literal = True
        except ValueError:
            literal = False
        addresses = [host] if literal else await self._resolve(host, port)
        if not addresses:
            raise OutputRefusedError("output host does not resolve", host=host)
        bad = [a for a in addresses if not is_public_address(a)]
        if bad:
            log.warning("output refused: %s resolves to a non-public address", host)
            raise OutputRefusedError("output host is not a public address", host=host)
        if literal:
            return _Hop(url)
        pinned = addresses[0].split("%", 1)[0]
        host_header = url.host if url.port in (None, 443) else f"{url.host}:{url.port}"
        return _Hop(
            url.copy_with(host=pinned),
            headers={"Host": host_header},
            extensions={"sni_hostname": url.host},
        )
