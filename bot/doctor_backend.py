"""Doctor checks of the generation side: the backend's key, every configured deployment
(exists, declares what its type needs — :mod:`generation.contract`) and every command's type
has somewhere to run. Read-only: ComfyDeploy is only asked ``GET /deployments``."""

from __future__ import annotations

from typing import Any

import httpx

from bot.config import Settings
from bot.doctor_checks import CONTRACT_DOC, Check, DoctorEnv, why
from bot.doctor_comfyui import comfyui_checks
from generation.client import ComfyDeployClient
from generation.contract import missing_inputs
from generation.errors import AuthFailedError, GenerationError
from generation.models import DeploymentConfig, DeploymentInfo, WorkflowRecord
from generation.preview import PREVIEW_DEPLOYMENTS
from generation.types import deployment_keys_for, resolve_type

COMMAND_TYPES = {"/make": "MAKE", "/i2i": "I2I", "/inpaint": "INPAINT"}


def _deployment_check(config: DeploymentConfig, live: DeploymentInfo | None) -> Check:
    name = f"deployment {config.type} {config.deployment_id}"
    if live is None:
        return Check(
            name,
            False,
            "not found among the deployments of this API key",
            f"copy the id from ComfyDeploy, then /deployment remove {config.deployment_id} and "
            f"/deployment add {config.type} <id>",
        )
    missing = missing_inputs(config.type, live.inputs)
    if missing:
        return Check(
            name,
            False,
            f"declares {', '.join(live.inputs) or 'no inputs'}; {config.type} needs "
            f"{', '.join(missing)}",
            f"add an External input node for each ({CONTRACT_DOC}), deploy, then "
            f"/deployment remove and /deployment add it again",
        )
    if config.inputs is not None and set(config.inputs) != set(live.inputs):
        return Check(
            name,
            False,
            "its workflow's inputs changed since /deployment add; the bot still sends the old "
            f"list ({', '.join(config.inputs)})",
            f"/deployment remove {config.deployment_id}, then /deployment add {config.type} "
            f"{config.deployment_id}",
        )
    state = "" if config.enabled else " (disabled: not used)"
    return Check(name, True, f"exists, declares {', '.join(live.inputs)}{state}")


def _enabled_types(configured: list[DeploymentConfig]) -> set[str]:
    return {d.type for d in configured if d.enabled}


async def _comfydeploy_key(settings: Settings, env: DoctorEnv) -> tuple[Check, list[Any] | None]:
    assert settings.comfydeploy_api_key is not None
    client = ComfyDeployClient(
        settings.comfydeploy_api_key.get_secret_value(),
        settings.comfydeploy_api_url,
        transport=env.comfy_transport,
        connect_timeout=env.timeout,
        read_timeout=env.timeout,
        max_attempts=2,
        backoff_initial=0.1,
    )
    try:
        listed = await client.list_deployments()
    except AuthFailedError:
        return Check(
            "ComfyDeploy",
            False,
            "ComfyDeploy refused the API key",
            "create a new API key in ComfyDeploy and put it in COMFYDEPLOY_API_KEY",
        ), None
    except (GenerationError, httpx.HTTPError) as exc:
        return Check(
            "ComfyDeploy",
            False,
            f"no answer from {settings.comfydeploy_api_url}: {why(exc)}",
            "check the network and COMFYDEPLOY_API_URL, then run the doctor again",
        ), None
    finally:
        await client.aclose()
    return Check("ComfyDeploy", True, f"key accepted; {len(listed)} deployment(s) visible"), listed


def _preview_checks(
    settings: Settings, configured: list[DeploymentConfig]
) -> tuple[list[Check], set[str]]:
    runnable = _enabled_types(configured) | set(PREVIEW_DEPLOYMENTS)
    if settings.generation_backend == "preview":
        detail = "GENERATION_BACKEND=preview: placeholder images, no GPU (for development)"
        return [Check("ComfyDeploy", True, detail)], runnable
    return [
        Check(
            "ComfyDeploy",
            False,
            "neither COMFYDEPLOY_API_KEY nor COMFYUI_URL is set: generations are preview "
            "placeholders",
            "create an API key in ComfyDeploy and put it in COMFYDEPLOY_API_KEY, or set "
            "COMFYUI_URL to your own ComfyUI (README: Your own ComfyUI)",
        )
    ], runnable


async def _comfydeploy_checks(
    settings: Settings, env: DoctorEnv, configured: list[DeploymentConfig]
) -> tuple[list[Check], set[str]]:
    if settings.comfydeploy_api_key is None:
        return [
            Check(
                "ComfyDeploy",
                False,
                "GENERATION_BACKEND=comfydeploy but COMFYDEPLOY_API_KEY is not set",
                "create an API key in ComfyDeploy and put it in COMFYDEPLOY_API_KEY",
            )
        ], set()
    key_check, listed = await _comfydeploy_key(settings, env)
    if listed is None:
        return [key_check], set()
    by_id = {d.id: d for d in listed}
    checks = [key_check]
    runnable: set[str] = set()
    preview_ids = set(PREVIEW_DEPLOYMENTS.values())
    for config in configured:
        if config.deployment_id in preview_ids:  # sync_preview_deployments drops it at start
            name = f"deployment {config.type} {config.deployment_id}"
            checks.append(Check(name, True, "a preview deployment: removed at the next start"))
            continue
        check = _deployment_check(config, by_id.get(config.deployment_id))
        checks.append(check)
        if check.ok and config.enabled:
            runnable.add(config.type)
    return checks, runnable


async def backend_checks(
    settings: Settings,
    env: DoctorEnv,
    configured: list[DeploymentConfig],
    workflows: list[WorkflowRecord] | None = None,
) -> tuple[list[Check], set[str]]:
    """The backends' keys and servers, every configured deployment and workflow; the types
    that can run."""
    kinds = settings.backends
    if kinds == {"preview"}:
        return _preview_checks(settings, configured)
    checks: list[Check] = []
    runnable: set[str] = set()
    if "comfydeploy" in kinds:
        comfydeploy = [d for d in configured if d.backend != "comfyui"]
        found, types = await _comfydeploy_checks(settings, env, comfydeploy)
        checks += found
        runnable |= types
    if "comfyui" in kinds:
        found, types = await comfyui_checks(settings, env, configured, workflows or [])
        checks += found
        runnable |= types
    return checks, runnable


def command_checks(runnable: set[str], *, verified: bool = True) -> list[Check]:
    """Every command's type has a working deployment (its own or its base type's)."""
    checks = []
    for command, type_ in COMMAND_TYPES.items():
        keys = deployment_keys_for(resolve_type(type_))
        found = [k for k in keys if k in runnable]
        if found:
            checks.append(Check(command, True, f"runs on a {found[0]} deployment"))
        elif not verified:
            checks.append(
                Check(
                    command,
                    False,
                    f"no verified {type_} deployment: the backend did not answer",
                    "fix the ComfyDeploy / ComfyUI lines above, then run the doctor again",
                )
            )
        else:
            checks.append(
                Check(
                    command,
                    False,
                    f"has nowhere to run: no working {type_} deployment",
                    f"build a workflow for {type_} ({CONTRACT_DOC}), deploy it, then "
                    f"/deployment add {type_} <deployment id>",
                )
            )
    return checks
