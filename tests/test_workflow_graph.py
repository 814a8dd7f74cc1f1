"""tests/comfy_host/workflow_graph.py on a small synthetic graph of fake node classes (no ComfyUI needed)."""
import copy
import json

import pytest

from comfy_host.workflow_graph import (
    UIWorkflowBuilder,
    WorkflowError,
    as_node_specs,
    check_workflow,
    execute_api_prompt,
    load_ui_workflow,
    types_compatible,
    ui_to_api_prompt,
    validate_api_prompt,
)


class MakeNumbers:
    RETURN_TYPES = ("NUMBERS",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "count": ("INT", {"default": 3, "min": 1, "max": 10}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**32}),  # gets a control value by name
            "start": ("FLOAT", {"default": 0.5, "min": -1.0, "max": 1.0}),
        }}

    def make(self, count, seed, start):
        return ([start + seed + i for i in range(count)],)


class Scale:
    RETURN_TYPES = ("NUMBERS", "STRING")
    RETURN_NAMES = ("numbers", "label")
    FUNCTION = "scale"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "numbers": ("NUMBERS",),
                "mode": (["double", "negate"], {"default": "double"}),
                "noise": ("INT", {"default": 1, "control_after_generate": False}),  # explicit: no control
            },
            "optional": {
                "enabled": ("BOOLEAN", {"default": True}),
                "label": ("STRING", {"default": "x", "multiline": True}),
                "offset": ("FLOAT", {"default": 0.0, "forceInput": True}),  # a socket, not a widget
            },
        }

    def scale(self, numbers, mode, noise, enabled=True, label="x", offset=0.0):
        if enabled:
            numbers = [2 * n if mode == "double" else -n for n in numbers]
        return ([n + offset for n in numbers], f"{label}:{mode}:{noise}")


class Pick:
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"numbers": ("NUMBERS",),
                             "which": (["first", "last"], {"control_after_generate": True})}}

    def pick(self, numbers, which):
        return (numbers[0] if which == "first" else numbers[-1],)


class Collect:
    RETURN_TYPES = ()
    FUNCTION = "collect"
    OUTPUT_NODE = True
    calls = []

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"numbers": ("NUMBERS",), "label": ("STRING", {"forceInput": True})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    def collect(self, numbers, label, unique_id):
        Collect.calls.append(unique_id)
        return {"ui": {"numbers": list(numbers), "label": [label]}}


class Unused:
    RETURN_TYPES = ("FLOAT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def run(self):
        raise AssertionError("nodes no output node needs must not run")


class SeedSource:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 7})}}

    def run(self, value):
        return (value,)


NODES = {"MakeNumbers": MakeNumbers, "Scale": Scale, "Pick": Pick, "Collect": Collect, "Unused": Unused,
         "SeedSource": SeedSource}


def build():
    b = UIWorkflowBuilder(NODES)
    make = b.add("MakeNumbers", count=4, seed=10, start=0.5)
    scale = b.add("Scale", mode="negate", label="neg")
    collect = b.add("Collect", title="Result")
    b.add("Unused")
    b.connect(make, 0, scale, "numbers")
    b.connect(scale, "numbers", collect, "numbers")
    b.connect(scale, "label", collect, "label")
    return b.build()


def test_builder_writes_frontend_layout():
    wf = build()
    assert wf["version"] == 0.4 and wf["last_node_id"] == 4 and wf["last_link_id"] == 3
    make, scale, collect, _ = wf["nodes"]
    assert make["widgets_values"] == [4, 10, "fixed", 0.5]  # control value right after the seed
    assert scale["widgets_values"] == ["negate", 1, True, "neg"]  # no control: flag is False
    assert [i["name"] for i in scale["inputs"]] == ["numbers", "offset", "mode", "noise", "enabled", "label"]
    assert scale["inputs"][2]["widget"] == {"name": "mode"} and scale["inputs"][2]["type"] == "COMBO"
    assert wf["links"][0] == [1, 1, 0, 2, 0, "NUMBERS"]
    assert scale["outputs"][0]["links"] == [2] and collect["widgets_values"] == []


def test_combo_control_adds_two_values():
    b = UIWorkflowBuilder(NODES)
    b.add("Pick", which="last", controls={"which": "randomize"})
    assert b.build()["nodes"][0]["widgets_values"] == ["last", "randomize", ""]


def test_good_workflow_has_no_problems(tmp_path):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(build()))
    assert check_workflow(load_ui_workflow(path), NODES) == []


