"""Training: the run loop, its state and checkpoints, logging, data and feature cache."""
