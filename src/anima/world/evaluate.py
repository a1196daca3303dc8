"""How well a re-render reproduces a toy clip: PSNR over the pixels it can know.

A MotionSpec re-render (e.g. the ``coarse`` method) starts from frame 0 only, so it is judged on
the pixels whose content frame 0 shows. `reproduction_mask` keeps a pixel of frame f when

- it is ``covisible``: its surface point, carried back to frame 0 by its object's rigid motion,
  was visible in frame 0 (so disoccluded background and newly revealed object sides are out);
- it is not ``dynamic`` (water ripples change colour over time: no still image predicts them);
- it shows no figure, neither in the truth nor in the re-render's instance map when given
  (figures are articulated; a spec moves them rigidly, which is knowingly approximate).
"""

from __future__ import annotations

import numpy as np

from anima.world.clip import ToyClip


def reproduction_mask(clip: ToyClip, rendered_instance: np.ndarray | None = None) -> np.ndarray:
    """(F, H, W) bool: the pixels a re-render from frame 0 is judged on."""
    keep = clip.covisible & ~clip.dynamic
    figures = np.isin(clip.instance, clip.keypoint_figure)
    if rendered_instance is not None:
        figures |= np.isin(np.asarray(rendered_instance), clip.keypoint_figure)
    return keep & ~figures


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """PSNR (dB, peak 1) of (F, 3, H, W) frames over the (F, H, W) mask."""
    diff = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    selected = diff.transpose(0, 2, 3, 1)[mask]
    mse = float(selected.mean()) if selected.size else 0.0
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)
