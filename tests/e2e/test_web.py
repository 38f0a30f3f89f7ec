"""The browser workspace (web/), from pytest so that ``make test`` runs it and counts it.

Two parts:

- The Vitest component suite (happy-dom): run once, its JSON report read back, one pytest test per
  test file, so a failing component test fails here with its name and message.
- The end-to-end run: the five services and the gateway as real processes on loopback, the gateway's
  HTTP facade serving the built workspace, and ``web/e2e/workspace.e2e.mjs`` driving headless Chromium
  (WebGL on SwiftShader) through a bad upload, a drag-and-drop upload, live progress, the splat on
  screen, an orbit, "Enhance this view", the new version's metrics, the before/after comparison and a
  .ply download. Its screenshots land in ``out/test-artifacts/web/``. The tests below then check what
  the browser showed against the project's own rasterizer: the initial view must match a render of
  version 1 from the pipeline's default camera (upright: a flipped render must match far worse), and
  the view the user enhanced must match a render from the camera that version 2 records (so the
  camera the workspace sends is the view it showed).

``make web`` (npm ci + vite build, skipped when nothing changed) is run first; Chromium comes from
``make chromium`` (``CHROMIUM`` overrides its path).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glimpse3d.core.cameras import Camera, intrinsics_from_fov, look_at
from glimpse3d.core.formats.ply import read_ply
from glimpse3d.core.splat import Splat

REPO_ROOT = Path(__file__).resolve().parents[2]
WEB = REPO_ROOT / "web"
ARTIFACTS = REPO_ROOT / "out" / "test-artifacts" / "web"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# The viewer's clear colour (0x1b1d22, web/src/viewer/SplatViewer.js), as the reference renders' background.
VIEWER_BACKGROUND = (0x1B / 255, 0x1D / 255, 0x22 / 255)
# Mean absolute difference (0..255) between the browser's frame and the project's render of the same
# view. Spark and the project's rasterizer differ a little at silhouettes and in how far they cut a
# Gaussian off; measured about 2 for the same view and 10..16 for a flipped or mirrored one.
SAME_VIEW_MAE = 6.0
E2E_TIMEOUT_S = 420


def _run(cmd: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def web_dist() -> Path:
    """web/dist, built by ``make web`` (npm ci + vite build when sources changed)."""
    for tool in ("node", "npm", "make"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed for the web workspace tests (Node.js 20.19+ with npm)")
    done = _run(["make", "-s", "web"], REPO_ROOT, timeout=300)
    assert done.returncode == 0, f"make web failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    dist = WEB / "dist"
    assert (dist / "index.html").is_file(), "make web did not produce web/dist/index.html"
    return dist


# ---- Vitest ---------------------------------------------------------------------------------------

VITEST_FILES = sorted(p.name for p in (WEB / "tests").glob("*.test.*"))


@pytest.fixture(scope="module")
def vitest_report(web_dist: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    report = tmp_path_factory.mktemp("vitest") / "report.json"
    done = _run([str(WEB / "node_modules" / ".bin" / "vitest"), "run", "--reporter=json",
                 f"--outputFile={report}"], WEB, timeout=240)
    if not report.is_file():
        pytest.fail(f"vitest wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(report.read_text())


def test_vitest_found_the_suite() -> None:
    assert len(VITEST_FILES) >= 6, VITEST_FILES


@pytest.mark.parametrize("test_file", VITEST_FILES)
def test_vitest_file(vitest_report: dict, test_file: str) -> None:
    results = [r for r in vitest_report["testResults"] if Path(r["name"]).name == test_file]
    assert results, f"vitest did not run {test_file}"
    assertions = results[0]["assertionResults"]
    failed = [f"{a['fullName']}: {' '.join(a.get('failureMessages') or [])[:1500]}"
              for a in assertions if a["status"] != "passed"]
    assert not failed, "\n\n".join(failed)
    assert results[0]["status"] == "passed", results[0].get("message", "")
    assert len(assertions) >= 3, f"{test_file} ran only {len(assertions)} tests"


# ---- end to end -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web_stack(web_dist: Path, tmp_path_factory: pytest.TempPathFactory):
    """The services and the gateway, the facade on a free port serving web/dist."""
    from glimpse3d.gateway.stack import start_stack

    state = tmp_path_factory.mktemp("web-stack")
    with start_stack(state, timeout_s=180.0, env={"GLIMPSE3D_WEB_DIR": str(web_dist)}) as running:
        assert running.http_url is not None, "the gateway announced no HTTP port"
        yield running


@pytest.fixture(scope="module")
def e2e(web_stack) -> dict:
    """Runs the browser end to end once; the result.json it wrote, plus the facade's URL."""
    if not CHROMIUM.exists():
        pytest.fail(f"Chromium is needed at {CHROMIUM} for the browser test: run `make chromium` (or set CHROMIUM)")
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    cmd = ["node", "e2e/workspace.e2e.mjs", "--url", web_stack.http_url, "--photo",
           str(REPO_ROOT / "assets" / "sample.png"), "--out", str(ARTIFACTS)]
    done = subprocess.run(cmd, cwd=WEB, capture_output=True, text=True, timeout=E2E_TIMEOUT_S, check=False,
                          env={**os.environ, "CHROMIUM": str(CHROMIUM)})
    (ARTIFACTS / "e2e.log").write_text(done.stdout + done.stderr)
    gateway_log = web_stack.state_dir / "gateway.log"
    assert done.returncode == 0, (
        f"the browser run failed (screenshots and log in {ARTIFACTS}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}\n"
        f"gateway log tail:\n{gateway_log.read_text(errors='replace')[-2000:] if gateway_log.exists() else ''}"
    )
    result = json.loads((ARTIFACTS / "result.json").read_text())
    result["http_url"] = web_stack.http_url
    return result


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def _splat(e2e: dict, number: int) -> Splat:
    data = _get(f"{e2e['http_url']}/api/v1/jobs/{e2e['job_id']}/versions/{number}/download?format=ply")
    return read_ply(io.BytesIO(data))


