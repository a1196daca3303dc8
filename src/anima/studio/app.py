"""The studio's page (Gradio Blocks): events wired to `anima.studio.state` and friends.

Each browser session keeps one `Draft` in a ``gr.State``; every handler takes it, calls a state
function (which validates and returns a new draft, or raises `InputError`), and redraws the page
from the new draft. There is no other state: the page is a function of the draft, so controls
work in any order. A handler that fails shows the message in the page (a toast and the status
line) and changes nothing; unexpected errors are logged on the server with their traceback and
shown as one line.

Layout, after LeviTor's interface (LeviTor, "3D Trajectory Oriented Image-to-Video Synthesis",
Fig. 4): a photo upload; the photo with masks and
paths (click it to select objects and to draw their paths) next to its depth map; the depth
slider of the path point being edited, showing the depth already under that point, and that
point's rotation (pitch, yaw, roll), with a button turning the object evenly over its path (a
turn like I2V3D's Fig. 1); camera presets; clip settings; preview (coarse, with LeviTor's
control points), generation with any method whose weights are present, and the downloads
(spec, photo, video).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import gradio as gr

from anima.errors import InputError
from anima.scene import Scene
from anima.studio import draw, runs, state
from anima.studio.methods import method_status, method_statuses, ready_variant
from anima.studio.perception import Perception, distance_range
from anima.studio.state import ROTATION_AXES, Draft
from anima.studio.workspace import Workspace
from anima.weights import Weights

logger = logging.getLogger(__name__)

SELECT, REFINE, POLYGON, PATH = "Select object", "Add to selection", "Polygon corner", "Path point"
BOX, QUERY = "Box corners", "Query point (AnyI2V)"
MODES = (SELECT, REFINE, POLYGON, BOX, PATH, QUERY)
DEPTH_MIN = 0.05
ROTATION_HELP = (
    "degrees: pitch tips its top towards you, yaw turns its right side towards you (about the "
    "vertical), roll turns it clockwise; it turns smoothly between path points"
)
NO_ROTATION = "**Rotation**: click a path point first (mode 'Path point')"
EDIT_QUEUE = "edit"  # edits run one at a time, in the order they were made

HELP = """\
**1.** Upload a photo. **2.** With *Select object*, click an object (its mask appears; *Add to
selection* grows it), or outline it exactly: click its corners with *Polygon corner*, then *Close
polygon*, or box it: two opposite corners with *Box corners*. **3.** With *Path point*, click
where it goes: the first point on the object, then along its path. Each point starts at the
depth already under it; move the *Depth* slider to bring it nearer or send it farther.
*Rotation* turns the object at the selected point (degrees; it turns smoothly between points);
*Turn over the path* turns it evenly from the first point to the last (180 about yaw: it shows
its back). For AnyI2V, *Query point* clicks say which pixels of the box are the object.
**4.** *Preview*, then *Generate* and download the video and the spec (`anima animate SPEC.json`
renders it again).
"""


def user_message(exc: InputError) -> str:
    """An input error as the page says it: the studio's own messages need no location."""
    return exc.what if exc.where in (None, state.WHERE) else str(exc)


