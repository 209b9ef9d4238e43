"""The aiohttp wire under the bot's HTTP clients (issue 16): ``generation/http_transport.py``
under the ComfyDeploy client and ``bot/telegram_http.py`` under PTB, over real sockets on
127.0.0.1 — the doubles served by uvicorn, and raw servers that misbehave on purpose.

What must not change with the wire: a request that surely never reached the server is a
connect error (retried), one that may have arrived is uncertain (a create is not repeated);
uploads arrive byte for byte; Telegram timeouts are ``TimedOut``, other wire failures
``NetworkError``."""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from telegram import Bot
from telegram.error import NetworkError, TimedOut

from bot.telegram_http import AiohttpRequest
from generation.client import ComfyDeployClient
from generation.errors import BackendUnavailableError, OutputRefusedError, SubmitUncertainError
from generation.http_transport import AiohttpTransport, EnvProxies
from generation.safe_fetch import FetchPolicy, SafeFetcher
from tests.fakes.comfydeploy import FakeComfyDeploy, Timeline
from tests.fakes.telegram import FakeTelegram

API_KEY = "cd-key-transport"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _no_sleep(_: float) -> None:
    return None


def _client(base_url: str, **kwargs: object) -> ComfyDeployClient:
    kwargs.setdefault("max_per_second", None)
    return ComfyDeployClient(
        API_KEY, base_url, transport=AiohttpTransport(), sleep=_no_sleep, **kwargs
    )


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


