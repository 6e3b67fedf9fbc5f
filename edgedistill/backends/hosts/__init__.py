"""The machines a runner can work on: this one (local.py) or a board over ssh (ssh.py), behind one Host interface
(base.py), and HostRunner, the work-dir lifecycle every runner that drives a Host shares."""

from __future__ import annotations

import re
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
        """Removes the work dir and ends the connection; never raises, since it runs after failures too."""
        workdir, self.workdir = self.workdir, None
        try:
            if workdir is not None:
                self.host.remove(workdir)
        except EdgeDistillError:
            pass
        finally:
            self.host.close()
