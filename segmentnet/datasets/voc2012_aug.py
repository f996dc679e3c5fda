"""PASCAL VOC 2012 with SBD's extra annotations ('train_aug'): VOCtrainval_11-May-2012.tar and
benchmark.tgz (the Semantic Boundaries Dataset).

SBD's layout inside benchmark.tgz:
    benchmark_RELEASE/dataset/img/<id>.jpg
    benchmark_RELEASE/dataset/cls/<id>.mat     MATLAB struct GTcls; GTcls.Segmentation holds the
                                               class indices (0..20, VOC's classes)
    benchmark_RELEASE/dataset/{train,val}.txt  (8498 / 2857 ids)
train = (VOC train + SBD train + SBD val) minus VOC val = 10582 images; val = VOC val (1449).
Where VOC has a mask for an id, VOC's is used (it has the void borders); otherwise SBD's.
Reading the .mat files needs scipy (pip install scipy).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..core.errors import DataError
from ..preparation import synthetic
from ..preparation.archive import Archive
from . import voc2012
from .common import IGNORE_INDEX, DatasetInfo, Pair, check_label_values, read_split_list

SBD_ROOT = "benchmark_RELEASE/dataset"
SBD_ARCHIVE = Archive(
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    url="http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    required_prefix=f"{SBD_ROOT}/cls/",
    max_member_bytes=64 << 20,
)


def sbd_root(raw_root: Path) -> Path:
    return Path(raw_root) / SBD_ARCHIVE.stem / SBD_ROOT


def list_pairs(raw_root: Path) -> dict[str, list[Pair]]:
    voc = voc2012.voc_root(raw_root)
    sbd = sbd_root(raw_root)
    voc_sets = voc / "ImageSets" / "Segmentation"
    voc_raw, sbd_raw = Path(raw_root) / voc2012.ARCHIVE.stem, Path(raw_root) / SBD_ARCHIVE.stem
    voc_train, voc_val = (read_split_list(voc_sets / f"{split}.txt", voc_raw) for split in ("train", "val"))
    if not sbd.is_dir():
        raise DataError(f"{sbd} not found: extract {SBD_ARCHIVE.filename} first (DataExtract.py --dataset voc2012_aug)")
    # SBD's train and val lists both go into train: an id in both is one image, taken once. VOC val
    # is held out (SBD lists some of its images) and VOC's masks come first; VOC train and VOC val
    # sharing an id is refused by check_pairs (an image in both splits).
    sbd_ids: dict[str, str] = {}
    for i, where in read_split_list(sbd / "train.txt", sbd_raw) + read_split_list(sbd / "val.txt", sbd_raw):
        sbd_ids.setdefault(i, where)
    held_out, from_voc = {i for i, _ in voc_val}, {i for i, _ in voc_train}
    sbd_only = sorted(i for i in sbd_ids if i not in held_out and i not in from_voc)
    train = voc2012.pairs_for_ids(voc, voc_train)
    train += [Pair(i, sbd / "img" / f"{i}.jpg", sbd / "cls" / f"{i}.mat", sbd_ids[i]) for i in sbd_only]
    return {"train": sorted(train, key=lambda p: p.stem), "val": voc2012.pairs_for_ids(voc, voc_val)}


def load_mat(path: Path) -> dict:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("reading SBD's .mat annotations needs scipy, which is not installed: pip install scipy") from None
    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path}: not a readable MATLAB file ({exc}); the file is truncated or corrupt") from None


def read_sbd_label(path: Path) -> np.ndarray:
    gt = load_mat(path).get("GTcls")
    segmentation = getattr(gt, "Segmentation", None)
    if segmentation is None or np.ndim(segmentation) != 2:
        raise DataError(f"{path}: no GTcls.Segmentation image in it; SBD's class annotations are "
                        f"benchmark_RELEASE/dataset/cls/<id>.mat (not inst/, which holds instances)")
    array = np.asarray(segmentation)
    check_label_values(array, len(voc2012.CLASSES), path)  # integers >= 0 first: no uint8 wrap-around
    return array.astype(np.uint8)


def read_label(path: Path) -> np.ndarray:
    if Path(path).suffix == ".mat":
        return read_sbd_label(path)
    return voc2012.read_label(path)


# ----------------------------------------------------------------------------- synthetic archives


def without_void(label: np.ndarray) -> np.ndarray:
    """Fill VOC's 255 borders from neighbouring pixels: SBD's masks have no void band."""
    out = label.copy()
    void = out == IGNORE_INDEX
    while void.any() and not void.all():
        for shift, axis in ((1, 0), (-1, 0), (1, 1), (-1, 1)):
            neighbour = np.roll(out, shift, axis=axis)
            take = void & (neighbour != IGNORE_INDEX)
            out[take] = neighbour[take]
            void &= ~take
        void = out == IGNORE_INDEX
    return out


MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Tue Jun 14 12:00:00 2011"


def sbd_mat(label: np.ndarray) -> bytes:
    """A cls .mat as SBD writes it: struct GTcls with Segmentation, Boundaries, CategoriesPresent."""
    from scipy.io import savemat
    from scipy.sparse import csc_matrix

    boundaries = np.empty((len(voc2012.CLASSES) - 1, 1), dtype=object)
    edges = (label != np.roll(label, 1, axis=0)) | (label != np.roll(label, 1, axis=1))
    for k in range(1, len(voc2012.CLASSES)):
        boundaries[k - 1, 0] = csc_matrix(edges & (label == k))
    present = np.array([k for k in np.unique(label) if k > 0], dtype=np.uint8).reshape(-1, 1)
    buffer = io.BytesIO()
    savemat(buffer, {"GTcls": {"Segmentation": label.astype(np.uint8), "Boundaries": boundaries,
                               "CategoriesPresent": present}}, do_compression=True)
    # the 116-byte text header holds the time of writing: fixed, so the bytes depend on the seed alone
    return MAT_HEADER.ljust(116, b" ") + buffer.getvalue()[116:]


def sbd_files(scenes) -> dict[str, bytes]:
    """SBD's members for some of the VOC scenes: a third of VOC train, some of VOC val (which
    train_aug must leave out), and every image VOC has no mask for."""
    from PIL import Image

    chosen = {"train": [], "val": [], "unlabelled": []}
    for split, image_id, image, label in scenes:
        chosen[split].append((image_id, image, label))
    picked = chosen["train"][::3] + chosen["val"][::4] + chosen["unlabelled"]
    files: dict[str, bytes] = {}
    ids = []
    for image_id, image, label in sorted(picked, key=lambda item: item[0]):
        files[f"{SBD_ROOT}/img/{image_id}.jpg"] = synthetic.encode(Image.fromarray(image), "JPEG", quality=92)
        files[f"{SBD_ROOT}/cls/{image_id}.mat"] = sbd_mat(without_void(label))
        ids.append(image_id)
    files[f"{SBD_ROOT}/train.txt"] = ("\n".join(ids[0::3] + ids[1::3]) + "\n").encode()
    files[f"{SBD_ROOT}/val.txt"] = ("\n".join(ids[2::3]) + "\n").encode()
    return files


def make_synthetic(downloads: Path, seed: int, counts: dict[str, int] = voc2012.SYNTHETIC_COUNTS) -> list[Path]:
    """The VOC archive is voc2012's synthetic one for the same seed, so both datasets can share
    its extraction; SBD's annotations are of those same images."""
    scenes = list(voc2012.synthetic_scenes(seed, counts))
    return [synthetic.write_tar(Path(downloads) / voc2012.ARCHIVE.filename, voc2012.voc_files(scenes)),
            synthetic.write_tar(Path(downloads) / SBD_ARCHIVE.filename, sbd_files(scenes), compression="gz")]


DATASET = DatasetInfo(
    name="voc2012_aug",
    classes=voc2012.CLASSES,
    palette=voc2012.PALETTE,
    archives=(voc2012.ARCHIVE, SBD_ARCHIVE),
    list_pairs=list_pairs,
    read_label=read_label,
    make_synthetic=make_synthetic,
)
