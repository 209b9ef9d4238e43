"""Ids that say which backend they belong to.

* deployment ids of workflows: ``workflow:<name>`` (ComfyDeploy deployment ids are UUIDs);
* backend run ids of ComfyUI prompts: ``comfyui:<server key>:<prompt_id>``, where the server key
  is a short hash of the server's URL, so a restarted bot polls the server that has the prompt.
"""

from __future__ import annotations

import hashlib
import uuid

WORKFLOW_PREFIX = "workflow:"
RUN_PREFIX = "comfyui:"
BACKEND_KIND = "comfyui"
_PROMPT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/comfy-telegram-bot/comfyui")


def workflow_deployment_id(name: str) -> str:
    return f"{WORKFLOW_PREFIX}{name.strip().lower()}"


def is_workflow_id(deployment_id: str) -> bool:
    return isinstance(deployment_id, str) and deployment_id.startswith(WORKFLOW_PREFIX)


def workflow_name(deployment_id: str) -> str:
    return deployment_id.removeprefix(WORKFLOW_PREFIX)


def server_key(url: str) -> str:
    return hashlib.sha256(url.strip().rstrip("/").lower().encode()).hexdigest()[:10]


def run_id(key: str, prompt_id: str) -> str:
    return f"{RUN_PREFIX}{key}:{prompt_id}"


def is_comfyui_run(backend_run_id: str) -> bool:
    return isinstance(backend_run_id, str) and backend_run_id.startswith(RUN_PREFIX)


def parse_run_id(backend_run_id: str) -> tuple[str, str] | None:
    """(server key, prompt_id) of a ComfyUI run id, or None."""
    if not is_comfyui_run(backend_run_id):
        return None
    key, sep, prompt_id = backend_run_id.removeprefix(RUN_PREFIX).partition(":")
    if not sep or not key or not prompt_id or len(prompt_id) > 100:
        return None
    return key, prompt_id


def prompt_id_for(run_ref: str | None) -> str:
    """The prompt_id to submit: derived from the bot's run id when known (so a crash during
    ``POST /prompt`` can be looked up after restart), else random."""
    if run_ref:
        return str(uuid.uuid5(_PROMPT_NAMESPACE, run_ref))
    return str(uuid.uuid4())
