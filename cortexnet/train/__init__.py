"""Training: the Hydra app, the loop, schedules and checkpoints."""
