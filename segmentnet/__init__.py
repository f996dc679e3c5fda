"""SegmentNet: semantic segmentation training, one small package behind the top-level scripts."""
