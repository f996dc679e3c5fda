"""A user's own data: a folder of images and a folder of masks, as a person or an annotation tool left
them, made into a DatasetInfo that separate() converts into data/<name>/ like any dataset.

    python DataSeparate.py --dataset pets --images photos/ --masks masks/ [--classes classes.json]

What the folders may hold, and what is done with it (every choice is said in the summary):
- Pairs by file stem: `x.jpg` with `x.png`, or with a usual mask suffix (`x_mask.png`, `x_gt.png`,
  `x_label.png`, ...). Images without a mask and masks without an image stop the run, counted and
  named, unless skip_unpaired. Files that are not images by their content (not their suffix) are
  skipped and listed. The user's folders are only read.
- Images of any mode Pillow reads become RGB; an EXIF orientation is applied (annotation tools draw
  on the rotated image), unless the mask fits only the unrotated one.
- Masks: values (mode L, P, I;16, or RGB with R = G = B) or colours (RGB). Without a classes file:
  two values are background / foreground (0/255 and 0/1 alike); more values are classes in the order
  of their values (with 255 as 'ignore' when the others are small, as in VOC); colours need a classes
  file (the error lists the colours found). With one: only the declared values or colours and the
  ignored ones. In-between values or colours (JPEG masks, antialiased edges) are snapped to the
  nearest declared one when they are at most snap_limit of the pixels; more stop the run.
- A mask of another size than its image stops the run, unless resize_masks and the same aspect
  ratio: then it is resized with nearest neighbour.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..core.errors import DataError
from ..core.files import open_regular, plain_name
from .common import DatasetInfo, Pair, decode_image
from .labels import EXAMPLES, LabelPlan, plan_labels, tally

MASK_SUFFIXES = ("_mask", "_masks", "-mask", "_gt", "_label", "_labels", "_labelids", "_seg", "_segmentation",
                 "_annotation", "_annot", "_m")
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO")  # what Pillow reads as photos
COPIED_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}  # an RGB image of these (so named) is copied; others become PNG
SNAP_LIMIT = 0.02                 # the share of pixels that may be snapped to a declared value or colour
# ----------------------------------------------------------------------------- finding the pairs


def scan(folder: Path, what: str) -> tuple[dict[str, Path], list[Path]]:
    """(stem -> image file, files that are not images) of a folder's top level; DataError when the
    folder is missing or two images share a stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{what} {folder} is not a folder; give the folder that holds the files")
    found, others = {}, []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            continue
        if entry.is_symlink() or not image_format(path):
            others.append(path)
            continue
        stem = plain_name(path.stem, f"{what} {folder}")
        if stem in found:
            raise DataError(f"{found[stem]} and {path} in {what} {folder} have the same name {stem!r}: they cannot "
                            f"be told apart as pairs. Rename or remove one")
        found[stem] = path
    return found, others


def image_format(path: Path) -> str | None:
    """Pillow's name of the file's image format, read from its header (not its suffix), or None."""
    try:
        with open_regular(path, "file") as f, Image.open(f) as image:
            return image.format if image.format in IMAGE_FORMATS else None
    except (OSError, DataError, SyntaxError, ValueError, Image.DecompressionBombError):
        return None


def mask_stem(stem: str, images: dict[str, Path]) -> str:
    """The image stem a mask's stem names: itself, or itself less a usual mask suffix."""
    if stem in images:
        return stem
    lower = stem.lower()
    for suffix in MASK_SUFFIXES:
        if lower.endswith(suffix) and stem[: -len(suffix)] in images:
            return stem[: -len(suffix)]
    return stem


