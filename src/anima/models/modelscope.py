"""ModelScope / Zeroscope text-to-video: a `UNet3DConditionModel` video backbone.

(AnyI2V, appendix: besides AnimateDiff the method runs on other text-to-video UNets with their
temporal modules off for the one-frame inversion; Animate124 scores its dynamic stage with
ModelScope text-to-video; docs/architecture.md, "Models and weights".) The components, in
diffusers' `TextToVideoSDPipeline` layout (``--weights DIR``)::

    DIR/modelscope-t2v/   model_index.json, unet/ (UNet3DConditionModel), vae/ (AutoencoderKL),
                          text_encoder/ (CLIPTextModel), tokenizer/ (CLIPTokenizer),
                          scheduler/scheduler_config.json (optional)

e.g. ``damo-vilab/text-to-video-ms-1.7b`` or ``cerspense/zeroscope_v2_576w`` as saved by
diffusers. `load_modelscope_components` loads them offline; `tiny_modelscope_components`
builds random ones of the same classes from config, with four UNet levels as the release's
(SD1.5's layout: cross-attention down blocks 0-2, up blocks 1-3, two layers a down block and
three an up block at full size, one and two here), so that the layers named after SD1.5's,
``up_blocks.{1,2}.attentions.{0,1}`` and ``up_blocks.{1,2}.resnets.{0,1}``, exist. The tiny
temporal convolutions get random (not zero) last layers, so that frames interact.

diffusers is imported inside the functions: importing this module (its `Component`) is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anima.errors import InputError
from anima.models.schedules import SD_DDIM_CONFIG
from anima.models.seeding import seeded
from anima.weights import Component

if TYPE_CHECKING:
    from diffusers import UNet3DConditionModel

MODELSCOPE_T2V = Component(
    "ModelScope text-to-video",
    "modelscope-t2v",
    "ModelScope / Zeroscope text-to-video, diffusers layout (unet, vae, text_encoder, tokenizer)",
    required_files=("model_index.json",),
)

#: The sampler of ModelScope's and Zeroscope's diffusers releases (their
#: ``scheduler_config.json``): DDIM, scaled-linear betas 0.00085-0.012, steps offset 1. Used
#: when the folder has no ``scheduler/`` and for the tiny models.
MODELSCOPE_SCHEDULER_CONFIG: dict[str, Any] = SD_DDIM_CONFIG

#: Channels of the tiny UNet's four levels (ModelScope: 320, 640, 1280, 1280).
TINY_BLOCK_CHANNELS = (32, 64, 64, 64)


def modelscope_scheduler_config(folder: Path | None) -> dict[str, Any]:
    """The sampler config of the model in ``folder`` (``scheduler/scheduler_config.json``),
    else `MODELSCOPE_SCHEDULER_CONFIG`."""
    import json

    path = folder / "scheduler" / "scheduler_config.json" if folder is not None else None
    if path is None or not path.is_file():
        return dict(MODELSCOPE_SCHEDULER_CONFIG)
    config = json.loads(path.read_text())
    return {key: value for key, value in config.items() if not key.startswith("_")}


def tiny_unet3d(seed: int = 0) -> UNet3DConditionModel:
    """A tiny `UNet3DConditionModel` of ModelScope's layout (module docstring), its temporal
    convolutions' last layers random."""
    from diffusers import UNet3DConditionModel

    from anima.models.tiny_sd import TINY_CROSS_ATTENTION_DIM

    with seeded(seed):
        unet = UNet3DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=TINY_BLOCK_CHANNELS,
            layers_per_block=1,
            cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            attention_head_dim=8,
            norm_num_groups=32,
        )
        with torch.no_grad():
            for name, module in unet.named_modules():
                if name.rpartition(".")[0].endswith("temp_convs"):
                    last = module.conv4[-1]
                    last.weight.normal_(std=0.05)
                    last.bias.normal_(std=0.05)
    return unet.eval()


def tiny_modelscope_components(seed: int = 0) -> dict[str, Any]:
    """Tiny random ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler_config``
    (the classes of `load_modelscope_components`), the models in eval mode."""
    from anima.models.tiny_sd import tiny_sd_vae, tiny_text_encoder, tiny_tokenizer

    return {
        "unet": tiny_unet3d(seed),
        "vae": tiny_sd_vae(seed).eval(),
        "text_encoder": tiny_text_encoder(seed).eval(),
        "tokenizer": tiny_tokenizer(),
        "scheduler_config": dict(MODELSCOPE_SCHEDULER_CONFIG),
    }


def load_modelscope_components(
    folder: Path, allow_pickle: bool, dtype: torch.dtype
) -> dict[str, Any]:
    """The ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler_config`` of the
    model in ``folder`` (diffusers layout, see the module docstring), offline, in ``dtype``.
    A missing part is an `InputError` naming it."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from anima.models.loading import load_model

    tokenizer_dir = folder / "tokenizer"
    if not any((tokenizer_dir / name).is_file() for name in ("vocab.json", "tokenizer.json")):
        raise InputError("ModelScope tokenizer: vocab.json not found", f"in {tokenizer_dir}")
    name = MODELSCOPE_T2V.name
    return {
        "unet": load_model(
            UNet3DConditionModel, folder / "unet", f"{name} UNet", allow_pickle, dtype
        ).eval(),
        "vae": load_model(AutoencoderKL, folder / "vae", f"{name} VAE", allow_pickle, dtype),
        "text_encoder": load_model(
            CLIPTextModel, folder / "text_encoder", f"{name} text encoder", allow_pickle, dtype
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(tokenizer_dir, local_files_only=True),
        "scheduler_config": modelscope_scheduler_config(folder),
    }
