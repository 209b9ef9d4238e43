"""One error hierarchy for the generation module, with stable codes.

Every failure that leaves ``generation/`` is a :class:`GenerationError`. The ``code`` is a
stable string the bot maps to a localized message (``locales/*.json`` key ``error.<CODE>``);
``message`` is for logs only and never contains secrets.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar


class ErrorCode(StrEnum):
    AUTH_FAILED = "AUTH_FAILED"
    DEPLOYMENT_NOT_FOUND = "DEPLOYMENT_NOT_FOUND"
    INVALID_INPUT = "INVALID_INPUT"
    RATE_LIMITED = "RATE_LIMITED"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    NO_DEPLOYMENTS_AVAILABLE = "NO_DEPLOYMENTS_AVAILABLE"
    RUN_FAILED = "RUN_FAILED"
    RUN_TIMEOUT = "RUN_TIMEOUT"
    CANCELLED = "CANCELLED"
    INSUFFICIENT_BALANCE = "INSUFFICIENT_BALANCE"
    QUEUE_FULL = "QUEUE_FULL"
    RUN_NOT_FOUND = "RUN_NOT_FOUND"
    BACKEND_ERROR = "BACKEND_ERROR"
    SUBMIT_UNCERTAIN = "SUBMIT_UNCERTAIN"
    INTERRUPTED = "INTERRUPTED"
    WORKFLOW_INVALID = "WORKFLOW_INVALID"
    OUTPUT_REFUSED = "OUTPUT_REFUSED"
    OUTPUT_DOWNLOAD_FAILED = "OUTPUT_DOWNLOAD_FAILED"
    QUEUE_BUSY = "QUEUE_BUSY"
    # money and access (spending guards, access modes, Stars payments)
    DAILY_LIMIT = "DAILY_LIMIT"
    BOT_DAILY_LIMIT = "BOT_DAILY_LIMIT"
    ACCESS_DENIED = "ACCESS_DENIED"
    BANNED = "BANNED"
    PAID_ACCESS_ONLY = "PAID_ACCESS_ONLY"
    PAYMENT_INVALID = "PAYMENT_INVALID"
    PAYMENT_NOT_FOUND = "PAYMENT_NOT_FOUND"
    ALREADY_REFUNDED = "ALREADY_REFUNDED"
    CREDITS_SPENT = "CREDITS_SPENT"


class GenerationError(Exception):
    """Base of all generation errors. ``details`` holds safe, structured extras."""

    code: ClassVar[ErrorCode] = ErrorCode.BACKEND_ERROR
    retryable: ClassVar[bool] = False

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code.value)
        self.message = message or self.code.value
        self.details: dict[str, Any] = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code.value!r}, message={self.message!r})"


class AuthFailedError(GenerationError):
    code = ErrorCode.AUTH_FAILED


class DeploymentNotFoundError(GenerationError):
    code = ErrorCode.DEPLOYMENT_NOT_FOUND


class InvalidInputError(GenerationError):
    """A request that can never succeed as sent. ``field`` names the offending field."""

    code = ErrorCode.INVALID_INPUT

    def __init__(self, message: str = "", *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **details)
        self.field = field


class RateLimitedError(GenerationError):
    code = ErrorCode.RATE_LIMITED
    retryable = True


class BackendUnavailableError(GenerationError):
    """Transport errors and 5xx after retries: the backend may come back."""

    code = ErrorCode.BACKEND_UNAVAILABLE
    retryable = True


class NoDeploymentsAvailableError(GenerationError):
    code = ErrorCode.NO_DEPLOYMENTS_AVAILABLE


class RunFailedError(GenerationError):
    code = ErrorCode.RUN_FAILED


class RunTimeoutError(GenerationError):
    code = ErrorCode.RUN_TIMEOUT


class CancelledError(GenerationError):
    """The user (or an admin) cancelled the generation. Not ``asyncio.CancelledError``."""

    code = ErrorCode.CANCELLED


class InsufficientBalanceError(GenerationError):
    code = ErrorCode.INSUFFICIENT_BALANCE

    def __init__(self, message: str = "", *, required: int = 0, available: int = 0) -> None:
        super().__init__(message, required=required, available=available)
        self.required = required
        self.available = available


class QueueFullError(GenerationError):
    code = ErrorCode.QUEUE_FULL


class RunNotFoundError(GenerationError):
    code = ErrorCode.RUN_NOT_FOUND


class BackendError(GenerationError):
    """Any other unexpected backend answer (unexpected 4xx, malformed body)."""

    code = ErrorCode.BACKEND_ERROR


class SubmitUncertainError(GenerationError):
    """The create call may or may not have reached the backend (crash or timeout mid-call)."""

    code = ErrorCode.SUBMIT_UNCERTAIN


class InterruptedError_(GenerationError):
    """The bot stopped before the run could be submitted."""

    code = ErrorCode.INTERRUPTED


class WorkflowInvalidError(GenerationError):
    """A self-hosted ComfyUI workflow the server refuses (HTTP 400 ``node_errors``) or that
    cannot take the request (an input it needs is missing). Never retried. ``details`` name
    the node and input for admins (``node_id``, ``class_type``, ``input_name``, ``reason``);
    users are only told the workflow is misconfigured."""

    code = ErrorCode.WORKFLOW_INVALID


class OutputRefusedError(GenerationError):
    """An output URL or body the bot will not fetch: an internal address, a redirect to one,
    a scheme other than http(s), too many outputs or bytes (generation.safe_fetch)."""

    code = ErrorCode.OUTPUT_REFUSED


class OutputDownloadError(GenerationError):
    """Downloading an output failed (HTTP error, transport error, total time exceeded).
    ``transient`` says whether trying again may help."""

    code = ErrorCode.OUTPUT_DOWNLOAD_FAILED

    def __init__(self, message: str = "", *, transient: bool = False, **details: Any) -> None:
        super().__init__(message, transient=transient, **details)
        self.transient = transient


class QueueBusyError(GenerationError):
    """The whole bot has ``MAX_QUEUED_TOTAL`` runs waiting: new requests are refused."""

    code = ErrorCode.QUEUE_BUSY


class LimitReachedError(GenerationError):
    """A spending guard refused a new run. ``resets_at`` (epoch seconds, the next UTC
    midnight) says when the count starts again and ``remaining`` how many seconds that is
    from the refusal (by the clock that refused); ``limit`` is the configured maximum."""

    code = ErrorCode.DAILY_LIMIT

    def __init__(
        self, message: str = "", *, limit: int = 0, resets_at: float = 0.0, remaining: float = 0.0
    ) -> None:
        super().__init__(message, limit=limit, resets_at=resets_at, remaining=remaining)
        self.limit = limit
        self.resets_at = resets_at
        self.remaining = remaining


class DailyLimitError(LimitReachedError):
    """``MAX_RUNS_PER_USER_PER_DAY``: this user's runs today."""

    code = ErrorCode.DAILY_LIMIT


