"""The AddSR family: its sampler (few-step, with prediction-based self-refinement), its sample stage
and its tiny test configuration. Shared pieces (networks, loading, RAM, text, tiling, imaging) live
in the component folders beside this one."""
