"""Logging configuration with a redaction filter: secrets never reach any log destination.

The filter sits on every root handler, formats each record once, replaces every known secret
and the token part of any ``bot<token>`` URL with ``***``, and stores the cleaned message back on
the record, so it holds at every level and for every formatter (tracebacks included). Handlers
added later (pytest's ``caplog``, a file handler a library installs) would miss a handler filter,
so the same redaction also runs in a wrapping ``LogRecord`` factory: every record is clean from
the moment it is created, whatever destination it reaches.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "***"
# Bot API URLs carry the token: https://host/bot<id>:<hash>/method and /file/bot<id>:<hash>/path
# (httpx logs URLs with the colon percent-encoded: "/bot123%3AAA...")
_BOT_TOKEN_IN_URL = re.compile(r"(/bot)(\d+(?::|%3[Aa])[A-Za-z0-9_-]+)")
# A bare bot token anywhere (id:35-char hash) — catches tokens we were not told about.
_BARE_BOT_TOKEN = re.compile(r"\b\d{5,}(?::|%3[Aa])[A-Za-z0-9_-]{30,}\b")


class RedactingFilter(logging.Filter):
    """Replaces secrets in a record's message, args and exception text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        for secret in secrets:
            if secret and secret not in self._secrets:
                self._secrets.append(secret)
        # longest first so a secret containing another is replaced whole
        self._secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        # Token patterns first: a short secret inside a token must not break the pattern and
        # leave the rest of the token behind.
        text = _BOT_TOKEN_IN_URL.sub(rf"\1{REDACTED}", text)
        text = _BARE_BOT_TOKEN.sub(REDACTED, text)
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: keep the raw template, still redacted
            message = str(record.msg)
        cleaned = self.redact(message)
        if cleaned != message or record.args:
            # Freeze the message now: args may be mutable objects that change after the record
            # was made (PTB logs the getFile result dict, then puts the token URL into it).
            record.msg = cleaned
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
_factory_installed = False


def _install_record_factory() -> None:
    global _factory_installed
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _FILTER.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


# Libraries whose DEBUG output dumps raw request data: aiosqlite logs every SQL statement with
# its parameters (a freshly generated webhook secret before we can know it, user prompts).
# httpx logs every request URL at INFO: Bot API URLs carry the token, output URLs are presigned
# (their query is a credential). Kept at WARNING however logging was configured.
QUIET_LOGGERS = {"aiosqlite": logging.INFO, "httpx": logging.WARNING, "httpcore": logging.WARNING}


def install_redaction(secrets: Iterable[str] = ()) -> RedactingFilter:
    """Add ``secrets`` to the shared filter and attach it to every root handler."""
    _FILTER.add_secrets(secrets)
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)
    _install_record_factory()
    for handler in logging.getLogger().handlers:
        if _FILTER not in handler.filters:
            handler.addFilter(_FILTER)
    return _FILTER


def setup_logging(level: str = "INFO", secrets: Iterable[str] = ()) -> RedactingFilter:
    """Configure the root logger from ``LOG_LEVEL`` and install the redaction filter."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # httpx logs every request URL at INFO — the Bot API URL contains the token. The filter
    # redacts it anyway; WARNING keeps the log useful rather than noisy.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # PTB's JobQueue (progress edits, retries) logs "Added job"/"Removed job" at INFO per job.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return install_redaction(secrets)