def find_pairs(images_dir: Path, masks_dir: Path | None, split: str, skip_unpaired: bool,
               said: list[str]) -> list[Pair]:
    images, others = scan(images_dir, "--images" if split != "val" else "--val-images")
    if others:
        said.append(f"skipped {len(others)} file(s) in {images_dir} that are not images: "
                    + ", ".join(p.name for p in others[:EXAMPLES]) + (" ..." if len(others) > EXAMPLES else ""))
    if masks_dir is None:
        return [Pair(stem, path, None) for stem, path in images.items()]
    masks, mask_others = scan(masks_dir, "--masks" if split != "val" else "--val-masks")
    if mask_others:
        said.append(f"skipped {len(mask_others)} file(s) in {masks_dir} that are not images: "
                    + ", ".join(p.name for p in mask_others[:EXAMPLES]))
    by_image = {}
    lonely_masks = []
    for stem, path in masks.items():
        key = mask_stem(stem, images)
        if key in images and key not in by_image:
            by_image[key] = path
        else:
            lonely_masks.append(path)
    lonely_images = [path for stem, path in images.items() if stem not in by_image]
    if lonely_images or lonely_masks:
        text = "; ".join(f"{len(paths)} {what} (e.g. {', '.join(p.name for p in paths[:EXAMPLES])})"
                         for paths, what in ((lonely_images, "image(s) without a mask"),
                                             (lonely_masks, "mask(s) without an image")) if paths)
        if not skip_unpaired:
            raise DataError(f"{split}: {text}. A mask pairs with the image of its stem (x.jpg with x.png, or "
                            f"x_mask.png, x_gt.png, x_label.png ...). Add or rename them, or pass --skip-unpaired "
                            f"to leave them out")
        said.append(f"{split}: left out {text}")
    return [Pair(stem, images[stem], by_image[stem]) for stem in sorted(by_image)]


# ----------------------------------------------------------------------------- reading masks and images


def mask_pixels(path: Path) -> np.ndarray:
    """H x W values or H x W x 3 colours of a mask file; DataError for what no mask can be."""
    image = decode_image(path, "mask")
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):  # (grey or colour: decided over all masks)
        return np.asarray(image.convert("RGB"))
    if image.mode in ("LA", "PA"):  # (values and their transparency: the values)
        image = image.getchannel(0)
    array = np.asarray(image)
    if array.ndim != 2:
        raise DataError(f"{path}: mask of mode {image.mode!r} has {array.shape[2]} channels; a mask is greyscale, "
                        f"palette or RGB")
    if array.dtype.kind not in "ub" and not (array.dtype.kind == "i" and array.min(initial=0) >= 0):
        raise DataError(f"{path}: mask of mode {image.mode!r} holds {array.dtype} values; a mask holds whole "
                        f"numbers (a class value a pixel) or colours. Save it as a greyscale, palette or RGB PNG")
    return array.astype(np.int64)


def oriented_size(path: Path) -> tuple[tuple[int, int], tuple[int, int], int, tuple[str, str]]:
    """(size as stored, size after its EXIF orientation, the orientation tag: 1 when none, (mode,
    format)), from the image's header."""
    with open_regular(path, "image") as f, Image.open(f) as image:
        size, kind = image.size, (image.mode, image.format)
        try:
            orientation = image.getexif().get(0x0112, 1)
        except (SyntaxError, ValueError, TypeError, OSError):  # a damaged EXIF block: shown as stored
            orientation = 1
    turned = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    return size, turned, orientation if orientation in range(1, 9) else 1, kind


def same_aspect(mask: tuple[int, int], image: tuple[int, int]) -> bool:
    """Whether a mask of `mask` size is the image scaled by one factor (its height within a pixel of
    the width's scale, and the two scales within 5 % of each other: a 1x1 mask fits no photo)."""
    sx, sy = mask[0] / image[0], mask[1] / image[1]
    return abs(mask[1] - image[1] * sx) <= 1 and abs(sx - sy) <= 0.05 * max(sx, sy)


# ----------------------------------------------------------------------------- the dataset


@dataclass
class Options:
    """How DataSeparate.py was asked to prepare a user's data (dataset.json records them: a run with
    other options redoes it only with --force)."""
    source: str                        # "folders", "labelme" or "coco"
    images: Path | None = None
    masks: Path | None = None          # (--labelme: its folder; --coco: the JSON file)
    classes: Path | None = None
    val_images: Path | None = None
    val_masks: Path | None = None
    test_images: Path | None = None
    val_fraction: float = 0.15
    split_seed: int = 0
    skip_unpaired: bool = False
    resize_masks: bool = False
    snap_limit: float = SNAP_LIMIT

    def recorded(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self).items()}


