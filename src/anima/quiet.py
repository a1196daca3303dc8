"""Third-party log lines that tell an anima user nothing, dropped at the logger that emits them.

Two libraries log on every run for reasons that are not the user's to act on:

- transformers (>= 5) warns, the first time a module imports ``CLIPImageProcessor`` or
  ``SiglipImageProcessor`` without torchvision installed, that it falls back to the PIL
  processor (``CLIPImageProcessorPil``, ...). anima never installs torchvision and builds its own
  processors with the PIL class (`anima.models.tiny.CLIPProcessor`); the imports that warn are
  diffusers' own (``diffusers.loaders.ip_adapter``, the SVD pipeline), so they cannot be made to
  ask for the PIL class.
- diffusers warns "There are modules in X that should be kept in float32: []" on every
  ``ModelMixin.to(dtype=...)``, also when the list is empty (its check tests the list against
  None after defaulting it to ``[]``). Only the empty-list form is dropped: a warning that names
  modules still shows.

`install` adds one `logging.Filter` to each of the two loggers; every other record passes. It
also turns off the progress bars huggingface_hub and transformers (>= 5) draw when a model is
loaded or saved ("Loading weights", "Writing model shards"): a local load takes a moment and
anima reports its own stages. It is called when `anima.models`, `anima.methods` or
`anima.metrics` is imported, before any of their code imports a model library.
"""

from __future__ import annotations

import logging
import os
import sys

#: (logger name, text of the records that logger drops)
DROPPED: tuple[tuple[str, str], ...] = (
    ("transformers.utils.import_utils", "requires torchvision (not installed); falling back to"),
    ("diffusers.models.modeling_utils", "that should be kept in float32: []."),
)


class DropMessage(logging.Filter):
    """Drops the records whose message contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def install() -> None:
    """Add the `DROPPED` filters (once: calling again adds nothing) and turn off the model
    libraries' loading progress bars (the environment variable for libraries imported later,
    their switch for those already imported)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    for name, text in DROPPED:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropMessage) and f.text == text for f in logger.filters):
            logger.addFilter(DropMessage(text))
