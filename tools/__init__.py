"""Developer tools: the workflow builder (tools/workflows), parity-fixture recorders, ComfyUI test-host setup.

Never imported by the pack or by addsr_core; tools never import the tests.
"""
