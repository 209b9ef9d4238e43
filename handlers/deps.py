"""What handlers need from the composition root, in one typed object.

``bot/`` builds a :class:`Services` in ``post_init`` and stores it in
``application.bot_data["services"]``; handlers fetch it with :func:`get_services`.
Handlers never import ``bot`` (dependency direction: bot → handlers → generation, storage).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imports for type checkers only; keeps handler import cheap
    from generation.service import GenerationService
    from handlers.i18n import Translator
    from storage import Storage

SERVICES_KEY = "services"


@dataclass(slots=True)
class HandlerConfig:
    admin_ids: frozenset[int] = frozenset()
    starting_balance: int = 0
    progress_edit_interval: float = 1.5  # seconds; groups use max(this, 3.0)
    group_edit_interval: float = 3.0
    conversation_timeout: float = 300.0
    max_active_per_user: int = 2
    max_queued_per_user: int = 5
    max_in_flight: int = 10


@dataclass(slots=True)
class Services:
    storage: Storage
    generation: GenerationService
    i18n: Translator
    config: HandlerConfig = field(default_factory=HandlerConfig)
    extras: dict[str, Any] = field(default_factory=dict)  # progress renderer, metrics, ...


def get_services(context: Any) -> Services:
    """Services from a PTB ``CallbackContext`` (or an ``Application``)."""
    app = getattr(context, "application", context)
    return app.bot_data[SERVICES_KEY]
