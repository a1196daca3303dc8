"""Which parts of a model call's batch a hook acts on: classifier-free-guidance branches.

A UNet call may carry several branches of the same videos stacked along the batch, always as
equal, contiguous blocks (each a whole number of videos, see `anima.attention.frames`):

- plain: one branch, the whole batch (``("all",)``, the default);
- batched classifier-free guidance: `CFG_BRANCHES`, ``[uncond; cond]`` (diffusers' order);
  AnyI2V injects features and replaces K/V in the conditional half only;
- I2V3D's three-branch pass, `SOURCE_CFG_BRANCHES`, ``[source; uncond; cond]`` (I2V3D §3.2.2
  and §3.3): the source branch denoises the inversion's latent of the step in the same forward
  pass, and its features are written into the two other branches (`anima.attention.inject`
  with the branch's name as the feature source), which alone get extended attention (§3.2.3).

Every manager of the hook layer takes ``branches`` (the names of the blocks, in batch order) and
``targets`` (the names it acts on; by default every branch but one named ``"source"``, which is
the unedited pass whose features are read). Layers whose batch is not ``videos x frames``
(temporal attention: ``videos x pixels``) split the same way, the branches being outermost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: One branch: the whole batch.
PLAIN_BRANCHES: tuple[str, ...] = ("all",)
#: Batched classifier-free guidance, ``[uncond; cond]``.
CFG_BRANCHES: tuple[str, ...] = ("uncond", "cond")
#: I2V3D's ``[source; uncond; cond]`` pass (§3.2.2, §3.3).
SOURCE_CFG_BRANCHES: tuple[str, ...] = ("source", "uncond", "cond")
#: The name of the branch that, by default, no manager edits.
SOURCE = "source"


@dataclass(frozen=True)
class Span:
    """A contiguous run of the batch: ``size`` rows from ``start``; ``targeted`` whether the
    manager acts on it."""

    start: int
    size: int
    targeted: bool = True


@dataclass(frozen=True)
class Branches:
    """The branches of a call's batch (``names``, in order) and those a manager acts on."""

    names: tuple[str, ...] = PLAIN_BRANCHES
    targets: tuple[str, ...] = PLAIN_BRANCHES

    @classmethod
    def of(
        cls, names: Sequence[str] | None = None, targets: str | Sequence[str] | None = None
    ) -> Branches:
        """Checked branches; ``targets`` None is every branch but ``"source"``."""
        names = PLAIN_BRANCHES if names is None else tuple(names)
        if not names or len(set(names)) != len(names):
            raise ValueError(f"branches must be distinct names, got {names!r}")
        if targets is None:
            chosen = tuple(name for name in names if name != SOURCE)
        else:
            chosen = (targets,) if isinstance(targets, str) else tuple(targets)
        unknown = [name for name in chosen if name not in names]
        if unknown or not chosen:
            raise ValueError(f"targets {chosen!r} must be some of the branches {names!r}")
        return cls(names, tuple(name for name in names if name in chosen))

    @property
    def everything(self) -> bool:
        """Whether every row of every call is targeted."""
        return len(self.targets) == len(self.names)

    def size(self, batch: int) -> int:
        """Rows per branch."""
        if batch % len(self.names):
            raise ValueError(f"a batch of {batch} does not split into branches {self.names}")
        return batch // len(self.names)

    def span(self, name: str, batch: int) -> Span:
        """The rows of branch ``name``."""
        if name not in self.names:
            raise ValueError(f"no branch {name!r} in {self.names}")
        size = self.size(batch)
        return Span(self.names.index(name) * size, size, name in self.targets)

    def target_spans(self, batch: int) -> list[Span]:
        """The rows of each targeted branch, one span a branch, in batch order."""
        return [self.span(name, batch) for name in self.targets]

    def runs(self, batch: int) -> list[Span]:
        """The whole batch as maximal runs of targeted / untargeted branches."""
        size = self.size(batch)
        out: list[Span] = []
        for index, name in enumerate(self.names):
            targeted = name in self.targets
            if out and out[-1].targeted == targeted:
                out[-1] = Span(out[-1].start, out[-1].size + size, targeted)
            else:
                out.append(Span(index * size, size, targeted))
        return out


def cfg_branches(cfg: str) -> Branches:
    """`anima.attention.inject`'s older ``cfg`` switch as branches: ``"none"`` one branch,
    ``"both"``/``"cond"``/``"uncond"`` the CFG halves, targeting both or one."""
    if cfg == "none":
        return Branches()
    if cfg == "both":
        return Branches.of(CFG_BRANCHES)
    if cfg in CFG_BRANCHES:
        return Branches.of(CFG_BRANCHES, cfg)
    raise ValueError(f"cfg must be none, both, cond or uncond, got {cfg!r}")
