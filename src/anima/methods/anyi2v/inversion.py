"""AnyI2V's DDIM inversion of the conditional image: the features injected into frame 0.

(AnyI2V, appendix A.1 "Details of DDIM Inversion"; README, "AnyI2V".) The condition latent
goes through the video UNet as ONE frame with the motion modules off (the temporal layers are
disabled for a single image, so the UNet is the SD UNet it was made from:
`anima.attention.skip_motion_modules`), conditioned on the generation prompt, without
classifier-free guidance, and is inverted with DDIM (`diffusers.DDIMInverseScheduler` from the
sampler's config) at 1000-step granularity: 999 inverse steps, timesteps 1, 2, ... At the call
with timestep `INVERSION_TIMESTEP` (201) the hook layer records (`anima.attention.capture`):

- the self-attention (``attn1``) queries of `QUERY_LAYERS` (the ``to_q`` output, before the
  split into heads), and
- the residual branch (a res block's ``conv2`` output, before the shortcut is added) of
  `RESIDUAL_LAYERS`,

and the inversion stops there: only that call's features are kept (in memory, a `FeatureStore`
keyed by that timestep), and the inverted latent itself is discarded, as the release does
(generation starts from fresh noise). The layers are the release's ``load_attn_list`` [0, 1, 3,
4] and ``load_res_list`` [3, 4, 6, 7] (indices over the decoder's self-attentions and res blocks
in module order) in diffusers' names.

ModelScope / Zeroscope's `UNet3DConditionModel` has the same SD1.5 layout and names (its up
blocks 1-3 hold three spatial transformers and three res blocks each, as SD1.5's), so the same
names are the same positions there: the release's AnimateDiff choices carry over unchanged.
Its temporal layers (``transformer_in``, ``temp_attentions``, ``temp_convs``; where AnimateDiff
has its motion modules, plus one after every res block) are the ones switched off here (AnyI2V,
appendix: the temporal modules are off for the one-frame inversion on every backbone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from diffusers import DDIMInverseScheduler, UNet3DConditionModel, UNetMotionModel
from torch import Tensor

from anima.attention import FeatureStore, StepCounter, capture, skip_motion_modules
from anima.attention.layers import all_attention_layers
from anima.attention.layers import residual_layers as residual_layers_of

#: Self-attention layers whose inverted queries go to frame 0 (and whose keys and values
#: frames 1.. take from frame 0): the release's ``load_attn_list``.
QUERY_LAYERS: tuple[str, ...] = (
    "up_blocks.1.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn1",
)
#: Res blocks whose inverted residual branch goes to frame 0: the release's ``load_res_list``.
RESIDUAL_LAYERS: tuple[str, ...] = (
    "up_blocks.1.resnets.0",
    "up_blocks.1.resnets.1",
    "up_blocks.2.resnets.0",
    "up_blocks.2.resnets.1",
)
#: The timestep at which the inversion records its features and stops.
INVERSION_TIMESTEP = 201
#: Inverse DDIM steps over the 1000 training timesteps (timesteps 1, 2, ..., 999).
INVERSION_STEPS = 999


@dataclass
class InvertedFeatures:
    """What the inversion keeps: ``store`` holds, at step ``timestep``, the ``q`` of each of
    ``query_layers`` (1, tokens, inner) and the ``residual`` of each of ``residual_layers``
    (1, C, h, w), of the one inverted frame."""

    store: FeatureStore
    timestep: int
    query_layers: tuple[str, ...]
    residual_layers: tuple[str, ...]

    def query(self, layer: str) -> Tensor:
        return self.store.at(self.timestep, layer, "q")

    def residual(self, layer: str) -> Tensor:
        return self.store.at(self.timestep, layer, "residual")


def check_layers(
    unet: UNetMotionModel | UNet3DConditionModel,
    query_layers: Sequence[str],
    residual_layers: Sequence[str],
) -> None:
    """Every named layer must be a self-attention (``attn1``) / a res block of ``unet``."""
    attention, blocks = all_attention_layers(unet), residual_layers_of(unet)
    for name in query_layers:
        if name not in attention or not name.endswith("attn1"):
            raise ValueError(f"{name!r} is no self-attention (attn1) layer of the UNet")
    for name in residual_layers:
        if name not in blocks:
            raise ValueError(f"{name!r} is no res block of the UNet")


@torch.no_grad()
def invert(
    unet: UNetMotionModel | UNet3DConditionModel,
    scheduler_config: dict,
    latent: Tensor,
    text: Tensor,
    *,
    timestep: int = INVERSION_TIMESTEP,
    steps: int = INVERSION_STEPS,
    query_layers: Sequence[str] = QUERY_LAYERS,
    residual_layers: Sequence[str] = RESIDUAL_LAYERS,
) -> InvertedFeatures:
    """Invert ``latent`` (1, 4, h, w), the condition's VAE latent, with ``text`` (1, 77, D),
    the generation prompt's embedding, up to ``timestep`` and record the features there (see
    the module docstring). ``scheduler_config`` is the sampler's config (the inverse DDIM is
    made from it). Raises ValueError when ``timestep`` is not one of the inverse steps'."""
    check_layers(unet, query_layers, residual_layers)
    inverse = DDIMInverseScheduler.from_config(scheduler_config)
    inverse.set_timesteps(steps, device=latent.device)
    timesteps = [int(t) for t in inverse.timesteps]
    if timestep not in timesteps:
        raise ValueError(
            f"inversion timestep {timestep} is not a timestep of the {steps}-step inverse DDIM "
            f"({timesteps[0]}, ..., {timesteps[-1]})"
        )
    store = FeatureStore()
    sample = latent[:, :, None].to(unet.dtype)  # (1, 4, 1, h, w): one frame
    text = text.to(unet.dtype)
    with skip_motion_modules(unet):
        for t in inverse.timesteps:
            model_input = inverse.scale_model_input(sample, t)
            if int(t) == timestep:
                with capture(
                    unet,
                    store,
                    layers=tuple(query_layers),
                    kinds=("q",),
                    residuals=tuple(residual_layers),
                    counter=StepCounter(timestep),
                ):
                    unet(model_input, t, encoder_hidden_states=text, return_dict=False)
                break
            noise = unet(model_input, t, encoder_hidden_states=text, return_dict=False)[0]
            sample = inverse.step(noise, t, sample, return_dict=False)[0]
    return InvertedFeatures(store, timestep, tuple(query_layers), tuple(residual_layers))
