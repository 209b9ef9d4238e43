"""ComfyUI workflow graphs: API-format checks and input discovery (the substitution of the
inputs is generation/comfyui/substitute.py).

A workflow exported from ComfyDeploy runs unchanged on a plain ComfyUI without ComfyDeploy's
custom nodes: every node whose ``class_type`` starts with ``ComfyUIDeployExternal`` is an input
named by its ``inputs.input_id``. ``substitute`` removes those nodes and puts the value
where their output was used:

* scalars (text, numbers, seed, boolean, checkpoint, enum) are inlined into every consumer's
  input;
* images (``…ExternalImage``, ``…ExternalImageAlpha``) become a ``LoadImage`` node *with the
  same node id* on the uploaded file name, so links ``[id, 0]`` (IMAGE) stay valid;
* an External node whose input the request does not carry keeps its ``default_value`` (a
  literal is inlined, a link is rewired to its source — chains of External nodes resolve);
* a node whose ``_meta.title`` is an input name also receives that input on its single widget
  of the matching type.

Everything here is pure and synchronous: no I/O, no ComfyUI server needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EXTERNAL_PREFIX = "ComfyUIDeployExternal"
IMAGE_CLASSES = frozenset({"ComfyUIDeployExternalImage", "ComfyUIDeployExternalImageAlpha"})
# External classes whose value is a number/bool/text: how the value is coerced.
_INT_CLASSES = frozenset(
    {
        "ComfyUIDeployExternalNumberInt",
        "ComfyUIDeployExternalNumberSliderInt",
        "ComfyUIDeployExternalSeed",
    }
)
_FLOAT_CLASSES = frozenset({"ComfyUIDeployExternalNumber", "ComfyUIDeployExternalNumberSlider"})
_BOOL_CLASSES = frozenset({"ComfyUIDeployExternalBoolean"})
# Output nodes of a stock ComfyUI (and the usual video node); /object_info's ``output_node``
# flag is used instead when the server's catalogue is known.
KNOWN_OUTPUT_CLASSES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveVideo",
        "SaveWEBM",
        "VHS_VideoCombine",
        "SaveImageWebsocket",
    }
)
SEED_WIDGETS = ("seed", "noise_seed")
MAX_NODES = 2000


class GraphError(ValueError):
    """A workflow document that cannot be used. ``code`` is stable (``ui_format``,
    ``not_api_format``, ``not_json``, ``too_large``, ``missing_input``, ``bad_value``)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        node_id: str | None = None,
        input_name: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.node_id = node_id
        self.input_name = input_name


@dataclass(frozen=True, slots=True)
class Consumer:
    node_id: str
    class_type: str
    input_name: str  # the consumer's input (or widget) that receives the value


