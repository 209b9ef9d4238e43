"""The :class:`Storage` facade: opens the database, migrates it and exposes the repositories."""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType

from storage.database import DEFAULT_BUSY_TIMEOUT_MS, Clock, Database
from storage.deployments import DeploymentRepository
from storage.directory import UserDirectory
from storage.ledger import LedgerRepository
from storage.loras import LoraRepository
from storage.migrations import apply_migrations, current_version
from storage.prices import PriceRepository
from storage.result_files import ResultFileRepository
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.type_options import TypeOptionRepository
from storage.users import UserRepository

DEFAULT_DATABASE_PATH = "data/bot.sqlite3"


class Storage:
    """All persistent state of the bot, behind one aiosqlite connection.

    ``ledger``, ``deployments``, ``loras`` and ``runs`` implement the protocols of
    :mod:`generation.ports`, so they plug straight into ``GenerationService``.
    """

    def __init__(self, db: Database) -> None:
        self.db = db
        self.users = UserRepository(db)
        self.ledger = LedgerRepository(db)
        self.deployments = DeploymentRepository(db)
        self.loras = LoraRepository(db)
        self.runs = RunRepository(db)
        self.settings = SettingsRepository(db)
        self.prices = PriceRepository(db)
        self.directory = UserDirectory(db, self.runs)
        self.type_options = TypeOptionRepository(db)
        self.result_files = ResultFileRepository(db)

    @classmethod
    async def open(
        cls,
        path: str | Path = DEFAULT_DATABASE_PATH,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
    ) -> Storage:
        """Create folder and file when missing, set WAL/pragmas and apply migrations."""
        db = await Database.connect(path, clock=clock, busy_timeout_ms=busy_timeout_ms)
        try:
            await apply_migrations(db)
        except BaseException:
            await db.close()
            raise
        return cls(db)

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
        await self.db.close()

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
