"""The SSH transport against a real sshd on 127.0.0.1 (see tests/sshd.py)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedistill.backends.hosts.base import RemoteCommandFailed
from edgedistill.backends.hosts.ssh import SSHTarget, SSHUnavailable, _diagnose, quote_argv
from edgedistill.errors import BadInput, TargetUnavailable

NASTY = [
    "plain",
    "two words",
    "  padded  ",
    "",
    "it's",
    'say "hi"',
    "back\\slash\\n",
    "$HOME",
    "${PATH}",
    "`id`",
    "$(id)",
    "a; echo injected",
    "a && echo injected",
    "a | cat",
    "> redirected",
    "< nothing",
    "*",
    "~",
    "{a,b}",
    "!event",
    "# not a comment",
    "-n",
    "--",
    "line one\nline two",
    "tab\there",
    "ünïcødé ☃ 机器",
    "%s %d",
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text and "\r" not in text, text
    return text


@pytest.fixture(scope="module")
def target(sshd_server):
    with SSHTarget(sshd_server.destination, config_file=sshd_server.config_path) as t:
        yield t


@pytest.fixture
def workdir(target):
    path = target.make_workdir()
    yield path
    target.remove(path)


def test_nasty_arguments_reach_the_remote_program_verbatim(target, tmp_path):
    marker = tmp_path / "injected"
    nasty = NASTY + [f"$(touch {marker})", f"; touch {marker}", f"`touch {marker}`"]
    echoed = target.run([sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *nasty])
    assert json.loads(echoed.stdout) == nasty
    printed = target.run(["printf", "%s\\0", *nasty]).stdout
    assert printed.split(b"\0")[:-1] == [arg.encode() for arg in nasty]
    assert not marker.exists()


def test_stdin_bytes_round_trip(target):
    payload = bytes(range(256)) * 64
    assert target.run(["cat"], stdin=payload).stdout == payload


def test_remote_exit_codes_are_not_ssh_failures(target):
    script = ["sh", "-c", 'echo out; echo "boom $1" >&2; exit "$1"', "sh"]
    result = target.run([*script, "3"], check=False)
    assert (result.returncode, result.stdout, result.stderr.strip()) == (3, b"out\n", b"boom 3")
    assert result.args == [*script, "3"]

    with pytest.raises(RemoteCommandFailed) as failed:
        target.run([*script, "3"])
    assert failed.value.returncode == 3 and b"boom 3" in failed.value.stderr
    assert "boom 3" in _one_line(failed.value) and not isinstance(failed.value, TargetUnavailable)

    with pytest.raises(RemoteCommandFailed) as failed:
        target.run([*script, "255"])
    assert failed.value.returncode == 255

    assert target.run(["no-such-program-edgedistill"], check=False).returncode == 127
    with pytest.raises(SSHUnavailable) as missing:
        target.run(["no-such-program-edgedistill", "--version"])
    assert missing.value.cause == "missing-program"
    assert "no-such-program-edgedistill" in _one_line(missing.value)


def test_put_get_file_round_trip(target, workdir, tmp_path):
    local = tmp_path / "weights ü.bin"
    local.write_bytes(os.urandom(200_000))
    local.chmod(0o750)
    remote = f"{workdir}/new dir/it's a $(file).bin"
    target.put(local, remote)
    assert target.run(["cat", remote]).stdout == local.read_bytes()

    back = tmp_path / "back" / "weights.bin"
    target.get(remote, back)
    assert back.read_bytes() == local.read_bytes()
    assert stat.S_IMODE(back.stat().st_mode) == 0o750

    back.write_text("stale")
    target.get(remote, back)
    assert back.read_bytes() == local.read_bytes()


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def test_put_get_directory_round_trip(target, workdir, tmp_path):
    local = tmp_path / "bundle"
    (local / "model" / "deep er").mkdir(parents=True)
    (local / "empty").mkdir()
    (local / "model" / "net.onnx").write_bytes(b"\x08\x07onnx")
    (local / "model" / "deep er" / "labels; rm -rf ~.txt").write_text("cat\ndog\n")
    (local / "run.sh").write_text("#!/bin/sh\necho ok\n")
    (local / "run.sh").chmod(0o755)

    remote = f"{workdir}/bundle"
    target.put(local, remote)
    assert target.run([f"{remote}/run.sh"]).stdout == b"ok\n"
    listing = target.run(["find", remote, "-mindepth", "1", "-print0"]).stdout.decode().split("\0")[:-1]
    assert sorted(p[len(remote) + 1 :] for p in listing) == sorted(_tree(local))

    back = tmp_path / "back"
    target.get(remote, back)
    assert _tree(back) == _tree(local)
    assert os.access(back / "run.sh", os.X_OK)

    (back / "local-only").write_text("kept")
    target.get(remote, back)
    assert (back / "local-only").read_text() == "kept"


def test_get_missing_remote_path_fails_clearly(target, workdir, tmp_path):
    with pytest.raises(RemoteCommandFailed) as failed:
        target.get(f"{workdir}/absent", tmp_path / "x")
    assert "absent" in _one_line(failed.value) and "No such file" in str(failed.value)
    assert not (tmp_path / "x").exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_make_workdir_and_remove(target):
    first, second = target.make_workdir(), target.make_workdir()
    assert first != second and first.startswith("/")
    for path in (first, second):
        assert target.run(["test", "-d", path], check=False).returncode == 0
        target.run(["touch", f"{path}/file"])
        target.remove(path)
        assert target.run(["test", "-e", path], check=False).returncode == 1
    target.remove(first)
    for unsafe in ("/", "/tmp", "//tmp", "relative/dir", "", "/tmp/.."):
        with pytest.raises(BadInput):
            target.remove(unsafe)


def test_which(target, tmp_path):
    assert target.which("sh").endswith("/sh")
    assert target.which("printf").startswith("/")
    assert target.which(sys.executable) == sys.executable
    assert target.which("no-such-program-edgedistill") is None
    marker = tmp_path / "injected"
    assert target.which(f"sh; touch {marker}") is None
    assert target.which(f"$(touch {marker})") is None
    assert not marker.exists()


def test_remote_python_can_import_onnxruntime(target):
    """Remote validation runs the runtime this way; here the 'board' is this machine."""
    onnxruntime = pytest.importorskip("onnxruntime")
    python = target.which(sys.executable)
    assert python
    result = target.run([python, "-c", "import onnxruntime; print(onnxruntime.__version__)"], timeout_s=60)
    assert result.stdout.decode().strip() == onnxruntime.__version__


def test_one_master_connection_is_reused(sshd_server):
    before = sshd_server.accepted_logins()
    t = SSHTarget(sshd_server.destination, config_file=sshd_server.config_path)
    assert not t.master_alive()
    for _ in range(3):
        t.run(["true"])
    assert t.master_alive()
    control = t.control_path
    assert control and len(control) + 17 < 104
    check = subprocess.run(
        ["ssh", "-F", str(sshd_server.config_path), "-o", f"ControlPath={control}", "-O", "check", sshd_server.destination],
        capture_output=True,
    )
    assert check.returncode == 0, check.stderr
    assert sshd_server.accepted_logins() - before == 1

    t.close()
    t.close()
    assert not os.path.exists(control) and not os.path.exists(os.path.dirname(control))
    assert not t.master_alive()


def test_options_always_check_host_keys(sshd_server, tmp_path):
    t = SSHTarget(sshd_server.destination, config_file=sshd_server.config_path, known_hosts=tmp_path / "kh")
    argv = t._args("-T")
    options = {argv[i + 1].split("=")[0]: argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv) if a == "-o"}
    assert options["StrictHostKeyChecking"] == "yes"
    assert options["BatchMode"] == "yes"
    assert options["ControlMaster"] == "auto"
    assert options["UserKnownHostsFile"] == str(tmp_path / "kh")
    assert "/dev/null" not in argv
    t.close()


def test_changed_host_key_is_refused(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    shutil.copy(sshd_server.wrong_known_hosts, known_hosts)
    for policy in ("strict", "accept-new"):
        with SSHTarget(
            sshd_server.destination,
            config_file=sshd_server.config_path,
            known_hosts=known_hosts,
            host_key_policy=policy,
        ) as t:
            with pytest.raises(SSHUnavailable) as refused:
                t.run(["true"])
        message = _one_line(refused.value)
        assert refused.value.cause == "host-key-changed"
        assert "host key" in message and "attack" in message
        assert sshd_server.destination in message and "ssh-keygen" in message
        assert refused.value.exit_code == 4
    assert known_hosts.read_text() == sshd_server.wrong_known_hosts.read_text()


def test_unknown_host_key_is_refused_under_strict(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    with SSHTarget(sshd_server.destination, config_file=sshd_server.config_path, known_hosts=known_hosts) as t:
        with pytest.raises(SSHUnavailable) as refused:
            t.run(["true"])
    assert refused.value.cause == "host-key-unknown"
    assert "accept-new" in _one_line(refused.value)
    assert known_hosts.read_text() == ""


def test_accept_new_records_the_key(sshd_server, tmp_path):
    known_hosts = tmp_path / "known_hosts"
    with SSHTarget(
        sshd_server.destination,
        config_file=sshd_server.config_path,
        known_hosts=known_hosts,
        host_key_policy="accept-new",
    ) as t:
        assert t.run(["echo", "ok"]).stdout == b"ok\n"
    found = subprocess.run(["ssh-keygen", "-F", sshd_server.host_pattern, "-f", str(known_hosts)], capture_output=True, text=True)
    assert found.returncode == 0
    assert sshd_server.host_key.split()[1] in found.stdout
    with SSHTarget(sshd_server.destination, config_file=sshd_server.config_path, known_hosts=known_hosts) as t:
        assert t.run(["echo", "strict"]).stdout == b"strict\n"


def test_closed_port_fails_fast(sshd_server, tmp_path):
    config = sshd_server.write_client_config(tmp_path / "ssh_config", port=_closed_port())
    start = time.monotonic()
    with SSHTarget(sshd_server.destination, config_file=config, connect_timeout_s=3) as t:
        with pytest.raises(SSHUnavailable) as refused:
            t.run(["true"])
    assert time.monotonic() - start < 5
    assert refused.value.cause == "refused"
    message = _one_line(refused.value)
    assert sshd_server.destination in message and "refused" in message and "Hint:" in message


def test_wrong_identity_is_refused(sshd_server, tmp_path):
    config = sshd_server.write_client_config(tmp_path / "ssh_config", identity_file=sshd_server.unauthorized_identity)
    with SSHTarget(sshd_server.destination, config_file=config) as t:
        with pytest.raises(SSHUnavailable) as refused:
            t.run(["true"])
    assert refused.value.cause == "auth"
    assert "authentication refused" in _one_line(refused.value)


def test_command_timeout(target):
    start = time.monotonic()
    with pytest.raises(SSHUnavailable) as timed_out:
        target.run(["sleep", "10"], timeout_s=1)
    assert time.monotonic() - start < 5
    assert timed_out.value.cause == "timeout" and "timed out" in _one_line(timed_out.value)
    assert target.run(["echo", "still", "here"]).stdout == b"still here\n"


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tiny tmpfs")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_disk_during_put(target, tiny_filesystem, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    with pytest.raises(SSHUnavailable) as full:
        target.put(big, f"{tiny_filesystem}/big.bin")
    assert full.value.cause == "no-space"
    assert "no space left on device" in _one_line(full.value)


@pytest.mark.parametrize(
    ("stderr", "cause"),
    [
        ("ssh: Could not resolve hostname jetson-07: Name or service not known", "dns"),
        ("ssh: connect to host 10.1.2.3 port 22: No route to host", "unreachable"),
        ("ssh: connect to host 10.1.2.3 port 22: Network is unreachable", "unreachable"),
        ("ssh: connect to host 10.1.2.3 port 22: Connection timed out", "connect-timeout"),
        ("ssh: connect to host 10.1.2.3 port 22: Connection refused", "refused"),
        ("jetson@10.1.2.3: Permission denied (publickey,password).", "auth"),
        ("kex_exchange_identification: read: Connection reset by peer", "closed"),
        ("Timeout, server jetson-07 not responding.", "lost"),
        ("/home/u/.ssh/config: line 3: Bad configuration option: frobnicate", "config"),
        ("Host key verification failed.", "host-key"),
        ("mux_client_request_session: session request failed: Session open refused by peer", "ssh"),
        ("Traceback (most recent call last):\nValueError: bad model", None),
        ("", None),
    ],
)
def test_diagnosis_of_ssh_messages(stderr, cause):
    failure = _diagnose("jetson-07", stderr.encode())
    if cause is None:
        assert failure is None
        return
    assert failure.cause == cause
    message = _one_line(failure)
    assert message.startswith("jetson-07: ") and "Hint:" in message


@pytest.mark.parametrize(
    "kwargs",
    [
        {"destination": "-oProxyCommand=touch /tmp/x"},
        {"destination": "two words"},
        {"destination": ""},
        {"host_key_policy": "no"},
        {"connect_timeout_s": 0},
    ],
)
def test_unsafe_configuration_is_bad_input(kwargs):
    kwargs = {"destination": "jetson", **kwargs}
    with pytest.raises(BadInput):
        SSHTarget(kwargs.pop("destination"), **kwargs)


def test_quote_argv_rejects_what_cannot_be_quoted():
    assert quote_argv(["a b", "c"]) == "'a b' c"
    for bad in ([], "ls -l", ["a\0b"]):
        with pytest.raises(BadInput):
            quote_argv(bad)


def test_effective_config_reads_the_alias_with_the_targets_options(sshd_server, tmp_path):
    """`ssh -G` with the same -F/-o options as every connection: the pre-flight resolves the name ssh will dial."""
    with SSHTarget(sshd_server.destination, config_file=sshd_server.config_path, known_hosts=tmp_path / "kh") as t:
        config = t.effective_config()
    assert config["hostname"] == "127.0.0.1" and config["port"] == str(sshd_server.port)
    assert config["batchmode"] == "yes" and config["stricthostkeychecking"] in ("yes", "true")
    assert config["userknownhostsfile"] == str(tmp_path / "kh")
    broken = tmp_path / "broken_config"
    broken.write_text("Host x\n  NoSuchOption yes\n")
    with SSHTarget("x", config_file=broken) as t:
        with pytest.raises(SSHUnavailable) as bad:
            t.effective_config()
    assert bad.value.cause == "config" and "\n" not in str(bad.value)
