"""The release's batched-CFG pairing of the image embedding (`methods.levitor.release_cfg`)."""

from __future__ import annotations

import pytest
import torch
from test_levitor_pipeline import STEPS, controls, make_pipe, photo

from anima.attention import attention_layers
from anima.methods.levitor import LeviTorOptions
from anima.methods.levitor.release_cfg import TEMPORAL_CROSS, ReleaseCfgOrder, release_rows
from anima.models.tiny import tiny_svd_components

pytestmark = pytest.mark.usefixtures("one_thread")


def test_release_rows_alternate_batches_pixel_by_pixel() -> None:
    assert release_rows(8, 2).tolist() == [0, 4, 0, 4, 0, 4, 0, 4]
    assert release_rows(6, 1).tolist() == [0] * 6


def test_temporal_cross_attention_sees_the_release_broadcast() -> None:
    """Each temporal cross-attention's output under the hook equals stock attention on the
    context the release builds: first-frame context broadcast in (pixel, batch) order."""
    unet = tiny_svd_components(seed=0)["unet"]
    layers = attention_layers(unet, TEMPORAL_CROSS)
    assert layers
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(module, args, kwargs, output):
            seen[name] = (
                args[0] if args else kwargs["hidden_states"],
                kwargs["encoder_hidden_states"],
                output,
            )

        return hook

    handles = [
        attn.register_forward_hook(record(n), with_kwargs=True) for n, attn in layers.items()
    ]
    frames, batch = 3, 2
    sample = torch.randn(batch, frames, 8, 8, 8)
    context = torch.randn(batch, 1, unet.config.cross_attention_dim)  # zero / image embedding
    with ReleaseCfgOrder(unet, batch=batch):
        unet(sample, 10.0, context, added_time_ids=torch.randn(batch, 3))
    for handle in handles:
        handle.remove()
    for name, (hidden, intended, output) in seen.items():
        rows = intended.shape[0]
        pixels = rows // batch
        first = intended.reshape(batch, pixels, 1, -1)[:, 0]  # each batch's context
        release = first[None].broadcast_to(pixels, batch, 1, first.shape[-1])
        release = release.reshape(pixels * batch, 1, -1)
        expected = layers[name](hidden, encoder_hidden_states=release)
        torch.testing.assert_close(output, expected, atol=1e-5, rtol=1e-5, msg=name)
        assert not torch.allclose(release, intended)  # the pairing does change


def test_pipeline_option_changes_cfg_runs_only() -> None:
    pipe = make_pipe(tiny_svd_components(seed=0), random_output=True)
    image, control = photo((64, 96)), controls(3, (64, 96))

    def run(**kwargs):
        generator = torch.Generator().manual_seed(7)
        return pipe(image, control, num_inference_steps=STEPS, generator=generator, **kwargs)

    assert not torch.allclose(run(), run(release_cfg_order=True))
    no_cfg = {"min_guidance_scale": 1.0, "max_guidance_scale": 1.0}
    assert torch.equal(run(**no_cfg), run(release_cfg_order=True, **no_cfg))
    with pytest.raises(ValueError, match="batched"):
        run(release_cfg_order=True, sequential_cfg=True)
    with pytest.raises(ValueError, match="batched CFG"):
        LeviTorOptions(release_cfg_order=True, sequential_cfg=True)
