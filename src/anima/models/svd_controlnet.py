"""A ControlNet for Stable Video Diffusion (LeviTor §3.2; I2V3D §3.2.2's temporal depth ControlNet).

The model is a trainable copy of the SVD UNet's encoder: ``conv_in``, the time and added-time
embeddings, the down blocks and the mid block, made from a `UNetSpatioTemporalConditionModel`
with `SVDControlNetModel.from_unet`. A conditioning stem (conv3x3 + SiLU stages with 16, 32, 96,
256 channels, three of them stride 2, so 8x down to latent resolution, ending in a zero conv)
encodes the per-frame control image; its output is added to ``conv_in(sample)`` frame by frame.
A zero-initialised 1x1 conv on every skip the down path produces (``conv_in`` output, each
resnet and downsampler output) and on the mid block output gives the residuals, scaled by
``conditioning_scale``, that `anima.models.unet_residuals` adds to the stock UNet.

Parameter names and config keys follow the authors' released class (LeviTor's
``ControlNetSVDModel``, which is also the layout of the community temporal depth ControlNet
I2V3D uses), so their checkpoints load with no missing or unexpected keys
(``tests/data/*_keys.txt``). Zero-initialised output convs make a fresh ControlNet an exact
no-op on the UNet, the property ControlNet training starts from.
"""

from __future__ import annotations

import torch
from diffusers import ConfigMixin, ModelMixin, UNetSpatioTemporalConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_3d_blocks import UNetMidBlockSpatioTemporal, get_down_block
from torch import Tensor, nn
from torch.nn import functional as F

#: UNet parts the ControlNet copies (its encoder), by attribute name.
ENCODER_PARTS = ("conv_in", "time_embedding", "add_embedding", "down_blocks", "mid_block")


def _zero(module: nn.Conv2d) -> nn.Conv2d:
    nn.init.zeros_(module.weight)
    nn.init.zeros_(module.bias)
    return module


