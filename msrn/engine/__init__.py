"""Running models on datasets: the training loop (`msrn train`), evaluation (`msrn evaluate`) and the demo.

`train` owns a run folder (checkpoints, history, reports) and builds on `losses`, `ema`,
`sampling` (a data order that survives a kill and resumes mid-epoch) and `tensorboard`;
`evaluate` scores a checkpoint on a split and `scores` writes its per-image probabilities.
It takes data from msrn.data, label sets from msrn.labels and models from msrn.models.
"""
