"""Settings (design.md §5), the one-line config errors, and log redaction of secrets."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.logging_setup import REDACTED, RedactingFilter, install_redaction

ENV_VARS = (
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_API_URL",
    "COMFYDEPLOY_API_KEY",
    "COMFYDEPLOY_API_URL",
    "ADMIN_IDS",
    "DATABASE_PATH",
    "PUBLIC_URL",
    "LISTEN_HOST",
    "LISTEN_PORT",
    "WEBHOOK_SECRET",
    "RUN_POLL_INTERVAL",
    "PROGRESS_EDIT_INTERVAL",
    "STARTING_BALANCE",
    "MAX_ACTIVE_PER_USER",
    "MAX_QUEUED_PER_USER",
    "MAX_IN_FLIGHT",
    "LOG_LEVEL",
    "GENERATION_BACKEND",
    "COMFYUI_URL",
    "COMFYUI_AUTH",
    "COMFYUI_MAX_QUEUE",
    "LORA_WEIGHT_MAX",
    "OUTPUT_URL_ALLOWLIST",
    "MAX_OUTPUTS_PER_RUN",
    "MAX_QUEUED_TOTAL",
    "RUN_RETENTION_DAYS",
    "DELIVERY_RETRY_WINDOW",
    "LOCAL_MODE_TOKEN",
    "METRICS_TOKEN",
    "STAR_PACKAGES",
    "FREE_DAILY_CREDITS",
    "MAX_RUNS_PER_USER_PER_DAY",
    "MAX_RUNS_PER_DAY",
    "ACCESS",
    "PAYSUPPORT_TEXT",
    "TERMS_TEXT",
)
TOKEN = "987654321:AAHsecretTokenValueForTests_0123456789"
API_KEY = "cd_live_key_SUPERSECRET_42"
HOOK_SECRET = "hook-SECRET_value_777"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env from the repository


def test_defaults_match_the_run_contract() -> None:
    s = load_settings()
    assert s.telegram_bot_token is None
    assert s.telegram_api_url == "https://api.telegram.org"
    assert s.comfydeploy_api_key is None
    assert s.comfydeploy_api_url == "https://api.comfydeploy.com/api"
    assert s.admin_ids == frozenset()
    assert s.database_path == "data/bot.sqlite3"
    assert s.public_url is None and not s.webhook_mode
    assert (s.listen_host, s.listen_port) == ("0.0.0.0", 8080)
    assert s.webhook_secret is None
    assert s.run_poll_interval == 3
    assert s.progress_edit_interval == 1.5
    assert s.starting_balance == 0
    assert (s.max_active_per_user, s.max_queued_per_user, s.max_in_flight) == (2, 5, 10)
    assert s.log_level == "INFO"
    assert s.star_packages == () and s.free_daily_credits == 0
    assert (s.max_runs_per_user_per_day, s.max_runs_per_day) == (None, None)
    assert s.access == "open" and s.paysupport_text is None and s.terms_text is None


def test_money_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STAR_PACKAGES", "100:50, 500:200")
    monkeypatch.setenv("FREE_DAILY_CREDITS", "3")
    monkeypatch.setenv("MAX_RUNS_PER_USER_PER_DAY", "20")
    monkeypatch.setenv("MAX_RUNS_PER_DAY", "")
    monkeypatch.setenv("ACCESS", " Allowlist ")
    monkeypatch.setenv("TERMS_TEXT", "Line one\\nLine two")
    s = load_settings()
    assert [(p.credits, p.stars) for p in s.star_packages] == [(100, 50), (500, 200)]
    assert s.free_daily_credits == 3
    assert (s.max_runs_per_user_per_day, s.max_runs_per_day) == (20, None)
    assert s.access == "allowlist" and s.terms_text == "Line one\nLine two"


@pytest.mark.parametrize(
    ("name", "value"),
    [("STAR_PACKAGES", "100"), ("STAR_PACKAGES", "0:5"), ("ACCESS", "closed")],
)
def test_bad_money_settings(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        load_settings()


def test_every_field_is_a_documented_variable() -> None:
    assert {name.upper() for name in Settings.model_fields} == set(ENV_VARS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("", frozenset()), ("42", {42}), ("1,2, 3", {1, 2, 3}), (" 7 ,8,", {7, 8})],
)
def test_admin_ids_parsing(monkeypatch: pytest.MonkeyPatch, raw: str, expected: set[int]) -> None:
    monkeypatch.setenv("ADMIN_IDS", raw)
    assert load_settings().admin_ids == frozenset(expected)


def test_env_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", TOKEN)
    monkeypatch.setenv("PUBLIC_URL", "http://bot.example:8080/")
    monkeypatch.setenv("MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    s = load_settings()
    assert s.telegram_bot_token is not None and s.telegram_bot_token.get_secret_value() == TOKEN
    assert s.public_url == "http://bot.example:8080" and s.webhook_mode
    assert s.max_in_flight == 3
    assert s.log_level == "DEBUG"
    assert TOKEN not in repr(s)


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "ADMIN_IDS=5,6\nSTARTING_BALANCE=25\nCOMFYDEPLOY_API_KEY=from-dotenv\n", encoding="utf-8"
    )
    s = load_settings()
    assert s.admin_ids == frozenset({5, 6})
    assert s.starting_balance == 25
    assert s.comfydeploy_api_key is not None
    assert s.comfydeploy_api_key.get_secret_value() == "from-dotenv"


def test_environment_wins_over_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("MAX_IN_FLIGHT=4\n", encoding="utf-8")
    monkeypatch.setenv("MAX_IN_FLIGHT", "9")
    assert load_settings().max_in_flight == 9


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_IN_FLIGHT", "many"),
        ("LISTEN_PORT", "99999"),
        ("ADMIN_IDS", "12,abc"),
        ("PUBLIC_URL", "bot.example"),
        ("LOG_LEVEL", "chatty"),
        ("RUN_POLL_INTERVAL", "0"),
    ],
)
def test_invalid_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert text.startswith(f"Invalid setting {name}: ")
    assert "\n" not in text


def test_invalid_integer_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_IN_FLIGHT", "x")
    with pytest.raises(ConfigError, match=r"^Invalid setting MAX_IN_FLIGHT: Input should be"):
        load_settings()


def test_invalid_webhook_secret_is_named_but_never_echoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bad = "has spaces and $ecret!"
    monkeypatch.setenv("WEBHOOK_SECRET", bad)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("Invalid setting WEBHOOK_SECRET:")
    assert bad not in str(info.value) and "$ecret" not in str(info.value)
    assert info.value.__cause__ is None  # the pydantic report (with the input) is not chained


def test_webhook_secret_length_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET", "a" * 256)
    assert load_settings().webhook_secret is not None
    monkeypatch.setenv("WEBHOOK_SECRET", "a" * 257)
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings()


# ---------------------------------------------------------------- logging redaction


@pytest.fixture
def redaction() -> RedactingFilter:
    return install_redaction([TOKEN, API_KEY, HOOK_SECRET])


def test_redaction_at_every_level(
    redaction: RedactingFilter, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.redaction")
    with caplog.at_level(logging.DEBUG):
        log.debug("POST https://api.telegram.org/bot%s/sendMessage", TOKEN)
        log.info("api key is %s", API_KEY)
        log.warning("secret header %r", {"X-Telegram-Bot-Api-Secret-Token": HOOK_SECRET})
        log.error("file https://api.telegram.org/file/bot%s/photos/a.jpg", TOKEN)
        try:
            raise RuntimeError(f"failed with Authorization: Bearer {API_KEY}")
        except RuntimeError:
            log.exception("call failed")
    assert len(caplog.records) == 5
    rendered = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in (TOKEN, API_KEY, HOOK_SECRET):
        assert secret not in rendered
    assert rendered.count(REDACTED) >= 5


def test_unknown_bot_token_in_url_is_redacted(redaction: RedactingFilter) -> None:
    other = "111222333:AAotherTOKENnotRegistered_abcdefghij"
    text = redaction.redact(f"GET https://api.telegram.org/bot{other}/getMe")
    assert other not in text and "/bot***/getMe" in text


def test_root_handlers_get_the_filter(redaction: RedactingFilter) -> None:
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_redaction()
        assert redaction in handler.filters
    finally:
        root.removeHandler(handler)


# ---------------------------------------------------------------- python -m bot


def _run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **env}
    root = Path(__file__).resolve().parent.parent
    clean["PYTHONPATH"] = str(root)
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_no_token_starts_local_mode_with_the_web_chat(tmp_path: Path) -> None:
    """No TELEGRAM_BOT_TOKEN: local mode prints the URL, the page answers, SIGTERM stops it
    cleanly (exit 0)."""
    import signal

    import httpx

    from bot.local.runner import bind_socket

    probe = bind_socket("127.0.0.1", 0)
    port = probe.getsockname()[1]
    probe.close()
    root = Path(__file__).resolve().parent.parent
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(root),
        "LISTEN_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = ""
        for _ in range(50):  # bounded: the banner is among the first lines
            line = proc.stdout.readline()
            if not line:
                break
            banner += line
            if "Local mode: open" in line:
                break
        assert f"Local mode: open http://127.0.0.1:{port}" in banner, banner
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert page.status_code == 200 and "/static/app.js" in page.text
        state = httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=10).json()
        assert state["backend"] == "preview"  # no COMFYDEPLOY_API_KEY either
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "local mode stopped" in err
    assert (tmp_path / "data" / "bot.sqlite3").exists()


def test_no_token_and_a_busy_port_is_one_line_and_exit_one(tmp_path: Path) -> None:
    from bot.local.runner import bind_socket

    busy = bind_socket("127.0.0.1", 0)
    try:
        result = _run_bot(tmp_path, LISTEN_PORT=str(busy.getsockname()[1]))
    finally:
        busy.close()
    assert result.returncode == 1
    assert "LISTEN_PORT" in result.stderr.strip().splitlines()[-1]


def test_invalid_setting_prints_one_line_and_exits_two(tmp_path: Path) -> None:
    result = _run_bot(tmp_path, MAX_IN_FLIGHT="lots", TELEGRAM_BOT_TOKEN=TOKEN)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("Invalid setting MAX_IN_FLIGHT:")
    assert TOKEN not in result.stderr + result.stdout


def test_env_example_documents_every_setting_and_loads(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parent.parent / ".env.example"
    text = example.read_text(encoding="utf-8")
    names = {
        line.split("=", 1)[0] for line in text.splitlines() if line and not line.startswith("#")
    }
    assert names == set(ENV_VARS)
    (tmp_path / ".env").write_text(text, encoding="utf-8")
    assert load_settings() == Settings(_env_file=None)  # the example is the defaults
