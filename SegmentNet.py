"""The residual UNet (SegmentNet) and the model registry, re-exported for scripts and notebooks.

    from SegmentNet import SegmentNet, MODELS, build_model
    model = build_model("segmentnet", num_classes=21, width=32, depth=4)
"""
from segmentnet.models import MODELS, SegmentNet, build_model

__all__ = ["MODELS", "SegmentNet", "build_model"]

if __name__ == "__main__":
    for name in sorted(MODELS):
        model = build_model(name, num_classes=21)
        print(f"{name:24s} {sum(p.numel() for p in model.parameters()) / 1e6:8.2f} M parameters")
