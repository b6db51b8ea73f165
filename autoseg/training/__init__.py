"""Training: network, sampler, augmentation, loss, schedule, checkpoints, loop, distributed.

The door is `autoseg.training.loop.train`; this package imports nothing itself so that the CLI
can read `TrainOptions` defaults without loading torch.
"""
