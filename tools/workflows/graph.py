"""ComfyUI node definitions as specs, and a builder that writes UI workflows (format version 0.4).

Pure Python (no comfy, no torch). Node definitions come from either a ``NODE_CLASS_MAPPINGS``-style
dict of classes, or a server's ``/object_info`` JSON. The rules mirror what ComfyUI and its frontend
(comfyui-frontend-package 1.27, ComfyUI 0.3.64) do:

* ``widgets_values`` is positional: one value per widget input, required inputs then optional ones
  in definition order. Widget inputs are INT, FLOAT, STRING, BOOLEAN and COMBO (a list of choices)
  without ``forceInput``. After an INT with ``control_after_generate`` (or, when that option is
  absent, an INT named ``seed``/``noise_seed``) the frontend stores one extra value, the control
  mode; after a COMBO with ``control_after_generate`` it stores two (mode and a filter string).
* Linked types are compatible like the server's ``validate_inputs``: equal, or overlapping
  comma-separated unions; ``"*"`` is accepted as the frontend does.

The checks that read workflow files back (and run them) are test code: tests/comfy_host/workflow_graph.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
SEED_INPUT_NAMES = ("seed", "noise_seed")  # frontend adds a control widget to these INTs by name
UPLOAD_OPTIONS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")
UPLOAD_VALUE = "image"  # what frontend 1.27 saves for the upload button of LoadImage
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4


class WorkflowError(ValueError):
    """A workflow or prompt that cannot be used; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# Node definitions


@dataclass(frozen=True)
class InputSpec:
    name: str
    type: str  # "COMBO" for a list of choices
    options: Mapping[str, Any]
    required: bool
    choices: tuple | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not (self.options.get("forceInput") or self.options.get("defaultInput"))

    @property
    def control_values(self) -> int:
        """How many frontend-only values follow this widget in widgets_values."""
        if not self.is_widget:
            return 0
        flag = self.options.get("control_after_generate")
        if self.type == "INT":
            return 1 if (flag if flag is not None else self.name in SEED_INPUT_NAMES) else 0
        if self.type == "COMBO":
            return 2 if flag else 0
        return 0

    @property
    def has_upload_button(self) -> bool:
        return any(self.options.get(key) for key in UPLOAD_OPTIONS)


@dataclass(frozen=True)
class NodeSpec:
    name: str
    inputs: tuple[InputSpec, ...]
    hidden: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    function: str | None = None
    node_class: Any = None
    input_is_list: bool = False
    output_is_list: tuple[bool, ...] = ()

    def input(self, name: str) -> InputSpec | None:
        return next((spec for spec in self.inputs if spec.name == name), None)

    @property
    def widgets(self) -> list[InputSpec]:
        return [spec for spec in self.inputs if spec.is_widget]

    @property
    def sockets(self) -> list[InputSpec]:
        return [spec for spec in self.inputs if not spec.is_widget]

    def widget_layout(self) -> list[tuple[InputSpec, str]]:
        """widgets_values positions: (input, "value" | "control" | "filter" | "upload")."""
        layout = []
        for spec in self.widgets:
            layout.append((spec, "value"))
            extra = spec.control_values
            if extra >= 1:
                layout.append((spec, "control"))
            if extra >= 2:
                layout.append((spec, "filter"))
            if spec.has_upload_button:  # the upload button saves its own value (frontend 1.27: "image")
                layout.append((spec, "upload"))
        return layout


def _type_name(raw) -> tuple[str, tuple | None]:
    if isinstance(raw, (list, tuple)):
        return "COMBO", tuple(raw)
    if not isinstance(raw, str):
        raise WorkflowError(f"input type {raw!r} is neither a type name nor a list of choices")
    return raw, None


def _parse_inputs(groups: Mapping[str, Mapping], order: Mapping[str, list] | None = None) -> list[InputSpec]:
    specs = []
    for group in ("required", "optional"):
        entries = groups.get(group) or {}
        names = list((order or {}).get(group) or entries.keys())
        for name in names:
            entry = entries[name]
            entry = list(entry) if isinstance(entry, (list, tuple)) else [entry]
            options = dict(entry[1]) if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
            type_name, choices = _type_name(entry[0])
            if type_name == "COMBO" and choices is None and "options" in options:  # V3-style COMBO
                choices = tuple(options["options"])
            specs.append(InputSpec(name, type_name, options, group == "required", choices))
    return specs


def node_spec_from_class(name: str, node_class) -> NodeSpec:
    """A NodeSpec from a classic ComfyUI node class (INPUT_TYPES, RETURN_TYPES, FUNCTION...)."""
    try:
        groups = node_class.INPUT_TYPES()
    except Exception as err:
        raise WorkflowError(f"{name}.INPUT_TYPES() failed: {type(err).__name__}: {err}") from err
    outputs = tuple(_type_name(t)[0] for t in getattr(node_class, "RETURN_TYPES", ()))
    return NodeSpec(
        name=name,
        inputs=tuple(_parse_inputs(groups)),
        hidden=tuple((groups.get("hidden") or {}).keys()),
        outputs=outputs,
        output_names=tuple(getattr(node_class, "RETURN_NAMES", None) or outputs),
        output_node=bool(getattr(node_class, "OUTPUT_NODE", False)),
        function=getattr(node_class, "FUNCTION", None),
        node_class=node_class,
        input_is_list=bool(getattr(node_class, "INPUT_IS_LIST", False)),
        output_is_list=tuple(getattr(node_class, "OUTPUT_IS_LIST", None) or ()),
    )


