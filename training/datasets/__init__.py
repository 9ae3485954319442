"""Dataset readers for the real public formats, opened from a `format:path` spec.

    lspet:<dir>        LSP-extended (joints.mat 14 x 3 x N + images/)
    lsp:<dir>          LSP (joints.mat 3 x 14 x N + images/)
    mpii:<file.json>   MPII, JSON release with center/scale per person
"""

from __future__ import annotations

from typing import Callable

from training.datasets.base import Dataset, DatasetError, ReadReport, Sample
from training.datasets.pose import read_lsp, read_lspet, read_mpii

__all__ = ["Dataset", "DatasetError", "ReadReport", "Sample", "READERS", "open_dataset"]

READERS: dict[str, Callable[[str], Dataset]] = {
    "lspet": read_lspet,
    "lsp": read_lsp,
    "mpii": read_mpii,
}


def open_dataset(spec: str) -> Dataset:
    """Open `format:path` (see the module docstring for the formats)."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(f"dataset {spec!r} must be FORMAT:PATH with FORMAT one of {sorted(READERS)}")
    if fmt not in READERS:
        raise DatasetError(f"unknown dataset format {fmt!r} in {spec!r}; known: {sorted(READERS)}")
    return READERS[fmt](path)
