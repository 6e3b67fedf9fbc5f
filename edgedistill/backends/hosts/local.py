"""This machine behind the Host interface, so a CI runner that is itself the Jetson runs trtexec without ssh."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ...errors import TargetUnavailable
from .base import RemoteCommandFailed


class LocalHost:
    """This machine behind the Host interface, so a Jetson CI runner can use trtexec without ssh to itself."""

    destination = "this machine"

    def run(
        self, argv: Sequence[str], *, timeout_s: float | None = 300, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            result = subprocess.run(
                list(argv), input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL, capture_output=True, timeout=timeout_s
            )
        except FileNotFoundError:
            raise TargetUnavailable(f"{self.destination}: `{argv[0]}` not found. Hint: install it or give its full path.") from None
        except subprocess.TimeoutExpired:
            raise TargetUnavailable(
                f"{self.destination}: `{os.path.basename(argv[0])}` timed out after {timeout_s:g} s. "
                "Hint: raise the target's timeout_s if this step is legitimately slow."
            ) from None
        if check and result.returncode != 0:
            raise RemoteCommandFailed(self.destination, argv, result.returncode, result.stdout, result.stderr)
        return result

    def put(self, local: Path, remote: str, *, timeout_s: float | None = 600) -> None:
        _copy(Path(local), Path(remote))

    def get(self, remote: str, local: Path, *, timeout_s: float | None = 600) -> None:
        _copy(Path(remote), Path(local))

    def make_workdir(self) -> str:
        return tempfile.mkdtemp(prefix="edgedistill.")

    def remove(self, remote_path: str) -> None:
        shutil.rmtree(remote_path, ignore_errors=True)

    def which(self, program: str) -> str | None:
        if "/" in program:
            return program if os.path.isfile(program) and os.access(program, os.X_OK) else None
        return shutil.which(program)

    def close(self) -> None:
        pass


def _copy(source: Path, dest: Path) -> None:
    try:
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    except OSError as exc:
        raise TargetUnavailable(f"this machine: cannot copy {source} to {dest}: {exc.strerror or exc}") from None
