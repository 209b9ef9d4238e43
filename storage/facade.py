"""The :class:`Storage` facade: opens the database, migrates it and exposes the repositories."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import TracebackType

from storage.access import AccessRepository
from storage.checkpoints import CheckpointRepository
from storage.database import DEFAULT_BUSY_TIMEOUT_MS, Clock, Database
from storage.deployments import DeploymentRepository
from storage.directory import UserDirectory
from storage.images import FileImageStore
from storage.ledger import LedgerRepository
from storage.lock import DatabaseLock, hold_shared, hold_writer, is_file_database
from storage.loras import LoraRepository
from storage.migrations import apply_migrations, current_version
from storage.payments import PaymentRepository
from storage.prices import PriceRepository
from storage.result_files import ResultFileRepository
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.type_options import TypeOptionRepository
from storage.usage import RunLimits, UsageRepository
from storage.users import UserRepository
from storage.workflows import WorkflowRepository

DEFAULT_DATABASE_PATH = "data/bot.sqlite3"


class Storage:
    """All persistent state of the bot, behind one aiosqlite connection.

    ``ledger``, ``deployments``, ``loras`` and ``runs`` implement the protocols of
    :mod:`generation.ports`, so they plug straight into ``GenerationService``.
    """

    def __init__(
        self,
        db: Database,
        lock: DatabaseLock | None = None,
        *,
        free_daily_credits: int = 0,
        run_limits: RunLimits | None = None,
    ) -> None:
        self.db = db
        # "in use" lock on <database>.lock; open(writer=True) adds <database>.writer.lock
        # (storage/lock.py). All are released by close().
        self._locks = [lock] if lock is not None else []
        self.users = UserRepository(db)
        self.ledger = LedgerRepository(db, free_daily_credits=free_daily_credits)
        self.deployments = DeploymentRepository(db)
        self.loras = LoraRepository(db)
        self.runs = RunRepository(db, self.ledger, limits=run_limits)
        self.settings = SettingsRepository(db)
        self.prices = PriceRepository(db)
        self.checkpoints = CheckpointRepository(db)
        self.workflows = WorkflowRepository(db, self.deployments)
        self.images = FileImageStore.next_to(db.path)  # input images of queued runs
        self.directory = UserDirectory(db, self.runs)
        self.type_options = TypeOptionRepository(db)
        self.result_files = ResultFileRepository(db)
        self.payments = PaymentRepository(db, self.ledger)
        self.access = AccessRepository(db, self.users)
        self.usage = UsageRepository(db)

    def configure_money(
        self, *, free_daily_credits: int | None = None, run_limits: RunLimits | None = None
    ) -> None:
        """Apply ``FREE_DAILY_CREDITS`` and the spending guards (the bot calls this at start;
        both take effect with the next operation)."""
        if free_daily_credits is not None:
            self.ledger.free_daily_credits = max(0, int(free_daily_credits))
        if run_limits is not None:
            self.runs.limits = run_limits

    @classmethod
    async def open(
        cls,
        path: str | Path = DEFAULT_DATABASE_PATH,
        *,
        clock: Clock = time.time,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        free_daily_credits: int = 0,
        run_limits: RunLimits | None = None,
        writer: bool = False,
    ) -> Storage:
        """Create folder and file when missing, set WAL/pragmas and apply migrations.

        Holds the shared "in use" lock while open, so ``python -m bot restore`` refuses to run;
        raises :class:`~storage.lock.DatabaseInUseError` while a restore is under way.
        ``writer=True`` (the bot process only) also takes the exclusive single-writer lock the
        caches rely on, first; raises :class:`~storage.lock.BotAlreadyRunningError` while
        another bot process holds it."""
        if is_file_database(path):
            await asyncio.to_thread(Path(path).parent.mkdir, parents=True, exist_ok=True)
        locks: list[DatabaseLock] = []
        db: Database | None = None
        try:
            if writer and (writer_lock := hold_writer(path)) is not None:
                locks.append(writer_lock)
            # before the file is touched: a restore may be writing it
            if (lock := hold_shared(path)) is not None:
                locks.append(lock)
            db = await Database.connect(path, clock=clock, busy_timeout_ms=busy_timeout_ms)
            await apply_migrations(db)
        except BaseException:
            try:
                if db is not None:
                    await db.close()
            finally:
                for held in locks:
                    held.release()
            raise
        storage = cls(db, free_daily_credits=free_daily_credits, run_limits=run_limits)
        storage._locks = locks
        return storage

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
            for held in self._locks:
                held.release()
            self._locks = []

    async def __aenter__(self) -> Storage:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
