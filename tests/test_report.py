"""report.html: self-contained, rebuilt by `edgedistill report`, and its plots really render in a browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.results.html import POOL_COLOR, SELECTED_COLOR, build_report_html

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embedded_pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def test_report_is_self_contained_with_every_plot(compressed_run):
    text = (compressed_run.run_dir / "report.html").read_text()
    images = embedded_pngs(text)
    assert len(images) == 4 and all(png.startswith(PNG_SIGNATURE) for png in images)
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)
    headings = ("Budgets", "Deployment", "Batch sizes", "Latency", "Selection from the pool", "Selected pool images", "Learning curves")
    for heading in headings:
        assert f"<h2>{heading}" in text
    assert text.count('<tr class="pass">') == 3  # cpu: p99_ms, min_accuracy; board: p99_ms
    assert "<h2>Pool coverage</h2>" in text and text.count('<tr class="covered-') == 10  # a row per class


def test_report_command_rebuilds_it(compressed_run, tmp_path):
    run = compressed_run.copy(tmp_path)
    for name in ("report.html", "junit.xml", "summary.md"):
        (run / name).unlink()
    (run / "latency_samples.json").unlink()
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert str(run / "report.html") in result.output
    assert (run / "junit.xml").is_file() and (run / "summary.md").is_file()
    text = (run / "report.html").read_text()
    assert len(embedded_pngs(text)) == 3 and "no data in this run" in text


def test_report_without_selection_files(compressed_run, tmp_path):
    run = tmp_path / "bare"
    run.mkdir()
    report = json.loads((compressed_run.run_dir / "report.json").read_text())
    report.pop("selection")
    report["history"] = []
    (run / "report.json").write_text(json.dumps(report))
    text = build_report_html(run)
    assert text.count("no data in this run") == 4


def _colour_pixels(pixels: np.ndarray, hex_colour: str, tolerance: int = 8) -> int:
    rgb = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(pixels[..., :3].astype(int) - rgb).max(-1) <= tolerance).sum())


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs a headless Chromium to render the page (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(compressed_run, tmp_path):
    shot = tmp_path / "report.png"
    page = compressed_run.run_dir / "report.html"
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,3200",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert shot.is_file(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (3200, 1200)
    pixels = pixels[::2, ::2]
    non_white = (pixels.min(-1) < 235).mean()
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    distinct = len(np.unique(packed))
    assert non_white > 0.05 and distinct > 200, (non_white, distinct)
    # The plots, not just the text: the latency and selection bars are drawn in these fills.
    assert _colour_pixels(pixels, SELECTED_COLOR) > 1500
    assert _colour_pixels(pixels, POOL_COLOR) > 300
