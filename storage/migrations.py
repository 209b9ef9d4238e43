"""Numbered schema migrations, applied at start.

Each migration runs in its own transaction together with the row that records it in
``schema_version``, so a crash leaves the database at a whole version. Re-running is a
no-op; a database newer than :data:`LATEST_VERSION` is refused with
:class:`~storage.errors.SchemaVersionError` rather than being misread.

Before the first migration touches a database that already has a schema, a copy of it is
taken with SQLite's backup API into ``backups/`` next to the database (see
:mod:`storage.backup`): rolling back an upgrade is "install the old version, restore the copy".

Append new migrations to :data:`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

import logging
import sqlite3

from storage.backup import automatic_backup_path, backup_database
from storage.database import Database
from storage.errors import SchemaVersionError, StorageError
from storage.lock import is_file_database

log = logging.getLogger(__name__)

_V1 = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    language      TEXT,
    settings      TEXT    NOT NULL DEFAULT '{}',
    balance       INTEGER NOT NULL DEFAULT 0,  -- cached SUM(ledger.amount)
    held          INTEGER NOT NULL DEFAULT 0,  -- cached SUM(open holds)
    created_at    REAL    NOT NULL,
    last_seen_at  REAL    NOT NULL,
    CHECK (held >= 0 AND balance >= held)
);

CREATE TABLE ledger (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id),
    amount      INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    actor       INTEGER,
    run_id      TEXT,
    created_at  REAL    NOT NULL
);
CREATE INDEX ledger_by_user ON ledger(user_id, id);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'ledger is append-only'); END;

CREATE TABLE holds (
    run_id       TEXT    PRIMARY KEY,
    user_id      INTEGER NOT NULL,
    amount       INTEGER NOT NULL CHECK (amount >= 0),
    state        TEXT    NOT NULL DEFAULT 'open'
                 CHECK (state IN ('open', 'settled', 'released')),
    created_at   REAL    NOT NULL,
    resolved_at  REAL
);
CREATE INDEX holds_open ON holds(user_id) WHERE state = 'open';

CREATE TABLE deployments (
    deployment_id         TEXT    PRIMARY KEY,
    type                  TEXT    NOT NULL,
    role                  TEXT    NOT NULL DEFAULT 'default'
                          CHECK (role IN ('default', 'cook', 'api')),
    weight                INTEGER NOT NULL DEFAULT 1 CHECK (weight >= 1),
    enabled               INTEGER NOT NULL DEFAULT 1,
    inputs                TEXT,
    success_count         INTEGER NOT NULL DEFAULT 0,
    failure_count         INTEGER NOT NULL DEFAULT 0,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    last_failure_at       REAL,
    created_at            REAL    NOT NULL
);
CREATE INDEX deployments_by_type ON deployments(type);

CREATE TABLE loras (
    name            TEXT    PRIMARY KEY COLLATE NOCASE,
    triggers        TEXT    NOT NULL,
    default_weight  REAL    NOT NULL DEFAULT 1.0,
    min_balance     INTEGER NOT NULL DEFAULT 0 CHECK (min_balance >= 0),
    family          TEXT,
    enabled         INTEGER NOT NULL DEFAULT 1,
    created_at      REAL    NOT NULL
);

CREATE TABLE runs (
    id                   TEXT    PRIMARY KEY,
    user_id              INTEGER NOT NULL,
    chat_id              INTEGER NOT NULL,
    type                 TEXT    NOT NULL,
    request              TEXT    NOT NULL,
    status               TEXT    NOT NULL,
    deployment_id        TEXT,
    backend_run_id       TEXT,
    progress             REAL    NOT NULL DEFAULT 0,
    live_status          TEXT,
    queue_position       INTEGER,
    outputs              TEXT    NOT NULL DEFAULT '[]',
    error_code           TEXT,
    error_message        TEXT,
    price                INTEGER NOT NULL DEFAULT 0,
    charge_state         TEXT    NOT NULL DEFAULT 'none',
    delivery_state       TEXT    NOT NULL DEFAULT 'pending',
    progress_message_id  INTEGER,
    meta                 TEXT    NOT NULL DEFAULT '{}',
    created_at           REAL    NOT NULL,
    updated_at           REAL    NOT NULL,
    submitted_at         REAL,
    finished_at          REAL,
    deadline_at          REAL
);
CREATE INDEX runs_by_backend_id ON runs(backend_run_id) WHERE backend_run_id IS NOT NULL;
CREATE INDEX runs_by_user ON runs(user_id, created_at);
CREATE INDEX runs_by_status ON runs(status);

CREATE TABLE settings (
    key         TEXT PRIMARY KEY,
    value       TEXT NOT NULL,
    updated_at  REAL NOT NULL
);

CREATE TABLE prices (
    type        TEXT    PRIMARY KEY,
    credits     INTEGER NOT NULL CHECK (credits >= 0),
    updated_at  REAL    NOT NULL
);
"""

