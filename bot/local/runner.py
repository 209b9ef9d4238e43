"""Local mode: the whole bot on one machine with no Telegram token and no ComfyDeploy key.

The real ``Application`` from :func:`bot.app.build_application` (same handlers, generation
module and storage) long-polls the in-process :class:`BotApiEmulator` through an httpx
transport (no socket between them); the web chat is served by uvicorn on
``LISTEN_HOST:LISTEN_PORT`` (127.0.0.1:8080 unless LISTEN_HOST is set). Without a ComfyDeploy
key the preview backend renders the images (``Settings.preview_backend``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import uvicorn
from pydantic import SecretStr
from telegram import Update
from telegram.ext import Application
from telegram.request import HTTPXRequest

from bot import event_loop
from bot.app import build_application, initialize, shutdown
from bot.config import ConfigError, Settings
from bot.local.emulator import LOCAL_TOKEN, BotApiEmulator
from bot.local.guard import exposure_error
from bot.local.webchat import LOOPBACK_HOSTS, create_webchat_app
from bot.server import ReadyServer

log = logging.getLogger(__name__)

LOCAL_USER_ID = 1000  # the person at the web chat: a private chat with the bot, and an admin
EMULATOR_ROOT = "http://bot-api.local"  # never resolved: requests go through the transport
POLL_TIMEOUT = 10  # seconds of one getUpdates long poll


@dataclass(slots=True)
class LocalRuntime:
    """A running local mode (what tests and the banner need)."""

    settings: Settings  # the effective settings (local token, local admin)
    emulator: BotApiEmulator
    application: Application
    server: uvicorn.Server
    serving: asyncio.Task[None]  # the web server; done once it stopped
    url: str
    user_id: int = LOCAL_USER_ID


def local_settings(settings: Settings) -> Settings:
    """The settings the bot runs with in local mode."""
    return settings.model_copy(
        update={
            "telegram_bot_token": SecretStr(LOCAL_TOKEN),
            "telegram_api_url": EMULATOR_ROOT,
            "public_url": None,  # nothing can post to us: poll the runs
            "admin_ids": settings.admin_ids | {LOCAL_USER_ID},
        }
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """Listen on ``host:port`` (port 0: a free one); raises OSError when it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def page_url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


@contextlib.asynccontextmanager
async def local_mode(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    preview_step_seconds: float | None = None,
) -> AsyncIterator[LocalRuntime]:
    """Run local mode while the block runs. ``sock`` is a listening socket for the web chat
    (default: bound to ``settings.local_listen_host:listen_port``); it is closed at the end."""
    host = settings.local_listen_host
    token = settings.local_mode_token.get_secret_value() if settings.local_mode_token else None
    bound = sock.getsockname()[0] if sock is not None else host
    if (refusal := exposure_error(str(bound), token)) is not None:
        if sock is not None:
            sock.close()
        raise ConfigError(refusal)
    if sock is None:
        sock = bind_socket(host, settings.listen_port)
    emulator = BotApiEmulator()
    effective = local_settings(settings)
    application = build_application(
        effective,
        request=HTTPXRequest(httpx_kwargs={"transport": emulator.transport}),
        get_updates_request=HTTPXRequest(httpx_kwargs={"transport": emulator.transport}),
        rate_limit=False,  # the emulator has no flood control to stay under
        preview_step_seconds=preview_step_seconds,
    )
    server: ReadyServer | None = None
    serving: asyncio.Task[None] | None = None
    try:
        await initialize(application)
        await application.start()
        assert application.updater is not None
        await application.updater.start_polling(
            poll_interval=0.0, timeout=POLL_TIMEOUT, allowed_updates=Update.ALL_TYPES
        )
        bound_host = sock.getsockname()[0]
        webchat = create_webchat_app(
            emulator,
            user_id=LOCAL_USER_ID,
            backend_label="+".join(sorted(effective.backends)),
            loopback_only=bound_host in LOOPBACK_HOSTS,
            token=token,
            allowed_hosts=await _own_hosts(host),
        )
        config = uvicorn.Config(
            webchat,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        # Local mode owns SIGINT/SIGTERM (serve_local), so it can stop the bot cleanly.
        server = ReadyServer(config, handle_signals=False)
        serving = await server.start_serving([sock])
        yield LocalRuntime(
            settings=effective,
            emulator=emulator,
            application=application,
            server=server,
            serving=serving,
            url=page_url(sock, host) + (f"/?token={token}" if token else ""),
        )
    finally:
        try:
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
        finally:
            emulator.close()  # answer the page's long polls so the server stops at once
            if server is not None and serving is not None:
                server.should_exit = True
                with contextlib.suppress(Exception):
                    await serving
            await shutdown(application)
            sock.close()


def banner(runtime: LocalRuntime) -> str:
    settings = runtime.settings
    if settings.preview_backend:
        backend = (
            "the local preview backend (placeholder images;"
            " set COMFYDEPLOY_API_KEY or COMFYUI_URL for real ones)"
        )
    else:
        parts = []
        if "comfydeploy" in settings.backends:
            parts.append(
                "ComfyDeploy (add deployments with /deployment add <TYPE> <deployment_id>)"
            )
        if "comfyui" in settings.backends:
            parts.append(
                "your ComfyUI at "
                + ", ".join(settings.comfyui_url)
                + " (send a workflow with the caption /workflow add <TYPE> [name])"
            )
        backend = " and ".join(parts)
    return (
        f"Local mode: open {runtime.url} — no Telegram token set; "
        "see README to connect a real bot\n"
        f"  Generations: {backend}\n"
        "  Stop with Ctrl+C."
    )


async def serve_local(settings: Settings, sock: socket.socket | None = None) -> None:
    """Run local mode until SIGINT/SIGTERM (or the web server stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # e.g. Windows
            loop.add_signal_handler(sig, stop.set)
    async with local_mode(settings, sock=sock) as runtime:
        print(banner(runtime), flush=True)
        log.info("local mode: web chat at %s", runtime.url)
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({stopped, runtime.serving}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    log.info("local mode stopped")


async def _own_hosts(listen_host: str) -> list[str]:
    """Host names a non-loopback bind answers to: the listen address itself (unless it is a
    wildcard), this machine's name and its addresses (resolved without blocking the loop)."""
    hosts = [] if listen_host in ("0.0.0.0", "::", "") else [listen_host.strip("[]")]
    name = socket.gethostname()
    hosts.append(name)
    with contextlib.suppress(OSError):
        infos = await asyncio.get_running_loop().getaddrinfo(name, None)
        hosts += [str(info[4][0]) for info in infos]
    return list(dict.fromkeys(hosts))


def run_local(settings: Settings) -> int:
    """``python -m bot`` without a token. Returns the exit code."""
    host = settings.local_listen_host
    token = settings.local_mode_token
    if (refusal := exposure_error(host, token.get_secret_value() if token else None)) is not None:
        print(refusal, file=sys.stderr)
        return 2
    try:
        sock = bind_socket(host, settings.listen_port)
    except OSError as exc:
        print(
            f"Local mode: cannot listen on {host}:{settings.listen_port} ({exc.strerror}); "
            "set LISTEN_PORT to a free port",
            file=sys.stderr,
        )
        return 1
    try:
        event_loop.run(serve_local(settings, sock))
    except KeyboardInterrupt:
        pass
    return 0
