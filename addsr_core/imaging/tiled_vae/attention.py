"""Tiles run with the whole image's context: fixed GroupNorm statistics, attention over local and recorded keys."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .statistics import (GlobalTokens, WholeImageContext, _attention_out, _attentions, _check_same_module, _fixed_norm,
                         _patched_forwards, _tokens)


class TileRegion:
    """Where the tile being run sits: (y0, y1, x0, x1) of its context, in latent units."""

    def __init__(self):
        self.box = None


def _valid_box(box, full_hw, reach: int):
    """The part of a context whose attention inputs are exact: ``reach`` in from every cut edge."""
    y0, y1, x0, x1 = box
    h, w = full_hw
    return (y0 + reach if y0 > 0 else 0, y1 - reach if y1 < h else h, x0 + reach if x0 > 0 else 0, x1 - reach if x1 < w else w)


def _tiled_attention(attn: nn.Module, recorded: Optional[GlobalTokens], full_hw: tuple, region: TileRegion, reach: int):
    """Attention of the tile's queries over exact local keys plus recorded whole-image keys elsewhere.

    Near a context's cut edges the attention inputs are corrupted by the zero padding (within
    ``reach`` latents); those keys, and everything outside the context, come from the recorded
    tokens instead. Each recorded token stands for the area it covers: its logit gets
    + log(area), carried by an extra key channel so the fused SDPA kernels still apply. With
    tokens recorded at full size this is exactly the untiled attention.
    """

    def forward(x):
        q, k, v = _tokens(attn, x)
        b, n, c = q.shape
        if recorded is None:
            out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
            return _attention_out(attn, out, x)
        box = region.box
        vy0, vy1, vx0, vx1 = _valid_box(box, full_hw, reach)
        ly0, lx0 = vy0 - box[0], vx0 - box[2]  # valid box inside the context
        hc, wc = x.shape[-2:]
        if vy1 <= vy0 or vx1 <= vx0:
            local = torch.zeros(0, dtype=torch.long, device=q.device)
        else:
            grid = torch.arange(hc * wc, device=q.device).view(hc, wc)
            local = grid[ly0 : ly0 + vy1 - vy0, lx0 : lx0 + vx1 - vx0].flatten()
        k_loc, v_loc = k[:, local], v[:, local]
        outside = _outside_tokens(recorded, full_hw, (vy0, vy1, vx0, vx1))
        if outside is None:
            out = F.scaled_dot_product_attention(q[:, None], k_loc[:, None], v_loc[:, None])[:, 0]
            return _attention_out(attn, out, x)
        keep, log_area = outside
        kg = recorded.keys[:, keep].to(q.device, q.dtype)
        vg = recorded.values[:, keep].to(q.device, q.dtype)
        scale = 1.0 / math.sqrt(c)
        pad = 8  # one bias channel, padded so fused kernels keep aligned head sizes
        q_ext = torch.cat([q, q.new_ones(b, n, 1), q.new_zeros(b, n, pad - 1)], -1)
        k_ext = torch.cat([
            torch.cat([k_loc, k_loc.new_zeros(b, k_loc.shape[1], pad)], -1),
            torch.cat([kg, kg.new_full((b, kg.shape[1], 1), log_area / scale), kg.new_zeros(b, kg.shape[1], pad - 1)], -1),
        ], 1)
        # Values padded to the keys' width: the fused (flash) kernels need one head size for q, k and
        # v, and the unfused fallback holds the whole [queries x keys] matrix (8x slower in bf16).
        v_all = torch.cat([torch.cat([v_loc, vg], 1), v.new_zeros(b, v_loc.shape[1] + vg.shape[1], pad)], -1)
        out = F.scaled_dot_product_attention(q_ext[:, None], k_ext[:, None], v_all[:, None], scale=scale)[:, 0, :, :c]
        return _attention_out(attn, out, x)

    return forward


def _outside_tokens(recorded: GlobalTokens, full_hw: tuple, box):
    """Recorded tokens whose cell centre lies outside ``box``, and the log of the area each stands for."""
    h, w = full_hw
    y0, y1, x0, x1 = box
    local_area = max(0, y1 - y0) * max(0, x1 - x0)
    if local_area >= h * w:
        return None
    # Index geometry on the host (numpy): no tensor op whose result size depends on values, so
    # nothing waits on a GPU; the index goes to the keys' device once per call.
    hs, ws = recorded.grid_hw
    cy = (np.arange(hs, dtype=np.float64) + 0.5) * (h / hs)
    cx = (np.arange(ws, dtype=np.float64) + 0.5) * (w / ws)
    inside = ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]
    keep = np.flatnonzero(~inside)
    if keep.size == 0:
        return None
    area = (h * w - local_area) / keep.size
    return torch.from_numpy(keep).to(recorded.keys.device), math.log(max(area, 1e-6))


@contextmanager
def tiled_context(module: nn.Module, context: WholeImageContext, region: TileRegion, attention_reach: int):
    """Run ``module`` tile by tile with the whole image's GroupNorm statistics and attention tokens.

    ``attention_reach``: how far (latents) zero padding at a cut edge reaches by the attention.
    """
    norms = _check_same_module(module, context.norms)
    patches = {gn: _fixed_norm(gn, context.norms) for gn in norms}
    for attn in _attentions(module):
        patches[attn] = _tiled_attention(attn, context.tokens.get(attn), context.full_hw, region, attention_reach)
    with _patched_forwards(patches):
        yield
