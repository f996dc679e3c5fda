"""Does training wait for data? The data_wait_fraction of real training runs on VOC-sized JPEGs.

    python bench/data_wait.py                      # on a GPU: segmentnet, crop 512, batch 16, the default workers
    python bench/data_wait.py --workers 2,4,8      # several loader worker counts, one run each
    python bench/data_wait.py --device cpu --images 8 --crop-size 96 --batch-size 4 --epochs 2 \
        --model-options '{"width": 8, "depth": 2, "blocks": 1}' --workers 0,2  # a quick CPU run

It generates VOC-sized scenes (500x375 JPEG + palette PNG mask, as bench/input_pipeline.py does) in
the common layout, then for each worker count runs TrainSegmentNet's own train() with the speed
options of the README's GPU command, and prints, from each run's metrics.jsonl, every epoch's
data_wait_fraction: the share of the epoch's training time the loop spent blocked waiting for the
next batch (each step ends with loss.item(), so the device is idle while it waits) and images/s.
The first epoch includes starting the workers (and compiling, with --compile true); the last epoch
is the steady state. Validation is not measured (a few images, only because train() needs them).
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from input_pipeline import cpu_name, write_dataset  # noqa: E402

from segmentnet.core.cli import call_main  # noqa: E402
from segmentnet.core.config import ConfigError, parse_config  # noqa: E402
from segmentnet.training.data import loader_workers  # noqa: E402
from segmentnet.training.engine import train  # noqa: E402
from TrainSegmentNet import Config as TrainConfig  # noqa: E402


@dataclass
class Config:
    images: int = 320             # generated train images (20 steps of batch 16 per epoch)
    val_images: int = 4           # generated val images
    width: int = 500              # size of the generated images: VOC's most common one
    height: int = 375             # (their height)
    quality: int = 90             # JPEG quality
    workers: str = "-1"           # comma-separated loader worker counts, one run each (-1: TrainSegmentNet's default)
    model: str = "segmentnet"     # the model trained
    model_options: dict = field(default_factory=dict)  # its options (JSON object)
    crop_size: int = 512          # training crop
    batch_size: int = 16          # images per step
    epochs: int = 3               # epochs per run; the last is the steady state
    amp: bool = True              # as TrainSegmentNet (bf16 autocast on a GPU)
    channels_last: bool = True    # as the README's GPU command (ignored on CPUs)
    compile: bool = False         # torch.compile (its first epoch then includes compiling)
    device: str = "auto"          # auto (CUDA when present), cpu, cuda or cuda:N
    seed: int = 0                 # seeds the generated images and the training
    data: str = ""                # folder for the generated set and the runs (default: a temporary folder)
    json_out: str = ""            # also write the figures as JSON to this file


def worker_counts(text: str) -> list[int]:
    """The counts asked for, -1 resolved as TrainSegmentNet resolves it (one per CPU core, at most 8)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < -1:
        raise ConfigError(f"workers must be comma-separated counts >= 0 (or -1, the default), e.g. 2,4,8; "
                          f"got {text!r}")
    return [loader_workers(count) for count in counts]


def run_one(data_dir: Path, out: Path, workers: int, cfg: Config) -> list[dict]:
    """One training run; returns its epochs' records from metrics.jsonl."""
    train_cfg = TrainConfig(dataset="voc2012", data_dir=str(data_dir), out=str(out), model=cfg.model,
                            model_options=dict(cfg.model_options), crop_size=cfg.crop_size,
                            batch_size=cfg.batch_size, epochs=cfg.epochs, workers=workers, amp=cfg.amp,
                            channels_last=cfg.channels_last, compile=cfg.compile, device=cfg.device,
                            seed=cfg.seed, progress=False)
    train(train_cfg)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> int:
    cfg = parse_config(Config, argv, description=__doc__)
    counts = worker_counts(cfg.workers)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(cfg.data or tmp)
        # The generated set is VOC-like (VOC's classes and palette), so it trains as dataset voc2012.
        write_dataset(base / "data" / "voc2012", cfg, {"train": cfg.images, "val": cfg.val_images})
        for workers in counts:
            records = run_one(base / "data", base / "runs" / f"workers{workers}", workers, cfg)
            results.append({"workers": workers, "epochs": [
                {"epoch": r["epoch"], "data_wait_fraction": r["data_wait_fraction"],
                 "images_per_second": r["images_per_second"], "epoch_seconds": r["epoch_seconds"]}
                for r in records]})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and cfg.device != "cpu" else cpu_name()
    print(f"\nmachine: {device}, torch {torch.__version__}; {cfg.model} {cfg.model_options or ''}, crop "
          f"{cfg.crop_size}, batch {cfg.batch_size}, {cfg.images} train images {cfg.width}x{cfg.height}, amp "
          f"{cfg.amp}, channels_last {cfg.channels_last}, compile {cfg.compile}")
    print(f"{'workers':>7} {'epoch':>5} {'data wait':>10} {'images/s':>9} {'seconds':>8}")
    for result in results:
        for e in result["epochs"]:
            print(f"{result['workers']:>7} {e['epoch']:>5} {e['data_wait_fraction']:>10.1%} "
                  f"{e['images_per_second']:>9.1f} {e['epoch_seconds']:>8.1f}")
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps({"config": vars(cfg), "machine": device,
                                                  "torch": torch.__version__, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
