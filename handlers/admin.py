"""Admin commands: deployments, LoRAs, prices, balances, stats (checkpoints:
``handlers/admin_checkpoints.py``).

Only ``ADMIN_IDS`` may use them; anyone else gets a polite refusal and nothing changes.
Arguments are validated before anything is written; a mistake gets the command's usage.

Decisions:
- ``/setbalance`` and ``/grant`` for a user id the bot has not seen yet create that user
  (with the starting balance, as if they had pressed /start) and then apply the change, so an
  admin can fund someone before their first message.
- ``/grant`` only adds (amount > 0); ``/setbalance`` sets an exact total ≥ 0 (credits on hold
  are part of the total, so it cannot go below them). Both record the admin as the ledger actor.
- ``/deployment add`` stores the deployment first and then asks the backend (if one is in
  ``services.backend``) for the declared inputs; when that is impossible the
  deployment is still added and the reply says the inputs could not be checked.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from telegram.ext import Application, CommandHandler

from generation.contract import missing_inputs
from generation.models import DeploymentRole
from handlers.admin_base import (
    Handler,
    Reply,
    UsageError,
    admin_only,
    parse_float,
    parse_int,
    parse_type,
    parse_uuid,
    quoted_args,
)
from handlers.admin_checkpoints import CHECKPOINT_COMMANDS
from handlers.custom_commands import after_type_change
from handlers.deployment_list import compact_list, inputs_text
from handlers.deps import Services
from handlers.user_target import TargetError, resolve_target
from storage.errors import DuplicateError, NotFoundError, ValidationError

log = logging.getLogger(__name__)

LORA_NAME_RE = re.compile(r"[^\s:<>]{1,128}")  # it goes into <lora:NAME:WEIGHT>
FAMILY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,16}")
MAX_WEIGHT = 1000
BACKEND_TIMEOUT = 15.0  # seconds for the optional list_deployments check


@admin_only
async def deployments_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    """A compact list: one line per deployment; ``/deployment inputs <id>`` shows inputs."""
    deployments = await services.storage.deployments.list_deployments()
    if not deployments:
        await reply("admin.no_deployments")
        return
    await reply.text(compact_list(services.i18n.t, reply.lang, deployments))


async def _declared_inputs(services: Services, deployment_id: str) -> tuple[str, ...] | None:
    """The deployment's input names from the backend; ``None`` when they cannot be known."""
    backend = services.backend
    if backend is None:
        return None
    try:
        infos = await asyncio.wait_for(backend.list_deployments(), BACKEND_TIMEOUT)
    except Exception as exc:  # any failure only means "could not check"
        log.warning("list_deployments failed: %s", type(exc).__name__)
        return None
    for info in infos:
        if str(info.id).lower() == deployment_id:
            return tuple(info.inputs)
    return None


async def _deployment_add(reply: Reply, services: Services, args: Sequence[str]) -> None:
    usage = "admin.usage.deployment"
    if not 2 <= len(args) <= 4:
        raise UsageError(usage)
    type_ = parse_type(args[0], usage)
    deployment_id = parse_uuid(args[1], "admin.bad_uuid")
    role = args[2].lower() if len(args) > 2 else DeploymentRole.DEFAULT.value
    if role not in {r.value for r in DeploymentRole}:
        raise UsageError(usage)
    weight = parse_int(args[3], usage, minimum=1, maximum=MAX_WEIGHT) if len(args) > 3 else 1
    try:
        await services.storage.deployments.add(
            type_, deployment_id, role=DeploymentRole(role), weight=weight
        )
    except DuplicateError:
        await reply("admin.deployment_exists", id=deployment_id)
        return
    except ValidationError:
        raise UsageError(usage) from None
    inputs = await _declared_inputs(services, deployment_id)
    if inputs is None:
        await reply(
            "admin.deployment_added_unchecked",
            type=type_,
            id=deployment_id,
            role=role,
            weight=weight,
        )
        return
    await services.storage.deployments.set_inputs(deployment_id, list(inputs))
    text = reply.t(
        "admin.deployment_added",
        type=type_,
        id=deployment_id,
        role=role,
        weight=weight,
        inputs=", ".join(inputs) or "—",
    )
    if missing := missing_inputs(type_, inputs):  # the workflow contract (docs/)
        text += "\n" + reply.t("contract.missing_inputs", type=type_, missing=", ".join(missing))
    await reply.text(text)


