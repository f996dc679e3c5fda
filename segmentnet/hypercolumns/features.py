"""The three hypercolumn stages, and predicting with the result (Hypercolumns.py is the command line).

extract   sample pixels of the train and val images, compute their hypercolumns with the frozen CNN
          and stream them into one file (HYPERCOLUMNS_FILE, format: file.py)
pretrain  train the pixel classifier on that file alone (no image is read); val pixel accuracy from the
          val split's vectors, which are sampled uniformly so that they measure what a full image would
train     a TrainSegmentNet training (engine.train) of hypercolumn_<cnn> with classifier_init = pretrain's file
predict   class-index PNG masks (with the dataset's palette) for images

This module holds what the method adds: the features' extraction, their file, and the classifier's
pre-training. Stage 3 and predict (train.py) are the engine's training and evaluation and
inference's prediction applied to the hypercolumn model.

Every stage writes into STAGE_DIR = WORK_DIR/<dataset>-<cnn>-<layers>/ and keeps what it wrote: run
again with the same settings, a stage reuses its output; with other settings it stops and asks for
--force. Each output records the CNN (name, layers, width and a fingerprint of its weights) it came
from, and a stage given the output of another CNN or layer set stops with an error saying so.
"""
from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.errors import ConfigError, DataError
from ..core.files import atomic_path, open_regular
from ..models import build_model
from ..models.hypercolumns import CLASSIFIER_KIND, DEFAULT_HIDDEN, DEFAULT_LAYERS, PixelMLP, mismatches
from ..results.inference import resolve_device
from ..results.metrics import ConfusionMatrix
from ..training.data import SegmentationDataset, read_dataset_json
from ..training.optim import lr_at, make_scaler, optimizer_step
from ..training.transforms import eval_transform, normalize
from .file import header_bytes, open_hypercolumns, read_header

HYPERCOLUMNS_FILE = "hypercolumns.bin"
CLASSIFIER_FILE = "classifier.pt"
SPLITS = ("train", "val")
CNN_ALIASES = {"sqn": "squeezenet", "vgg": "vgg16"}


# ----------------------------------------------------------------------------- settings shared by the stages


def cnn_name(cfg) -> str:
    name = CNN_ALIASES.get(cfg.cnn, cfg.cnn)
    if name not in DEFAULT_LAYERS:
        raise ConfigError(f"cnn {cfg.cnn!r} is unknown; choices: {', '.join(sorted(DEFAULT_LAYERS))} "
                          f"(or {', '.join(f'{a} = {b}' for a, b in CNN_ALIASES.items())})")
    return name


def layer_list(cfg) -> list[int]:
    cnn = cnn_name(cfg)
    if not cfg.layers.strip():
        return list(DEFAULT_LAYERS[cnn])
    try:
        layers = [int(part) for part in cfg.layers.split(",")]
    except ValueError:
        raise ConfigError(f"layers {cfg.layers!r}: give comma-separated indices into {cnn}'s features, "
                          f"e.g. {','.join(map(str, DEFAULT_LAYERS[cnn]))}") from None
    return sorted(set(layers))


def stage_dir(cfg) -> Path:
    layers = "_".join(map(str, layer_list(cfg)))
    return Path(cfg.work_dir) / f"{cfg.dataset}-{cnn_name(cfg)}-{layers}"


def model_options(cfg) -> dict:
    """Options of hypercolumn_<cnn> for these settings (without classifier_init)."""
    options = {"layers": layer_list(cfg)}
    spec = cfg.encoder_weights.strip()
    if spec and spec.lower() not in ("false", "none"):
        options["encoder_weights"] = spec
    clash = sorted(set(cfg.model_options) & {"layers", "encoder_weights", "classifier_init", "finetune"})
    if clash:
        raise ConfigError(f"model_options {', '.join(clash)}: set these with their own flags "
                          f"(--layers, --encoder-weights, --finetune)")
    return options | dict(cfg.model_options)


