"""Frames stream from the renderer to the encoder and the dump (issue "Photos as people take
them", part 1): the render makes a frame when the outputs ask for it, the encoder writes it
before the next is made, and no list of every frame at full size is ever held."""

from __future__ import annotations

import json
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli_promises import small_spec

from anima.animation import build_animation
from anima.io import VideoWriter, read_video, staged_outputs
from anima.pipeline import animate, resolve_spec, write_outputs
from anima.render import Renderer, render
from anima.scene import build_scene
from anima.spec import load_spec


def run(folder: Path, frames: int = 12):
    spec = resolve_spec(load_spec(small_spec(folder)), num_frames=frames)
    return animate(spec)


def test_renderer_frames_equal_the_whole_render(tmp_path: Path) -> None:
    spec = load_spec(small_spec(tmp_path))
    scene = build_scene(spec)
    animation = build_animation(spec, scene)
    whole = render(scene, animation)
    for f, frame in enumerate(Renderer(scene, animation)):
        assert torch.equal(frame.rgb, whole.rgb[f])
        assert torch.equal(frame.distance, whole.distance[f])
        assert torch.equal(frame.instance, whole.instance[f])
        assert torch.equal(frame.visible, whole.visible[f])


def test_frames_are_made_as_the_encoder_and_dump_take_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    alive: weakref.WeakSet = weakref.WeakSet()
    most_alive = 0
    make_frame, write_frame = Renderer.frame, VideoWriter.write

    def made(self: Renderer, f: int):
        frame = make_frame(self, f)
        alive.add(frame.rgb)
        events.append(f"make {f}")
        return frame

    def written(self: VideoWriter, frame) -> None:
        nonlocal most_alive
        most_alive = max(most_alive, len(alive))
        write_frame(self, frame)
        events.append(f"write {self.frames_written - 1}")

    monkeypatch.setattr(Renderer, "frame", made)
    monkeypatch.setattr(VideoWriter, "write", written)
    result = run(tmp_path)
    assert events == []  # nothing is rendered before the outputs ask
    with staged_outputs() as staging:
        write_outputs(result, tmp_path / "out.mp4", tmp_path / "dump", staging)
    streamed = [f"{kind} {f}" for f in range(12) for kind in ("make", "write")]
    assert events[:24] == streamed
    # then only the small render of the dump's control points (controls.json)
    assert all(event.startswith("make") for event in events[24:])
    assert most_alive <= 2  # the frame being written, and at most the one before it
    frames, _ = read_video(tmp_path / "out.mp4")
    assert len(frames) == 12
    with pytest.raises(RuntimeError, match="already consumed"):
        next(iter(result.stream))


def test_streamed_dump_holds_the_render(tmp_path: Path) -> None:
    result = run(tmp_path, frames=5)
    with staged_outputs() as staging:
        write_outputs(result, tmp_path / "out.gif", tmp_path / "dump", staging)
    spec = result.spec
    scene = build_scene(spec)
    whole = render(scene, build_animation(spec, scene))
    dump = tmp_path / "dump"
    depth = np.load(dump / "render" / "depth.npy")
    assert depth.dtype == np.float32 and depth.shape == tuple(whole.distance.shape)
    np.testing.assert_array_equal(depth, whole.distance.numpy())
    assert sorted(p.name for p in (dump / "frames").iterdir()) == [f"{f:04d}.png" for f in range(5)]
    for channel in ("rgb", "depth", "instance", "visible"):
        assert len(list((dump / "render" / channel).iterdir())) == 5
    points = json.loads((dump / "controls.json").read_text())["levitor_points"]
    assert points["num_frames"] == 5


def test_held_stream_iterates_again_and_gives_the_clip(tmp_path: Path) -> None:
    result = run(tmp_path, frames=4)
    frames = result.frames  # holds the stream
    assert frames.shape == (4, 3, 48, 64)
    again = torch.stack([frame.image for frame in result.stream])
    assert torch.equal(frames, again)


def test_coarse_control_points_are_in_the_output_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shown points come from a small render (here 24x32 for a 48x64 clip), mapped back to
    the output's pixels: every point lies on its object in the full-size render, and the
    points move as the box does (12 px to the right)."""
    import anima.methods.coarse as coarse

    monkeypatch.setattr(coarse, "POINTS_RENDER_MAX_SIDE", 32)
    result = run(tmp_path, frames=4)
    whole = render(result.controls.scene, result.controls.animation)
    points = result.controls.points
    assert points.num_frames == 4 and points.num_points >= 3
    on_object = torch.nn.functional.max_pool2d(  # the object's mask grown by 1 px
        (whole.instance == 1).float()[:, None], 3, stride=1, padding=1
    )[:, 0]
    for f in range(4):
        x, y = points.xy[f].round().long().unbind(-1)
        assert bool(on_object[f, y, x].all())
    shift = points.xy[-1, :, 0].mean() - points.xy[0, :, 0].mean()
    assert float(shift) == pytest.approx(12.0, abs=2.0)
