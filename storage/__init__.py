"""Persistent state on aiosqlite: users, balances, deployments, LoRAs, runs, settings, prices,
payments, access, usage and checkpoints.

Open it with ``storage = await Storage.open(path)``; close with ``await storage.close()``.
"""

from storage.access import AccessRepository, AccessState
from storage.checkpoints import Checkpoint, CheckpointRepository
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
from storage.ledger import Balances, Hold, LedgerEntry, LedgerRepository
from storage.loras import LoraRepository
from storage.payments import Payment, PaymentRepository, PaymentResult, RefundPlan, RefundResult
from storage.prices import PriceRepository
from storage.result_files import ResultFile, ResultFileRepository
from storage.runs import RunRepository
from storage.settings import SettingsRepository
from storage.type_options import TypeOptionRepository
from storage.usage import RunLimits, UsageRepository, UsageStats
from storage.users import User, UserRepository, UserSettings
from storage.workflows import WorkflowRepository

__all__ = [
    "DEFAULT_DATABASE_PATH",
    "AccessRepository",
    "AccessState",
    "Balances",
    "Checkpoint",
    "CheckpointRepository",
    "DeploymentRepository",
    "DuplicateError",
    "Hold",
    "LedgerEntry",
    "LedgerRepository",
    "LoraRepository",
    "NotFoundError",
    "Payment",
    "PaymentRepository",
    "PaymentResult",
    "PriceRepository",
    "RefundPlan",
    "RefundResult",
    "ResultFile",
    "ResultFileRepository",
    "RunLimits",
    "RunRepository",
    "SchemaVersionError",
    "SettingsRepository",
    "Storage",
    "StorageError",
    "TypeOptionRepository",
    "UsageRepository",
    "UsageStats",
    "User",
    "UserDirectory",
    "UserLookupError",
    "UserProfile",
    "UserRepository",
    "UserSettings",
    "ValidationError",
    "WorkflowRepository",
]
