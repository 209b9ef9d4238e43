"""Self-hosted ComfyUI backend: HTTP client, WebSocket listener, graph substitution, backend.

See :mod:`generation.comfyui.backend` for the run flow and :mod:`generation.comfyui.graph` for
how the bot's inputs reach a workflow.
"""

from generation.comfyui.backend import AuthTransport, ComfyUIBackend
from generation.comfyui.client import ComfyUIClient
from generation.comfyui.graph import Analysis, GraphError, WorkflowInput, analyse, parse_workflow
from generation.comfyui.ids import is_comfyui_run, is_workflow_id, workflow_deployment_id

__all__ = [
    "Analysis",
    "AuthTransport",
    "ComfyUIBackend",
    "ComfyUIClient",
    "GraphError",
    "WorkflowInput",
    "analyse",
    "is_comfyui_run",
    "is_workflow_id",
    "parse_workflow",
    "workflow_deployment_id",
]
