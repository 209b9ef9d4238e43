"""The :class:`Storage` facade: opens the database, migrates it and exposes the repositories."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType

from storage.checkpoints import CheckpointRepository
from storage.database import DEFAULT_BUSY_TIMEOUT_MS, Clock, Database
from storage.deployments import DeploymentRepository
from storage.ledger import LedgerRepository
from storage.lock import DatabaseLock, hold_shared, is_file_database
from storage.loras import LoraRepository
from storage.migrations import apply_migrations, current_version
from storage.prices import PriceRepository
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.users import UserRepository

DEFAULT_DATABASE_PATH = "data/bot.sqlite3"


class Storage:
    """All persistent state of the bot, behind one aiosqlite connection.

    ``ledger``, ``deployments``, ``loras`` and ``runs`` implement the protocols of
    :mod:`generation.ports`, so they plug straight into ``GenerationService``.
    """

    def __init__(self, db: Database, lock: DatabaseLock | None = None) -> None:
        self.db = db
        self._lock = lock  # "in use" lock on <database>.lock (see storage/lock.py)
        self.users = UserRepository(db)
        self.ledger = LedgerRepository(db)
        self.deployments = DeploymentRepository(db)
        self.loras = LoraRepository(db)
        self.runs = RunRepository(db)
        self.settings = SettingsRepository(db)
        self.prices = PriceRepository(db)
        self.checkpoints = CheckpointRepository(db)

    @classmethod
    async def open(
        cls,
        path: str | Path = DEFAULT_DATABASE_PATH,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Storage:
        """Create folder and file when missing, set WAL/pragmas and apply migrations.

        Holds the shared "in use" lock while open, so ``python -m bot restore`` refuses to run;
        raises :class:`~storage.lock.DatabaseInUseError` while a restore is under way."""
        if is_file_database(path):
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        lock = hold_shared(path)  # before the file is touched: a restore may be writing it
        try:
            db = await Database.connect(path, clock=clock, busy_timeout_ms=busy_timeout_ms)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        try:
            await apply_migrations(db)
        except BaseException:
            if lock is not None:
                lock.release()
            await db.close()
            raise
        return cls(db, lock)

    @property
    def path(self) -> str:
        return self.db.path

    async def schema_version(self) -> int:
        return await current_version(self.db)

    async def ping(self) -> bool:
        """Cheap health check for ``/healthz``."""
        async with self.db.read() as conn:
            rows = await conn.execute_fetchall("SELECT 1")
        return bool(rows)

    async def close(self) -> None:
        try:
            await self.db.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
