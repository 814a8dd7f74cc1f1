"""StableSR (Wang et al., IJCV 2024): SD2 UNet + SFT layers + time-aware encoder, CFW decoder, DDPM sampler."""
from .cfw import DEFAULT_FIDELITY, CFWAutoencoder, CFWDecoder, FuseSFTBlock
from ..loading.io import CheckpointError
from ..loading.lightning import load_lightning_checkpoint, read_checkpoint
from .encoder import TimeAwareEncoder, TimeAwareEncoderConfig
from .loading import (
    base_unet_from_state_dict,
    guess_prediction_type,
    infer_stablesr_config,
    load_cfw_vae,
    load_stablesr,
    split_stablesr_state_dict,
)
from .model import StableSRConfig, StableSRModel, sd2_unet_config
from .sampling import (
    StableSRDenoiser,
    StableSRSampling,
    respaced_schedule,
    sample_stablesr,
    space_timesteps,
    native_size,
    native_latent_tile,
)
from .spade import SPADE, attach_spade

__all__ = [
    "DEFAULT_FIDELITY", "CFWAutoencoder", "CFWDecoder", "FuseSFTBlock", "CheckpointError", "load_lightning_checkpoint",
    "read_checkpoint", "TimeAwareEncoder", "TimeAwareEncoderConfig", "guess_prediction_type", "load_cfw_vae",
    "load_stablesr", "split_stablesr_state_dict", "base_unet_from_state_dict", "infer_stablesr_config", "StableSRConfig", "StableSRModel", "sd2_unet_config",
    "StableSRDenoiser", "StableSRSampling", "respaced_schedule", "sample_stablesr", "space_timesteps",
    "native_size", "native_latent_tile",
    "SPADE", "attach_spade",
]
