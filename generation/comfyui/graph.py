"""ComfyUI workflow graphs: API-format checks, input discovery and input substitution.

A workflow exported from ComfyDeploy runs unchanged on a plain ComfyUI without ComfyDeploy's
custom nodes: every node whose ``class_type`` starts with ``ComfyUIDeployExternal`` is an input
named by its ``inputs.input_id``. :func:`substitute` removes those nodes and puts the value
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

import copy
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


def _kind(class_type: str) -> str:
    if class_type in IMAGE_CLASSES:
        return "image"
    if class_type in _INT_CLASSES:
        return "int"
    if class_type in _FLOAT_CLASSES:
        return "float"
    if class_type in _BOOL_CLASSES:
        return "bool"
    return "text"


def _value_kind(value: Any) -> str | None:
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


def _title(node: Mapping[str, Any]) -> str | None:
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, Mapping) else None
    return title.strip() if isinstance(title, str) and title.strip() else None


def _title_widget(node: Mapping[str, Any], kind: str) -> str | list[str] | None:
    """The single literal widget of ``kind`` on a titled node (``image`` preferred for images);
    a list of candidates when it is ambiguous, None when there is none."""
    inputs = node.get("inputs", {})
    if kind == "image":
        if isinstance(inputs.get("image"), str):
            return "image"
        kind = "text"
    literals = {name: value for name, value in inputs.items() if not is_link(value)}
    matches = [name for name, value in literals.items() if _value_kind(value) == kind]
    if kind == "float" and not matches:  # a float widget may hold an integral number
        matches = [
            name
            for name, value in literals.items()
            if _value_kind(value) == "int" and name not in SEED_WIDGETS
        ]
    if len(matches) == 1:
        return matches[0]
    return matches or None


def _external_default(node: Mapping[str, Any]) -> tuple[bool, Any]:
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
            has_default, default = _external_default(node)
            result.inputs.append(
                WorkflowInput(
                    name=input_id.strip(),
                    node_id=node_id,
                    class_type=class_type,
                    kind=_kind(class_type),
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
        title = _title(node)
        if is_external(node) or title is None or not title.startswith("input_"):
            continue
        kind = external_kinds.get(title) or _title_kind(title)
        widget = _title_widget(node, kind)
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


def _title_kind(name: str) -> str:
    if name.endswith("_image"):
        return "image"
    return _TITLE_KINDS.get(name, "text")


def coerce(kind: str, value: Any, *, name: str) -> Any:
    """Coerce a request value to an input's kind; raises GraphError(bad_value)."""
    try:
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not number.is_integer():
                raise ValueError(value)
            return int(number)
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if kind == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind == "text":
            return value if isinstance(value, str) else str(value)
    except (TypeError, ValueError):
        raise GraphError(
            "bad_value", f"{name}: {value!r} is not a valid {kind}", input_name=name
        ) from None
    return value


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An input image already uploaded to the server (``POST /upload/image`` answer)."""

    name: str
    subfolder: str = ""

    @property
    def load_name(self) -> str:
        return f"{self.subfolder}/{self.name}" if self.subfolder else self.name


def substitute(
    graph: Mapping[str, Mapping[str, Any]],
    values: Mapping[str, Any],
    *,
    seed: int | None = None,
) -> dict[str, dict[str, Any]]:
    """The graph to POST: External nodes replaced by the request's values (see module doc).

    ``values`` maps input names to scalars or :class:`ImageRef`. ``seed`` (the concrete seed)
    is written to every literal ``seed``/``noise_seed`` widget when the graph has no
    ``input_seed`` input, so the server never serves an identical, cached graph. Raises
    :class:`GraphError` (``missing_input``/``bad_value``) when an input without default is not
    given or a value does not fit."""
    out: dict[str, dict[str, Any]] = copy.deepcopy({k: dict(v) for k, v in graph.items()})
    externals = {nid for nid, node in out.items() if is_external(node)}
    resolver = _Resolver(out, externals, values)
    for node_id in sorted(externals):
        resolver.resolve(node_id)
    _rewire(out, externals, resolver.resolved)
    _apply_titles(out, values)
    if seed is not None and "input_seed" not in values_names(graph):
        _apply_seed(out, seed)
    return out


class _Resolver:
    """What each External node stands for: ("value", v), ("image", ImageRef) or
    ("link", [src, i]) — following defaults through chains of External nodes."""

    def __init__(
        self, out: dict[str, dict[str, Any]], externals: set[str], values: Mapping[str, Any]
    ) -> None:
        self.out = out
        self.externals = externals
        self.values = values
        self.resolved: dict[str, tuple[str, Any]] = {}

    def resolve(self, node_id: str, seen: frozenset[str] = frozenset()) -> tuple[str, Any]:
        if node_id in self.resolved:
            return self.resolved[node_id]
        if node_id in seen:
            raise GraphError("bad_value", f"External node {node_id} is part of a cycle")
        node = self.out[node_id]
        name = str(node.get("inputs", {}).get("input_id", "")).strip()
        kind = _kind(str(node["class_type"]))
        if self.values.get(name) is not None:
            answer = self._given(name, kind, self.values[name])
        else:
            answer = self._default(node_id, node, name, kind, seen)
        self.resolved[node_id] = answer
        return answer

    @staticmethod
    def _given(name: str, kind: str, value: Any) -> tuple[str, Any]:
        if kind != "image":
            return ("value", coerce(kind, value, name=name))
        if not isinstance(value, ImageRef):
            raise GraphError("bad_value", f"{name} must be an uploaded image", input_name=name)
        return ("image", value)

    def _default(
        self, node_id: str, node: Mapping[str, Any], name: str, kind: str, seen: frozenset[str]
    ) -> tuple[str, Any]:
        has_default, default = _external_default(node)
        if has_default and is_link(default):
            src = str(default[0])
            if src in self.externals:
                return self.resolve(src, seen | {node_id})
            return ("link", [src, default[1]])
        if has_default and default is not None and kind != "image":
            return ("value", coerce(kind, default, name=name))
        raise GraphError(
            "missing_input",
            f"the workflow needs {name} (node {node_id}) and has no default",
            node_id=node_id,
            input_name=name,
        )


def _rewire(
    out: dict[str, dict[str, Any]], externals: set[str], resolved: Mapping[str, tuple[str, Any]]
) -> None:
    for node_id, (how, what) in resolved.items():
        if how == "image":
            # Same id: consumers' links [id, 0] now read LoadImage's IMAGE output.
            out[node_id] = {
                "class_type": "LoadImage",
                "inputs": {"image": what.load_name},
                "_meta": {"title": f"bot {out[node_id]['inputs'].get('input_id', 'image')}"},
            }
    for node in out.values():
        inputs = node.get("inputs", {})
        for name, value in list(inputs.items()):
            if not is_link(value) or str(value[0]) not in resolved:
                continue
            how, what = resolved[str(value[0])]
            if how == "value":
                inputs[name] = what
            elif how == "link":
                inputs[name] = list(what)
    for node_id in externals:
        if resolved[node_id][0] != "image":
            del out[node_id]


def _apply_seed(out: dict[str, dict[str, Any]], seed: int) -> None:
    for node in out.values():
        for widget in SEED_WIDGETS:
            current = node.get("inputs", {}).get(widget)
            if isinstance(current, int) and not isinstance(current, bool):
                node["inputs"][widget] = seed


def values_names(graph: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Input names the graph takes (External input_ids and input_* titles)."""
    names: set[str] = set()
    for node in graph.values():
        if is_external(node):
            input_id = node.get("inputs", {}).get("input_id")
            if isinstance(input_id, str):
                names.add(input_id.strip())
        elif (title := _title(node)) and title.startswith("input_"):
            names.add(title)
    return names


