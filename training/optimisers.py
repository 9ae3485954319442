"""One optimisation step, the same on every device: mixed-precision loss scaling (fp16 only),
gradients averaged across torchrun processes, clipping, and the optimisers' steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from training.devices import Precision, Processes

__all__ = ["ClipGroup", "Optimisers"]


@dataclass(frozen=True)
class ClipGroup:
    parameters: list[nn.Parameter]
    max_norm: float  # 0 = no clipping


class Optimisers:
    """Named optimisers stepped together from one loss; `state()` / `load_state()` for checkpoints."""

    def __init__(self, optimisers: dict[str, torch.optim.Optimizer], precision: Precision, processes: Processes,
                 device: torch.device, clip: Sequence[ClipGroup] = ()) -> None:
        self.optimisers, self.processes, self.clip = optimisers, processes, list(clip)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision.scaled)
        self.parameters = [p for o in optimisers.values() for g in o.param_groups for p in g["params"]]

    def set_lr(self, name: str, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimisers[name].param_groups, lrs, strict=True):
            group["lr"] = lr

    def step(self, loss: torch.Tensor) -> None:
        for o in self.optimisers.values():
            o.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.processes.average_gradients(self.parameters)
        for o in self.optimisers.values():
            self.scaler.unscale_(o)
        for group in self.clip:
            if group.max_norm:
                nn.utils.clip_grad_norm_(group.parameters, group.max_norm)
        for o in self.optimisers.values():
            self.scaler.step(o)
        self.scaler.update()

    def state(self) -> dict[str, dict]:
        return {name: o.state_dict() for name, o in self.optimisers.items()}

    def load_state(self, state: dict[str, dict]) -> None:
        for name, o in self.optimisers.items():
            o.load_state_dict(state[name])
