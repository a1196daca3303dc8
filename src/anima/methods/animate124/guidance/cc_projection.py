"""Zero-1-to-3's ``cc_projection``: [CLIP image embedding, relative pose] to one token.

(Animate124 §3.2: Zero-1-to-3 XL conditioned on the reference image and the relative pose;
docs/architecture.md, "Models and weights": new parts are ``ModelMixin, ConfigMixin``
components.) Its parameter names (``projection.weight``, ``projection.bias``) and config keys
(``in_channel``, ``out_channel``) are those of the diffusers-format Zero-1-to-3 releases'
``cc_projection/`` folder, so their checkpoints load as they are. This module imports diffusers:
import it only where the model is built (`anima.methods.animate124.loading`).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class CCProjection(ModelMixin, ConfigMixin):
    """Linear(``in_channel`` -> ``out_channel``): 768 + 4 -> 768 in Zero-1-to-3 XL."""

    @register_to_config
    def __init__(self, in_channel: int = 772, out_channel: int = 768) -> None:
        super().__init__()
        self.projection = torch.nn.Linear(in_channel, out_channel)

    def forward(self, joint: torch.Tensor) -> torch.Tensor:
        """Tokens (..., ``in_channel``) to (..., ``out_channel``)."""
        return self.projection(joint)
