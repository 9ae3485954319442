"""Dataset readers for the real public formats, opened from a `format:path` spec.

    lspet:<dir>        LSP-extended (joints.mat 14 x 3 x N + images/)
    lsp:<dir>          LSP (joints.mat 3 x 14 x N + images/)
    mpii:<file.json>   MPII, JSON release with center/scale per person
    mtfl:<list.txt>    MTFL / AFLW 5-point list (`path x1..x5 y1..y5`, paths relative to the list)
    300w:<dir>         300-W style 68-point `.pts` files next to .jpg/.png images (recursive)
    cats:<dir>         original Cat dataset: `name.jpg.cat` (9 points) next to name.jpg (recursive)
    folder:<dir>       unlabelled images (recursive), e.g. AFHQ cats or UT-Zappos shoes
"""

from __future__ import annotations

from collections.abc import Callable

from training.datasets.base import Dataset, DatasetError, ReadReport, Sample
from training.datasets.faces import read_300w, read_mtfl
from training.datasets.images import read_cat_annotations, read_image_folder
from training.datasets.pose import read_lsp, read_lspet, read_mpii

__all__ = ["READERS", "Dataset", "DatasetError", "ReadReport", "Sample", "open_dataset"]

READERS: dict[str, Callable[[str], Dataset]] = {
    "lspet": read_lspet,
    "lsp": read_lsp,
    "mpii": read_mpii,
    "mtfl": read_mtfl,
    "300w": read_300w,
    "cats": read_cat_annotations,
    "folder": read_image_folder,
}


def open_dataset(spec: str) -> Dataset:
    """Open `format:path` (see the module docstring for the formats)."""
    fmt, sep, path = spec.partition(":")
    if not sep or not path:
        raise DatasetError(f"dataset {spec!r} must be FORMAT:PATH with FORMAT one of {sorted(READERS)}")
    if fmt not in READERS:
        raise DatasetError(f"unknown dataset format {fmt!r} in {spec!r}; known: {sorted(READERS)}")
    return READERS[fmt](path)
