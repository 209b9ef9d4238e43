"""Output downloads cannot reach inside (issue 11, point 2): generation.safe_fetch.

Everything runs through ``httpx.MockTransport`` with an injected resolver (no network), except
the resolver test, which resolves ``localhost`` with the real getaddrinfo.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from generation.errors import OutputDownloadError, OutputRefusedError
from generation.safe_fetch import FetchPolicy, SafeFetcher, is_public_address, system_resolver

BACKEND = "https://api.comfydeploy.test/api"
PUBLIC_IP = "93.184.216.34"
DNS = {
    "cdn.example": [PUBLIC_IP],
    "evil.example": ["10.0.0.5"],
    "mixed.example": [PUBLIC_IP, "127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "v6loop.example": ["::ffff:127.0.0.1"],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    return DNS.get(host, [])


class Origin:
    """A tiny scripted web: url → response; records every request."""

    def __init__(self, routes: dict[str, httpx.Response]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = str(request.url)
        if key in self.routes:
            return self.routes[key]
        return httpx.Response(404)


def _fetcher(origin: Origin, **policy: object) -> SafeFetcher:
    options: dict[str, object] = {"backend_urls": [BACKEND], **policy}
    return SafeFetcher(
        FetchPolicy.build(**options),  # type: ignore[arg-type]
        transport=httpx.MockTransport(origin),
        resolver=fake_resolver,
    )


def _redirect(to: str) -> httpx.Response:
    return httpx.Response(302, headers={"location": to})


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:8080/admin",
        "http://169.254.169.254/latest/meta-data/",
        "https://169.254.169.254/latest/meta-data/",
        "https://127.0.0.1/",
        "https://[::1]/",
        "https://evil.example/x.png",
        "https://metadata.example/x",
        "https://mixed.example/x",
        "https://v6loop.example/x",
        "http://cdn.example/x.png",  # public, but not https
        "file:///etc/passwd",
        "https://user:pw@cdn.example/x.png",
    ],
)
async def test_redirect_from_the_backend_to_an_internal_address_is_refused(target: str) -> None:
    """The confirmed SSRF: a backend output URL redirecting inside. Every hop is checked."""
    start = "https://api.comfydeploy.test/api/files/out.png"
    origin = Origin({start: _redirect(target), target: httpx.Response(200, content=b"SECRET")})
    fetcher = _fetcher(origin)
    try:
        with pytest.raises(OutputRefusedError):
            await fetcher.fetch(start)
    finally:
        await fetcher.aclose()
    assert [str(r.url) for r in origin.requests] == [start]  # the inside was never asked


async def test_backend_origin_and_public_https_are_fetched_with_the_address_pinned() -> None:
    start = "https://api.comfydeploy.test/api/files/out.png"
    pinned = f"https://{PUBLIC_IP}/bucket/out.png"
    origin = Origin(
        {
            start: _redirect("https://cdn.example/bucket/out.png"),
            pinned: httpx.Response(200, content=b"PNGDATA"),
        }
    )
    fetcher = _fetcher(origin)
    try:
        assert await fetcher.fetch(start) == b"PNGDATA"
    finally:
        await fetcher.aclose()
    last = origin.requests[-1]
    assert last.url.host == PUBLIC_IP  # connects to the address that was checked
    assert last.headers["host"] == "cdn.example"
    assert last.extensions.get("sni_hostname") == "cdn.example"


async def test_allowlisted_host_may_be_internal() -> None:
    url = "http://minio.internal:9000/out/a.png"
    origin = Origin({url: httpx.Response(200, content=b"ok")})
    fetcher = _fetcher(origin, allowlist=["MINIO.internal"])
    try:
        assert await fetcher.fetch(url) == b"ok"
    finally:
        await fetcher.aclose()


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    fetcher = _fetcher(Origin({}))
    try:
        with pytest.raises(OutputRefusedError):
            await fetcher.fetch("https://nowhere.example/a.png")
    finally:
        await fetcher.aclose()


async def test_too_many_redirects_are_refused() -> None:
    base = "https://api.comfydeploy.test/api/files/"
    routes = {f"{base}{i}": _redirect(f"{base}{i + 1}") for i in range(10)}
    origin = Origin(routes)
    fetcher = _fetcher(origin, max_redirects=3)
    try:
        with pytest.raises(OutputRefusedError):
            await fetcher.fetch(f"{base}0")
    finally:
        await fetcher.aclose()
    assert len(origin.requests) == 4


async def test_declared_size_over_the_cap_is_refused_before_reading() -> None:
    url = "https://api.comfydeploy.test/api/files/big.png"
    origin = Origin({url: httpx.Response(200, content=b"x" * 100)})
    fetcher = _fetcher(origin, max_bytes=99)
    try:
        with pytest.raises(OutputRefusedError):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def test_streamed_body_over_the_cap_is_refused() -> None:
    async def chunks():
        for _ in range(1000):  # bounded: far more than the cap
            yield b"x" * 1024

    url = "https://api.comfydeploy.test/api/files/stream.png"
    origin = Origin({url: httpx.Response(200, content=chunks())})
    fetcher = _fetcher(origin, max_bytes=10 * 1024)
    try:
        with pytest.raises(OutputRefusedError):
            await fetcher.fetch(url)
    finally:
        await fetcher.aclose()


async def test_total_download_time_is_capped() -> None:
    never = asyncio.Event()

    async def stall(request: httpx.Request) -> httpx.Response:
        await never.wait()  # a server that never answers
        return httpx.Response(200)  # pragma: no cover

    fetcher = SafeFetcher(
        FetchPolicy.build(backend_urls=[BACKEND], total_timeout=0.05),
        transport=httpx.MockTransport(stall),
        resolver=fake_resolver,
    )
    try:
        with pytest.raises(OutputDownloadError) as caught:
            await fetcher.fetch("https://api.comfydeploy.test/api/files/slow.png")
    finally:
        await fetcher.aclose()
    assert caught.value.transient


async def test_http_errors_say_whether_a_retry_may_help() -> None:
    ok, bad = "https://api.comfydeploy.test/api/files/5", "https://api.comfydeploy.test/api/files/4"
    origin = Origin({ok: httpx.Response(503), bad: httpx.Response(403)})
    fetcher = _fetcher(origin)
    try:
        with pytest.raises(OutputDownloadError) as e503:
            await fetcher.fetch(ok)
        with pytest.raises(OutputDownloadError) as e403:
            await fetcher.fetch(bad)
    finally:
        await fetcher.aclose()
    assert e503.value.transient and not e403.value.transient


async def test_system_resolver_is_async_and_localhost_is_not_public() -> None:
    addresses = await system_resolver("localhost", 443)
    assert addresses and not any(is_public_address(a) for a in addresses)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        (PUBLIC_IP, True),
        ("2606:4700:4700::1111", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("100.64.0.1", False),  # carrier-grade NAT
        ("169.254.169.254", False),
        ("127.0.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("2002:7f00:1::", False),  # 6to4 wrapping 127.0.0.1
        ("not-an-ip", False),
    ],
)
def test_public_address_classification(address: str, public: bool) -> None:
    assert is_public_address(address) is public
