"""Toy clips on disk: one folder a clip, in the layout `anima train levitor --data DIR` reads.

``DIR/world_index.json`` lists the clips with the generator config and version; each clip::

    <clip>/frames/0000.png ...     RGB (8-bit)
    <clip>/instance/0000.png ...   8-bit instance ids (0 background; see `anima.world.clip`)
    <clip>/depth/0000.png ...      16-bit distance x 1000 (`anima.io.write_depth_png`)
    <clip>/masks/object_<id>.png   first-frame masks of the spec's objects (0/255)
    <clip>/spec.json               the clip's MotionSpec (`anima.world.spec`)
    <clip>/tracks.npz              tracks (N, F, 2) px, visible (N, F), depth (N, F)
                                   (planar distance of the point), track_object (N,)
    <clip>/truth.npz               covisible (F, H, W), dynamic (F, H, W) bool maps
    <clip>/camera.json             fov, size, intrinsics (3x3), world_to_camera (F x 4x4), move
    <clip>/keypoints.json          (clips with figures) COCO-18 names, per figure keypoints
                                   (F x 18 x 2 px) and visibility
    <clip>/meta.json               seed, objects (id, label, role, path, size), camera move

Clip ``i`` of a world made with seed ``S`` is named ``clip_<i:05d>`` and drawn with
`clip_seed(S, i)` (numpy ``SeedSequence([S, i])``, so no two (S, i) pairs share a stream). Every
file is a deterministic function of the clip: PNGs and JSON carry no time stamps, and the
``.npz`` archives are written with a fixed zip date, so the same seed gives byte-identical files.
Folders are written atomically (`anima.io.atomic_dir`).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from anima.io import atomic_dir, write_depth_png, write_png
from anima.world.clip import WORLD_VERSION, ToyClip, WorldConfig, make_clip
from anima.world.figure import JOINT_NAMES
from anima.world.spec import mask_name

INDEX_NAME = "world_index.json"


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index`` of a world made with ``seed`` (both >= 0), < 2**63."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def clip_name(index: int) -> str:
    return f"clip_{index:05d}"


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """A compressed .npz (readable by `numpy.load`) with a fixed zip date: byte-reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())


def _json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _rounded(array: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(array, dtype=np.float64), digits).tolist()


def write_clip_files(clip: ToyClip, folder: Path) -> None:
    """Write ``clip`` into the existing empty directory ``folder`` (not atomic)."""
    height, width = clip.size
    if clip.instance.max(initial=0) > 255:
        raise ValueError("instance ids above 255 do not fit the 8-bit instance PNGs")
    for f in range(clip.num_frames):
        name = f"{f:04d}.png"
        write_png(folder / "frames" / name, clip.frames[f])
        write_png(folder / "instance" / name, clip.instance[f].astype(np.uint8))
        write_depth_png(folder / "depth" / name, clip.distance[f])
    for entry in clip.spec["objects"]:
        mask = (clip.instance[0] == entry["id"]).astype(np.uint8) * 255
        write_png(folder / mask_name(entry["id"]), mask)
    _json(folder / "spec.json", clip.spec)
    write_npz(
        folder / "tracks.npz",
        tracks=clip.tracks.astype(np.float32),
        visible=clip.visible,
        depth=clip.track_depth.astype(np.float32),
        track_object=clip.track_object,
    )
    write_npz(folder / "truth.npz", covisible=clip.covisible, dynamic=clip.dynamic)
    _json(
        folder / "camera.json",
        {
            "fov": clip.fov,
            "size": [height, width],
            "move": clip.camera_move,
            "intrinsics": _rounded(clip.intrinsics, 9),
            "world_to_camera": _rounded(clip.world_to_camera, 9),
        },
    )
    if len(clip.keypoint_figure):
        figures = [
            {
                "id": int(fig_id),
                "keypoints": _rounded(clip.keypoints[i], 4),
                "visible": clip.keypoint_visible[i].tolist(),
            }
            for i, fig_id in enumerate(clip.keypoint_figure)
        ]
        _json(folder / "keypoints.json", {"names": list(JOINT_NAMES), "figures": figures})
    _json(folder / "meta.json", _meta(clip))


def _meta(clip: ToyClip) -> dict[str, Any]:
    return {
        "version": WORLD_VERSION,
        "seed": clip.seed,
        "objects": clip.objects,
        "camera_move": clip.camera_move,
        "attempts": clip.attempts,
    }


def write_clip(clip: ToyClip, path: Path | str) -> Path:
    """Write one clip folder atomically (replacing ``path``)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_clip_files(clip, tmp)
    return path


def write_world(
    out: Path | str,
    n: int,
    seed: int,
    config: WorldConfig | None = None,
    on_clip: Callable[[int], None] | None = None,
) -> Path:
    """Make ``n`` clips into ``out`` (written in a temporary directory, then moved into place;
    an existing ``out`` is replaced)."""
    config = config or WorldConfig()
    out = Path(out)
    entries = []
    with atomic_dir(out) as tmp:
        for i in range(n):
            clip = make_clip(clip_seed(seed, i), config)
            name = clip_name(i)
            folder = tmp / name
            folder.mkdir()
            write_clip_files(clip, folder)
            entries.append({"name": name, **_meta(clip)})
            if on_clip is not None:
                on_clip(i)
        index = {
            "generator": "anima.world",
            "version": WORLD_VERSION,
            "seed": int(seed),
            "num_clips": int(n),
            "config": config.model_dump(mode="json"),
            "clips": entries,
        }
        _json(tmp / INDEX_NAME, index)
    return out
