"""The ``operations`` hook (issue 10 §5): every network builds its layers from a namespace.

Without ComfyUI: a stand-in namespace shaped like ``comfy.ops.disable_weight_init`` (subclasses of
torch.nn's layers that, when flagged, cast their weights to the input per forward) must give the
same state-dict keys, shapes and outputs as torch.nn, bit for bit, also with the casting on. A
second stand-in builds its Linear layers without weights until they are loaded, as ComfyUI's do
under DynamicVRAM: the strict loader still knows every key, loads them, and the outputs are the same.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from addsr_core.loading import CheckpointError, assign_state_dict
from addsr_core.loading.io import expected_layout
from addsr_core.models import AutoencoderKL, ControlNetModel, UNet2DConditionModel, UNetConfig, VAEConfig
from addsr_core.models.operations import compute_device, resolve_operations
from addsr_core.ram.model import RAM
from addsr_core.ram.tiny import TINY_RAM_CONFIG
from addsr_core.stablesr.cfw import CFWAutoencoder
from addsr_core.stablesr.model import StableSRModel
from addsr_core.stablesr.spade import GroupNorm32, group_norm32
from addsr_core.stablesr.tiny import TINY_CFW, TINY_STABLESR
from addsr_core.addsr.tiny import TINY_CONTROLNET, TINY_UNET, TINY_VAE


class _Cast:
    """Like comfy.ops.CastWeightBiasOp: ``cast_weights`` makes forward take the weights to the input."""

    cast_weights = False
    calls = 0

    def reset_parameters(self):
        return None

    def _wb(self, x):
        _Cast.calls += 1
        bias = None if self.bias is None else self.bias.to(x.device, x.dtype)
        return self.weight.to(x.device, x.dtype), bias


class StandInOps:
    class Linear(_Cast, nn.Linear):
        def forward(self, x):
            return F.linear(x, *self._wb(x)) if self.cast_weights else super().forward(x)

    class Conv1d(_Cast, nn.Conv1d):
        def forward(self, x):
            return self._conv_forward(x, *self._wb(x)) if self.cast_weights else super().forward(x)

    class Conv2d(_Cast, nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, *self._wb(x)) if self.cast_weights else super().forward(x)

    class GroupNorm(_Cast, nn.GroupNorm):
        def forward(self, x):
            return F.group_norm(x, self.num_groups, *self._wb(x), self.eps) if self.cast_weights else super().forward(x)

    class LayerNorm(_Cast, nn.LayerNorm):
        def forward(self, x):
            if not self.cast_weights:
                return super().forward(x)
            return F.layer_norm(x, self.normalized_shape, *self._wb(x), self.eps)


class LazyStandInOps(StandInOps):
    """Linear layers hold no weight or bias until ``load_state_dict`` (ComfyUI's comfy.ops under
    DynamicVRAM, ``comfy.memory_management.aimdo_enabled``): not even on the meta device."""

    class Linear(StandInOps.Linear):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            nn.Module.__init__(self)
            self.in_features, self.out_features = in_features, out_features
            self.weight = self.bias = None
            self.comfy_need_lazy_init_bias = bias

        def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                  error_msgs):
            for key in ("weight", "bias"):
                if prefix + key in state_dict:
                    setattr(self, key, nn.Parameter(state_dict[prefix + key], requires_grad=False))
                elif key == "weight" or self.comfy_need_lazy_init_bias:
                    missing_keys.append(prefix + key)
            unexpected_keys += [k for k in state_dict if k.startswith(prefix) and k[len(prefix):].count(".") == 0
                                and k[len(prefix):] not in ("weight", "bias")]


def _unet_config(raw):
    return UNetConfig.from_diffusers(raw)


BUILDERS = {
    "unet": lambda ops: UNet2DConditionModel(_unet_config(TINY_UNET), ops),
    "controlnet": lambda ops: ControlNetModel(_unet_config(TINY_CONTROLNET), ops),
    "vae": lambda ops: AutoencoderKL(VAEConfig.from_diffusers(TINY_VAE), ops),
    "ram": lambda ops: RAM(TINY_RAM_CONFIG, ops),
    "stablesr": lambda ops: StableSRModel(TINY_STABLESR, ops),
    "cfw": lambda ops: CFWAutoencoder(TINY_CFW, operations=ops),
}


def _inputs(name, g):
    if name in ("unet", "controlnet"):
        cfg = _unet_config(TINY_UNET)
        z = torch.randn(1, 4, 8, 8, generator=g)
        ctx = torch.randn(1, 7, cfg.cross_attention_dim, generator=g)
        img = torch.randn(1, 5, cfg.image_cross_attention_dim, generator=g)
        if name == "unet":
            return lambda m: m(z, 500, ctx, img)
        cond = torch.rand(1, 3, 64, 64, generator=g)
        return lambda m: m(z, 500, ctx, cond, image_encoder_hidden_states=img)
    if name in ("vae", "cfw"):
        image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
        if name == "vae":
            return lambda m: m(image)
        return lambda m: m.decode(m.encode_moments(image)[:, :4], m.encode_with_features(image)[1], 0.5)
    if name == "ram":
        image = torch.rand(1, 3, 40, 40, generator=g)
        return lambda m: m.tag_logits(m.represent(image))
    ctx = torch.randn(1, 7, TINY_STABLESR.unet.cross_attention_dim, generator=g)
    z, lr = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    return lambda m: m(z, 500, lr, ctx)


def _randomised(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return module


def _same(a, b) -> bool:
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return torch.equal(a, b)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_operations_hook_keeps_keys_and_outputs(name):
    reference = _randomised(BUILDERS[name](None).eval(), 0)
    if name == "ram":
        reference.rebuild_buffers()
    sd = reference.state_dict()
    with torch.device("meta"):
        hooked = BUILDERS[name](StandInOps)
    assert {k: tuple(v.shape) for k, v in hooked.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    hooked.load_state_dict(sd, strict=True, assign=True)
    if name == "ram":
        hooked.rebuild_buffers(torch.device("cpu"))
    hooked.eval()
    layers = [m for m in hooked.modules() if isinstance(m, _Cast)]
    plain = [m for m in hooked.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.GroupNorm, nn.LayerNorm))]
    assert layers and len(layers) == len(plain), "every layer must come from the operations namespace"

    run = _inputs(name, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = run(reference)
        got = run(hooked)
        for m in layers:
            m.cast_weights = True
        before = _Cast.calls
        cast = run(hooked)
    assert _same(got, expected) and _same(cast, expected)
    assert _Cast.calls > before


def test_default_is_torch_nn():
    assert resolve_operations(None) is nn
    unet = UNet2DConditionModel(_unet_config(TINY_UNET))
    assert type(unet.conv_in) is nn.Conv2d and type(unet.conv_norm_out) is nn.GroupNorm
    assert type(group_norm32(32, 64)) is GroupNorm32
    hooked = group_norm32(32, 64, StandInOps)
    assert isinstance(hooked, StandInOps.GroupNorm) and type(hooked).__name__ == "GroupNorm32"


def test_compute_device_prefers_the_recorded_load_device():
    lin = nn.Linear(2, 2)
    assert compute_device(lin) == torch.device("cpu")
    lin.device = torch.device("meta")  # what ComfyUI's ModelPatcher records on load
    assert compute_device(lin) == torch.device("meta")


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_networks_built_without_linear_weights_load_strictly_and_give_the_same_outputs(name):
    reference = _randomised(BUILDERS[name](None).eval(), 0)
    if name == "ram":
        reference.rebuild_buffers()
    sd = reference.state_dict()
    with torch.device("meta"):
        lazy = BUILDERS[name](LazyStandInOps)
    unbuilt = [m for m in lazy.modules() if isinstance(m, LazyStandInOps.Linear)]
    assert unbuilt and all(m.weight is None for m in unbuilt)
    assert set(lazy.state_dict()) < set(sd), "the lazy layers' keys are not in state_dict() before loading"
    assert expected_layout(lazy) == {k: tuple(v.shape) for k, v in sd.items()}

    if name == "ram":  # as build_ram does: the geometry buffers first, then the weights
        lazy.rebuild_buffers(torch.device("cpu"))
    assign_state_dict(lazy, dict(sd), family=name, source="memory")
    assert all(m.weight is not None for m in unbuilt)
    run = _inputs(name, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _same(run(lazy.eval()), run(reference))


def test_a_lazily_built_network_still_names_every_missing_and_misshapen_key():
    sd = BUILDERS["unet"](None).state_dict()
    linear = next(k for k in sd if k.endswith("to_q.weight"))
    bias = next(k for k in sd if k.endswith("proj_in.bias"))
    broken = {k: v for k, v in sd.items() if k != linear}
    broken[bias] = torch.zeros(3)
    broken["extra.weight"] = torch.zeros(1)
    with torch.device("meta"):
        lazy = BUILDERS["unet"](LazyStandInOps)
    with pytest.raises(CheckpointError) as err:
        assign_state_dict(lazy, broken, family="AddSR UNet", source="unet.safetensors")
    message = str(err.value)
    assert "Missing 1 keys" in message and linear in message
    assert "Unexpected 1 keys" in message and "extra.weight" in message
    assert f"{bias}: file (3,) vs model" in message
