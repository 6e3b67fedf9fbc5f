"""Render labeled RGB images of 16 symbol classes: a glyph in a font, in a random colour, on a cut of a real picture.

    .venv/bin/python scripts/render_symbols.py --split train --size 32 --per-class 1000 --out runs/symbols/train-32

The data of the S32 and S96 benches (issue #27; docs/method.md, "New RGB benches"). Writes OUT/<class>/<i>.png, the
class-folder tree that edgedistill's `eval.labeled` and scripts/train_symbols_teacher.py read, and OUT/render.json:
the settings, the fonts and pictures used, the command and a sha256 over every image written.

What varies between splits is held out, not only which images are drawn:

- `train` and `dev` draw glyphs from the DejaVu fonts (fonts-dejavu-core, fonts-dejavu-extra) and backgrounds from the
  pictures the built-in `natural-patches` pool source cuts its patches from (scikit-image's sample photos listed in
  edgedistill.inputs.builtin.SKIMAGE_PHOTOS, opencv-doc's in OPENCV_DOC_PHOTOS). They share fonts and pictures and
  differ in their random streams, so no image is in both.
- `report` draws glyphs from the Liberation fonts (fonts-liberation) and backgrounds from REPORT_PICTURES: pictures that
  neither train/dev nor natural-patches reads (scikit-image's stereo_motorcycle; opencv-doc's smarties, pca_test1,
  Blender_Suzanne1/2 and HappyFish). So neither the teacher (trained on `train`), nor tuning (on `dev`), nor a
  distillation pool of natural-patches ever sees a report font or a report picture, even unlabeled.

Every image is drawn from its own random stream, numpy.random.default_rng([seed, split, class, index]): the same
arguments give the same files on any machine with the same fonts, pictures and library versions (render.json lists
them), and an image does not depend on how many others are rendered. The glyph: a font of the split, rotation within
+-20 degrees, horizontal stretch 0.85-1.15, height 50-90% of the image, anywhere inside it, a colour that contrasts
with the background under it, sometimes an outline, opacity 0.8-1. The background: a square crop of a picture of the
split at a log-uniform scale, mirrored half the time, per-channel gains. Then brightness, contrast and saturation
jitter, a Gaussian blur on 60% of the images, rendering at `canvas` pixels, an antialiased resize to `--size` and
Gaussian pixel noise.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: the repository's edgedistill, not an installed copy

from edgedistill.inputs.builtin import OPENCV_DOC_DIR, OPENCV_DOC_PHOTOS, SKIMAGE_PHOTOS  # noqa: E402

GENERATOR_VERSION = 1
# (class name, glyph); the class name is the folder name and the teacher's class name
CLASSES = [
    ("A", "A"),
    ("B", "B"),
    ("D", "D"),
    ("E", "E"),
    ("F", "F"),
    ("G", "G"),
    ("H", "H"),
    ("K", "K"),
    ("M", "M"),
    ("P", "P"),
    ("R", "R"),
    ("T", "T"),
    ("amp", "&"),
    ("at", "@"),
    ("hash", "#"),
    ("question", "?"),
]
CLASS_NAMES = [name for name, _ in CLASSES]
SPLITS = {"train": 1, "dev": 2, "report": 3}  # the split's number in every image's seed
FONT_DIR = Path("/usr/share/fonts/truetype")
FONT_FAMILIES = {"train": "DejaVu", "dev": "DejaVu", "report": "Liberation"}
FONT_PACKAGES = {"DejaVu": "fonts-dejavu-core (and fonts-dejavu-extra)", "Liberation": "fonts-liberation"}
# Backgrounds held out for `report`: pictures natural-patches never reads (checked in pictures()), nor train/dev.
REPORT_PICTURES = {
    "skimage": ["stereo_motorcycle"],  # both views of the stereo pair
    "opencv-doc": ["smarties.png", "pca_test1.jpg", "Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg", "HappyFish.jpg"],
}
TRAIN_PICTURES = {"skimage": list(SKIMAGE_PHOTOS), "opencv-doc": list(OPENCV_DOC_PHOTOS)}
GLYPH_POINTS = 160  # glyph masks are rendered once per font and class at this size, then rotated and scaled
MIN_CROP = 48  # smallest background crop side, in picture pixels


class RenderError(SystemExit):
    """A one-line reason the split cannot be rendered here (a SystemExit, so the command prints just the line)."""


def canvas_side(size: int) -> int:
    """Images are drawn at this side, then resized to `size` with antialiasing."""
    return max(128, 2 * size)


# ---------------------------------------------------------------------------------------------- fonts


def fonts(split: str, font_dir: Path = FONT_DIR) -> list[Path]:
    """The split's TrueType fonts found here, sorted by name: those of its family that hold every class's glyph."""
    family = FONT_FAMILIES[split]
    found = sorted(font_dir.rglob(f"{family}*.ttf"), key=lambda p: p.name) if font_dir.is_dir() else []
    usable = [path for path in found if _has_glyphs(path)]
    if not usable:
        listed = sorted(p.name for p in font_dir.rglob("*.ttf")) if font_dir.is_dir() else []
        raise RenderError(
            f"render_symbols: no {family} TrueType font with all {len(CLASSES)} glyphs under {font_dir} for split "
            f"{split!r} (found {', '.join(listed[:6]) or 'no .ttf file'}{', ...' if len(listed) > 6 else ''}): "
            f"apt-get install {FONT_PACKAGES[family]}"
        )
    return usable


def _has_glyphs(path: Path) -> bool:
    try:
        from fontTools.ttLib import TTFont
    except ImportError:  # without fontTools, trust the font
        return True
    try:
        cmap = TTFont(str(path), lazy=True).getBestCmap() or {}
    except Exception:
        return False
    return all(ord(glyph) in cmap for _, glyph in CLASSES)


@functools.cache
def glyph_mask(font: str, glyph: str):
    """The glyph as a tight 8-bit coverage mask (PIL image, mode L), rendered once per font."""
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(font, GLYPH_POINTS)
    left, top, right, bottom = face.getbbox(glyph)
    pad = 4
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), glyph, fill=255, font=face)
    return mask.crop(mask.getbbox())


# ---------------------------------------------------------------------------------------------- pictures


def pictures(split: str) -> list[str]:
    """The names of the split's background pictures found here (`skimage:NAME`, `opencv-doc:FILE:BYTES`), in a fixed
    order; report's are checked to be held out from train/dev and from natural-patches."""
    chosen = REPORT_PICTURES if split == "report" else TRAIN_PICTURES
    if split == "report":
        overlap = (set(REPORT_PICTURES["skimage"]) & set(SKIMAGE_PHOTOS)) | (set(REPORT_PICTURES["opencv-doc"]) & set(OPENCV_DOC_PHOTOS))
        if overlap:  # natural-patches' lists changed: the report pictures would be in a pool
            raise RenderError(f"render_symbols: report pictures {sorted(overlap)} are read by natural-patches; choose others")
    names = []
    try:
        import skimage  # noqa: F401

        names += [f"skimage:{name}" for name in chosen["skimage"]]
    except ImportError:
        pass
    for file in chosen["opencv-doc"]:
        path = OPENCV_DOC_DIR / file
        if path.is_file():
            names.append(f"opencv-doc:{file}:{path.stat().st_size}")
    names = [name for name in names if load_picture(name)]
    if not names:
        raise RenderError(
            f"render_symbols: no background picture for split {split!r}: pip install scikit-image, apt-get install opencv-doc"
        )
    return names


