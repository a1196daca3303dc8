"""AnyI2V's latent optimisation along the box trajectories: the motion control.

(AnyI2V, appendix A.1 "Details of Optimization", "Details of loss function"; appendix A.3;
README, "AnyI2V"; docs/architecture.md, "The hook layer".) On the step indices
`OPTIMISATION_STEPS` (0-5), before that step's main denoising pass, the latent is optimised
`ITERATIONS` (5) times with AdamW (lr 0.01). Each iteration:

1. a conditional-only forward of the video UNet on the current latent, with the step's
   first-frame injection active when the step is an injection step
   (`anima.methods.anyi2v.injection`), that ends after ``up_blocks.2``
   (`anima.attention.run_until`) and records (`anima.attention.capture`), with gradients,
   the self-attention queries of `OPTIMISED_LAYERS` (``up_blocks.1.attentions.1`` and
   ``up_blocks.2.attentions.0``); long videos run in the pipeline's sliding windows, frame 0's
   window first;
2. per layer, a PCA to `PCA_DIMS` (64) components, fitted without gradient on all frames'
   tokens jointly (`pca_features`), the projection upsampled bicubically to H/4 x W/4 (H, W the
   image size) and the layers concatenated (F, 128, H/4, W/4);
3. per object i and frame j in 1..F-1 (`appendix_loss`), with boxes B_j^i in image pixels
   (`anima.methods.anyi2v.boxes.BoxTrack`): the feature crop F_j[B_j^i] against SG(F_0[B_0^i])
   resized to B_j^i's size; semantic masks M_j^i (`semantic_mask`: the cosine similarity of each
   pixel of the crop to the features at the object's query points in frame 0, maximum over the
   points, split by 2-means, the higher cluster is the object) and M_0^i (frame 0's, resized
   likewise); loss L_j^i = ||M_0^i . M_j^i . (F_j[B_j^i] - SG(F_0[B_0^i]))||^2 normalised by the
   mask's area (and the channels), summed over objects and frames;
4. the gradient of the loss with respect to the latent (only: the UNet's weights get none) and
   one AdamW step.

Frames whose box does not overlap the image (or whose crop is empty) are skipped; an object
with no frame left adds nothing. float16 autocast is used where the device supports it (CUDA),
as the appendix's "fp16 mode"; on the CPU everything runs in float32. The optimised latent is
kept in float32 and cast to the UNet's dtype for the forward.

Differences from the release (FudanCVL/AnyI2V), by default following the appendix:

- one AdamW is kept over a step's iterations (its moments accumulate); the release creates a
  fresh optimiser (and GradScaler) every iteration, so each update is a first Adam step, about
  -lr * sign(grad): ``release_optimiser=True`` reproduces that;
- each object has its own first-frame mask M_0^i (the appendix's loss); the release shares one
  across objects (``release_optimiser=True`` uses the first object's M_0 for every object);
- the release skips object 0's frame 0: frame 0's term is identically zero (a crop against
  itself), so every object here sums frames 1..F-1;
- an empty or outside box is skipped here, where the release stops;
- no GradScaler: the gradient is taken once, with respect to the float32 latent;
- any size and length (sliding windows), features in memory (`anima.attention.FeatureStore`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from diffusers import UNet3DConditionModel, UNetMotionModel
from torch import Tensor
from torch.nn import functional as F

from anima.attention import FeatureStore, capture, run_until
from anima.methods.anyi2v.backbone import text_for_frames
from anima.methods.anyi2v.boxes import BoxTrack
from anima.methods.anyi2v.injection import ADAIN_PATCH, FirstFrameInjection
from anima.methods.anyi2v.inversion import InvertedFeatures

#: Step indices before whose main pass the latent is optimised (appendix A.2: t' <= 5).
OPTIMISATION_STEPS: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
#: AdamW iterations at each of those steps.
ITERATIONS = 5
#: AdamW learning rate (appendix A.1).
LEARNING_RATE = 0.01
#: Self-attention layers whose queries are aligned (the release's optimised layers).
OPTIMISED_LAYERS: tuple[str, ...] = (
    "up_blocks.1.attentions.1.transformer_blocks.0.attn1",
    "up_blocks.2.attentions.0.transformer_blocks.0.attn1",
)
#: The forward ends after this block (the last that holds an optimised layer).
EXIT_BLOCK = "up_blocks.2"
#: PCA components kept per layer (appendix A.3: lower-ranked ones are temporally inconsistent).
PCA_DIMS = 64
#: The feature maps are at 1 / FEATURE_STRIDE of the image size.
FEATURE_STRIDE = 4
#: Lloyd iterations of the 2-means split of the similarities.
KMEANS_ITERATIONS = 20


@dataclass(frozen=True)
class OptimisationOptions:
    """The latent optimisation's settings; the defaults are the appendix's (module docstring).
    ``release_optimiser``: a fresh AdamW every iteration and one shared first-frame mask, as
    the release."""

    steps: tuple[int, ...] = OPTIMISATION_STEPS
    iterations: int = ITERATIONS
    lr: float = LEARNING_RATE
    layers: tuple[str, ...] = OPTIMISED_LAYERS
    exit_block: str = EXIT_BLOCK
    pca_dims: int = PCA_DIMS
    release_optimiser: bool = False

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.pca_dims < 1:
            raise ValueError(f"pca_dims must be >= 1, got {self.pca_dims}")
        if any(step < 0 for step in self.steps):
            raise ValueError(f"optimisation steps are step indices >= 0, got {self.steps}")
        if not self.layers:
            raise ValueError("the optimisation needs at least one layer")


# -- features -------------------------------------------------------------------------------


def token_grid(tokens: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) grid of a layer's ``tokens`` in a UNet whose input is ``latent_size``: the
    latent downsampled by 1, 2, 4, ... (each halving rounds up, as the UNet's stride-2 convs)."""
    height, width = latent_size
    for level in range(8):
        h, w = height, width
        for _ in range(level):
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if h * w == tokens:
            return h, w
    raise ValueError(f"{tokens} tokens are no downsampled grid of a {height}x{width} latent")


