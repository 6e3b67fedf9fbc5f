"""The machines a runner can work on: this one (local.py) or a board over ssh (ssh.py), behind one Host interface
(base.py), and HostRunner, the work-dir lifecycle every runner that drives a Host shares."""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

from ...errors import EdgeDistillError, TargetUnavailable
from ..base import Runner
from .base import Host, RemoteCommandFailed, last_line
from .jetson import device_facts
from .local import LocalHost
from .ssh import SSHTarget

if TYPE_CHECKING:
    from ...config.schema import TargetSpec

CONNECT_TIMEOUT_S = 10
PROCESS_GROUP_FILE = "process-group"
# argv in a session of its own (setsid; a shell without a terminal has no job control), its id written to $0
START_GROUP = 'if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi; pid=$!; echo "$pid" > "$0"; wait "$pid"'
# TERM that group if it still runs (the process and its children where setsid was missing), then KILL it after a second
STOP_GROUP = (
    'test -f "$0" || exit 0; g=$(cat "$0"); '
    'kill -TERM -- "-$g" 2>/dev/null || { pkill -TERM -P "$g" 2>/dev/null; kill -TERM "$g" 2>/dev/null; } || exit 0; i=0; '
    'while kill -0 "$g" 2>/dev/null && [ $i -lt 10 ]; do sleep 0.1; i=$((i+1)); done; '
    'kill -KILL -- "-$g" 2>/dev/null || kill -KILL "$g" 2>/dev/null; exit 0'
)
_FULL_DISK = re.compile(r"No space left on device|Disk quota exceeded")


def open_host(target: TargetSpec) -> Host:
    """The target's machine: the ssh destination it names, else this one."""
    if not target.ssh:
        return LocalHost()
    return SSHTarget(
        target.ssh,
        config_file=target.ssh_config,
        known_hosts=target.known_hosts,
        host_key_policy=target.host_key_policy,
        connect_timeout_s=min(CONNECT_TIMEOUT_S, target.timeout_s),
    )


class HostRunner(Runner):
    """A runner that works on a Host: a private work dir made at the start and removed on close, also after a
    failure, and the device's facts."""

    infer_batch = None  # validate hands over the whole eval set: one upload, one run

    def __init__(self, host: Host, target: TargetSpec):
        self.host, self.target = host, target
        self.destination = host.destination
        self.workdir: str | None = None
        self._device_facts: dict | None = None

    def _path(self, name: str) -> str:
        return f"{self.workdir}/{name}"

    def _start(self, work) -> None:
        """Runs the setup steps; on any failure the work dir and connection are released before raising."""
        try:
            self.workdir = self.host.make_workdir()
            work()
        except BaseException:
            self.close()
            raise

    def _run_tracked(self, argv: list[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
        """Runs argv on the host in a process group of its own, whose id goes to the work dir: a process on a board
        outlives the ssh connection that started it, so close() stops the group after a timeout or an interrupt."""
        wrapped = ["sh", "-c", START_GROUP, self._path(PROCESS_GROUP_FILE), *argv]
        return self.host.run(wrapped, timeout_s=timeout_s, check=False)

    def _read_text(self, remote: str) -> str:
        try:
            return self.host.run(["cat", remote], timeout_s=self.target.timeout_s).stdout.decode("utf-8", "replace")
        except RemoteCommandFailed as exc:
            raise TargetUnavailable(f"{self.destination}: cannot read {remote}: {last_line(exc.stderr)}") from None

    def _unavailable_if_full(self, stderr: bytes) -> None:
        text = stderr.decode("utf-8", "replace")
        if _FULL_DISK.search(text):
            raise TargetUnavailable(
                f"{self.destination}: no space left on device ({last_line(text)}). "
                "Hint: free space on the board (the work dir is under its $TMPDIR or /tmp)."
            )

    def device_facts(self) -> dict:
        if self._device_facts is None:
            self._device_facts = device_facts(self.host, min(60.0, self.target.timeout_s))
        return self._device_facts

    def close(self) -> None:
        """Stops what is still running (after a timeout or an interrupt), removes the work dir and ends the connection;
        never raises, since it runs after failures too."""
        workdir, self.workdir = self.workdir, None
        try:
            if workdir is not None:
                self.host.run(["sh", "-c", STOP_GROUP, f"{workdir}/{PROCESS_GROUP_FILE}"], timeout_s=30, check=False)
                self.host.remove(workdir)
        except EdgeDistillError:
            pass
        finally:
            self.host.close()