# (number, SQL). Numbers start at 1 and increase by one.
# v2: find the run a chat message started (redelivered updates) without scanning a user's runs.
_V2 = """
CREATE INDEX runs_by_request_message
    ON runs(user_id, chat_id, json_extract(meta, '$.reply_to_message_id'));
"""

# v3: money and access. Free daily credits are a second "pot" next to the paid one: each
# ledger row says which pot it moves (users.free_balance caches the free pot's sum) and a
# hold remembers how much of it came from free credits, and from which UTC day. Stars
# payments are keyed by Telegram's charge id; access state lives on the user row and in
# allowed_chats. runs_by_created counts today's runs (spending guards, /stats).
_V3 = """
ALTER TABLE users ADD COLUMN free_balance INTEGER NOT NULL DEFAULT 0 CHECK (free_balance >= 0);
ALTER TABLE users ADD COLUMN free_held INTEGER NOT NULL DEFAULT 0 CHECK (free_held >= 0);
ALTER TABLE users ADD COLUMN free_day INTEGER;
ALTER TABLE users ADD COLUMN access TEXT NOT NULL DEFAULT 'default'
    CHECK (access IN ('default', 'allowed', 'banned'));
ALTER TABLE users ADD COLUMN ban_notified INTEGER NOT NULL DEFAULT 0;
CREATE TRIGGER users_free_pot_range BEFORE UPDATE OF free_balance, free_held, balance, held
ON users WHEN NEW.free_held > NEW.free_balance OR NEW.free_held > NEW.held
    OR NEW.balance - NEW.free_balance < NEW.held - NEW.free_held
BEGIN SELECT RAISE(ABORT, 'free/paid pot out of range'); END;

ALTER TABLE ledger ADD COLUMN pot TEXT NOT NULL DEFAULT 'paid' CHECK (pot IN ('paid', 'free'));
ALTER TABLE ledger ADD COLUMN charge_id TEXT;
CREATE INDEX ledger_by_charge ON ledger(charge_id) WHERE charge_id IS NOT NULL;
CREATE INDEX ledger_by_time ON ledger(created_at);
CREATE INDEX ledger_by_run ON ledger(run_id) WHERE run_id IS NOT NULL;

ALTER TABLE holds ADD COLUMN free_amount INTEGER NOT NULL DEFAULT 0 CHECK (free_amount >= 0);
ALTER TABLE holds ADD COLUMN free_day INTEGER;

CREATE TABLE payments (
    charge_id           TEXT    PRIMARY KEY,  -- telegram_payment_charge_id
    provider_charge_id  TEXT,
    user_id             INTEGER NOT NULL REFERENCES users(id),
    credits             INTEGER NOT NULL CHECK (credits >= 0),
    stars               INTEGER NOT NULL CHECK (stars > 0),
    payload             TEXT    NOT NULL,
    state               TEXT    NOT NULL DEFAULT 'paid' CHECK (state IN ('paid', 'refunded')),
    credits_taken_back  INTEGER NOT NULL DEFAULT 0 CHECK (credits_taken_back >= 0),
    created_at          REAL    NOT NULL,
    refunded_at         REAL,
    refunded_by         INTEGER,
    CHECK (credits_taken_back <= credits)
);
CREATE INDEX payments_by_user ON payments(user_id, created_at);
CREATE INDEX payments_by_time ON payments(created_at);

CREATE TABLE allowed_chats (
    chat_id     INTEGER PRIMARY KEY,
    added_by    INTEGER,
    created_at  REAL    NOT NULL
);

CREATE INDEX runs_by_created ON runs(created_at);
"""

# v4: self-hosted ComfyUI workflows. A workflow is a deployment row (backend 'comfyui', id
# 'workflow:<name>') so selection, weights, enable/disable and health reuse the deployment
# machinery; its graph and input map live in ``workflows`` and go with the row.
_V4 = """
ALTER TABLE deployments ADD COLUMN backend TEXT NOT NULL DEFAULT 'comfydeploy';
CREATE TABLE workflows (
    deployment_id  TEXT PRIMARY KEY REFERENCES deployments(deployment_id) ON DELETE CASCADE,
    name           TEXT NOT NULL UNIQUE COLLATE NOCASE,
    graph          TEXT NOT NULL,
    input_map      TEXT NOT NULL DEFAULT '[]',
    created_at     REAL NOT NULL
);
"""

