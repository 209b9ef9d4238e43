"""Admin commands for the checkpoint catalogue: ``/checkpoints``, ``/checkpoint add <name>
[family]``, ``/checkpoint remove <name>``. The /settings checkpoint menu offers exactly these
(``handlers/keyboards.py: checkpoint_keyboard``). A user who picked a checkpoint that is later
removed keeps it until they choose another one."""

from __future__ import annotations

from collections.abc import Sequence

from handlers.admin_base import Reply, UsageError, admin_only
from handlers.deps import Services
from storage.checkpoints import MAX_NAME_LENGTH
from storage.errors import DuplicateError, ValidationError


@admin_only
async def checkpoints_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    checkpoints = await services.storage.checkpoints.list_checkpoints()
    if not checkpoints:
        await reply("checkpoint.list_empty")
        return
    unknown = reply.t("checkpoint.family_unknown")
    lines = [reply.t("checkpoint.list_title", count=len(checkpoints))]
    lines += [
        reply.t("checkpoint.line", name=c.name, family=c.family or unknown) for c in checkpoints
    ]
    await reply.text("\n".join(lines))


@admin_only
async def checkpoint_command(
    reply: Reply, services: Services, args: Sequence[str], admin_id: int
) -> None:
    usage = "checkpoint.usage"
    if not args:
        raise UsageError(usage)
    verb, rest = args[0].lower(), args[1:]
    store = services.storage.checkpoints
    if verb == "remove" and len(rest) == 1:
        if not await store.remove(rest[0]):
            await reply("checkpoint.not_found", name=rest[0])
            return
        await reply("checkpoint.removed", name=rest[0])
        return
    if verb != "add" or not 1 <= len(rest) <= 2:
        raise UsageError(usage)
    try:
        added = await store.add(rest[0], rest[1] if len(rest) > 1 else None)
    except DuplicateError:
        await reply("checkpoint.exists", name=rest[0])
        return
    except ValidationError:
        await reply("checkpoint.invalid", max=MAX_NAME_LENGTH)
        return
    family = added.family or reply.t("checkpoint.family_unknown")
    await reply("checkpoint.added", name=added.name, family=family)


CHECKPOINT_COMMANDS = {"checkpoints": checkpoints_command, "checkpoint": checkpoint_command}
