"""Workflow layout: nodes in columns, groups around them, Note nodes, stable workflow ids.

Sizes are at least what the 1.27 frontend computes for a node (:func:`min_node_size`), so nothing
overlaps once the frontend grows a node to its computed size.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from .definitions import definitions
from .graph import UIWorkflowBuilder

TITLE_HEIGHT = 30  # the frontend draws the title bar above pos[1]
SLOT_HEIGHT = 20
WIDGET_HEIGHT = 24  # 20 px widget + 4 px spacing
MULTILINE_HEIGHT = 90
IMAGE_NODES = {"LoadImage": 330, "SaveImage": 300, "PreviewImage": 300}  # room for the image preview
NOTE_TYPES = ("Note", "MarkdownNote")


def min_node_size(node: dict, specs: dict) -> tuple[float, float]:
    """At least what LiteGraph's computeSize gives this node in the 1.27 frontend (body, no title)."""
    if node["type"] in NOTE_TYPES:
        return 300.0, 120.0
    spec = specs[node["type"]]
    sockets = len(spec.sockets)
    outputs = len(spec.outputs)
    widgets = spec.widgets
    multiline = sum(1 for w in widgets if w.type == "STRING" and w.options.get("multiline"))
    height = 10 + SLOT_HEIGHT * max(sockets, outputs, 1) + WIDGET_HEIGHT * (len(widgets) - multiline)
    height += MULTILINE_HEIGHT * multiline
    height += WIDGET_HEIGHT * sum(1 for w, kind in spec.widget_layout() if kind == "control")
    height = max(height, IMAGE_NODES.get(node["type"], 0))
    return 340.0, float(height)


def node_rect(node: dict) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) including the title bar."""
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


def rects_overlap(a, b, gap: float = 0.0) -> bool:
    return a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap


@dataclass
class Layout:
    """Stacks nodes in columns and draws groups around them."""

    builder: UIWorkflowBuilder
    column_width: float = 480.0
    gap: float = 40.0
    top: float = 0.0
    _bottom: dict = field(default_factory=dict)
    groups: list = field(default_factory=list)

    def place(self, node_id: int, column: int, *, width: float = 340.0, height: float | None = None,
              below: float | None = None) -> int:
        node = self.builder.nodes[node_id - 1]
        min_w, min_h = min_node_size(node, self.builder.specs_with_notes)
        y = self._bottom.get(column, self.top) if below is None else below
        y = max(y, self._bottom.get(column, self.top))
        node["pos"] = [column * self.column_width, y + TITLE_HEIGHT]
        node["size"] = [max(width, min_w), max(height or 0.0, min_h)]
        self._bottom[column] = y + TITLE_HEIGHT + node["size"][1] + self.gap
        return node_id

    def group(self, title: str, node_ids: list[int], color: str = "#3f789e") -> None:
        rects = [node_rect(self.builder.nodes[i - 1]) for i in node_ids]
        pad, head = 14.0, 44.0
        x0 = min(r[0] for r in rects) - pad
        y0 = min(r[1] for r in rects) - head
        x1 = max(r[2] for r in rects) + pad
        y1 = max(r[3] for r in rects) + pad
        self.groups.append({"id": len(self.groups) + 1, "title": title, "bounding": [x0, y0, x1 - x0, y1 - y0],
                            "color": color, "font_size": 24, "flags": {}})

    def leave_room_for_groups(self) -> None:
        """Push every column's start down so group title bars fit above the first node."""
        self.top = 44.0


class WorkflowBuilder(UIWorkflowBuilder):
    """UIWorkflowBuilder plus frontend-only Note nodes, groups and stable ids."""

    def __init__(self, definitions_: dict, workflow_id: str):
        super().__init__(definitions_)
        self.workflow_id = workflow_id
        self.specs_with_notes = self.specs

    def note(self, text: str, *, title: str = "Note", markdown: bool = True) -> int:
        node_id = len(self.nodes) + 1
        self.nodes.append({
            "id": node_id, "type": "MarkdownNote" if markdown else "Note",
            "pos": [0, 0], "size": [300, 120], "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [], "outputs": [], "title": title, "properties": {}, "widgets_values": [text],
            "color": "#432", "bgcolor": "#653",
        })
        return node_id

    def build_with(self, layout: Layout) -> dict:
        workflow = self.build()
        workflow["id"] = self.workflow_id
        workflow["groups"] = layout.groups
        workflow["extra"] = {"ds": {"scale": 0.75, "offset": [460, 80]}, "frontendVersion": "1.27.10"}
        return workflow


def stable_id(name: str) -> str:
    """The workflow's id: the same on every rebuild."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"addsr-comfyui/workflows/{name}"))


def start(name: str) -> tuple[WorkflowBuilder, Layout]:
    """A builder on the core snapshot and the pack, and a layout with room for group titles."""
    builder = WorkflowBuilder(definitions(), stable_id(name))
    layout = Layout(builder)
    layout.leave_room_for_groups()
    return builder, layout
