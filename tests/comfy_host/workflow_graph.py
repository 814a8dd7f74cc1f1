"""ComfyUI workflow files without ComfyUI: load, check, convert to API prompts, run in-process.

Pure Python (no comfy, no torch). Node definitions come from either a ``NODE_CLASS_MAPPINGS``-style
dict of classes, or a server's ``/object_info`` JSON, so the same checks run in unit tests (our own
classes and fakes) and against a real server (core nodes included). The node specs and the
workflow writer (``UIWorkflowBuilder``) are the workflow builder's, tools/workflows/graph.py,
re-exported here.

The rules mirror what ComfyUI and its frontend (comfyui-frontend-package 1.27, ComfyUI 0.3.64) do:

* UI workflow format "version 0.4": ``last_node_id``, ``last_link_id``, ``nodes`` (each with ``id``,
  ``type``, ``pos``, ``size``, ``flags``, ``order``, ``mode``, ``properties``), ``links`` as
  ``[id, origin_id, origin_slot, target_id, target_slot, type]``, ``version`` (the frontend's zod
  schema). Version 1 files (links as objects) are read too.
* A node is "missing" when its type is not registered (the frontend's missing-nodes dialog).
* ``widgets_values`` is positional: one value per widget input, required inputs then optional ones
  in definition order. Widget inputs are INT, FLOAT, STRING, BOOLEAN and COMBO (a list of choices)
  without ``forceInput``. After an INT with ``control_after_generate`` (or, when that option is
  absent, an INT named ``seed``/``noise_seed``) the frontend stores one extra value, the control
  mode; after a COMBO with ``control_after_generate`` it stores two (mode and a filter string).
  Those extra values never reach the API prompt.
* Linked values are checked like the server's ``validate_inputs``: types equal, or overlapping
  comma-separated unions; ``"*"`` is accepted as the frontend does.
"""
from __future__ import annotations

import inspect
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

# Node definitions and the workflow builder live with the tool that writes the shipped workflows.
from tools.workflows.graph import (  # noqa: F401 - re-exported for the tests
    MODE_ALWAYS,
    MODE_BYPASS,
    MODE_NEVER,
    InputSpec,
    NodeSpec,
    UIWorkflowBuilder,
    WorkflowError,
    as_node_specs,
    node_spec_from_class,
    node_spec_from_object_info,
    types_compatible,
)

CONTROL_MODES = ("fixed", "increment", "decrement", "randomize")
COMBO_CONTROL_MODES = CONTROL_MODES + ("increment-wrap",)
# Node types the frontend provides itself; the server never sees them.
FRONTEND_ONLY_TYPES = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
HIDDEN_VALUES = ("prompt", "extra_pnginfo", "unique_id", "dynprompt")


# ---------------------------------------------------------------------------------------------
# UI workflow files


@dataclass(frozen=True)
class Link:
    id: int
    origin_id: Any
    origin_slot: int
    target_id: Any
    target_slot: int
    type: Any