@functools.cache
def load_picture(name: str) -> tuple:
    """The frames of one background source as RGB PIL images (a stereo pair has two); () when it cannot be read."""
    from PIL import Image

    kind, rest = name.split(":", 1)
    arrays: list[np.ndarray] = []
    try:
        if kind == "skimage":
            import skimage.data

            data = getattr(skimage.data, rest)()
            arrays = [a for a in (data if isinstance(data, tuple) else (data,)) if a.ndim == 3 or a.dtype == np.uint8][:2]
        else:
            with Image.open(OPENCV_DOC_DIR / rest.split(":")[0]) as image:
                arrays = [np.asarray(image.convert("RGB"))]
    except Exception:  # a sample this scikit-image would download, or an unreadable file
        return ()
    frames = []
    for a in arrays:
        a = np.repeat(a[:, :, None], 3, axis=2) if a.ndim == 2 else a[:, :, :3]
        if min(a.shape[:2]) >= MIN_CROP:
            frames.append(Image.fromarray(np.ascontiguousarray(a).astype(np.uint8)))
    return tuple(frames)


# ---------------------------------------------------------------------------------------------- one image


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def render_image(class_index: int, index: int, split: str, size: int, seed: int, font_files: list[Path], scenes: list[str]) -> np.ndarray:
    """One image, (size, size, 3) uint8, from its own random stream."""
    from PIL import Image, ImageEnhance, ImageFilter

    rng = np.random.default_rng([seed, SPLITS[split], class_index, index])
    side = canvas_side(size)
    # background: a square crop at a log-uniform scale, mirrored half the time, per-channel gains
    frames = load_picture(scenes[rng.integers(len(scenes))])
    picture = frames[rng.integers(len(frames))]
    width, height = picture.size
    largest = min(width, height)
    crop = int(round(np.exp(rng.uniform(np.log(max(MIN_CROP, largest / 6)), np.log(largest)))))
    left, top = int(rng.integers(width - crop + 1)), int(rng.integers(height - crop + 1))
    background = picture.resize((side, side), Image.Resampling.BILINEAR, box=(left, top, left + crop, top + crop))
    if rng.random() < 0.5:
        background = background.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    canvas = np.asarray(background, dtype=np.float32) * rng.uniform(0.75, 1.25, size=3)
    # glyph: font, rotation, stretch, scale, position
    mask = glyph_mask(str(font_files[rng.integers(len(font_files))]), CLASSES[class_index][1])
    mask = mask.rotate(rng.uniform(-20, 20), resample=Image.Resampling.BICUBIC, expand=True)
    stretch = rng.uniform(0.85, 1.15)
    long_side = rng.uniform(0.5, 0.9) * side
    scale = long_side / max(mask.width * stretch, mask.height)
    w, h = max(1, round(mask.width * stretch * scale)), max(1, round(mask.height * scale))
    mask = mask.resize((w, h), Image.Resampling.LANCZOS)
    x, y = int(rng.integers(side - w + 1)), int(rng.integers(side - h + 1))
    alpha = np.zeros((side, side), dtype=np.float32)
    alpha[y : y + h, x : x + w] = np.asarray(mask, dtype=np.float32) / 255
    # colour: random, redrawn until its luma differs from the background under the glyph by 80 (else black or white)
    under = float(_luma(np.clip(canvas[y : y + h, x : x + w], 0, 255)).mean())
    colour = None
    for _ in range(32):
        candidate = rng.integers(0, 256, size=3).astype(np.float32)
        if abs(float(_luma(candidate)) - under) >= 80:
            colour = candidate
            break
    if colour is None:
        colour = np.full(3, 0.0 if under > 127 else 255.0, dtype=np.float32)
    if rng.random() < 0.3:  # an outline in black or white, whichever contrasts with the glyph
        grow = 2 * max(1, side // 64) + 1
        ring = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.MaxFilter(grow))
        ring_alpha = np.asarray(ring, dtype=np.float32) / 255
        edge = np.full(3, 0.0 if _luma(colour) > 127 else 255.0, dtype=np.float32)
        canvas = canvas * (1 - ring_alpha[..., None]) + edge * ring_alpha[..., None]
    opacity = rng.uniform(0.8, 1.0)
    canvas = canvas * (1 - opacity * alpha[..., None]) + colour * (opacity * alpha[..., None])
    image = Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))
    # global jitter, blur, resize, noise
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.75, 1.25))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.6, 1.4))
    blur = rng.random() < 0.6
    radius = rng.uniform(0.3, 1.2) * side / size
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(radius))
    image = image.resize((size, size), Image.Resampling.LANCZOS)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(0, 5), size=(size, size, 3))
    return np.clip(noisy, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------------------------------------- a split


def _render_class(job: tuple) -> list[str]:
    from PIL import Image

    out, class_index, per_class, split, size, seed, font_files, scenes = job
    folder = Path(out) / CLASSES[class_index][0]
    folder.mkdir(parents=True, exist_ok=True)
    digests = []
    for i in range(per_class):
        path = folder / f"{i:05d}.png"
        Image.fromarray(render_image(class_index, i, split, size, seed, font_files, scenes)).save(path, compress_level=1)
        digests.append(hashlib.sha256(path.read_bytes()).hexdigest())
    return digests


def render(out: Path, split: str, size: int, per_class: int, seed: int = 0, workers: int = 1, overwrite: bool = False) -> dict:
    """Render `per_class` images of every class of `split` at `size` into out/<class>/<i>.png and return (and write as
    out/render.json) what was rendered."""
    if split not in SPLITS:
        raise RenderError(f"render_symbols: unknown split {split!r}; choose from {', '.join(SPLITS)}")
    if size < 8 or per_class < 1:
        raise RenderError("render_symbols: --size must be at least 8 and --per-class at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RenderError(f"render_symbols: {out} is not empty; pass --overwrite to replace an earlier rendering")
        if not (out / "render.json").is_file():
            raise RenderError(f"render_symbols: {out} holds no render.json; not removing a folder this script did not write")
        shutil.rmtree(out)
    font_files, scenes = fonts(split), pictures(split)
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(out), c, per_class, split, size, seed, font_files, scenes) for c in range(len(CLASSES))]
    if workers > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(workers) as pool:
            digests = pool.map(_render_class, jobs)
    else:
        digests = [_render_class(job) for job in jobs]
    fingerprint = hashlib.sha256("\n".join(d for class_digests in digests for d in class_digests).encode()).hexdigest()
    facts = {
        "generator": f"scripts/render_symbols.py v{GENERATOR_VERSION}",
        "split": split,
        "size": size,
        "canvas": canvas_side(size),
        "per_class": per_class,
        "seed": seed,
        "images": per_class * len(CLASSES),
        "classes": [{"name": name, "glyph": glyph} for name, glyph in CLASSES],
        "font_family": FONT_FAMILIES[split],
        "fonts": [p.name for p in font_files],
        "backgrounds": scenes,
        "held_out": "report's fonts (Liberation) and pictures are read by neither train/dev nor the natural-patches pool"
        if split == "report"
        else "shares fonts (DejaVu) and pictures (natural-patches') with the other of train/dev; none with report",
        "images_sha256": fingerprint,
        "versions": _versions(),
        "command": " ".join(shlex.quote(a) for a in [os.path.relpath(sys.executable, ROOT), *sys.argv]),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "render.json").write_text(json.dumps(facts, indent=1) + "\n")
    return facts


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("pillow", "numpy", "scikit-image", "fonttools"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--split", required=True, choices=list(SPLITS), help="train and dev share fonts and pictures; report's are held out"
    )
    parser.add_argument("--size", type=int, required=True, help="image side in pixels (the benches use 32 and 96)")
    parser.add_argument("--per-class", type=int, required=True, help="images per class (16 classes)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write <class>/<i>.png and render.json into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (one class each at a time); the files do not depend on it")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier rendering in --out")
    args = parser.parse_args()
    facts = render(args.out, args.split, args.size, args.per_class, args.seed, args.workers, args.overwrite)
    print(
        f"wrote {facts['images']} images ({args.split}, {args.size}x{args.size}) to {args.out} in {facts['seconds']} s; "
        f"{len(facts['fonts'])} {facts['font_family']} fonts, {len(facts['backgrounds'])} background sources; "
        f"sha256 {facts['images_sha256'][:16]}"
    )


if __name__ == "__main__":
    main()
