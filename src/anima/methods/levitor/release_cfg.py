"""The LeviTor release's batched-CFG pairing of the image embedding, as an opt-in.

LeviTor (§4.1) samples SVD with classifier-free guidance. The release's spatio-temporal
transformer (copied from an early diffusers version, fixed upstream later) broadcasts the
image embedding to the temporal cross-attention's rows in (pixel, batch) order, while the rows
are (batch, pixel): row ``r`` of a call with batch ``B`` sees batch ``r mod B``'s embedding
instead of batch ``r // (H W)``'s. At batch 1 nothing changes; in a batched CFG call (the
unconditional branch's zero embedding and the conditional branch's image embedding) both
branches' temporal cross-attention see the two embeddings alternately, pixel by pixel.

anima computes the intended pairing by default. `release_cfg_order` reproduces the release's
(the official demo's videos, bit for bit in this respect) through the hook layer: a hook on
every temporal cross-attention (``temporal_transformer_blocks.*.attn2``) of the UNet and the
ControlNet rearranges the key and value rows as the release's broadcast does. The embedding is
the same for all rows of a batch, so rearranging the projected rows is the same as
rearranging the embedding. docs/architecture.md, "The hook layer".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from anima.attention import AttentionCall, AttentionHook, Hooks, attention_layers

#: The temporal cross-attention of SVD's spatio-temporal transformers.
TEMPORAL_CROSS = re.compile(r"(.+\.)?temporal_transformer_blocks\.\d+\.attn2")


def release_rows(rows: int, batch: int) -> Tensor:
    """(rows,) the row of the intended layout whose embedding the release gives each row: row
    ``r`` sees batch ``r mod batch``, i.e. that batch's first row."""
    per_batch = rows // batch
    return (torch.arange(rows) % batch) * per_batch


class _ReleaseOrder(AttentionHook):
    may_edit = True

    def __init__(self, batch: int) -> None:
        self.batch = batch

    def edits(self, call: AttentionCall) -> bool:
        return self.batch > 1

    def qkv(
        self, call: AttentionCall, query: Tensor, key: Tensor, value: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        order = release_rows(key.shape[0], self.batch).to(key.device)
        return query, key[order], value[order]


class ReleaseCfgOrder(Hooks):
    """Within the block, the temporal cross-attentions of ``model`` pair rows with the image
    embedding as the release does for calls of ``batch`` videos (see the module docstring).
    Use as a context manager."""

    def __init__(self, model: nn.Module, batch: int = 2) -> None:
        super().__init__(model)
        self.batch = batch

    def _install(self) -> None:
        layers = attention_layers(self.model, TEMPORAL_CROSS)
        if not layers:
            raise ValueError("no temporal cross-attention found (is this an SVD UNet?)")
        for name, attn in layers.items():
            self._attach(name, attn, _ReleaseOrder(self.batch))


@contextmanager
def release_cfg_order(*models: nn.Module, batch: int = 2) -> Iterator[None]:
    """`ReleaseCfgOrder` on every model given (the UNet and the ControlNet) at once."""
    with ExitStack() as stack:
        for model in models:
            stack.enter_context(ReleaseCfgOrder(model, batch))
        yield