def load_ui_workflow(path) -> dict:
    """Read a UI-format workflow (what "Save" in ComfyUI writes) and check its basic shape."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WorkflowError(f"{path}: no such workflow file") from None
    except json.JSONDecodeError as err:
        raise WorkflowError(f"{path}: not valid JSON ({err})") from None
    if isinstance(data, Mapping) and data and all(isinstance(v, Mapping) and "class_type" in v for v in data.values()):
        raise WorkflowError(f"{path}: this is an API-format prompt, not a UI workflow; queue it as it is")
    if not isinstance(data, Mapping) or not isinstance(data.get("nodes"), list):
        raise WorkflowError(f"{path}: not a ComfyUI UI workflow (expected an object with a 'nodes' list)")
    try:
        workflow_links(data)
    except WorkflowError as err:
        raise WorkflowError(f"{path}: {err}") from None
    return dict(data)


def workflow_links(workflow: Mapping) -> dict[int, Link]:
    """Links by id, from 0.4 arrays or version-1 objects."""
    links = {}
    for raw in workflow.get("links") or []:
        if isinstance(raw, Mapping):
            keys = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
            if any(k not in raw for k in keys):
                raise WorkflowError(f"link {raw!r} lacks one of {keys}")
            link = Link(*(raw[k] for k in keys))
        elif isinstance(raw, (list, tuple)) and len(raw) == 6:
            link = Link(*raw)
        else:
            raise WorkflowError(f"link {raw!r} is not [id, origin_id, origin_slot, target_id, target_slot, type]")
        links[link.id] = link
    return links


def _nodes_by_id(workflow: Mapping) -> dict[Any, Mapping]:
    return {node.get("id"): node for node in workflow.get("nodes") or [] if isinstance(node, Mapping)}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_vector2(value) -> bool:
    if isinstance(value, Mapping):
        value = [value.get("0"), value.get("1")]
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value)


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


def _schema_problems(workflow: Mapping) -> list[str]:
    """What the frontend's zod schema (0.4 or 1) would reject."""
    problems = []
    version = workflow.get("version")
    if not _is_number(version):
        return [f"'version' must be a number (0.4 for this format), got {version!r}"]
    if "id" in workflow and not (isinstance(workflow["id"], str) and _UUID.match(workflow["id"])):
        problems.append(f"workflow 'id' must be a UUID string, got {workflow['id']!r}")
    if version != 1:
        if not isinstance(workflow.get("last_node_id"), (int, str)) or isinstance(workflow.get("last_node_id"), bool):
            problems.append("'last_node_id' is missing or not a number")
        if not _is_number(workflow.get("last_link_id")):
            problems.append("'last_link_id' is missing or not a number")
        if not isinstance(workflow.get("links"), list):
            problems.append("'links' must be a list of [id, origin_id, origin_slot, target_id, target_slot, type]")
    elif not isinstance(workflow.get("state"), Mapping):
        problems.append("version 1 workflows need a 'state' object")
    if not isinstance(workflow.get("nodes"), list):
        return problems + ["'nodes' must be a list"]
    for index, node in enumerate(workflow["nodes"]):
        if not isinstance(node, Mapping):
            problems.append(f"nodes[{index}] is not an object")
            continue
        where = f"node {node.get('id', f'#{index}')} ({node.get('type', '?')})"
        if not isinstance(node.get("id"), (int, str)) or isinstance(node.get("id"), bool):
            problems.append(f"{where}: 'id' must be an integer")
        if not isinstance(node.get("type"), str):
            problems.append(f"{where}: 'type' must be a string")
        for key in ("pos", "size"):
            if not _is_vector2(node.get(key)):
                problems.append(f"{where}: '{key}' must be [x, y] numbers")
        for key in ("order", "mode"):
            if not _is_number(node.get(key)):
                problems.append(f"{where}: '{key}' must be a number")
        for key in ("flags", "properties"):
            if not isinstance(node.get(key), Mapping):
                problems.append(f"{where}: '{key}' must be an object")
        if "widgets_values" in node and not isinstance(node["widgets_values"], (list, Mapping)):
            problems.append(f"{where}: 'widgets_values' must be a list")
        for key, link_key in (("inputs", "link"), ("outputs", "links")):
            slots = node.get(key)
            if slots is None:
                continue
            if not isinstance(slots, list):
                problems.append(f"{where}: '{key}' must be a list")
                continue
            for slot in slots:
                if not isinstance(slot, Mapping) or not isinstance(slot.get("name"), str) or "type" not in slot:
                    problems.append(f"{where}: every entry of '{key}' needs 'name' and 'type'")
                elif key == "inputs" and slot.get(link_key) is not None and not _is_number(slot[link_key]):
                    problems.append(f"{where}: input {slot['name']!r} has link {slot[link_key]!r}, not a number")
                elif key == "outputs" and slot.get(link_key) is not None and not isinstance(slot[link_key], list):
                    problems.append(f"{where}: output {slot['name']!r} 'links' must be a list or null")
    return problems


