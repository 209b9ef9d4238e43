"""Storage errors.

Every error raised on purpose by ``storage/`` is a :class:`StorageError`. The subclasses also
derive from the matching built-in (``KeyError`` / ``ValueError``) so that callers coding
against :mod:`generation.ports` (which speaks of ``KeyError`` and ``ValueError``) catch them
without knowing about this package.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of all storage errors. ``str(err)`` is a clear, secret-free message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would otherwise print the repr of the message
        return self.message


class NotFoundError(StorageError, KeyError):
    """An id (user, deployment, LoRA, run, hold) that does not exist."""


class ValidationError(StorageError, ValueError):
    """Bad input: wrong type, out of range, malformed JSON. Nothing was written."""


class DuplicateError(StorageError, ValueError):
    """A unique key (deployment id, LoRA name, run id, hold) that already exists."""


class SchemaVersionError(StorageError):
    """The database file was written by a newer version of the bot than this one."""