def pca_project(tokens: Tensor, dims: int) -> Tensor:
    """(N, C) -> (N, k), k = min(dims, N, C): the tokens centred and projected on their first
    principal components, fitted without gradient (SVD in float32); the projection keeps the
    gradient of ``tokens``."""
    with torch.no_grad():
        data = tokens.detach().float()
        mean = data.mean(dim=0, keepdim=True)
        _, _, vh = torch.linalg.svd(data - mean, full_matrices=False)
        k = min(dims, vh.shape[0])
        basis = vh[:k].T  # (C, k)
    return (tokens.float() - mean) @ basis


def pca_features(
    queries: Sequence[Tensor],
    latent_size: tuple[int, int],
    image_size: tuple[int, int],
    dims: int = PCA_DIMS,
) -> Tensor:
    """(F, D, H/4, W/4) feature maps from each layer's queries (F, tokens, C): per layer a PCA
    (`pca_project`) on all frames' tokens jointly, each frame's map upsampled bicubically to
    the image size over `FEATURE_STRIDE`, the layers concatenated along the channels."""
    height, width = image_size
    out_size = (max(1, height // FEATURE_STRIDE), max(1, width // FEATURE_STRIDE))
    maps = []
    for query in queries:
        frames, tokens, channels = query.shape
        grid = token_grid(tokens, latent_size)
        projected = pca_project(query.reshape(frames * tokens, channels), dims)
        projected = projected.reshape(frames, *grid, -1).permute(0, 3, 1, 2)
        maps.append(F.interpolate(projected, size=out_size, mode="bicubic", align_corners=False))
    return torch.cat(maps, dim=1)


# -- boxes and masks ------------------------------------------------------------------------


def feature_box(box: Tensor) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), ends exclusive, of an image-pixel box (x0, y0, x1, y1) on
    the feature grid (pixel // `FEATURE_STRIDE`); at least one cell, maybe outside the grid."""
    x0, y0, x1, y1 = (float(v) / FEATURE_STRIDE for v in box)
    left, top = math.floor(x0), math.floor(y0)
    right, bottom = max(math.floor(x1), left) + 1, max(math.floor(y1), top) + 1
    return top, left, bottom, right


def clipped(
    cells: tuple[int, int, int, int], grid: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """The part of ``cells`` inside the grid (h, w), or None when nothing is."""
    top, left, bottom, right = cells
    top, left = max(top, 0), max(left, 0)
    bottom, right = min(bottom, grid[0]), min(right, grid[1])
    if top >= bottom or left >= right:
        return None
    return top, left, bottom, right


def two_means(values: Tensor, iterations: int = KMEANS_ITERATIONS) -> Tensor:
    """Bool mask of the values (any shape) in the higher of two 1-D clusters (Lloyd from the
    minimum and maximum); all True when the values are all equal."""
    flat = values.detach().flatten().float()
    low, high = flat.min(), flat.max()
    if float(high - low) <= 1e-12:
        return torch.ones_like(values, dtype=torch.bool)
    for _ in range(iterations):
        upper = (flat - low).abs() > (flat - high).abs()
        if upper.all() or not upper.any():
            break
        new_low, new_high = flat[~upper].mean(), flat[upper].mean()
        if torch.equal(new_low, low) and torch.equal(new_high, high):
            break
        low, high = new_low, new_high
    return ((values.float() - low).abs() > (values.float() - high).abs()).reshape(values.shape)


def point_features(features: Tensor, points: Tensor) -> Tensor:
    """(P, D) the features (D, h, w) at the image-pixel points (P, 2: x, y), nearest cell."""
    h, w = features.shape[-2:]
    cols = (points[:, 0] / FEATURE_STRIDE).floor().long().clamp(0, w - 1)
    rows = (points[:, 1] / FEATURE_STRIDE).floor().long().clamp(0, h - 1)
    return features[:, rows, cols].T


@torch.no_grad()
def semantic_mask(crop: Tensor, anchors: Tensor) -> Tensor:
    """(h, w) bool: which pixels of the feature crop (D, h, w) are the object, given the
    features at its query points (P, D): each pixel's cosine similarity to the points (maximum
    over them), split by `two_means` (AnyI2V's semantic mask)."""
    pixels = F.normalize(crop.detach().float().flatten(1).T, dim=-1)  # (h*w, D)
    similarity = (pixels @ F.normalize(anchors.detach().float(), dim=-1).T).amax(dim=-1)
    return two_means(similarity).reshape(crop.shape[-2:])


@dataclass
class ObjectTerms:
    """What one object's loss sums: its frames (those in 1..F-1 with a box on the grid)."""

    object_id: int
    frames: list[int] = field(default_factory=list)


def appendix_loss(
    features: Tensor,
    tracks: Sequence[BoxTrack],
    image_size: tuple[int, int],
    shared_first_mask: bool = False,
) -> tuple[Tensor, list[ObjectTerms]]:
    """AnyI2V's loss (appendix, "Details of loss function") on the feature maps (F, D, h, w)
    (module docstring, 3.), and which frames of which objects it summed. ``shared_first_mask``:
    the first object's M_0 for every object (the release)."""
    frames_count = features.shape[0]
    grid = tuple(features.shape[-2:])
    total = features.new_zeros((), dtype=torch.float32)
    terms = []
    shared: Tensor | None = None
    for track in tracks:
        term = ObjectTerms(track.object_id)
        terms.append(term)
        visible = track.visible(image_size)
        if not bool(visible[0]):
            continue
        first_cells = feature_box(track.boxes[0])
        first = clipped(first_cells, grid)
        if first is None:
            continue
        top, left, bottom, right = first
        source = features[0, :, top:bottom, left:right].detach().float()
        anchors = point_features(features[0].detach(), track.query_points.float())
        first_mask = semantic_mask(source, anchors).float()
        if shared_first_mask:
            shared = first_mask if shared is None else shared
            first_mask = shared
        for j in range(1, frames_count):
            if not bool(visible[j]):
                continue
            cells = feature_box(track.boxes[j])
            inside = clipped(cells, grid)
            if inside is None:
                continue
            size = (cells[2] - cells[0], cells[3] - cells[1])
            target = F.interpolate(source[None], size=size, mode="bilinear", align_corners=False)
            mask0 = F.interpolate(first_mask[None, None], size=size, mode="nearest")[0, 0]
            top, left, bottom, right = inside
            rows = slice(top - cells[0], bottom - cells[0])
            cols = slice(left - cells[1], right - cells[1])
            target, mask0 = target[0, :, rows, cols], mask0[rows, cols]
            crop = features[j, :, top:bottom, left:right].float()
            mask = mask0 * semantic_mask(crop, anchors).float()
            area = mask.sum()
            if float(area) == 0.0:
                continue
            error = (mask * (crop - target)).pow(2).sum()
            total = total + error / (area * crop.shape[0])
            term.frames.append(j)
    return total, terms


# -- the optimisation -----------------------------------------------------------------------


class LatentOptimisation:
    """AnyI2V's latent optimisation of one sampling run (module docstring): ``tracks`` at the
    image size, the conditional text embedding, the pipeline's windows, and the inversion's
    features (None: no first-frame injection in the optimisation forwards). ``losses[i]``
    holds the loss of each iteration at step index i (before its update)."""

    def __init__(
        self,
        unet: UNetMotionModel | UNet3DConditionModel,
        tracks: Sequence[BoxTrack],
        image_size: tuple[int, int],
        text: Tensor,
        windows: Sequence[range],
        options: OptimisationOptions | None = None,
        features: InvertedFeatures | None = None,
        injection_steps: Sequence[int] = (),
        adain_patch: int = ADAIN_PATCH,
    ) -> None:
        self.unet = unet
        self.tracks = list(tracks)
        self.image_size = image_size
        self.text = text
        self.windows = list(windows)
        self.options = options or OptimisationOptions()
        self.features = features
        self.injection_steps = set(injection_steps)
        self.adain_patch = adain_patch
        self.losses: dict[int, list[float]] = {}

    def autocast(self, device: torch.device):
        """float16 autocast where the device supports it (CUDA), else nothing."""
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return nullcontext()

    def queries(self, latents: Tensor, t: Tensor, step: int) -> list[Tensor]:
        """Each optimised layer's queries (F, tokens, C), with gradients, of a conditional
        forward of ``latents`` (1, C, F, h, w) (window by window, as far as the exit block),
        under the step's first-frame injection when it is an injection step."""
        injection = None
        if self.features is not None and step in self.injection_steps:
            injection = FirstFrameInjection(self.unet, self.features, False, self.adain_patch)
        store = FeatureStore(detach=False)
        record = len(self.windows) > 1
        sample = latents.to(self.unet.dtype)
        for frames in self.windows:
            window = sample[:, :, frames.start : frames.stop]
            hidden = text_for_frames(self.unet, self.text.to(self.unet.dtype), len(frames))
            hooks = injection.window(frames, record) if injection is not None else nullcontext()
            recording = capture(self.unet, store, layers=self.options.layers, kinds=("q",))
            with hooks, store.frames(frames), recording, self.autocast(latents.device):
                run_until(
                    self.unet,
                    self.options.exit_block,
                    (window, t),
                    {"encoder_hidden_states": hidden},
                )
        return [store.at(0, layer, "q") for layer in self.options.layers]

    def loss(self, latents: Tensor, t: Tensor, step: int) -> Tensor:
        """The appendix loss of ``latents`` at timestep ``t`` (step index ``step``)."""
        queries = self.queries(latents, t, step)
        features = pca_features(
            queries, tuple(latents.shape[-2:]), self.image_size, self.options.pca_dims
        )
        shared = self.options.release_optimiser
        return appendix_loss(features, self.tracks, self.image_size, shared)[0]

    def optimise(self, latents: Tensor, t: Tensor, step: int) -> Tensor:
        """The latents (1, C, F, h, w) after the step's iterations (unchanged off the
        optimisation steps or without tracks), in their dtype, without gradient."""
        options = self.options
        if step not in options.steps or not self.tracks or options.iterations == 0:
            return latents
        variable = latents.detach().float().clone().requires_grad_(True)
        optimiser = None
        history = self.losses.setdefault(step, [])
        with torch.enable_grad():
            for _ in range(options.iterations):
                if optimiser is None or options.release_optimiser:
                    optimiser = torch.optim.AdamW([variable], lr=options.lr)
                loss = self.loss(variable, t, step)
                history.append(float(loss.detach()))
                if not loss.requires_grad:  # nothing to align (every box skipped)
                    break
                (gradient,) = torch.autograd.grad(loss, variable)
                variable.grad = gradient
                optimiser.step()
                optimiser.zero_grad(set_to_none=True)
        return variable.detach().to(latents.dtype)