def check_workflow(workflow: Mapping, node_class_mappings: Mapping[str, Any], *,
                   ignore_choices_for: Iterable[str] = ()) -> list[str]:
    """Everything that would make the frontend complain or the server refuse the graph.

    Returns readable problems, empty when the workflow is good. ``ignore_choices_for`` names COMBO
    inputs whose choices depend on installed files (e.g. ``ckpt_name``): their values are only
    checked to be strings.
    """
    specs = as_node_specs(node_class_mappings)
    ignore_choices_for = set(ignore_choices_for)
    problems = _schema_problems(workflow)
    if problems and not isinstance(workflow.get("nodes"), list):
        return problems
    try:
        links = workflow_links(workflow)
    except WorkflowError as err:
        return problems + [str(err)]

    nodes = _nodes_by_id(workflow)
    if len(nodes) != len(workflow["nodes"]):
        problems.append("node ids are not unique")
    if len(links) != len(workflow.get("links") or []):
        problems.append("link ids are not unique")
    numeric_ids = [i for i in nodes if isinstance(i, int)]
    if numeric_ids and _is_number(workflow.get("last_node_id")) and workflow["last_node_id"] < max(numeric_ids):
        problems.append(f"last_node_id {workflow['last_node_id']} is below the largest node id {max(numeric_ids)}")
    if links and _is_number(workflow.get("last_link_id")) and workflow["last_link_id"] < max(links):
        problems.append(f"last_link_id {workflow['last_link_id']} is below the largest link id {max(links)}")

    for node in nodes.values():
        node_type = node.get("type")
        where = f"node {node.get('id')} ({node_type})"
        if node_type in FRONTEND_ONLY_TYPES:
            continue
        spec = specs.get(node_type)
        if spec is None:
            problems.append(f"{where}: node type {node_type!r} is not registered (the frontend reports it missing)")
            continue
        problems += [f"{where}: {p}" for p in _slot_problems(node, spec)]
        problems += [f"{where}: {p}" for p in _widget_problems(node, spec, ignore_choices_for)]

    for link in links.values():
        problems += [f"link {link.id}: {p}" for p in _link_problems(link, nodes, specs)]
    for node in nodes.values():
        for slot, entry in enumerate(node.get("inputs") or []):
            link_id = entry.get("link") if isinstance(entry, Mapping) else None
            if link_id is not None and (link_id not in links or links[link_id].target_id != node.get("id")
                                        or links[link_id].target_slot != slot):
                problems.append(f"node {node.get('id')} ({node.get('type')}): input {entry.get('name')!r} refers "
                                f"to link {link_id}, which does not end there")
    return problems


def _input_name(entry: Mapping) -> str:
    widget = entry.get("widget")
    return widget["name"] if isinstance(widget, Mapping) and "name" in widget else entry.get("name")


def _slot_problems(node: Mapping, spec: NodeSpec) -> list[str]:
    problems = []
    outputs = node.get("outputs") or []
    if outputs and len(outputs) != len(spec.outputs):
        problems.append(f"has {len(outputs)} outputs, the node defines {len(spec.outputs)} {list(spec.outputs)}")
    for index, (entry, expected) in enumerate(zip(outputs, spec.outputs)):
        if isinstance(entry, Mapping) and entry.get("type") != expected:
            problems.append(f"output {index} has type {entry.get('type')!r}, the node returns {expected!r}")
    linked = set()
    for entry in node.get("inputs") or []:
        if not isinstance(entry, Mapping):
            continue
        name = _input_name(entry)
        if spec.input(name) is None:
            problems.append(f"input {name!r} does not exist on {spec.name} (inputs: {[s.name for s in spec.inputs]})")
        elif entry.get("link") is not None:
            linked.add(name)
    if node.get("mode", MODE_ALWAYS) == MODE_ALWAYS:
        for socket in spec.sockets:
            if socket.required and socket.name not in linked:
                problems.append(f"required input {socket.name!r} ({socket.type}) is not connected")
    return problems


