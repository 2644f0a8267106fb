"""The training loop: settings resolved per run, losses, trainable tokens and K/V deltas, run files, history."""
