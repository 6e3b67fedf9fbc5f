"""Folder pools: every image mode is converted to the teacher's input; broken files are skipped and counted."""

import numpy as np
import pytest
from PIL import Image

from edgedistill.config.schema import InputSpec
from edgedistill.inputs.images import UnreadableImage, convert_array, decode_image, iter_images
from tests.images import write_odd_images

GRAY = InputSpec(channels=1, size=28, mean=[0.5], std=[0.5])
RGB = InputSpec(channels=3, size=32, mean=[0.5] * 3, std=[0.5] * 3)


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    return folder, write_odd_images(folder)


@pytest.mark.parametrize("spec", [GRAY, RGB], ids=["gray28", "rgb32"])
def test_every_mode_decodes_or_is_refused(odd, spec):
    folder, expected = odd
    for name, readable in expected.items():
        if readable:
            arr = decode_image(folder / name, spec)
            assert arr.shape == (spec.channels, spec.size, spec.size) and arr.dtype == np.uint8, name
        else:
            with pytest.raises(UnreadableImage):
                decode_image(folder / name, spec)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "mid.png")
    assert abs(int(decode_image(tmp_path / "mid.png", GRAY).mean()) - 128) <= 1


def test_alpha_is_composited_on_black(tmp_path):
    Image.fromarray(np.dstack([np.full((8, 8, 3), 255, np.uint8), np.zeros((8, 8), np.uint8)]), "RGBA").save(tmp_path / "clear.png")
    assert decode_image(tmp_path / "clear.png", RGB).max() == 0


def test_listing_is_recursive_and_case_insensitive(odd):
    folder, expected = odd
    names = {p.relative_to(folder).as_posix() for p in iter_images(folder)}
    assert names == set(expected)


def test_convert_array_shapes_and_gray_conversion():
    rgb = np.zeros((2, 64, 48, 3), np.uint8)
    rgb[..., 1] = 200
    out = convert_array(rgb, GRAY)
    assert out.shape == (2, 1, 28, 28) and abs(int(out.mean()) - round(0.587 * 200)) <= 1
    gray = np.full((3, 8, 8), 77, np.uint8)
    assert convert_array(gray, RGB).shape == (3, 3, 32, 32) and (convert_array(gray, RGB) == 77).all()


def test_symlinked_folders_and_files_are_followed_and_loops_counted(tmp_path):
    """One walker for pools, labeled folders and calibration: links followed, a folder never listed twice."""
    from edgedistill.inputs.images import Skipped, sample_folder
    from edgedistill.inputs.labeled import read_class_folders

    real = tmp_path / "real"
    (real / "0").mkdir(parents=True)
    (real / "1").mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (30, 30), dtype=np.uint8)
    for c in ("0", "1"):
        Image.fromarray(pixels).save(real / c / "a.png")
    tree = tmp_path / "tree"
    (tree / "0").mkdir(parents=True)
    (tree / "0" / "linked.png").symlink_to(real / "0" / "a.png")  # a linked file
    (tree / "1").symlink_to(real / "1", target_is_directory=True)  # a linked folder
    (tree / "0" / "loop").symlink_to(tree, target_is_directory=True)  # back to the top: a loop
    (tree / "0" / "self").symlink_to(tree / "0" / "self")  # a link to itself (ELOOP)
    (tree / "0" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # dangling
    found = list(iter_images(tree))
    images = sorted(str(p.relative_to(tree)) for p in found if not isinstance(p, Skipped))
    skipped = sorted(s.reason for s in found if isinstance(s, Skipped))
    assert images == ["0/linked.png", "1/a.png"]
    assert skipped[0] == "dangling link" and all("symlink loop" in r for r in skipped[1:]) and len(skipped) == 3
    labeled = read_class_folders(tree, GRAY, None, 10)
    assert labeled.labels.tolist() == [0, 1] and len(labeled.unreadable) == 3
    calibration, bad = sample_folder(tree, GRAY, 10)
    assert len(calibration) == 2 and len(bad) == 3


def labeled_tree(root, counts: list[int], broken: int = 0):
    """Class folders 0..k-1 holding counts[k] distinct PNGs each; `broken` unreadable files in class 0."""
    rng = np.random.default_rng(1)
    for c, n in enumerate(counts):
        (root / str(c)).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / str(c) / f"{i:03d}.png")
    for i in range(broken):
        (root / "0" / f"zz_broken{i}.png").write_bytes(b"not a png")
    return root