def folder_splits(opt: Options, said: list[str]) -> dict[str, list[Pair]]:
    """The pairs of the user's folders: train, val when given, test when given."""
    if (opt.val_images is None) != (opt.val_masks is None):
        raise DataError("give --val-images and --val-masks together (a validation split of your own), or neither "
                        "(a random share of --images becomes the validation split: --val-fraction)")
    splits = {"train": find_pairs(opt.images, opt.masks, "train", opt.skip_unpaired, said)}
    if opt.val_images is not None:
        splits["val"] = find_pairs(opt.val_images, opt.val_masks, "val", opt.skip_unpaired, said)
    return splits


def own_dataset(name: str, splits: dict[str, list[Pair]], opt: Options, folders: tuple[Path, ...],
                classes: dict | None, said: list[str]) -> tuple[DatasetInfo, dict]:
    """(the DatasetInfo separate() converts, the options dataset.json records) of a user's pairs;
    without a "val" split, a random share of train (opt.val_fraction) becomes it."""
    if not 0 < opt.val_fraction < 1 or not 0 <= opt.snap_limit < 1:
        raise DataError(f"--val-fraction must be between 0 and 1 (got {opt.val_fraction}) and --snap-limit from 0 "
                        f"to below 1 (got {opt.snap_limit})")
    splits = dict(splits)
    if "val" not in splits:
        pairs = splits["train"]
        order = np.random.default_rng(opt.split_seed).permutation(len(pairs))
        count = max(1, round(len(pairs) * opt.val_fraction)) if len(pairs) > 1 else 0
        splits["train"] = [pairs[i] for i in sorted(order[count:])]
        splits["val"] = [pairs[i] for i in sorted(order[:count])]
        said.append(f"validation: {count} of {len(pairs)} pairs drawn at random (--val-fraction {opt.val_fraction}, "
                    f"--split-seed {opt.split_seed})")
    if opt.test_images is not None:
        splits["test"] = find_pairs(opt.test_images, None, "test", opt.skip_unpaired, said)
    if not splits["train"] or not splits["val"]:
        raise DataError(f"{len(splits['train'])} training and {len(splits['val'])} validation pairs: each split needs "
                        f"at least one image with its mask")
    plan, turned, resized = survey(splits, classes, opt.resize_masks, opt.snap_limit, said)
    options = opt.recorded()
    folders = folders + ((opt.test_images,) if opt.test_images is not None else ())
    info = DatasetInfo(name=name, classes=tuple(plan.classes), palette=tuple(plan.palette), archives=(),
                       list_pairs=partial(given_splits, splits), read_label=partial(planned_label, plan),
                       make_synthetic=no_synthetic, options=tuple(options), folders=folders,
                       prepare_image=partial(prepared_image, frozenset(turned)), resize_masks=opt.resize_masks,
                       notes={"source": f"your own data ({opt.source})", "decided": said, "masks_resized": resized})
    return info, options


# (module-level functions bound with partial: separate()'s worker processes receive the DatasetInfo pickled)
def given_splits(splits: dict, raw_root: Path, **_) -> dict:
    return splits


def planned_label(plan: LabelPlan, path: Path) -> np.ndarray:
    pixels = mask_pixels(path)
    if plan.kind == "values" and pixels.ndim == 3:  # (grey RGB masks: one_kind found every colour grey)
        pixels = pixels[..., 0]
    elif plan.kind == "colours" and pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return plan.label(pixels)


def no_synthetic(downloads: Path, seed: int = 0):
    raise DataError("your own data has no synthetic archive")


