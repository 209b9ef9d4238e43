"""Operator commands: ``python -m bot doctor [--json]``, ``backup <file>``, ``restore <file>``.

* ``doctor`` checks the real configuration and changes nothing (:mod:`bot.doctor`).
* ``backup <file>`` writes a consistent copy of ``DATABASE_PATH`` while the bot runs
  (SQLite's online backup API, :mod:`storage.backup`) and checks the copy.
* ``restore <file>`` puts a backup back; it refuses while a bot has the database open
  (:mod:`storage.lock`) and saves the database it replaces under ``backups/`` first.

Exit status: 0 done / all checks passed, 1 failed, 2 a bad setting or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from bot.config import ConfigError, Settings, load_settings
from storage.backup import BackupReport, backup_database, restore_database
from storage.errors import StorageError
from storage.migrations import LATEST_VERSION

COMMANDS = ("doctor", "backup", "restore")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Without a command: run the bot (README). With one: operate it.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    doctor = sub.add_parser("doctor", help="check the configuration (changes nothing)")
    doctor.add_argument("--json", action="store_true", help="one JSON document for scripts")
    backup = sub.add_parser("backup", help="copy the database (safe while the bot runs)")
    backup.add_argument("file", help="where to write the copy (replaced if it exists)")
    restore = sub.add_parser("restore", help="put a backup back (the bot must be stopped)")
    restore.add_argument("file", help="a file written by `python -m bot backup`")
    return parser


def _describe(report: BackupReport) -> str:
    if not report.ledger_checked:
        ledger = "ledger audited when a bot migrates it"
    else:
        ledger = "ledger consistent" if not report.ledger_problems else report.ledger_problems[0]
    return (
        f"schema v{report.schema_version}, {report.size / 1024:.0f} KiB, "
        f"integrity {report.integrity}, {ledger}"
    )


def run_backup(settings: Settings, target: str) -> int:
    try:
        report = asyncio.run(
            backup_database(settings.database_path, target, audit_schema=LATEST_VERSION)
        )
    except StorageError as exc:
        print(f"✗ backup failed: {exc}", file=sys.stderr)
        return 1
    mark = "✓" if report.ok else "✗"
    print(
        f"{mark} backed up {settings.database_path} to {report.path} in {report.seconds:.2f} s "
        f"({_describe(report)})"
    )
    return 0 if report.ok else 1


def run_restore(settings: Settings, source: str) -> int:
    try:
        result = asyncio.run(
            restore_database(source, settings.database_path, latest_version=LATEST_VERSION)
        )
    except StorageError as exc:
        print(f"✗ restore refused: {exc}", file=sys.stderr)
        return 1
    print(f"✓ restored {source} into {settings.database_path} ({_describe(result.restored)})")
    if result.previous_copy:
        print(f"  the database it replaced was saved to {result.previous_copy}")
    print("  start the bot: it migrates an older backup forward (after backing it up)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "doctor":
        from bot.doctor import main as doctor_main

        return doctor_main(json_output=args.json)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.command == "backup":
        return run_backup(settings, args.file)
    return run_restore(settings, args.file)


if __name__ == "__main__":
    sys.exit(main())