@pytest.mark.parametrize("edit, expected", [
    (lambda wf: wf["nodes"][0].update(type="Gone"), "node type 'Gone' is not registered"),
    (lambda wf: wf["nodes"][0]["widgets_values"].pop(2), "widgets_values has 3 values, MakeNumbers expects 4"),
    (lambda wf: wf["nodes"][0]["widgets_values"].__setitem__(2, "sometimes"), "control_after_generate of seed"),
    (lambda wf: wf["nodes"][0]["widgets_values"].__setitem__(0, 11), "count = 11 is above its max 10"),
    (lambda wf: wf["nodes"][0]["widgets_values"].__setitem__(0, 2.5), "count = 2.5 is not an integer"),
    (lambda wf: wf["nodes"][0]["widgets_values"].__setitem__(3, True), "start = True is not a number"),
    (lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(0, "triple"), "mode = 'triple' is not one of"),
    (lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(2, "yes"), "enabled = 'yes' is not true/false"),
    (lambda wf: wf["nodes"][1]["widgets_values"].__setitem__(3, 5), "label = 5 is not a string"),
    (lambda wf: wf["links"][0].__setitem__(4, 2), "node 2 input 2 is not connected to this link"),
    (lambda wf: wf.update(last_link_id=1), "last_link_id 1 is below the largest link id 3"),
    (lambda wf: wf.pop("version"), "'version' must be a number"),
    (lambda wf: wf["nodes"][2].pop("properties"), "'properties' must be an object"),
    (lambda wf: wf["nodes"][2]["inputs"][1].update(link=None), "required input 'label' (STRING) is not connected"),
    (lambda wf: wf["nodes"][1]["outputs"][1].update(type="INT"), "output 1 has type 'INT', the node returns 'STRING'"),
])
def test_problems_are_named(edit, expected):
    wf = build()
    edit(wf)
    problems = check_workflow(wf, NODES)
    assert any(expected in p for p in problems), problems


def test_link_type_mismatch_is_reported():
    wf = build()
    # Scale's STRING output into Collect.numbers (NUMBERS): rewire link 2 to come from output 1.
    wf["links"][1][2] = 1
    wf["nodes"][1]["outputs"][0]["links"] = None
    wf["nodes"][1]["outputs"][1]["links"] = [3, 2]
    problems = check_workflow(wf, NODES)
    assert any("Scale output 1 is STRING, but Collect.numbers takes NUMBERS" in p for p in problems), problems


def test_types_compatible_follows_server_rule():
    assert types_compatible("IMAGE", "IMAGE") and types_compatible("IMAGE", "*")
    assert types_compatible("INT,FLOAT", "FLOAT") and not types_compatible("IMAGE", "MASK")


def test_upload_button_value_from_older_frontends_is_tolerated():
    class Load:
        RETURN_TYPES = ("IMAGE",)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"image": (["a.png", "b.png"], {"image_upload": True})}}

    node = {"id": 1, "type": "Load", "pos": [0, 0], "size": [1, 1], "flags": {}, "order": 0, "mode": 0,
            "properties": {}, "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": None}]}
    wf = {"last_node_id": 1, "last_link_id": 0, "nodes": [node], "links": [], "version": 0.4}
    for values, ok in ((["a.png"], True), (["b.png", "image"], True), (["c.png"], False), (["a.png", 1, 2], False)):
        node["widgets_values"] = values
        assert (check_workflow(wf, {"Load": Load}) == []) == ok, values


def test_object_info_and_classes_give_the_same_specs():
    info = {"Scale": {
        "input": {"required": {"numbers": ["NUMBERS"], "mode": [["double", "negate"], {"default": "double"}],
                               "noise": ["INT", {"default": 1, "control_after_generate": False}]},
                  "optional": {"enabled": ["BOOLEAN", {"default": True}], "label": ["STRING", {"default": "x"}],
                               "offset": ["FLOAT", {"forceInput": True}]}},
        "input_order": {"required": ["numbers", "mode", "noise"], "optional": ["enabled", "label", "offset"]},
        "output": ["NUMBERS", "STRING"], "output_name": ["numbers", "label"], "output_node": False}}
    from_info = as_node_specs(info)["Scale"]
    from_class = as_node_specs(NODES)["Scale"]
    assert from_info.widget_layout() and [(s.name, k) for s, k in from_info.widget_layout()] == \
        [(s.name, k) for s, k in from_class.widget_layout()]
    assert from_info.outputs == from_class.outputs and from_info.output_names == from_class.output_names


def test_ui_to_api_prompt_maps_widgets_and_links():
    prompt = ui_to_api_prompt(build(), NODES)
    assert prompt["1"] == {"class_type": "MakeNumbers", "inputs": {"count": 4, "seed": 10, "start": 0.5},
                           "_meta": {"title": "MakeNumbers"}}
    assert prompt["2"]["inputs"] == {"numbers": ["1", 0], "mode": "negate", "noise": 1, "enabled": True, "label": "neg"}
    assert prompt["3"]["inputs"] == {"numbers": ["2", 0], "label": ["2", 1]}
    assert prompt["3"]["_meta"]["title"] == "Result"
    assert validate_api_prompt(prompt, NODES) == []