def node_spec_from_object_info(name: str, info: Mapping) -> NodeSpec:
    """A NodeSpec from one entry of a server's /object_info."""
    groups = info.get("input") or {}
    outputs = tuple(_type_name(t)[0] for t in info.get("output") or ())
    return NodeSpec(
        name=name,
        inputs=tuple(_parse_inputs(groups, info.get("input_order"))),
        hidden=tuple((groups.get("hidden") or {}).keys()),
        outputs=outputs,
        output_names=tuple(info.get("output_name") or outputs),
        output_node=bool(info.get("output_node", False)),
        output_is_list=tuple(info.get("output_is_list") or ()),
    )


def as_node_specs(definitions: Mapping[str, Any]) -> dict[str, NodeSpec]:
    """Accepts NODE_CLASS_MAPPINGS (classes), /object_info JSON, or NodeSpecs; mixes are fine."""
    specs = {}
    for name, value in definitions.items():
        if isinstance(value, NodeSpec):
            specs[name] = value
        elif isinstance(value, Mapping) and "input" in value:
            specs[name] = node_spec_from_object_info(name, value)
        else:
            specs[name] = node_spec_from_class(name, value)
    return specs


def types_compatible(output_type, input_type) -> bool:
    """Server rule (comfy_execution/validation.py, non-strict) plus the frontend's "*" wildcard."""
    if output_type == input_type or "*" in (output_type, input_type):
        return True
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in output_type.split(",")}
    accepted = {t.strip() for t in input_type.split(",")}
    return bool(received & accepted)



# ---------------------------------------------------------------------------------------------
# Writing workflows


class UIWorkflowBuilder:
    """Builds a UI workflow (version 0.4) the way the 1.27 frontend lays out nodes.

    ``node.inputs`` lists socket inputs first, then one input per widget (with ``widget: {name}``),
    as the frontend serialises them, so links may target widgets too.
    """

    def __init__(self, node_class_mappings: Mapping[str, Any]):
        self.specs = as_node_specs(node_class_mappings)
        self.nodes: list[dict] = []
        self.links: list[list] = []

    def add(self, node_type: str, *, title: str | None = None, controls: Mapping[str, str] | None = None,
            **widget_values) -> int:
        """Adds a node; widgets not given take their defaults. ``controls`` sets control_after_generate
        modes (default "fixed", so shipped workflows are reproducible)."""
        spec = self.specs.get(node_type)
        if spec is None:
            raise WorkflowError(f"unknown node type {node_type!r}")
        unknown = set(widget_values) - {s.name for s in spec.widgets}
        if unknown:
            raise WorkflowError(f"{node_type} has no widget(s) {sorted(unknown)}; widgets: {[s.name for s in spec.widgets]}")
        controls = dict(controls or {})
        values = []
        for widget, kind in spec.widget_layout():
            if kind == "value":
                values.append(widget_values[widget.name] if widget.name in widget_values else _default_value(widget))
            elif kind == "control":
                values.append(controls.get(widget.name, "fixed"))
            elif kind == "upload":
                values.append(UPLOAD_VALUE)
            else:
                values.append("")
        node_id = len(self.nodes) + 1
        inputs = [{"name": s.name, "type": s.type, "link": None} for s in spec.sockets]
        inputs += [{"name": s.name, "type": s.type, "widget": {"name": s.name}, "link": None} for s in spec.widgets]
        node = {
            "id": node_id, "type": node_type,
            "pos": [80 + 380 * ((node_id - 1) % 4), 80 + 320 * ((node_id - 1) // 4)], "size": [340, 260],
            "flags": {}, "order": node_id - 1, "mode": MODE_ALWAYS,
            "inputs": inputs,
            "outputs": [{"name": name, "type": t, "links": []} for name, t in zip(spec.output_names, spec.outputs)],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": values,
        }
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node_id

    def connect(self, origin_id: int, output: int | str, target_id: int, input_name: str) -> int:
        origin, target = self._node(origin_id), self._node(target_id)
        if isinstance(output, str):
            names = [o["name"] for o in origin["outputs"]]
            if output not in names:
                raise WorkflowError(f"node {origin_id} ({origin['type']}) has no output {output!r}; outputs: {names}")
            output = names.index(output)
        slot = next((i for i, e in enumerate(target["inputs"]) if e["name"] == input_name), None)
        if slot is None:
            raise WorkflowError(f"node {target_id} ({target['type']}) has no input {input_name!r}")
        out_type, in_type = origin["outputs"][output]["type"], target["inputs"][slot]["type"]
        if not types_compatible(out_type, in_type):
            raise WorkflowError(f"cannot connect {origin['type']} output {output} ({out_type}) to "
                                f"{target['type']}.{input_name} ({in_type})")
        if target["inputs"][slot]["link"] is not None:
            raise WorkflowError(f"node {target_id} input {input_name!r} is already connected")
        link_id = len(self.links) + 1
        self.links.append([link_id, origin_id, output, target_id, slot, out_type])
        origin["outputs"][output]["links"].append(link_id)
        target["inputs"][slot]["link"] = link_id
        return link_id

    def build(self) -> dict:
        nodes = json.loads(json.dumps(self.nodes))
        for node in nodes:
            for output in node["outputs"]:
                output["links"] = output["links"] or None
        return {
            "last_node_id": len(nodes), "last_link_id": len(self.links),
            "nodes": nodes, "links": json.loads(json.dumps(self.links)),
            "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
        }

    def _node(self, node_id: int) -> dict:
        if not 1 <= node_id <= len(self.nodes):
            raise WorkflowError(f"no node {node_id}")
        return self.nodes[node_id - 1]


def _default_value(spec: InputSpec):
    if "default" in spec.options:
        return spec.options["default"]
    if spec.type == "COMBO":
        return spec.choices[0] if spec.choices else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[spec.type]
