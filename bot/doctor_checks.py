"""The individual checks of ``python -m bot doctor`` (reporting is in :mod:`bot.doctor`).

Every check returns :class:`Check` lines and never writes: the database is opened without
creating it and probed with a transaction that is rolled back; Telegram gets ``getMe`` and
``getWebhookInfo``; ComfyDeploy ``GET /deployments``; PUBLIC_URL a ``GET /healthz``. Transports
are injectable (:class:`DoctorEnv`) so the tests run every check against the doubles in
``tests/fakes``. Exception texts are reduced to their type and message (never a URL with the
bot token in it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiosqlite
import httpx

from bot.config import Settings
from generation.models import DeploymentConfig, WorkflowRecord
from storage.database import Database
from storage.deployments import DeploymentRepository
from storage.ledger import LedgerRepository
from storage.lock import database_in_use, is_file_database
from storage.migrations import LATEST_VERSION
from storage.workflows import WorkflowRepository

TELEGRAM_WEBHOOK_PORTS = (443, 80, 88, 8443)  # the only ports Telegram delivers webhooks to
RECENT_WEBHOOK_ERROR_SECONDS = 15 * 60
CONTRACT_DOC = "docs/workflow-contract.md"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


@dataclass(slots=True)
class Configured:
    """What the database says is configured: deployments (all backends) and workflows."""

    deployments: list[DeploymentConfig] = field(default_factory=list)
    workflows: list[WorkflowRecord] = field(default_factory=list)


@dataclass(slots=True)
class DoctorEnv:
    """Where the doctor's HTTP calls go (tests plug in the fakes' transports)."""

    telegram_transport: httpx.AsyncBaseTransport | None = None
    comfy_transport: httpx.AsyncBaseTransport | None = None
    public_transport: httpx.AsyncBaseTransport | None = None
    comfyui_transport: httpx.AsyncBaseTransport | None = None  # None: the real network
    timeout: float = 10.0
    now: Callable[[], float] = time.time
    busy_timeout_ms: int = 3000  # how long the "writable" probe waits for a writer


def why(exc: BaseException) -> str:
    text = str(exc).split("\n", 1)[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- database ---------------------------------------------------------------------------------


def _first_existing(path: Path) -> Path:
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _new_database(path: Path) -> Check:
    folder = _first_existing(path.resolve())
    if folder.is_dir() and os.access(folder, os.W_OK):
        return Check("database", True, f"{path} does not exist yet: created at the first start")
    return Check(
        "database",
        False,
        f"{path} does not exist and {folder} is not writable",
        f"make {folder} writable for the bot's user, or set DATABASE_PATH elsewhere",
    )


async def _writable(conn: aiosqlite.Connection, path: Path) -> Check:
    running = " (a bot has it open now)" if database_in_use(path) else ""
    try:
        await conn.execute("BEGIN IMMEDIATE")
        await conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        return Check(
            "database",
            False,
            f"{path} is not writable: {exc}{running}",
            f"give the bot's user write access to {path} and its folder (WAL needs both); "
            "if it is locked, another process is stuck writing it",
        )
    return Check("database", True, f"{path} is writable{running}")


def _schema_check(version: int) -> Check:
    if version > LATEST_VERSION:
        return Check(
            "migrations",
            False,
            f"schema version {version} was written by a newer bot "
            f"(this one knows up to {LATEST_VERSION})",
            "run the newer version of the bot, or restore a backup made before the upgrade",
        )
    if version < LATEST_VERSION:
        pending = LATEST_VERSION - version if version else "all"
        return Check(
            "migrations",
            True,
            f"schema version {version}, {pending} migration(s) pending: applied at the next "
            "start, after an automatic backup in backups/ next to the database",
        )
    return Check("migrations", True, f"schema version {version} (current)")


async def _ledger_check(db: Database) -> Check:
    problems = await LedgerRepository(db).check_consistency()
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        return Check(
            "ledger",
            False,
            f"{problems[0]}{more}",
            "stop the bot and restore the last good backup (python -m bot restore <file>)",
        )
    async with db.read() as conn:
        rows = await conn.execute_fetchall("SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM users")
    return Check(
        "ledger",
        True,
        f"consistent: {rows[0][0]} user(s), {rows[0][1]} credits, balances = ledger sums",
    )


async def _version(db: Database) -> int:
    async with db.read() as conn:
        has = await conn.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
        )
        if not has:
            return 0
        rows = await conn.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_version")
    return int(rows[0][0])


async def database_checks(settings: Settings, env: DoctorEnv) -> tuple[list[Check], Configured]:
    """Writable, migrations current, ledger consistent; plus the configured deployments."""
    path = Path(settings.database_path)
    if not is_file_database(path):
        return [Check("database", True, f"{path}: not a file, nothing to check")], Configured()
    if not await asyncio.to_thread(path.is_file):
        return [await asyncio.to_thread(_new_database, path)], Configured()
    uri = f"{(await asyncio.to_thread(path.resolve)).as_uri()}?mode=rw"
    try:
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        return [
            Check("database", False, f"cannot open {path}: {exc}", "check the path")
        ], Configured()
    conn.row_factory = aiosqlite.Row
    db = Database(conn, str(path))
    try:
        await conn.execute(f"PRAGMA busy_timeout = {int(env.busy_timeout_ms)}")
        checks = [await _writable(conn, path)]
        version = await _version(db)
        checks.append(_schema_check(version))
        if version < 1 or version > LATEST_VERSION:
            return checks, Configured()
        if version < LATEST_VERSION:  # the audit reads today's schema
            detail = "not audited yet: the next start migrates the database, then it can be"
            checks.append(Check("ledger", True, detail))
        else:
            checks.append(await _ledger_check(db))
        deployments = DeploymentRepository(db)
        workflows: list[WorkflowRecord] = []
        if version == LATEST_VERSION:  # the workflows table is today's schema
            workflows = await WorkflowRepository(db, deployments).list_workflows()
        return checks, Configured(await deployments.list_deployments(), workflows)
    except sqlite3.DatabaseError as exc:
        return [
            Check(
                "database",
                False,
                f"{path} is not a usable SQLite database: {exc}",
                "restore a backup (python -m bot restore <file>) or move the file away",
            )
        ], Configured()
    finally:
        await db.close()


# -- Telegram -----------------------------------------------------------------------------------


async def _bot_api(settings: Settings, env: DoctorEnv, method: str) -> dict[str, Any]:
    assert settings.telegram_bot_token is not None
    token = settings.telegram_bot_token.get_secret_value()
    async with httpx.AsyncClient(transport=env.telegram_transport, timeout=env.timeout) as http:
        response = await http.post(f"{settings.telegram_api_url}/bot{token}/{method}")
    try:
        body = response.json()
    except ValueError:
        body = {"ok": False, "error_code": response.status_code, "description": "not JSON"}
    return body if isinstance(body, dict) else {"ok": False, "description": "not an object"}


async def telegram_checks(settings: Settings, env: DoctorEnv) -> list[Check]:
    """``getMe`` (prints the username) and ``getWebhookInfo``."""
    if settings.telegram_bot_token is None:
        return [
            Check(
                "telegram",
                False,
                "TELEGRAM_BOT_TOKEN is not set: the bot starts in local mode (web chat only)",
                "create a bot with @BotFather (/newbot) and put its token in TELEGRAM_BOT_TOKEN",
            )
        ]
    try:
        me = await _bot_api(settings, env, "getMe")
    except httpx.HTTPError as exc:
        return [
            Check(
                "telegram",
                False,
                f"cannot reach {settings.telegram_api_url}: {why(exc)}",
                "check the network (and TELEGRAM_API_URL if you changed it)",
            )
        ]
    if not me.get("ok"):
        code, text = me.get("error_code"), me.get("description", "")
        return [
            Check(
                "telegram",
                False,
                f"Telegram rejected the token ({code} {text})",
                "copy the token again from @BotFather (/mybots → API Token)",
            )
        ]
    user = me.get("result") or {}
    checks = [
        Check("telegram", True, f"token accepted: @{user.get('username')} (id {user.get('id')})")
    ]
    try:
        info = await _bot_api(settings, env, "getWebhookInfo")
    except httpx.HTTPError as exc:
        return [*checks, Check("webhook", False, f"getWebhookInfo failed: {why(exc)}", "retry")]
    checks.append(webhook_check(settings, info.get("result") or {}, env.now()))
    return checks


def webhook_check(settings: Settings, info: dict[str, Any], now: float) -> Check:
    """Telegram's view of the webhook: URL, pending updates and the last delivery error."""
    url = str(info.get("url") or "")
    pending = int(info.get("pending_update_count") or 0)
    error = info.get("last_error_message")
    error_at = info.get("last_error_date")
    age = now - float(error_at) if isinstance(error_at, int | float) else None
    detail = f"URL {url or 'none'}, {pending} pending update(s)"
    if error:
        when = f"{age / 60:.0f} min ago" if age is not None else "at an unknown time"
        detail += f", last error {when}: {error}"
    if not settings.webhook_mode:
        note = " (the bot removes it when it starts long polling)" if url else " (long polling)"
        return Check("webhook", True, detail + note)
    expected = f"{settings.public_url}/telegram"
    if url and url != expected:
        return Check(
            "webhook",
            False,
            f"{detail}; PUBLIC_URL expects {expected}",
            "another bot with this token registered it, or PUBLIC_URL changed: stop the other "
            "one; this bot registers its own URL when it starts",
        )
    if error and (age is None or age < RECENT_WEBHOOK_ERROR_SECONDS):
        return Check(
            "webhook",
            False,
            detail,
            "Telegram cannot deliver updates: fix what the public URL line says, then the "
            "pending updates arrive by themselves",
        )
    if not url:
        return Check("webhook", True, f"{detail}; the bot registers {expected} when it starts")
    return Check("webhook", True, detail)


