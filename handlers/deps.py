"""What handlers need from the composition root, in one typed object.

``bot/app.py`` builds a :class:`Services` in ``post_init`` and stores it in
``application.bot_data["services"]``; handlers reach it as ``context.services`` (see
``handlers/context.py``). Handlers never import ``bot`` (bot → handlers → generation, storage).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from generation.billing import AccessMode, StarPackage
from generation.custom_types import CustomTypeRegistry
from handlers.redelivery import RecentMessages

if TYPE_CHECKING:  # imports for type checkers only; keeps handler import cheap
    import httpx
    from telegram import InlineKeyboardMarkup
    from telegram.ext import Application

    from generation.billing import PayloadSigner
    from generation.models import RunRecord
    from generation.ports import Backend
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
    output_url_allowlist: frozenset[str] = frozenset()  # OUTPUT_URL_ALLOWLIST
    trusted_output_urls: tuple[str, ...] = ()  # the backend's own origin(s)
    delivery_retry_window: float = 900.0  # DELIVERY_RETRY_WINDOW, seconds
    # Charging for generations (handlers/payments.py, handlers/access.py)
    star_packages: tuple[StarPackage, ...] = ()
    free_daily_credits: int = 0
    max_runs_per_user_per_day: int | None = None
    max_runs_per_day: int | None = None
    access: AccessMode = AccessMode.OPEN
    paysupport_text: str | None = None  # owner-set; None: the localized default
    terms_text: str | None = None


class ProgressView(Protocol):
    """The progress messages (``handlers/progress.py``), as the submit seam and delivery use it."""

    def initial_text(self, run: RunRecord, lang: str) -> str: ...

    def cancel_markup(self, run_id: str, lang: str) -> InlineKeyboardMarkup: ...

    def register(
        self, run: RunRecord, message_id: int, text: str, *, has_button: bool = True
    ) -> None: ...

    async def show(
        self, run_id: str, key: str, *, final: bool = False, **params: object
    ) -> None: ...


class OriginalSender(Protocol):
    """Result delivery (``handlers/delivery.py``), as the result buttons use it."""

    async def send_original(self, run: RunRecord, lang: str) -> int: ...

    async def download(self, url: str) -> bytes: ...


@dataclass(slots=True)
class Services:
    storage: Storage
    generation: GenerationService
    i18n: Translator
    config: HandlerConfig
    backend: Backend | None = None  # /deployment add asks it for the declared inputs
    # Output files are downloaded through this transport (a test double, or the preview
    # backend's in-process files); None: the network.
    http_transport: httpx.AsyncBaseTransport | None = None
    backend_label: str | None = None  # e.g. "preview": progress texts say so
    progress: ProgressView | None = None  # set by ProgressRenderer.attach
    delivery: OriginalSender | None = None  # set by Delivery.attach
    # Types admins added (``/deployment add ANIMATE <id>`` → ``/animate``); refreshed by
    # handlers/custom_commands.py after deployments or /type options change.
    custom_types: CustomTypeRegistry = field(default_factory=CustomTypeRegistry)
    # Re-publishes the command menu (set_my_commands) with the custom types; set by bot/.
    publish_commands: Callable[[], Awaitable[None]] | None = None
    signer: PayloadSigner | None = None  # signs Stars invoice payloads (None: no /buy)
    # messages this process started runs for (handlers/redelivery.py)
    recent_messages: RecentMessages = field(default_factory=RecentMessages)


def services_of(application: Application) -> Services:
    return application.bot_data[SERVICES_KEY]