# v5: finding users and admin-added types. ``usernames`` maps each username the bot has seen
# (case-insensitive) to the one account holding it now; ``type_options`` holds what an admin
# said about a type the bot does not know (``/type ANIMATE image``: it takes a photo);
# ``result_files`` the Telegram file id of every delivered result item, so result actions
# (upscale, vary, original) work on the stored output after a restart.
_V5 = """
CREATE TABLE usernames (
    username  TEXT    PRIMARY KEY COLLATE NOCASE,
    user_id   INTEGER NOT NULL,
    seen_at   REAL    NOT NULL
);
CREATE INDEX usernames_by_user ON usernames(user_id);

CREATE TABLE type_options (
    type        TEXT    PRIMARY KEY,
    input       TEXT    NOT NULL DEFAULT 'text' CHECK (input IN ('text', 'image')),
    updated_at  REAL    NOT NULL
);

CREATE TABLE result_files (
    run_id      TEXT    NOT NULL,
    item        INTEGER NOT NULL CHECK (item >= 0),  -- index into the run's outputs
    kind        TEXT    NOT NULL,                    -- photo | document | animation | video
    file_id     TEXT    NOT NULL,
    chat_id     INTEGER NOT NULL,
    message_id  INTEGER NOT NULL,
    created_at  REAL    NOT NULL,
    PRIMARY KEY (run_id, item, kind)
);
CREATE INDEX result_files_by_message ON result_files(chat_id, message_id);
"""

# v6: the checkpoints admins configure (/checkpoint add), shown in the /settings menu.
_V6 = """
CREATE TABLE checkpoints (
    name        TEXT PRIMARY KEY COLLATE NOCASE,
    family      TEXT,
    created_at  REAL NOT NULL
);
"""

MIGRATIONS: list[tuple[int, str]] = [(1, _V1), (2, _V2), (3, _V3), (4, _V4), (5, _V5), (6, _V6)]
LATEST_VERSION = MIGRATIONS[-1][0]

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    applied_at  REAL NOT NULL
)
"""


async def current_version(db: Database) -> int:
    async with db.read() as conn:
        async with conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version") as cur:
            row = await cur.fetchone()
    return int(row[0]) if row else 0


async def backup_before_migrating(db: Database, version: int) -> str | None:
    """Copy an existing database before a migration changes it; the copy's path (or None)."""
    if version < 1 or not is_file_database(db.path):
        return None
    target = automatic_backup_path(db.path, f"v{version}", now=db.clock())
    report = await backup_database(db.path, target)
    log.info("database at schema version %d backed up to %s before migrating", version, report.path)
    return report.path


async def apply_migrations(
    db: Database, migrations: list[tuple[int, str]] | None = None
) -> list[int]:
    """Bring the schema up to date; returns the numbers applied (empty when current).

    An existing database is backed up first (:func:`backup_before_migrating`)."""
    migrations = MIGRATIONS if migrations is None else migrations
    latest = migrations[-1][0] if migrations else 0
    async with db.write() as conn:
        await conn.execute(_VERSION_TABLE)
    version = await current_version(db)
    if version > latest:
        raise SchemaVersionError(
            f"database {db.path!r} has schema version {version}, but this version of the bot "
            f"only knows up to {latest}; upgrade the bot or use another DATABASE_PATH"
        )
    applied: list[int] = []
    if any(number > version for number, _ in migrations):
        await backup_before_migrating(db, version)
    for number, sql in migrations:
        if number <= version:
            continue
        # executescript commits any open transaction first, so the BEGIN/COMMIT live in the
        # script itself: the migration and its schema_version row commit together or not at all.
        script = (
            f"BEGIN IMMEDIATE;\n{sql}\n;"
            f"INSERT INTO schema_version(version, applied_at) VALUES ({int(number)}, "
            f"{float(db.clock())!r});\nCOMMIT;"
        )
        async with db.read() as conn:
            try:
                await conn.executescript(script)
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise StorageError(f"migration {number} failed: {exc}") from exc
        log.info("database migrated to schema version %d", number)
        applied.append(number)
    return applied
