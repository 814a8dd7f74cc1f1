"""The whole-image context a tile needs, recorded in one pass: every GroupNorm's statistics and the attention tokens."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GroupNormStats:
    """Per GroupNorm module: its (mean, var) per call, each [B, groups] float32 (biased variance)."""

    entries: dict = field(default_factory=dict)  # nn.GroupNorm -> list[(mean, var)]

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())


@dataclass
class GlobalTokens:
    """An attention layer's keys and values over the whole (possibly shrunk) image: [B, hs*ws, C] each."""

    keys: torch.Tensor
    values: torch.Tensor
    grid_hw: tuple  # (hs, ws) of the recorded tokens


@dataclass
class WholeImageContext:
    """What a tile needs from the rest of the image: GroupNorm statistics and attention tokens.

    ``full_hw`` is the whole input's size at the attention layers' resolution (latent units).
    """

    norms: GroupNormStats
    tokens: dict  # attention module -> GlobalTokens
    full_hw: tuple


def _group_norms(module: nn.Module) -> list[nn.GroupNorm]:
    return [m for m in module.modules() if isinstance(m, nn.GroupNorm)]


def _attentions(module: nn.Module) -> list[nn.Module]:
    """Spatial self-attention layers in the diffusers VAE layout (group_norm, to_q/k/v, to_out)."""
    names = ("group_norm", "to_q", "to_k", "to_v", "to_out")
    return [m for m in module.modules() if all(hasattr(m, n) for n in names)]


def _float32_at_least(x: torch.Tensor) -> torch.Tensor:
    # Statistics in float32 at least: half-precision sums over megapixels are not usable.
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


@contextmanager
def _patched_forwards(patches: dict):
    """Temporarily give modules an instance-level ``forward``; restores exactly what was there."""
    saved = {m: m.__dict__.get("forward") for m in patches}
    try:
        for m, fwd in patches.items():
            m.forward = fwd
        yield
    finally:
        for m, old in saved.items():
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.forward = old


def _float32_affine(gn: nn.GroupNorm, device) -> tuple:
    # The weights go to the activations' device: a partial (lowvram) load may leave them offloaded.
    return tuple(None if p is None else p.to(device, torch.float32) for p in (gn.weight, gn.bias))


def _dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the canonical strides of its layout (NCHW or NHWC), as the native norm kernels need.

    A dense NHWC map can carry an odd stride on a size-1 dim (a batch of one), which the kernels'
    layout check does not accept; restriding it moves no data."""
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        _, c, h, w = x.shape
        return x.as_strided(x.shape, (c * h * w, 1, w * c, c))
    return x.contiguous()


def _recording_norm(gn: nn.GroupNorm, stats: GroupNormStats):
    def forward(x):
        if x.device.type == "cpu":
            # One pass for the output and the statistics, in float32 for any input dtype and on NHWC
            # maps as they are: on a bf16 NHWC map 17x faster than the reshape below (an NHWC -> NCHW
            # copy) plus var_mean plus group_norm (measured on CPU, where it is used).
            b, c = x.shape[:2]
            x = _dense(x)
            out, mean, rstd = torch.native_group_norm(x, *_float32_affine(gn, x.device), b, c, x[0, 0].numel(),
                                                      gn.num_groups, gn.eps)
            stats.entries.setdefault(gn, []).append((mean.float(), (rstd.float().pow(-2) - gn.eps).clamp_min_(0)))
            return out
        mean, var = group_stats(gn, x)
        stats.entries.setdefault(gn, []).append((mean, var))
        weight = None if gn.weight is None else gn.weight.to(x.device)
        bias = None if gn.bias is None else gn.bias.to(x.device)
        return F.group_norm(x, gn.num_groups, weight, bias, gn.eps)

    return forward


def group_stats(gn: nn.GroupNorm, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and group, (mean, biased variance) of ``x`` in float32, [B, groups] each, computed
    a group at a time: a float32 copy of one group's channels at most, never of the whole map (a
    half-precision map's float32 copy is twice its size; on a GPU that was the statistics pass's peak)."""
    b, c = x.shape[:2]
    per = c // gn.num_groups
    parts = [torch.var_mean(_float32_at_least(x[:, g * per : (g + 1) * per]).reshape(b, -1), dim=-1, unbiased=False)
             for g in range(gn.num_groups)]
    return torch.stack([m for _, m in parts], 1), torch.stack([v for v, _ in parts], 1)