def test_linked_widget_takes_the_link():
    b = UIWorkflowBuilder(NODES)
    make = b.add("MakeNumbers", count=1, seed=0, start=0.0)
    source = b.add("SeedSource", value=5)
    collect = b.add("Collect")
    scale = b.add("Scale")
    b.connect(source, 0, make, "seed")  # a widget input driven by a link, as the frontend allows
    b.connect(make, 0, scale, "numbers")
    b.connect(scale, 0, collect, "numbers")
    b.connect(scale, 1, collect, "label")
    wf = b.build()
    assert check_workflow(wf, NODES) == []
    prompt = ui_to_api_prompt(wf, NODES)
    assert prompt["1"]["inputs"] == {"count": 1, "seed": ["2", 0], "start": 0.0}
    assert execute_api_prompt(prompt, NODES).outputs["1"] == ([5.0],)


def test_bypassed_and_muted_nodes():
    wf = build()
    wf["nodes"][1]["mode"] = 4  # bypass Scale: Collect.numbers now comes straight from MakeNumbers
    prompt = ui_to_api_prompt(wf, NODES)
    assert "2" not in prompt and prompt["3"]["inputs"]["numbers"] == ["1", 0]
    assert "label" not in prompt["3"]["inputs"]  # no STRING input on Scale to pass through
    wf["nodes"][0]["mode"] = 2  # mute MakeNumbers as well
    assert "numbers" not in ui_to_api_prompt(wf, NODES)["3"]["inputs"]


def test_reroute_is_followed():
    wf = build()
    wf["nodes"].append({"id": 5, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {}, "order": 4,
                        "mode": 0, "properties": {}, "inputs": [{"name": "", "type": "*", "link": 4}],
                        "outputs": [{"name": "", "type": "NUMBERS", "links": [1]}]})
    # MakeNumbers -> Reroute (link 4) -> Scale (link 1)
    wf["links"][0] = [1, 5, 0, 2, 0, "NUMBERS"]
    wf["links"].append([4, 1, 0, 5, 0, "NUMBERS"])
    wf["nodes"][0]["outputs"][0]["links"] = [4]
    wf["last_node_id"], wf["last_link_id"] = 5, 4
    assert check_workflow(wf, NODES) == []
    assert ui_to_api_prompt(wf, NODES)["2"]["inputs"]["numbers"] == ["1", 0]


def test_execute_runs_output_nodes_and_their_inputs():
    Collect.calls.clear()
    result = execute_api_prompt(ui_to_api_prompt(build(), NODES), NODES)
    assert result.order == ["1", "2", "3"]  # Unused (4) is needed by no output node
    assert result.outputs["1"] == ([10.5, 11.5, 12.5, 13.5],)
    assert result.outputs["2"] == ([-10.5, -11.5, -12.5, -13.5], "neg:negate:1")
    assert result.ui["3"] == {"numbers": [-10.5, -11.5, -12.5, -13.5], "label": ["neg:negate:1"]}
    assert Collect.calls == ["3"]  # hidden unique_id is passed


def test_execute_refuses_what_the_server_refuses():
    prompt = ui_to_api_prompt(build(), NODES)
    prompt["1"]["inputs"]["count"] = 0
    del prompt["2"]["inputs"]["mode"]
    prompt["3"]["inputs"]["numbers"] = ["2", 1]
    with pytest.raises(WorkflowError) as err:
        execute_api_prompt(prompt, NODES)
    message = str(err.value)
    assert "count = 0 is below its min 1" in message
    assert "Scale).mode: required input is missing" in message
    assert "Collect).numbers: received STRING, takes NUMBERS" in message


def test_cycles_are_reported():
    prompt = ui_to_api_prompt(build(), NODES)
    prompt["1"]["class_type"] = "Scale"
    prompt["1"]["inputs"] = {"numbers": ["2", 0], "mode": "double", "noise": 0}
    assert any("cycle" in p for p in validate_api_prompt(prompt, NODES))


def test_loader_errors_name_the_file(tmp_path):
    api = tmp_path / "api.json"
    api.write_text(json.dumps(ui_to_api_prompt(build(), NODES)))
    with pytest.raises(WorkflowError, match="API-format prompt"):
        load_ui_workflow(api)
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(WorkflowError, match="broken.json: not valid JSON"):
        load_ui_workflow(broken)
    bad_link = tmp_path / "bad_link.json"
    wf = copy.deepcopy(build())
    wf["links"][0] = [1, 1, 0]
    bad_link.write_text(json.dumps(wf))
    with pytest.raises(WorkflowError, match="bad_link.json: link"):
        load_ui_workflow(bad_link)
