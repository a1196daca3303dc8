"""Start the studio (``anima studio``): a local web server, nothing shared unless asked.

The server binds 127.0.0.1 unless told otherwise, refuses uploads above a size limit (Gradio's
``max_file_size``, checked again on the server side by the workspace), and keeps every temporary
file, Gradio's uploads included, under one folder (``anima-studio-*`` in the system's temporary
folder) that is deleted when the server stops or the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima.errors import InputError
from anima.weights import Weights

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 25.0
_GRADIO_ENV = {
    "GRADIO_ANALYTICS_ENABLED": "False",  # no calls home
    "GRADIO_SERVER_NAME": None,  # our --host decides, not the environment
}


@dataclass
class StudioServer:
    """A running studio: its address and the folder of its temporary files."""

    url: str
    host: str
    port: int
    root: Path
    _blocks: Any = field(repr=False, default=None)
    _saved_env: dict[str, str | None] = field(repr=False, default_factory=dict)
    _closed: bool = field(repr=False, default=False)

    def serve_forever(self) -> None:
        """Block until Ctrl+C or SIGTERM, then stop and clean up."""
        _exit_on_sigterm()
        try:
            self._blocks.block_thread()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the server and delete every file it wrote (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._blocks is not None:
                self._blocks.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            for key, value in self._saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def check_port_free(host: str, port: int) -> None:
    """An `InputError` now, rather than a traceback from the web server, if ``port`` is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})", "--port") from None


def serve(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    weights: Weights | None = None,
    device: str = "cpu",
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    share: bool = False,
    quiet: bool = False,
) -> StudioServer:
    """Start the studio on ``host:port`` in a background thread and return the running server
    (`StudioServer.serve_forever` blocks until Ctrl+C or SIGTERM; `StudioServer.close` stops
    it)."""
    if not 1 <= port <= 65535:
        raise InputError(f"must be in 1..65535, got {port}", "--port")
    if not max_upload_mb > 0:
        raise InputError(f"must be > 0, got {max_upload_mb}", "--max-upload-mb")
    check_port_free(host, port)
    from anima.studio.workspace import Workspace

    max_bytes = int(max_upload_mb * 1_000_000)
    workspace = Workspace(max_upload_bytes=max_bytes)
    saved = {key: os.environ.get(key) for key in (*_GRADIO_ENV, "GRADIO_TEMP_DIR")}
    server = StudioServer("", host, port, workspace.root, _saved_env=saved)
    atexit.register(server.close)
    try:
        # Gradio keeps uploads and served files in GRADIO_TEMP_DIR, read when it needs them:
        # inside our root, so that they go when we do.
        os.environ["GRADIO_TEMP_DIR"] = str(workspace.root / "gradio")
        for key, value in _GRADIO_ENV.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        from anima.studio.app import build_app

        blocks = build_app(workspace, weights, device)
        server._blocks = blocks
        blocks.queue(default_concurrency_limit=1)
        blocks.launch(
            server_name=host,
            server_port=port,
            share=share,
            inbrowser=False,
            prevent_thread_lock=True,
            show_error=False,
            quiet=quiet,
            max_file_size=max_bytes,
            ssr_mode=False,
            mcp_server=False,
            footer_links=[],
        )
        server.url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    except BaseException:
        server.close()
        raise
    return server


def _exit_on_sigterm() -> None:
    """Make SIGTERM (``kill``) end the server like Ctrl+C, cleaning up (the main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
