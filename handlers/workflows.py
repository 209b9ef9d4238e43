"""Self-hosted ComfyUI workflows, for admins (README "Your own ComfyUI").

* ``/workflow add <TYPE> [name]`` as the caption of an API-format JSON document: the reply
  names the workflow, every input found and the node it feeds, and what is wrong (the UI
  format is recognised and explained; node classes the server lacks per ``GET /object_info``;
  no output node). A workflow with blocking problems is not stored.
* ``/workflows`` lists them; ``/workflow remove|enable|disable <name>`` (runs in flight
  finish).
* :class:`WorkflowAlerts` tells every admin the node and input when a run fails with
  ``WORKFLOW_INVALID`` (users only read "the workflow is misconfigured, admins are told").
"""

from __future__ import annotations

import logging
import re
import shlex
import time
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

from telegram import Bot, Update
from telegram.error import TelegramError
from telegram.ext import Application, CommandHandler, MessageHandler, filters

from generation.comfyui.graph import Analysis, GraphError, parse_workflow
from generation.errors import ErrorCode
from generation.events import GenerationEvent, GenerationFailed
from generation.types import resolve_type
from handlers.admin_base import Reply, UsageError, admin_only, parse_type
from handlers.common import addressed_to_us
from handlers.context import BotContext
from handlers.custom_commands import after_type_change
from handlers.deps import Services
from storage.errors import NotFoundError, ValidationError
from storage.workflows import normalize_name

log = logging.getLogger(__name__)

MAX_WORKFLOW_BYTES = 2_000_000
_CAPTION = re.compile(r"^/workflow(?:@\w+)?(?:\s|$)", re.IGNORECASE)
# Problems that make a workflow unusable; the others are warnings.
_BLOCKING = (
    "unknown_class",
    "no_output_node",
    "dangling_link",
    "external_without_input_id",
    "title_widget_ambiguous",
    "missing_input",
)
# Inputs a type needs from the workflow (the rest may keep their defaults).
_NEEDS = {"image": "input_image", "mask": "input_mask"}


def _usage() -> UsageError:
    return UsageError("workflow.usage")


def _problem_text(reply: Reply, problem: str) -> str:
    code, _, detail = problem.partition(":")
    key = f"workflow.problem.{code}"
    return reply.t(key, detail=detail.replace(":", " ")) if code else problem


def _inputs_text(reply: Reply, analysis: Analysis) -> str:
    lines = []
    for item in analysis.inputs:
        targets = ", ".join(f"{c.node_id} {c.class_type}.{c.input_name}" for c in item.consumers)
        key = "workflow.input_line_title" if item.via_title else "workflow.input_line"
        lines.append(
            reply.t(
                key,
                name=item.name,
                node=item.node_id,
                targets=targets or reply.t("workflow.feeds_nothing"),
            )
        )
    return "\n".join(lines) or reply.t("workflow.no_inputs")


def _missing_for_type(type_: str, analysis: Analysis) -> list[str]:
    spec = resolve_type(type_).base
    names = set(analysis.input_names)
    missing = []
    if spec.requires_image and _NEEDS["image"] not in names:
        missing.append(f"missing_input:{_NEEDS['image']}")
    if spec.requires_mask and _NEEDS["mask"] not in names:
        missing.append(f"missing_input:{_NEEDS['mask']}")
    return missing


def _name_from(args: Sequence[str], filename: str | None) -> str:
    raw = args[2] if len(args) > 2 else PurePath(filename or "workflow").stem
    cleaned = re.sub(r"[^a-z0-9_.-]+", "-", raw.lower()).strip("-.") or "workflow"
    return normalize_name(cleaned[:48])


async def workflow_document(update: Update, context: BotContext) -> None:
    """A document captioned ``/workflow add <TYPE> [name]`` (admins only)."""
    message = update.effective_message
    tg_user = update.effective_user
    if message is None or tg_user is None or not _CAPTION.match(message.caption or ""):
        return
    if not addressed_to_us(message.caption, context):  # /workflow@otherbot in a group
        return
    services = context.services
    caller = await context.caller()
    if caller is None:
        return
    reply = Reply(update, services, caller.lang)
    if tg_user.id not in services.config.admin_ids:
        await reply("admin.refused")
        return
    try:
        args = shlex.split(message.caption or "")[1:]
    except ValueError:
        args = []
    try:
        await _add(reply, services, context.bot, message.document, args)
    except UsageError as exc:
        await reply(exc.key)