def _versions(e2e: dict) -> list[dict]:
    return json.loads(_get(f"{e2e['http_url']}/api/v1/jobs/{e2e['job_id']}/versions"))["versions"]


def _screenshot(name: str, width: int, height: int) -> np.ndarray:
    with Image.open(ARTIFACTS / name) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.Resampling.BOX))


def _render(splat: Splat, camera: Camera) -> np.ndarray:
    from glimpse3d.core.synthetic import render_image

    return render_image(splat, camera, VIEWER_BACKGROUND)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def test_workspace_end_to_end(e2e: dict) -> None:
    """The browser run passed its own checks; restate the main ones from what it recorded."""
    assert e2e["client_rejection"] == "notes.txt (text/plain) is not a PNG, JPEG or WebP photo."
    refused = e2e["server_rejection"]
    assert 400 <= refused["status"] < 500 and refused["shown"] == refused["error"]["message"] != ""
    assert any(step["stage"] == "reconstruct" for step in e2e["timeline"])
    assert any(seen != "Idle" for seen in e2e["progress_seen"]), "no running stage was shown live"
    assert e2e["initial_stats"]["inner_object_fraction"] > 0.95
    assert e2e["initial_stats"]["border_object_fraction"] < 0.01
    assert len(e2e["versions_listed"]) == 2
    assert e2e["metrics_v2"]["accepted_fraction"].endswith("%")
    for name in ("initial-view.png", "enhanced-view.png", "workspace.png", "compare.png"):
        assert (ARTIFACTS / name).stat().st_size > 1000, name


def test_going_on_from_version_1_adds_a_copy_of_it(e2e: dict) -> None:
    assert e2e["versions_after_restore"][0].startswith("v3 · restored from v1")
    versions = _versions(e2e)
    assert (versions[2]["kind"], versions[2]["parent"], versions[2]["metrics"]["restored_from"]) == ("restore", 1, 1.0)
    assert _splat(e2e, 3).means.tobytes() == _splat(e2e, 1).means.tobytes()


def test_downloaded_ply_is_the_latest_version(e2e: dict) -> None:
    data = Path(e2e["ply"]["path"]).read_bytes()
    assert data[:4] == b"ply\n"
    splat = read_ply(io.BytesIO(data))
    assert e2e["ply"]["suggested"].endswith("-v2.ply")
    assert splat.means.shape[0] == _splat(e2e, 2).means.shape[0] > 1000


def test_initial_view_shows_the_object_upright(e2e: dict) -> None:
    """The first frame equals the project's render of version 1 from the default camera (+z, 2.7, 40
    degrees, +y up); the same render upside down, or from a camera with y down, matches far worse."""
    stats = e2e["initial_stats"]
    width, height = stats["width"] // 4, stats["height"] // 4
    fx, fy, cx, cy = intrinsics_from_fov(40.0, width, height)
    eye, origin = np.array([0.0, 0.0, 2.7]), np.zeros(3)
    splat = _splat(e2e, 1)
    upright = _render(splat, Camera(fx, fy, cx, cy, width, height, look_at(eye, origin, np.array([0.0, 1.0, 0.0]))))
    y_down = _render(splat, Camera(fx, fy, cx, cy, width, height, look_at(eye, origin, np.array([0.0, -1.0, 0.0]))))
    shot = _screenshot("initial-view.png", width, height)
    same, flipped, rotated = _mae(shot, upright), _mae(shot, upright[::-1]), _mae(shot, y_down)
    assert same < SAME_VIEW_MAE, f"browser vs project render: {same:.2f}"
    assert same < 0.4 * min(flipped, rotated), f"upright {same:.2f}, flipped {flipped:.2f}, y down {rotated:.2f}"


def test_enhanced_view_is_the_view_on_screen(e2e: dict) -> None:
    """Version 2 records the camera the pipeline rendered; version 1 seen from it is what the browser
    showed when Enhance was clicked (and not its mirror image)."""
    sent = e2e["enhance_body"]["camera"]
    assert np.linalg.norm(np.subtract(sent["position"], [0.0, 0.0, 2.7])) > 0.5, "the orbit moved the camera"
    css_w, css_h = e2e["canvas_css_size"]
    assert max(sent["width"], sent["height"]) <= 512
    assert abs(sent["width"] / sent["height"] - css_w / css_h) < 0.01
    recorded = _versions(e2e)[1]["camera"]
    np.testing.assert_allclose(recorded["position"], sent["position"], atol=1e-6)
    assert (recorded["width"], recorded["height"]) == (sent["width"], sent["height"])
    width, height = recorded["width"], recorded["height"]
    fx, fy, cx, cy = intrinsics_from_fov(recorded["fov_y_deg"], width, height)
    camera = Camera(fx, fy, cx, cy, width, height, np.asarray(recorded["world_to_camera"], np.float64).reshape(4, 4))
    reference = _render(_splat(e2e, 1), camera)
    shot = _screenshot("enhanced-view.png", width, height)
    same, mirrored = _mae(shot, reference), _mae(shot, reference[:, ::-1])
    assert same < SAME_VIEW_MAE, f"browser vs project render from version 2's camera: {same:.2f}"
    assert same < 0.4 * mirrored, f"same view {same:.2f}, mirrored {mirrored:.2f}"
