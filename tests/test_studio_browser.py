"""The studio end to end in a real browser: Playwright drives headless Chromium (Debian's
``chromium`` package, installed here when missing; Playwright downloads no browser) against the
studio served in-process on a free local port.

A screenshot of the finished session is saved to the test's folder and, when set, to
``$ANIMA_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("gradio") is None:  # not imported here: the server imports it,
    pytest.skip("needs gradio (the studio extra)", allow_module_level=True)  # in its own temp
sync_api = pytest.importorskip("playwright.sync_api")

from anima.cli import main  # noqa: E402
from anima.io import read_video  # noqa: E402
from anima.spec import load_spec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAT = REPO / "examples" / "chelsea.png"  # 451x300, 240 kB
ROCKET = REPO / "examples" / "rocket.jpg"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UPLOAD_LIMIT_MB = 1.0
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas deprecations


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's Chromium, installed with apt-get when missing (as root; else skipped)."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or shutil.which("apt-get") is None:
            pytest.skip("needs /usr/bin/chromium (apt-get install chromium)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
            if done.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def studio():
    from anima.studio.server import serve

    server = serve(port=free_port(), max_upload_mb=UPLOAD_LIMIT_MB, quiet=True)
    yield server
    server.close()
    assert not server.root.exists()  # every temporary file is gone


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_FLAGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser, studio):
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.goto(studio.url)
    opened.wait_for_selector("#status")
    yield opened
    context.close()


def artifact_dirs(tmp_path: Path) -> list[Path]:
    dirs = [tmp_path]
    if os.environ.get("ANIMA_TEST_ARTIFACTS"):
        dirs.append(Path(os.environ["ANIMA_TEST_ARTIFACTS"]))
    return dirs


def save_screenshot(page, tmp_path: Path, name: str) -> list[Path]:
    paths = []
    for folder in artifact_dirs(tmp_path):
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name), full_page=True)
        paths.append(folder / name)
    return paths


# --------------------------------------------------------------------------- page helpers


def status(page) -> str:
    return page.locator("#status").inner_text()


def wait_status(page, text: str) -> str:
    """Wait until the status line says ``text``; returns the whole line."""
    page.wait_for_function("t => document.querySelector('#status').innerText.includes(t)", arg=text)
    return status(page)


def choose_files(page, button: str, *files: Path) -> None:
    with page.expect_file_chooser() as chooser:
        page.click(button)
    chooser.value.set_files([str(f) for f in files])


def click_photo(page, x: float, y: float) -> None:
    """Click the photo at pixel (x, y) of the working image (once it is shown)."""
    page.wait_for_function(
        "() => { const i = document.querySelector('#canvas img');"
        " return i !== null && i.complete && i.naturalWidth > 0; }"
    )
    image = page.locator("#canvas img").first
    box = image.bounding_box()
    width, height = image.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    image.click(position={"x": x * box["width"] / width, "y": y * box["height"] / height})


def set_mode(page, mode: str) -> None:
    page.locator("#mode label", has_text=mode).click()


def depth_box(page):
    return page.locator("#depth-slider input[type=number]")


def set_depth(page, depth: float) -> None:
    box = depth_box(page)
    box.fill(f"{depth:g}")
    box.blur()


def download(page, name: str, folder: Path) -> Path:
    with page.expect_download() as started:
        page.locator(f"#downloads a[download='{name}']").click()
    target = folder / name
    started.value.save_as(str(target))
    return target


def no_error_page(page) -> None:
    """The studio is still there and no traceback reached the page."""
    assert page.locator("#status").is_visible()
    content = page.content()
    assert "Traceback" not in content and "Internal Server Error" not in content


# --------------------------------------------------------------------------- tests


def test_draw_preview_download_and_the_cli_renders_the_same(page, browser, studio, tmp_path):
    choose_files(page, "#upload", CAT)
    assert "photo chelsea.png (451x300)" in wait_status(page, "photo chelsea.png")

    click_photo(page, 180, 130)  # the cat's left eye
    wait_status(page, "object 1 selected")

    set_mode(page, "Path point")
    depths = [None, 40.0, 15.0]  # the first point keeps the depth under it (on the object)
    for i, (x, y) in enumerate([(180, 130), (260, 110), (330, 80)]):
        click_photo(page, x, y)
        line = wait_status(page, f"path point {i + 1} of object 1")
        # the slider starts at the depth already under the point, and says so
        under = float(depth_box(page).input_value())
        assert f"depth {under:.3g} (the depth already there)" in line
        assert f"depth already under this point: {under:.3g}" in page.inner_text("#depth-slider")
        if depths[i] is not None:
            set_depth(page, depths[i])
            wait_status(page, f"path point {i + 1} of object 1: depth {depths[i]:g}")
        else:
            depths[i] = under

    page.click("#preview")
    assert "preview: 16 frames, 451x300" in wait_status(page, "preview:")
    page.wait_for_selector("#preview-video video")
    no_error_page(page)
    shots = save_screenshot(page, tmp_path, "studio.png")
    assert all(p.stat().st_size > 10_000 for p in shots)

    saved = tmp_path / "downloads"
    saved.mkdir()
    spec_path = download(page, "chelsea.json", saved)
    download(page, "chelsea.png", saved)
    coarse = download(page, "chelsea.coarse.mp4", saved)

    # the spec validates and says what was drawn
    assert main(["spec", "validate", str(spec_path)]) == 0
    spec = load_spec(spec_path)
    (obj,) = spec.objects
    assert obj.points is not None and len(obj.trajectory) == 3
    assert [k.depth for k in obj.trajectory] == pytest.approx(depths, rel=1e-3)
    assert spec.method == "coarse"

    # the CLI renders the same coarse frames from it
    out = tmp_path / "cli.mp4"
    assert main(["animate", str(spec_path), "-o", str(out), "-q"]) == 0
    cli_frames, _ = read_video(out)
    studio_frames, _ = read_video(coarse)
    assert len(cli_frames) == 16
    assert np.array_equal(np.stack(cli_frames), np.stack(studio_frames))

    # a downloaded spec reloads into a new session, to continue
    context = browser.new_context(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
    again = context.new_page()
    again.set_default_timeout(TIMEOUT_MS)
    again.goto(studio.url)
    again.wait_for_selector("#status")
    again.get_by_text("Continue from a spec").click()
    choose_files(again, "#load-spec", spec_path, saved / "chelsea.png")
    assert "with 1 object(s)" in wait_status(again, "continuing chelsea.png")
    reloaded = tmp_path / "reloaded"
    reloaded.mkdir()
    assert json.loads(download(again, "chelsea.json", reloaded).read_text()) == json.loads(
        spec_path.read_text()
    )
    set_mode(again, "Path point")
    click_photo(again, 380, 60)
    wait_status(again, "path point 4 of object 1")
    context.close()


def test_clicks_in_odd_orders_give_messages(page, tmp_path):
    page.click("#preview")  # nothing uploaded yet
    wait_status(page, "upload a photo first")
    page.click("#undo")
    wait_status(page, "nothing to undo")

    choose_files(page, "#upload", CAT)
    wait_status(page, "photo chelsea.png")
    set_mode(page, "Path point")  # a path point before any object
    click_photo(page, 100, 100)
    wait_status(page, "select an object first")
    assert depth_box(page).is_disabled()  # no point yet: nothing for the slider to edit

    set_mode(page, "Select object")
    click_photo(page, 180, 130)
    wait_status(page, "object 1 selected")
    page.click("#preview")  # an object without a path
    assert "nothing moves yet" in wait_status(page, "preview:")

    choose_files(page, "#upload", ROCKET)  # a second photo
    line = wait_status(page, "photo rocket.jpg")
    assert "1 object(s) of the previous photo were cleared" in line
    page.click("#undo")
    wait_status(page, "undone")
    page.get_by_text("MotionSpec").click()
    page.wait_for_function("document.querySelector('#spec')?.innerText.includes('chelsea.png')")
    assert '"points"' in page.inner_text("#spec")
    no_error_page(page)
    save_screenshot(page, tmp_path, "studio-odd-orders.png")


def test_a_polygon_drawn_by_clicks_selects_exactly(page, tmp_path):
    choose_files(page, "#upload", CAT)
    wait_status(page, "photo chelsea.png")
    set_mode(page, "Polygon corner")
    corners = [(150, 90), (300, 80), (320, 200), (140, 220)]
    for i, (x, y) in enumerate(corners[:2]):
        click_photo(page, x, y)
        wait_status(page, f"polygon corner {i + 1} at")
    page.click("#close-polygon")  # two corners are not a polygon yet
    wait_status(page, "at least 3 corners: click 1 more")
    for i, (x, y) in enumerate(corners[2:], start=3):
        click_photo(page, x, y)
        wait_status(page, f"polygon corner {i} at")
    page.click("#close-polygon")
    wait_status(page, "object 1 selected by a polygon of 4 corners")
    page.get_by_text("MotionSpec").click()
    page.wait_for_function("document.querySelector('#spec')?.innerText.includes('polygon')")
    text = page.inner_text("#spec")  # line numbers, then the JSON
    (obj,) = json.loads(text[text.index("{") :])["objects"]
    assert len(obj["polygon"]) == 4
    for (x, y), (cx, cy) in zip(obj["polygon"], corners, strict=True):
        assert abs(x - cx) <= 2 and abs(y - cy) <= 2  # a click lands within a pixel or so
    page.click("#undo")  # reopens the outline: its corners, no object
    wait_status(page, "undone")
    page.wait_for_function("!document.querySelector('#spec')?.innerText.includes('polygon')")
    no_error_page(page)
    save_screenshot(page, tmp_path, "studio-polygon.png")


def test_an_oversized_upload_is_refused_with_a_message(page, studio, tmp_path):
    big = tmp_path / "big.png"
    noise = np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)
    from PIL import Image

    Image.fromarray(noise).save(big)
    assert big.stat().st_size > UPLOAD_LIMIT_MB * 1e6
    choose_files(page, "#upload", big)
    toast = page.get_by_text("exceed the maximum allowed size")
    toast.wait_for()
    assert status(page) == "Upload a photo to begin."  # nothing changed
    no_error_page(page)
    # the server refuses it too, whoever sends it
    import httpx

    with big.open("rb") as fh:
        answer = httpx.post(f"{studio.url}gradio_api/upload", files={"files": fh}, timeout=30)
    assert answer.status_code == 413


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on ``port`` (Linux's /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                if len(address) == 8:  # IPv4, little-endian bytes
                    found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
                else:
                    found.add("::" if int(address, 16) == 0 else address)
    return found


def test_the_server_binds_localhost_unless_told_otherwise(studio, monkeypatch):
    assert studio.host == "127.0.0.1"
    if os.path.exists("/proc/net/tcp"):  # bound to loopback alone: no other interface reaches it
        assert listening_addresses(studio.port) == {"127.0.0.1"}
    socket.create_connection(("127.0.0.1", studio.port), timeout=5).close()
    with pytest.raises(ConnectionRefusedError):  # another address of this machine
        socket.create_connection(("127.0.0.2", studio.port), timeout=5)

    from anima.studio import server as server_module

    other = server_module.serve(host="127.0.0.2", port=free_port(), quiet=True)
    try:
        if os.path.exists("/proc/net/tcp"):
            assert listening_addresses(other.port) == {"127.0.0.2"}
        socket.create_connection(("127.0.0.2", other.port), timeout=5).close()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", other.port), timeout=5)
    finally:
        other.close()

    # bad or busy ports are one-line input errors (exit 2), before anything starts
    assert main(["studio", "--port", "0"]) == 2
    assert main(["studio", "--port", str(studio.port)]) == 2

    # the CLI's defaults: localhost, no public share link
    calls = []

    class Started:
        url = "http://127.0.0.1:7999/"

        def serve_forever(self) -> None:
            calls.append("served")

    def fake_serve(*args, **kwargs):
        calls.append((args, kwargs))
        return Started()

    monkeypatch.setattr(server_module, "serve", fake_serve)
    assert main(["studio", "--port", "7999"]) == 0
    (args, kwargs), served = calls
    assert args[:2] == ("127.0.0.1", 7999) and kwargs["share"] is False and served == "served"


def test_methods_lacking_weights_are_shown_disabled_with_the_reason(page):
    page.get_by_text("Methods", exact=True).click()
    table = page.locator("#methods")
    table.wait_for()
    assert "unavailable: needs weights: svd/, levitor/" in table.inner_text()
    page.click("#sample")  # the packaged sample photo
    wait_status(page, "photo coffee.png")
    assert page.locator("#generate").is_enabled()  # coarse needs no weights
    page.locator("#method input").click()
    page.get_by_role("option", name="levitor (unavailable").click()
    assert "levitor cannot run here: needs weights" in wait_status(page, "cannot run here")
    page.wait_for_function("document.querySelector('#generate').disabled")
    no_error_page(page)


def test_a_box_and_query_points_for_anyi2v(page, tmp_path):
    choose_files(page, "#upload", CAT)
    wait_status(page, "photo chelsea.png")
    set_mode(page, "Box corners")
    click_photo(page, 300, 200)
    wait_status(page, "box corner at")
    click_photo(page, 120, 60)
    wait_status(page, "object 1 selected by a box")
    set_mode(page, "Query point (AnyI2V)")
    click_photo(page, 200, 120)
    wait_status(page, "choose that method first")  # coarse takes no query points
    page.locator("#method input").click()
    page.get_by_role("option", name="anyi2v (unavailable").click()
    wait_status(page, "anyi2v cannot run here")
    click_photo(page, 200, 120)
    wait_status(page, "object 1: 1 query point(s)")
    page.get_by_text("MotionSpec").click()
    page.wait_for_function("document.querySelector('#spec')?.innerText.includes('query_points')")
    text = page.inner_text("#spec")
    spec = json.loads(text[text.index("{") :])
    (obj,) = spec["objects"]
    assert all(abs(a - b) <= 2 for a, b in zip(obj["box"], (120, 60, 300, 200), strict=True))
    ((x, y),) = spec["options"]["query_points"]["1"]
    assert abs(x - 200) <= 2 and abs(y - 120) <= 2
    no_error_page(page)
    save_screenshot(page, tmp_path, "studio-anyi2v-box.png")


def test_a_turn_over_the_path_and_a_rotation_typed_in(page, tmp_path):
    choose_files(page, "#upload", CAT)
    wait_status(page, "photo chelsea.png")
    assert page.locator("#yaw input").is_disabled()  # no path point yet
    assert "click a path point first" in page.inner_text("#rotation-info")
    click_photo(page, 180, 130)
    wait_status(page, "object 1 selected")
    page.click("#turn")  # no path to turn along yet
    wait_status(page, "needs a path of two points or more")
    set_mode(page, "Path point")
    for i, (x, y) in enumerate([(180, 130), (300, 100)]):
        click_photo(page, x, y)
        wait_status(page, f"path point {i + 1} of object 1")
    page.click("#turn")  # 180 about yaw, the defaults
    wait_status(page, "object 1 turns 180° about yaw over its 2 path points")
    # the last point is selected: its fields show the turn
    page.wait_for_function("document.querySelector('#yaw input').value === '180'")
    assert "Rotation of path point 2 of object 1" in page.inner_text("#rotation-info")
    box = page.locator("#roll input")
    box.fill("800")  # out of range: a message, nothing changes
    box.blur()
    wait_status(page, "a roll angle must be -720..720 degrees, got 800")
    box.fill("-30")
    box.blur()
    wait_status(page, "path point 2 of object 1: rotation yaw 180°, roll -30°")
    page.get_by_text("MotionSpec").click()
    page.wait_for_function("document.querySelector('#spec')?.innerText.includes('-30')")
    # the code view renders only the lines in view: the whole spec is the downloaded one
    assert '"rotation": [' in page.inner_text("#spec")
    saved = download(page, "chelsea.json", tmp_path)
    (obj,) = json.loads(saved.read_text())["objects"]
    first, last = obj["trajectory"]
    assert "rotation" not in first and last["rotation"] == [0.0, 180.0, -30.0]
    page.click("#preview")  # the coarse render turns the object
    assert "preview: 16 frames, 451x300" in wait_status(page, "preview:")
    page.wait_for_selector("#preview-video video")
    no_error_page(page)
    shots = save_screenshot(page, tmp_path, "studio-rotation.png")
    assert all(p.stat().st_size > 10_000 for p in shots)
