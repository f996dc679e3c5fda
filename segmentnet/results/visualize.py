"""Pictures of results: coloured masks, overlays, image | truth | prediction panels and grids, curves.

Every file is written under a temporary name and renamed, so a picture is either whole or absent.
`EpochPictures` is what the training loop calls once per epoch (rank 0 only).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import DataError
from ..core.files import MAX_JSON_BYTES, atomic_path, read_regular
from ..core.jsonfile import loads as json_loads
from ..datasets.common import IGNORE_INDEX, save_index_png

VOID_COLOUR = (224, 224, 192)   # pixels labelled 255 (ignore), as VOC draws them
GAP = 4                         # pixels between the pictures of a panel
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (40, 40, 40)
LABEL_HEIGHT = 14               # strip above a grid column or row holding its caption


def save_png(image: Image.Image | np.ndarray, path) -> None:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", optimize=True)


def save_mask_png(mask: np.ndarray, palette, path) -> None:
    """A class-index PNG (mode 'P', pixel values = class indices), VOC's SegmentationClass format."""
    with atomic_path(path) as tmp:
        save_index_png(tmp, mask, palette)


# ----------------------------------------------------------------------------- drawing


def colorize(mask: np.ndarray, palette) -> np.ndarray:
    """HxW class indices -> HxWx3 uint8 colours of the palette (255 in the void colour)."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    table[IGNORE_INDEX] = VOID_COLOUR
    return table[mask]


def overlay(image: np.ndarray, mask: np.ndarray, palette, alpha: float = 0.5) -> np.ndarray:
    """The image with the coloured mask blended in; classes drawn in black (VOC's background) stay unblended."""
    colours = colorize(mask, palette).astype(np.float32)
    blend = colours.any(axis=-1, keepdims=True) & (mask != IGNORE_INDEX)[..., None]
    mixed = np.where(blend, (1 - alpha) * image.astype(np.float32) + alpha * colours, image.astype(np.float32))
    return mixed.round().astype(np.uint8)


def hstack(pictures: list[np.ndarray], gap: int = GAP) -> np.ndarray:
    """Equal-height HxWx3 pictures side by side, separated by white gaps."""
    height = pictures[0].shape[0]
    spacer = np.full((height, gap, 3), BACKGROUND, dtype=np.uint8)
    parts = []
    for i, picture in enumerate(pictures):
        parts += [spacer, picture] if i else [picture]
    return np.concatenate(parts, axis=1)


def panel(image: np.ndarray, truth: np.ndarray | None, prediction: np.ndarray, palette) -> np.ndarray:
    """image | truth | prediction (image | prediction when there is no truth), at the image's size."""
    pictures = [image] + ([colorize(truth, palette)] if truth is not None else []) + [colorize(prediction, palette)]
    return hstack(pictures)


def fit_height(picture: np.ndarray, height: int, nearest: bool) -> np.ndarray:
    h, w = picture.shape[:2]
    width = max(1, round(w * height / h))
    resample = Image.NEAREST if nearest else Image.BILINEAR
    return np.asarray(Image.fromarray(picture).resize((width, height), resample))


def sample_grid(sections: dict[str, list[tuple]], palette, tile_height: int = 96, tile_width: int = 128) -> Image.Image:
    """A grid with one row per sample: image | truth | prediction, each tile tile_width x tile_height.

    sections maps a caption (e.g. 'val') to a list of (image, truth, prediction) arrays. Each tile
    is the picture scaled to tile_height and padded (or cut) to tile_width, so rows line up.
    """
    columns = ("image", "truth", "prediction")
    rows: list[np.ndarray] = [hstack([caption_strip(c, tile_width, centred=True) for c in columns])]
    width = rows[0].shape[1]
    for caption, samples in sections.items():
        rows.append(caption_strip(caption.upper(), width))
        for image, truth, prediction in samples:
            tiles = [fit_height(image, tile_height, nearest=False),
                     fit_height(colorize(truth, palette), tile_height, nearest=True),
                     fit_height(colorize(prediction, palette), tile_height, nearest=True)]
            rows.append(hstack([fit_width(t, tile_width) for t in tiles]))
            rows.append(np.full((GAP, width, 3), BACKGROUND, dtype=np.uint8))
    return Image.fromarray(np.concatenate(rows, axis=0))


def fit_width(picture: np.ndarray, width: int) -> np.ndarray:
    h, w = picture.shape[:2]
    if w >= width:
        return picture[:, (w - width) // 2:(w - width) // 2 + width]
    out = np.full((h, width, 3), BACKGROUND, dtype=np.uint8)
    out[:, (width - w) // 2:(width - w) // 2 + w] = picture
    return out


def caption_strip(text: str, width: int, centred: bool = False) -> np.ndarray:
    strip = Image.new("RGB", (width, LABEL_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    left = (width - draw.textlength(text)) / 2 if centred else 2
    draw.text((left, 1), text, fill=TEXT_COLOUR)
    return np.asarray(strip)


# ----------------------------------------------------------------------------- curves


def read_metrics(path, repair: bool = False) -> list[dict]:
    """The records of a run's metrics.jsonl, one JSON object a line ([] when there is no such file).

    A last line cut short (the run was killed while writing it) is left out, with a note on stderr;
    any other line that is not a JSON object is a DataError naming the file and the line. With
    repair (resuming, the recovery path): every line that is not a complete record (an object with a
    whole epoch) is left out with a warning instead."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = read_regular(path, "the metrics file", MAX_JSON_BYTES)
        lines = data.decode("utf-8", errors="replace" if repair else "strict").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as text ({exc}); it is not a metrics file TrainSegmentNet.py "
                        f"wrote") from None
    records, dropped = [], 0
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json_loads(line)
        except ValueError:  # not JSON, or beyond jsonfile's limits
            record = None
        if isinstance(record, dict) and (not repair or type(record.get("epoch")) is int):
            records.append(record)
        elif repair:
            dropped += 1
        elif number == len(lines):  # no newline after it: the writer stopped mid-line
            print(f"note: the last line of {path} is incomplete (the run stopped while writing it); it is left out",
                  file=sys.stderr)
        else:
            raise DataError(f"{path}, line {number}: not a JSON record ({line[:40]!r}...); the file is corrupt. "
                            f"Delete that line (the run's other epochs are kept) and run again")
    if dropped:
        print(f"warning: {path}: left out {dropped} line(s) that are not complete records (a write cut short)",
              file=sys.stderr)
    return records


def plot_curves(records: list[dict], path, title: str = "") -> None:
    """curves.png: train and val loss, val mIoU and learning rate against epoch."""
    plt = pyplot()
    epochs = [r["epoch"] for r in records]
    fig, (ax_loss, ax_miou, ax_lr) = plt.subplots(1, 3, figsize=(12, 3.4), dpi=80)
    ax_loss.plot(epochs, [r["train_loss"] for r in records], marker=".", label="train loss")
    ax_loss.plot(epochs, [r["val_loss"] for r in records], marker=".", label="val loss")
    ax_loss.set_title("loss")
    ax_loss.legend()
    ax_miou.plot(epochs, [r["val_miou"] for r in records], marker=".", color="tab:green")
    ax_miou.set_title("val mIoU")
    ax_lr.plot(epochs, [r["lr"] for r in records], marker=".", color="tab:gray")
    ax_lr.set_title("learning rate (end of epoch)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for ax in (ax_loss, ax_miou, ax_lr):
        epoch_axis(ax)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def epoch_axis(ax) -> None:
    """Whole epochs on the x axis, and a light grid."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, no display needed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    pyplot().close(fig)


# ----------------------------------------------------------------------------- during training


class EpochPictures:
    """Per epoch: run_dir/curves.png and run_dir/samples/epoch_NNN.png (+ TensorBoard events if asked).

    The grid shows the same `count` validation images and `count` training images (un-augmented)
    every epoch, chosen evenly through each split, so the epochs can be compared picture by picture.
    """

    def __init__(self, run_dir, train_set, val_set, facts, tensorboard: bool = False, count: int = 3):
        self.run_dir = Path(run_dir)
        self.palette, self.mean, self.std = facts.palette, facts.mean, facts.std  # (a data.DatasetFacts)
        self.samples = {"val": fixed_samples(val_set, count), "train (un-augmented)": fixed_samples(train_set, count)}
        self.writer = open_tensorboard(self.run_dir / "tensorboard") if tensorboard else None

    def write(self, model, epoch: int, record: dict) -> None:
        from .inference import predict_masks

        plot_curves(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "curves.png", self.run_dir.name)
        sections = {}
        for caption, samples in self.samples.items():
            predictions = predict_masks(model, [image for image, _ in samples], self.mean, self.std, batch_size=1)
            sections[caption] = [(image, truth, pred) for (image, truth), pred in zip(samples, predictions)]
        grid = sample_grid(sections, self.palette)
        save_png(grid, self.run_dir / "samples" / f"epoch_{epoch:03d}.png")
        if self.writer is not None:
            for key in ("train_loss", "val_loss", "val_miou", "val_pixel_acc", "lr", "images_per_second"):
                self.writer.add_scalar(key, record[key], epoch)
            self.writer.add_image("samples", np.asarray(grid), epoch, dataformats="HWC")
            self.writer.flush()


def fixed_samples(dataset, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`count` (image, mask) arrays spread evenly through the dataset, read without augmentation."""
    indices = sorted(set(np.linspace(0, len(dataset) - 1, num=min(count, len(dataset))).round().astype(int)))
    samples = []
    for index in indices:
        image, mask = dataset.load(int(index))
        samples.append((np.asarray(image), np.asarray(mask)))
    return samples


def open_tensorboard(log_dir: Path):
    """A SummaryWriter, or None with a message saying how to install tensorboard (the run goes on)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: --tensorboard was asked for but the tensorboard package is not installed; "
              "training continues without TensorBoard events (curves.png and samples/ are still written). "
              "Install it with: pip install tensorboard", file=sys.stderr)
        return None
    print(f"TensorBoard events in {log_dir} (view with: tensorboard --logdir {log_dir.parent})")
    return SummaryWriter(log_dir=str(log_dir))
