"""Persistent state on aiosqlite: users, balances, deployments, LoRAs, runs, settings, prices,
checkpoints.

Open it with ``storage = await Storage.open(path)``; close with ``await storage.close()``.
"""

from storage.checkpoints import Checkpoint, CheckpointRepository
from storage.deployments import DeploymentRepository
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
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.users import User, UserRepository, UserSettings

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "Checkpoint",
    "CheckpointRepository",
    "DeploymentRepository",
    "DuplicateError",
    "Hold",
    "LedgerEntry",
    "LedgerRepository",
    "LoraRepository",
    "NotFoundError",
    "PriceRepository",
    "RunRepository",
    "SchemaVersionError",
    "SettingsRepository",
    "Storage",
    "StorageError",
    "User",
    "UserRepository",
    "UserSettings",
    "ValidationError",
]