def _link_problems(link: Link, nodes: Mapping, specs: Mapping[str, NodeSpec]) -> list[str]:
    origin, target = nodes.get(link.origin_id), nodes.get(link.target_id)
    if origin is None or target is None:
        missing = link.origin_id if origin is None else link.target_id
        return [f"refers to node {missing}, which does not exist"]
    problems = []
    origin_outputs = [o if isinstance(o, Mapping) else {} for o in origin.get("outputs") or []]
    target_inputs = [i if isinstance(i, Mapping) else {} for i in target.get("inputs") or []]
    if not (0 <= link.origin_slot < len(origin_outputs)) or link.id not in (origin_outputs[link.origin_slot].get("links") or []):
        problems.append(f"node {origin['id']} output {link.origin_slot} does not list this link")
    if not (0 <= link.target_slot < len(target_inputs)):
        return problems + [f"node {target['id']} has no input slot {link.target_slot}"]
    if target_inputs[link.target_slot].get("link") != link.id:
        problems.append(f"node {target['id']} input {link.target_slot} is not connected to this link")
    origin_spec, target_spec = specs.get(origin.get("type")), specs.get(target.get("type"))
    if origin_spec is None or target_spec is None:
        return problems  # frontend-only or missing node: reported elsewhere
    if link.origin_slot >= len(origin_spec.outputs):
        return problems + [f"{origin_spec.name} has no output {link.origin_slot}"]
    out_type = origin_spec.outputs[link.origin_slot]
    input_spec = target_spec.input(_input_name(target_inputs[link.target_slot]))
    if input_spec is None:
        return problems
    if not types_compatible(out_type, input_spec.type):
        problems.append(f"{origin_spec.name} output {link.origin_slot} is {out_type}, but "
                        f"{target_spec.name}.{input_spec.name} takes {input_spec.type}")
    if link.type not in (out_type, "*"):
        problems.append(f"link type {link.type!r} differs from the origin output type {out_type!r}")
    return problems


def _value_problem(spec: InputSpec, value, ignore_choices: bool) -> str | None:
    """Why ``value`` is not acceptable for the widget ``spec``, or None."""
    kind = spec.type
    if kind == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"{spec.name} = {value!r} is not an integer"
    if kind == "FLOAT" and not _is_number(value):
        return f"{spec.name} = {value!r} is not a number"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{spec.name} = {value!r} is not true/false"
    if kind == "STRING" and not isinstance(value, str):
        return f"{spec.name} = {value!r} is not a string"
    if kind in ("INT", "FLOAT"):
        low, high = spec.options.get("min"), spec.options.get("max")
        if low is not None and value < low:
            return f"{spec.name} = {value!r} is below its min {low}"
        if high is not None and value > high:
            return f"{spec.name} = {value!r} is above its max {high}"
    if kind == "COMBO":
        if ignore_choices:
            return None if isinstance(value, str) else f"{spec.name} = {value!r} is not a file name"
        if value not in (spec.choices or ()):
            shown = list(spec.choices or ())
            shown = shown if len(shown) <= 20 else f"{len(shown)} choices"
            return f"{spec.name} = {value!r} is not one of {shown}"
    return None


