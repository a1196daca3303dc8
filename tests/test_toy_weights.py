"""The shipped ``--weights toy`` checkpoints: they load through the user-weights code path, and
on held-out toy clips they show what the LeviTor paper claims (issue 4, "Must show")."""

from __future__ import annotations

import pytest
import torch

from anima.cli import main
from anima.errors import InputError
from anima.eval.levitor import EvalSettings, evaluate_toy, plan_variants
from anima.io import read_video
from anima.methods.levitor import load_pipeline
from anima.weights import Weights

try:
    TOY = Weights.toy()
except InputError:  # a checkout without the packed weights
    TOY = None

needs_toy = pytest.mark.skipif(TOY is None, reason="the toy weights are not packed")
#: A held-out evaluation seed used nowhere else (the weights were chosen on seed 1_000_003).
CLAIM_SEED = 20_261_121
CLAIM_CLIPS = 12


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load_pipeline.cache_clear()
    yield
    load_pipeline.cache_clear()
    torch.set_num_threads(threads)


@needs_toy
def test_every_variant_is_shipped_and_records_its_control_variant() -> None:
    plan = plan_variants(TOY)
    assert not plan.skipped
    assert set(plan.present) == {"base", "full", "single_point", "no_depth", "no_instance"}


@needs_toy
def test_toy_demo_runs_on_the_shipped_weights(tmp_path, one_thread) -> None:
    out = tmp_path / "demo.mp4"
    assert main(["demo", "--toy", "--steps", "10", "-o", str(out), "-q"]) == 0
    frames, _ = read_video(out)
    assert frames.shape[0] == 8 and frames.shape[-1] == 3 * 256 + 2 * 4


@needs_toy
def test_full_levitor_meets_the_papers_claims_on_held_out_clips(one_thread) -> None:
    report = evaluate_toy(EvalSettings(n=CLAIM_CLIPS, seed=CLAIM_SEED, weights="toy"))
    rows = report["variants"]
    full, base, single = rows["full"], rows["base"], rows["single_point"]
    # 3D trajectory control: at most half the uncontrolled model's ObjMC
    assert full["objmc"] <= 0.5 * base["objmc"], rows
    # Tab. S1: several points per object beat one centre point on occlusion and scale
    assert full["occlusion_acc"] > single["occlusion_acc"], rows
    assert full["scale_err"] < single["scale_err"], rows
    # moving clips: the generated video is closer to the truth than the still first frame
    assert full["psnr"] > report["reference"]["first_frame"]["psnr"], report["reference"]
