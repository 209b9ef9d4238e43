"""Small input checks shared by the repositories. All raise :class:`ValidationError`."""

from __future__ import annotations

import json
import math
from typing import Any

from storage.errors import ValidationError


def require_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """An ``int`` (``bool`` and ``float`` refused), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValidationError(f"{name} must be >= {minimum}, got {value}")
    return value


def require_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValidationError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def require_text(value: Any, name: str, *, max_length: int = 256) -> str:
    """A non-blank string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{name} must be a non-empty string")
    value = value.strip()
    if len(value) > max_length:
        raise ValidationError(f"{name} is longer than {max_length} characters")
    return value


def require_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be true or false, got {value!r}")
    return value


def dump_json(value: Any, name: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} is not JSON-serializable: {exc}") from exc


def load_json(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"{name} holds malformed JSON: {exc}") from exc
