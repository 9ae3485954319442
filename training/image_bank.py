"""A category's images for adaptation: decoded and cropped once, then served as batches on the device.

Every step of `landmarks adapt` draws a random batch of the same few thousand small crops. Decoding
and resizing them again each epoch costs CPU time a 2-core machine cannot spare and a GPU cannot wait
for, so the crops are decoded once (by `workers` processes) into one uint8 tensor: on the GPU when it
fits in a quarter of the free GPU memory, else in (pinned) host memory; all augmentation then runs on
the device (training.pairs). A set too large for memory is streamed from disk by a DataLoader instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
from tqdm import tqdm

from training.datasets import Dataset
from training.devices import Processes
from training.image_data import ObjectCrops
from training.sampling import epoch_order

__all__ = ["ImageBank", "host_memory_budget"]

MAX_HOST_BYTES = 8 << 30


def host_memory_budget() -> int:
    """Bytes of host memory a bank may take: a quarter of what is available, at most 8 GiB."""
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not on Linux: assume 16 GiB
        available = 16 << 30
    return min(MAX_HOST_BYTES, available // 4)


class ImageBank:
    """Batches of (B, 3, S, S) float images in [0, 1] on `device`, in a seeded order per epoch."""

    def __init__(self, dataset: Dataset, size: int, device: torch.device, processes: Processes,
                 batch_size: int, seed: int = 0, workers: int = 0, memory_bytes: int | None = None) -> None:
        self.dataset, self.size, self.device, self.processes = dataset, size, device, processes
        self.batch_size, self.seed, self.workers = batch_size, seed, workers
        self.crops = ObjectCrops(dataset, size)
        need = len(dataset) * 3 * size * size
        on_gpu = device.type == "cuda" and need <= torch.cuda.mem_get_info(device)[0] // 4
        budget = memory_bytes if memory_bytes is not None else host_memory_budget()
        self.images: torch.Tensor | None = None
        if on_gpu or need <= budget:
            self.images = self._decode(device if on_gpu else torch.device("cpu"))
            if device.type == "cuda" and not on_gpu:
                self.images = self.images.pin_memory()
        where = ("streamed from disk" if self.images is None else
                 f"decoded once, {need / 2**20:.0f} MiB {'on the GPU' if on_gpu else 'in host memory'}")
        self.description = f"{len(self)} images at {size} px, {where}"

    def __len__(self) -> int:
        return len(self.crops) if self.images is None else len(self.images)

    def steps_per_epoch(self) -> int:
        return len(self) // self.processes.world // self.batch_size

    def _loader(self, sampler, batch_size: int, streaming: bool) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.crops, batch_size=batch_size, sampler=sampler, drop_last=streaming,
                                           num_workers=self.workers,
                                           pin_memory=streaming and self.device.type == "cuda")

    def _decode(self, where: torch.device) -> torch.Tensor:
        kept = []
        loader = self._loader(None, 64, streaming=False)
        desc = f"decoding {len(self.crops)} images"
        for images, _, _, ok in tqdm(loader, desc=desc, disable=not self.processes.main, mininterval=5, leave=False):
            # crops are whole uint8 pixels / 255, so uint8 storage loses nothing
            kept.append((images[ok] * 255).round().to(torch.uint8))
        return torch.cat(kept).to(where)

    def batches(self, epoch: int) -> Iterator[torch.Tensor]:
        order = epoch_order(len(self), self.seed, epoch, self.processes)
        if self.images is None:
            loader = self._loader(order.tolist(), self.batch_size, streaming=True)
            for images, _, _, ok in loader:
                images = images[ok]
                if len(images) == self.batch_size:  # an unreadable image drops its batch (BN needs equal sizes)
                    yield images.to(self.device, non_blocking=True)
            return
        order = order.to(self.images.device)
        for i in range(self.steps_per_epoch()):
            batch = self.images[order[i * self.batch_size:(i + 1) * self.batch_size]]
            yield batch.to(self.device, non_blocking=True).float().div_(255)
