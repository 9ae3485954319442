"""An adapter folded into the core, in numpy: the plain network's float32 weights by name.

The adapter (`landmarks.projection`'s format) holds a projection W_L (C_out, C_out) per targeted
convolution, every batch norm, a new head and, with targets="3x3", the convolutions it trains freely.
Folding multiplies each projection into the core's weight (W_L @ W reshaped to (C_out, -1)); every
other adapter tensor replaces the core's. The result is what `landmarks.projection.fold_state_dict`
gives in torch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["first_non_finite", "float32", "fold"]


def float32(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every array as float32 (a core is stored in float16), C-ordered."""
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def fold(core: Mapping[str, np.ndarray], adapter: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The plain network's float32 weights: `core` (float32, e.g. `float32(core.arrays)`, reused for
    every adapter) with `adapter` folded in. Raises ValueError if folding produced non-finite weights
    (finite projections times finite weights can overflow float32)."""
    folded = dict(core)
    made = {}
    for key, value in adapter.items():
        if key.endswith(".proj"):
            weight = f"{key[: -len('.proj')]}.weight"
            base = core[weight]
            with np.errstate(over="ignore", invalid="ignore"):  # reported below, with the tensor's name
                made[key] = (np.asarray(value, np.float32) @ base.reshape(base.shape[0], -1)).reshape(base.shape)
            folded[weight] = made[key]
        else:
            folded[key] = np.ascontiguousarray(value, dtype=np.float32)
    bad = first_non_finite(made)
    if bad is not None:
        raise ValueError(f"folding {bad} produced non-finite weights")
    return folded


def first_non_finite(arrays: Mapping[str, np.ndarray]) -> str | None:
    """The first key whose array holds a NaN or Inf, else None."""
    return next((k for k, a in arrays.items() if a.size and not np.isfinite(a).all()), None)