class ConditioningStem(nn.Module):
    """Per-frame control image -> features at latent resolution (one stride-2 conv per stage
    after the first), added to ``conv_in(sample)``. The last conv is zero-initialised."""

    def __init__(self, in_channels: int, out_channels: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for width, next_width in zip(channels[:-1], channels[1:], strict=True):
            self.blocks.append(nn.Conv2d(width, width, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(width, next_width, kernel_size=3, padding=1, stride=2))
        self.conv_out = _zero(nn.Conv2d(channels[-1], out_channels, kernel_size=3, padding=1))

    def forward(self, condition: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, out_channels, H / 2^(stages-1), W / 2^(stages-1))."""
        hidden = F.silu(self.conv_in(condition))
        for conv in self.blocks:
            hidden = F.silu(conv(hidden))
        return self.conv_out(hidden)


class SVDControlNetModel(ModelMixin, ConfigMixin):
    """ControlNet for the SVD UNet; returns ``(down_residuals, mid_residual)``.

    Config arguments are the UNet's (``up_block_types`` and ``out_channels`` are kept only so a
    UNet or official ControlNet config loads unchanged) plus the conditioning stem's.

    ``cumulative_skip_residuals`` reproduces the UNet the community temporal ControlNet (I2V3D's
    depth ControlNet) was trained with: its residual loop ran inside the down-block loop, so the
    residual of a skip made in down block ``i`` of ``n`` was added ``n - i`` times (the
    ``conv_in`` skip ``n`` times). The flag multiplies each residual by that count, which makes
    such a checkpoint behave as trained with the stock UNet and our residual hooks.

    ``control_variant`` records which LeviTor control signal the model was trained on
    (`anima.methods.levitor.controls.CONTROL_VARIANTS`: the full signal or an ablation), so that
    inference feeds it the same; released checkpoints are ``"full"``. ``control_convention``
    records how its control maps were placed and drawn (``CONTROL_CONVENTIONS`` of
    `anima.methods.levitor.controls`): ``"release"`` for LeviTor's released checkpoint (the
    converter writes it), ``"anima"`` for models anima trains and for configs that predate it.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int | None = None,
        in_channels: int = 8,
        out_channels: int = 4,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "CrossAttnDownBlockSpatioTemporal",
            "DownBlockSpatioTemporal",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
            "CrossAttnUpBlockSpatioTemporal",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        addition_time_embed_dim: int = 256,
        projection_class_embeddings_input_dim: int = 768,
        layers_per_block: int | tuple[int, ...] = 2,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        num_attention_heads: int | tuple[int, ...] = (5, 10, 20, 20),
        num_frames: int = 25,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        cumulative_skip_residuals: bool = False,
        control_variant: str = "full",
        control_convention: str = "anima",
    ) -> None:
        super().__init__()
        blocks = len(down_block_types)
        if len(block_out_channels) != blocks:
            raise ValueError("block_out_channels and down_block_types differ in length")

        def per_block(value):
            return (value,) * blocks if isinstance(value, int) else tuple(value)

        heads = per_block(num_attention_heads)
        cross_dims = per_block(cross_attention_dim)
        layers = per_block(layers_per_block)
        transformer_layers = per_block(transformer_layers_per_block)

        time_embed_dim = block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim)
        self.add_time_proj = Timesteps(addition_time_embed_dim, True, downscale_freq_shift=0)
        self.add_embedding = TimestepEmbedding(
            projection_class_embeddings_input_dim, time_embed_dim
        )
        self.controlnet_cond_embedding = ConditioningStem(
            conditioning_channels, block_out_channels[0], tuple(conditioning_embedding_out_channels)
        )

        self.down_blocks = nn.ModuleList()
        self.controlnet_down_blocks = nn.ModuleList([self._zero_conv(block_out_channels[0])])
        output_channel = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[i]
            is_final = i == blocks - 1
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers[i],
                    transformer_layers_per_block=transformer_layers[i],
                    in_channels=input_channel,
                    out_channels=output_channel,
                    temb_channels=time_embed_dim,
                    add_downsample=not is_final,
                    resnet_eps=1e-5,
                    cross_attention_dim=cross_dims[i],
                    num_attention_heads=heads[i],
                    resnet_act_fn="silu",
                )
            )
            skips = layers[i] + (0 if is_final else 1)
            self.controlnet_down_blocks.extend(
                self._zero_conv(output_channel) for _ in range(skips)
            )
        self.mid_block = UNetMidBlockSpatioTemporal(
            block_out_channels[-1],
            temb_channels=time_embed_dim,
            transformer_layers_per_block=transformer_layers[-1],
            cross_attention_dim=cross_dims[-1],
            num_attention_heads=heads[-1],
        )
        self.controlnet_mid_block = self._zero_conv(block_out_channels[-1])
        # How many times the UNet that trained this ControlNet added each skip's residual.
        repeats = []
        for i in range(blocks):
            skips = layers[i] + (0 if i == blocks - 1 else 1)
            repeats += [blocks - i if cumulative_skip_residuals else 1] * (skips + (i == 0))
        self.register_buffer(
            "residual_repeats", torch.tensor(repeats, dtype=torch.float32), persistent=False
        )

    @staticmethod
    def _zero_conv(channels: int) -> nn.Conv2d:
        return _zero(nn.Conv2d(channels, channels, kernel_size=1))

    @classmethod
    def from_unet(
        cls,
        unet: UNetSpatioTemporalConditionModel,
        conditioning_channels: int = 3,
        conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        control_variant: str = "full",
    ) -> SVDControlNetModel:
        """A ControlNet whose encoder is a copy of ``unet``'s (weights too, by default)."""
        config = unet.config
        controlnet = cls(
            sample_size=config.sample_size,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            down_block_types=tuple(config.down_block_types),
            up_block_types=tuple(config.up_block_types),
            block_out_channels=tuple(config.block_out_channels),
            addition_time_embed_dim=config.addition_time_embed_dim,
            projection_class_embeddings_input_dim=config.projection_class_embeddings_input_dim,
            layers_per_block=config.layers_per_block,
            cross_attention_dim=config.cross_attention_dim,
            transformer_layers_per_block=config.transformer_layers_per_block,
            num_attention_heads=config.num_attention_heads,
            num_frames=config.num_frames,
            conditioning_channels=conditioning_channels,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            control_variant=control_variant,
        )
        if load_weights_from_unet:
            for part in ENCODER_PARTS:
                getattr(controlnet, part).load_state_dict(getattr(unet, part).state_dict())
        controlnet = controlnet.to(unet.device)
        return controlnet if unet.dtype == controlnet.dtype else controlnet.to(unet.dtype)

    @property
    def num_residuals(self) -> int:
        """Number of down residuals (12 for SVD), the skips of the UNet's down path."""
        return len(self.controlnet_down_blocks)

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float | int,
        encoder_hidden_states: Tensor,
        added_time_ids: Tensor,
        controlnet_cond: Tensor,
        conditioning_scale: float = 1.0,
    ) -> tuple[tuple[Tensor, ...], Tensor]:
        """Residuals for the UNet's skips and mid block.

        Args:
            sample: noisy latents with the image latents concatenated, (B, F, C, h, w), already
                scaled by the scheduler (exactly what the UNet receives).
            timestep: the UNet's timestep input (SVD: c_noise = 0.25 ln sigma).
            encoder_hidden_states: image embeddings (B, 1, D).
            added_time_ids: (B, 3) fps-1, motion bucket, noise augmentation.
            controlnet_cond: control images (B, F, conditioning_channels, 8h, 8w).
            conditioning_scale: multiplies every residual.
        """
        batch, frames = sample.shape[:2]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        timesteps = timesteps.reshape(-1).expand(batch)
        emb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        time_embeds = self.add_time_proj(added_time_ids.flatten()).reshape(batch, -1)
        emb = emb + self.add_embedding(time_embeds.to(emb.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        encoder_hidden_states = encoder_hidden_states.repeat_interleave(frames, dim=0)

        hidden = self.conv_in(sample.flatten(0, 1))
        condition = controlnet_cond.flatten(0, 1).to(hidden.dtype)
        hidden = hidden + self.controlnet_cond_embedding(condition)
        image_only_indicator = torch.zeros(batch, frames, dtype=hidden.dtype, device=hidden.device)

        skips: tuple[Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            kwargs = {"encoder_hidden_states": encoder_hidden_states}
            if not getattr(block, "has_cross_attention", False):
                kwargs = {}
            hidden, block_skips = block(
                hidden_states=hidden,
                temb=emb,
                image_only_indicator=image_only_indicator,
                **kwargs,
            )
            skips += block_skips
        hidden = self.mid_block(
            hidden_states=hidden,
            temb=emb,
            encoder_hidden_states=encoder_hidden_states,
            image_only_indicator=image_only_indicator,
        )
        down = tuple(
            conv(skip) * (conditioning_scale * float(repeats))
            for conv, skip, repeats in zip(
                self.controlnet_down_blocks, skips, self.residual_repeats.tolist(), strict=True
            )
        )
        return down, self.controlnet_mid_block(hidden) * conditioning_scale