def build_hypercolumn_model(cfg, num_classes: int, **extra):
    try:
        return build_model(f"hypercolumn_{cnn_name(cfg)}", num_classes, **model_options(cfg), **extra)
    except ValueError as exc:  # bad layer indices
        raise ConfigError(str(exc)) from None


def progress_bar(items, cfg, **options):
    from tqdm import tqdm

    return tqdm(items, disable=not cfg.progress, leave=False, **options)


# ----------------------------------------------------------------------------- stage 1: extract


def sample_pixels(mask: np.ndarray, count: int, balanced: bool, ignore_index: int,
                  rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to `count` labelled pixels, without replacement, sorted.

    balanced: each class present in the mask gets about the same share (a pixel's chance is inversely
    proportional to its class's pixel count), drawn as the smallest of Exponential(1) / weight keys.
    """
    flat = mask.reshape(-1)
    candidates = np.flatnonzero(flat != ignore_index)
    if len(candidates) <= count:
        return candidates
    if not balanced:
        return np.sort(rng.choice(candidates, count, replace=False))
    _, inverse, counts = np.unique(flat[candidates], return_inverse=True, return_counts=True)
    keys = rng.exponential(size=len(candidates)) * counts[inverse]
    return np.sort(candidates[np.argpartition(keys, count)[:count]])


def sampling_plan(dataset: SegmentationDataset, cfg, split_number: int, balanced: bool, ignore_index: int):
    """[(image index, flat pixel indices, their labels)] for a split; reads the masks only."""
    plan = []
    for index in progress_bar(range(len(dataset)), cfg, desc=f"sampling {dataset.split}"):
        with open_regular(dataset.mask_path(index), "mask") as f, Image.open(f) as im:
            mask = np.array(im)
        rng = np.random.default_rng([cfg.seed, split_number, index])
        pixels = sample_pixels(mask, cfg.samples_per_image, balanced, ignore_index, rng)
        plan.append((index, pixels, mask.reshape(-1)[pixels].astype(np.uint8)))
    return plan


def extraction_settings(cfg, model, datasets: dict) -> dict:
    """What the file's contents depend on; a file with other values is not reused."""
    return {**model.identity(), "dataset": cfg.dataset, "images": {s: len(d) for s, d in datasets.items()},
            "samples_per_image": cfg.samples_per_image, "balanced": cfg.balanced, "seed": cfg.seed}


def extract(cfg) -> Path:
    """Stage 1. Returns the hypercolumns file's path (reused when it has these settings)."""
    if cfg.samples_per_image < 1:
        raise ConfigError(f"samples_per_image must be >= 1, got {cfg.samples_per_image}")
    root = Path(cfg.data_dir) / cfg.dataset
    info = read_dataset_json(root)
    datasets = {split: SegmentationDataset(root, split, eval_transform()) for split in SPLITS}
    model = build_hypercolumn_model(cfg, info["num_classes"])
    path = stage_dir(cfg) / HYPERCOLUMNS_FILE
    settings = extraction_settings(cfg, model, datasets)
    if path.exists() and not cfg.force:
        header, _ = read_header(path)
        differ = [f"{k} {header.get(k)!r} (now {v!r})" for k, v in settings.items() if header.get(k) != v]
        if differ:
            raise DataError(f"{path} exists with other settings: {'; '.join(differ)}. Pass --force to extract "
                            f"again (it replaces the file), or use another --work-dir")
        print(f"kept {path}: hypercolumns with these settings exist ({header['count']} vectors); --force redoes them")
        return path

    # Val is sampled uniformly, so that the pre-training's val accuracy estimates whole-image accuracy.
    plans = {split: sampling_plan(datasets[split], cfg, number, cfg.balanced and split == "train",
                                  info["ignore_index"])
             for number, split in enumerate(SPLITS)}
    splits, count = {}, 0
    for split, plan in plans.items():
        rows = sum(len(pixels) for _, pixels, _ in plan)
        splits[split] = [count, count + rows]
        count += rows
    header = {**settings, "count": count, "splits": splits, "classes": info["classes"],
              "num_classes": info["num_classes"], "mean": info["mean"], "std": info["std"],
              "encoder_weights": str(model_options(cfg).get("encoder_weights", "")),
              "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    head = header_bytes(header)
    size = len(head) + count * (model.dim * 2 + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < size:
        raise DataError(f"{path} needs {size / 2**20:.1f} MiB, {path.parent} has {free / 2**20:.1f} MiB free: "
                        f"lower --samples-per-image or free some space")
    print(f"writing {path}: {count} hypercolumns of {model.dim} float16 values "
          f"({', '.join(f'{s} {b - a}' for s, (a, b) in splits.items())}), {size / 2**20:.1f} MiB")

    device = resolve_device(cfg.device)
    model.eval().to(device)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(head)
            f.truncate(size)
        _, vectors, labels = open_hypercolumns(tmp, "r+")
        row = 0
        for split, plan in plans.items():
            for index, pixels, pixel_labels in progress_bar(plan, cfg, desc=f"hypercolumns {split}"):
                image, _ = datasets[split][index]
                x = normalize(image[None].to(device), info["mean"], info["std"])
                width = x.shape[-1]
                columns = model.hypercolumns_at(x, torch.from_numpy(pixels // width),
                                                torch.from_numpy(pixels % width))
                vectors[row:row + len(pixels)] = columns.clamp(-65504, 65504).cpu().numpy().astype(np.float16)
                labels[row:row + len(pixels)] = pixel_labels
                row += len(pixels)
        vectors.flush()
        labels.flush()
        del vectors, labels
    print(f"wrote {path}")
    return path


# ----------------------------------------------------------------------------- stage 2: pretrain


def check_features_fit(cfg, header: dict, path: Path) -> None:
    expected = {"cnn": cnn_name(cfg), "layers": layer_list(cfg), "dataset": cfg.dataset,
                "width": cfg.model_options.get("width", 64)}
    problems = mismatches(expected, header, keys=tuple(expected))
    if problems:
        raise DataError(f"{path} holds the hypercolumns of another CNN, layer set or dataset: {'; '.join(problems)}. "
                        f"Pretrain with the settings it was extracted with, or extract with these first.")


def column_statistics(vectors: np.ndarray, start: int, stop: int, chunk: int = 65536):
    """Per-channel mean and std of rows start:stop, read in chunks (float64 sums)."""
    total = np.zeros(vectors.shape[1])
    squares = np.zeros(vectors.shape[1])
    for a in range(start, stop, chunk):
        block = np.asarray(vectors[a:min(a + chunk, stop)], dtype=np.float64)
        total += block.sum(0)
        squares += (block ** 2).sum(0)
    n = max(stop - start, 1)
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean ** 2, 0))
    std[std < 1e-6] = 1.0  # constant channels (dead ReLUs): leave them unscaled
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def rows_as_tensors(vectors, labels, rows: np.ndarray, device):
    x = torch.from_numpy(np.asarray(vectors[rows], dtype=np.float32)).to(device)
    y = torch.from_numpy(np.asarray(labels[rows], dtype=np.int64)).to(device)
    return x, y


@torch.no_grad()
def evaluate_vectors(classifier: PixelMLP, vectors, labels, start: int, stop: int, num_classes: int,
                     device, chunk: int = 65536) -> dict:
    classifier.eval()
    cm = ConfusionMatrix(num_classes, device=device)
    for a in range(start, stop, chunk):
        x, y = rows_as_tensors(vectors, labels, np.arange(a, min(a + chunk, stop)), device)
        cm.update(y, classifier.classify_vectors(x).argmax(1))
    scores = cm.compute()
    truth = np.bincount(np.asarray(labels[start:stop]), minlength=num_classes)
    scores["majority_class_rate"] = float(truth.max() / max(truth.sum(), 1))
    return scores


def pretrain(cfg) -> dict:
    """Stage 2. Trains the classifier on the stored vectors; returns its val scores."""
    path = Path(cfg.features) if cfg.features else stage_dir(cfg) / HYPERCOLUMNS_FILE
    if not path.exists():
        raise DataError(f"{path} not found: run 'Hypercolumns.py extract' with the same settings first")
    header, vectors, labels = open_hypercolumns(path)
    check_features_fit(cfg, header, path)
    out = stage_dir(cfg) / CLASSIFIER_FILE
    hidden = cfg.model_options.get("hidden", DEFAULT_HIDDEN)
    settings = {"epochs": cfg.pretrain_epochs, "lr": cfg.pretrain_lr, "batch_size": cfg.pretrain_batch_size,
                "seed": cfg.seed, "hidden": hidden}
    if out.exists() and not cfg.force:
        kept = load_checkpoint(out)
        if kept.get("features_created") != header["created"] or kept.get("cnn_fingerprint") != header["cnn_fingerprint"]:
            raise DataError(f"{out} was pre-trained on an earlier extraction than {path}: pass --force to "
                            f"pre-train again on the present one")
        if kept.get("settings") != settings:
            raise DataError(f"{out} was pre-trained with other settings ({kept.get('settings')}, now {settings}): "
                            f"pass --force to pre-train again (it replaces the file)")
        print(f"kept {out}: already pre-trained on {path} (val pixel accuracy {kept['scores']['pixel_acc']:.4f}); "
              f"--force redoes it")
        return kept["scores"]
    if min(cfg.pretrain_epochs, cfg.pretrain_batch_size) < 1 or not cfg.pretrain_lr > 0:
        raise ConfigError("pretrain_epochs and pretrain_batch_size must be >= 1 and pretrain_lr > 0")

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    (train_start, train_stop), (val_start, val_stop) = header["splits"]["train"], header["splits"]["val"]
    num_classes = header["num_classes"]
    classifier = PixelMLP(header["dim"], num_classes, hidden)
    classifier.mean, classifier.std = column_statistics(vectors, train_start, train_stop)
    classifier.to(device)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=cfg.pretrain_lr, weight_decay=1e-4)
    scaler = make_scaler(device, amp=False)  # (full precision: a pass-through)
    batch = cfg.pretrain_batch_size
    steps_per_epoch = math.ceil((train_stop - train_start) / batch)
    total_steps, step = steps_per_epoch * cfg.pretrain_epochs, 0
    print(f"pre-training the classifier on {train_stop - train_start} hypercolumns of {path} ({device})")
    scores = {}
    for epoch in range(cfg.pretrain_epochs):
        classifier.train()
        order = rng.permutation(np.arange(train_start, train_stop))
        losses = []
        for a in progress_bar(range(0, len(order), batch), cfg, desc=f"pretrain {epoch + 1}/{cfg.pretrain_epochs}"):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, 0, cfg.pretrain_lr, 1.0)
            x, y = rows_as_tensors(vectors, labels, np.sort(order[a:a + batch]), device)
            loss = F.cross_entropy(classifier.classify_vectors(x), y)
            loss.backward()
            optimizer_step(optimizer, scaler)
            losses.append(loss.item())
            step += 1
        scores = evaluate_vectors(classifier, vectors, labels, val_start, val_stop, num_classes, device)
        print(f"pretrain epoch {epoch + 1}/{cfg.pretrain_epochs}: train loss {np.mean(losses):.4f}, val pixel acc "
              f"{scores['pixel_acc']:.4f} (majority class {scores['majority_class_rate']:.4f}), "
              f"val mIoU on the sampled pixels {scores['miou']:.4f}")
    scores = {k: scores[k] for k in ("pixel_acc", "majority_class_rate", "miou", "mean_class_acc")}
    state = {"model": {k: v.cpu() for k, v in classifier.state_dict().items()}, "kind": CLASSIFIER_KIND,
             **{k: header[k] for k in ("cnn", "layers", "width", "dim", "cnn_fingerprint", "dataset", "classes",
                                      "num_classes")},
             "hidden": hidden, "features_file": str(path), "features_created": header["created"], "scores": scores,
             "settings": settings}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(state, out)
    print(f"wrote {out}: val pixel accuracy {scores['pixel_acc']:.4f} on {val_stop - val_start} sampled val pixels "
          f"(majority class {scores['majority_class_rate']:.4f})")
    return scores
