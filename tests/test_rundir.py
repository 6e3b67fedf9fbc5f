"""What edgedistill promises about a run directory: it only touches its own files, one run at a time, and a killed
run leaves nothing that blocks or confuses the next one."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgedistill.atomic import atomic_path, atomic_write_json
from edgedistill.cli import app
from edgedistill.errors import BadInput
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


def without_root_powers(cmd: list[str]) -> list[str]:
    """`cmd` run so that file permissions apply to it. The tests may run as root, which ignores them (the
    CAP_DAC_OVERRIDE capability): as root the command runs with that capability dropped (util-linux setpriv)."""
    if os.geteuid() != 0:
        return cmd
    drop = [shutil.which("setpriv") or "setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None or subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root, which ignores file permissions, and setpriv cannot drop that capability here")
    return [*drop, *cmd]


@contextlib.contextmanager
def read_only_mount(folder: Path):
    """`folder` bind-mounted read-only on itself (EROFS for writes), for as long as the block runs; root only."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode != 0:
        pytest.skip("mount --bind is not permitted here")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


def test_a_file_the_user_put_in_a_run_directory_is_never_overwritten(tmp_path):
    """A name a run would write, placed there by the user and not in the run's manifest, is refused, not replaced;
    the run's own files (stage records, scratch) are written as before."""
    folder = tmp_path / "run"
    run = RunDir(folder)
    run.open()
    try:
        atomic_write_json(run.artifact("report.json"), {})
        atomic_write_json(run.artifact("stages/select.json"), {"inputs": 1})  # a stage record, as stages write them
        assert run.artifact("report.json") == folder / "report.json"  # its own file: rewritten freely
        (folder / "teacher.onnx").write_bytes(b"the user's model")
        with pytest.raises(BadInput, match=r"teacher.onnx: .*not written by an edgedistill run.*move it.*--run-dir"):
            run.artifact("teacher.onnx")
        with pytest.raises(BadInput, match="teacher.onnx"):
            run.artifact("student.onnx", "teacher.onnx")
        assert "teacher.onnx" not in json.loads((folder / MARKER).read_text())["files"]
        atomic_write_json(run.artifact("stages/select.json"), {"inputs": 2})
        with atomic_path(run.artifact("student.safetensors")) as tmp:  # scratch beside it, renamed into place
            tmp.write_bytes(b"weights")
    finally:
        run.close()
    assert (folder / "teacher.onnx").read_bytes() == b"the user's model" and not list(folder.rglob("*.part"))
    assert json.loads((folder / "stages" / "select.json").read_text()) == {"inputs": 2}

    (folder / "report.html").write_text("the user's page")  # a finished run directory; `report` rebuilds report.html
    result = CliRunner().invoke(app, ["report", str(folder)], terminal_width=2000)
    assert result.exit_code == 2 and "report.html" in one_error_line(result.output), result.output
    assert (folder / "report.html").read_text() == "the user's page"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"files": "x"}'], ids=["not json", "a list", "files not a list"])
def test_a_corrupt_run_marker_is_one_line_and_nothing_is_touched(tmp_path, content):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text(content)
    (folder / "report.json").write_text("{}")
    before = snapshot(folder)
    result = CliRunner().invoke(app, ["compress", str(tiny_recipe(tmp_path)), "--run-dir", str(folder)], terminal_width=2000)
    line = one_error_line(result.output)
    assert result.exit_code == 2 and f"{MARKER}" in line and "corrupt" in line and "another --run-dir" in line, result.output
    assert snapshot(folder) == before and not (folder / OWNER).exists()


@pytest.mark.parametrize("how", ["chmod 0555", "read-only mount"])
def test_a_read_only_run_directory_is_one_line(tmp_path, how):
    """EACCES (a directory the user may not write) or EROFS (a read-only file system) on the lock file: exit 2."""
    recipe = tiny_recipe(tmp_path)
    folder = tmp_path / "run"
    folder.mkdir()
    if how == "chmod 0555":
        folder.chmod(0o555)
        try:
            done = subprocess.run(without_root_powers(compress_cmd(recipe, folder)), capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
        needle = "Permission denied"
    else:
        with read_only_mount(folder):
            done = subprocess.run(compress_cmd(recipe, folder), capture_output=True, text=True, timeout=300)
        needle = "Read-only file system"
    assert done.returncode == 2, done.stdout + done.stderr
    line = one_error_line(done.stderr)
    assert str(folder) in line and needle in line and "--run-dir" in line, line
    assert list(folder.iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664)])
def test_every_atomic_write_follows_the_umask_even_when_the_writer_replaces_the_file(tmp_path, umask, mode):
    """safetensors writes through its own temporary file (0600), which used to leave student.safetensors 0600."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(umask)
    try:
        with atomic_path(tmp_path / "student.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        atomic_write_json(tmp_path / "a.json", {})
    finally:
        os.umask(old)
    for name in ("student.safetensors", "a.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
