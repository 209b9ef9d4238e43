"""``python -m bot doctor`` against the doubles in tests/fakes: every check passes on a good
configuration, and every ✗ is reachable and comes with what to do. The doctor changes nothing
and prints no secret."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.config import load_settings
from bot.doctor import Check, DoctorEnv, Report, diagnose, run
from storage import Storage
from storage.database import Database
from storage.lock import lock_path
from storage.migrations import LATEST_VERSION, MIGRATIONS, apply_migrations
from tests.fakes.comfydeploy import TRANSPORT_BASE_URL, FakeComfyDeploy
from tests.fakes.telegram import DEFAULT_TOKEN, FakeTelegram

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "cd-doctor-secret-key-0123456789"
MAKE_INPUTS = ("input_prompt", "input_negative", "input_seed", "input_width", "input_height")
I2I_INPUTS = (*MAKE_INPUTS, "input_image", "input_strength")
INPAINT_INPUTS = (*I2I_INPUTS, "input_mask")
PUBLIC = "https://bot.example.com"


class World:
    """The doubles plus a database with one good deployment per command type."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "data" / "bot.sqlite3"
        self.telegram = FakeTelegram()
        self.comfy = FakeComfyDeploy(auth_token=API_KEY)
        self.public: Callable[[httpx.Request], httpx.Response] = lambda r: httpx.Response(200)
        self.ids: dict[str, str] = {}

    async def setup(self, types: dict[str, tuple[str, ...]] | None = None) -> None:
        types = types or {"MAKE": MAKE_INPUTS, "I2I": I2I_INPUTS, "INPAINT": INPAINT_INPUTS}
        store = await Storage.open(self.db)
        try:
            await store.users.get_or_create(1, starting_balance=10)
            for type_, inputs in types.items():
                dep = self.comfy.add_deployment(inputs=inputs)
                self.ids[type_] = dep
                await store.deployments.add(type_, dep, inputs=list(inputs))
        finally:
            await store.close()

    def settings(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "_env_file": None,
            "telegram_bot_token": DEFAULT_TOKEN,
            "telegram_api_url": "http://telegram.test",
            "comfydeploy_api_key": API_KEY,
            "comfydeploy_api_url": TRANSPORT_BASE_URL,
            "database_path": str(self.db),
            "generation_backend": "comfydeploy",
        }
        values.update(overrides)
        return load_settings(**{k: v for k, v in values.items() if v is not ...})

    def env(self) -> DoctorEnv:
        return DoctorEnv(
            telegram_transport=self.telegram.transport,
            comfy_transport=self.comfy.transport,
            public_transport=httpx.MockTransport(lambda r: self.public(r)),
            timeout=5.0,
            busy_timeout_ms=100,
        )

    async def check(self, **overrides: Any) -> Report:
        return await diagnose(self.settings(**overrides), self.env())


def line(report: Report, name: str) -> Check:
    found = [c for c in report.checks if c.name == name]
    assert len(found) == 1, [c.name for c in report.checks]
    return found[0]


def failed(report: Report, name: str) -> Check:
    check = line(report, name)
    assert not check.ok, check
    assert check.fix, f"a ✗ must say what to do: {check}"
    return check


@pytest.fixture
async def world(tmp_path: Path) -> World:
    w = World(tmp_path)
    await w.setup()
    return w


async def test_a_good_configuration_passes_every_check(world: World) -> None:
    report = await world.check()
    assert report.ok, report.text()
    names = [c.name for c in report.checks]
    assert names[:6] == ["settings", "database", "migrations", "ledger", "telegram", "webhook"]
    assert {"public URL", "ComfyDeploy", "/make", "/i2i", "/inpaint"} <= set(names)
    assert sum(n.startswith("deployment ") for n in names) == 3
    text = report.text()
    assert "@fake_test_bot" in text and text.endswith("all checks passed")
    assert all(row.startswith("✓ ") for row in text.splitlines()[:-1])