def _widget_problems(node: Mapping, spec: NodeSpec, ignore_choices_for: set) -> list[str]:
    values = node.get("widgets_values")
    layout = spec.widget_layout()
    if values is None:
        return [f"no widgets_values; {spec.name} expects {len(layout)}"] if layout else []
    if isinstance(values, Mapping):  # object form (used by a few custom nodes): values by widget name
        unknown = [k for k in values if spec.input(k) is None]
        return [f"widgets_values names unknown inputs {unknown}"] if unknown else []
    expected = len(layout)
    # Files written without the upload button's value load too; the frontend adds it back.
    tolerated = expected - sum(kind == "upload" for _, kind in layout)
    if len(values) not in (expected, tolerated):
        names = [s.name if kind == "value" else f"{s.name}:{kind}" for s, kind in layout]
        return [f"widgets_values has {len(values)} values, {spec.name} expects {expected}: {names}"]
    problems = []
    for (widget, kind), value in zip(layout, values):
        if kind == "control":
            modes = COMBO_CONTROL_MODES if widget.type == "COMBO" else CONTROL_MODES
            if value not in modes:
                problems.append(f"control_after_generate of {widget.name} = {value!r} is not one of {list(modes)}")
        elif kind in ("filter", "upload"):
            if not isinstance(value, str):
                problems.append(f"control_filter_list of {widget.name} = {value!r} is not a string")
        else:
            problem = _value_problem(widget, value, widget.name in ignore_choices_for)
            if problem:
                problems.append(problem)
    return problems


# ---------------------------------------------------------------------------------------------
# UI -> API prompt


def widget_values_by_name(node: Mapping, spec: NodeSpec) -> dict[str, Any]:
    """The values a node's widgets send to the server (control values are frontend-only)."""
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, Mapping):
        return {k: v for k, v in values.items() if spec.input(k) is not None}
    layout = [(widget, kind) for widget, kind in spec.widget_layout() if kind != "upload"]
    if len(values) < len(layout):
        raise WorkflowError(f"node {node.get('id')} ({spec.name}): widgets_values has {len(values)} values, "
                            f"expected {len(layout)}")
    return {widget.name: value for (widget, kind), value in zip(layout, values) if kind == "value"}


def ui_to_api_prompt(workflow: Mapping, node_class_mappings: Mapping[str, Any]) -> dict[str, dict]:
    """The API prompt the frontend would queue for this workflow (``{"id": {"class_type", "inputs"}}``).

    Muted nodes (mode 2) and frontend-only nodes are left out; links through Reroute and bypassed
    nodes (mode 4) are followed to their real source, as the frontend does.
    """
    specs = as_node_specs(node_class_mappings)
    nodes = _nodes_by_id(workflow)
    links = workflow_links(workflow)
    prompt = {}
    for node_id, node in nodes.items():
        node_type = node.get("type")
        if node_type in FRONTEND_ONLY_TYPES or node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        spec = specs.get(node_type)
        if spec is None:
            raise WorkflowError(f"node {node_id}: node type {node_type!r} is not registered")
        inputs = widget_values_by_name(node, spec)
        for entry in node.get("inputs") or []:
            if entry.get("link") is None:
                continue
            name = _input_name(entry)
            source = _resolve_source(links.get(entry["link"]), nodes, links, set())
            if source is None:
                continue  # muted or unconnected upstream: the widget value (if any) stays
            if source == "primitive":
                continue  # a PrimitiveNode mirrors its value into this node's widget
            inputs[name] = [str(source[0]), source[1]]
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs,
                                "_meta": {"title": node.get("title") or node_type}}
    return prompt


def _resolve_source(link: Link | None, nodes: Mapping, links: Mapping[int, Link], seen: set):
    """(origin_id, slot) of the real producer behind a link, "primitive", or None."""
    if link is None or link.id in seen:
        return None
    seen.add(link.id)
    origin = nodes.get(link.origin_id)
    if origin is None:
        return None
    mode, node_type = origin.get("mode", MODE_ALWAYS), origin.get("type")
    if node_type == "PrimitiveNode":
        return "primitive"
    if mode == MODE_NEVER:
        return None
    if node_type == "Reroute" or mode == MODE_BYPASS:
        candidates = [e for e in origin.get("inputs") or [] if e.get("link") is not None]
        if mode == MODE_BYPASS:  # same slot if its type matches, else the first input of that type
            outputs = origin.get("outputs") or []
            out_type = outputs[link.origin_slot].get("type", link.type) if link.origin_slot < len(outputs) else link.type
            same = [e for i, e in enumerate(origin.get("inputs") or [])
                    if i == link.origin_slot and e.get("link") is not None and types_compatible(out_type, e.get("type"))]
            candidates = same or [e for e in candidates if types_compatible(out_type, e.get("type"))]
        for entry in candidates:
            return _resolve_source(links.get(entry["link"]), nodes, links, seen)
        return None
    return (link.origin_id, link.origin_slot)


