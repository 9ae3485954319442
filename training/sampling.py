"""The order in which a run sees its data: one seeded permutation per epoch, shared out between the
processes of a torchrun job, so a seed gives the same order on any device and a resumed run goes on
with the next epoch's."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from training.devices import Processes

__all__ = ["EpochSampler", "epoch_order"]


def epoch_order(n: int, seed: int, epoch: int, processes: Processes) -> torch.Tensor:
    """This process's share of epoch `epoch`'s random order of n items (the same draw on every rank)."""
    return processes.shard(torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)))


class EpochSampler(torch.utils.data.Sampler):
    """`epoch_order` as DataLoader keys `epoch * n + index`, so a dataset in a persistent worker
    process knows the epoch (for its augmentation's random numbers) without being told."""

    def __init__(self, n: int, seed: int, processes: Processes) -> None:
        self.n, self.seed, self.processes, self.epoch = n, seed, processes, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.processes.world

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.n, self.seed, self.epoch, self.processes)
        return iter((order + self.epoch * self.n).tolist())