async def test_webhook_mode_passes_when_public_url_answers(world: World) -> None:
    seen: list[str] = []

    def public(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"status": "ok"})

    world.public = public
    await world.telegram.bot().set_webhook(f"{PUBLIC}/telegram")
    report = await world.check(public_url=PUBLIC)
    assert report.ok, report.text()
    assert seen == [f"{PUBLIC}/healthz"]
    assert f"URL {PUBLIC}/telegram" in line(report, "webhook").detail


def test_invalid_settings() -> None:
    status, out = run(overrides={"_env_file": None, "listen_port": 0})
    assert status == 1
    assert out.splitlines()[0].startswith("✗ settings: Invalid setting LISTEN_PORT")
    assert "→ fix that variable in .env" in out


async def test_database_checks(world: World, tmp_path: Path) -> None:
    fresh = await world.check(database_path=str(tmp_path / "new" / "bot.sqlite3"))
    assert line(fresh, "database").ok and "created at the first start" in fresh.text()
    assert not (tmp_path / "new").exists()

    (tmp_path / "a-file").write_text("x")
    blocked = await world.check(database_path=str(tmp_path / "a-file" / "bot.sqlite3"))
    assert "is not writable" in failed(blocked, "database").detail

    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"definitely not sqlite" * 500)
    bad = await world.check(database_path=str(junk))
    assert "not a usable SQLite database" in failed(bad, "database").detail
    assert "restore" in failed(bad, "database").fix


async def test_a_locked_database_is_not_writable(world: World) -> None:
    holder = sqlite3.connect(world.db, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        report = await world.check()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "database is locked" in failed(report, "database").detail


async def test_migrations_pending_and_too_new(world: World, tmp_path: Path) -> None:
    old = tmp_path / "old.sqlite3"
    db = await Database.connect(old)
    await apply_migrations(db, MIGRATIONS[:1])
    await db.close()
    pending = await world.check(database_path=str(old))
    assert line(pending, "migrations").ok and "pending" in line(pending, "migrations").detail
    with sqlite3.connect(old) as conn:  # the doctor applied nothing
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 1

    with sqlite3.connect(world.db) as conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0)", (LATEST_VERSION + 1,))
    newer = await world.check()
    assert "newer bot" in failed(newer, "migrations").detail


async def test_an_inconsistent_ledger(world: World) -> None:
    with sqlite3.connect(world.db) as conn:
        conn.execute("UPDATE users SET balance = 99 WHERE id = 1")
    report = await world.check()
    check = failed(report, "ledger")
    assert "ledger sum" in check.detail and "python -m bot restore" in check.fix


async def test_telegram_token_checks(world: World) -> None:
    missing = await world.check(telegram_bot_token=...)
    assert "@BotFather" in failed(missing, "telegram").fix
    wrong = await world.check(telegram_bot_token="999:WrongTokenWrongTokenWrongToken00")
    assert "rejected the token (401" in failed(wrong, "telegram").detail

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    env = world.env()
    env.telegram_transport = httpx.MockTransport(down)
    unreachable = await diagnose(world.settings(), env)
    check = failed(unreachable, "telegram")
    assert "cannot reach http://telegram.test" in check.detail and DEFAULT_TOKEN not in check.detail


async def test_webhook_state(world: World) -> None:
    bot = world.telegram.bot()
    await bot.set_webhook("https://other.example.com/telegram")
    polling = await world.check()
    assert line(polling, "webhook").ok and "removes it" in line(polling, "webhook").detail

    other = await world.check(public_url=PUBLIC)
    assert "another bot with this token" in failed(other, "webhook").fix

    await bot.set_webhook(f"{PUBLIC}/telegram")
    world.telegram.webhook_last_error = (int(time.time()) - 60, "Connection timed out")
    recent = await world.check(public_url=PUBLIC)
    assert "last error 1 min ago: Connection timed out" in failed(recent, "webhook").detail

    world.telegram.webhook_last_error = (int(time.time()) - 86_400, "Connection timed out")
    assert line(await world.check(public_url=PUBLIC), "webhook").ok

    await bot.delete_webhook()
    unregistered = await world.check(public_url=PUBLIC)
    assert "registers https://bot.example.com/telegram when it starts" in unregistered.text()


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        ("http://bot.example.com", "not https"),
        ("https://bot.example.com:8080", "port 8080"),
        ("https://127.0.0.1", "not reachable from the internet"),
        ("https://localhost:8443", "not reachable from the internet"),
        ("https://10.1.2.3", "not reachable from the internet"),
    ],
)
async def test_public_url_shape(world: World, public_url: str, expected: str) -> None:
    world.public = lambda r: pytest.fail("a malformed PUBLIC_URL is not fetched")
    assert expected in failed(await world.check(public_url=public_url), "public URL").detail


