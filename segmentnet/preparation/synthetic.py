"""Learnable synthetic scenes for the per-dataset archive generators.

A scene is a textured background with a few objects drawn on it; each object class has its own
shape and colour (with jitter), so a small network can learn to tell them apart in minutes.
Generators turn scenes into each dataset's exact official files and label encoding.
"""
from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# Fixed timestamp so that archives are byte-identical for the same seed.
ARCHIVE_MTIME = 1_336_694_400  # 2012-05-11


@dataclass(frozen=True)
class ObjectStyle:
    label: int                     # value written into the label map
    shape: str                     # ellipse | rectangle | triangle | diamond | circle | bar
    colour: tuple[int, int, int]   # mean RGB colour
    size: tuple[float, float] = (0.2, 0.45)  # object extent as a fraction of the image side


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Low-saturation gradient with noise and, sometimes, stripes: varied but never object-like."""
    grey = rng.uniform(60, 200)
    tint = rng.uniform(-25, 25, size=3)
    a, b = rng.uniform(-40, 40, size=2)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = grey + a * yy / height + b * xx / width
    img = base[..., None] + tint[None, None, :]
    if rng.random() < 0.4:
        period = rng.uniform(6, 20)
        img += 12 * np.sin(2 * np.pi * (xx if rng.random() < 0.5 else yy) / period)[..., None]
    img += rng.normal(0, 8, size=img.shape)
    return img


def _shape_mask(rng: np.random.Generator, style: ObjectStyle, height: int, width: int) -> np.ndarray:
    side = min(height, width)
    h = int(side * rng.uniform(*style.size))
    w = int(h * rng.uniform(0.8, 1.25))
    if style.shape == "ellipse":       # tall ellipse
        w = int(h * rng.uniform(0.45, 0.6))
    elif style.shape == "bar":         # wide flat bar
        h = int(w * rng.uniform(0.3, 0.4))
    h, w = max(h, 8), max(w, 8)
    top = int(rng.integers(0, max(height - h, 1)))
    left = int(rng.integers(0, max(width - w, 1)))
    box = (left, top, left + w - 1, top + h - 1)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    if style.shape in ("ellipse", "circle"):
        draw.ellipse(box, fill=1)
    elif style.shape in ("rectangle", "bar"):
        draw.rectangle(box, fill=1)
    elif style.shape == "triangle":
        draw.polygon([(left + w // 2, top), (left, top + h - 1), (left + w - 1, top + h - 1)], fill=1)
    elif style.shape == "diamond":
        cx, cy = left + w // 2, top + h // 2
        draw.polygon([(cx, top), (left + w - 1, cy), (cx, top + h - 1), (left, cy)], fill=1)
    else:
        raise ValueError(f"unknown shape {style.shape!r}")
    return np.asarray(canvas, dtype=bool)


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(radius):
        grown = out.copy()
        grown[1:, :] |= out[:-1, :]
        grown[:-1, :] |= out[1:, :]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def draw_scene(
    rng: np.random.Generator,
    height: int,
    width: int,
    styles: list[ObjectStyle],
    max_objects: int = 3,
    background_label: int = 0,
    border_label: int | None = None,
    border_width: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """Return an RGB uint8 image and its label map (uint8).

    With border_label set, a band around each object's outline gets that label, as VOC's 255
    'void' borders do.
    """
    image = _background(rng, height, width)
    label = np.full((height, width), background_label, dtype=np.uint8)
    border = np.zeros((height, width), dtype=bool)
    count = int(rng.integers(1, max_objects + 1))
    for style in rng.choice(np.array(styles, dtype=object), size=count):
        mask = _shape_mask(rng, style, height, width)
        colour = np.clip(np.array(style.colour) + rng.normal(0, 12, size=3), 0, 255)
        shade = rng.normal(0, 10, size=(height, width, 1))
        image[mask] = (colour[None, None, :] + shade)[mask]
        label[mask] = style.label
        if border_label is not None:
            outline = _dilate(mask, border_width) & _dilate(~mask, border_width)
            border &= ~mask  # a newer object hides the outline of an older one beneath it
            border |= outline
    if border_label is not None:
        label[border] = border_label
    return np.clip(image, 0, 255).astype(np.uint8), label


def scene_size(rng: np.random.Generator, low: int = 120, high: int = 180) -> tuple[int, int]:
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def palette_png(label: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """A palette ('P') PNG whose pixel values are the label indices."""
    image = Image.fromarray(label, mode="P")
    flat = [c for rgb in palette for c in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    return encode(image, "PNG")


def write_tar(path: Path, files: dict[str, bytes], compression: str = "") -> Path:
    """Write files (name -> bytes) as a deterministic tar (compression "" or "gz"), through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if compression not in ("", "gz"):
        raise ValueError(f"compression must be '' or 'gz', got {compression!r}")
    with open(tmp, "wb") as raw:
        # gzip's header holds a time and a name: fixed here, so the bytes depend on the files alone
        stream = gzip.GzipFile("", "wb", fileobj=raw, mtime=ARCHIVE_MTIME) if compression else nullcontext(raw)
        with stream as out, tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
            _add_members(tar, files)
    tmp.replace(path)
    return path


def _add_members(tar: tarfile.TarFile, files: dict[str, bytes]) -> None:
    dirs = sorted({str(Path(n).parent) for n in files} - {"."})
    for name in _with_parents(dirs):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, ARCHIVE_MTIME
        tar.addfile(info)
    for name in sorted(files):
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(files[name]), 0o644, ARCHIVE_MTIME
        tar.addfile(info, io.BytesIO(files[name]))


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=(2016, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16  # a regular file, as zip -r records it
            zf.writestr(info, files[name])
    tmp.replace(path)
    return path


def _with_parents(dirs: list[str]) -> list[str]:
    out = set()
    for d in dirs:
        parts = Path(d).parts
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return sorted(out)
