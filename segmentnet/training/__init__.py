"""Training (TrainSegmentNet.py): the engine and its loop, the loaders and transforms, the
losses, the optimiser and schedule, the training state, resume and the run folder."""
