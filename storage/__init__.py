"""Persistent state on aiosqlite: users, balances, deployments, LoRAs, runs, settings, prices.

Open it with ``storage = await Storage.open(path)``; close with ``await storage.close()``.
"""

from storage.deployments import DeploymentRepository
from storage.directory import UserDirectory, UserLookupError, UserProfile
from storage.errors import (
    DuplicateError,
    NotFoundError,
    SchemaVersionError,
    StorageError,
    ValidationError,
)
from storage.facade import DEFAULT_DATABASE_PATH, Storage
from storage.ledger import Hold, LedgerEntry, LedgerRepository
from storage.loras import LoraRepository
from storage.prices import PriceRepository
from storage.result_files import ResultFile, ResultFileRepository
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.type_options import TypeOptionRepository
from storage.users import User, UserRepository, UserSettings

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "DeploymentRepository",
    "DuplicateError",
    "Hold",
    "LedgerEntry",
    "LedgerRepository",
    "LoraRepository",
    "NotFoundError",
    "PriceRepository",
    "ResultFile",
    "ResultFileRepository",
    "RunRepository",
    "SchemaVersionError",
    "SettingsRepository",
    "Storage",
    "StorageError",
    "TypeOptionRepository",
    "User",
    "UserDirectory",
    "UserLookupError",
    "UserProfile",
    "UserRepository",
    "UserSettings",
    "ValidationError",
]