# -- PUBLIC_URL ---------------------------------------------------------------------------------


def _url_problem(public_url: str) -> tuple[str, str] | None:
    parts = urlsplit(public_url)
    host = parts.hostname or ""
    if parts.scheme != "https":
        return (
            f"{public_url} is not https: Telegram delivers webhooks over HTTPS only",
            "put Caddy or nginx in front (docs/deploy) and set PUBLIC_URL=https://<your domain>",
        )
    port = parts.port or 443
    if port not in TELEGRAM_WEBHOOK_PORTS:
        ports = ", ".join(map(str, TELEGRAM_WEBHOOK_PORTS))
        return (
            f"port {port}: Telegram delivers webhooks only to ports {ports}",
            "serve HTTPS on 443 (the proxy forwards to LISTEN_PORT) and drop the port",
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        private = host == "localhost" or host.endswith((".local", ".localhost", ".internal"))
    else:
        private = not address.is_global
    if private:
        return (
            f"{host} is not reachable from the internet",
            "use a public domain name whose DNS record points at this machine",
        )
    return None


async def public_url_check(settings: Settings, env: DoctorEnv) -> Check:
    """Is PUBLIC_URL usable by Telegram: https, an allowed port, a public host, answering?"""
    if settings.public_url is None:
        return Check("public URL", True, "not set: long polling, no inbound HTTPS needed")
    problem = _url_problem(settings.public_url)
    if problem:
        return Check("public URL", False, *problem)
    url = f"{settings.public_url}/healthz"
    try:
        async with httpx.AsyncClient(transport=env.public_transport, timeout=env.timeout) as http:
            response = await http.get(url)
    except httpx.HTTPError as exc:
        reason = why(exc)
        if "CERTIFICATE_VERIFY_FAILED" in reason or "SSL" in reason:
            return Check(
                "public URL",
                False,
                f"{url}: the certificate is not trusted ({reason})",
                "Telegram needs a certificate from a public CA: let Caddy get one (compose.yaml) "
                "or use certbot with nginx (docs/deploy/nginx.conf)",
            )
        return Check(
            "public URL",
            False,
            f"{url} unreachable: {reason}",
            "point the domain's DNS at this machine, open the port, start the proxy (docs/deploy)",
        )
    if response.status_code == 200:
        return Check("public URL", True, f"{url} answered 200 over HTTPS")
    if database_in_use(settings.database_path):
        return Check(
            "public URL",
            False,
            f"{url} answered {response.status_code} while the bot is running",
            f"make the proxy forward /telegram, /comfydeploy/webhook and /healthz to "
            f"{settings.listen_host}:{settings.listen_port}",
        )
    return Check(
        "public URL",
        True,
        f"reachable over HTTPS ({url} answered {response.status_code}: the bot is not running)",
    )
