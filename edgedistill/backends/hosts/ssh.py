"""SSH transport to remote validation targets (Jetson boards and friends).

The system OpenSSH client is driven through subprocess, so whatever users have
in ~/.ssh/config (aliases, keys, ProxyJump, agents) just works.  One master
connection per target is shared by all commands (ControlMaster), host keys
are always checked, and every remote argument is shell-quoted because sshd
hands the command line to the remote user's shell.

Files travel as a tar stream over the same ssh connection rather than with
scp/sftp: scp's remote-path syntax depends on the client version (shell-parsed
in the legacy protocol, glob-parsed over SFTP), and SFTP reports a full disk as
a bare "Failure".  A tar pipe keeps quoting in our hands and lets a full disk
say so.  The remote side needs a POSIX login shell, ``tar`` and ``mktemp``.
"""

from __future__ import annotations

import math
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ...errors import BadInput, TargetUnavailable
from .base import RemoteCommandFailed, last_line, output_lines, shorten

HostKeyPolicy = Literal["strict", "accept-new"]
_POLICIES = {"strict": "yes", "accept-new": "accept-new"}
_SSH_FAILED = 255
_NOT_FOUND = 127
_KEEPALIVE_S = 15
_PERSIST_S = 120
_SUN_PATH_MAX = 104
_MASTER_TEMP_SUFFIX = 17


class SSHUnavailable(TargetUnavailable):
    """ssh itself failed, the target lacks a program, ran out of space or timed out.

    ``cause`` is a stable keyword for callers and tests: unreachable, refused,
    dns, connect-timeout, auth, host-key-changed, host-key-unknown, host-key,
    closed, lost, config, no-client, timeout, missing-program, no-space, ssh.
    """

    def __init__(self, host: str, cause: str, message: str) -> None:
        super().__init__(message)
        self.host = host
        self.cause = cause


def quote_argv(argv: Sequence[str]) -> str:
    """One shell-safe command line: the remote shell must see argv, not code."""
    if isinstance(argv, (str, bytes)) or not argv:
        raise BadInput("a remote command must be a non-empty list of arguments")
    words = []
    for arg in argv:
        text = os.fspath(arg)
        if not isinstance(text, str):
            raise BadInput(f"remote arguments must be text, got {type(arg).__name__}")
        if "\0" in text:
            raise BadInput("a remote argument cannot contain a NUL byte")
        words.append(shlex.quote(text))
    return " ".join(words)


