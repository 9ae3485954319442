"""A network run with its parameters and buffers swapped for given tensors. Traced (TorchScript,
ONNX), the tensors become graph inputs, so one graph serves every adapter's folded weights."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

__all__ = ["WeightSlots"]


class WeightSlots:
    """The slots of `model`'s parameters and buffers named `names`, in that order."""

    def __init__(self, model: torch.nn.Module, names: Sequence[str]) -> None:
        self._slots = []
        for name in names:
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner)
            self._slots.append((module._parameters if attr in module._parameters else module._buffers, attr))

    @contextmanager
    def holding(self, tensors: Sequence[torch.Tensor]) -> Iterator[None]:
        """Inside the block the slots hold `tensors`; the model's own come back after it."""
        saved = [table[attr] for table, attr in self._slots]
        try:
            for (table, attr), tensor in zip(self._slots, tensors):
                table[attr] = tensor
            yield
        finally:
            for (table, attr), tensor in zip(self._slots, saved):
                table[attr] = tensor