async def _serve(handler: Handler) -> tuple[asyncio.AbstractServer, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/api"


@pytest.fixture
async def fake_cd() -> AsyncIterator[tuple[FakeComfyDeploy, str]]:
    async with FakeComfyDeploy(auth_token=API_KEY) as fake, fake.serve() as base_url:
        yield fake, base_url


async def test_comfydeploy_calls_over_aiohttp_match_the_double(
    fake_cd: tuple[FakeComfyDeploy, str],
) -> None:
    fake, base_url = fake_cd
    dep = fake.add_deployment(inputs=["input_prompt"], timeline=Timeline.success("png"))
    async with _client(base_url) as client:
        run_id = await client.create_run(dep, {"input_prompt": "a fox"}, webhook="http://b/w?t=1")
        snap = await client.get_run(run_id)
        url = await client.upload_file(
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "in.png", "image/png"
        )
    assert fake.create_calls[0]["inputs"] == {"input_prompt": "a fox"}
    assert fake.create_calls[0]["webhook"] == "http://b/w?t=1"
    assert snap.backend_run_id == run_id
    assert fake.file_bytes(url) == b"\x89PNG\r\n\x1a\n" + bytes(range(256))  # multipart intact


async def test_refused_connection_is_retried_as_not_sent() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with _client(f"http://127.0.0.1:{port}/api", max_attempts=3) as client:
        with pytest.raises(BackendUnavailableError):
            await client.create_run("dep", {})


async def test_connection_dropped_after_the_request_makes_the_create_uncertain() -> None:
    received: list[bytes] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        received.append(await _read_request(reader))
        writer.close()  # the request arrived; no answer

    server, base_url = await _serve(drop)
    async with server, _client(base_url, max_attempts=4) as client:
        with pytest.raises(SubmitUncertainError):
            await client.create_run("dep", {"input_prompt": "x"})
    assert len(received) == 1  # not repeated: the run may exist


async def test_read_timeout_makes_the_create_uncertain() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        await release.wait()  # never answers while the client waits
        writer.close()

    server, base_url = await _serve(silent)
    try:
        async with _client(base_url, read_timeout=0.2) as client:
            with pytest.raises(SubmitUncertainError):
                await client.create_run("dep", {})
    finally:
        release.set()
        server.close()


async def test_gzip_answers_are_decoded_once() -> None:
    body = gzip.compress(b'{"run_id": "r-1"}')

    async def gzipped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-encoding: gzip\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    server, base_url = await _serve(gzipped)
    async with server:
        transport = AiohttpTransport()
        async with httpx.AsyncClient(transport=transport) as http:
            response = await http.post(f"{base_url}/run/deployment/queue", json={})
    assert response.json() == {"run_id": "r-1"}


# ------------------------------------------------------------------------------ Bot API


@pytest.fixture
async def telegram() -> AsyncIterator[tuple[FakeTelegram, Bot]]:
    fake = FakeTelegram()
    async with fake.serve() as root:
        bot = Bot(
            fake.token,
            base_url=f"{root}/bot",
            base_file_url=f"{root}/file/bot",
            request=AiohttpRequest(read_timeout=0.5),
        )
        async with bot:
            yield fake, bot


async def test_bot_api_calls_and_uploads_over_aiohttp(telegram: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = telegram
    user = fake.user(5001)
    sent = await bot.send_message(user.id, "hello ✓", parse_mode=None)
    photo = b"\xff\xd8\xff" + bytes(range(256)) * 40
    await bot.send_document(user.id, photo, filename="result.png", caption="a cat · кот ✓")
    assert sent.text == "hello ✓"
    upload = fake.calls("sendDocument")[0]
    assert upload.params["caption"] == "a cat · кот ✓"
    assert upload.files["document"] == ("result.png", photo)


async def test_bot_api_timeout_is_timed_out(telegram: tuple[FakeTelegram, Bot]) -> None:
    fake, bot = telegram
    fake.hold("sendMessage")
    try:
        with pytest.raises(TimedOut):
            await bot.send_message(fake.user(5002).id, "late", read_timeout=0.2)
    finally:
        fake.release()


async def test_bot_api_refused_is_network_error_and_shutdown_closes() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    request = AiohttpRequest()
    await request.initialize()
    with pytest.raises(NetworkError) as caught:
        await request.post(f"http://127.0.0.1:{port}/botT/getMe")
    assert not isinstance(caught.value, TimedOut)
    await request.shutdown()
    with pytest.raises(NetworkError, match="not initialized"):  # PTB wraps the RuntimeError
        await request.post(f"http://127.0.0.1:{port}/botT/getMe")


# ------------------------------------------------------------------- output downloads


def _fetcher(base_url: str, max_bytes: int) -> SafeFetcher:
    policy = FetchPolicy.build(backend_urls=[base_url], max_bytes=max_bytes)
    return SafeFetcher(policy, transport=AiohttpTransport())


def _answer(head: bytes, chunks: list[bytes]) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(head)
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.close()

    return handler


def _chunked(parts: list[bytes]) -> list[bytes]:
    return [b"%x\r\n%s\r\n" % (len(p), p) for p in parts] + [b"0\r\n\r\n"]


async def test_download_streams_and_stops_at_the_cap() -> None:
    part = b"\x89" * 65536
    head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ntransfer-encoding: chunked\r\n\r\n"
    server, base_url = await _serve(_answer(head, _chunked([part] * 48)))  # 3 MiB, no length
    async with server:
        fetcher = _fetcher(base_url, max_bytes=1 << 20)
        try:
            with pytest.raises(OutputRefusedError):
                await fetcher.fetch(f"{base_url}/files/big.png")
            small = _fetcher(base_url, max_bytes=4 << 20)
            assert await small.fetch(f"{base_url}/files/big.png") == part * 48
            await small.aclose()
        finally:
            await fetcher.aclose()


async def test_download_cap_counts_decoded_bytes_and_declared_lengths() -> None:
    bomb = gzip.compress(b"\0" * (2 << 20))  # ~2 KiB on the wire, 2 MiB decoded
    gz = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n" % len(bomb)
    declared = b"HTTP/1.1 200 OK\r\ncontent-length: 5000000\r\n\r\n"
    for head, body in ((gz, [bomb]), (declared, [b"x" * 1000])):
        server, base_url = await _serve(_answer(head, body))
        async with server:
            fetcher = _fetcher(base_url, max_bytes=1 << 20)
            with pytest.raises(OutputRefusedError):
                await fetcher.fetch(f"{base_url}/files/out.png")
            await fetcher.aclose()


async def test_environment_proxies_as_with_httpx_except_for_downloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Bot API and the ComfyDeploy API honour ``HTTP_PROXY`` as PTB's and httpx's defaults
    do; output downloads never do (a proxy would bypass the address check)."""
    seen: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await _read_request(reader)
        seen.append(request.split(b"\r\n", 1)[0])
        body = b'{"ok": true, "result": true}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()

    with socket.socket() as probe:  # a port nobody listens on: only the proxy answers
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    target = f"http://localhost:{closed}"  # /etc/hosts: no DNS query even when it goes wrong
    server, base_url = await _serve(proxy)
    monkeypatch.setenv("HTTP_PROXY", base_url.removesuffix("/api"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with server:
        request = AiohttpRequest()
        await request.initialize()
        try:
            await request.post(f"{target}/botT/close")
        finally:
            await request.shutdown()
        async with httpx.AsyncClient(transport=AiohttpTransport(trust_env=True)) as api:
            assert (await api.get(f"{target}/api/run/r1")).status_code == 200
        async with httpx.AsyncClient(transport=AiohttpTransport()) as downloads:
            with pytest.raises(httpx.ConnectError):  # straight to the host, not the proxy
                await downloads.get(f"http://127.0.0.1:{closed}/out.png")
    assert seen == [
        f"POST {target}/botT/close HTTP/1.1".encode(),
        f"GET {target}/api/run/r1 HTTP/1.1".encode(),
    ]


def test_env_proxies_are_read_once_and_honour_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    proxies = EnvProxies()
    monkeypatch.setenv("HTTPS_PROXY", "http://changed.example:1")  # read once, at creation
    assert proxies.for_url("https://api.telegram.org/botT/getMe") == "http://proxy.example:3128"
    assert proxies.for_url("https://internal.example/files/a.png") is None  # NO_PROXY
    assert proxies.for_url("http://api.telegram.org/botT/getMe") is None  # no HTTP_PROXY
