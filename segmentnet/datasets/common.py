"""What every dataset module provides: its description, split lists and pairs, and the checks of its
images and labels (separate.py converts a dataset into the common layout).

The common layout, written by DataSeparate.py:

    data/<name>/dataset.json
    data/<name>/<split>/images/<stem>.<jpg|png>
    data/<name>/<split>/masks/<stem>.png      palette PNG of class indices, 255 = ignore
    data/<name>/.segmentnet-owner.json        marks the folder as DataSeparate's (files.OWNER_FILE)

Every name that comes from the data (an id of a split list, a file name found by globbing) is
checked before any work: it must be a plain file name, the files it names must lie inside the raw
folder of their archive once links are resolved, it may name one pair of one split only (an image
in both train and val would leak into validation), and outputs are named by the tool itself
(<split>/images/<stem><suffix>), never by joining text from the data.
"""
from __future__ import annotations

import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..core.errors import DataError
from ..core.files import check_inside, plain_name
from ..preparation.archive import Archive

IGNORE_INDEX = 255  # the label of pixels that count for nothing (borders, padding, VOC's outlines)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TOOL = "DataSeparate"  # the owner recorded in the folders separate() writes


@dataclass(frozen=True)
class Pair:
    stem: str
    image: Path
    mask: Path | None  # None for unlabelled images (a prediction-only split)
    source: str = ""   # where the data named it ('<list> line N'); '' when found by globbing

    @property
    def origin(self) -> str:
        """What an error names: the split list's line, or the image file that was found."""
        return self.source or str(self.image)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    archives: tuple[Archive, ...]
    # raw root (data/raw) -> {split: [Pair]}; raises DataError when files are missing
    list_pairs: Callable[[Path], dict[str, list[Pair]]]
    # mask file -> uint8 array of class indices (255 = ignore), already checked
    read_label: Callable[[Path], np.ndarray]
    # downloads folder, seed -> paths of synthetic archives in the official layout
    make_synthetic: Callable[[Path, int], list[Path]]
    # keyword options list_pairs takes, set from DataSeparate flags (e.g. val_fraction where no
    # official validation split exists)
    options: tuple[str, ...] = ()
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    notes: dict = field(default_factory=dict)  # recorded in dataset.json as "source" (a user's own data)
    # a user's own data (datasets/own.py): the folders its files must lie in (instead of the archives'
    # raw folders), an image file -> the RGB image to write (None: copy the file), masks resized to
    # their image when of its aspect ratio
    folders: tuple[Path, ...] = ()
    prepare_image: Callable[[Path], "Image.Image | None"] | None = None
    resize_masks: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def raw_dir(data_dir: Path, archive: Archive) -> Path:
    return Path(data_dir) / "raw" / archive.stem


def read_list_lines(path: Path, folder: Path, what: str = "image ids") -> list[tuple[int, str]]:
    """The non-blank lines of a list file of the data (a split list), stripped, each with its line
    number (an error names it as '<list> line N'). The one opening of such a list, for every dataset:
    DataError for a list that is missing, outside `folder` (its archive's raw folder) through a link,
    not a regular file (a folder, or a fifo that would hang the read), unreadable, or not text
    (UTF-8). `what`: what its lines name, for the messages."""
    path = check_inside(folder, path, f"split list {path}")
    if not path.exists():
        raise DataError(f"{path} is missing: the extraction is incomplete; run DataExtract.py again")
    if not path.is_file():
        raise DataError(f"{path} is not a file (a folder, or a special file), but a split list is a text file "
                        f"of {what}, one a line. The extraction is not of the official archive: extract it again")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: the split list cannot be read ({exc.strerror}); check its permissions") from None
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        where = f"{path} line {number}"
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError(f"{where}: {raw[:60]!r} is not text (UTF-8); a split list holds {what}, one a "
                            f"line. The file is corrupt or was crafted: use the official data") from None
        if text:
            lines.append((number, text))
    return lines


def read_split_list(path: Path, folder: Path) -> list[tuple[str, str]]:
    """The ids of a split list (one a line; blank lines ignored), each with where it stands
    ('<list> line N'). DataError for a list that read_list_lines refuses, for an id that is not a
    plain file name, and for an id listed twice (it would count twice)."""
    ids, first = [], {}
    for number, name in read_list_lines(path, folder):
        where = f"{path} line {number}"
        plain_name(name, where)
        if name in first:
            raise DataError(f"{where}: the id {name!r} is listed again (first on line {first[name]}); each image "
                            f"is listed once, or it counts twice. Remove the repeated line, or use the official list")
        first[name] = number
        ids.append((name, where))
    return ids


def check_pairs(info: "DatasetInfo", data_dir: Path, splits: dict[str, list[Pair]]) -> None:
    """Before any work: every stem a plain name, named once per split and in one labelled split only
    (an image in train and val leaks into validation); every image and mask inside the raw folder of
    its archive (data/raw/<archive stem>) once links are resolved."""
    folders = list(info.folders) or [raw_dir(data_dir, spec) for spec in info.archives]
    labelled: dict[str, tuple[str, Pair]] = {}
    for split, pairs in splits.items():
        seen: dict[str, Pair] = {}
        for pair in pairs:
            plain_name(pair.stem, pair.origin)
            for path in (pair.image, pair.mask):
                if path is not None:
                    check_readable(folders, path, pair.origin)
            if pair.stem in seen:
                raise DataError(f"{pair.origin}: {pair.stem!r} is named twice in split {split!r} (also by "
                                f"{seen[pair.stem].origin}); each image may be in a split once. Remove one of them")
            seen[pair.stem] = pair
            if pair.mask is not None and pair.stem in labelled:
                other_split, other = labelled[pair.stem]
                raise DataError(f"{pair.stem!r} is in split {other_split!r} ({other.origin}) and in split "
                                f"{split!r} ({pair.origin}): an image in two splits leaks from training into "
                                f"validation and makes its scores meaningless. Remove it from one of the lists")
        labelled.update({stem: (split, pair) for stem, pair in seen.items() if pair.mask is not None})


