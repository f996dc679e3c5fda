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
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..files import MAX_JSON_BYTES, open_regular, plain_name, read_regular
from ..jsonfile import loads as json_loads
from .common import IGNORE_INDEX, DatasetInfo, Pair, decode_image

MASK_SUFFIXES = ("_mask", "_masks", "-mask", "_gt", "_label", "_labels", "_labelids", "_seg", "_segmentation",
                 "_annotation", "_annot", "_m")
IMAGE_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "MPO")  # what Pillow reads as photos
COPIED_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}  # an RGB image of these (so named) is copied; others become PNG
SNAP_LIMIT = 0.02                 # the share of pixels that may be snapped to a declared value or colour
EXAMPLES = 3                      # files named in a message
DIGITS = re.compile(r"[0-9]{1,5}")
# Binary masks saved as JPEG or antialiased: two main values, the lowest and the highest, hold this share
# of the pixels, and many values lie between them (a genuine index mask has a few classes in between)
BINARY_SHARE, NOISE_VALUES = 0.8, 8
COLOUR_NOISE = 40.0  # how far (RGB distance) a JPEG or blended colour may lie from a class colour or a blend


@dataclass
class Folders:
    """The user's folders: split -> (images folder, masks folder or None for a prediction-only split)."""
    splits: dict[str, tuple[Path, Path | None]]


@dataclass
class LabelPlan:
    """How mask pixels become class indices: each known source value (or colour) -> a class index
    (IGNORE_INDEX: ignored); other values are snapped to the nearest known one."""
    kind: str                          # "values" or "colours"
    known: np.ndarray                  # (K,) values or (K, 3) colours
    target: np.ndarray                 # (K,) class index of each
    classes: list[str]
    palette: list[tuple[int, int, int]]
    said: list[str] = field(default_factory=list)  # what was decided, for the summary

    def label(self, pixels: np.ndarray) -> np.ndarray:
        """A mask's pixels (H x W values or H x W x 3 colours) -> H x W uint8 class indices."""
        unique, inverse = np.unique(packed(pixels), return_inverse=True)
        return self.target[nearest(unpacked(unique, pixels.ndim == 3), self.known)][inverse].reshape(
            pixels.shape[:2]).astype(np.uint8)


def packed(pixels: np.ndarray) -> np.ndarray:
    """One int64 a pixel: its value, or its colour as r * 65536 + g * 256 + b (np.unique is fast on these)."""
    if pixels.ndim == 3:
        rgb = pixels.astype(np.int64)
        return (rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2]).ravel()
    return pixels.astype(np.int64).ravel()


