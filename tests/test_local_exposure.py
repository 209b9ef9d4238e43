"""Local mode on a public address is not an open admin console (issue 11, point 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bot.config import ConfigError
from bot.local.emulator import BotApiEmulator
from bot.local.guard import exposure_error, is_loopback_host
from bot.local.runner import bind_socket, local_mode
from bot.local.webchat import create_webchat_app
from tests.e2e.local import make_settings
from tests.test_config import _run_bot


def test_non_loopback_listen_host_without_token_exits_2_with_one_line(tmp_path: Path) -> None:
    probe = bind_socket("127.0.0.1", 0)
    port = str(probe.getsockname()[1])
    probe.close()
    try:
        result = _run_bot(tmp_path, LISTEN_HOST="0.0.0.0", LISTEN_PORT=port)
    except subprocess.TimeoutExpired:  # today's code: it starts and serves the admin console
        pytest.fail("local mode started on 0.0.0.0 without LOCAL_MODE_TOKEN")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "LISTEN_HOST" in lines[0] and "LOCAL_MODE_TOKEN" in lines[0]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("bot.example", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    assert (exposure_error(host, None) is None) is loopback
    assert exposure_error(host, "t0ken") is None


async def test_local_mode_refuses_a_public_socket_without_token(tmp_path: Path) -> None:
    sock = bind_socket("0.0.0.0", 0)
    with pytest.raises(ConfigError):
        async with local_mode(make_settings(tmp_path), sock=sock):
            pass  # pragma: no cover


async def test_with_a_token_every_request_needs_it_and_a_cookie_follows() -> None:
    emulator = BotApiEmulator()
    app = create_webchat_app(
        emulator, user_id=1000, loopback_only=False, token="s3cret-tok", allowed_hosts=["bot.lan"]
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bot.lan") as http:
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/api/state?wait=0")).status_code == 401
        post = await http.post(
            "/api/send", json={"text": "/grant 1 100"}, headers={"x-local-chat": "1"}
        )
        assert post.status_code == 401
        assert (await http.get("/?token=wrong")).status_code == 401
        first = await http.get("/?token=s3cret-tok")
        assert first.status_code == 200
        assert "local_token=s3cret-tok" in first.headers["set-cookie"]
        assert "HttpOnly" in first.headers["set-cookie"]
        # the page's own requests carry the cookie now
        assert (await http.get("/api/state?wait=0")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200
    # The Host check applies on a non-loopback bind too (no DNS rebinding).
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as http:
        assert (await http.get("/?token=s3cret-tok")).status_code == 400
    emulator.close()


async def test_the_start_up_url_carries_the_token(tmp_path: Path) -> None:
    sock = bind_socket("127.0.0.1", 0)
    settings = make_settings(tmp_path, local_mode_token="tok-123")
    async with local_mode(settings, sock=sock, preview_step_seconds=0.05) as runtime:
        assert runtime.url.endswith("/?token=tok-123")
        async with httpx.AsyncClient() as http:
            assert (await http.get(runtime.url.split("/?")[0] + "/")).status_code == 401
            assert (await http.get(runtime.url)).status_code == 200
    assert sys.platform  # the block ran
