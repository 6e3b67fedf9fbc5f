"""A small run with a local and an ssh target, compressed once per session and re-gated by several tests."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / "teachers" / "mnist_lenet5.safetensors"


def make_teacher(path: Path) -> Path:
    """The shipped demo teacher when present; else a LeNet-5 whose last layer is fitted in closed form on sklearn digits."""
    if SHIPPED_TEACHER.is_file():
        shutil.copyfile(SHIPPED_TEACHER, path)
        return path
    from safetensors.torch import save_file

    from edgedistill.config.schema import InputSpec
    from edgedistill.inputs.builtin import load_builtin
    from edgedistill.inputs.images import convert_array, normalize
    from edgedistill.models.factory import create_model

    spec = InputSpec(channels=1, size=28, mean=[0.1307], std=[0.3081])
    digits = load_builtin("sklearn-digits")
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 1).eval()
    with torch.no_grad():
        features = model.head(model.features(normalize(torch.from_numpy(convert_array(digits.images, spec)), spec)))
        design = torch.cat([features, torch.ones(len(features), 1)], 1).double()
        targets = torch.nn.functional.one_hot(torch.from_numpy(digits.labels), 10).double()
        solution = torch.linalg.solve(design.T @ design + 1e-2 * torch.eye(design.shape[1], dtype=torch.float64), design.T @ targets)
        model.fc.weight.copy_(solution[:-1].T.float())
        model.fc.bias.copy_(solution[-1].float())
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def ssh_target_entry(server, **extra) -> dict:
    return {
        "name": "board",
        "ssh": server.destination,
        "ssh_config": str(server.config_path),
        "remote_python": sys.executable,
        "threads": 1,
        "warmup": 2,
        "iterations": 30,
        "timeout_s": 60,
        "budget": {"p99_ms": 1000.0},
        **extra,
    }


def write_recipe(folder: Path, server) -> Path:
    recipe = {
        "name": "remote-gate",
        "seed": 0,
        "teacher": {
            "arch": "lenet5",
            "weights": "teacher.safetensors",
            "num_classes": 10,
            "input": {"channels": 1, "size": 28, "mean": [0.1307], "std": [0.3081]},
        },
        "pool": [{"builtin": "sklearn-digits", "count": 400}],
        "select": {"per_class": 20, "batch_size": 200},
        "student": {"arch": "lenet5_half"},
        "distill": {"epochs": 1, "batch_size": 32, "augment": None},
        "eval": {"labeled": "builtin:sklearn-digits", "limit": 120},
        "targets": [
            {"name": "cpu", "threads": 1, "warmup": 2, "iterations": 30, "budget": {"p99_ms": 1000.0, "min_accuracy": 0.0}},
            ssh_target_entry(server),
        ],
    }
    make_teacher(folder / "teacher.safetensors")
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@dataclass
class CompressedRun:
    recipe: Path
    run_dir: Path
    report: dict
    server: object

    def copy(self, dest: Path) -> Path:
        """A private copy of the run dir, so a test can re-gate it without disturbing others."""
        return Path(shutil.copytree(self.run_dir, dest / "run"))
