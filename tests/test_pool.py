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