# ---------------------------------------------------------------------------------------------
# API prompt: validation and a small in-process executor


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def validate_api_prompt(prompt: Mapping[str, Mapping], node_class_mappings: Mapping[str, Any], *,
                        ignore_choices_for: Iterable[str] = ()) -> list[str]:
    """The server's /prompt checks (execution.validate_inputs), as readable problems.

    ``ignore_choices_for`` as in check_workflow: COMBO inputs whose choices are installed files.
    """
    specs = as_node_specs(node_class_mappings)
    ignore_choices_for = set(ignore_choices_for)
    problems = []
    for node_id, node in prompt.items():
        class_type = node.get("class_type") if isinstance(node, Mapping) else None
        spec = specs.get(class_type)
        if spec is None:
            problems.append(f"node {node_id}: class_type {class_type!r} is not registered")
            continue
        inputs = node.get("inputs") or {}
        validated_by_node = _validate_inputs_args(spec)
        for input_spec in spec.inputs:
            where = f"node {node_id} ({class_type}).{input_spec.name}"
            if input_spec.name not in inputs:
                if input_spec.required:
                    problems.append(f"{where}: required input is missing")
                continue
            value = inputs[input_spec.name]
            if isinstance(value, list):
                if not _is_link(value):
                    problems.append(f"{where}: {value!r} is not a link [node_id, output_index]")
                    continue
                origin = prompt.get(value[0])
                origin_spec = specs.get(origin.get("class_type")) if isinstance(origin, Mapping) else None
                if origin_spec is None:
                    problems.append(f"{where}: linked node {value[0]!r} is not in the prompt")
                elif not 0 <= value[1] < len(origin_spec.outputs):
                    problems.append(f"{where}: {origin_spec.name} has no output {value[1]}")
                elif not types_compatible(origin_spec.outputs[value[1]], input_spec.type):
                    problems.append(f"{where}: received {origin_spec.outputs[value[1]]}, takes {input_spec.type}")
                continue
            if input_spec.name in validated_by_node:
                continue
            try:
                value = _convert_literal(input_spec, value)
            except (TypeError, ValueError) as err:
                problems.append(f"{where}: {err}")
                continue
            if input_spec.type in ("INT", "FLOAT", "COMBO"):
                problem = _value_problem(input_spec, value, input_spec.name in ignore_choices_for)
                if problem:
                    problems.append(f"node {node_id} ({class_type}): {problem}")
    problems += _cycle_problems(prompt)
    return problems


def _validate_inputs_args(spec: NodeSpec) -> set[str]:
    check = getattr(spec.node_class, "VALIDATE_INPUTS", None) if spec.node_class is not None else None
    if check is None:
        return set()
    argspec = inspect.getfullargspec(check)
    return {spec_.name for spec_ in spec.inputs} if argspec.varkw else set(argspec.args)


def _convert_literal(spec: InputSpec, value):
    """The server's conversions for literal values (int(), float(), str(), bool())."""
    if isinstance(value, Mapping) and "__value__" in value:
        value = value["__value__"]
    converters = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
    if spec.type in converters:
        try:
            return converters[spec.type](value)
        except (TypeError, ValueError):
            raise ValueError(f"cannot convert {value!r} to {spec.type}") from None
    return value


def _cycle_problems(prompt: Mapping[str, Mapping]) -> list[str]:
    try:
        _topological_order(prompt, list(prompt))
    except WorkflowError as err:
        return [str(err)]
    return []


