"""Putting a request's values into a workflow graph (the rules are in the docstring of
generation/comfyui/graph.py): External nodes removed, values inlined or loaded as images,
defaults kept, titled nodes filled, the seed applied. Pure and synchronous."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from generation.comfyui.graph import (
    IMAGE_CLASSES,
    SEED_WIDGETS,
    GraphError,
    external_default,
    external_kind,
    is_external,
    is_link,
    node_title,
    title_kind,
    title_widget,
    value_kind,
)


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
        kind = external_kind(str(node["class_type"]))
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
        has_default, default = external_default(node)
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
        elif (title := node_title(node)) and title.startswith("input_"):
            names.add(title)
    return names


def _apply_titles(out: dict[str, dict[str, Any]], values: Mapping[str, Any]) -> None:
    for node_id, node in out.items():
        title = node_title(node)
        if title is None or title not in values or values[title] is None:
            continue
        if node["class_type"] == "LoadImage" and title.startswith("bot "):
            continue
        value = values[title]
        kind = "image" if isinstance(value, ImageRef) else title_kind(title)
        widget = title_widget(node, kind)
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
            target_kind = value_kind(current) or kind
            node["inputs"][widget] = coerce(target_kind, value, name=title)


def image_input_names(graph: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Names of the inputs that take an image (External Image nodes, titled LoadImage)."""
    names = set()
    for node in graph.values():
        if is_external(node) and node.get("class_type") in IMAGE_CLASSES:
            input_id = node.get("inputs", {}).get("input_id")
            if isinstance(input_id, str):
                names.add(input_id.strip())
        elif (title := node_title(node)) and title_kind(title) == "image":
            names.add(title)
    return names