@admin_only
async def deployment_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "admin.usage.deployment"
    if not args:
        raise UsageError(usage)
    verb, rest = args[0].lower(), args[1:]
    if verb == "add":
        await _deployment_add(reply, services, rest)
        await after_type_change(services)
        return
    if verb not in ("remove", "enable", "disable", "inputs") or len(rest) != 1:
        raise UsageError(usage)
    deployment_id = parse_uuid(rest[0], "admin.bad_uuid")
    store = services.storage.deployments
    if verb == "inputs":
        found = await store.get(deployment_id)
        if found is None:
            await reply("admin.deployment_not_found", id=deployment_id)
            return
        await reply.text(inputs_text(services.i18n.t, reply.lang, found))
        return
    try:
        if verb == "remove":
            if not await store.remove(deployment_id):
                raise NotFoundError(deployment_id)
        else:
            await store.set_enabled(deployment_id, verb == "enable")
    except NotFoundError:
        await reply("admin.deployment_not_found", id=deployment_id)
        return
    await after_type_change(services)  # a type may have gained or lost its command
    await reply(f"admin.deployment_{verb}d", id=deployment_id)


@admin_only
async def loras_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    loras = await services.storage.loras.list_loras()
    if not loras:
        await reply("admin.no_loras")
        return
    lines = [reply.t("admin.loras_title", count=len(loras))]
    for lora in loras:
        lines.append(
            reply.t(
                "admin.lora_line",
                name=lora.name,
                triggers=", ".join(lora.triggers),
                weight=lora.default_weight,
                min_balance=lora.min_balance,
                family=lora.family or "—",
            )
        )
    await reply.text("\n".join(lines))


@admin_only
async def lora_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "admin.usage.lora"
    args = quoted_args(reply.update, args, usage)
    if not args:
        raise UsageError(usage)
    verb, rest = args[0].lower(), args[1:]
    if verb == "remove" and len(rest) == 1:
        if not await services.storage.loras.remove(rest[0]):
            await reply("admin.lora_not_found", name=rest[0])
            return
        await reply("admin.lora_removed", name=rest[0])
        return
    if verb != "add" or not 2 <= len(rest) <= 5 or not LORA_NAME_RE.fullmatch(rest[0]):
        raise UsageError(usage)
    name = rest[0]
    triggers = tuple(t.strip() for t in rest[1].split(",") if t.strip())
    if not triggers:
        raise UsageError(usage)
    weight = parse_float(rest[2], usage) if len(rest) > 2 else 1.0
    min_balance = parse_int(rest[3], usage, minimum=0) if len(rest) > 3 else 0
    family = rest[4].upper() if len(rest) > 4 else None
    if family is not None and not FAMILY_RE.fullmatch(family):
        raise UsageError(usage)
    try:
        await services.storage.loras.add(
            name, list(triggers), default_weight=weight, min_balance=min_balance, family=family
        )
    except DuplicateError:
        await reply("admin.lora_exists", name=name)
        return
    except ValidationError:
        raise UsageError(usage) from None
    await reply(
        "admin.lora_added",
        name=name,
        triggers=", ".join(triggers),
        weight=weight,
        min_balance=min_balance,
        family=family or "—",
    )


@admin_only
async def price_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "admin.usage.price"
    if len(args) != 2:
        raise UsageError(usage)
    type_ = parse_type(args[0], usage)
    credits = parse_int(args[1], usage, minimum=0)
    await services.storage.prices.set(type_, credits)
    await reply("admin.price_set", type=type_, credits=credits)


async def _target(
    reply: Reply, services: Services, args: Sequence[str], usage: str
) -> tuple[int, list[str]] | None:
    """The user named by ``args`` (id, @username seen, or the replied-to author) and the
    amount argument; an unknown user is refused, never created."""
    message = reply.update.effective_message
    replied = message.reply_to_message if message is not None else None
    author = replied.from_user if replied is not None else None
    try:
        target = await resolve_target(
            services.storage.directory,
            args,
            other_args=1,
            reply_user_id=author.id if author is not None else None,
            reply_is_bot=bool(author is not None and author.is_bot),
        )
    except TargetError as exc:
        if exc.key == "users.missing":
            raise UsageError(usage) from None
        await reply(exc.key, **exc.params)
        return None
    if len(target.rest) != 1:
        raise UsageError(usage)
    return target.user.id, target.rest


