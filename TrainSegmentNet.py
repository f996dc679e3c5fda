"""Step 3: train a segmentation network on a prepared dataset.

    python TrainSegmentNet.py                                  # the defaults below
    python TrainSegmentNet.py --model segmentnet --epochs 50 --lr 0.01
    python TrainSegmentNet.py --config my_run.json --batch-size 16
    python TrainSegmentNet.py --resume runs/NAME/last.pt       # continue where it stopped
    python TrainSegmentNet.py --resume runs/NAME/best.pt --out runs/NEW   # a new run from that checkpoint
    python TrainSegmentNet.py --dataset camvid --auto true --time-budget 60   # settings planned for the budget
    torchrun --nproc_per_node=4 TrainSegmentNet.py ...         # several GPUs

Every hyperparameter below can be set as --name value (dashes or underscores alike) or in a JSON
file given with --config; flags win over the file, the file over these defaults.
From Python: `from TrainSegmentNet import Config, train, train_one_epoch, StepSettings, evaluate, build_loss`
(train_one_epoch's settings: `StepSettings.of(config, env, facts)`).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from segmentnet.core.cli import call_main
from segmentnet.core.config import config_from_dict, read_settings
from segmentnet.training.engine import train
from segmentnet.training.loops import (  # noqa: F401  (this script's interface, as its docstring says)
    StepSettings, evaluate, train_one_epoch)
from segmentnet.training.losses import build_loss  # noqa: F401


@dataclass
class Config:
    # data
    dataset: str = "voc2012"          # dataset name: a folder DATA_DIR/<dataset> written by DataSeparate.py
    data_dir: str = "data"            # folder holding the prepared datasets
    crop_size: int = 384              # training crops are crop_size x crop_size pixels
    scale_min: float = 0.5            # lower end of the random scale range for training images
    scale_max: float = 2.0            # upper end of the random scale range
    flip: float = 0.5                 # probability of a horizontal flip
    pad: bool = True                  # pad images smaller than the crop (mask padded with 255)
    colour_jitter: float = 0.0        # random brightness, contrast and saturation, each by a factor in 1 +- this
    workers: int = -1                 # data loader processes per training process; -1: one per CPU core, at most 8
    # model
    model: str = "segmentnet"         # a name from the registry (python SegmentNet.py lists them)
    model_options: dict = field(default_factory=dict)  # JSON object of model options, e.g. {"width": 32}
    # optimisation
    epochs: int = 50                  # passes over the training set (with time_budget: at most this many)
    time_budget: float = 0.0          # minutes for the whole training, validation included; > 0 fits the schedule to them
    val_every: int = 1                # validate (curves, pictures, best.pt) every this many epochs; the last one always
    batch_size: int = 8               # images per step per process
    grad_accum: int = 1               # micro-batches accumulated per optimiser step
    optimizer: str = "adamw"          # adamw or sgd
    lr: float = 1e-3                  # peak learning rate, reached after the warmup
    momentum: float = 0.9             # SGD momentum (Nesterov)
    weight_decay: float = 1e-4        # decoupled for AdamW, L2 for SGD; never on biases and norms
    warmup_epochs: float = 1.0        # linear warmup from 0, then polynomial decay to 0
    poly_power: float = 0.9           # exponent of the polynomial decay
    loss: str = "jaccard"             # jaccard (soft Jaccard), lovasz, dice, focal, ce, ce+jaccard, ce+lovasz, ce+dice
    class_weights: str = "none"       # none, median_freq, inverse_freq or enet, from dataset.json's pixel counts
    aux_weights: dict = field(default_factory=dict)  # weights of auxiliary outputs, e.g. {"aux": 0.4}
    skip_nonfinite: bool = False      # skip (and count) steps whose loss is NaN or inf instead of stopping
    # hardware
    device: str = "auto"              # auto (CUDA when present, else CPU), cpu, cuda or cuda:N
    amp: bool = True                  # half-precision autocast: on CUDA by default, on CPU only with amp_dtype set
    amp_dtype: str = "auto"           # auto (bf16 where the GPU has it, else fp16 + gradient scaler), bfloat16, float16
    channels_last: bool = False       # NHWC memory layout (faster convolutions on tensor cores)
    compile: bool = False             # torch.compile the model
    cudnn_benchmark: bool = True      # let cuDNN pick the fastest convolution algorithms
    sync_bn: bool = False             # synchronise batch norm statistics across processes
    # run
    seed: int = 0                     # seeds initialisation, data order and augmentation
    out: str = ""                     # run folder (default runs/<dataset>-<model>-<time>): one run, locked in use
    resume: str = ""                  # checkpoint to continue (last.pt); with a new or empty --out: as a new run there
    resume_older: bool = False        # resume a checkpoint older than its folder's last.pt (drops later epochs)
    progress: bool = True             # show progress bars
    tensorboard: bool = False         # also write TensorBoard events (needs: pip install tensorboard; else a warning)
    auto: bool = False                # plan every setting not given here from the data, this machine and time_budget (plan.json)


def main(argv=None) -> int:
    given, source = read_settings(Config, argv, description=__doc__)
    summary = train(config_from_dict(Config, given, source), given)
    if summary["interrupted"] is not None:
        return 128 + summary["interrupted"]
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
