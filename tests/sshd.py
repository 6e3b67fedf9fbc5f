"""A real OpenSSH sshd on a free loopback port, as a pytest fixture.

Tests of the SSH transport talk to this server instead of mocking ``ssh``:
quoting, host-key checks and multiplexing only mean something against the
real programs.  Everything (host key, user keys, authorized_keys, pid file,
log) lives in a private temp dir; nothing outside 127.0.0.1 is touched.

Registered for every test module by tests/conftest.py (pytest_plugins).
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ALIAS = "edgedistill-test"
_SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def find_sshd() -> str | None:
    """sshd must be run by absolute path (it re-execs itself)."""
    found = shutil.which("sshd", path=_SBIN_PATH)
    return os.path.abspath(found) if found else None


def _missing_tools() -> list[str]:
    missing = [] if find_sshd() else ["sshd (openssh-server)"]
    missing += [f"{tool} (openssh-client)" for tool in ("ssh", "ssh-keygen") if not shutil.which(tool)]
    return missing


def _keygen(path: Path, comment: str) -> str:
    """Create an unencrypted ed25519 key pair; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg_value(value: object) -> str:
    """ssh/sshd config values split on whitespace unless double-quoted."""
    text = str(value)
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _host_pattern(port: int) -> str:
    return "127.0.0.1" if port == 22 else f"[127.0.0.1]:{port}"


def _wait_for_banner(port: int, proc: subprocess.Popen, deadline: float) -> bool:
    """Ready means our sshd answers with an SSH banner, not just that the port is open."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@dataclass
class SSHServer:
    """What a test needs to reach the server, plus helpers to build variants."""

    port: int
    user: str
    root: Path
    destination: str
    config_path: Path
    known_hosts: Path
    wrong_known_hosts: Path
    host_key: str
    identity_file: Path
    unauthorized_identity: Path
    log_path: Path
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def host_pattern(self) -> str:
        """How this server is named in known_hosts (``[127.0.0.1]:port``)."""
        return _host_pattern(self.port)

    def known_hosts_line(self, key: str | None = None) -> str:
        return f"{self.host_pattern} {' '.join((key or self.host_key).split()[:2])}\n"

    def write_client_config(
        self,
        path: Path,
        *,
        alias: str = ALIAS,
        port: int | None = None,
        identity_file: Path | None = None,
        known_hosts: Path | None = None,
    ) -> Path:
        """An ssh_config whose Host alias reaches this server (or ``port``) as the test user."""
        lines = [
            f"Host {alias}",
            "  HostName 127.0.0.1",
            f"  Port {port or self.port}",
            f"  User {self.user}",
            f"  IdentityFile {_cfg_value(identity_file or self.identity_file)}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {_cfg_value(known_hosts or self.known_hosts)}",
            "  PasswordAuthentication no",
            "  KbdInteractiveAuthentication no",
            "",
        ]
        path.write_text("\n".join(lines))
        return path

    def accepted_logins(self) -> int:
        """Completed authentications so far: proves whether a connection was reused."""
        return self.log_path.read_text(errors="replace").count("Accepted publickey")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _sshd_config(root: Path, port: int, user: str, host_key: Path, authorized: Path, home: Path) -> str:
    options = {
        "Port": port,
        "ListenAddress": "127.0.0.1",
        "AddressFamily": "inet",
        "HostKey": host_key,
        "PidFile": root / "sshd.pid",
        "AuthorizedKeysFile": authorized,
        "AllowUsers": user,
        "PubkeyAuthentication": "yes",
        "PasswordAuthentication": "no",
        "KbdInteractiveAuthentication": "no",
        "PermitRootLogin": "prohibit-password",
        "UsePAM": "no",
        "StrictModes": "no",
        "UseDNS": "no",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "MaxStartups": "64",
        "MaxSessions": "64",
        "LogLevel": "VERBOSE",
        "Subsystem": "sftp internal-sftp",
        "SetEnv": _cfg_value(f"HOME={home}"),
    }
    return "".join(f"{key} {value if key in ('Subsystem', 'SetEnv') else _cfg_value(value)}\n" for key, value in options.items())


def start_sshd(root: Path, *, attempts: int = 5, ready_timeout_s: float = 10.0) -> SSHServer:
    """Generate keys and config under ``root`` and start ``sshd -D -e`` on a free port."""
    sshd = find_sshd()
    if sshd is None:
        raise FileNotFoundError("sshd not found")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    user = getpass.getuser()
    host_key_path = root / "ssh_host_ed25519_key"
    host_key = _keygen(host_key_path, "edgedistill-test-host")
    _keygen(root / "wrong_host_key", "edgedistill-test-wrong-host")
    wrong_host_key = (root / "wrong_host_key.pub").read_text().strip()
    identity = root / "id_ed25519"
    authorized = root / "authorized_keys"
    authorized.write_text(_keygen(identity, "edgedistill-test-user") + "\n")
    stranger = root / "id_unauthorized"
    _keygen(stranger, "edgedistill-test-stranger")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)

    home = root / "home"
    home.mkdir(exist_ok=True)
    log_path = root / "sshd.log"
    last_error = ""
    for _ in range(attempts):
        port = _free_port()
        config = root / "sshd_config"
        config.write_text(_sshd_config(root, port, user, host_key_path, authorized, home))
        test = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True, text=True)
        if test.returncode != 0:
            raise RuntimeError(f"sshd rejected its test config: {test.stderr.strip()}")
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        log.close()
        if _wait_for_banner(port, proc, time.monotonic() + ready_timeout_s):
            server = SSHServer(
                port=port,
                user=user,
                root=root,
                destination=ALIAS,
                config_path=root / "ssh_config",
                known_hosts=root / "known_hosts",
                wrong_known_hosts=root / "wrong_known_hosts",
                host_key=host_key,
                identity_file=identity,
                unauthorized_identity=stranger,
                log_path=log_path,
                _proc=proc,
            )
            server.known_hosts.write_text(server.known_hosts_line())
            server.wrong_known_hosts.write_text(server.known_hosts_line(wrong_host_key))
            server.write_client_config(server.config_path)
            return server
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last_error = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        last_error = last_error[0]
    raise RuntimeError(f"sshd did not come up on loopback after {attempts} tries: {last_error}")


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory):
    """A running sshd for the whole session; tests copy files before changing them."""
    missing = _missing_tools()
    if missing:
        pytest.skip("needs OpenSSH installed: missing " + ", ".join(missing))
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
