"""Image-only and cat datasets: the original Cat dataset's `.cat` files, and plain image folders.

The Cat dataset (Zhang, Sun & Tang, ECCV 2008) stores `name.jpg.cat` next to `name.jpg`, one line
`9 x1 y1 x2 y2 ... x9 y9` of integer pixel coordinates. They are taken as 0-based pixel centres
(used as is): the files come from a C/OpenCV tool chain, not MATLAB, and every public tool reads
them straight into OpenCV/numpy pixel indices.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from training.datasets.base import (
    IMAGE_SUFFIXES,
    LICENSES,
    Dataset,
    DatasetError,
    ReadReport,
    Sample,
    check_image,
)

__all__ = ["CAT_EYES", "CAT_FLIP_PAIRS", "CAT_POINTS", "read_cat_annotations", "read_image_folder"]

# Left/right as the dataset names them: the left eye is on the image's left. The three points of
# each ear run clockwise around the head (left ear: outer base, tip, inner base; right ear: inner
# base, tip, outer base), so a mirror swaps left ear 1 <-> right ear 3 and 3 <-> 1.
CAT_POINTS = [
    "left_eye", "right_eye", "mouth",
    "left_ear_1", "left_ear_2", "left_ear_3",
    "right_ear_1", "right_ear_2", "right_ear_3",
]
CAT_FLIP_PAIRS = [(0, 1), (3, 8), (4, 7), (5, 6)]
CAT_EYES = (0, 1)

_CAT_FORMAT = "Cat dataset folder: `name.jpg.cat` files (`9 x1 y1 ... x9 y9`) next to name.jpg"


def read_cat_annotations(folder: str | Path, verify: bool = True) -> Dataset:
    """Every `*.cat` file under `folder` (recursive, sorted) with its image (the name minus `.cat`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; expected a {_CAT_FORMAT}")
    cat_files = sorted(p for p in folder.rglob("*.cat") if p.is_file())
    if not cat_files:
        raise DatasetError(f"{folder}: no .cat files; expected a {_CAT_FORMAT} "
                           "(for unlabelled images such as AFHQ use folder:<dir>)")
    report = ReadReport()
    samples: list[Sample] = []
    parsed = 0
    for cat in cat_files:
        try:
            values = [float(t) for t in cat.read_text().split()]
            if not values or values[0] != int(values[0]) or len(values) != 1 + 2 * int(values[0]):
                raise ValueError(f"{len(values)} numbers; expected N then N x, y pairs")
            if not all(math.isfinite(v) for v in values):
                raise ValueError("non-finite coordinate")
        except (ValueError, UnicodeDecodeError) as exc:
            report.skip("malformed .cat file", f"{cat}: {exc}")
            continue
        parsed += 1
        if int(values[0]) != len(CAT_POINTS):
            report.skip(f"not {len(CAT_POINTS)} points", f"{cat}: {int(values[0])} points")
            continue
        image = cat.with_suffix("")  # name.jpg.cat -> name.jpg
        if not check_image(image, report, verify=verify):
            continue
        points = np.asarray(values[1:], dtype=np.float32).reshape(-1, 2)
        samples.append(Sample(path=image, points=points, visible=np.ones(len(points), dtype=bool)))
    report.kept = len(samples)
    if parsed == 0:
        raise DatasetError(f"{folder}: no .cat file parses; expected a {_CAT_FORMAT} ({report})")
    if not samples:
        raise DatasetError(f"{folder}: no usable cat samples ({report})")
    return Dataset("cats", samples, report, list(CAT_POINTS), list(CAT_FLIP_PAIRS), LICENSES["cats"])


def read_image_folder(folder: str | Path, verify: bool = True) -> Dataset:
    """Unlabelled images under `folder` (recursive, sorted by path): points, visible and box None.

    Files without an image suffix are skipped and reported, and so are images that do not decode
    (`verify` fully decodes each one, which also catches truncated files). Hidden files and
    folders (dot names) are ignored silently.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; expected a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    report = ReadReport()
    samples: list[Sample] = []
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            report.skip("not an image file", str(path))
            continue
        if check_image(path, report, verify=verify):
            samples.append(Sample(path=path))
    report.kept = len(samples)
    if not samples:
        raise DatasetError(f"{folder}: no readable images ({', '.join(IMAGE_SUFFIXES)}) ({report})")
    return Dataset(folder.name or "images", samples, report)
