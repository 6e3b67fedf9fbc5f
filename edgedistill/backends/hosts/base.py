"""What a runner needs from a machine (Host): run a command, move files, a private work dir. SSHTarget is a
board reached over ssh, LocalHost this machine."""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ...errors import EdgeDistillError

_STDERR_TAIL = 4000


class Host(Protocol):
    """What a runner needs from a machine: SSHTarget, or LocalHost for this one."""

    destination: str

    def run(
        self, argv: Sequence[str], *, timeout_s: float | None = 300, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]: ...

    def put(self, local: Path, remote: str, *, timeout_s: float | None = 600) -> None: ...

    def get(self, remote: str, local: Path, *, timeout_s: float | None = 600) -> None: ...

    def make_workdir(self) -> str: ...

    def remove(self, remote_path: str) -> None: ...

    def which(self, program: str) -> str | None: ...

    def close(self) -> None: ...


def shorten(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def output_lines(stderr: bytes | str) -> list[str]:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return [line.strip() for line in text.replace("\r", "\n").split("\n") if line.strip()]


_TAR_SUMMARY = re.compile(r"Exiting with failure status|Error is not recoverable")


def last_line(stderr: bytes | str) -> str:
    """The line most likely to name the cause: tar's closing summary names none."""
    lines = [line for line in output_lines(stderr) if not _TAR_SUMMARY.search(line)] or output_lines(stderr)
    return shorten(lines[-1], 200) if lines else ""


class RemoteCommandFailed(EdgeDistillError):
    """The connection worked but the remote command exited non-zero."""

    def __init__(self, host: str, argv: Sequence[str], returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.host = host
        self.argv = list(argv)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr[-_STDERR_TAIL:]
        last = last_line(self.stderr) or "no error output"
        super().__init__(f"{host}: `{shorten(shlex.join(self.argv))}` exited with {returncode} on the target: {last}")
