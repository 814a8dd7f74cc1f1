"""ComfyUI nodes for AddSR. Thin adapters over addsr_core; see comfy_bridge.py for everything ComfyUI-specific."""
from . import comfy_bridge
from .encode import AddSREncodeLR
from .loaders import AddSRModelLoader, AddSRRAMLoader
from .postprocess import AddSRColorFix, AddSRFinish, AddSRPrompt, AddSRTagger
from .sampler import AddSRSampler
from .seesr_sampler import SeeSRSampler
from .stablesr_loaders import StableSRCFWLoader, StableSRModelLoader
from .stablesr_sampler import StableSRCFWDecode, StableSRSampler
from .upscale import AddSRUpscale
from .vae import AddSRTiledVAEDecode, AddSRTiledVAEEncode

comfy_bridge.register_model_folders()

NODE_CLASS_MAPPINGS = {
    "AddSRModelLoader": AddSRModelLoader,
    "AddSRRAMLoader": AddSRRAMLoader,
    "AddSREncodeLR": AddSREncodeLR,
    "AddSRSampler": AddSRSampler,
    "SeeSRSampler": SeeSRSampler,
    "AddSRTiledVAEDecode": AddSRTiledVAEDecode,
    "AddSRTiledVAEEncode": AddSRTiledVAEEncode,
    "AddSRFinish": AddSRFinish,
    "AddSRColorFix": AddSRColorFix,
    "AddSRPrompt": AddSRPrompt,
    "AddSRTagger": AddSRTagger,
    "AddSRUpscale": AddSRUpscale,
    "StableSRModelLoader": StableSRModelLoader,
    "StableSRCFWLoader": StableSRCFWLoader,
    "StableSRSampler": StableSRSampler,
    "StableSRCFWDecode": StableSRCFWDecode,
}
# The one place library errors become ComfyUI's: every node's FUNCTION turns an AddSRError into
# the AddSRInputError ComfyUI shows (same message, no library traceback); nothing else is caught.
for _node_class in NODE_CLASS_MAPPINGS.values():
    comfy_bridge.with_node_errors(_node_class)

NODE_DISPLAY_NAME_MAPPINGS = {
    "AddSRModelLoader": "AddSR Load Model",
    "AddSRRAMLoader": "AddSR Load RAM (DAPE)",
    "AddSREncodeLR": "AddSR Encode LR",
    "AddSRSampler": "AddSR Sampler",
    "SeeSRSampler": "SeeSR Sampler",
    "AddSRTiledVAEDecode": "AddSR Tiled VAE Decode",
    "AddSRTiledVAEEncode": "AddSR Tiled VAE Encode",
    "AddSRFinish": "AddSR Finish (colour fix + size)",
    "AddSRColorFix": "AddSR Colour Fix",
    "AddSRPrompt": "AddSR Prompt (tags + quality words)",
    "AddSRTagger": "AddSR Tagger (RAM)",
    "AddSRUpscale": "AddSR Upscale (all-in-one)",
    "StableSRModelLoader": "StableSR Model Loader",
    "StableSRCFWLoader": "StableSR CFW VAE Loader",
    "StableSRSampler": "StableSR Sampler",
    "StableSRCFWDecode": "StableSR CFW Decode",
}