class StudioApp:
    """Builds the page for one studio server (its workspace, perception cache and weights)."""

    def __init__(
        self,
        workspace: Workspace,
        weights: Weights | None = None,
        device: str = "cpu",
    ) -> None:
        self.workspace = workspace
        self.weights = weights or Weights()
        self.device = device
        self.perception = Perception(self.weights)

    # ------------------------------------------------------------------- views

    def _scene(self, draft: Draft) -> Scene:
        return self.perception.scene(state.to_spec(draft), Path(draft.workdir) / "cache")

    def view(self, draft: Draft | None) -> dict[str, Any]:
        """Every displayed value, from the draft alone."""
        c = self.components
        if draft is None or not draft.has_image:
            return {
                c["canvas"]: None,
                c["depth"]: None,
                c["spec"]: "",
                c["objects"]: gr.Dropdown(choices=[], value=None),
                c["points"]: gr.Dropdown(choices=[], value=None),
                c["slider"]: gr.Slider(interactive=False, info="click a path point first"),
                **self._rotation_view(None),
                c["downloads"]: None,
            }
        scene = self._scene(draft)
        near, far = distance_range(scene)
        canvas = draw.canvas(
            scene.image,
            scene.instance,
            draft.objects,
            draft.active,
            draft.keyframe,
            draft.polygon,
            state.query_points(draft),
            draft.box_corner,
        )
        spec = state.to_spec(draft).model_dump(mode="json")
        preset, strength = state.camera_preset(draft)
        path = draft.path
        if draft.keyframe is not None and draft.keyframe < len(path):
            point = path[draft.keyframe]
            under = self.perception.depth_at(scene, point["x"], point["y"])
            slider = gr.Slider(
                minimum=min(DEPTH_MIN, point["depth"]),
                maximum=round(max(2 * far, 2 * point["depth"]), 2),
                value=point["depth"],
                interactive=True,
                label=f"Depth of path point {draft.keyframe + 1} of object {draft.active}",
                info=(
                    f"depth already under this point: {under:.3g} "
                    f"(this photo: {near:.3g} near to {far:.3g} far, {scene.depth_source})"
                ),
            )
        else:
            slider = gr.Slider(
                interactive=False,
                label="Depth of the path point",
                info="click a path point first (mode 'Path point')",
            )
        return {
            **self._rotation_view(draft),
            c["canvas"]: canvas,
            c["depth"]: draw.depth_colours(scene.distance),
            c["spec"]: state.to_json(draft),
            c["objects"]: gr.Dropdown(choices=state.object_choices(draft), value=draft.active),
            c["points"]: gr.Dropdown(choices=state.keyframe_choices(draft), value=draft.keyframe),
            c["slider"]: slider,
            c["camera"]: preset,
            c["strength"]: strength,
            c["frames"]: gr.Slider(value=spec["num_frames"], maximum=max(64, spec["num_frames"])),
            c["fps"]: spec["fps"],
            c["seed"]: spec["seed"],
            c["prompt"]: spec["prompt"],
            c["downloads"]: [str(p) for p in self.workspace.export(draft)],
            c["method"]: spec["method"] or "coarse",
            c["generate"]: gr.Button(
                interactive=method_status(spec["method"] or "coarse", self.weights).ready
            ),
        }

    def _rotation_view(self, draft: Draft | None) -> dict[str, Any]:
        """The rotation fields: the selected path point's angles, or disabled with a line
        saying what to click."""
        c = self.components
        path = draft.path if draft is not None else []
        if draft is None or draft.keyframe is None or draft.keyframe >= len(path):
            fields = {c[axis]: gr.Number(value=0, interactive=False) for axis in ROTATION_AXES}
            return {**fields, c["rotation_info"]: NO_ROTATION}
        angles = state.rotation_of(path[draft.keyframe])
        fields = {
            c[axis]: gr.Number(value=angle, interactive=True)
            for axis, angle in zip(ROTATION_AXES, angles, strict=True)
        }
        info = (
            f"**Rotation of path point {draft.keyframe + 1} of object {draft.active}**, "
            + ROTATION_HELP
        )
        return {**fields, c["rotation_info"]: info}

    def _status(self, message: str, level: str = "info") -> dict[str, Any]:
        icon = {"info": "", "warning": "⚠️ ", "error": "⛔ "}[level]
        if level != "info":
            gr.Warning(message)
        return {self.components["status"]: f"{icon}{message}"}

    def _edit(self, fn: Callable[..., tuple[Draft, str]]) -> Callable[..., dict[str, Any]]:
        """Wrap an edit ``fn(draft, *inputs) -> (new draft, message)``: the page is redrawn
        from the new draft; an error leaves the draft alone and shows its message."""

        @functools.wraps(fn)
        def handler(*args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                draft, message = fn(*args, **kwargs)
                out = {self.components["draft"]: draft, **self.view(draft)}
                warning = message.startswith("!")
                return out | self._status(message.lstrip("!"), "warning" if warning else "info")
            except InputError as exc:
                return self._status(user_message(exc), "warning")
            except Exception:  # a bug: log it, never show a traceback in the page
                logger.exception("studio handler %s failed", fn.__name__)
                return self._status(
                    "internal error (a bug; the server log has the details)", "error"
                )

        return handler

    # ------------------------------------------------------------------- edits

    def on_photo(self, draft: Draft | None, upload: str | None) -> tuple[Draft, str]:
        if not upload:
            raise InputError("no file arrived; try again", "photo")
        old = self.workspace.draft(draft)
        new = self.workspace.add_image(old, upload)
        height, width = new.size or (0, 0)
        message = f"photo {new.spec['image']} ({width}x{height})"
        if (new.spec or {}).get("size"):
            message += ", worked on at this reduced size (the spec says so)"
        if old.objects:
            message += f"; the {len(old.objects)} object(s) of the previous photo were cleared"
            message += " (Undo brings them back)"
        message += ": now click an object with 'Select object'"
        return new, message

    def on_sample(self, draft: Draft | None) -> tuple[Draft, str]:
        sample = resources.files("anima") / "assets" / "demo" / "coffee.png"
        with resources.as_file(sample) as path:
            return self.on_photo(draft, str(path))

    def on_spec(self, draft: Draft | None, uploads: list[str] | None) -> tuple[Draft, str]:
        if not uploads:
            raise InputError("no file arrived; try again", "spec")
        files = uploads if isinstance(uploads, list) else [uploads]
        new = self.workspace.load_spec(self.workspace.draft(draft), files)
        self._scene(new)  # masks and depth now: a bad selection fails the load, not later
        return new, (
            f"continuing {new.spec['image']} with {len(new.objects)} object(s); "
            "edit it, preview or generate"
        )

    def on_click(self, draft: Draft | None, mode: str, evt: gr.SelectData) -> tuple[Draft, str]:
        draft = self.workspace.draft(draft)
        if not draft.has_image:
            raise InputError("upload a photo first", "studio")
        x, y = (float(v) for v in evt.index[:2])
        scene = self._scene(draft)
        hit = self.perception.object_at(scene, x, y)
        if mode == SELECT:
            if hit is not None:
                return state.activate(draft, hit), (
                    f"object {hit} selected: click its path with 'Path point'"
                )
            new = state.add_object(draft, x, y)
            self._scene(new)  # its mask now: a failed selection changes nothing
            return new, (
                f"object {new.active} selected at ({x:g}, {y:g}); 'Add to selection' grows "
                "it, 'Path point' draws its path (the first point on the object)"
            )
        if mode == REFINE:
            new = state.refine_object(draft, x, y)
            self._scene(new)
            clicks = len((new.active_object or {}).get("points", []))
            return new, f"object {new.active}: selection now from {clicks} clicks"
        if mode == POLYGON:
            new = state.add_polygon_corner(draft, x, y)
            count = len(new.polygon)
            more = (
                "click its other corners"
                if count < 3
                else "click more corners, or 'Close polygon' to select what it encloses"
            )
            return new, f"polygon corner {count} at ({x:g}, {y:g}): {more}"
        if mode == BOX:
            first = draft.box_corner is None
            new = state.add_box_corner(draft, x, y)
            if first:
                return new, f"box corner at ({x:g}, {y:g}): click the opposite corner"
            self._scene(new)  # its mask now: a box selecting nothing changes nothing
            return new, (
                f"object {new.active} selected by a box; 'Path point' draws its path (the "
                "first point on the object)"
            )
        if mode == QUERY:
            new = state.add_query_point(draft, x, y)
            count = len(state.query_points(new)[str(new.active)])
            return new, f"object {new.active}: {count} query point(s)"
        if mode == PATH:
            depth = self.perception.depth_at(scene, x, y)
            first = not draft.path
            new = state.add_path_point(draft, x, y, depth)
            message = (
                f"path point {new.keyframe + 1} of object {new.active} at ({x:g}, {y:g}), "
                f"depth {depth:.3g} (the depth already there); the slider changes it"
            )
            if first and hit != new.active:
                message = (
                    f"!{message}. Note: the first path point is not on object {new.active}; "
                    "the object moves by the path's displacement from it"
                )
            return new, message
        raise InputError(f"unknown click mode '{mode}'", "mode")

    def on_close_polygon(self, draft: Draft | None) -> tuple[Draft, str]:
        old = self.workspace.draft(draft)
        new = state.close_polygon(old)
        self._scene(new)  # its mask now: a polygon selecting nothing changes nothing
        return new, (
            f"object {new.active} selected by a polygon of {len(old.polygon)} corners; "
            "'Path point' draws its path (the first point on the object)"
        )

    def on_clear_query(self, draft: Draft | None) -> tuple[Draft, str]:
        new = state.clear_query_points(self.workspace.draft(draft))
        return new, f"object {new.active}: query points cleared (its selection is used)"

    def on_cancel_polygon(self, draft: Draft | None) -> tuple[Draft, str]:
        new = state.cancel_polygon(self.workspace.draft(draft))
        return new, "polygon cancelled"

    def on_depth(self, draft: Draft | None, depth: float) -> tuple[Draft, str]:
        new = state.set_depth(self.workspace.draft(draft), depth)
        return new, f"path point {new.keyframe + 1} of object {new.active}: depth {depth:g}"

    def on_rotation(
        self, draft: Draft | None, pitch: float | None, yaw: float | None, roll: float | None
    ) -> tuple[Draft, str]:
        new = state.set_rotation(self.workspace.draft(draft), pitch, yaw, roll)
        turned = state.rotation_text(state.rotation_of(new.path[new.keyframe])) or "none"
        return new, f"path point {new.keyframe + 1} of object {new.active}: rotation {turned}"

    def on_turn(self, draft: Draft | None, degrees: float | None, axis: str) -> tuple[Draft, str]:
        if degrees is None:
            raise InputError("type the degrees to turn by", state.WHERE)
        new = state.turn_object(self.workspace.draft(draft), degrees, axis)
        return new, (
            f"object {new.active} turns {degrees:g}° about {axis} over its "
            f"{len(new.path)} path points"
        )

    def on_pick_object(self, draft: Draft | None, object_id: int | None) -> tuple[Draft, str]:
        if object_id is None:
            raise InputError("pick an object", "objects")
        new = state.activate(self.workspace.draft(draft), int(object_id))
        return new, f"object {new.active} selected"

    def on_pick_point(self, draft: Draft | None, index: int | None) -> tuple[Draft, str]:
        if index is None:
            raise InputError("pick a path point", "path points")
        new = state.select_keyframe(self.workspace.draft(draft), int(index))
        return new, f"path point {new.keyframe + 1} of object {new.active}: set its depth"

    def on_camera(self, draft: Draft | None, preset: str, strength: float) -> tuple[Draft, str]:
        if preset == "custom":
            raise InputError(
                "'custom' is the loaded spec's camera; pick a preset to replace it", "camera"
            )
        new = state.set_camera(self.workspace.draft(draft), preset, strength)
        return new, f"camera: {preset}" + ("" if preset == "static" else f" x{strength:g}")

    def on_settings(
        self, draft: Draft | None, frames: float, fps: float, seed: float, prompt: str
    ) -> tuple[Draft, str]:
        new = state.set_settings(self.workspace.draft(draft), frames, fps, seed, prompt)
        spec = new.spec or {}
        return new, f"{spec['num_frames']} frames at {spec['fps']:g} fps, seed {spec['seed']}"

    def on_undo(self, draft: Draft | None) -> tuple[Draft, str]:
        return state.undo(self.workspace.draft(draft)), "undone"

    def on_clear_path(self, draft: Draft | None) -> tuple[Draft, str]:
        new = state.clear_path(self.workspace.draft(draft))
        return new, f"object {new.active}: path cleared"

    def on_remove_point(self, draft: Draft | None) -> tuple[Draft, str]:
        new = state.remove_path_point(self.workspace.draft(draft))
        return new, f"object {new.active}: path point removed"

    def on_remove_object(self, draft: Draft | None) -> tuple[Draft, str]:
        old = self.workspace.draft(draft)
        new = state.remove_object(old)
        return new, f"object {old.active} removed"

    def on_clear_all(self, draft: Draft | None) -> tuple[Draft, str]:
        return state.clear_objects(self.workspace.draft(draft)), "objects and camera cleared"

    # ------------------------------------------------------------------- methods and runs

    def method_table(self) -> str:
        rows = ["| method | status | |", "| --- | --- | --- |"]
        for s in method_statuses(self.weights):
            status = "ready" if s.ready else f"unavailable: {s.reason}"
            rows.append(f"| `{s.name}` | {status} | {s.summary} |")
        return "\n".join(rows)

    def method_choices(self) -> list[tuple[str, str]]:
        return [
            (s.name if s.ready else f"{s.name} (unavailable: {s.reason})", s.name)
            for s in method_statuses(self.weights)
        ]

    def on_method(self, draft: Draft | None, name: str) -> tuple[Draft, str]:
        options, variant = ready_variant(name, self.weights)
        new = state.set_method(self.workspace.draft(draft), name, options)
        status = method_status(name, self.weights)
        if not status.ready:
            return new, (
                f"!{name} cannot run here: {status.reason}. The downloaded spec names it, to "
                "run where its weights are"
            )
        return new, f"method {name}: ready" + (f" ({variant})" if variant else "")

    def _run(self, job: Callable[..., runs.Video], draft: Draft | None, progress: gr.Progress):
        stages: list[str] = []

        def on_stage(text: str) -> None:
            stages.append(text)
            progress(min(0.95, 0.15 * len(stages)), desc=text)

        progress(0.0, desc="starting")
        draft = self.workspace.draft(draft)
        video = job(draft, on_stage)
        files = [str(p) for p in self.workspace.export(draft)] + [str(video.path)]
        return draft, video, files

    def on_preview(self, draft: Draft | None, progress=gr.Progress()) -> dict[str, Any]:  # noqa: B008
        c = self.components
        try:
            draft, video, files = self._run(
                lambda d, cb: runs.preview(d, self.perception, cb), draft, progress
            )
        except InputError as exc:
            return self._status(user_message(exc), "warning")
        except Exception:
            logger.exception("studio preview failed")
            return self._status("internal error (a bug; the server log has the details)", "error")
        frames, height, width = video.frames.shape[0], *video.frames.shape[-2:]
        message = f"preview: {frames} frames, {width}x{height}, with LeviTor's control points"
        level = "info"
        if video.messages:
            message += "; " + "; ".join(video.messages)
            level = "warning"
        return {
            c["preview"]: str(video.shown),
            c["downloads"]: files,
            **self._status(message, level),
        }

    def on_generate(
        self,
        draft: Draft | None,
        name: str,
        progress=gr.Progress(),  # noqa: B008
    ) -> dict[str, Any]:
        c = self.components
        status = method_status(name, self.weights)
        if not status.ready:
            return self._status(f"{name} cannot run here: {status.reason}", "warning")
        try:
            draft, video, files = self._run(
                lambda d, cb: runs.generate(
                    d, name, self.perception, self.weights, self.device, cb
                ),
                draft,
                progress,
            )
        except InputError as exc:
            return self._status(user_message(exc), "warning")
        except Exception:
            logger.exception("studio generation failed")
            return self._status("internal error (a bug; the server log has the details)", "error")
        message = f"{name}: {video.frames.shape[0]} frames written to {video.path.name}"
        if video.messages:
            message += "; " + "; ".join(video.messages)
        return {c["result"]: str(video.path), c["downloads"]: files, **self._status(message)}

    def session_closer(self) -> Callable[[Draft | None], None]:
        """What runs when a session ends (its page closed): delete its folder. A plain
        function, not a bound method: Gradio deep-copies the page's config, which holds it."""
        workspace = self.workspace

        def close_session(draft: Draft | None) -> None:
            if isinstance(draft, Draft):
                workspace.remove_session(draft.workdir)

        return close_session

    # ------------------------------------------------------------------- layout

    def build(self) -> gr.Blocks:
        """The page (`gr.Blocks`)."""
        c: dict[str, Any] = {}
        self.components = c
        with gr.Blocks(
            title="anima studio", analytics_enabled=False, delete_cache=(3600, 3600)
        ) as demo:
            c["draft"] = gr.State(None, delete_callback=self.session_closer())
            gr.Markdown("## anima studio: draw 3D trajectories\n" + HELP)
            c["status"] = gr.Markdown("Upload a photo to begin.", elem_id="status")
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    with gr.Row():
                        c["upload"] = gr.UploadButton(
                            "Upload a photo",
                            file_types=["image"],
                            variant="primary",
                            elem_id="upload",
                        )
                        c["sample"] = gr.Button("Sample photo", elem_id="sample")
                    c["mode"] = gr.Radio(
                        list(MODES), value=SELECT, label="A click on the photo", elem_id="mode"
                    )
                    with gr.Row():
                        c["close_polygon"] = gr.Button(
                            "Close polygon", size="sm", elem_id="close-polygon"
                        )
                        c["cancel_polygon"] = gr.Button(
                            "Cancel polygon", size="sm", elem_id="cancel-polygon"
                        )
                        c["clear_query"] = gr.Button(
                            "Clear query points", size="sm", elem_id="clear-query"
                        )
                    c["objects"] = gr.Dropdown(
                        choices=[], label="Object", elem_id="objects", interactive=True
                    )
                    c["points"] = gr.Dropdown(
                        choices=[], label="Path point", elem_id="points", interactive=True
                    )
                    c["slider"] = gr.Slider(
                        DEPTH_MIN,
                        100,
                        value=10,
                        step=0.01,
                        label="Depth of the path point",
                        info="click a path point first",
                        interactive=False,
                        elem_id="depth-slider",
                    )
                    c["rotation_info"] = gr.Markdown(NO_ROTATION, elem_id="rotation-info")
                    with gr.Row():
                        for axis in ROTATION_AXES:
                            c[axis] = gr.Number(
                                0,
                                label=f"{axis.capitalize()} (°)",
                                interactive=False,
                                elem_id=axis,
                                min_width=80,
                            )
                    with gr.Row():
                        c["turn_degrees"] = gr.Number(
                            180, label="Turn (°)", elem_id="turn-degrees", min_width=80
                        )
                        c["turn_axis"] = gr.Dropdown(
                            list(ROTATION_AXES),
                            value="yaw",
                            label="About",
                            elem_id="turn-axis",
                            min_width=80,
                        )
                        c["turn"] = gr.Button(
                            "Turn over the path", size="sm", elem_id="turn", min_width=80
                        )
                    with gr.Row():
                        c["undo"] = gr.Button("Undo", size="sm", elem_id="undo")
                        c["remove_point"] = gr.Button("Remove point", size="sm")
                        c["clear_path"] = gr.Button("Clear path", size="sm")
                    with gr.Row():
                        c["remove_object"] = gr.Button("Remove object", size="sm")
                        c["clear_all"] = gr.Button("Clear all", size="sm")
                    with gr.Row():
                        c["camera"] = gr.Dropdown(
                            [*state.CAMERA_PRESETS, "custom"],
                            value="static",
                            label="Camera",
                            elem_id="camera",
                            scale=2,
                        )
                        c["strength"] = gr.Slider(
                            *state.STRENGTH_RANGE, value=1.0, step=0.05, label="Strength", scale=1
                        )
                    with gr.Accordion("Clip", open=False):
                        c["frames"] = gr.Slider(2, 64, value=16, step=1, label="Frames")
                        c["fps"] = gr.Number(8, label="Frames per second", minimum=0.1)
                        c["seed"] = gr.Number(0, label="Seed", precision=0, minimum=0)
                        c["prompt"] = gr.Textbox("", label="Prompt (methods that take one)")
                    with gr.Accordion("Continue from a spec", open=False):
                        gr.Markdown("Upload a downloaded spec (.json) together with its photo.")
                        c["load"] = gr.UploadButton(
                            "Upload spec + photo",
                            file_types=[".json", "image"],
                            file_count="multiple",
                            elem_id="load-spec",
                        )
                with gr.Column(scale=2):
                    with gr.Row():
                        c["canvas"] = gr.Image(
                            label="Photo: click to select objects and draw their paths",
                            interactive=False,
                            format="png",
                            elem_id="canvas",
                            buttons=[],
                        )
                        c["depth"] = gr.Image(
                            label="Depth (near: red, far: blue)",
                            interactive=False,
                            format="png",
                            elem_id="depth",
                            buttons=[],
                        )
                    with gr.Row():
                        c["preview_button"] = gr.Button(
                            "Preview", variant="primary", elem_id="preview"
                        )
                        c["method"] = gr.Dropdown(
                            self.method_choices(), value="coarse", label="Method", elem_id="method"
                        )
                        c["generate"] = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Row():
                        c["preview"] = gr.Video(
                            label="Preview (coarse render with LeviTor's control points)",
                            interactive=False,
                            elem_id="preview-video",
                            loop=True,
                            autoplay=True,
                        )
                        c["result"] = gr.Video(
                            label="Generated video", interactive=False, elem_id="result-video"
                        )
                    c["downloads"] = gr.File(
                        label="Downloads: spec, photo, video (save them in one folder)",
                        file_count="multiple",
                        interactive=False,
                        elem_id="downloads",
                    )
            with gr.Accordion("Methods", open=False):
                gr.Markdown(self.method_table(), elem_id="methods")
            with gr.Accordion("MotionSpec", open=False):
                c["spec"] = gr.Code("", language="json", interactive=False, elem_id="spec")
            self._wire(demo)
        return demo

    def _wire(self, demo: gr.Blocks) -> None:
        c = self.components
        view_keys = (
            "canvas depth spec objects points slider camera strength frames fps seed prompt "
            "downloads method generate rotation_info"
        ).split() + list(ROTATION_AXES)
        outputs = [c["draft"], c["status"], *(c[k] for k in view_keys)]
        queue = {"concurrency_id": EDIT_QUEUE, "concurrency_limit": 1, "trigger_mode": "multiple"}
        quiet = {"show_progress": "hidden", **queue}

        def edit(event, fn, inputs, **options):
            event(self._edit(fn), [c["draft"], *inputs], outputs, **(quiet | options))

        edit(c["upload"].upload, self.on_photo, [c["upload"]], show_progress="full")
        edit(c["sample"].click, self.on_sample, [], show_progress="full")
        edit(c["load"].upload, self.on_spec, [c["load"]], show_progress="full")
        edit(c["canvas"].select, self.on_click, [c["mode"]], show_progress="minimal")
        edit(c["slider"].release, self.on_depth, [c["slider"]])
        angles = [c[axis] for axis in ROTATION_AXES]
        for field in angles:
            edit(field.submit, self.on_rotation, angles)
            edit(field.blur, self.on_rotation, angles)
        edit(c["turn"].click, self.on_turn, [c["turn_degrees"], c["turn_axis"]])
        edit(c["objects"].input, self.on_pick_object, [c["objects"]])
        edit(c["points"].input, self.on_pick_point, [c["points"]])
        edit(c["camera"].input, self.on_camera, [c["camera"], c["strength"]])
        edit(c["strength"].release, self.on_camera, [c["camera"], c["strength"]])
        settings = [c["frames"], c["fps"], c["seed"], c["prompt"]]
        edit(c["frames"].release, self.on_settings, settings)
        for field in (c["fps"], c["seed"], c["prompt"]):
            edit(field.submit, self.on_settings, settings)
            edit(field.blur, self.on_settings, settings)
        edit(c["undo"].click, self.on_undo, [])
        edit(c["close_polygon"].click, self.on_close_polygon, [])
        edit(c["cancel_polygon"].click, self.on_cancel_polygon, [])
        edit(c["clear_query"].click, self.on_clear_query, [])
        edit(c["clear_path"].click, self.on_clear_path, [])
        edit(c["remove_point"].click, self.on_remove_point, [])
        edit(c["remove_object"].click, self.on_remove_object, [])
        edit(c["clear_all"].click, self.on_clear_all, [])
        edit(c["method"].input, self.on_method, [c["method"]])
        c["preview_button"].click(
            self.on_preview,
            [c["draft"]],
            [c["preview"], c["downloads"], c["status"]],
            concurrency_id="run",
            concurrency_limit=1,
        )
        c["generate"].click(
            self.on_generate,
            [c["draft"], c["method"]],
            [c["result"], c["downloads"], c["status"]],
            concurrency_id="run",
            concurrency_limit=1,
        )


def build_app(
    workspace: Workspace, weights: Weights | None = None, device: str = "cpu"
) -> gr.Blocks:
    """The studio's page on ``workspace`` (see `StudioApp`)."""
    return StudioApp(workspace, weights, device).build()
