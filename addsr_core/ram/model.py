"""RAM as AddSR uses it: Swin-L + ``image_proj`` make the 145 image tokens; an optional tag head.

``RAM.forward(normalised)`` is the official ``generate_image_embeds``; ``RAM.represent(images01,
resize)`` adds the official preprocessing; ``RAM.tag_logits(tokens)`` is the scoring half of
``generate_tag`` (thresholds and tag names live in :class:`addsr_core.ram.tagger.RamTagger`).
Parameter names are the official ones, minus the LoRA tensors, which are merged on load.
The layers come from ``operations`` (default torch.nn, see :mod:`addsr_core.models.operations`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionsError
from ..models.config import ConfigError
from ..models.operations import compute_device, resolve_operations
from .config import RAMConfig
from .swin import SwinTransformer
from .tag_head import TaggingHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Which resize the official code uses where (all to 384x384, align_corners=False):
#   "bilinear": step 1, test_addsr.py's torchvision Resize((384, 384)) of the LR tensor
#               (also what feeds the tagger). torchvision's tensor Resize before 0.17 does not
#               antialias; from 0.17 it does. They agree when upsampling, the usual case (an LR
#               smaller than 384); pass antialias=True for torchvision>=0.17 behaviour on big LRs.
#   "bicubic":  the PSR steps, pipeline_addsr.py's F.interpolate(..., 'bicubic'), no antialias.
RESIZE_MODES = ("bilinear", "bicubic")


def ram_preprocess(images01: torch.Tensor, size: int, resize: str = "bilinear", *, antialias: bool = False) -> torch.Tensor:
    """[B,3,H,W] RGB in [0,1] -> [B,3,size,size] ImageNet-normalised float32 (see RESIZE_MODES)."""
    if resize not in RESIZE_MODES:
        raise OptionsError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    if images01.ndim != 4 or images01.shape[1] != 3:
        raise ValueError(f"RAM expects RGB images [B,3,H,W] in [0,1], got shape {tuple(images01.shape)}")
    x = images01.float()
    x = F.interpolate(x, size=(size, size), mode=resize, align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class RAM(nn.Module):
    def __init__(self, cfg: RAMConfig, operations=None):
        super().__init__()
        ops = resolve_operations(operations)
        self.config = cfg
        self.visual_encoder = SwinTransformer(cfg.swin, ops)
        self.image_proj = ops.Linear(cfg.swin.num_features, cfg.token_width)
        tag = cfg.tagging
        if tag is not None:
            if tag.encoder_width != cfg.token_width:
                raise ConfigError(f"tag head reads {tag.encoder_width}-wide tokens but image_proj makes {cfg.token_width}")
            self.tagging_head = TaggingHead(tag, ops)
            self.label_embed = nn.Parameter(torch.zeros(tag.num_classes, tag.encoder_width))
            self.wordvec_proj = ops.Linear(tag.encoder_width, tag.hidden_size) if tag.has_wordvec_proj else nn.Identity()
            self.fc = ops.Linear(tag.hidden_size, 1)

    @property
    def has_tag_head(self) -> bool:
        return self.config.tagging is not None

    @property
    def input_size(self) -> int:
        return self.config.swin.img_size

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        """[B,3,384,384] ImageNet-normalised -> [B,145,512] (official ``generate_image_embeds``)."""
        return self.image_proj(self.visual_encoder(normalised))

    @torch.no_grad()
    def represent(self, images01: torch.Tensor, resize: str = "bilinear", *, antialias: bool = False) -> torch.Tensor:
        """AddSR's image tokens of RGB images in [0,1]: resize to 384 (see RESIZE_MODES), normalise, encode.

        Returns [B,145,512] in the weights' dtype, on the device the model runs on
        (:func:`~addsr_core.models.operations.compute_device`: where a host loaded it, else the weights').
        """
        x = ram_preprocess(images01.to(compute_device(self)), self.input_size, resize, antialias=antialias)
        return self(x.to(self.image_proj.weight.dtype))

    def tag_logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B,145,512] image tokens -> [B, num_classes] tag logits (official ``generate_tag``)."""
        if not self.has_tag_head:
            raise OptionsError("this RAM was built without its tag head; load it with a tag list to get tags")
        queries = torch.relu(self.wordvec_proj(self.label_embed.to(tokens.device))).to(tokens.dtype)
        queries = queries.unsqueeze(0).expand(tokens.shape[0], -1, -1)
        return self.fc(self.tagging_head(queries, tokens)).squeeze(-1)

    def rebuild_buffers(self, device=None) -> None:
        """Recompute the Swin geometry buffers (after building on meta / ``to_empty``)."""
        self.visual_encoder.rebuild_buffers(device)
