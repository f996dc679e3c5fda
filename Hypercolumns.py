"""Hypercolumns in three stages, then prediction; the CNN and layers must be the same in all of them.

    python Hypercolumns.py extract  --cnn sqn            # 1. sampled pixels' hypercolumns -> one file
    python Hypercolumns.py pretrain --cnn sqn            # 2. the pixel classifier, on that file only
    python Hypercolumns.py train    --cnn sqn -- --epochs 20 --batch-size 8   # 3. TrainSegmentNet run
    python Hypercolumns.py predict  --cnn sqn --images some/folder            # masks for images

Outputs go to WORK_DIR/<dataset>-<cnn>-<layers>/: hypercolumns.bin, classifier.pt, train/ (a
TrainSegmentNet run folder) and predictions/. A stage whose output exists reuses it, or stops when
its settings differ (--force redoes it). Flags after -- in the train stage are TrainSegmentNet's.
Every setting below can be given as --name value or in a JSON file with --config.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

from segmentnet.core.cli import call_main
from segmentnet.core.config import parse_config
from segmentnet.core.errors import UsageError

STAGES = ("extract", "pretrain", "train", "predict")
RENAMED = {"run": "predict"}  # the earlier name of a stage, still accepted


@dataclass
class Config:
    # all stages
    dataset: str = "voc2012"          # a folder DATA_DIR/<dataset> written by DataSeparate.py
    data_dir: str = "data"            # folder holding the prepared datasets
    cnn: str = "squeezenet"           # squeezenet (or sqn: SqueezeNet 1.1) or vgg16 (or vgg)
    layers: str = ""                  # indices into the CNN's features to tap, comma-separated ("" = its default)
    encoder_weights: str = "IMAGENET1K_V1"  # torchvision's weights by name (via torch.hub's cache), a path, or "" for random
    model_options: dict = field(default_factory=dict)  # further model options: hidden (512), cnn_seed
    work_dir: str = "hypercolumns"    # stage outputs go to WORK_DIR/<dataset>-<cnn>-<layers>/
    seed: int = 0                     # seeds the pixel sampling and the training
    device: str = "auto"              # auto (CUDA when present, else CPU), cpu, cuda or cuda:N
    force: bool = False               # redo a stage whose output exists (it is replaced)
    progress: bool = True             # show progress bars
    # extract
    samples_per_image: int = 500      # pixels sampled per image (all labelled ones if fewer)
    balanced: bool = True             # class-balanced sampling of the train split (val is always uniform)
    # pretrain
    features: str = ""                # the hypercolumns file (default STAGE_DIR/hypercolumns.bin)
    pretrain_epochs: int = 20         # passes over the stored train vectors
    pretrain_lr: float = 1e-3         # AdamW's peak learning rate, decayed linearly to 0
    pretrain_batch_size: int = 1024   # vectors per step
    # train (TrainSegmentNet's own flags go after --)
    classifier: str = ""              # the pre-trained classifier (default STAGE_DIR/classifier.pt)
    finetune: bool = False            # train the CNN too (frozen by default)
    # predict
    images: str = ""                  # an image file or a folder of images
    checkpoint: str = ""              # trained model (default STAGE_DIR/train/best.pt)
    out: str = ""                     # folder for the masks (default STAGE_DIR/predictions)


def main(argv=None) -> int:
    from segmentnet.hypercolumns import features as hypercolumns, train as hypercolumn_train

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in RENAMED:
        print(f"note: the stage {argv[0]} is called {RENAMED[argv[0]]} now", file=sys.stderr)
        argv[0] = RENAMED[argv[0]]
    if not argv or argv[0] not in STAGES:
        if argv and argv[0] in ("-h", "--help"):
            print(__doc__)
            return 0
        raise UsageError(f"give a stage first: {', '.join(STAGES)} (got {argv[0] if argv else 'nothing'}); "
                         f"e.g. python Hypercolumns.py extract --cnn sqn")
    stage, argv = argv[0], argv[1:]
    user_train_flags = []
    if "--" in argv:
        if stage != "train":
            raise UsageError(f"flags after -- are TrainSegmentNet's, for the train stage only, not {stage}")
        cut = argv.index("--")
        argv, user_train_flags = argv[:cut], argv[cut + 1:]
    cfg = parse_config(Config, argv, description=__doc__)
    if stage == "extract":
        hypercolumns.extract(cfg)
    elif stage == "pretrain":
        hypercolumns.pretrain(cfg)
    elif stage == "train":
        from TrainSegmentNet import Config as TrainConfig

        summary = hypercolumn_train.train(hypercolumn_train.train_config(cfg, TrainConfig, user_train_flags))
        if summary["interrupted"] is not None:
            return 128 + summary["interrupted"]
    else:
        hypercolumn_train.predict(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(call_main(main))
