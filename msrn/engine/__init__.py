"""Training and evaluation: the typed configuration and presets (`config`), the loop (`train`), losses,
weight averaging (`ema`), resumable sampling, evaluation and its score files, and tensorboard logging."""
