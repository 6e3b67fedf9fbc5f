"""The device's own facts, read over its Host: board, SoC/GPU, L4T/JetPack and power mode where readable
(Jetson boards say them in /proc/device-tree, /etc/nv_tegra_release and nvpmodel)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ...errors import TargetUnavailable

if TYPE_CHECKING:
    from .base import Host

_FACTS_SCRIPT = r"""
section() { printf '\n@@%s\n' "$1"; }
section model; cat /proc/device-tree/model 2>/dev/null | tr -d '\000'
section compatible; cat /proc/device-tree/compatible 2>/dev/null | tr '\000' ' '
section tegra; cat /etc/nv_tegra_release 2>/dev/null
section jetpack; dpkg-query -W -f='${Version}' nvidia-jetpack 2>/dev/null
section nvpmodel; command -v nvpmodel >/dev/null 2>&1 && nvpmodel -q 2>/dev/null
section gpu; command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1
section uname; uname -srm
section cpus; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
section hostname; hostname 2>/dev/null || uname -n
exit 0
"""


L4T_JETPACK = {
    "32.3.1": "4.3",
    "32.4.3": "4.4",
    "32.5.0": "4.5",
    "32.5.1": "4.5.1",
    "32.5.2": "4.5.1",
    "32.6.1": "4.6",
    "32.7.1": "4.6.1",
    "32.7.2": "4.6.2",
    "32.7.3": "4.6.3",
    "32.7.4": "4.6.4",
    "32.7.5": "4.6.5",
    "32.7.6": "4.6.6",
    "35.1.0": "5.0.2",
    "35.2.1": "5.1",
    "36.2.0": "6.0 DP",
    "36.3.0": "6.0",
    "36.4.0": "6.1",
    "36.4.3": "6.2",
    "36.4.4": "6.2.1",
    "36.4.7": "6.2.1",
    "36.5.0": "6.2.2",
    "38.2.0": "7.0",
    "38.2.1": "7.0",
    "39.2.0": "7.2",
}

_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")

_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)")


def parse_device_facts(text: str) -> dict:
    """What the facts script printed, as optional fields: a board that lacks a file gives null."""
    sections: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        if line.startswith("@@"):
            name = line[2:].strip()
            sections[name] = ""
        elif name is not None:
            sections[name] += line + "\n"
    get = lambda key: (sections.get(key) or "").strip() or None
    tegra = get("tegra")
    l4t = None
    if tegra and (m := _L4T.search(tegra)):
        revision = m.group(2).rstrip(".")
        l4t = f"{m.group(1)}.{revision if '.' in revision else revision + '.0'}"
    jetpack = get("jetpack")
    jetpack = jetpack.split("-")[0].split("+")[0] if jetpack else L4T_JETPACK.get(l4t or "")
    power_mode = None
    if nvpmodel := get("nvpmodel"):
        lines = nvpmodel.splitlines()
        for i, line in enumerate(lines):
            if m := _POWER_MODE.search(line):
                mode_id = lines[i + 1].strip() if i + 1 < len(lines) and lines[i + 1].strip().isdigit() else None
                power_mode = m.group(1) + (f" (mode {mode_id})" if mode_id else "")
                break
    soc = next((w.split(",", 1)[1] for w in (get("compatible") or "").split() if re.fullmatch(r"nvidia,tegra\d+\w*", w)), None)
    cpus = get("cpus")
    return {
        "hostname": get("hostname"),
        "system": get("uname"),
        "cpus": int(cpus) if cpus and cpus.isdigit() else None,
        "device_model": get("model"),
        "soc": soc,
        "gpu": get("gpu"),
        "nv_tegra_release": tegra.splitlines()[0] if tegra else None,
        "l4t": l4t,
        "jetpack": jetpack,
        "power_mode": power_mode,
    }


def device_facts(host: Host, timeout_s: float = 60) -> dict:
    """Board, SoC/GPU, L4T/JetPack and power mode where readable; a facts failure never fails the target."""
    try:
        result = host.run(["sh", "-c", _FACTS_SCRIPT], timeout_s=timeout_s, check=False)
    except TargetUnavailable as exc:
        return {"facts_error": str(exc)}
    return parse_device_facts(result.stdout.decode("utf-8", "replace"))
