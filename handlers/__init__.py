"""Telegram side of the bot. :func:`register` adds every handler in the right order."""

from __future__ import annotations

import importlib
import logging

from telegram import Update
from telegram.ext import Application, CallbackQueryHandler, MessageHandler, filters

from handlers.common import Context, caller_of, reply
from handlers.deps import SERVICES_KEY, get_services

log = logging.getLogger(__name__)

# (module, function) of the colleagues' registrations, called when the module exists.
_OPTIONAL = (
    ("handlers.menus", "register_menus"),
    ("handlers.admin", "register_admin"),
    ("handlers.account", "register_account"),
)


async def unknown_command(update: Update, context: Context) -> None:
    """A command nobody handles: say so (in groups only when addressed to us by name)."""
    message = update.effective_message
    if message is None or message.text is None:
        return
    first = message.text.split(maxsplit=1)[0]
    if message.chat.type != "private":
        username = (context.bot.username or "").lower()
        if "@" not in first or first.split("@", 1)[1].lower() != username:
            return
    caller = await caller_of(update, context)
    if caller is not None:
        await reply(message, get_services(context), caller.lang, "common.unknown_command")


async def unknown_message(update: Update, context: Context) -> None:
    """Anything else in a private chat (a sticker, a stray photo, text): a hint, not silence."""
    message = update.effective_message
    caller = await caller_of(update, context)
    if message is not None and caller is not None:
        await reply(message, get_services(context), caller.lang, "common.unknown_message")


async def stale_button(update: Update, context: Context) -> None:
    from handlers.common import answer_query

    caller = await caller_of(update, context)
    services = get_services(context)
    lang = caller.lang if caller else services.i18n.resolve_language(None, None)
    await answer_query(update, services, lang, "common.stale_button")


def _attach_renderers(application: Application) -> None:
    """Progress rendering and result delivery need the services, so they attach when the
    composition root has put them into ``bot_data`` (it calls ``register`` in post_init)."""
    services = application.bot_data.get(SERVICES_KEY)
    if services is None or "progress" in services.extras:
        return
    from handlers.progress import ProgressRenderer

    if "http_transport" not in services.extras:
        # Tests plug a ComfyDeploy double's transport into the composition root; output
        # files are served by the same double, so delivery downloads through it too.
        infra = application.bot_data.get("infra")
        transport = getattr(infra, "comfy_transport", None)
        if transport is not None:
            services.extras["http_transport"] = transport
    ProgressRenderer(application, services).attach()


def register(application: Application) -> None:
    """Add all handlers, most specific first; the catch-alls come last."""
    from handlers.cancel import cancel_fallbacks, register_cancel
    from handlers.delivery import register_result_buttons
    from handlers.errors import on_error
    from handlers.generate import build_flows, register_generate

    application.add_handler(build_flows(application, cancel_fallbacks()))
    register_generate(application)
    register_cancel(application)
    register_result_buttons(application)
    for module_name, function in _OPTIONAL:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            log.warning("%s is not available yet; its commands are not registered", module_name)
            continue
        getattr(module, function)(application)
    application.add_handler(MessageHandler(filters.COMMAND, unknown_command))
    application.add_handler(
        MessageHandler(
            filters.ChatType.PRIVATE & ~filters.COMMAND & ~filters.StatusUpdate.ALL,
            unknown_message,
        )
    )
    application.add_handler(CallbackQueryHandler(stale_button))
    application.add_error_handler(on_error)
    _attach_renderers(application)
