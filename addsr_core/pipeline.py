"""The whole upscale: the family's stages in a row, the family taken from the options' type.

    upscale(models, lr, AddSROptions())      AddSR   (models: AddSRModels)
    upscale(models, lr, SeeSROptions())      SeeSR   (models: AddSRModels, SeeSR weights)
    upscale(models, lr, StableSROptions())   StableSR (models: StableSRModels)

Each runs condition -> tags + prompts -> sample -> decode -> finish (:mod:`addsr_core.stages`, the
family's ``sample`` from ``addsr_core.<family>.pipeline``). The ComfyUI nodes call the same stage
functions in the same order, so the node graph, the all-in-one node and the CLI give the same image.
"""
from __future__ import annotations

from typing import Optional

import torch

from .addsr import pipeline as addsr_family
from .addsr.pipeline import AddSROptions
from .errors import AddSRError, OptionsError
from .seesr import pipeline as seesr_family
from .seesr.pipeline import SeeSROptions
from .stablesr import pipeline as stablesr_family
from .stablesr.pipeline import StableSRModels, StableSROptions
from .stages import AddSRModels, Family, LRCondition, build_prompts, resolve_tiles, tag_images

__all__ = ["AddSROptions", "SeeSROptions", "StableSROptions", "AddSRModels", "StableSRModels", "FAMILIES", "family_of",
           "upscale", "upscale_calls", "run_sampling", "resolve_tiles", "resolve_options"]

# The options class of each family -> its module (the stage functions of stages.Family).
FAMILIES = {AddSROptions: addsr_family, SeeSROptions: seesr_family, StableSROptions: stablesr_family}


def family_of(options) -> Family:
    """The family whose options class ``options`` is (AddSR, SeeSR or StableSR)."""
    family = FAMILIES.get(type(options))
    if family is None:
        names = ", ".join(cls.__name__ for cls in FAMILIES)
        raise OptionsError(f"{type(options).__name__} is not the options of a model family; use one of {names}")
    return family


def resolve_options(options, models, lr_hw: Optional[tuple] = None, free_bytes: Optional[int] = None):
    """``options`` validated, with the model's own defaults and the :data:`~addsr_core.memory.AUTO`
    tiles filled in for where ``models`` compute (:func:`~addsr_core.stages.resolve_tiles`)."""
    family = family_of(options)
    options.validate()
    options = family.resolve(options, models)
    device, dtype = models.placement()
    return resolve_tiles(options, device, dtype, lr_hw, free_bytes)


def upscale_calls(options, lr_hw, batch: int = 1) -> int:
    """Network calls a whole :func:`upscale` of a ``lr_hw`` LR makes (for progress bars); ``options``
    resolved (:func:`resolve_options`)."""
    return family_of(options).count_network_calls(options, options.processing_hw(lr_hw), batch)


def run_sampling(models, cond: LRCondition, prompt_embeds, negative_embeds, options, **hooks):
    """The family's ``sample`` stage; ``hooks``: noise, on_tile, on_step, trace."""
    return family_of(options).sample(models, cond, prompt_embeds, negative_embeds, options, **hooks)


def upscale(models, lr: torch.Tensor, options, *, on_tile=None, on_step=None) -> torch.Tensor:
    """[B,3,h,w] RGB in [0,1] -> [B,3,h*scale,w*scale] in [0,1]: every stage, in order.

    :data:`~addsr_core.memory.AUTO` tiles are chosen here, once the networks are on their device."""
    family = family_of(options)
    if models.text is None:
        raise AddSRError("the standalone pipeline needs a text encoder (models.text) to turn prompts into embeddings")
    options = resolve_options(options, models, lr.shape[-2:])
    prompts = options.prompts
    cond = family.condition(models, lr, options)
    tagger = getattr(models, "tagger", None)
    tags = tag_images(tagger, lr, cond, ram=models.ram, device=models.device) if (prompts.use_tags and tagger) else None
    prompt_embeds = models.text(build_prompts(tags, prompts, lr.shape[0]))
    negative = models.text([prompts.negative_prompt]) if options.guidance_scale > 1 else None
    latent = family.sample(models, cond, prompt_embeds, negative, options, on_tile=on_tile, on_step=on_step)
    return family.finish(family.decode(models, latent, cond, options), cond, options)
