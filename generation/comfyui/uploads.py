"""A prompt's input images on their way to ComfyUI: read from the data URIs or URLs the
service sends, uploaded to the server that runs the prompt (``POST /upload/image``), then put
into the graph's External input nodes (generation/comfyui/graph.py)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import httpx

from generation.comfyui.client import ComfyUIClient
from generation.comfyui.graph import GraphError
from generation.comfyui.substitute import ImageRef, image_input_names, substitute
from generation.errors import BackendUnavailableError, InvalidInputError, WorkflowInvalidError

MAX_IMAGE_BYTES = 50_000_000


async def decode_images(
    fetch: httpx.AsyncClient, graph: Mapping[str, Any], inputs: Mapping[str, Any]
) -> dict[str, tuple[bytes, str]]:
    """The image inputs of the request as (bytes, mime), read from data URIs or URLs."""
    images: dict[str, tuple[bytes, str]] = {}
    for name in image_input_names(graph):
        value = inputs.get(name)
        if not isinstance(value, str) or not value:
            continue
        if value.startswith("data:"):
            images[name] = decode_data_uri(value, name)
        elif value.startswith(("http://", "https://")):
            try:
                response = await fetch.get(value)
                response.raise_for_status()
            except httpx.HTTPError as exc:
                raise BackendUnavailableError(
                    f"could not fetch {name}: {type(exc).__name__}"
                ) from exc
            mime = response.headers.get("content-type", "image/png").split(";")[0]
            images[name] = (response.content, mime)
        else:
            raise InvalidInputError(f"{name} is not an image", field=name.removeprefix("input_"))
    return images


async def prepare(
    client: ComfyUIClient,
    graph: Mapping[str, Any],
    inputs: Mapping[str, Any],
    images: Mapping[str, tuple[bytes, str]],
    prompt_id: str,
) -> dict[str, Any]:
    values: dict[str, Any] = {k: v for k, v in inputs.items() if k not in images}
    for name, (data, mime) in images.items():
        ext = "jpg" if mime == "image/jpeg" else "png"
        uploaded = await client.upload_image(
            data, f"tgbot_{prompt_id[:8]}_{name.removeprefix('input_')}.{ext}", mime
        )
        values[name] = ImageRef(uploaded["name"], uploaded["subfolder"])
    seed = inputs.get("input_seed")
    try:
        return substitute(graph, values, seed=seed if isinstance(seed, int) else None)
    except GraphError as exc:
        raise WorkflowInvalidError(
            exc.message,
            node_id=exc.node_id,
            input_name=exc.input_name,
            error_type=exc.code,
            reason=exc.message,
        ) from None


def decode_data_uri(value: str, name: str) -> tuple[bytes, str]:
    head, sep, payload = value.partition(",")
    if not sep or ";base64" not in head.lower():
        raise InvalidInputError(
            f"{name} is not a base64 data URI", field=name.removeprefix("input_")
        )
    mime = head[5:].split(";", 1)[0].lower() or "image/png"
    try:
        data = base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError):
        raise InvalidInputError(
            f"{name} is not valid base64", field=name.removeprefix("input_")
        ) from None
    if not data or len(data) > MAX_IMAGE_BYTES:
        raise InvalidInputError(f"{name} is empty or too large", field=name.removeprefix("input_"))
    return data, mime
