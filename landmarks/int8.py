"""int8 calibration in torch: the folded network run eagerly over a category's images, each
convolution's input and output ranges recorded (MinMax). The format, the int8 graph and weights the
server builds from it are `landmarks.runtime.int8` (torch-free), re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from landmarks.runtime import int8 as _runtime
from landmarks.runtime.int8 import (
    CALIBRATION_KEY,
    DEFAULT_KEEP_FP32,
    MAX_POINT_ERROR_PX,
    REFUSED_KEY,
    Int8Calibration,
    checked_int8,
    int8_graph,
    int8_weights,
)

__all__ = ["CALIBRATION_KEY", "DEFAULT_KEEP_FP32", "MAX_POINT_ERROR_PX", "REFUSED_KEY", "Int8Calibration", "checked_int8",
           "conv_names", "conv_ranges", "int8_graph", "int8_weights", "kept_in_fp32", "measure"]


def measure(model: torch.nn.Module, images: torch.Tensor, keep: Iterable[str] = DEFAULT_KEEP_FP32) -> Int8Calibration:
    """The folded network's ranges over `images` (`conv_ranges`), the convolutions inside the modules
    `keep` left in fp32; no check (that is `landmarks calibrate`'s)."""
    return Int8Calibration(conv_ranges(model, images), kept_in_fp32(model, keep))


# ------------------------------------------------------------------------------------- calibration
def conv_names(model: torch.nn.Module) -> list[str]:
    """Every convolution's weight name, in the network's order."""
    return [f"{name}.weight" for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def kept_in_fp32(model: torch.nn.Module, modules: Iterable[str]) -> tuple[str, ...]:
    """The weight names of the convolutions inside any of `modules` (names like 'stem', 'head')."""
    return _runtime.kept_in_fp32(conv_names(model), modules)


@torch.no_grad()
def conv_ranges(model: torch.nn.Module, images: torch.Tensor, batch: int = 32) -> dict[str, tuple[float, ...]]:
    """Each convolution's input and output min and max over `images` ((N, 3, S, S) floats in [0, 1]),
    the folded fp32 network run eagerly: MinMax calibration, keyed by the weight name."""
    found: dict[str, list[float]] = {}

    def hook(name):
        def record(_module, inputs, output):
            x = inputs[0]
            seen = [x.min().item(), x.max().item(), output.min().item(), output.max().item()]
            old = found.setdefault(name, seen)
            found[name] = [min(old[0], seen[0]), max(old[1], seen[1]), min(old[2], seen[2]), max(old[3], seen[3])]
        return record

    handles = [m.register_forward_hook(hook(f"{n}.weight")) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Conv2d)]
    try:
        model.eval()
        for chunk in images.split(batch):
            model(chunk.float())
    finally:
        for h in handles:
            h.remove()
    return {k: tuple(v) for k, v in found.items()}
