"""A procedural toy world with exact ground truth (docs/architecture.md, "The toy world").

Deterministic by seed: textured ground (optionally with a rippling-water region) and sky, 1-3
rigid objects (spheres, boxes, textured sprites) on 3D paths (approach, recede, passes behind or
in front of an occluder, orbits), optional camera moves, and articulated figures. Per clip:
RGB frames, distance maps, instance masks, point tracks with visibility, the camera, figure
keypoints and the clip's MotionSpec.

Modules (one job each): `textures` (procedural colour), `objects` (analytic surfaces and ray
intersections), `figure` (COCO-18 skeleton, walk/wave cycles, capsule limbs), `paths` (object
paths, camera moves), `clip` (`make_clip`: drawing a scene and rendering it exactly by ray
casting), `spec` (the clip's MotionSpec), `writer` (clip folders and worlds on disk),
`evaluate` (the reproduction check: PSNR on covisible pixels).
"""

from anima.world.clip import WORLD_VERSION, ToyClip, WorldConfig, make_clip
from anima.world.figure import JOINT_NAMES

__all__ = ["JOINT_NAMES", "WORLD_VERSION", "ToyClip", "WorldConfig", "make_clip"]
