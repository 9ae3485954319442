"""Dataset readers for the real public formats, opened from a `format:path` spec.

    lspet:<dir>        LSP-extended (joints.mat 14 x 3 x N + images/)
    lsp:<dir>          LSP (joints.mat 3 x 14 x N + images/)
    mpii:<file.json>   MPII, JSON release with center/scale per person
    mtfl:<list.txt>    MTFL / AFLW 5-point list (`path x1..x5 y1..y5`, paths relative to the list)
    300w:<dir>         300-W style 68-point `.pts` files next to .jpg/.png images (recursive)
    cats:<dir>         original Cat dataset: `name.jpg.cat` (9 points) next to name.jpg (recursive)
    folder:<dir>       unlabelled images (recursive), e.g. AFHQ cats or UT-Zappos shoes

A bare path works too when its format is plain from what it holds (`infer_format`): a list file
(.txt) is MTFL, a .json file MPII, a folder of .pts files 300-W, of .cat files the Cat dataset,
a folder with joints.mat LSP-extended, any other folder of images unlabelled images.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import islice
from pathlib import Path

from training.datasets.base import Dataset, DatasetError, ReadReport, Sample
from training.datasets.faces import read_300w, read_mtfl
from training.datasets.images import read_cat_annotations, read_image_folder
from training.datasets.pose import read_lsp, read_lspet, read_mpii

__all__ = ["READERS", "Dataset", "DatasetError", "ReadReport", "Sample", "infer_format", "open_dataset"]

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
    """Open `format:path`, or a bare path whose format `infer_format` can tell (module docstring)."""
    fmt, sep, path = spec.partition(":")
    if not sep or fmt not in READERS:
        if Path(spec).exists():
            fmt, path = infer_format(spec), spec
        elif not sep or not path:
            raise DatasetError(f"dataset {spec!r}: no such file or folder; give a path, or FORMAT:PATH with "
                               f"FORMAT one of {sorted(READERS)}")
        else:
            raise DatasetError(f"unknown dataset format {fmt!r} in {spec!r}; known: {sorted(READERS)}")
    return READERS[fmt](path)


_SAMPLE = 2000  # files looked at to tell a folder's format (a big folder is not listed whole)


def infer_format(path: str) -> str:
    """The reader for a bare path, from what it holds; DatasetError saying what to write instead
    when that is not plain."""
    p = Path(path)
    if p.is_file():
        by_suffix = {".txt": "mtfl", ".json": "mpii"}
        if p.suffix.lower() in by_suffix:
            return by_suffix[p.suffix.lower()]
        raise DatasetError(f"{path}: cannot tell the dataset format of a {p.suffix or 'suffix-less'} file; "
                           f"write FORMAT:{path} with FORMAT one of {sorted(READERS)}")
    if (p / "joints.mat").is_file():
        return "lspet"  # (LSP's own joints.mat has another layout: write lsp:PATH for it)
    suffixes = {f.suffix.lower() for f in islice(p.rglob("*"), _SAMPLE) if f.is_file()}
    found = [fmt for fmt, suffix in (("300w", ".pts"), ("cats", ".cat")) if suffix in suffixes]
    if len(found) > 1:
        raise DatasetError(f"{path} holds both .pts (300-W) and .cat (Cat dataset) annotations; write "
                           f"300w:{path}, cats:{path} or folder:{path}")
    return found[0] if found else "folder"
