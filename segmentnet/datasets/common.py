"""What every dataset module provides, and the conversion into the common layout.

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

import json
import os
import shutil
import signal
import socket
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..archive import Archive
from ..errors import DataError
from ..files import OWNER_FILE, check_inside, child, mark_owned, owner_of, plain_name
from ..outputs import writing

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
    notes: dict = field(default_factory=dict)

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
    folders = [raw_dir(data_dir, spec) for spec in info.archives]
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


# ----------------------------------------------------------------------------- separation


def _convert_pair(info: DatasetInfo, out: Path, split: str, pair: Pair):
    """Check and write one pair; returns (stem, error or None, per-class pixel counts).

    Outputs are named by the tool: <split>/images/<stem><suffix> and <split>/masks/<stem>.png,
    the stem checked to be a plain name (check_pairs checked it before; checked again here)."""
    try:
        size = decode_image(pair.image).size
        label = counts = mask_out = None
        if pair.mask is not None:
            if not pair.mask.exists():
                return pair.stem, f"{pair.mask}: mask missing for image {pair.image}", None
            label = info.read_label(pair.mask)
            if label.shape != (size[1], size[0]):
                return pair.stem, (f"{pair.mask}: mask is {label.shape[1]}x{label.shape[0]} but its image "
                                   f"{pair.image.name} is {size[0]}x{size[1]}; they must be the same size"), None
            mask_out = child(out / split / "masks", pair.stem, pair.origin, ".png")
            counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=info.num_classes)
        image_out = child(out / split / "images", pair.stem, pair.origin, pair.image.suffix.lower())
    except DataError as exc:
        return pair.stem, str(exc), None
    # A failed write (disk full, no permission) is no bad pair: it stops the run, with --skip-bad too.
    if mask_out is not None:
        with writing(mask_out):
            save_index_png(mask_out, label, info.palette)
    with writing(image_out):
        shutil.copyfile(pair.image, image_out)
    return pair.stem, None, counts


def separate(info: DatasetInfo, data_dir: Path, skip_bad: bool = False, workers: int | None = None,
             force: bool = False, progress: bool = True, options: dict | None = None) -> dict:
    """Convert the extracted raw files into data/<name>/ (see the module docstring).

    `options` are passed to info.list_pairs (only names in info.options). Returns the dataset.json
    contents. Writes into a hidden temporary folder (.<name>.partial-*, marked with this process's
    id) renamed at the end, so an interrupted run leaves nothing that looks complete; the next run
    removes such folders whose process is gone. Replaces only a data/<name>/ that it wrote itself.
    """
    data_dir = Path(data_dir)
    final = data_dir / info.name
    options = dict(options or {})
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise DataError(f"{info.name} takes no option {', '.join(unknown)} "
                        f"(its options: {', '.join(info.options) or 'none'})")
    if data_dir.is_dir():
        remove_stale_partials(data_dir, info.name)
    if (final / "dataset.json").exists() and not force:
        done = read_summary(final / "dataset.json")
        changed = {k: v for k, v in options.items() if done.get("options", {}).get(k) != v}
        if changed:
            raise DataError(f"{final} was made with options {done.get('options', {})}, not {changed}: "
                            f"pass --force to redo it")
        return done | {"already_done": True}
    check_replaceable(final)
    splits = info.list_pairs(data_dir / "raw", **options)
    empty = [s for s, pairs in splits.items() if not pairs]
    if empty:
        raise DataError(f"{info.name}: split(s) {', '.join(empty)} have no images in {data_dir / 'raw'}; "
                        f"the extraction is incomplete or of another dataset")
    check_pairs(info, data_dir, splits)
    if not skip_bad:
        check_masks_present(splits)
    with writing(data_dir):  # (a read-only or full data folder: a DataError naming it)
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = partial_folder(data_dir, info.name)
    try:
        summary = _separate_into(info, splits, tmp, skip_bad, workers, progress) | {"options": options}
        with writing(tmp / "dataset.json"):
            (tmp / "dataset.json").write_text(json.dumps(summary, indent=1))
        with writing(final):
            if final.exists():
                check_replaceable(final)
                old = tmp.with_name(f"{tmp.name}-old")  # the old output, moved aside (its mark kept), then removed
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def read_summary(path: Path) -> dict:
    """dataset.json of a finished separation; DataError when it is unreadable or not one."""
    try:
        done = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} is unreadable or corrupt ({exc}); pass --force to separate again") from None
    if not (isinstance(done, dict) and isinstance(done.get("counts"), dict)
            and isinstance(done.get("options", {}), dict)):
        raise DataError(f"{path} is not a dataset.json written by DataSeparate (no 'counts'); pass --force to "
                        f"separate again")
    return done


def check_replaceable(final: Path) -> None:
    """Refuse to replace data/<name>/ unless DataSeparate wrote it (its owner mark) and it holds
    nothing but its layout, or it is empty."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise DataError(f"{final} is a link or a file, not a folder DataSeparate wrote; it replaces only its "
                        f"own output. Move it away, or choose another --data-dir")
    if not final.exists():
        return
    record = owner_of(final)
    if record is not None and record["tool"] == TOOL:
        others = entries_outside_layout(final)
        if others:
            shown = ", ".join(str(p) for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise DataError(f"{final} was written by DataSeparate, but it also holds what DataSeparate did not write "
                            f"({shown}); replacing the folder would delete them. Move them out of {final} (a "
                            f"training's run folder belongs outside the dataset), then run again")
        return
    if record is None and not any(final.iterdir()):
        return
    writer = f"was written by {record['tool']}" if record else "holds files DataSeparate did not write"
    raise DataError(f"{final} {writer}; DataSeparate replaces only its own output, so it leaves this folder as "
                    f"it is. Move it away or choose another --data-dir (a folder from a DataSeparate older "
                    f"than its owner mark: delete it yourself, then run again)")


LAYOUT_FILES = ("dataset.json", OWNER_FILE)  # the files at the top of data/<name>/
LAYOUT_SPLIT = ("images", "masks")          # the folders of data/<name>/<split>/, which hold files only


def entries_outside_layout(final: Path) -> list[Path]:
    """What data/<name>/ holds besides the layout separate() writes (LAYOUT_FILES, and split folders
    holding only images/ and masks/ folders of files), links anywhere counted as outside it."""
    others = []
    for entry in sorted(final.iterdir()):
        if entry.name in LAYOUT_FILES and entry.is_file() and not entry.is_symlink():
            continue
        if entry.is_symlink() or not entry.is_dir():
            others.append(entry)
            continue
        for sub in sorted(entry.iterdir()):
            if sub.name not in LAYOUT_SPLIT or sub.is_symlink() or not sub.is_dir():
                others.append(sub)
                continue
            others += [f for f in sorted(sub.iterdir()) if f.is_symlink() or not f.is_file()]
    return others


def partial_folder(data_dir: Path, name: str) -> Path:
    """A new hidden .<name>.partial-* folder, marked as this process's (tool, host, pid)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=data_dir))
    mark_owned(folder, TOOL, host=socket.gethostname(), pid=os.getpid())
    return folder


def remove_stale_partials(data_dir: Path, name: str) -> list[Path]:
    """Remove the .<name>.partial-* folders left by DataSeparate runs that were killed: only those
    marked as DataSeparate's, on this host, by a process that is gone. Returns what was removed."""
    removed = []
    for folder in sorted(Path(data_dir).glob(f".{name}.partial-*")):
        record = owner_of(folder) if folder.is_dir() and not folder.is_symlink() else None
        if (record and record["tool"] == TOOL and record.get("host") == socket.gethostname()
                and not process_alive(record.get("pid"))):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def process_alive(pid) -> bool:
    """Whether a process with this id exists (an unknown id counts as alive: nothing is removed)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, another user's
        return True
    return True


def check_masks_present(splits: dict[str, list[Pair]]) -> None:
    """Images without masks, counted per split and named before any work, rather than one by one."""
    problems = []
    for split, pairs in splits.items():
        missing = [p for p in pairs if p.mask is not None and not p.mask.exists()]
        if missing:
            examples = "; ".join(f"{p.image.name} -> {p.mask}" for p in missing[:3])
            problems.append(f"{len(missing)} of {len(pairs)} images in split {split!r} have no mask "
                            f"(e.g. {examples})")
    if problems:
        raise DataError("images without masks: " + "; ".join(problems) + ". The mask archive is not extracted "
                        "(or only partly), or the masks are named differently from the official layout. "
                        "Extract every archive of the dataset, or pass --skip-bad to leave these images out.")


def default_sigterm() -> None:
    """In a pool worker: SIGTERM ends it. A forked worker inherits its parent's Python handler, if the
    parent has one (a program that calls separate(), a test process); the pool's terminate() then could
    not end an idle worker, and waited for it forever."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _separate_into(info, splits, tmp, skip_bad, workers, progress) -> dict:
    from tqdm import tqdm

    counts, pixel_counts, skipped = {}, {}, []
    workers = workers or os.cpu_count() or 1
    context = get_context("fork") if hasattr(os, "fork") else get_context()
    with context.Pool(workers, initializer=default_sigterm) as pool:
        for split, pairs in splits.items():
            with writing(tmp / split):
                (tmp / split / "images").mkdir(parents=True)
                if any(p.mask is not None for p in pairs):
                    (tmp / split / "masks").mkdir(parents=True)
            totals = np.zeros(info.num_classes, dtype=np.int64)
            done = 0
            job = partial(_convert_pair, info, tmp, split)
            results = pool.imap_unordered(job, pairs, chunksize=8)
            for stem, error, hist in tqdm(results, total=len(pairs), desc=f"{info.name} {split}",
                                          disable=not progress):
                if error:
                    if not skip_bad:
                        pool.terminate()
                        raise DataError(f"{error}\n(pass --skip-bad to skip bad pairs and list them at the end)")
                    skipped.append({"split": split, "stem": stem, "error": error})
                    continue
                done += 1
                if hist is not None:
                    totals += hist
            if done == 0:
                raise DataError(f"{info.name}: no usable pair in split {split!r}; nothing to train on")
            counts[split] = done
            pixel_counts[split] = totals.tolist()
    return {
        "name": info.name,
        "classes": list(info.classes),
        "num_classes": info.num_classes,
        "palette": [list(c) for c in info.palette],
        "ignore_index": IGNORE_INDEX,
        "mean": list(info.mean),
        "std": list(info.std),
        "counts": counts,
        "pixel_counts": pixel_counts,
        "skipped": skipped,
    }