def test_labeled_limit_is_a_seeded_class_stratified_sample(tmp_path):
    """A 100-image limit on a 10-class folder takes 10 of each class (it used to take classes 0-4 only), the same
    images for the same seed, others for another seed; class sizes are kept in proportion."""
    from edgedistill.inputs.labeled import read_class_folders

    folder = labeled_tree(tmp_path / "ten", [30] * 10)
    first = read_class_folders(folder, GRAY, None, 10, limit=100)
    assert np.bincount(first.labels, minlength=10).tolist() == [10] * 10
    again = read_class_folders(folder, GRAY, None, 10, limit=100)
    np.testing.assert_array_equal(first.images, again.images)
    other = read_class_folders(folder, GRAY, None, 10, limit=100, seed=1)
    assert not np.array_equal(first.images, other.images)
    uneven = read_class_folders(labeled_tree(tmp_path / "uneven", [60, 30, 10]), GRAY, None, 3, limit=50)
    assert np.bincount(uneven.labels).tolist() == [30, 15, 5]
    assert len(read_class_folders(folder, GRAY, None, 10).images) == 300
    # strata are the listed files; a sampled file that does not decode is replaced by the next of its class
    broken = labeled_tree(tmp_path / "broken", [4, 4], broken=2)
    sample = read_class_folders(broken, GRAY, None, 2, limit=5)
    assert np.bincount(sample.labels).tolist() == [3, 2] and all("zz_broken" in u for u in sample.unreadable)
    whole = read_class_folders(broken, GRAY, None, 2)
    assert len(whole.images) == 8 and len(whole.unreadable) == 2


def test_compress_eval_limit_uses_the_recipes_seed_and_builtins_are_stratified(tmp_path):
    """compress reads eval.limit through the same sampler as `validate --limit`, seeded by the recipe."""
    from edgedistill.inputs.builtin import load_builtin
    from edgedistill.inputs.labeled import load_labeled, read_class_folders
    from edgedistill.recipe import load_recipe
    from tests.test_pipeline import tiny_recipe

    folder = labeled_tree(tmp_path / "ten", [30] * 10)
    recipe = load_recipe(tiny_recipe(tmp_path), [f"eval.labeled={folder}", "eval.limit=100", "seed=7"])
    loaded = load_labeled(recipe.eval.labeled, recipe)
    direct = read_class_folders(folder, recipe.teacher.input, None, 10, limit=100, seed=7)
    np.testing.assert_array_equal(loaded.images, direct.images)
    assert np.bincount(loaded.labels).tolist() == [10] * 10

    recipe = load_recipe(tiny_recipe(tmp_path), ["eval.labeled=builtin:mnist-heldout", "eval.limit=200"])
    labels = load_builtin("mnist-heldout").labels
    share = np.bincount(labels, minlength=10) * 200 / len(labels)
    counts = np.bincount(load_labeled(recipe.eval.labeled, recipe).labels, minlength=10)
    assert counts.sum() == 200 and (np.abs(counts - share) < 1).all(), (counts, share)


def test_a_pool_folder_that_cannot_be_read_names_the_permission(tmp_path):
    """Not 'no images found': the recipe load says the folder cannot be listed and why."""
    import subprocess
    import sys

    import yaml

    from tests.test_pipeline import tiny_recipe
    from tests.test_rundir import without_root_powers

    locked = labeled_tree(tmp_path / "locked", [2])
    recipe = tiny_recipe(tmp_path)
    data = yaml.safe_load(recipe.read_text())
    data["pool"].append({"folder": str(locked)})
    recipe.write_text(yaml.safe_dump(data))
    locked.chmod(0)
    try:
        cmd = [sys.executable, "-m", "edgedistill", "compress", str(recipe), "--run-dir", str(tmp_path / "run")]
        done = subprocess.run(without_root_powers(cmd), capture_output=True, text=True, timeout=300)
    finally:
        locked.chmod(0o755)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stdout + done.stderr
    assert f"pool.2.folder: cannot read {locked} (Permission denied)" in lines[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()
