"""scripts/render_symbols.py, the data of the S32/S96 benches (issue #27): deterministic, readable as class folders,
RGB at the asked size, and its report split held out (fonts and pictures) from train/dev and from the natural-patches
pool; and the bench definitions that use it. Renders a few dozen images; nothing trains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rs():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import render_symbols
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    for split in ("train", "report"):
        try:
            render_symbols.fonts(split)
            render_symbols.pictures(split)
        except render_symbols.RenderError as exc:
            pytest.skip(str(exc))
    return render_symbols


@pytest.fixture(scope="module")
def rendered(rs, tmp_path_factory):
    """2 images a class of each split at 32 px (and train again, to compare)."""
    root = tmp_path_factory.mktemp("symbols")
    facts = {split: rs.render(root / split, split, 32, 2, seed=0) for split in ("train", "dev", "report")}
    facts["train-again"] = rs.render(root / "train-again", "train", 32, 2, seed=0)
    return root, facts


def test_the_same_seed_gives_the_same_files_and_another_seed_others(rs, rendered, tmp_path):
    root, facts = rendered
    assert facts["train"]["images_sha256"] == facts["train-again"]["images_sha256"]
    for a, b in zip(sorted((root / "train").rglob("*.png")), sorted((root / "train-again").rglob("*.png")), strict=True):
        assert a.read_bytes() == b.read_bytes()
    other = rs.render(tmp_path / "seed1", "train", 32, 2, seed=1)
    assert other["images_sha256"] != facts["train"]["images_sha256"]
    # an image depends on (seed, split, class, index) only, not on how many are rendered
    fonts, scenes = rs.fonts("train"), rs.pictures("train")
    one = rs.render_image(3, 1, "train", 32, 0, fonts, scenes)
    assert np.array_equal(one, rs.render_image(3, 1, "train", 32, 0, fonts, scenes))
    assert not np.array_equal(one, rs.render_image(3, 1, "dev", 32, 0, fonts, scenes))  # train and dev share no image


def test_class_folders_read_by_edgedistill(rs, rendered):
    from edgedistill.config.schema import InputSpec
    from edgedistill.inputs.labeled import read_class_folders

    root, facts = rendered
    assert sorted(p.name for p in (root / "dev").iterdir() if p.is_dir()) == sorted(rs.CLASS_NAMES)
    spec = InputSpec(channels=3, size=32, mean=[0.5] * 3, std=[0.25] * 3)
    data = read_class_folders(root / "dev", spec, rs.CLASS_NAMES, len(rs.CLASS_NAMES))
    assert data.images.shape == (2 * len(rs.CLASS_NAMES), 3, 32, 32) and data.images.dtype == np.uint8
    assert np.array_equal(np.bincount(data.labels), np.full(len(rs.CLASS_NAMES), 2))
    assert not data.unreadable
    assert json.loads((root / "dev" / "render.json").read_text())["classes"][0] == {"name": "A", "glyph": "A"}


def test_images_are_rgb_of_the_asked_size(rs, rendered, tmp_path):
    from PIL import Image

    root, _ = rendered
    with Image.open(next((root / "report" / "amp").glob("*.png"))) as image:
        assert image.mode == "RGB" and image.size == (32, 32)
    facts = rs.render(tmp_path / "r96", "report", 96, 1, seed=0)
    assert facts["size"] == 96 and facts["images"] == len(rs.CLASS_NAMES)
    for path in (tmp_path / "r96").rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (96, 96)
            assert np.asarray(image).std() > 0  # not a blank canvas


def test_report_fonts_and_pictures_are_held_out(rs, rendered):
    from edgedistill.inputs import builtin

    _, facts = rendered
    assert facts["train"]["fonts"] == facts["dev"]["fonts"] and facts["train"]["backgrounds"] == facts["dev"]["backgrounds"]
    assert not set(facts["report"]["fonts"]) & set(facts["train"]["fonts"])
    assert all(f.startswith("Liberation") for f in facts["report"]["fonts"])
    assert all(f.startswith("DejaVu") for f in facts["train"]["fonts"])
    report = {name.split(":")[1] for name in facts["report"]["backgrounds"]}
    train = {name.split(":")[1] for name in facts["train"]["backgrounds"]}
    assert report and not report & train
    # nor in the distillation pool: natural-patches cuts its patches from none of them
    pool = {name.split(":")[1] for name, _ in builtin._scene_sources()}
    assert not report & pool
    assert not report & (set(builtin.SKIMAGE_PHOTOS) | set(builtin.OPENCV_DOC_PHOTOS))


def test_clear_errors(rs, tmp_path):
    with pytest.raises(rs.RenderError, match="no Liberation TrueType font .* apt-get install fonts-liberation"):
        rs.fonts("report", font_dir=tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("not ours")
    with pytest.raises(rs.RenderError, match="not empty"):
        rs.render(tmp_path / "full", "dev", 32, 1)
    with pytest.raises(rs.RenderError, match="holds no render.json"):
        rs.render(tmp_path / "full", "dev", 32, 1, overwrite=True)
    assert (tmp_path / "full" / "x.txt").is_file()


def test_the_teacher_script_trains_on_the_train_split_only(rs, rendered):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_symbols_teacher as teacher
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    root, _ = rendered
    for split in ("dev", "report"):
        with pytest.raises(SystemExit, match="train split only"):
            teacher.read_train_split(root / split, 32)
    images, labels, facts = teacher.read_train_split(root / "train", 32)
    assert images.shape == (32, 3, 32, 32) and facts["split"] == "train"
    assert teacher.CLASS_NAMES == rs.CLASS_NAMES


# ---------------------------------------------------------------------------------------------- the benches


@pytest.fixture(scope="module")
def method():
    from benchmarks import method

    return method


def test_symbol_benches_are_twins_that_differ_only_in_the_evaluation_set(method, rs):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import train_symbols_teacher as teacher
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    from benchmarks.develop import DEVELOPMENT_BENCHES

    assert method.SYMBOL_CLASSES == rs.CLASS_NAMES
    assert (method.SYMBOL_MEAN, method.SYMBOL_STD) == (teacher.MEAN, teacher.STD)
    for size in (32, 96):
        dev, report = method.BENCHES[f"S{size}-dev"], method.BENCHES[f"S{size}"]
        assert (dev["role"], report["role"]) == ("development", "reporting")
        assert DEVELOPMENT_BENCHES[f"S{size}-dev"] == (f"S{size}-dev", {}) and f"S{size}" not in DEVELOPMENT_BENCHES
        assert dev["changes"]["eval"] == {"labeled": f"../runs/symbols/dev-{size}"}
        assert report["changes"]["eval"] == {"labeled": f"../runs/symbols/report-{size}"}
        assert {**dev["changes"], "eval": None} == {**report["changes"], "eval": None}
        assert dev["rows"] == report["rows"] and dev["needs"][0] == report["needs"][0]
        # the pool: built-in sources only, nothing of the generator
        assert all(set(entry) <= {"builtin", "count"} for entry in dev["changes"]["pool"])
        # the teacher the bench reads is the one the script writes, with the script's input
        weights = dev["changes"]["teacher"]["weights"]
        assert ROOT / weights.removeprefix("../") == teacher.PRESETS[size]["out"]
        assert dev["changes"]["teacher"]["arch"] == teacher.PRESETS[size]["arch"]
        assert dev["changes"]["teacher"]["input"] == teacher.input_spec(size).model_dump(mode="json", exclude_none=True)
        assert f"--size {size}" in dev["needs"][0]["make"] and "--split train" in dev["needs"][0]["make"]
        assert "--split report" in report["needs"][1]["make"] and "--split dev" in dev["needs"][1]["make"]


def test_a_bench_without_its_teacher_or_data_says_what_to_run(method, monkeypatch, tmp_path):
    monkeypatch.setattr(method, "ROOT", tmp_path)
    with pytest.raises(
        method.MissingBenchFile,
        match=r"^S96: teachers/symbols_resnet18_96.safetensors is missing; make it with: .*"
        r"render_symbols.py --split train --size 96 .* && .*train_symbols_teacher.py --size 96$",
    ):
        method.make_recipe("S96", 0, None)
    (tmp_path / "teachers").mkdir()
    (tmp_path / "teachers" / "symbols_resnet20_w16.safetensors").write_bytes(b"")
    with pytest.raises(method.MissingBenchFile, match=r"^S32-dev: runs/symbols/dev-32 is missing; make it with: .*--split dev --size 32"):
        method.make_recipe("S32-dev", 0, None)
    (tmp_path / "runs" / "symbols" / "dev-32").mkdir(parents=True)
    (tmp_path / "runs" / "symbols" / "dev-32" / "render.json").write_text(
        json.dumps({"split": "dev", "size": 32, "per_class": 5, "seed": 0})
    )
    with pytest.raises(
        method.MissingBenchFile, match=r"holds another rendering \(split dev, size 32, per_class 5, seed 0\).* --overwrite$"
    ):
        method.make_recipe("S32-dev", 0, None)
    (tmp_path / "runs" / "symbols" / "dev-32" / "render.json").write_text(
        json.dumps({"split": "dev", "size": 32, "per_class": 300, "seed": 0})
    )
    with pytest.raises(
        method.MissingBenchFile, match=r"^S32-dev: runs/symbols/train-32 is missing; make it with: .*--split train --size 32"
    ):
        method.make_recipe("S32-dev", 0, None)  # the labeled upper bound's images
