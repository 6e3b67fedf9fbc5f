"""What edgedistill promises about a run directory: it only touches its own files, one run at a time, and a killed
run leaves nothing that blocks or confuses the next one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.results.rundir import LOCK, MARKER, OWNER, RunDir
from tests.test_pipeline import tiny_recipe


def compress_cmd(recipe: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgedistill", "compress", str(recipe), "--run-dir", str(run), *extra]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_of_someone_elses_files_is_refused_untouched(tmp_path):
    mine = tmp_path / "my-photos"
    (mine / "stages").mkdir(parents=True)
    (mine / "holiday.jpg").write_bytes(b"not edgedistill's")
    (mine / "distill-keep.ckpt").write_bytes(b"a name edgedistill also uses")
    (mine / "stages" / "select.json").write_text("{}")
    before = snapshot(mine)
    for extra in ((), ("--fresh",)):
        result = CliRunner().invoke(app, ["compress", str(tiny_recipe(tmp_path)), "--run-dir", str(mine), *extra])
        assert result.exit_code == 2 and "did not write" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) <= 3  # one line, wrapped by the terminal at most
        assert snapshot(mine) == before
    file_instead = tmp_path / "a-file"
    file_instead.write_text("x")
    result = CliRunner().invoke(app, ["compress", str(tiny_recipe(tmp_path)), "--run-dir", str(file_instead)])
    assert result.exit_code == 2 and "not a directory" in result.output and file_instead.read_text() == "x"


def test_an_empty_folder_is_claimed_and_marked(tmp_path):
    run = RunDir(tmp_path / "empty")
    (tmp_path / "empty").mkdir()
    run.open()
    run.artifact("a.json").write_text("{}")
    run.close()
    marker = json.loads((tmp_path / "empty" / MARKER).read_text())
    assert marker["files"] == ["a.json"] and marker["edgedistill"]
    assert not (tmp_path / "empty" / OWNER).exists()


def test_one_run_per_directory_and_a_dead_holder_never_blocks(tmp_path):
    recipe = tiny_recipe(tmp_path, budget={}, epochs=2)
    run = tmp_path / "run"
    first = subprocess.Popen(compress_cmd(recipe, run), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while not (run / OWNER).is_file() and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(compress_cmd(recipe, run), capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stdout + second.stderr
    message = second.stderr.replace("\n", " ")
    assert "another edgedistill run is using it" in message and f"pid {first.pid}" in message and socket.gethostname() in message
    assert "Traceback" not in second.stderr
    assert first.wait(timeout=300) == 0, first.stdout.read()
    finished = snapshot(run)
    assert not (run / OWNER).exists()

    killed = subprocess.Popen(compress_cmd(recipe, run, "--fresh"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not (run / OWNER).is_file():
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    (run / ".student.onnx.abc123.part").write_bytes(b"half a file a killed run left")
    (run / "stages" / ".select.json.xyz.part").write_bytes(b"{")
    done = subprocess.run(compress_cmd(recipe, run), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr  # the dead process's lock did not block
    assert not list(run.rglob("*.part")) and (run / LOCK).exists() and not (run / OWNER).exists()
    assert set(snapshot(run)) >= set(finished) - {OWNER}


def test_fresh_forgets_only_what_runs_wrote_and_files_follow_the_umask(tmp_path):
    recipe = tiny_recipe(tmp_path, budget={}, epochs=1)
    run = tmp_path / "run"
    old = os.umask(0o022)
    try:
        assert subprocess.run(compress_cmd(recipe, run), capture_output=True, timeout=300).returncode == 0
    finally:
        os.umask(old)
    for name in ("report.json", "student.onnx", "stages/select.json", "run.log", MARKER):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name  # readable by a CI upload step running as another user
    (run / "notes.txt").write_text("the user's")
    (run / "stages" / "mine.json").write_text("{}")
    done = subprocess.run(compress_cmd(recipe, run, "--fresh"), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "up to date" not in done.stderr  # every stage redone
    assert (run / "notes.txt").read_text() == "the user's" and (run / "stages" / "mine.json").read_text() == "{}"
    manifest = json.loads((run / MARKER).read_text())["files"]
    assert "notes.txt" not in manifest and "stages/select.json" in manifest and "report.json" in manifest


DETERMINISTIC = (
    "selected.npz",
    "selected_images.npy",
    "student.safetensors",
    "student.json",
    "student.onnx",
    "parity.json",
    "student.int8.onnx",
    "int8.json",
)
# (what shows the stage is under way, seconds to wait at most after it): a kill point inside each stage
KILL_POINTS = [("run.log", 1.0), ("selected.npz", 0.0), ("distill-*.ckpt", 1.5), ("student.onnx", 0.3), ("int8.json", 0.5)]


def test_killed_at_seeded_points_of_every_stage_resumes_to_the_same_artifacts(tmp_path):
    """SIGKILL at seeded random moments inside select, distill, export and validate; each rerun resumes. The final
    artifacts are byte-identical to an uninterrupted run's and nothing is left behind."""
    import random

    recipe = tiny_recipe(tmp_path, budget={}, epochs=3)
    whole = subprocess.run(compress_cmd(recipe, tmp_path / "whole"), capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    run, rng, kills = tmp_path / "chaos", random.Random(20261201), 0
    for trigger, most in KILL_POINTS:
        proc = subprocess.Popen(compress_cmd(recipe, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not list(run.glob(trigger)):
            time.sleep(0.02)
        time.sleep(rng.uniform(0, most))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    done = subprocess.run(compress_cmd(recipe, run), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert kills >= 4  # every stage was interrupted at least once
    for name in DETERMINISTIC:
        assert (run / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name
    assert not list(run.rglob("*.part")) and not list(run.glob("distill-*.ckpt")) and not list(run.glob("teacher_outputs-*"))
    assert set(json.loads((run / MARKER).read_text())["files"]) == set(json.loads((tmp_path / "whole" / MARKER).read_text())["files"])
