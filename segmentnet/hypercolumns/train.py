"""Stage 3 (train) and predict of Hypercolumns.py: the engine's training and evaluation, and
inference's loading, prediction and mask writing, applied to the hypercolumn model that stages 1-2
(hypercolumns.py) prepared."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.config import parse_config
from ..core.description import ModelDescription
from ..core.distributed import DistEnv
from ..core.errors import ConfigError, DataError
from ..core.files import claim_folder
from ..core.outputs import refuse_input_data, writing_into
from ..models import build_model
from ..results.inference import load_model, predict_masks, read_rgb, resolve_device
from ..results.visualize import save_mask_png
from ..training.data import image_paths, read_dataset_json, validation_loader
from ..training.loops import evaluate
from .features import CLASSIFIER_FILE, cnn_name, model_options, progress_bar, stage_dir

RESERVED_TRAIN_SETTINGS = ("dataset", "data_dir", "model", "model_options")  # from the stages' own flags
TOOL = "Hypercolumns"  # the owner recorded in the folder of predicted masks (files.claim_folder)


def train_config(cfg, train_config_class, user_flags: list[str] = ()):
    """Stage 3's TrainSegmentNet config: TrainSegmentNet's defaults, a --config file given after --, the
    settings these stages fix (model, data, output folder, loss), then the user's flags after --."""
    reserved = sorted({f.lstrip("-").split("=")[0].replace("-", "_") for f in user_flags if f.startswith("--")}
                      & set(RESERVED_TRAIN_SETTINGS))
    if reserved:
        raise ConfigError(f"{', '.join(reserved)}: set by the train stage from --cnn, --layers, --dataset and "
                          f"--data-dir (flags before --), not after --")
    classifier = Path(cfg.classifier) if cfg.classifier else stage_dir(cfg) / CLASSIFIER_FILE
    if not classifier.exists():
        raise DataError(f"{classifier} not found: run 'Hypercolumns.py pretrain' with the same settings first")
    settings = {"dataset": cfg.dataset, "data_dir": cfg.data_dir, "model": f"hypercolumn_{cnn_name(cfg)}",
                "model_options": model_options(cfg) | {"classifier_init": str(classifier), "finetune": cfg.finetune},
                "out": str(stage_dir(cfg) / "train"), "loss": "ce", "seed": cfg.seed, "device": cfg.device,
                "progress": cfg.progress}
    return parse_config(train_config_class, list(user_flags), settings=settings)


def evaluate_initial_model(train_cfg) -> dict:
    """Val scores of the model as pre-training left it: the training's own evaluation and val loader."""
    root = Path(train_cfg.data_dir) / train_cfg.dataset
    info = read_dataset_json(root)
    env = DistEnv(device=resolve_device(train_cfg.device))
    model = build_model(train_cfg.model, info["num_classes"], **train_cfg.model_options).to(env.device)
    val_loader = validation_loader(root, env, train_cfg.seed, workers=0)  # (one pass: no worker processes)
    return evaluate(model, val_loader, info["num_classes"], env, info["mean"], info["std"], amp=train_cfg.amp,
                    amp_dtype=train_cfg.amp_dtype)


def train(train_cfg) -> dict:
    """Stage 3: engine.train(train_cfg); reports the val mIoU before (stage 2's) and after training."""
    from ..training import engine

    before = None
    if not train_cfg.resume:
        engine.check_config(train_cfg)
        before = evaluate_initial_model(train_cfg)
        print(f"val mIoU of the pre-trained classifier, before training: {before['miou']:.4f} "
              f"(pixel accuracy {before['pixel_acc']:.4f})")
    summary = engine.train(train_cfg)
    run_dir = Path(summary["run_dir"])
    if before is not None:
        record = {k: before[k] for k in ("miou", "pixel_acc", "mean_class_acc", "per_class_iou")}
        (run_dir / "pretrained_scores.json").write_text(json.dumps(record, indent=1))
        summary["pretrained_scores"] = record
        final = summary["final_scores"].get("miou", float("nan"))
        print(f"val mIoU: {before['miou']:.4f} with the pre-trained classifier, {final:.4f} after training "
              f"(run folder {run_dir})")
    return summary


# ----------------------------------------------------------------------------- predict


def hypercolumn_model_only(description: ModelDescription, name) -> None:
    if not description.model_name.startswith("hypercolumn_"):
        raise DataError(f"{name} holds a {description.model_name!r} model, not a hypercolumn model; give the "
                        f"best.pt or last.pt of 'Hypercolumns.py train'")


@torch.no_grad()
def predict(cfg) -> list[Path]:
    """Predict class-index masks (palette PNGs) for images; returns the written paths."""
    if not cfg.images:
        raise ConfigError("predict needs --images: an image file or a folder of images")
    checkpoint = Path(cfg.checkpoint) if cfg.checkpoint else stage_dir(cfg) / "train" / "best.pt"
    model, description = load_model(checkpoint, resolve_device(cfg.device), check=hypercolumn_model_only)
    files = image_paths([cfg.images], "--images")
    out = Path(cfg.out) if cfg.out else stage_dir(cfg) / "predictions"
    refuse_input_data(out, "--out")
    # Only a folder Hypercolumns wrote (its ownership record), or a new or empty one; --force redoes masks there.
    out = claim_folder(out, TOOL, "--out")
    targets = [out / f"{f.stem}.png" for f in files]
    existing = [t for t in targets if t.exists() or t.is_symlink()]
    if existing and not cfg.force:
        raise DataError(f"{len(existing)} masks exist already in {out} (e.g. {existing[0].name}): pass --force to "
                        f"replace them, or another --out")
    for source, target in progress_bar(list(zip(files, targets)), cfg, desc="predicting"):
        prediction = predict_masks(model, [read_rgb(source)], description.mean, description.std)[0]
        with writing_into(out, target.name, "--out") as path:
            save_mask_png(prediction, description.palette, path)
    print(f"wrote {len(targets)} masks to {out}")
    return targets