def _fixed_norm(gn: nn.GroupNorm, stats: GroupNormStats):
    entries, calls = stats.entries.get(gn), [0]

    def forward(x):
        if not entries:
            raise ValueError("a GroupNorm layer ran that had no recorded statistics; record them on the same path")
        mean, var = entries[calls[0] % len(entries)]
        calls[0] += 1
        if mean.shape[0] != x.shape[0]:
            raise ValueError(f"statistics were recorded for batch {mean.shape[0]}, got batch {x.shape[0]}")
        b, c = x.shape[:2]
        mean = mean.to(x.device).repeat_interleave(c // gn.num_groups, dim=1)  # [B, C]
        var = var.to(x.device).repeat_interleave(c // gn.num_groups, dim=1)
        weight, bias = _float32_affine(gn, x.device)
        if x.device.type in ("cpu", "cuda") and b == 1 and not (mean.requires_grad or var.requires_grad):
            # A per-channel normalisation with given statistics is an inference-mode batch norm: one
            # fused pass on any layout, in float32 for any input dtype (float32 statistics and affine);
            # on a bf16 NHWC map 4.6x faster than the form below (measured on CPU). On a GPU the same
            # kernel (mixed half/float32 batch norm) spares the form below's float32 copy and float32
            # result of every map (the fake-CUDA dry run: the tiled decode's peak, tools/gpu_dryrun.py).
            # Its statistics take no gradient: statistics recorded under autograd take the form below.
            return F.batch_norm(x, mean[0], var[0], weight, bias, False, 0.0, gn.eps)
        # ((x - mean) * rsqrt(var + eps)) * weight + bias folded into one per-channel scale and
        # shift, applied in one fused pass (float32 at least): the same map to float rounding.
        inv = torch.rsqrt(var + gn.eps)
        shift = -mean * inv
        if weight is not None:
            inv, shift = inv * weight, shift * weight + bias
        view = (b, c) + (1,) * (x.ndim - 2)
        xf = _float32_at_least(x)
        return torch.addcmul(shift.to(xf.dtype).view(view), xf, inv.to(xf.dtype).view(view)).to(x.dtype)

    return forward


@contextmanager
def record_group_norm_stats(module: nn.Module):
    """Run ``module`` normally while recording every GroupNorm's statistics; yields ``GroupNormStats``."""
    stats = GroupNormStats()
    with _patched_forwards({gn: _recording_norm(gn, stats) for gn in _group_norms(module)}):
        yield stats


def _check_same_module(module: nn.Module, stats: GroupNormStats) -> list[nn.GroupNorm]:
    norms = _group_norms(module)
    if not any(gn in stats.entries for gn in norms):
        raise ValueError("the statistics were recorded on another module; record them on the one being tiled")
    return norms


@contextmanager
def fixed_group_norm_stats(module: nn.Module, stats: GroupNormStats):
    """Make every GroupNorm in ``module`` normalise with recorded statistics instead of its input's.

    Calls are matched per module in order (cycling), so a module used once per forward reuses
    its single entry for every tile.
    """
    norms = _check_same_module(module, stats)
    with _patched_forwards({gn: _fixed_norm(gn, stats) for gn in norms}):
        yield


def _tokens(attn: nn.Module, x: torch.Tensor):
    b, c, h, w = x.shape
    t = attn.group_norm(x).reshape(b, c, h * w).transpose(1, 2)
    return attn.to_q(t), attn.to_k(t), attn.to_v(t)


def _attention_out(attn: nn.Module, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = attn.to_out[1](attn.to_out[0](out))
    return out.transpose(1, 2).reshape(x.shape) + x


def _recording_attention(attn: nn.Module, tokens: dict):
    def forward(x):
        q, k, v = _tokens(attn, x)
        tokens[attn] = GlobalTokens(k.detach(), v.detach(), tuple(x.shape[-2:]))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return _attention_out(attn, out, x)

    return forward


@contextmanager
def record_whole_image_context(module: nn.Module, full_hw: Sequence[int]):
    """Run ``module`` normally (on the whole, possibly shrunk, input) recording a ``WholeImageContext``.

    ``full_hw`` is the size of the real input at the attention layers' resolution.
    """
    context = WholeImageContext(GroupNormStats(), {}, tuple(int(v) for v in full_hw))
    patches = {gn: _recording_norm(gn, context.norms) for gn in _group_norms(module)}
    patches.update({a: _recording_attention(a, context.tokens) for a in _attentions(module)})
    with _patched_forwards(patches):
        yield context