def check_readable(folders: list[Path], path: Path, where: str) -> Path:
    """`path` if it lies inside the raw folder it was built under, once links are resolved."""
    for folder in folders:
        if Path(path).is_relative_to(folder):
            return check_inside(folder, path, where)
    raise DataError(f"{where}: {path} is outside the raw folders of this dataset "
                    f"({', '.join(map(str, folders))}); refusing to read it")


# ----------------------------------------------------------------------------- label checks


def read_index_mask(path: Path, num_classes: int, binary: bool = False, hint: str = "") -> np.ndarray:
    """Read a mask whose pixel values are class indices (palette or greyscale PNG), and check it.

    Says what is wrong and how to fix it for the common mistakes: colour masks, 0/255 masks where
    0/1 are expected, values out of range.
    """
    array = read_index_array(path, hint)
    check_label_values(array, num_classes, path, binary=binary, hint=hint)
    return array.astype(np.uint8)


def decode_image(path: Path, what: str = "image") -> Image.Image:
    """The decoded image (file closed); DataError naming the file when it is missing, cannot be
    decoded, or declares more pixels than Pillow's limit (Image.MAX_IMAGE_PIXELS): a tiny file can
    declare 30000x30000 pixels (a decompression bomb), which must not be allocated."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return image
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file missing") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: the {what} declares more pixels than any image of a dataset ({exc}); the file "
                        f"is corrupt or crafted (a decompression bomb): replace it") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise DataError(f"{path}: the {what} cannot be decoded ({exc}); the file is truncated or corrupt") from None


def decode_mask(path: Path) -> tuple[str, np.ndarray]:
    """(PIL mode, pixel array) of a mask file; DataError when it cannot be decoded."""
    image = decode_image(path, "mask")
    return image.mode, np.array(image)


def read_index_array(path: Path, hint: str = "") -> np.ndarray:
    """The raw pixel values of a palette or greyscale mask; a colour mask is refused, saying so.

    `hint` (what the dataset's masks should be) is added to the error messages.
    """
    mode, array = decode_mask(path)
    if mode in ("RGB", "RGBA"):
        rgb = array[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        raise DataError(
            f"{path}: this is a colour (RGB) mask, but class indices are expected (a palette 'P' or "
            f"greyscale 'L' PNG whose pixel values are the class numbers). Convert each colour to its "
            f"class index with the dataset's palette, and save as mode 'P' or 'L'.{hint}"
        )
    if mode not in ("P", "L", "I;16", "I"):
        raise DataError(f"{path}: mask mode {mode!r}; expected a palette or greyscale PNG of class indices.{hint}")
    check_whole_numbers(array, path, hint)
    return array


def check_whole_numbers(array: np.ndarray, path: Path, hint: str = "") -> None:
    """Class indices are integers >= 0: fractions, NaN or negative values would be wrapped by a cast
    to uint8 into classes that look valid, so they are refused here, before any conversion."""
    if not np.issubdtype(array.dtype, np.integer):
        examples = np.unique(array.ravel()[:100_000])[:5].tolist() if array.dtype.kind in "fc" else []
        raise DataError(f"{path}: label values are {array.dtype} numbers{f' (e.g. {examples})' if examples else ''}, "
                        f"but class indices are whole numbers (0..N-1, or {IGNORE_INDEX} for 'ignore'). Save the "
                        f"mask as integers (a palette or greyscale PNG, uint8).{hint}")
    if array.size and array.min() < 0:
        negative = np.unique(array[array < 0])[:10].tolist()
        raise DataError(f"{path}: label values {negative} are negative, but class indices are 0..N-1, or "
                        f"{IGNORE_INDEX} for 'ignore'. Check that this mask stores class indices.{hint}")


def check_label_values(array: np.ndarray, num_classes: int, path: Path, binary: bool = False,
                       hint: str = "") -> None:
    """Values must be class indices or 255 (integers, none negative); binary (two-class) masks must
    not be stored as 0/255."""
    check_whole_numbers(array, path, hint)
    values = np.unique(array)
    if binary and values.size and set(values.tolist()) <= {0, IGNORE_INDEX} and IGNORE_INDEX in values:
        raise DataError(
            f"{path}: a binary mask stored as 0/255 (no pixel is class 1), but 0/1 are expected and 255 "
            f"means 'ignore'. Divide the mask by 255 before saving it.{hint}"
        )
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size == 0:
        return
    raise DataError(
        f"{path}: label values {bad.tolist()[:10]} are outside the {num_classes} classes "
        f"(0..{num_classes - 1}, or {IGNORE_INDEX} for 'ignore'). Check that this mask belongs to this "
        f"dataset and stores class indices.{hint}"
    )


def save_index_png(path: Path, label: np.ndarray, palette) -> None:
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb]
    flat += [0] * (765 - len(flat)) + [224, 224, 192]  # 255 (ignore) drawn in VOC's void colour
    image.putpalette(flat[:768])
    image.save(path, format="PNG")