def _sentence(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."


def _option_path(path: Path | str) -> str:
    """A path as an ssh option value: tokens escaped, whitespace quoted."""
    text = os.fspath(path).replace("%", "%%")
    if '"' in text or "\n" in text:
        raise BadInput(f"{path}: ssh cannot take a path containing quotes or newlines")
    return f'"{text}"' if any(c.isspace() for c in text) else text


# (pattern, cause, what happened, hint).  First match wins, so the specific
# host-key cases come before ssh's generic "Host key verification failed".
_DIAGNOSES: list[tuple[re.Pattern[str], str, str, str]] = [
    (
        re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED|Host key for .* has changed", re.I),
        "host-key-changed",
        "host key verification failed: REMOTE HOST IDENTIFICATION HAS CHANGED, the host sent a different key than the one in known_hosts",
        "this could be a man-in-the-middle attack, or the board was reflashed; only if you know why it changed, "
        "remove the old key with `{keygen}` and connect once with ssh by hand to record the new one",
    ),
    (
        re.compile(r"host key is known for .* strict checking|No \S+ host key is known for", re.I),
        "host-key-unknown",
        "host key is unknown (not in known_hosts) and host_key_policy is strict",
        "run `ssh {host}` once by hand to check and record its key, or set host_key_policy: accept-new in the recipe",
    ),
    (
        re.compile(r"Host key verification failed", re.I),
        "host-key",
        "host key verification failed",
        "check the entry for this host in known_hosts",
    ),
    (
        re.compile(
            r"Could not resolve hostname|Name or service not known|nodename nor servname|"
            r"Temporary failure in name resolution|No address associated with hostname",
            re.I,
        ),
        "dns",
        "host name could not be resolved",
        "check the spelling, or give the board a Host entry with HostName in ~/.ssh/config",
    ),
    (
        re.compile(r"Connection refused", re.I),
        "refused",
        "connection refused",
        "is sshd running on the board, and is the port right?",
    ),
    (
        re.compile(
            r"connect to host .*(timed out)|Connection timed out during banner exchange|"
            r"Operation timed out",
            re.I,
        ),
        "connect-timeout",
        "connection timed out",
        "is the board powered on and reachable (network, VPN, firewall)?",
    ),
    (
        re.compile(r"No route to host|Network is unreachable|Host is down|Host is unreachable", re.I),
        "unreachable",
        "host unreachable",
        "is the board powered on and on a network this machine can reach?",
    ),
    (
        re.compile(r"Permission denied|Too many authentication failures|No more authentication methods", re.I),
        "auth",
        "authentication refused",
        "ssh runs with BatchMode=yes and cannot ask for a password; check User and IdentityFile for this host "
        "in your ssh config, or install your key on the board with ssh-copy-id",
    ),
    (
        re.compile(r"Timeout, server .* not responding|client_loop: send disconnect", re.I),
        "lost",
        "connection lost",
        "the board stopped answering (crash, reboot, network drop); check it and retry",
    ),
    (
        re.compile(
            r"kex_exchange_identification|Connection (closed|reset) by|closed by remote host|"
            r"Connection reset",
            re.I,
        ),
        "closed",
        "connection closed by the remote side",
        "sshd may be restarting or refusing connections (MaxStartups, AllowUsers); retry or check its log",
    ),
    (
        re.compile(
            r"Bad configuration option|bad configuration options|Can't open user config file|"
            r"Bad owner or permissions on|garbage at end of line|Unsupported option",
            re.I,
        ),
        "config",
        "ssh configuration error",
        "fix the ssh config file or option named in the message",
    ),
]
# GNU tar reports a short write to a filling disk without an errno.
_FULL_DISK = re.compile(rb"No space left on device|Disk quota exceeded|Wrote only \d+ of \d+ bytes")
_SSH_VOICE = re.compile(
    r"^(ssh|kex_\w+|mux_client\w*|Control ?socket|ControlSocket|channel \d+|"
    r"ssh_\w+|muxclient):",
    re.I,
)


def _diagnose(host: str, stderr: bytes | str) -> SSHUnavailable | None:
    """Name ssh's own failure from its stderr, or None if it does not read like ssh."""
    lines = output_lines(stderr)
    text = "\n".join(lines)
    for pattern, cause, what, hint in _DIAGNOSES:
        match = pattern.search(text)
        if not match:
            continue
        evidence = next((line for line in lines if pattern.search(line)), "")
        keygen = re.search(r"ssh-keygen -f .*? -R \S+", text)
        hint = hint.format(host=host, keygen=keygen.group(0) if keygen else f"ssh-keygen -R {host}")
        evidence = shorten(evidence, 160).rstrip(".")
        detail = f" ({evidence})" if cause not in ("host-key-changed", "host-key-unknown") else ""
        return SSHUnavailable(host, cause, f"{host}: {what}{detail}. Hint: {_sentence(hint)}")
    ssh_lines = [line for line in lines if _SSH_VOICE.match(line)]
    if ssh_lines:
        return SSHUnavailable(host, "ssh", f"{host}: ssh failed ({shorten(ssh_lines[-1], 200)}). Hint: run `ssh -v {host}` to see why.")
    return None


def _short_tempdir() -> str | None:
    """A private dir short enough for a unix socket path, even on macOS."""
    for base in ("/tmp", tempfile.gettempdir()):
        if len(base) + len("/edssh-XXXXXXXX/cm") + _MASTER_TEMP_SUFFIX >= _SUN_PATH_MAX:
            continue
        if os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return tempfile.mkdtemp(prefix="edssh-", dir=base)
    return None


def _stop_master(ssh: str, args: list[str], destination: str, control_path: str, control_dir: str) -> None:
    if os.path.exists(control_path):
        try:
            subprocess.run(
                [ssh, *args, "-O", "exit", "--", destination],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )
        except (OSError, subprocess.SubprocessError):
            pass
    shutil.rmtree(control_dir, ignore_errors=True)


class _Master:
    """The control socket's private dir, and a guarantee the master dies with us."""

    def __init__(self, ssh: str, common: list[str], destination: str) -> None:
        self.dir = _short_tempdir()
        self.path = os.path.join(self.dir, "cm") if self.dir else None
        if self.dir:
            args = [*common, "-o", f"ControlPath={_option_path(self.path)}"]
            self._finalizer = weakref.finalize(self, _stop_master, ssh, args, destination, self.path, self.dir)

    def options(self) -> list[str]:
        if not self.path:
            return ["-o", "ControlMaster=no"]
        return ["-o", "ControlMaster=auto", "-o", f"ControlPath={_option_path(self.path)}", "-o", f"ControlPersist={_PERSIST_S}"]

    def close(self) -> None:
        if self.dir:
            self._finalizer()


def check_destination(destination: object) -> None:
    """host, user@host or a Host alias: never an option (a leading '-') or anything with spaces."""
    if (
        not isinstance(destination, str)
        or not destination
        or destination.startswith("-")
        or any(c.isspace() or c == "\0" for c in destination)
    ):
        raise BadInput(f"{destination!r} is not a valid ssh destination (want host, user@host or a Host alias)")


class SSHTarget:
    """A remote machine reached with the system ``ssh``; one shared connection per target."""

    def __init__(
        self,
        destination: str,
        *,
        config_file: Path | None = None,
        known_hosts: Path | None = None,
        host_key_policy: HostKeyPolicy = "strict",
        connect_timeout_s: float = 10,
    ) -> None:
        check_destination(destination)
        if host_key_policy not in _POLICIES:
            raise BadInput(f"host_key_policy must be 'strict' or 'accept-new', not {host_key_policy!r}")
        if not connect_timeout_s or connect_timeout_s <= 0:
            raise BadInput("connect_timeout_s must be positive")
        self.destination = destination
        self.host_key_policy = host_key_policy
        ssh = shutil.which("ssh")
        if ssh is None:
            raise SSHUnavailable(
                destination, "no-client", f"{destination}: the OpenSSH client `ssh` is not installed here. Hint: install openssh-client."
            )
        self._ssh = ssh
        common: list[str] = []
        if config_file is not None:
            config_file = Path(config_file).expanduser()
            if not config_file.is_file():
                raise BadInput(f"{config_file}: ssh config file not found")
            common += ["-F", os.fspath(config_file)]
        options = {
            "BatchMode": "yes",
            "StrictHostKeyChecking": _POLICIES[host_key_policy],
            "ConnectTimeout": str(max(1, math.ceil(connect_timeout_s))),
            "ServerAliveInterval": str(_KEEPALIVE_S),
            "ServerAliveCountMax": "3",
        }
        if known_hosts is not None:
            options["UserKnownHostsFile"] = _option_path(Path(known_hosts).expanduser())
        for key, value in options.items():
            common += ["-o", f"{key}={value}"]
        self._common = common
        self._master: _Master | None = None

    def __repr__(self) -> str:
        return f"SSHTarget({self.destination!r}, host_key_policy={self.host_key_policy!r})"

    def __enter__(self) -> SSHTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def control_path(self) -> str | None:
        """The master connection's socket (None before the first command or without multiplexing)."""
        return self._master.path if self._master else None

    def _args(self, *flags: str) -> list[str]:
        if self._master is None:
            self._master = _Master(self._ssh, self._common, self.destination)
        return [self._ssh, *self._common, *self._master.options(), *flags, "--", self.destination]

    def _invoke(
        self,
        command: str,
        *,
        what: str,
        timeout_s: float | None,
        input: bytes | None = None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one remote command line; ssh's own failures raise, the command's exit code is returned."""
        try:
            result = subprocess.run(
                [*self._args("-T"), command],
                input=input,
                stdin=None if input is not None else stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            raise SSHUnavailable(
                self.destination,
                "timeout",
                f"{self.destination}: `{shorten(what)}` timed out after {timeout_s:g} s. "
                "Hint: the board may be hung or overloaded; raise the timeout if this step is legitimately slow.",
            ) from None
        if result.returncode == _SSH_FAILED:
            failure = _diagnose(self.destination, result.stderr)
            if failure is not None:
                raise failure
        return result

    def _raise_for_status(self, argv: Sequence[str], result: subprocess.CompletedProcess[bytes], program: str) -> None:
        if result.returncode == 0:
            return
        stderr = result.stderr or b""
        if _FULL_DISK.search(stderr):
            raise SSHUnavailable(
                self.destination,
                "no-space",
                f"{self.destination}: no space left on device ({last_line(stderr)}). "
                "Hint: free space on the board or point the workdir at a bigger filesystem.",
            )
        if result.returncode == _NOT_FOUND:
            raise SSHUnavailable(
                self.destination,
                "missing-program",
                f"{self.destination}: `{shorten(program, 60)}` not found on the target (exit 127: "
                f"{last_line(stderr) or 'command not found'}). "
                "Hint: install it on the board or give its full path.",
            )
        raise RemoteCommandFailed(self.destination, argv, result.returncode, result.stdout or b"", stderr)

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = 300,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run argv remotely; ``args`` of the result is argv, not the local ssh command line.

        ssh failures always raise SSHUnavailable.  A non-zero remote exit raises
        (RemoteCommandFailed, or SSHUnavailable for 127 / a full disk) only when
        ``check`` is true.  A timeout stops the local ssh; the remote process may
        linger until it next writes output.
        """
        command = quote_argv(argv)
        result = self._invoke(command, what=shlex.join(argv), timeout_s=timeout_s, input=stdin)
        completed = subprocess.CompletedProcess(list(argv), result.returncode, result.stdout, result.stderr)
        if check:
            self._raise_for_status(argv, completed, argv[0])
        return completed

    def _run_script(
        self, command: str, argv: Sequence[str], program: str, timeout_s: float | None, **streams
    ) -> subprocess.CompletedProcess[bytes]:
        result = self._invoke(command, what=shlex.join(argv), timeout_s=timeout_s, **streams)
        self._raise_for_status(argv, result, program)
        return result

    def put(self, local: Path, remote: str, *, timeout_s: float | None = 600) -> None:
        """Copy a local file or directory to exactly ``remote`` (an existing remote dir is merged into)."""
        local = Path(local)
        if not local.exists():
            raise BadInput(f"{local}: no such file or directory")
        local = local.resolve() if local.is_symlink() else local
        parent, name = _split_remote(remote)
        with tempfile.TemporaryFile() as bundle:
            with tarfile.open(fileobj=bundle, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(local, arcname=name)
            bundle.seek(0)
            command = f"mkdir -p -- {shlex.quote(parent)} && tar -C {shlex.quote(parent)} -xof -"
            self._run_script(command, ["put", os.fspath(local), remote], "tar", timeout_s, stdin=bundle)

    def get(self, remote: str, local: Path, *, timeout_s: float | None = 600) -> None:
        """Copy a remote file or directory to exactly ``local`` (an existing local dir is merged into)."""
        local = Path(local)
        parent, name = _split_remote(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".edgedistill-get-", dir=local.parent))
        try:
            with tempfile.TemporaryFile() as bundle:
                command = f"tar -C {shlex.quote(parent)} -cf - {shlex.quote('./' + name)}"
                self._run_script(command, ["get", remote, os.fspath(local)], "tar", timeout_s, stdout=bundle)
                bundle.seek(0)
                with tarfile.open(fileobj=bundle, mode="r:") as tar:
                    _safe_extract(tar, staging)
            fetched = staging / name
            if not fetched.exists() and not fetched.is_symlink():
                raise SSHUnavailable(self.destination, "ssh", f"{self.destination}: {remote} came back empty.")
            if fetched.is_dir() and local.is_dir():
                shutil.copytree(fetched, local, symlinks=True, dirs_exist_ok=True)
            elif local.is_dir() and not local.is_symlink():
                raise BadInput(f"{local} is a directory; cannot replace it with the file {remote}")
            else:
                os.replace(fetched, local)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def make_workdir(self) -> str:
        """A fresh private directory on the target (under its $TMPDIR or /tmp)."""
        command = 'mktemp -d "${TMPDIR:-/tmp}/edgedistill.XXXXXXXX"'
        result = self._run_script(command, ["mktemp", "-d"], "mktemp", 60)
        path = result.stdout.decode("utf-8", "replace").strip()
        if not path.startswith("/") or "\n" in path:
            raise SSHUnavailable(self.destination, "ssh", f"{self.destination}: mktemp gave an unexpected answer {shorten(path)!r}.")
        return path

    def remove(self, remote_path: str) -> None:
        """``rm -rf`` one remote path; refuses relative paths and top-level dirs to limit accidents."""
        if not isinstance(remote_path, str) or "\0" in remote_path:
            raise BadInput(f"{remote_path!r} is not a remote path")
        normal = posixpath.normpath(remote_path)
        if not normal.startswith("/") or normal.startswith("//") or normal.count("/") < 2:
            raise BadInput(f"refusing to remove {remote_path!r}: need an absolute path at least two levels deep")
        self._run_script(f"rm -rf -- {shlex.quote(normal)}", ["rm", "-rf", normal], "rm", 120)

    def which(self, program: str) -> str | None:
        """The absolute path ``program`` would run from on the target, or None."""
        if not isinstance(program, str) or not program or any(c in program for c in "\0\n"):
            raise BadInput(f"{program!r} is not a program name")
        script = (
            'case $1 in */*) [ -f "$1" ] && [ -x "$1" ] && { printf "%s\\n" "$1"; exit 0; }; exit 1;; esac; '
            'set -f; IFS=:; for d in $PATH; do [ -n "$d" ] || d=.; '
            'if [ -f "$d/$1" ] && [ -x "$d/$1" ]; then printf "%s\\n" "$d/$1"; exit 0; fi; done; exit 1'
        )
        result = self._invoke(quote_argv(["sh", "-c", script, "sh", program]), what=f"which {program}", timeout_s=60)
        found = result.stdout.decode("utf-8", "replace").strip() if result.returncode == 0 else ""
        return found or None

    def effective_config(self, timeout_s: float = 10) -> dict[str, str]:
        """What ssh would use for this destination (``ssh -G``: the alias's HostName, Port, ProxyJump...), read with
        the same -F and -o options as every connection, so the pre-flight resolves the name ssh will dial."""
        try:
            result = subprocess.run(
                [self._ssh, *self._common, "-G", "--", self.destination], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise SSHUnavailable(self.destination, "timeout", f"{self.destination}: `ssh -G` timed out after {timeout_s:g} s.") from None
        if result.returncode != 0:
            failure = _diagnose(self.destination, result.stderr)
            raise failure or SSHUnavailable(
                self.destination, "config", f"{self.destination}: `ssh -G` failed: {last_line(result.stderr) or 'no error output'}."
            )
        config: dict[str, str] = {}
        for line in result.stdout.decode("utf-8", "replace").splitlines():
            key, _, value = line.partition(" ")
            config.setdefault(key.lower(), value.strip())
        return config

    def master_alive(self) -> bool:
        """Whether a shared master connection is up (``ssh -O check``)."""
        if self._master is None or not self._master.path:
            return False
        try:
            result = subprocess.run(self._args("-O", "check"), stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return result.returncode == 0

    def close(self) -> None:
        """End the master connection and remove its socket dir; safe to call twice."""
        master, self._master = self._master, None
        if master is not None:
            master.close()


def _split_remote(remote: str) -> tuple[str, str]:
    if not isinstance(remote, str) or not remote or "\0" in remote:
        raise BadInput(f"{remote!r} is not a remote path")
    normal = posixpath.normpath(remote)
    parent, name = posixpath.split(normal)
    if name in ("", ".", ".."):
        raise BadInput(f"{remote!r} does not name a file or directory")
    return parent or ".", name


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Refuse members that would land outside ``dest``: the remote side is not trusted with our disk."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if root not in (target, *target.parents) or not (member.isfile() or member.isdir() or member.issym()):
            raise BadInput(f"refusing unsafe archive member {member.name!r}")
        if member.issym():
            link = (target.parent / member.linkname).resolve()
            if os.path.isabs(member.linkname) or root not in (link, *link.parents):
                raise BadInput(f"refusing symlink {member.name!r} pointing outside the download")
    tar.extractall(dest)