def unpacked(keys: np.ndarray, colour: bool) -> np.ndarray:
    """(N, 3) colours or (N, 1) values of packed keys."""
    keys = np.asarray(keys, dtype=np.int64)
    return np.stack([keys // 65536, keys // 256 % 256, keys % 256], 1) if colour else keys[:, None]


def nearest(points: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Index into `known` (K values or K x 3 colours) of the nearest one to each point (Euclidean)."""
    known = known.reshape(len(known), -1).astype(np.float64)
    distances = ((points[:, None, :].astype(np.float64) - known[None, :, :]) ** 2).sum(-1)
    return distances.argmin(1)


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
        (lonely_masks.append(path) if key not in images or key in by_image else by_image.__setitem__(key, path))
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
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        rgb = np.asarray(image.convert("RGB"))
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return rgb[..., 0] if grey else rgb
    if image.mode == "LA":
        image = image.getchannel("L")
    array = np.asarray(image)
    if array.dtype.kind not in "ub" and not (array.dtype.kind == "i" and array.min(initial=0) >= 0):
        raise DataError(f"{path}: mask of mode {image.mode!r} holds {array.dtype} values; a mask holds whole "
                        f"numbers (a class value a pixel) or colours. Save it as a greyscale, palette or RGB PNG")
    return array.astype(np.int64)


def oriented_size(path: Path) -> tuple[tuple[int, int], tuple[int, int], int]:
    """(size as stored, size after its EXIF orientation, the orientation tag: 1 when none)."""
    with open_regular(path, "image") as f, Image.open(f) as image:
        orientation = image.getexif().get(0x0112, 1)
        size = image.size
    turned = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    return size, turned, orientation if orientation in range(1, 9) else 1


def same_aspect(mask: tuple[int, int], image: tuple[int, int]) -> bool:
    """Whether a mask of `mask` size is the image scaled (rounded to whole pixels)."""
    return abs(mask[0] * image[1] - mask[1] * image[0]) <= max(image)


# ----------------------------------------------------------------------------- deciding the classes


def read_classes(path: Path) -> dict:
    """A classes file: ours (JSON: {"classes": [{"name": .., "value": v} or {"name": .., "colour": [r, g, b]},
    ...], "ignore": [values or colours]}), CVAT's labelmap.txt (`name:r,g,b::` a line) or Roboflow's
    _classes.csv (`Pixel Value, Class` a line); DataError naming the file and the entry that is wrong."""
    try:
        text = read_regular(path, "--classes", MAX_JSON_BYTES).decode("utf-8")
        spec = json_loads(text) if text.lstrip().startswith(("{", "[")) else other_class_file(text, path)
    except OSError as exc:
        raise DataError(f"--classes {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:  # (UnicodeDecodeError too)
        raise DataError(f"--classes {path} is not JSON ({exc})") from None
    entries = spec.get("classes") if isinstance(spec, dict) else None
    if not isinstance(entries, list) or not entries or len(entries) > IGNORE_INDEX:
        raise DataError(f"--classes {path} must be a JSON object with \"classes\": a list of 1 to {IGNORE_INDEX} "
                        f"entries such as {{\"name\": \"pet\", \"value\": 1}} or {{\"name\": \"road\", \"colour\": "
                        f"[128, 64, 128]}}")
    kinds = set()
    for number, entry in enumerate(entries, 1):
        named = isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"].strip() != ""
        if named and is_value(entry.get("value")) and "colour" not in entry:
            kinds.add("values")
        elif named and is_colour(entry.get("colour")) and "value" not in entry:
            kinds.add("colours")
        else:
            raise DataError(f"--classes {path}: class {number} must have a \"name\" (text) and either a \"value\" "
                            f"(0 to 65535) or a \"colour\" ([r, g, b], each 0 to 255), got {str(entry)[:80]}")
    ignore = spec.get("ignore", [])
    if len(kinds) > 1 or not isinstance(ignore, list) or not all(
            is_value(v) if "values" in kinds else is_colour(v) for v in ignore):
        raise DataError(f"--classes {path}: give every class a value, or every class a colour, and \"ignore\" as a "
                        f"list of the same kind")
    return {"kind": kinds.pop(), "names": [e["name"].strip() for e in entries],
            "known": [e.get("value", e.get("colour")) for e in entries], "ignore": ignore}


def other_class_file(text: str, path: Path) -> dict:
    """CVAT's labelmap.txt or Roboflow's _classes.csv as our classes file's JSON."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    entries = []
    for number, line in enumerate(lines, 1):
        if ":" in line:  # CVAT: name:r,g,b:parts:actions
            name, rgb = line.split(":")[:2]
            parts = rgb.split(",")
            if len(parts) != 3 or not all(DIGITS.fullmatch(p.strip()) for p in parts):
                raise DataError(f"--classes {path} line {number}: {line[:60]!r} is not CVAT's 'name:r,g,b::'")
            entries.append({"name": name, "colour": [int(p) for p in parts]})
        elif "," in line:  # Roboflow: Pixel Value, Class (a header first)
            value, name = (part.strip() for part in line.split(",", 1))
            if number == 1 and not DIGITS.fullmatch(value):
                continue
            if not DIGITS.fullmatch(value):
                raise DataError(f"--classes {path} line {number}: {line[:60]!r} is not Roboflow's 'value, class'")
            entries.append({"name": name, "value": int(value)})
        else:
            raise DataError(f"--classes {path} line {number}: {line[:60]!r} is none of: our JSON, CVAT's labelmap.txt "
                            f"('name:r,g,b::'), Roboflow's _classes.csv ('value, class')")
    return {"classes": entries}


def is_value(v) -> bool:
    return type(v) is int and 0 <= v <= 65535


def is_colour(v) -> bool:
    return isinstance(v, list) and len(v) == 3 and all(type(x) is int and 0 <= x <= 255 for x in v)


def tally(pixels: np.ndarray, counts: dict, where: dict, name: str) -> None:
    """Add a mask's pixel counts per value (1-tuples) or colour (3-tuples) to `counts`, and its file
    name to `where` (the first few files that hold each)."""
    unique, number = np.unique(packed(pixels), return_counts=True)
    for key, n in zip(map(tuple, unpacked(unique, pixels.ndim == 3).tolist()), number.tolist()):
        counts[key] = counts.get(key, 0) + n
        files = where.setdefault(key, [])
        if len(files) < EXAMPLES:
            files.append(name)


def plan_labels(values: dict, colours: dict, where: dict, classes: dict | None, snap_limit: float) -> LabelPlan:
    """The LabelPlan for masks holding these pixel counts (value tuples -> pixels), from the classes file
    or, without one, from the values themselves."""
    if colours and (classes is None or classes["kind"] != "colours"):
        found = ", ".join(f"{list(c)}: {n} px" for c, n in sorted(colours.items(), key=lambda kv: -kv[1])[:20])
        raise DataError(f"the masks are colour (RGB) images ({len(colours)} colours, e.g. in "
                        f"{', '.join(where[next(iter(colours))][:EXAMPLES])}); give --classes FILE with a colour for "
                        f"each class, e.g. {{\"classes\": [{{\"name\": \"background\", \"colour\": [0, 0, 0]}}, ...]}}. "
                        f"Colours found, by pixels: {found}")
    if classes is not None and classes["kind"] == "colours" and not colours:
        raise DataError("the classes file gives a colour for each class, but the masks hold values (greyscale or "
                        "palette masks): give each class its \"value\" instead")
    counts = colours or values
    total = sum(counts.values())
    said = []
    if classes is not None:
        known = [tuple(k) if isinstance(k, list) else (k,) for k in classes["known"]]
        ignore = [tuple(k) if isinstance(k, list) else (k,) for k in classes["ignore"]]
        names, target = classes["names"], list(range(len(known))) + [IGNORE_INDEX] * len(ignore)
        known = known + ignore
        said.append(f"classes from the classes file: {', '.join(names)}")
    else:
        present = sorted(counts)
        ignore = [(IGNORE_INDEX,)] if (IGNORE_INDEX,) in counts and len(present) > 2 and \
            max(v for (v,) in present if v != IGNORE_INDEX) < IGNORE_INDEX - 1 else []
        classes_present = [v for v in present if v not in ignore]
        main = sorted(classes_present, key=lambda v: -counts[v])[:2]
        noisy_binary = (len(classes_present) >= 2 + NOISE_VALUES and set(main) == {classes_present[0], classes_present[-1]}
                        and sum(counts[v] for v in main) >= BINARY_SHARE * sum(counts[v] for v in classes_present))
        if len(classes_present) == 2 or noisy_binary:
            known, names = sorted(main), ["background", "foreground"]
            said.append(f"binary masks: value {known[0][0]} is background, {known[1][0]} foreground")
        elif len(classes_present) < 2:
            raise DataError(f"every mask holds only the value {classes_present[0][0] if classes_present else '?'}: "
                            f"nothing to learn. Check that --masks holds the masks")
        elif len(classes_present) > IGNORE_INDEX:
            raise DataError(f"the masks hold {len(classes_present)} different values, more than the {IGNORE_INDEX} "
                            f"classes a mask can have: they are not class masks (photos? JPEG-compressed masks?); "
                            f"give --classes FILE naming the values that are classes")
        else:
            known, names = classes_present, [f"class_{v}" for (v,) in classes_present]
            said.append(f"index masks: values {', '.join(str(v) for (v,) in known)} are classes "
                        f"{', '.join(names)} (a classes file names them)")
        if ignore:
            said.append(f"value {IGNORE_INDEX} is 'ignore' (not counted in training nor scores)")
        target = list(range(len(known))) + [IGNORE_INDEX] * len(ignore)
        known = known + ignore
    strays = {k: n for k, n in counts.items() if k not in set(known)}
    undeclared = {k: n for k, n in strays.items() if not in_between(k, known[:len(names)])}
    if undeclared:
        raise DataError(f"mask values neither declared nor ignored: {listed(undeclared, where)}. Declare them in "
                        f"--classes, as a class or as \"ignore\"")
    share = sum(strays.values()) / max(total, 1)
    if share > snap_limit:
        raise DataError(f"{100 * share:.2f}% of the mask pixels hold in-between values, more than --snap-limit "
                        f"{snap_limit}: {listed(strays, where)}. A JPEG or antialiased mask has a few; so many mean "
                        f"that these are no class masks of the declared classes (or raise --snap-limit)")
    if strays:
        said.append(f"snapped {100 * share:.3f}% of the mask pixels ({len(strays)} in-between values or colours) to "
                    f"the nearest class")
    palette = [tuple(int(c) for c in k) if len(k) == 3 else default_colour(i) for i, k in enumerate(known[:len(names)])]
    return LabelPlan("colours" if colours else "values", np.array(known), np.array(target), names, palette, said)


def in_between(point: tuple, classes: list[tuple]) -> bool:
    """Whether a value lies between two class values, or a colour near the line between its two
    nearest class colours (a blend, as antialiasing or JPEG make at edges) or near one of them."""
    if len(point) == 1:
        return min(classes)[0] < point[0] < max(classes)[0]
    known = np.array(classes, dtype=np.float64)
    p = np.array(point, dtype=np.float64)
    order = np.argsort(((known - p) ** 2).sum(1))
    a, b = known[order[0]], known[order[min(1, len(known) - 1)]]
    t = np.clip(np.dot(p - a, b - a) / max(np.dot(b - a, b - a), 1e-9), 0, 1)
    return bool(np.linalg.norm(p - a) <= COLOUR_NOISE or np.linalg.norm(p - (a + t * (b - a))) <= COLOUR_NOISE)


def listed(counts: dict, where: dict) -> str:
    """'9 (120 px, e.g. a.png, b.png), [1, 2, 3] (40 px, ...)' for the largest few."""
    return ", ".join(f"{list(k) if len(k) == 3 else k[0]} ({n} px, e.g. {', '.join(where[k][:EXAMPLES])})"
                     for k, n in sorted(counts.items(), key=lambda kv: -kv[1])[:8])


def default_colour(index: int) -> tuple[int, int, int]:
    """VOC's colour map: distinct colours for class indices (black for 0)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((index >> 0) & 1) << (7 - bit)
        g |= ((index >> 1) & 1) << (7 - bit)
        b |= ((index >> 2) & 1) << (7 - bit)
        index >>= 3
    return r, g, b


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
    return plan.label(mask_pixels(path))


def no_synthetic(downloads: Path, seed: int = 0):
    raise DataError("your own data has no synthetic archive")


def survey(splits: dict[str, list[Pair]], classes: dict | None, resize_masks: bool, snap_limit: float,
           said: list[str]) -> tuple[LabelPlan, set, int]:
    """One pass over the pairs before any is written: the masks' values or colours, the images' modes
    and orientations, and the sizes of masks against images. Returns (the LabelPlan, the images to turn
    by their EXIF orientation, the number of masks to resize); DataError for sizes that do not fit."""
    values, colours, where, modes = {}, {}, {}, {}
    turned, misfits, resized = set(), [], 0
    for split, pairs in splits.items():
        for pair in pairs:
            stored, rotated, orientation = oriented_size(pair.image)
            with open_regular(pair.image, "image") as f, Image.open(f) as image:
                if image.mode != "RGB" or image.format not in COPIED_FORMATS:
                    modes[(image.mode, image.format)] = modes.get((image.mode, image.format), 0) + 1
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
    if values and colours:
        raise DataError(f"some masks are colour images ({', '.join(where[next(iter(colours))][:EXAMPLES])}) and some "
                        f"hold values ({', '.join(where[next(iter(values))][:EXAMPLES])}); give masks of one kind")
    plan = plan_labels(values, colours, where, classes, snap_limit)
    said += plan.said
    if modes:
        said.append("images converted to RGB PNG: " + ", ".join(f"{n} of mode {m} ({fmt})"
                                                                for (m, fmt), n in sorted(modes.items())))
    if turned:
        said.append(f"{len(turned)} image(s) turned by their EXIF orientation, as their masks were drawn")
    if resized:
        said.append(f"{resized} mask(s) resized to their image (nearest neighbour, --resize-masks)")
    return plan, turned, resized


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
