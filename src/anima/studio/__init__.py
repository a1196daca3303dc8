"""anima studio: the interactive web app for drawing 3D trajectories (LeviTor, "3D Trajectory
Oriented Image-to-Video Synthesis", §3.3).

The whole state of a browser session is a MotionSpec being edited (`anima.studio.state`): every
control edits the spec, the preview renders it, the download writes it. The Gradio layer
(`anima.studio.app`) only wires page events to those functions; `anima.studio.server` starts it
(``anima studio``). Nothing here but `app` and `server` imports gradio, so the state logic is
usable and tested without it (``pip install 'anima[studio]'`` adds gradio).
"""

from __future__ import annotations