async def _add(
    reply: Reply, services: Services, bot: Bot, document: Any, args: Sequence[str]
) -> None:
    if len(args) < 2 or args[0].lower() != "add" or len(args) > 3 or document is None:
        raise _usage()
    type_ = parse_type(args[1], "workflow.usage")
    try:
        name = _name_from(args, document.file_name)
    except ValidationError:
        raise UsageError("workflow.bad_name") from None
    check = getattr(services.backend, "check_workflow", None)
    if check is None:
        await reply("workflow.no_server")
        return
    if document.file_size is not None and document.file_size > MAX_WORKFLOW_BYTES:
        await reply("workflow.refused.too_large")
        return
    data = bytes(await (await bot.get_file(document.file_id)).download_as_bytearray())
    try:
        graph = parse_workflow(data)
        analysis: Analysis = await check(graph)
    except GraphError as exc:
        await reply(f"workflow.refused.{exc.code}", detail=exc.message)
        return
    problems = list(analysis.problems) + _missing_for_type(type_, analysis)
    blocking = [p for p in problems if p.split(":", 1)[0] in _BLOCKING]
    inputs = _inputs_text(reply, analysis)
    problem_lines = "\n".join(_problem_text(reply, p) for p in problems) or reply.t(
        "workflow.no_problems"
    )
    if blocking:
        await reply(
            "workflow.rejected", name=name, type=type_, inputs=inputs, problems=problem_lines
        )
        return
    record = await services.storage.workflows.add(
        type_, name, graph, [i.to_dict() for i in analysis.inputs], replace=True
    )
    await after_type_change(services)
    await reply(
        "workflow.added",
        name=record.name,
        type=type_,
        id=record.deployment_id,
        inputs=inputs,
        problems=problem_lines,
    )


@admin_only
async def workflow_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    """``/workflow remove|enable|disable <name>``; ``add`` only as a document's caption."""
    if len(args) != 2 or args[0].lower() not in ("remove", "enable", "disable"):
        raise _usage()
    verb = args[0].lower()
    try:
        name = normalize_name(args[1])
    except ValidationError:
        raise UsageError("workflow.bad_name") from None
    store = services.storage.workflows
    try:
        if verb == "remove":
            if not await store.remove(name):
                raise NotFoundError(name)
        else:
            await services.storage.deployments.set_enabled(f"workflow:{name}", verb == "enable")
    except NotFoundError:
        await reply("workflow.not_found", name=name)
        return
    await after_type_change(services)
    await reply(f"workflow.{verb}d", name=name)


@admin_only
async def workflows_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    workflows = await services.storage.workflows.list_workflows()
    if not workflows:
        await reply("workflow.none")
        return
    configs = {d.deployment_id: d for d in await services.storage.deployments.list_deployments()}
    lines = []
    for wf in workflows:
        config = configs.get(wf.deployment_id)
        state = reply.t(
            "workflow.state_on" if config is None or config.enabled else "workflow.state_off"
        )
        lines.append(
            reply.t(
                "workflow.list_line",
                name=wf.name,
                type=wf.type,
                state=state,
                weight=config.weight if config else 1,
                inputs=", ".join(wf.inputs) or "—",
            )
        )
    await reply.text("\n".join([reply.t("workflow.list_title"), *lines]))


class WorkflowAlerts:
    """Tell the admins which node and input broke a run (``WORKFLOW_INVALID``)."""

    def __init__(
        self,
        bot: Bot,
        services: Services,
        *,
        quiet_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bot = bot
        self._services = services
        self._unsubscribe: Callable[[], None] | None = None
        # one alert per workflow and problem per ``quiet_seconds``: a broken workflow that
        # every user hits must not flood the admins
        self._quiet = quiet_seconds
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}

    def attach(self) -> WorkflowAlerts:
        self._unsubscribe = self._services.generation.bus.subscribe(
            self._on_failed, GenerationFailed
        )
        return self

    async def detach(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def _on_failed(self, event: GenerationEvent) -> None:
        if (
            not isinstance(event, GenerationFailed)
            or event.error_code != ErrorCode.WORKFLOW_INVALID
        ):
            return
        services = self._services
        run = await services.storage.runs.get_run(event.run_id)
        where = run.deployment_id if run is not None and run.deployment_id else "?"
        type_ = run.type if run is not None else "?"
        key, now = (where, event.message), self._clock()
        if now - self._last.get(key, -self._quiet) < self._quiet:
            return
        self._last[key] = now
        for admin_id in sorted(services.config.admin_ids):
            user = await services.storage.users.get(admin_id)
            lang = services.i18n.resolve_language(
                user.settings.language if user else None, user.language if user else None
            )
            text = services.i18n.t(
                lang, "workflow.admin_alert", type=type_, workflow=where, detail=event.message[:500]
            )
            try:
                await self._bot.send_message(admin_id, text, parse_mode=None)
            except TelegramError as exc:  # an admin who never started the bot, a blocked bot
                log.info("workflow alert to admin %s failed: %s", admin_id, exc)


def register_workflows(application: Application) -> None:  # type: ignore[type-arg]
    application.add_handler(
        MessageHandler(filters.Document.ALL & filters.CaptionRegex(_CAPTION), workflow_document)
    )
    application.add_handler(CommandHandler("workflow", workflow_command))
    application.add_handler(CommandHandler("workflows", workflows_command))