@dataclass(frozen=True, slots=True)
class WorkflowInput:
    """One input of a workflow: an External node or a titled node."""

    name: str  # input_prompt, input_image, ...
    node_id: str
    class_type: str
    kind: str  # "image" | "int" | "float" | "bool" | "text"
    default: Any = None  # literal default, or None
    has_default: bool = False
    via_title: bool = False
    consumers: tuple[Consumer, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "node_id": self.node_id,
            "class_type": self.class_type,
            "kind": self.kind,
            "default": self.default,
            "has_default": self.has_default,
            "via_title": self.via_title,
            "consumers": [[c.node_id, c.class_type, c.input_name] for c in self.consumers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkflowInput:
        return cls(
            name=str(data["name"]),
            node_id=str(data["node_id"]),
            class_type=str(data["class_type"]),
            kind=str(data["kind"]),
            default=data.get("default"),
            has_default=bool(data.get("has_default")),
            via_title=bool(data.get("via_title")),
            consumers=tuple(Consumer(str(a), str(b), str(c)) for a, b, c in data["consumers"]),
        )


@dataclass(slots=True)
class Analysis:
    """What :func:`analyse` found in a workflow: its inputs and its problems."""

    inputs: list[WorkflowInput] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # stable problem codes with details
    output_nodes: list[str] = field(default_factory=list)
    unknown_classes: list[str] = field(default_factory=list)

    @property
    def input_names(self) -> tuple[str, ...]:
        seen: list[str] = []
        for item in self.inputs:
            if item.name not in seen:
                seen.append(item.name)
        return tuple(seen)

    @property
    def ok(self) -> bool:
        return not self.problems


def is_link(value: Any) -> bool:
    """An API-format link: ``["<node id>", <output index>]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str | int)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def is_external(node: Mapping[str, Any]) -> bool:
    return str(node.get("class_type", "")).startswith(EXTERNAL_PREFIX)


def parse_workflow(data: bytes | str | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Parse and check an API-format workflow; the UI format is recognised and refused.

    Raises :class:`GraphError` with code ``not_json``, ``ui_format``, ``not_api_format`` or
    ``too_large``."""
    if isinstance(data, bytes | str):
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise GraphError("not_json", f"not a JSON document: {exc}") from None
    else:
        doc = data
    if isinstance(doc, Mapping) and isinstance(doc.get("prompt"), Mapping) and "nodes" not in doc:
        doc = doc["prompt"]  # a saved POST /prompt body
    if isinstance(doc, Mapping) and isinstance(doc.get("nodes"), list) and "links" in doc:
        raise GraphError(
            "ui_format",
            "this is the UI (editor) format; export it with 'Export (API)' / 'Save (API Format)'",
        )
    if not isinstance(doc, Mapping) or not doc:
        raise GraphError("not_api_format", "an API-format workflow is an object of nodes")
    if len(doc) > MAX_NODES:
        raise GraphError("too_large", f"more than {MAX_NODES} nodes")
    graph: dict[str, dict[str, Any]] = {}
    for node_id, node in doc.items():
        if (
            not isinstance(node, Mapping)
            or not isinstance(node.get("class_type"), str)
            or not isinstance(node.get("inputs", {}), Mapping)
        ):
            raise GraphError(
                "not_api_format",
                f"node {node_id!r} has no class_type/inputs (not the API format)",
                node_id=str(node_id),
            )
        graph[str(node_id)] = {
            "class_type": node["class_type"],
            "inputs": dict(node.get("inputs") or {}),
            **({"_meta": dict(node["_meta"])} if isinstance(node.get("_meta"), Mapping) else {}),
        }
    return graph


def external_kind(class_type: str) -> str:
    if class_type in IMAGE_CLASSES:
        return "image"
    if class_type in _INT_CLASSES:
        return "int"
    if class_type in _FLOAT_CLASSES:
        return "float"
    if class_type in _BOOL_CLASSES:
        return "bool"
    return "text"


def value_kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "text"
    return None


def _consumers(graph: Mapping[str, Mapping[str, Any]], node_id: str) -> list[Consumer]:
    found: list[Consumer] = []
    for other_id, node in graph.items():
        for name, value in node.get("inputs", {}).items():
            if is_link(value) and str(value[0]) == node_id:
                found.append(Consumer(other_id, str(node.get("class_type")), name))
    return found


def node_title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title.strip() if isinstance(title, str) and title.strip() else None


def title_widget(node: Mapping[str, Any], kind: str) -> str | list[str] | None:
    """The single literal widget of ``kind`` on a titled node (``image`` preferred for images);
    a list of candidates when it is ambiguous, None when there is none."""
    inputs = node.get("inputs", {})
    if kind == "image":
        if isinstance(inputs.get("image"), str):
            return "image"
        kind = "text"
    literals = {name: value for name, value in inputs.items() if not is_link(value)}
    matches = [name for name, value in literals.items() if value_kind(value) == kind]
    if kind == "float" and not matches:  # a float widget may hold an integral number
        matches = [
            name
            for name, value in literals.items()
            if value_kind(value) == "int" and name not in SEED_WIDGETS
        ]
    if len(matches) == 1:
        return matches[0]
    return matches or None


def external_default(node: Mapping[str, Any]) -> tuple[bool, Any]:
    inputs = node.get("inputs", {})
    if "default_value" not in inputs:
        return False, None
    return True, inputs["default_value"]


def analyse(
    graph: Mapping[str, Mapping[str, Any]],
    *,
    object_info: Mapping[str, Any] | None = None,
) -> Analysis:
    """Find the inputs and the problems of a parsed API-format graph.

    ``object_info`` (``GET /object_info``) adds the check that every class exists on the
    server and uses its ``output_node`` flags."""
    result = Analysis()
    for node_id, node in graph.items():
        class_type = str(node.get("class_type"))
        for name, value in node.get("inputs", {}).items():
            if is_link(value) and str(value[0]) not in graph:
                result.problems.append(f"dangling_link:{node_id}.{name}->{value[0]}")
        if is_external(node):
            input_id = node.get("inputs", {}).get("input_id")
            if not isinstance(input_id, str) or not input_id.strip():
                result.problems.append(f"external_without_input_id:{node_id}")
                continue
            has_default, default = external_default(node)
            result.inputs.append(
                WorkflowInput(
                    name=input_id.strip(),
                    node_id=node_id,
                    class_type=class_type,
                    kind=external_kind(class_type),
                    default=None if is_link(default) else default,
                    has_default=has_default,
                    consumers=tuple(_consumers(graph, node_id)),
                )
            )
            continue
        if object_info is not None:
            spec = object_info.get(class_type)
            if spec is None:
                result.unknown_classes.append(class_type)
            elif isinstance(spec, Mapping) and spec.get("output_node"):
                result.output_nodes.append(node_id)
        elif class_type in KNOWN_OUTPUT_CLASSES:
            result.output_nodes.append(node_id)
    _titled_inputs(graph, result)
    if object_info is not None and any(i.kind == "image" for i in result.inputs):
        if "LoadImage" not in object_info:
            result.unknown_classes.append("LoadImage")
    for class_type in sorted(set(result.unknown_classes)):
        result.problems.append(f"unknown_class:{class_type}")
    result.unknown_classes = sorted(set(result.unknown_classes))
    if not result.output_nodes:
        result.problems.append("no_output_node")
    return result


def _titled_inputs(graph: Mapping[str, Mapping[str, Any]], result: Analysis) -> None:
    external_kinds = {i.name: i.kind for i in result.inputs}
    for node_id, node in graph.items():
        title = node_title(node)
        if is_external(node) or title is None or not title.startswith("input_"):
            continue
        kind = external_kinds.get(title) or title_kind(title)
        widget = title_widget(node, kind)
        if widget is None or isinstance(widget, list):
            result.problems.append(
                f"title_widget_ambiguous:{node_id}:{title}:{','.join(widget or [])}"
            )
            continue
        class_type = str(node.get("class_type"))
        current = node.get("inputs", {}).get(widget)
        result.inputs.append(
            WorkflowInput(
                name=title,
                node_id=node_id,
                class_type=class_type,
                kind=kind,
                default=current,
                has_default=True,
                via_title=True,
                consumers=(Consumer(node_id, class_type, widget),),
            )
        )


_TITLE_KINDS = {
    "input_image": "image",
    "input_mask": "image",
    "input_seed": "int",
    "input_width": "int",
    "input_height": "int",
    "input_steps": "int",
    "input_batch": "int",
    "input_cfg": "float",
    "input_strength": "float",
}


def title_kind(name: str) -> str:
    if name.endswith("_image"):
        return "image"
    return _TITLE_KINDS.get(name, "text")
