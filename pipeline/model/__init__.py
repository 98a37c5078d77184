"""The MEXMA model on packed batches: encoder + cross-unmasking head, attention dispatch, losses, padded reference."""