@admin_only
async def setbalance_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "admin.usage.setbalance"
    if not 1 <= len(args) <= 2:
        raise UsageError(usage)
    found = await _target(reply, services, args, usage)
    if found is None:
        return
    user_id, (amount_text,) = found
    amount = parse_int(amount_text, usage, minimum=0)
    ledger = services.storage.ledger
    try:  # the amount is the total; credits on hold stay reserved for running generations
        await ledger.set_balance(user_id, amount, actor=admin_id)
    except ValidationError:
        held = await ledger.get_held(user_id)
        await reply("admin.balance_below_hold", user_id=user_id, held=held)
        return
    balance, held = await ledger.get_balance(user_id), await ledger.get_held(user_id)
    await reply("admin.balance_set", user_id=user_id, balance=balance, held=held)


@admin_only
async def grant_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "admin.usage.grant"
    if not 1 <= len(args) <= 2:
        raise UsageError(usage)
    found = await _target(reply, services, args, usage)
    if found is None:
        return
    user_id, (amount_text,) = found
    amount = parse_int(amount_text, usage, minimum=1)
    await services.storage.ledger.credit(user_id, amount, reason="admin_grant", actor=admin_id)
    balance = await services.storage.ledger.get_balance(user_id)
    await reply("admin.granted", user_id=user_id, amount=amount, balance=balance)


def _queue_figures(services: Services) -> tuple[int, int] | None:
    """(queued, in flight) from the generation service's scheduler."""
    scheduler = services.generation.scheduler
    try:
        return int(scheduler.queued_count()), int(scheduler.in_flight)
    except Exception:  # an optional figure; never fail /stats over it
        return None


async def usage_lines(reply: Reply, services: Services) -> list[str]:
    """What /stats adds: runs today per type, credits spent, Stars, top users."""
    stats = await services.storage.usage.stats()
    runs = ", ".join(f"{type_}: {n}" for type_, n in stats.runs_today.items()) or "—"
    top = ", ".join(
        reply.t("pay.stats_top_line", user_id=uid, runs=n, credits=spent)
        for uid, n, spent in stats.top_users
    )
    lines = [
        reply.t("pay.stats_runs", runs=runs),
        reply.t(
            "pay.stats_credits",
            spent=stats.credits_spent_today,
            free=stats.free_credits_spent_today,
        ),
        reply.t(
            "pay.stats_stars",
            today=stats.stars_today,
            week=stats.stars_week,
            total=stats.stars_total,
            refunded=stats.refunded_stars_total,
        ),
    ]
    if top:
        lines.append(reply.t("pay.stats_top", users=top))
    return lines


@admin_only
async def stats_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    storage = services.storage
    by_status = await storage.runs.count_by_status()
    deployments = await storage.deployments.list_deployments()
    runs = ", ".join(f"{status}: {n}" for status, n in sorted(by_status.items())) or "—"
    lines = [
        reply.t(
            "admin.stats",
            users=await storage.users.count(),
            runs=runs,
            deployments=len(deployments),
            enabled=sum(1 for d in deployments if d.enabled),
        )
    ]
    if (queue := _queue_figures(services)) is not None:
        lines.append(reply.t("admin.stats_queue", queued=queue[0], in_flight=queue[1]))
    lines.extend(await usage_lines(reply, services))
    await reply.text("\n".join(lines))


ADMIN_COMMANDS: dict[str, Handler] = {
    "deployments": deployments_command,
    "deployment": deployment_command,
    "loras": loras_command,
    "lora": lora_command,
    "price": price_command,
    "setbalance": setbalance_command,
    "grant": grant_command,
    "stats": stats_command,
    **CHECKPOINT_COMMANDS,
}


def register_admin(application: Application) -> None:
    for name, callback in ADMIN_COMMANDS.items():
        application.add_handler(CommandHandler(name, callback))
