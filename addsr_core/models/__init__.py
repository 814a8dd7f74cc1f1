"""The networks: AddSR UNet and ControlNet (SD2 + image cross-attention) and the SD2 VAE."""
from .config import SD2_UNET, SD2_VAE, ConfigError, UNetConfig, VAEConfig
from .controlnet import ControlNetModel, ControlNetOutput
from .unet import UNet2DConditionModel
from .vae import AutoencoderKL, sample_posterior, split_moments

__all__ = [
    "SD2_UNET", "SD2_VAE", "ConfigError", "UNetConfig", "VAEConfig", "ControlNetModel", "ControlNetOutput",
    "UNet2DConditionModel", "AutoencoderKL", "sample_posterior", "split_moments",
]