async def test_public_url_reachability(world: World) -> None:
    def tls(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(
            "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate",
            request=request,
        )

    world.public = tls
    check = failed(await world.check(public_url=PUBLIC), "public URL")
    assert "certificate is not trusted" in check.detail and "Caddy" in check.fix

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    world.public = refused
    assert "unreachable" in failed(await world.check(public_url=PUBLIC), "public URL").detail

    world.public = lambda r: httpx.Response(502)
    idle = await world.check(public_url=PUBLIC)  # the proxy answers; the bot is not running
    assert line(idle, "public URL").ok and "the bot is not running" in idle.text()
    store = await Storage.open(world.db)  # now a bot has the database open
    try:
        running = await world.check(public_url=PUBLIC)
    finally:
        await store.close()
    assert "while the bot is running" in failed(running, "public URL").detail


async def test_backend_key_checks(world: World) -> None:
    preview = await world.check(generation_backend="preview")
    assert line(preview, "ComfyDeploy").ok
    assert line(preview, "/make").ok  # preview deployments are registered at start

    auto = await world.check(generation_backend="auto", comfydeploy_api_key=...)
    assert "preview placeholders" in failed(auto, "ComfyDeploy").detail
    forced = await world.check(comfydeploy_api_key=...)
    assert "COMFYDEPLOY_API_KEY is not set" in failed(forced, "ComfyDeploy").detail
    assert "the backend did not answer" in failed(forced, "/make").detail

    wrong = await world.check(comfydeploy_api_key="cd-wrong-key")
    assert "refused the API key" in failed(wrong, "ComfyDeploy").detail

    world.comfy.fail_next_transport(5, httpx.ConnectError)
    down = await world.check()
    assert "no answer from" in failed(down, "ComfyDeploy").detail
    assert "fix the ComfyDeploy / ComfyUI lines" in failed(down, "/i2i").fix


async def test_deployment_checks(world: World) -> None:
    store = await Storage.open(world.db)
    try:
        ghost = "00000000-0000-4000-8000-000000000001"
        await store.deployments.add("QUICKMAKE", ghost, inputs=["input_prompt"])
        no_image = world.comfy.add_deployment(inputs=MAKE_INPUTS)  # an I2I without input_image
        await store.deployments.add("I2I", no_image, inputs=list(MAKE_INPUTS))
        await store.deployments.set_enabled(world.ids["I2I"], False)
    finally:
        await store.close()
    world.comfy.deployments[world.ids["INPAINT"]].inputs.append("input_inpaint_target")

    report = await world.check()
    assert "not found" in failed(report, f"deployment QUICKMAKE {ghost}").detail
    bad = failed(report, f"deployment I2I {no_image}")
    assert bad.detail.endswith("I2I needs input_image") and "External input node" in bad.fix
    stale = failed(report, f"deployment INPAINT {world.ids['INPAINT']}")
    assert "inputs changed since /deployment add" in stale.detail
    disabled = line(report, f"deployment I2I {world.ids['I2I']}")
    assert disabled.ok and "disabled" in disabled.detail
    assert line(report, "/make").ok
    for command in ("/i2i", "/inpaint"):  # only broken or disabled deployments left
        assert "has nowhere to run" in failed(report, command).detail


async def test_leftover_preview_deployments_are_not_errors(world: World) -> None:
    from generation.preview import PREVIEW_DEPLOYMENTS

    store = await Storage.open(world.db)
    try:
        await store.deployments.add("MAKE", PREVIEW_DEPLOYMENTS["MAKE"], inputs=["input_prompt"])
    finally:
        await store.close()
    report = await world.check()
    check = line(report, f"deployment MAKE {PREVIEW_DEPLOYMENTS['MAKE']}")
    assert check.ok and "removed at the next start" in check.detail
    assert report.ok, report.text()


async def test_the_doctor_changes_nothing(world: World) -> None:
    def digest() -> str:
        return hashlib.sha256(world.db.read_bytes()).hexdigest()

    before = digest()
    files = sorted(p.name for p in world.db.parent.iterdir())
    for _ in range(2):
        await world.check(public_url=PUBLIC)
    assert digest() == before
    assert sorted(p.name for p in world.db.parent.iterdir()) == files
    assert lock_path(world.db).exists()  # Storage's lock file from setup, not a new one
    assert world.telegram.webhook is None  # only read-only methods were called
    assert {c.method for c in world.telegram.calls()} == {"getMe", "getWebhookInfo"}
    assert {(r.method, r.path) for r in world.comfy.requests} == {("GET", "/deployments")}


async def test_json_and_no_secrets(world: World) -> None:
    world.telegram.webhook_last_error = (int(time.time()), f"bad token {DEFAULT_TOKEN}")
    await world.telegram.bot().set_webhook(f"{PUBLIC}/telegram")
    env = world.env()
    overrides = world.settings(public_url=PUBLIC).model_dump()
    for secret in ("telegram_bot_token", "comfydeploy_api_key"):
        overrides[secret] = overrides[secret].get_secret_value()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    status, out = await _run_in_thread(json_output=True, overrides=overrides, env=env)
    doc = json.loads(out)
    assert status == 1 and doc["ok"] is False
    assert {"name", "ok", "detail", "fix"} <= set(doc["checks"][0])
    assert DEFAULT_TOKEN not in out and API_KEY not in out
    assert "bad token ***" in out


async def _run_in_thread(**kwargs: Any) -> tuple[int, str]:
    import asyncio

    return await asyncio.to_thread(run, **kwargs)


def test_cli_exit_status_and_json(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "COMFY"))}
    env |= {"PYTHONPATH": str(ROOT), "DATABASE_PATH": str(tmp_path / "bot.sqlite3")}
    env |= {"GENERATION_BACKEND": "preview"}
    result = subprocess.run(
        [sys.executable, "-m", "bot", "doctor", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr  # no token: local mode is not "live"
    doc = json.loads(result.stdout)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["settings"]["ok"] and not by_name["telegram"]["ok"]
    assert by_name["/make"]["ok"]  # preview deployments
    assert not (tmp_path / "bot.sqlite3").exists()


async def test_the_real_command_against_loopback_doubles(world: World) -> None:
    """``python -m bot doctor`` as a process, over real HTTP to the doubles on 127.0.0.1."""
    import asyncio

    async with world.telegram.serve() as telegram_url, world.comfy.serve() as comfy_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "COMFY"))}
        env |= {
            "PYTHONPATH": str(ROOT),
            "TELEGRAM_BOT_TOKEN": DEFAULT_TOKEN,
            "TELEGRAM_API_URL": telegram_url,
            "COMFYDEPLOY_API_KEY": API_KEY,
            "COMFYDEPLOY_API_URL": comfy_url,
            "DATABASE_PATH": str(world.db),
            "GENERATION_BACKEND": "comfydeploy",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "doctor",
            cwd=world.tmp,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(120):
            out, err = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text + err.decode()
    assert "✓ telegram: token accepted: @fake_test_bot" in text
    assert text.strip().endswith("all checks passed")
    assert DEFAULT_TOKEN not in text + err.decode() and API_KEY not in text + err.decode()
