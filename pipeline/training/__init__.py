"""The training loop and what it composes: lr schedule, checkpoints, run records, output lock, metrics, validation."""
