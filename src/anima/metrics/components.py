"""The models the learned metrics read, one folder each under ``DIR/metrics/``.

(README, "Evaluation"; docs/architecture.md, "Models and weights")

Every folder is optional: ``anima eval`` computes the metrics whose folder is present and names
the others as skipped with the folder each needs. ``--weights tiny`` builds tiny random models
of the same architectures (the scores are meaningless, every code path runs). Formats:

- ``inception/``: the FID Inception-v3 as the reference implementations ship it, either
  clean-fid's / StyleGAN's TorchScript ``inception-2015-12-05.pt`` or pytorch-fid's state dict
  ``pt_inception-2015-12-05-6726825d.pth`` (a pickle: read with ``--allow-pickle``).
- ``i3d/``: the FVD I3D as StyleGAN-V ships it, TorchScript ``i3d_torchscript.pt``.
- ``videomae/``: content-debiased FVD's VideoMAE, transformers layout.
- ``dtfvd/``: DTFVD's backbone, a user-given TorchScript ``model.pt`` (clips to features).
- ``clip/``: CLIP in transformers layout (model, tokenizer and image processor).
- ``dino/``: DINO ViT in transformers layout (``ViTModel``).
- ``face/``: a face embedding model, TorchScript ``embedder.pt`` (112x112 aligned crops to
  embeddings, ArcFace's convention); detection is OpenCV's.
- ``cotracker/``: CoTracker as TorchScript ``cotracker.pt`` (video and query points to tracks
  and visibility); without it ObjMC uses the project's own tracker.
- ``lpips/``: LPIPS, the backbone's and the linear layers' state dicts (``.safetensors``, or
  ``.pth`` with ``--allow-pickle``).
"""

from __future__ import annotations

from anima.weights import Component

INCEPTION = Component(
    "inception",
    "metrics/inception",
    "FID (Inception-v3, pytorch-fid / clean-fid weights)",
    required_files=(),
    optional=True,
    required_any=("inception-2015-12-05.pt", "pt_inception-2015-12-05-6726825d.pth"),
)
I3D = Component(
    "i3d",
    "metrics/i3d",
    "FVD (I3D, StyleGAN-V's TorchScript)",
    required_files=("i3d_torchscript.pt",),
    optional=True,
)
VIDEOMAE = Component(
    "videomae",
    "metrics/videomae",
    "content-debiased FVD (VideoMAE, transformers layout)",
    optional=True,
)
DTFVD = Component(
    "dtfvd",
    "metrics/dtfvd",
    "DTFVD (a dynamic-texture video backbone, TorchScript)",
    required_files=("model.pt",),
    optional=True,
)
CLIP = Component(
    "clip", "metrics/clip", "CLIP-I, CLIP-T, CLIP frame consistency, CLIP-R", optional=True
)
DINO = Component("dino", "metrics/dino", "DINO structure similarity (DINO ViT)", optional=True)
FACE = Component(
    "face",
    "metrics/face",
    "Face-Cos (a face embedding model, TorchScript)",
    required_files=("embedder.pt",),
    optional=True,
)
COTRACKER = Component(
    "cotracker",
    "metrics/cotracker",
    "ObjMC with CoTracker (else the project's tracker)",
    required_files=("cotracker.pt",),
    optional=True,
)
LPIPS = Component(
    "lpips",
    "metrics/lpips",
    "LPIPS (backbone and linear layers)",
    required_files=("lpips.json",),
    optional=True,
)

METRIC_COMPONENTS = (INCEPTION, I3D, VIDEOMAE, DTFVD, CLIP, DINO, FACE, COTRACKER, LPIPS)
