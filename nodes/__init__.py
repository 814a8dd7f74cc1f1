"""ComfyUI nodes for AddSR. Thin adapters over addsr_core; see comfy_bridge.py for everything ComfyUI-specific."""
from . import comfy_bridge
from .encode import AddSREncodeLR
from .loaders import AddSRModelLoader, AddSRRAMLoader
from .postprocess import AddSRColorFix, AddSRFinish, AddSRPrompt, AddSRTagger
from .sampler import AddSRSampler
from .seesr_sampler import SeeSRSampler, SeeSRSamplerV2
from .stablesr_loaders import StableSRCFWLoader, StableSRModelLoader
from .stablesr_sampler import StableSRCFWDecode, StableSRCFWDecodeV2, StableSRSampler, StableSRSamplerV2
from .upscale import AddSRUpscale
from .vae import AddSRTiledVAEDecode, AddSRTiledVAEEncode

comfy_bridge.register_model_folders()

NODE_CLASS_MAPPINGS = {
    "AddSRModelLoader": AddSRModelLoader,
    "AddSRRAMLoader": AddSRRAMLoader,
    "AddSREncodeLR": AddSREncodeLR,
    "AddSRSampler": AddSRSampler,
    "SeeSRSamplerV2": SeeSRSamplerV2,
    "AddSRTiledVAEDecode": AddSRTiledVAEDecode,
    "AddSRTiledVAEEncode": AddSRTiledVAEEncode,
    "AddSRFinish": AddSRFinish,
    "AddSRColorFix": AddSRColorFix,
    "AddSRPrompt": AddSRPrompt,
    "AddSRTagger": AddSRTagger,
    "AddSRUpscale": AddSRUpscale,
    "StableSRModelLoader": StableSRModelLoader,
    "StableSRCFWLoader": StableSRCFWLoader,
    "StableSRSamplerV2": StableSRSamplerV2,
    "StableSRCFWDecodeV2": StableSRCFWDecodeV2,
    # Deprecated (DEPRECATED = True: hidden from search): the nodes before the tile units became output
    # pixels, kept so that saved workflows load and run with their values and meaning.
    "SeeSRSampler": SeeSRSampler,
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
    "SeeSRSamplerV2": "SeeSR Sampler",
    "AddSRTiledVAEDecode": "AddSR Tiled VAE Decode",
    "AddSRTiledVAEEncode": "AddSR Tiled VAE Encode",
    "AddSRFinish": "AddSR Finish (colour fix + size)",
    "AddSRColorFix": "AddSR Colour Fix",
    "AddSRPrompt": "AddSR Prompt (tags + quality words)",
    "AddSRTagger": "AddSR Tagger (RAM)",
    "AddSRUpscale": "AddSR Upscale (all-in-one)",
    "StableSRModelLoader": "StableSR Model Loader",
    "StableSRCFWLoader": "StableSR CFW VAE Loader",
    "StableSRSamplerV2": "StableSR Sampler",
    "StableSRCFWDecodeV2": "StableSR CFW Decode",
    "SeeSRSampler": "SeeSR Sampler (old: latent-pixel tiles)",
    "StableSRSampler": "StableSR Sampler (old: latent-pixel tiles)",
    "StableSRCFWDecode": "StableSR CFW Decode (old)",
}
