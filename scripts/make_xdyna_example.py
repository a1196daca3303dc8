"""Writes ``examples/figure_dance/``: an X-Dyna example made from the toy world's figures.

The image is frame 0 of a toy clip with an articulated figure (the person to animate), with
its OpenPose keypoints as ``reference_keypoints``; the driving keypoints are another toy
figure's walk/wave cycle, at its own scale and position, so the spec exercises the alignment.
Run from the repository root: ``python scripts/make_xdyna_example.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from anima.io import write_png
from anima.methods.xdyna.keypoints import from_toy_clip, save_openpose
from anima.world import WorldConfig, make_clip

OUT = Path("examples/figure_dance")
#: Toy clip seeds: the person (image) and the driver; chosen so both figures are fully visible.
IMAGE_SEED, DRIVING_SEED = 7, 11
SIZE, FRAMES = (256, 256), 24


def _figure_clip(seed: int):
    config = WorldConfig(size=SIZE, num_frames=FRAMES, figure_prob=1.0, camera_move_prob=0.0)
    for attempt in range(seed, seed + 200):
        clip = make_clip(attempt, config)
        if clip.keypoints.shape[0] and clip.keypoint_visible[0, 0, 1:14].all():
            return clip
    raise RuntimeError(f"no toy clip with a fully visible figure from seed {seed}")


def main() -> None:
    person, driver = _figure_clip(IMAGE_SEED), _figure_clip(DRIVING_SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    write_png(OUT / "person.png", person.frames[0])
    reference = from_toy_clip(person)
    first = type(reference)(reference.body[:1], reference.body_confidence[:1], reference.size)
    save_openpose(OUT / "person_keypoints.json", first)
    save_openpose(OUT / "driving_keypoints.json", from_toy_clip(driver))
    spec = {
        "version": 1,
        "image": "person.png",
        "num_frames": FRAMES,
        "fps": 8,
        "seed": 0,
        "prompt": "a figure walking",
        "method": "xdyna",
        "pose": {
            "keypoints": "driving_keypoints.json",
            "reference_keypoints": "person_keypoints.json",
            "align": True,
        },
    }
    (OUT / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    print(f"wrote {OUT} (person seed {person.seed}, driving seed {driver.seed})")


if __name__ == "__main__":
    main()
