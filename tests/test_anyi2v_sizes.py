"""AnyI2V at a size and a length of a real clip: 256x384 at 24 frames, generated at that size."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_anyi2v_method import animate, spec_file

from anima.io import read_video

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_256x384_24_frame_spec_runs(tmp_path: Path) -> None:
    options = {"size": [256, 384], "optimisation_steps": [0], "optimisation_iterations": 1}
    boxes = {
        "objects": [
            {
                "id": 1,
                "box": [40, 60, 160, 200],
                "trajectory": [
                    {"t": 0.0, "x": 100, "y": 130, "depth": 3.0},
                    {"t": 1.0, "x": 260, "y": 120, "depth": 4.0},
                ],
            }
        ]
    }
    spec = spec_file(tmp_path, options, size=[256, 384], num_frames=24, **boxes)
    assert animate(spec, tmp_path / "out.mp4", tmp_path / "dump") == 0
    frames, _fps = read_video(tmp_path / "out.mp4")
    assert frames.shape == (24, 3, 256, 384)
