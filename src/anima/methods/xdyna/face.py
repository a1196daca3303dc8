"""The S-Face ControlNet condition: eye + mouth patches and the face crop, kept in place.

X-Dyna (§3.3) conditions its S-Face ControlNet ``C_F`` on the driving frame's face
patch "reinserted at the original position of I_i, with other pixels masked as blank"; at
inference the patches are cropped from the driving video directly (§4.1). The condition has
6 channels, as in the authors' release:

- channels 0-2, LOCAL patches: the driving frame's pixels inside the two eye boxes and the
  mouth box, everything else black;
- channels 3-5, GLOBAL face crop: the driving frame's pixels inside the face box, everything
  else black.

Both are kept IN PLACE (same pixel grid as the frame, not resized to a fixed crop): the paper
reinserts the patch at its original position, and the position is what carries head movement,
which the S-Face ControlNet is said to control together with expression. A frame whose face is
not visible gets blank channels (harmonic data fusion, §3.4, feeds blank conditions likewise).

Boxes (axis-aligned, from the visible landmarks of the iBUG-68 layout; a pixel belongs to a
box when its centre ``(x=col, y=row)`` lies inside or on it):

- face size ``s`` = the larger side of the bounding box of all visible landmarks;
- eye box: the eye (36-41 / 42-47) and its brow (17-21 / 22-26; brow raises are expression),
  padded by `LOCAL_PAD` * s on every side; mouth box: 48-67 padded likewise. A region needs at
  least `MIN_REGION_POINTS` visible landmarks, else it is left out;
- face box: the landmarks' bounding box widened by `FACE_MARGIN_SIDE` * width left and right,
  `FACE_MARGIN_BOTTOM` * height below and `FACE_MARGIN_TOP` * height above (iBUG-68 stops at
  the brows, so the top margin takes in the forehead). Needs `MIN_FACE_POINTS` visible.

MediaPipe FaceMesh (468 points, 478 with irises) is mapped onto the 68-point layout with
`MEDIAPIPE_TO_IBUG68`: for each iBUG point the mesh vertex at the same facial feature (jaw on
the face-oval contour, brows on the brow contours, eye corners and lids on the eye contours,
lips on the lip contours of MediaPipe's published connection sets). It is a correspondence of
features, so the jaw points are approximate, but every eye, brow and mouth point lies on the
matching MediaPipe contour, which is all the boxes need.
"""

from __future__ import annotations

import numpy as np
import torch

from anima.methods.xdyna.keypoints import FACE_THRESHOLD, NUM_FACE, DrivingKeypoints

JAW = tuple(range(0, 17))
RIGHT_BROW = tuple(range(17, 22))  # the subject's right: left in a frontal image
LEFT_BROW = tuple(range(22, 27))
NOSE = tuple(range(27, 36))
RIGHT_EYE = tuple(range(36, 42))
LEFT_EYE = tuple(range(42, 48))
MOUTH = tuple(range(48, 68))
#: Landmarks of each local patch.
REGIONS = {
    "right_eye": RIGHT_EYE + RIGHT_BROW,
    "left_eye": LEFT_EYE + LEFT_BROW,
    "mouth": MOUTH,
}