def survey(splits: dict[str, list[Pair]], classes: dict | None, resize_masks: bool, snap_limit: float,
           said: list[str]) -> tuple[LabelPlan, set, int]:
    """One pass over the pairs before any is written: the masks' values or colours, the images' modes
    and orientations, and the sizes of masks against images. Returns (the LabelPlan, the images to turn
    by their EXIF orientation, the number of masks to resize); DataError for sizes that do not fit."""
    values, colours, where, modes = {}, {}, {}, {}
    turned, misfits, resized, sizes = set(), [], 0, []
    for split, pairs in splits.items():
        for pair in pairs:
            stored, rotated, orientation, (mode, fmt) = oriented_size(pair.image)
            sizes.append(stored)
            if mode != "RGB" or fmt not in COPIED_FORMATS:
                modes[(mode, fmt)] = modes.get((mode, fmt), 0) + 1
            if pair.mask is None:
                if orientation != 1:
                    turned.add(pair.image)
                continue
            pixels = mask_pixels(pair.mask)
            tally(pixels, colours if pixels.ndim == 3 else values, where, pair.mask.name)
            size = (pixels.shape[1], pixels.shape[0])
            if orientation != 1 and (size == rotated or size != stored):  # the mask was drawn on the turned image
                turned.add(pair.image)
            fits = rotated if pair.image in turned else stored
            if size != fits:
                if resize_masks and same_aspect(size, fits):
                    resized += 1
                else:
                    misfits.append(f"{pair.mask.name} {size[0]}x{size[1]} for {pair.image.name} {fits[0]}x{fits[1]}")
    if misfits:
        advice = (" Masks of the same aspect ratio are resized (nearest neighbour) with --resize-masks."
                  if not resize_masks else " --resize-masks resizes only masks of the image's aspect ratio.")
        raise DataError(f"{len(misfits)} mask(s) have another size than their image, e.g. "
                        f"{'; '.join(misfits[:EXAMPLES])}.{advice}")
    values, colours, where = one_kind(values, colours, where, classes)
    plan = plan_labels(values, colours, where, classes, snap_limit)
    said += plan.said
    widths, heights = zip(*sizes)
    said.append(f"image sizes: width {min(widths)} to {max(widths)}, height {min(heights)} to {max(heights)} "
                f"(median {int(np.median(widths))}x{int(np.median(heights))})")
    if modes:
        said.append("images converted to RGB PNG: " + ", ".join(f"{n} of mode {m} ({fmt})"
                                                                for (m, fmt), n in sorted(modes.items())))
    if turned:
        said.append(f"{len(turned)} image(s) turned by their EXIF orientation, as their masks were drawn")
    if resized:
        said.append(f"{resized} mask(s) resized to their image (nearest neighbour, --resize-masks)")
    return plan, turned, resized


def one_kind(values: dict, colours: dict, where: dict, classes: dict | None) -> tuple[dict, dict, dict]:
    """The masks' pixel counts as values or as colours, decided over all masks: RGB masks whose every
    colour is grey (and no classes file of colours) hold values; greyscale masks among colour ones (an
    unannotated frame of a colour export) hold grey colours."""
    grey = all(r == g == b for r, g, b in colours)
    if colours and grey and (classes is None or classes["kind"] == "values"):
        as_value = {key: (key[0],) for key in colours}
    elif colours:
        as_value = {}
        for (v,) in values:
            if v > 255:
                raise DataError(f"some masks are colour images and some hold values above 255 "
                                f"({', '.join(where[(v,)][:EXAMPLES])}); give masks of one kind")
        colours = {**colours}
        for (v,), n in values.items():
            colours[(v, v, v)] = colours.get((v, v, v), 0) + n
            where.setdefault((v, v, v), where[(v,)])
        return {}, colours, where
    else:
        return values, colours, where
    merged = dict(values)
    for key, n in colours.items():
        merged[as_value[key]] = merged.get(as_value[key], 0) + n
        where.setdefault(as_value[key], where[key])
    return merged, {}, where


def prepared_image(turned: frozenset, path: Path) -> Image.Image | None:
    """The image to write, or None when the file is copied as it is (an RGB JPEG or PNG, not turned)."""
    turn = path in turned
    image = decode_image(path)
    if image.mode == "RGB" and not turn and COPIED_FORMATS.get(image.format) == path.suffix.lower().replace("jpeg", "jpg"):
        return None
    if turn:
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit greyscale: its top 8 bits
        array = np.asarray(image).astype(np.int64)
        image = Image.fromarray((array >> 8 if array.max(initial=0) > 255 else array).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")
