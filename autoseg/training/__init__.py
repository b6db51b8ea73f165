"""Training: network from the plan (more to come: sampler, augmentation, loss, loop, checkpoints)."""
