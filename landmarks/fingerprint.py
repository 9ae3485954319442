"""The content fingerprint of a core or adapter: what binds an adapter to the exact core it adapts."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["dense", "tensor_fingerprint"]


def dense(t: torch.Tensor) -> torch.Tensor:
    """Row-major CPU copy. Not `.contiguous()`: a channels_last 1x1-conv weight counts as contiguous
    (size-1 dims' strides are ignored) yet its last stride is not 1, which byte views reject."""
    import torch

    return t.detach().cpu().clone(memory_format=torch.contiguous_format)


# numpy dtype -> torch's name for it: the fingerprint names dtypes as torch does (the stored core_sha256s)
_TORCH_DTYPE_NAMES = {np.dtype(k): f"torch.{v}" for k, v in (
    ("float32", "float32"), ("float64", "float64"), ("float16", "float16"), ("int64", "int64"), ("int32", "int32"),
    ("int16", "int16"), ("int8", "int8"), ("uint8", "uint8"), ("bool", "bool"))}


def tensor_fingerprint(tensors: Mapping[str, Any]) -> str:
    """sha256 over each tensor's name, dtype, shape and row-major bytes, in name order; numpy arrays
    or torch tensors (the same tensors give the same fingerprint either way)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        if isinstance(t, np.ndarray):
            dtype, data = _TORCH_DTYPE_NAMES[t.dtype], np.ascontiguousarray(t)
        else:  # a torch tensor
            import torch

            t = t.detach()
            dtype = str(t.dtype)
            data = dense(t).view(torch.uint8).numpy() if t.numel() else None
        digest.update(f"{name}|{dtype}|{tuple(t.shape)}|".encode())
        if data is not None and data.size:
            digest.update(data.data if data.flags.c_contiguous else data.tobytes())
    return digest.hexdigest()
