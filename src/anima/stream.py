"""A method's video as a stream of frames, made one at a time and consumed as they come.

(docs/architecture.md, "Data flow"; issue "Photos as people take them", part 1.) The video
encoder (`anima.io.VideoWriter`) and the dump (`anima.pipeline.DumpWriter`) take each frame as
the method makes it, so a clip of any length at any size needs the memory of a frame or two,
not of the clip. A method that needs its whole clip at once (a diffusion model denoises every
frame together) holds it at the size it works at, and the stream brings each frame to the
output size as it goes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anima.render import RenderFrame, RenderResult


@dataclass
class OutputFrame:
    """One frame of a method's video, and the render frame it was made from when the method
    renders (the dump writes it)."""

    image: torch.Tensor  # (3, H, W) float32 in [0, 1], on the CPU
    render: RenderFrame | None = None


class FrameStream:
    """The frames of a video, made as they are asked for.

    A stream is iterated once (the outputs consume it together), unless it was held with
    `hold`: then it can be iterated again and `tensor` gives the whole clip. ``seconds`` is
    the time spent making frames so far (the work the consumers wait for)."""

    def __init__(
        self, frames: Iterable[OutputFrame], num_frames: int, size: tuple[int, int]
    ) -> None:
        self._frames: Iterable[OutputFrame] | None = frames
        self._held: list[OutputFrame] | None = None
        self.num_frames = num_frames
        self.size = size
        self.seconds = 0.0

    @classmethod
    def from_tensor(
        cls,
        frames: torch.Tensor,
        render: RenderResult | None = None,
        size: tuple[int, int] | None = None,
    ) -> FrameStream:
        """A stream of (F, 3, h, w) frames made at once, each brought to ``size`` (H, W)
        (bilinear) as it is asked for, with its render frame (at the size it was made)."""
        count = int(frames.shape[0])
        size = size or (int(frames.shape[-2]), int(frames.shape[-1]))

        def each() -> Iterator[OutputFrame]:
            for f in range(count):
                image = frames[f].float()
                if tuple(image.shape[-2:]) != size:
                    image = F.interpolate(image[None], size=size, mode="bilinear")[0]
                yield OutputFrame(
                    image.clamp(0, 1).cpu(), None if render is None else render.frame(f)
                )

        return cls(each(), count, size)

    def __len__(self) -> int:
        return self.num_frames

    def __iter__(self) -> Iterator[OutputFrame]:
        if self._held is not None:
            yield from self._held
            return
        if self._frames is None:
            raise RuntimeError("this stream was already consumed (hold it to iterate again)")
        frames, self._frames = iter(self._frames), None
        while True:
            start = time.perf_counter()
            frame = next(frames, None)
            self.seconds += time.perf_counter() - start
            if frame is None:
                return
            yield frame

    def hold(self) -> FrameStream:
        """Keep every frame, so that the stream can be iterated again (the studio and the
        demo, at their preview sizes)."""
        if self._held is None:
            self._held = list(self)
        return self

    def tensor(self) -> torch.Tensor:
        """The whole clip (F, 3, H, W), held."""
        return torch.stack([frame.image for frame in self.hold()._held or []])
