"""``python -m bot doctor``: check the real configuration, one line per check.

Each line is ``✓ name: what was found`` or ``✗ name: what is wrong → what to do``. Exit 0 when
every check passes, 1 otherwise; ``--json`` prints one JSON document instead. The doctor never
changes anything: the database is only read (the "writable" probe is a transaction it rolls
back, a pending migration is reported, not applied), Telegram and ComfyDeploy are only asked
read-only questions (``getMe``, ``getWebhookInfo``, ``GET /deployments``). Nothing it prints
contains a secret: every line also goes through the log redaction filter.

The checks: settings; database (writable, schema version, ledger); Telegram (token, webhook
state); PUBLIC_URL as Telegram needs it; the generation backend's key; every configured
deployment (exists, declares what its type needs — see :mod:`generation.contract`); and every
command's type has somewhere to run.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass, field

from bot.config import ConfigError, Settings, load_settings
from bot.doctor_backend import backend_checks, command_checks
from bot.doctor_checks import (
    Check,
    DoctorEnv,
    database_checks,
    public_url_check,
    telegram_checks,
)
from bot.logging_setup import RedactingFilter

OK_MARK, FAIL_MARK = "✓", "✗"


@dataclass(slots=True)
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def text(self) -> str:
        lines = []
        for check in self.checks:
            mark = OK_MARK if check.ok else FAIL_MARK
            line = f"{mark} {check.name}: {check.detail}"
            if not check.ok and check.fix:
                line += f" → {check.fix}"
            lines.append(line)
        failed = sum(not c.ok for c in self.checks)
        lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
        return "\n".join(lines)

    def json(self) -> str:
        return json.dumps(
            {"ok": self.ok, "checks": [asdict(c) for c in self.checks]},
            ensure_ascii=False,
            indent=2,
        )


async def diagnose(settings: Settings, env: DoctorEnv | None = None) -> Report:
    """Every check after the settings loaded; see the module docstring."""
    env = env or DoctorEnv()
    report = Report([Check("settings", True, _settings_summary(settings))])
    db_checks, configured = await database_checks(settings, env)
    report.checks += db_checks
    report.checks += await telegram_checks(settings, env)
    report.checks.append(await public_url_check(settings, env))
    backend, runnable = await backend_checks(
        settings, env, configured.deployments, configured.workflows
    )
    report.checks += backend
    backend_ok = all(c.ok for c in backend if c.name.startswith(("ComfyDeploy", "ComfyUI")))
    report.checks += command_checks(runnable, verified=backend_ok)
    return report


def _settings_summary(settings: Settings) -> str:
    if settings.local_mode:
        mode = "local mode (no TELEGRAM_BOT_TOKEN)"
    elif settings.webhook_mode:
        mode = f"webhook mode, PUBLIC_URL {settings.public_url}"
    else:
        mode = "long polling"
    names = {"preview": "the preview backend", "comfydeploy": "ComfyDeploy", "comfyui": "ComfyUI"}
    backend = " and ".join(names[k] for k in sorted(settings.backends))
    return f"valid ({mode}; generations on {backend}; database {settings.database_path})"


def settings_failure(error: ConfigError) -> Report:
    return Report(
        [
            Check(
                "settings",
                False,
                str(error),
                "fix that variable in .env or the environment (.env.example explains each)",
            )
        ]
    )


def run(
    *,
    json_output: bool = False,
    overrides: dict[str, object] | None = None,
    env: DoctorEnv | None = None,
) -> tuple[int, str]:
    """(exit status, output); ``overrides`` go to :func:`load_settings` (tests)."""
    try:
        settings = load_settings(**(overrides or {}))
    except ConfigError as exc:
        report = settings_failure(exc)
        redactor = RedactingFilter()
    else:
        report = asyncio.run(diagnose(settings, env))
        # Real secrets are long; a 1-character test key would blank every matching letter.
        redactor = RedactingFilter(s for s in settings.secret_values() if len(s) >= 6)
    output = report.json() if json_output else report.text()
    return (0 if report.ok else 1), redactor.redact(output)


def main(*, json_output: bool = False) -> int:
    """``python -m bot doctor [--json]`` (arguments parsed by :mod:`bot.cli`)."""
    # Every finding is in the report: keep library warnings (client retries) off the terminal.
    logging.getLogger().addHandler(logging.NullHandler())
    status, output = run(json_output=json_output)
    print(output)
    return status


__all__ = ["Check", "DoctorEnv", "Report", "diagnose", "main", "run"]
