"""Reading checkpoints safely and mapping official key layouts onto our modules."""
from .io import (
    CheckpointError,
    assign_state_dict,
    check_state_dict,
    read_safetensors_metadata,
    read_state_dict,
    unwrap_state_dict,
)

__all__ = [
    "CheckpointError", "assign_state_dict", "check_state_dict", "read_safetensors_metadata", "read_state_dict",
    "unwrap_state_dict",
]
