"""The studio's files: one temporary folder for everything, one sub-folder a browser session.

A session's folder holds the photos it was given (under their own names), the masks and depth
maps computed for them (``cache/``), the exported spec and the videos. `Workspace.close` removes
the whole root; the server calls it at exit. Uploads are checked here: an image must be readable,
at most `MAX_IMAGE_PIXELS` pixels and at least `MIN_SIDE` pixels a side; a larger photo is worked
on at `MAX_WORKING_SIDE` pixels on its longer side (the spec's ``size`` says so, so the CLI
renders the same frames).
"""

from __future__ import annotations

import filecmp
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from anima.errors import InputError
from anima.io import atomic_path
from anima.studio import state
from anima.studio.state import Draft

MAX_IMAGE_PIXELS = 50_000_000
"""Photos with more pixels are refused (decoding them would take seconds and gigabytes)."""

MAX_WORKING_SIDE = 768
"""Photos are worked on at most this many pixels on their longer side (a quick preview)."""

MIN_SIDE = 16
"""The spec's smallest working size."""

EXIF_ORIENTATION = 0x0112
"""The EXIF tag whose values 5-8 mean the photo is stored turned by 90 degrees."""


def safe_name(name: str, default: str = "photo.png") -> str:
    """A file name without folders or unusual characters (``my photo (1).JPG`` ->
    ``my_photo_1_.JPG``)."""
    base = Path(str(name).replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    return cleaned or default


def working_size(size: tuple[int, int], max_side: int = MAX_WORKING_SIDE) -> tuple[int, int]:
    """(H, W) scaled down so that the longer side is at most ``max_side`` (aspect kept)."""
    height, width = size
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def image_size(path: Path, where: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(H, W) of an image file as `anima.io.read_image` reads it (EXIF orientation applied),
    refusing non-images, huge and tiny images. The pixel count is checked from the header
    before anything is decoded; then the file is decoded (a truncated file fails here)."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise InputError(
                    f"'{path.name}' has {width}x{height} pixels; the studio takes at most "
                    f"{max_pixels / 1e6:g} megapixels",
                    where,
                )
            img.load()
            if img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                width, height = height, width
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        raise InputError(f"'{path.name}' is not an image the studio can read", where) from None
    if min(width, height) < MIN_SIDE:
        raise InputError(
            f"'{path.name}' is {width}x{height}; each side needs at least {MIN_SIDE} pixels", where
        )
    return height, width


class Workspace:
    """The studio's temporary folder (``root``), with a sub-folder per browser session."""

    def __init__(
        self,
        root: Path | None = None,
        max_upload_bytes: int | None = None,
        max_side: int = MAX_WORKING_SIDE,
    ) -> None:
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="anima-studio-"))
        self.max_upload_bytes = max_upload_bytes
        self.max_side = max_side
        (self.root / "sessions").mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------------------- sessions

    def new_session(self) -> Path:
        """A fresh, empty folder for one browser session."""
        return Path(tempfile.mkdtemp(prefix="session-", dir=self.root / "sessions"))

    def draft(self, draft: Draft | None) -> Draft:
        """The session's draft; an empty one (no folder yet) before the first photo."""
        return draft if draft is not None else state.start("")

    def _with_folder(self, draft: Draft | None) -> Draft:
        """The draft with its session folder, made on first use (a photo or a spec)."""
        draft = self.draft(draft)
        if draft.workdir and Path(draft.workdir).is_dir():
            return draft
        return replace(draft, workdir=str(self.new_session()))

    def remove_session(self, workdir: str | Path) -> None:
        """Delete a session's folder (when its page is closed)."""
        if not str(workdir):
            return
        folder = Path(workdir).resolve()
        if folder.parent == (self.root / "sessions").resolve():
            shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Delete everything the studio wrote."""
        shutil.rmtree(self.root, ignore_errors=True)

    # ----------------------------------------------------------------------- uploads

    def _check_upload(self, path: Path, where: str) -> None:
        if not path.is_file():
            raise InputError("the upload did not arrive; try again", where)
        if self.max_upload_bytes is not None and path.stat().st_size > self.max_upload_bytes:
            raise InputError(
                f"'{path.name}' is {path.stat().st_size / 1e6:.1f} MB; uploads are limited to "
                f"{self.max_upload_bytes / 1e6:g} MB",
                where,
            )

    def _adopt(self, workdir: Path, source: Path, name: str) -> str:
        """Copy ``source`` into ``workdir`` as ``name``, or under a new name when a different
        file already has it (an undo may still need the old one); returns the name used."""
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, n = name, 1
        while (workdir / candidate).exists():
            if filecmp.cmp(workdir / candidate, source, shallow=False):
                return candidate
            n += 1
            candidate = f"{stem}-{n}{suffix}"
        shutil.copyfile(source, workdir / candidate)
        return candidate

    def add_image(self, draft: Draft, upload: str | Path, name: str | None = None) -> Draft:
        """Start the draft over on an uploaded photo (see `state.set_image`)."""
        draft = self._with_folder(draft)
        path = Path(upload)
        where = "photo"
        self._check_upload(path, where)
        if path.suffix.lower() == ".json":
            raise InputError("this is a spec: load it with 'Continue from a spec'", where)
        size = image_size(path, where)
        workdir = Path(draft.workdir)
        adopted = self._adopt(workdir, path, safe_name(name or path.name))
        work = working_size(size, self.max_side)
        return state.set_image(draft, adopted, work, working_size=work != size)

    def load_spec(self, draft: Draft | None, uploads: Sequence[str | Path]) -> Draft:
        """Continue a downloaded spec: ``uploads`` hold one ``.json`` and the files it names
        (its photo, masks, depth) unless the session already has them under those names.
        Files are looked up by name only: a spec cannot point the studio at other files."""
        draft = self._with_folder(draft)
        where = "spec"
        paths = [Path(p) for p in uploads]
        for path in paths:
            self._check_upload(path, where)
        specs = [p for p in paths if p.suffix.lower() == ".json"]
        if len(specs) != 1:
            raise InputError(
                f"upload one .json spec (with its photo), got {len(specs)} .json files", where
            )
        text = specs[0].read_text(encoding="utf-8", errors="replace")
        data = state.parse_json(text, specs[0].name)
        workdir = Path(draft.workdir)
        by_name = {p.name: p for p in paths if p is not specs[0]}
        renamed: dict[str, str] = {}
        for named in state.referenced_files(state.Draft(str(workdir), data)):
            base = Path(named).name
            source = by_name.get(base) or by_name.get(safe_name(base))
            if source is None and (workdir / safe_name(base)).is_file():
                source = workdir / safe_name(base)
            if source is None:
                raise InputError(
                    f"upload the spec together with the file it names, '{base}'", specs[0].name
                )
            renamed[named] = self._adopt(workdir, source, safe_name(base))
        data["image"] = renamed[data["image"]]
        if data.get("depth"):
            data["depth"] = renamed[data["depth"]]
        data["objects"] = [
            {**o, "mask": renamed[o["mask"]]} if o.get("mask") else o for o in data["objects"]
        ]
        size = image_size(workdir / data["image"], "image")
        if data.get("size"):
            size = (int(data["size"][0]), int(data["size"][1]))
        return state.load(draft, data, size)

    # ----------------------------------------------------------------------- downloads

    def export(self, draft: Draft) -> list[Path]:
        """Write the spec as ``<photo name>.json`` next to copies of the files it names, in a
        fresh folder, and return those paths (spec first): saved together, ``anima animate``
        runs the spec as it is."""
        spec_text = state.to_json(draft)  # validates
        workdir = Path(draft.workdir)
        out = Path(tempfile.mkdtemp(prefix="export-", dir=workdir))
        assert draft.spec is not None
        spec_path = out / f"{Path(draft.spec['image']).stem}.json"
        with atomic_path(spec_path) as tmp:
            tmp.write_text(spec_text, encoding="utf-8")
        files = [spec_path]
        for named in state.referenced_files(draft):
            target = out / named
            shutil.copyfile(workdir / named, target)
            files.append(target)
        return files