def _topological_order(prompt: Mapping[str, Mapping], targets: list[str]) -> list[str]:
    order, state = [], {}
    for target in targets:
        stack = [(target, iter(_dependencies(prompt, target)))]
        state[target] = "open"
        while stack:
            node_id, deps = stack[-1]
            dep = next(deps, None)
            if dep is None:
                stack.pop()
                state[node_id] = "done"
                order.append(node_id)
            elif state.get(dep) == "open":
                raise WorkflowError(f"the prompt has a cycle through node {dep}")
            elif dep not in state:
                if dep not in prompt:
                    raise WorkflowError(f"node {node_id} links to node {dep}, which is not in the prompt")
                state[dep] = "open"
                stack.append((dep, iter(_dependencies(prompt, dep))))
        # `target` may already have been done as another target's dependency: nothing to add.
    return order


def _dependencies(prompt: Mapping[str, Mapping], node_id: str) -> list[str]:
    return [v[0] for v in (prompt[node_id].get("inputs") or {}).values() if _is_link(v)]


@dataclass
class ExecutionResult:
    outputs: dict[str, tuple] = field(default_factory=dict)  # node id -> returned values
    ui: dict[str, Any] = field(default_factory=dict)  # node id -> the "ui" part of an output node's result
    order: list[str] = field(default_factory=list)


def execute_api_prompt(prompt: Mapping[str, Mapping], node_class_mappings: Mapping[str, Any], *,
                       extra_pnginfo: Mapping | None = None) -> ExecutionResult:
    """Run a prompt in this process, the way ComfyUI would for simple (non-list) nodes.

    Only output nodes (OUTPUT_NODE = True) and what they depend on run; without any output node,
    every node runs. Raises WorkflowError for an invalid prompt, and lets node errors propagate.
    """
    specs = as_node_specs(node_class_mappings)
    problems = validate_api_prompt(prompt, specs)
    if problems:
        raise WorkflowError("invalid prompt:\n  " + "\n  ".join(problems))
    for node_id, node in prompt.items():
        spec = specs[node["class_type"]]
        if spec.node_class is None or not spec.function:
            raise WorkflowError(f"node {node_id} ({spec.name}): no node class to run (definitions came from /object_info)")
        if spec.input_is_list or any(spec.output_is_list) or any(s.options.get("lazy") for s in spec.inputs):
            raise WorkflowError(f"node {node_id} ({spec.name}): list or lazy inputs/outputs are not emulated "
                                "here; run this prompt in a real ComfyUI (tests/comfy_host)")
    targets = [i for i, n in prompt.items() if specs[n["class_type"]].output_node] or list(prompt)
    result = ExecutionResult(order=_topological_order(prompt, targets))
    for node_id in result.order:
        node = prompt[node_id]
        spec = specs[node["class_type"]]
        kwargs = {}
        for input_spec in spec.inputs:
            if input_spec.name not in node["inputs"]:
                continue
            value = node["inputs"][input_spec.name]
            kwargs[input_spec.name] = (result.outputs[value[0]][value[1]] if _is_link(value)
                                       else _convert_literal(input_spec, value))
        hidden = {"prompt": dict(prompt), "extra_pnginfo": dict(extra_pnginfo or {}), "unique_id": node_id,
                  "dynprompt": None}
        kwargs.update({name: hidden[name] for name in spec.hidden if name in hidden})
        returned = getattr(spec.node_class(), spec.function)(**kwargs)
        if isinstance(returned, Mapping):
            if "ui" in returned:
                result.ui[node_id] = returned["ui"]
            returned = returned.get("result", ())
        returned = tuple(returned or ())
        if len(returned) != len(spec.outputs) and not (spec.output_node and not returned):
            raise WorkflowError(f"node {node_id} ({spec.name}) returned {len(returned)} values, "
                                f"RETURN_TYPES has {len(spec.outputs)}")
        result.outputs[node_id] = returned
    return result
