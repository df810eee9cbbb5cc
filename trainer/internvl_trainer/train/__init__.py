"""The training run: process-group environment, progress reporting, the loop, checkpoints."""
