"""AnyI2V on its second backbone, ModelScope / Zeroscope text-to-video (`UNet3DConditionModel`):
temporal layers off makes frames independent, the whole pipeline runs on it, the CLI chooses it
with ``options.backbone``, and a weights directory without it fails before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet3DConditionModel
from test_anyi2v_method import spec_file

from anima.attention import skip_temporal_layers
from anima.cli import main
from anima.io import read_video
from anima.methods.anyi2v import load_pipeline
from anima.methods.anyi2v.backbone import text_for_frames
from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.anyi2v.injection import InjectionOptions
from anima.methods.anyi2v.inversion import QUERY_LAYERS, RESIDUAL_LAYERS
from anima.methods.anyi2v.loading import load_components
from anima.methods.anyi2v.optimisation import OPTIMISED_LAYERS, OptimisationOptions
from anima.methods.anyi2v.pipeline import AnyI2VPipeline
from anima.models.modelscope import tiny_modelscope_components, tiny_unet3d
from anima.weights import Weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_pipeline_cache():
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()


@pytest.fixture(scope="module")
def unet() -> UNet3DConditionModel:
    return tiny_unet3d(0)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_temporal_layers_off_make_the_frames_independent(unet) -> None:
    latents, text, t = randn(1, 4, 3, 8, 8), randn(1, 77, 32, seed=1), torch.tensor(201)
    before = dict(unet.named_modules())
    with torch.no_grad():
        with skip_temporal_layers(unet):
            video = unet(latents, t, encoder_hidden_states=text).sample
            alone = unet(latents[:, :, 1:2], t, encoder_hidden_states=text).sample
        plain = unet(latents, t, encoder_hidden_states=text).sample
        plain_alone = unet(latents[:, :, 1:2], t, encoder_hidden_states=text).sample
    torch.testing.assert_close(video[:, :, 1:2], alone, atol=1e-5, rtol=0)
    assert (plain[:, :, 1:2] - alone).abs().max() > 1e-3  # on, frames interact...
    assert (plain_alone - alone).abs().max() > 1e-4  # ...and they act on one frame too
    after = dict(unet.named_modules())
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)


def test_the_unet3d_takes_one_text_row_a_video(unet) -> None:
    text = randn(2, 77, 32)
    assert text_for_frames(unet, text, 5) is text
    assert text_for_frames(torch.nn.Identity(), text, 5).shape == (10, 77, 32)


def test_tiny_components_have_anyi2vs_layers() -> None:
    components = load_components(Weights(builtin="tiny"), torch.float32, "modelscope")
    assert isinstance(components["unet"], UNet3DConditionModel)
    assert not components["unet"].training
    layers = set(dict(components["unet"].named_modules()))
    assert {*QUERY_LAYERS, *RESIDUAL_LAYERS, *OPTIMISED_LAYERS} <= layers
    config = components["scheduler"].config
    assert (config.beta_schedule, config.steps_offset, config.set_alpha_to_one) == (
        "scaled_linear",
        1,
        False,
    )


def moving_track(frames: int) -> BoxTrack:
    """A 16x16 box moving right 4 pixels a frame, its query point at its centre."""
    boxes = [[4 + 4 * f, 8, 20 + 4 * f, 24] for f in range(frames)]
    points = torch.tensor([[12.0, 16.0]], dtype=torch.float64)
    return BoxTrack(1, torch.tensor(boxes, dtype=torch.float64), points)


def test_the_whole_pipeline_runs_on_modelscope_and_injection_matters() -> None:
    pipe = AnyI2VPipeline(**load_components(Weights(builtin="tiny"), torch.float32, "modelscope"))
    pipe.set_progress_bar_config(disable=True)
    frames, image = 3, randn(3, 32, 48, seed=2).clamp(0, 1)
    optimisation = OptimisationOptions(steps=(0,), iterations=2)

    def run(injection: InjectionOptions) -> torch.Tensor:
        return pipe(
            image,
            "a horse",
            num_frames=frames,
            num_inference_steps=2,
            injection=injection,
            tracks=[moving_track(frames)],
            optimisation=optimisation,
            generator=torch.Generator().manual_seed(0),
        )

    injected = run(InjectionOptions(steps=(0,), inversion_timestep=11))
    assert injected.shape == (frames, 3, 32, 48) and torch.isfinite(injected).all()
    assert len(pipe.optimiser.losses[0]) == 2
    plain = run(InjectionOptions(enabled=False))
    assert (injected - plain).abs().max() > 1e-4


def test_components_from_a_weights_directory(tmp_path: Path, unet) -> None:
    folder = tmp_path / "modelscope-t2v"
    parts = tiny_modelscope_components(0)
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        parts[name].save_pretrained(folder / name)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "TextToVideoSDPipeline"}))
    loaded = load_components(Weights(root=tmp_path), torch.float32, "modelscope")
    latents, text, t = randn(1, 4, 2, 8, 8), randn(1, 77, 32, seed=1), torch.tensor(11)
    with torch.no_grad():
        expected = unet(latents, t, encoder_hidden_states=text).sample
        got = loaded["unet"](latents, t, encoder_hidden_states=text).sample
    torch.testing.assert_close(got, expected)
    assert loaded["scheduler"].config.beta_schedule == "scaled_linear"  # the default config
    assert loaded["tokenizer"]("a cat").input_ids == parts["tokenizer"]("a cat").input_ids


def animate(spec: Path, out: Path, weights: str) -> int:
    argv = ["animate", str(spec), "-o", str(out), "--method", "anyi2v", "--weights", weights]
    return main([*argv, "-q"])


def test_the_cli_runs_the_modelscope_backbone(tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    spec = spec_file(tmp_path, {"backbone": "modelscope", "optimisation_steps": [0]})
    assert animate(spec, out, "tiny") == 0
    frames, _fps = read_video(out)
    assert frames.shape[0] == 4 and frames.shape[-2:] == (48, 72)
    # the run loaded the ModelScope pipeline: asking for it again is a cache hit
    hits = load_pipeline.cache_info().hits
    pipe = load_pipeline(Weights(builtin="tiny"), torch.device("cpu"), torch.float32, "modelscope")
    assert load_pipeline.cache_info().hits == hits + 1
    assert isinstance(pipe.unet, UNet3DConditionModel)


def test_a_missing_modelscope_folder_is_one_line_before_any_work(tmp_path, capsys) -> None:
    weights = tmp_path / "weights"
    for sub in ("sd15", "motion-adapter"):  # the AnimateDiff backbone is there
        (weights / sub).mkdir(parents=True)
    (weights / "sd15" / "model_index.json").write_text("{}")
    (weights / "motion-adapter" / "config.json").write_text("{}")
    out = tmp_path / "out.mp4"
    assert animate(spec_file(tmp_path, {"backbone": "modelscope"}), out, str(weights)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "modelscope-t2v" in lines[0] and "model_index.json" in lines[0]
    assert not out.exists()


def test_weights_check_reports_the_modelscope_backbone(tmp_path, capsys) -> None:
    for sub, name in (("sd15", "model_index.json"), ("motion-adapter", "config.json")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / name).write_text("{}")
    assert main(["weights", "check", "anyi2v", "--weights", str(tmp_path)]) == 0
    assert "backbone modelscope (modelscope-t2v/): absent" in capsys.readouterr().out
    (tmp_path / "modelscope-t2v").mkdir()
    (tmp_path / "modelscope-t2v" / "model_index.json").write_text("{}")
    assert main(["weights", "check", "anyi2v", "--weights", str(tmp_path)]) == 0
    assert "backbone modelscope (modelscope-t2v/): present" in capsys.readouterr().out


def only_modelscope(root: Path) -> Path:
    """A weights directory holding only the ModelScope backbone (a large stand-in file)."""
    (root / "modelscope-t2v").mkdir(parents=True)
    (root / "modelscope-t2v" / "model_index.json").write_text("{}")
    (root / "modelscope-t2v" / "unet.bin").write_bytes(b"\0" * 4096)
    return root


def test_anima_weights_lists_each_backbone(tmp_path: Path, capsys) -> None:
    assert main(["weights", "--weights", str(only_modelscope(tmp_path))]) == 0
    lines = {line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert "missing sd15, motion-adapter" in lines["(animatediff)"]
    assert "ready" in lines["(modelscope)"]


def test_the_studio_offers_anyi2v_when_one_backbone_is_there(tmp_path: Path) -> None:
    from anima.studio.methods import method_status

    assert not method_status("anyi2v", Weights(root=tmp_path)).ready
    assert method_status("anyi2v", Weights(root=only_modelscope(tmp_path))).ready


def test_the_memory_guard_counts_only_the_backbone_a_run_reads(tmp_path: Path) -> None:
    from anima.memory import model_bytes
    from anima.methods.anyi2v import AnyI2VMethod, AnyI2VOptions

    weights = Weights(root=only_modelscope(tmp_path))
    (tmp_path / "sd15").mkdir()
    (tmp_path / "sd15" / "model_index.json").write_text("{}")
    (tmp_path / "sd15" / "unet.bin").write_bytes(b"\0" * 1000)
    modelscope = model_bytes(AnyI2VMethod, weights, AnyI2VOptions(backbone="modelscope"))
    animatediff = model_bytes(AnyI2VMethod, weights, AnyI2VOptions())
    assert (modelscope, animatediff) == (4096 + 2, 1000 + 2)
