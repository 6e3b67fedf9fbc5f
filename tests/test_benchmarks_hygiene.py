"""Development and reporting kept apart (issue #27): which sets the benches and the teacher scripts may read, and the
commands that repeat the logged development runs. Nothing here trains."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
REPORTING_SETS = {"mnist-heldout", "fashion-mnist-test", "../runs/symbols/report-32", "../runs/symbols/report-96"}


@pytest.fixture(scope="module")
def method():
    from benchmarks import method

    return method


def _builtin(name: str) -> str:
    return name.removeprefix("builtin:")


def _sets(method, bench: str, overlay: dict | None = None) -> tuple[str, set[str]]:
    """The bench's evaluation set and pool's built-in sources: from its recipe, or from its entry while a file it needs
    (the symbol benches' teachers and rendered sets) is not here yet."""
    try:
        recipe = method.make_recipe(bench, 0, None, overlay).model_dump(mode="json")
    except method.MissingBenchFile:
        recipe = method.merge(method.BENCHES[bench]["changes"], overlay or {})
    return recipe["eval"]["labeled"], {entry["builtin"] for entry in recipe["pool"] if entry.get("builtin")}


def test_no_bench_reads_a_reporting_set_but_its_own(method):
    """Each reporting bench is scored on its reporting set; no bench's pool (read by every development run of it)
    holds a reporting bench's set, and development benches are scored elsewhere."""
    sets = {b: _sets(method, b) for b in method.BENCHES}
    reporting = {_builtin(sets[b][0]) for b, cfg in method.BENCHES.items() if cfg["role"] == "reporting"}
    assert reporting == REPORTING_SETS
    for bench, (labeled, pool) in sets.items():
        assert not pool & reporting, (bench, pool & reporting)
        if method.BENCHES[bench]["role"] == "development":
            assert _builtin(labeled) not in reporting, bench
    assert method.BENCHES["B3"]["role"] == "development"
    assert {"builtin": "mnist-heldout"} in method.B2_POOL_UNTIL_ISSUE_27 and {"builtin": "mnist-heldout"} not in method.B2_POOL


def test_development_benches_score_on_development_sets(method):
    from benchmarks.develop import DEVELOPMENT_BENCHES

    for name, (bench, overlay) in DEVELOPMENT_BENCHES.items():
        assert _builtin(_sets(method, bench, overlay)[0]) not in REPORTING_SETS, name


def _loaded_sets(script: Path) -> set[str]:
    """The names every load_builtin(...) call of a script passes."""
    names = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "load_builtin":
            arg = node.args[0]
            assert isinstance(arg, ast.Constant), f"{script.name}: load_builtin with a computed name"
            names.add(arg.value)
    return names


@pytest.mark.parametrize("script", sorted((ROOT / "scripts").glob("train_*_teacher.py")), ids=lambda p: p.name)
def test_teacher_scripts_read_only_their_training_data(script):
    assert _loaded_sets(script) <= {"mnist-train", "fashion-mnist"}, script.name


def test_validation_split_is_seeded_disjoint_and_a_tenth():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from train_demo_teacher import VAL_FRACTION, validation_split
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    keep, held = validation_split(5000, VAL_FRACTION, 0)
    assert len(held) == 500 and len(keep) == 4500
    assert torch.equal(torch.cat([keep, held]).sort().values, torch.arange(5000))
    again, held_again = validation_split(5000, VAL_FRACTION, 0)
    assert torch.equal(keep, again) and torch.equal(held, held_again)
    assert not torch.equal(held, validation_split(5000, VAL_FRACTION, 1)[1])
    with pytest.raises(ValueError):
        validation_split(10, 0.0, 0)


def test_every_logged_development_run_has_a_command_or_a_reason():
    from benchmarks.develop import LOG, command_of

    old_pool = [{"builtin": "mnist-heldout"}]
    for text in LOG.read_text().splitlines():
        line = json.loads(text)
        command, why = command_of(line, old_pool)
        if why:
            continue
        assert command.startswith(".venv/bin/python -m benchmarks.develop --bench ")
        assert f"--seed {line['seed']}" in command and f"--epochs {line['epochs']}" in command
        if line["bench"] == "B2" and "pool" not in line:  # logged before B2's pool lost mnist-heldout
            assert '"pool": [{"builtin": "mnist-heldout"}]' in command
    line = {"name": "b128_ema999", "bench": "B2", "seed": 0, "epochs": 40, "edits": {"distill": {"ema": 0.999}}}
    assert "never committed" in command_of(line, old_pool)[1]
    logged = {"name": "x", "bench": "B1", "seed": 0, "epochs": 80, "edits": {}, "pool": [], "command": "the command as run"}
    assert command_of(logged, old_pool) == ("the command as run", None)