def _apply_titles(out: dict[str, dict[str, Any]], values: Mapping[str, Any]) -> None:
    for node_id, node in out.items():
        title = _title(node)
        if title is None or title not in values or values[title] is None:
            continue
        if node["class_type"] == "LoadImage" and title.startswith("bot "):
            continue
        value = values[title]
        kind = "image" if isinstance(value, ImageRef) else _title_kind(title)
        widget = _title_widget(node, kind)
        if not isinstance(widget, str):
            raise GraphError(
                "bad_value",
                f"node {node_id} titled {title} has no single widget for it",
                node_id=node_id,
                input_name=title,
            )
        if isinstance(value, ImageRef):
            node["inputs"][widget] = value.load_name
        else:
            current = node["inputs"].get(widget)
            target_kind = _value_kind(current) or kind
            node["inputs"][widget] = coerce(target_kind, value, name=title)


def image_input_names(graph: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Names of the inputs that take an image (External Image nodes, titled LoadImage)."""
    names = set()
    for node in graph.values():
        if is_external(node) and node.get("class_type") in IMAGE_CLASSES:
            input_id = node.get("inputs", {}).get("input_id")
            if isinstance(input_id, str):
                names.add(input_id.strip())
        elif (title := _title(node)) and _title_kind(title) == "image":
            names.add(title)
    return names
