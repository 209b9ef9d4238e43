"""Which generation backend the bot talks to, and how it is wired to the service.

:func:`make_backend` is the one place that turns settings into a backend: ComfyDeploy, or the
local preview backend (``GENERATION_BACKEND=preview``, or ``auto`` without
``COMFYDEPLOY_API_KEY``). A further backend (e.g. a self-hosted ComfyUI), or a composite that
spreads runs over several, is added here and selected by a setting.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from bot.config import Settings
from generation.client import ComfyDeployClient
from generation.comfyui import ComfyUIBackend
from generation.http_transport import AiohttpTransport
from generation.ports import Backend, WorkflowStore
from generation.preview import PREVIEW_DEPLOYMENTS, PREVIEW_INPUTS, PREVIEW_LABEL, PreviewBackend
from generation.routing import RoutingBackend
from generation.service import GenerationService
from generation.settings import GenerationSettings
from storage import Storage

log = logging.getLogger(__name__)

PREVIEW_WEBHOOK_URL = "http://preview.local/comfydeploy/webhook"  # never fetched: in process


def make_backend(
    settings: Settings,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    preview_step_seconds: float | None = None,
    workflows: WorkflowStore | None = None,
) -> Backend:
    """The backend the settings ask for. ``transport`` replaces the network to ComfyDeploy
    (tests: the ComfyDeploy double); ``preview_step_seconds`` speeds up the preview timeline
    (tests); ``workflows`` holds the ComfyUI workflows (``storage.workflows``)."""
    kinds = settings.backends
    if kinds == {"preview"}:
        return _preview(settings, preview_step_seconds, transport)
    comfydeploy = _comfydeploy(settings, transport) if "comfydeploy" in kinds else None
    comfyui = _comfyui(settings, workflows, transport) if "comfyui" in kinds else None
    if comfydeploy is not None and comfyui is not None:
        log.info("generations go to ComfyDeploy and to ComfyUI (%d servers)", len(comfyui.servers))
        return RoutingBackend(comfydeploy=comfydeploy, comfyui=comfyui)
    backend = comfydeploy or comfyui
    assert backend is not None
    return backend


def _preview(
    settings: Settings,
    step_seconds: float | None,
    transport: httpx.AsyncBaseTransport | None,
) -> Backend:
    if settings.comfydeploy_api_key is None and not settings.comfyui_url:
        log.warning(
            "neither COMFYDEPLOY_API_KEY nor COMFYUI_URL is set: generations use the local "
            "preview backend (labelled placeholder images); set one to generate real images"
        )
    else:
        log.info("GENERATION_BACKEND=preview: generations use the local preview backend")
    options: dict[str, Any] = {}
    if step_seconds is not None:
        options["step_seconds"] = step_seconds
    return PreviewBackend(fallback_transport=transport, **options)


def _comfydeploy(settings: Settings, transport: httpx.AsyncBaseTransport | None) -> Backend:
    api_key = settings.comfydeploy_api_key
    if api_key is None:
        log.warning(
            "COMFYDEPLOY_API_KEY is not set: the bot starts, but every generation will fail "
            "with an authentication error until it is configured"
        )
    return ComfyDeployClient(
        api_key=api_key.get_secret_value() if api_key else "",
        base_url=settings.comfydeploy_api_url,
        # generation/http_transport.py: why; proxies from the environment as with httpx
        transport=transport or AiohttpTransport(trust_env=True),
    )


def _comfyui(
    settings: Settings,
    workflows: WorkflowStore | None,
    transport: httpx.AsyncBaseTransport | None,
) -> ComfyUIBackend:
    if not settings.comfyui_url:
        raise ValueError("GENERATION_BACKEND=comfyui needs COMFYUI_URL")
    if workflows is None:
        raise ValueError("the ComfyUI backend needs the workflow store")
    auth = settings.comfyui_auth.get_secret_value() if settings.comfyui_auth else None
    # ComfyUI is reached over the network (its own loopback or LAN address); ``transport``
    # only carries the downloads of other backends' outputs.
    return ComfyUIBackend(
        list(settings.comfyui_url),
        workflows=workflows,
        auth=auth,
        download_transport=transport,
        max_queue=settings.comfyui_max_queue,
    )


def generation_settings(settings: Settings, webhook_secret: str) -> GenerationSettings:
    """GenerationSettings from the bot settings (webhooks only when PUBLIC_URL is set)."""
    webhook_url = f"{settings.public_url}/comfydeploy/webhook" if settings.public_url else None
    if webhook_url is None and settings.preview_backend:
        # The preview backend pushes its webhooks in process (see connect_backend), so
        # progress is live without a public URL; polling stays as the backstop.
        webhook_url = PREVIEW_WEBHOOK_URL
    return GenerationSettings(
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        poll_interval=settings.run_poll_interval,
        webhook_poll_interval=max(settings.run_poll_interval, 15.0),
        max_in_flight=settings.max_in_flight,
        max_active_per_user=settings.max_active_per_user,
        max_queued_per_user=settings.max_queued_per_user,
        lora_weight_max=settings.lora_weight_max,
        max_outputs_per_run=settings.max_outputs_per_run,
        max_queued_total=settings.max_queued_total,
        run_retention_days=settings.run_retention_days,
    )


def _webhook_sink(service: GenerationService) -> Callable[[str, dict[str, Any]], Awaitable[Any]]:
    """Deliver the preview backend's webhooks straight to the service (no HTTP hop); the
    per-run token in the URL is still verified by ``process_webhook``."""

    async def sink(url: str, payload: dict[str, Any]) -> None:
        query = parse_qs(urlsplit(url).query)
        run_ref = (query.get("r") or [None])[0]
        token = (query.get("t") or [None])[0]
        await service.process_webhook(payload, token, run_ref)

    return sink


def connect_backend(backend: Backend, service: GenerationService) -> None:
    """Backend-specific wiring once the service exists (the preview backend's webhooks)."""
    if isinstance(backend, PreviewBackend):
        backend.webhook_sink = _webhook_sink(service)


def output_transport(backend: Backend) -> httpx.AsyncBaseTransport | None:
    """The transport output files are downloaded through (the preview backend serves its
    files in process; ComfyUI's ``/view`` needs ``COMFYUI_AUTH``); ``None``: the network."""
    if isinstance(backend, PreviewBackend | ComfyUIBackend | RoutingBackend):
        return backend.transport
    return None


def output_origins(settings: Settings) -> tuple[str, ...]:
    """Output URLs the bot downloads without the public-address check: the backends' own."""
    origins = [settings.comfydeploy_api_url]
    if "comfyui" in settings.backends:
        origins += list(settings.comfyui_url)
    return tuple(origins)


def backend_label(backend: Backend) -> str | None:
    """A label progress texts carry (``"preview"``), or ``None`` for real generations."""
    return PREVIEW_LABEL if isinstance(backend, PreviewBackend) else None


async def sync_preview_deployments(storage: Storage, *, enabled: bool) -> None:
    """Preview mode: register the preview deployment of every type that has none yet (admins
    may add more). Otherwise: remove leftover preview deployments, which ComfyDeploy would
    refuse."""
    for type_, deployment_id in PREVIEW_DEPLOYMENTS.items():
        existing = await storage.deployments.get(deployment_id)
        if enabled and existing is None:
            await storage.deployments.add(type_, deployment_id, inputs=list(PREVIEW_INPUTS))
        elif not enabled and existing is not None:
            await storage.deployments.remove(deployment_id)
            log.info("removed the preview deployment of %s (not in preview mode)", type_)