class BotDailyLimitError(LimitReachedError):
    """``MAX_RUNS_PER_DAY``: the whole bot's runs today."""

    code = ErrorCode.BOT_DAILY_LIMIT


class AccessDeniedError(GenerationError):
    """``ACCESS=allowlist`` and the user is neither allowed nor in an allowed group."""

    code = ErrorCode.ACCESS_DENIED


class BannedError(GenerationError):
    """A banned user. ``first`` is True once per ban: the handler replies then, and stays
    silent afterwards."""

    code = ErrorCode.BANNED

    def __init__(self, message: str = "", *, first: bool = False) -> None:
        super().__init__(message, first=first)
        self.first = first


class PaidAccessOnlyError(GenerationError):
    """``ACCESS=paid`` and the user has neither paid credits nor a purchase."""

    code = ErrorCode.PAID_ACCESS_ONLY


class PaymentInvalidError(GenerationError):
    """A pre-checkout (or payment) whose payload does not name an existing package for that
    user at that price. ``reason`` is for logs: signature, user, package, amount, currency."""

    code = ErrorCode.PAYMENT_INVALID

    def __init__(self, message: str = "", *, reason: str = "payload") -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


class PaymentNotFoundError(GenerationError):
    code = ErrorCode.PAYMENT_NOT_FOUND


class AlreadyRefundedError(GenerationError):
    code = ErrorCode.ALREADY_REFUNDED


class CreditsSpentError(GenerationError):
    """A refund would take back more credits than the user has left (``available`` of
    ``credits``); the admin may insist with ``force``."""

    code = ErrorCode.CREDITS_SPENT

    def __init__(
        self, message: str = "", *, credits: int = 0, available: int = 0, user_id: int = 0
    ) -> None:
        super().__init__(message, credits=credits, available=available, user_id=user_id)
        self.credits = credits
        self.available = available
        self.user_id = user_id


ERRORS_BY_CODE: dict[ErrorCode, type[GenerationError]] = {
    cls.code: cls
    for cls in (
        AuthFailedError,
        DeploymentNotFoundError,
        InvalidInputError,
        RateLimitedError,
        BackendUnavailableError,
        NoDeploymentsAvailableError,
        RunFailedError,
        RunTimeoutError,
        CancelledError,
        InsufficientBalanceError,
        QueueFullError,
        RunNotFoundError,
        BackendError,
        SubmitUncertainError,
        InterruptedError_,
        WorkflowInvalidError,
        OutputRefusedError,
        OutputDownloadError,
        QueueBusyError,
        DailyLimitError,
        BotDailyLimitError,
        AccessDeniedError,
        BannedError,
        PaidAccessOnlyError,
        PaymentInvalidError,
        PaymentNotFoundError,
        AlreadyRefundedError,
        CreditsSpentError,
    )
}


def error_from_code(code: str, message: str = "") -> GenerationError:
    """Rebuild an error from a stored code (e.g. a run's ``error_code`` column)."""
    try:
        cls = ERRORS_BY_CODE[ErrorCode(code)]
    except ValueError:
        cls = BackendError
    return cls(message)
