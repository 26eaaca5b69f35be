"""A reproducible DataLoader: seeded shuffling and per-worker seeding of `random` and numpy."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def seed_worker(worker_id: int) -> None:
    """Seed Python's `random` and numpy in a worker from torch's per-worker seed (base seed + id)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class OwnRandomStreams(Dataset):
    """A dataset whose items are read with `random` and numpy switched to streams of its own, seeded once;
    the global streams are put back after every item, so reading never reseeds or advances them."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self._python = random.Random(seed).getstate()
        self._numpy = np.random.RandomState(seed % 2**32).get_state()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # map-style datasets have a length

    def __getitem__(self, key):
        outer_python, outer_numpy = random.getstate(), np.random.get_state()
        random.setstate(self._python)
        np.random.set_state(self._numpy)
        try:
            return self.dataset[key]
        finally:
            self._python, self._numpy = random.getstate(), np.random.get_state()
            random.setstate(outer_python)
            np.random.set_state(outer_numpy)


MAX_WORKERS = 8  # per training process; each decodes, crops and resizes a 448 px JPEG at ~100-200 images/s


def default_workers(cuda: bool) -> int:
    """Loading processes per training process: on a CUDA machine the CPUs this process may use, shared
    among the node's processes (torchrun's LOCAL_WORLD_SIZE), less one for the process itself, at most
    MAX_WORKERS; without CUDA at most 2, as the model's own threads need the cores."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = cpus // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) - 1
    return max(0, min(MAX_WORKERS if cuda else 2, share))


def build_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    seed: int,
    drop_last: bool = False,
    pin_memory: bool | None = None,
    sampler: Sampler | None = None,
) -> DataLoader:
    """Build a DataLoader whose order and augmentations are reproducible for a given seed.

    With workers > 0 each (persistent) worker seeds `random`/numpy from the seeded generator; with
    workers == 0 the transforms run in this process on the loader's own streams (`OwnRandomStreams`),
    so the caller's global generators are left as they were. `shuffle` is ignored when a sampler is
    given (the sampler decides the order).
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        OwnRandomStreams(dataset, seed) if workers == 0 else dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        worker_init_fn=seed_worker if workers > 0 else None,
        persistent_workers=workers > 0,
    )
