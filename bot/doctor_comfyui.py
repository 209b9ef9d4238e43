"""Doctor checks of self-hosted ComfyUI: every server in ``COMFYUI_URL`` answers
``GET /object_info`` (read-only), and every registered workflow (``/workflow add``) has all its
node classes on at least one of them and declares the inputs its type needs
(:mod:`generation.contract`). Server addresses are printed without user info."""

from __future__ import annotations

from typing import Any

import httpx

from bot.config import Settings
from bot.doctor_checks import CONTRACT_DOC, Check, DoctorEnv, why
from generation.comfyui.client import ComfyUIClient, safe_url
from generation.comfyui.graph import analyse
from generation.contract import missing_inputs
from generation.errors import GenerationError
from generation.models import DeploymentConfig, WorkflowRecord


async def _object_info(settings: Settings, env: DoctorEnv, url: str) -> dict[str, Any]:
    auth = settings.comfyui_auth.get_secret_value() if settings.comfyui_auth else None
    client = ComfyUIClient(
        url,
        auth=auth,
        transport=env.comfyui_transport,
        connect_timeout=env.timeout,
        read_timeout=env.timeout,
    )
    try:
        return await client.object_info()
    finally:
        await client.aclose()


async def _servers(settings: Settings, env: DoctorEnv) -> tuple[list[Check], list[dict[str, Any]]]:
    checks: list[Check] = []
    infos: list[dict[str, Any]] = []
    for url in settings.comfyui_url:
        name = f"ComfyUI {safe_url(url)}"
        try:
            info = await _object_info(settings, env, url)
        except (GenerationError, httpx.HTTPError) as exc:
            checks.append(
                Check(
                    name,
                    False,
                    f"no answer to GET /object_info: {why(exc)}",
                    "start ComfyUI (python main.py --listen) or correct COMFYUI_URL; behind an "
                    "authenticating proxy set COMFYUI_AUTH",
                )
            )
            continue
        infos.append(info)
        checks.append(Check(name, True, f"answers; {len(info)} node classes"))
    return checks, infos


def _workflow_check(record: WorkflowRecord, infos: list[dict[str, Any]], enabled: bool) -> Check:
    name = f"workflow {record.name} ({record.type})"
    if not infos:
        return Check(
            name, False, "not checked: no ComfyUI server answered", "fix the ComfyUI lines above"
        )
    unknown = [analyse(record.graph, object_info=info).unknown_classes for info in infos]
    if all(unknown):
        shortest = min(unknown, key=len)
        return Check(
            name,
            False,
            f"no server has the node classes {', '.join(shortest)}",
            "install the custom nodes that provide them on your ComfyUI (e.g. with "
            "ComfyUI-Manager) and restart it",
        )
    missing = missing_inputs(record.type, record.inputs)
    if missing:
        return Check(
            name,
            False,
            f"declares {', '.join(record.inputs) or 'no inputs'}; {record.type} needs "
            f"{', '.join(missing)}",
            f"add an input for each ({CONTRACT_DOC}; a node titled with the input name works "
            f"too), then /workflow add it again",
        )
    state = "" if enabled else " (disabled: not used)"
    return Check(name, True, f"node classes present, declares {', '.join(record.inputs)}{state}")


async def comfyui_checks(
    settings: Settings,
    env: DoctorEnv,
    configured: list[DeploymentConfig],
    workflows: list[WorkflowRecord],
) -> tuple[list[Check], set[str]]:
    """The servers and the workflows; the types that can run on ComfyUI."""
    if not settings.comfyui_url:
        return [
            Check(
                "ComfyUI",
                False,
                "GENERATION_BACKEND=comfyui but COMFYUI_URL is not set",
                "set COMFYUI_URL to your ComfyUI server(s), e.g. http://127.0.0.1:8188",
            )
        ], set()
    checks, infos = await _servers(settings, env)
    enabled = {d.deployment_id: d.enabled for d in configured}
    runnable: set[str] = set()
    for record in workflows:
        on = enabled.get(record.deployment_id, False)
        check = _workflow_check(record, infos, on)
        checks.append(check)
        if check.ok and on:
            runnable.add(record.type)
    return checks, runnable