#: MediaPipe FaceMesh vertex of each iBUG-68 landmark (jaw 17, brows 10, nose 9, eyes 12,
#: outer lips 12, inner lips 8).
MEDIAPIPE_TO_IBUG68 = (
    127, 234, 93, 132, 58, 136, 150, 176, 152, 400, 379, 365, 288, 361, 323, 454, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,
    78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
MEDIAPIPE_POINTS = (468, 478)  # FaceMesh without / with refined iris landmarks

LOCAL_PAD = 0.06
FACE_MARGIN_SIDE = 0.1
FACE_MARGIN_BOTTOM = 0.1
FACE_MARGIN_TOP = 0.35
MIN_REGION_POINTS = 3
MIN_FACE_POINTS = NUM_FACE // 2

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, inclusive


def to_ibug68(landmarks: np.ndarray) -> np.ndarray:
    """(..., 68, 2) iBUG-68 landmarks from (..., 68 | 468 | 478, D) landmarks."""
    landmarks = np.asarray(landmarks)
    count = landmarks.shape[-2]
    if count == NUM_FACE:
        return landmarks
    if count in MEDIAPIPE_POINTS:
        return landmarks[..., list(MEDIAPIPE_TO_IBUG68), :]
    raise ValueError(f"face landmarks must number 68, 468 or 478, got {count}")


def _bounds(points: np.ndarray) -> Box:
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


def face_boxes(landmarks: np.ndarray, visible: np.ndarray | None = None) -> dict[str, Box]:
    """The boxes of one frame (module doc): keys among ``right_eye``, ``left_eye``,
    ``mouth`` and ``face``; a region without enough visible landmarks is absent.

    ``landmarks`` (68 | 468 | 478, 2) pixels, ``visible`` (same count,) bool or None (all).
    """
    points = to_ibug68(np.asarray(landmarks, dtype=np.float64)[:, :2])
    seen = (
        np.ones(NUM_FACE, dtype=bool)
        if visible is None
        else to_ibug68(np.asarray(visible, dtype=bool)[:, None])[:, 0]
    )
    seen = seen & np.isfinite(points).all(axis=1)
    if seen.sum() < MIN_REGION_POINTS:
        return {}
    x0, y0, x1, y1 = _bounds(points[seen])
    w, h = x1 - x0, y1 - y0
    boxes: dict[str, Box] = {}
    pad = LOCAL_PAD * max(w, h)
    for name, index in REGIONS.items():
        region = np.array(index)
        region = region[seen[region]]
        if len(region) >= MIN_REGION_POINTS:
            a0, b0, a1, b1 = _bounds(points[region])
            boxes[name] = (a0 - pad, b0 - pad, a1 + pad, b1 + pad)
    if seen.sum() >= MIN_FACE_POINTS:
        boxes["face"] = (
            x0 - FACE_MARGIN_SIDE * w,
            y0 - FACE_MARGIN_TOP * h,
            x1 + FACE_MARGIN_SIDE * w,
            y1 + FACE_MARGIN_BOTTOM * h,
        )
    return boxes


def box_mask(box: Box, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside or on ``box``."""
    height, width = size
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=bool)
    c0, c1 = max(int(np.ceil(x0)), 0), min(int(np.floor(x1)), width - 1)
    r0, r1 = max(int(np.ceil(y0)), 0), min(int(np.floor(y1)), height - 1)
    if c0 <= c1 and r0 <= r1:
        mask[r0 : r1 + 1, c0 : c1 + 1] = True
    return mask


def face_masks(
    landmarks: np.ndarray, visible: np.ndarray | None, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(F, H, W) bool masks of the local patches (eyes + mouth) and of the face box.

    ``landmarks`` (F, 68 | 468 | 478, 2), ``visible`` (F, same count) bool or None.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    frames = landmarks.shape[0]
    local = np.zeros((frames, *size), dtype=bool)
    face = np.zeros((frames, *size), dtype=bool)
    for f in range(frames):
        boxes = face_boxes(landmarks[f], None if visible is None else visible[f])
        for name, box in boxes.items():
            if name == "face":
                face[f] = box_mask(box, size)
            else:
                local[f] |= box_mask(box, size)
    return local, face


def face_condition(
    frames: torch.Tensor, landmarks: np.ndarray, visible: np.ndarray | None = None
) -> torch.Tensor:
    """The S-Face condition (F, 6, H, W) float32 in [0, 1] of the driving ``frames``.

    ``frames`` (F, 3, H, W) in [0, 1]; ``landmarks`` (F, 68 | 468 | 478, 2) pixel coordinates
    in the frames' grid; ``visible`` (F, same count) bool, or None for all visible.
    Channels 0-2: eye + mouth patches; 3-5: the face crop; both in place (module doc).
    """
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (F, 3, H, W), got {tuple(frames.shape)}")
    landmarks = np.asarray(landmarks)
    if landmarks.ndim != 3 or landmarks.shape[0] != frames.shape[0]:
        raise ValueError(
            f"landmarks must be ({frames.shape[0]}, N, 2), got {tuple(landmarks.shape)}"
        )
    size = (int(frames.shape[2]), int(frames.shape[3]))
    local, face = face_masks(landmarks, visible, size)
    local_t = torch.from_numpy(local).to(frames.device)[:, None]
    face_t = torch.from_numpy(face).to(frames.device)[:, None]
    image = frames.float()
    zero = torch.zeros((), dtype=image.dtype, device=image.device)
    return torch.cat([torch.where(local_t, image, zero), torch.where(face_t, image, zero)], dim=1)


def face_condition_from_keypoints(
    frames: torch.Tensor, keypoints: DrivingKeypoints, threshold: float = FACE_THRESHOLD
) -> torch.Tensor:
    """`face_condition` with the face landmarks of ``keypoints`` (blank without any).

    ``keypoints.size`` must be the frames' (H, W); resize the keypoints first otherwise.
    """
    size = (int(frames.shape[2]), int(frames.shape[3]))
    if keypoints.size != size:
        raise ValueError(f"keypoints are for size {keypoints.size}, frames are {size}")
    if frames.shape[0] != keypoints.num_frames:
        raise ValueError(f"{frames.shape[0]} frames but {keypoints.num_frames} keypoint frames")
    if keypoints.face is None:
        return torch.zeros((frames.shape[0], 6, *size), dtype=torch.float32, device=frames.device)
    return face_condition(frames, keypoints.face, keypoints.face_visible(threshold))
