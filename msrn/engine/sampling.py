"""Data order that survives a kill: per-epoch permutations from the seed, resumable mid-epoch,
and augmentation seeded per (seed, epoch, image) so it does not depend on workers or restarts.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class EpochSampler(Sampler):
    """Yields (epoch, index) keys: a seeded permutation per epoch, this rank's shard, from `start` on.

    Under DDP the permutation is padded to a multiple of the world size (training only) with its
    own first entries, and rank r takes positions r, r + world, ... of what is left after the
    first `start` positions. `start` counts samples already done by all ranks together (steps x
    global batch), so a run stopped mid-epoch resumes on the same images with any world size
    that divides the global batch.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world: int = 1):
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first `start` (global) positions."""
        self.epoch, self.start = epoch, start

    def order(self) -> np.ndarray:
        """This rank's remaining indices of the epoch, in order."""
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        else:
            order = np.arange(self.n)
        pad = (-len(order)) % self.world
        order = np.concatenate([order, order[:pad]])
        return order[self.start :][self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for i in self.order():
            yield self.epoch, int(i)

    def __len__(self) -> int:
        return len(self.order())


class SeededView(Dataset):
    """Wraps a dataset so item (epoch, i) runs its transform with `random` seeded from (seed, epoch, i)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # map-style datasets have a length

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        random.seed(int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0]))
        return self.dataset[i]


def rng_state() -> dict:
    """Every global random state, in a form torch.load(weights_only=True) accepts."""
    legacy = np.random.get_state(legacy=True)
    assert isinstance(legacy, tuple)  # legacy=True: (kind, keys, pos, has_gauss, gauss)
    kind, keys, pos, has_gauss, gauss = legacy
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
