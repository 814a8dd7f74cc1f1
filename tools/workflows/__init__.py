"""The builder of the shipped ComfyUI workflows (workflows/*.json) and their thumbnails (workflows/*.png).

    python -m tools.workflows                                   # every workflow and thumbnail
    python -m tools.workflows addsr_fast_1step --no-thumbnails  # one, without its thumbnail

Modules, lowest first (none imports one listed after it):

- ``graph``: node definitions as specs, and the UI-workflow writer;
- ``definitions``: the core-node snapshot (ComfyUI 0.3.64) and the pack's own classes;
- ``builder``: layout (columns, groups, sizes the frontend will not grow past), Note nodes, stable ids;
- ``files``: the model files each workflow needs, their URLs and the Model files Notes;
- ``modular``: the node chain AddSR and SeeSR share (loaders, RAM prompt, Encode LR, sampler, decode, finish);
- ``addsr``, ``seesr``, ``stablesr``: each family's workflows and thumbnail descriptions;
- ``thumbnails``: the labelled preview images;
- ``build``: the registry of every workflow, and the command line.

Importing the package itself loads nothing (the tests import ``graph`` without torch).
"""
