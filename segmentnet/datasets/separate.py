"""The conversion of a dataset's raw files into the common layout (common.py describes it): pairs
checked and written by a pool of workers into a partial folder beside data/<name>/, which replaces
the old one only when all is done (and only a folder DataSeparate wrote itself).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import Image

from ..core.errors import DataError
from ..core.files import OWNER_FILE, child, mark_owned, owner_of, read_json
from ..core.outputs import writing
from .common import IGNORE_INDEX, TOOL, DatasetInfo, Pair, check_pairs, decode_image, save_index_png


def _convert_pair(info: DatasetInfo, out: Path, split: str, pair: Pair):
    """Check and write one pair; returns (stem, error or None, per-class pixel counts).

    Outputs are named by the tool: <split>/images/<stem><suffix> and <split>/masks/<stem>.png,
    the stem checked to be a plain name (check_pairs checked it before; checked again here)."""
    try:
        prepared = info.prepare_image(pair.image) if info.prepare_image else None
        size = (prepared or decode_image(pair.image)).size
        label = counts = mask_out = None
        if pair.mask is not None:
            if not pair.mask.exists():
                return pair.stem, f"{pair.mask}: mask missing for image {pair.image}", None
            label = info.read_label(pair.mask)
            if label.shape != (size[1], size[0]) and info.resize_masks:  # (checked to be of the image's aspect)
                label = np.asarray(Image.fromarray(label).resize(size, Image.NEAREST))
            if label.shape != (size[1], size[0]):
                return pair.stem, (f"{pair.mask}: mask is {label.shape[1]}x{label.shape[0]} but its image "
                                   f"{pair.image.name} is {size[0]}x{size[1]}; they must be the same size"), None
            mask_out = child(out / split / "masks", pair.stem, pair.origin, ".png")
            counts = np.bincount(label[label != IGNORE_INDEX].ravel(), minlength=info.num_classes)
        suffix = ".png" if prepared is not None else pair.image.suffix.lower()
        image_out = child(out / split / "images", pair.stem, pair.origin, suffix)
    except DataError as exc:
        return pair.stem, str(exc), None
    # A failed write (disk full, no permission) is no bad pair: it stops the run, with --skip-bad too.
    if mask_out is not None:
        with writing(mask_out):
            save_index_png(mask_out, label, info.palette)
    with writing(image_out):
        if prepared is not None:
            prepared.save(image_out, format="PNG")
        else:
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
        done = read_json(path, "the dataset description")
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
        **({"source": info.notes} if info.notes else {}),
    }
