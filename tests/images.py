"""Real image files of every awkward kind, written with Pillow, for pool and eval tests."""

from pathlib import Path

import numpy as np
from PIL import Image


def write_odd_images(folder: Path) -> dict[str, bool]:
    """Writes one file per awkward case; returns name -> whether it should be readable."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0], "L").save(folder / "gray.png")
    Image.fromarray(rgb).save(folder / "rgb.jpg", quality=90)
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (40, 60), dtype=np.uint8)]), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (30, 30))).astype(np.uint16)).save(folder / "deep16.png")
    Image.fromarray(rgb).convert("P").save(folder / "palette.gif")
    Image.fromarray(rgb[:1, :1]).save(folder / "one_pixel.bmp")
    Image.fromarray(np.zeros((4, 400, 3), np.uint8)).save(folder / "very_wide.webp")
    sub = folder / "nested" / "deeper"
    sub.mkdir(parents=True)
    Image.fromarray(rgb).save(sub / "UPPER.PNG")
    full = folder / "full.jpg"
    Image.fromarray(rgb).save(full, quality=95)
    (folder / "truncated.jpg").write_bytes(full.read_bytes()[: len(full.read_bytes()) // 3])
    full.unlink()
    (folder / "zero_bytes.png").write_bytes(b"")
    (folder / "not_an_image.jpg").write_text("this is text, not a JPEG")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return {
        "gray.png": True,
        "rgb.jpg": True,
        "rgba.png": True,
        "cmyk.jpg": True,
        "deep16.png": True,
        "palette.gif": True,
        "one_pixel.bmp": True,
        "very_wide.webp": True,
        "nested/deeper/UPPER.PNG": True,
        "truncated.jpg": False,
        "zero_bytes.png": False,
        "not_an_image.jpg": False,
    }
