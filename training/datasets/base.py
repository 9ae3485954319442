"""What every dataset reader returns: samples with points, and a report of what it skipped."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["IMAGE_SUFFIXES", "LICENSES", "Dataset", "DatasetError", "ReadReport", "Sample", "check_image", "flip_permutation"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


# What each known dataset's images may be used for (the readers set them; see ../shared/data/README.md).
LICENSES = {
    "lsp": "Trained on LSP (research use only; Johnson & Everingham 2010)",
    "lspet": "Trained on LSP-extended (research use only; Johnson & Everingham 2011)",
    "mpii": "Trained on MPII Human Pose (BSD-2 annotations, images for research use; Andriluka et al. 2014)",
    "mtfl": "Trained on MTFL images (research use only; Zhang et al. 2014)",
    "300w": "Trained on 300-W images (research use only; Sagonas et al. 2013)",
    "cats": "Trained on the Cat dataset (research use only; Zhang, Sun & Tang 2008)",
}


class DatasetError(ValueError):
    """A dataset path or format is unusable; the message says what was expected."""


@dataclass(frozen=True)
class Sample:
    """One image and its annotation in original-image pixels (pixel centres at integers).

    points: (K, 2) float32 (x, y), or None for unlabelled images.
    visible: (K,) bool, True where the point is annotated (and usable for training/metrics).
    box: optional (x0, y0, x1, y1) edge-coordinate box of the object (e.g. MPII center/scale).
    """

    path: Path
    points: np.ndarray | None = None
    visible: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None


@dataclass
class ReadReport:
    """Counts of what a reader kept and skipped, with reasons (shown to the user)."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, example: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, example)

    def __str__(self) -> str:
        lines = [f"kept {self.kept} samples"]
        for reason, count in self.skipped.most_common():
            lines.append(f"skipped {count}: {reason} (e.g. {self.examples[reason]})")
        return "; ".join(lines)


@dataclass
class Dataset:
    name: str
    samples: list[Sample]
    report: ReadReport
    landmark_names: list[str] = field(default_factory=list)
    # Index pairs swapped by a horizontal flip (left <-> right), for augmentation.
    flip_pairs: list[tuple[int, int]] = field(default_factory=list)
    # The images' terms of use, recorded in every file trained on them; "" where the reader cannot
    # know them (a plain folder: the user says, e.g. `landmarks adapt --license`).
    license: str = ""

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, spec: str | None) -> Dataset:
        """Python-slice subset, e.g. ':9000' (first 9,000) or '9000:' (the rest)."""
        if not spec:
            return self
        try:
            parts = [int(p) if p.strip() else None for p in spec.split(":")]
        except ValueError:
            raise DatasetError(f"split {spec!r} must look like START:STOP, e.g. ':9000' or '9000:'") from None
        if len(parts) != 2:
            raise DatasetError(f"split {spec!r} must look like START:STOP, e.g. ':9000' or '9000:'")
        return dataclasses.replace(self, samples=self.samples[slice(*parts)])


def flip_permutation(num_points: int, flip_pairs: list[tuple[int, int]]) -> list[int]:
    """Index i -> the point that takes i's place after a horizontal flip (left <-> right swapped)."""
    order = list(range(num_points))
    for a, b in flip_pairs:
        order[a], order[b] = b, a
    return order


def check_image(path: Path, report: ReadReport, verify: bool = False) -> bool:
    """True if `path` is an image (header parses; with verify, fully decodes), else record why not.

    The header check is cheap and catches missing files and non-images; truncated pixel data is
    only caught by verify=True (or later by the loader, which then skips the sample).
    """
    if not path.is_file():
        report.skip("missing image file", str(path))
        return False
    try:
        with Image.open(path) as im:
            if verify:
                im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        report.skip("corrupt or unreadable image", f"{path}: {exc}")
        return False
    return True
