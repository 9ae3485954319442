"""Face datasets: MTFL / AFLW 5-point list files and 300-W 68-point `.pts` folders.

Coordinate conventions (every reader returns 0-based pixel centres, see `base.Sample`):

* MTFL: taken as 0-based, used as written. The original MTFL `training.txt` (Zhang et al. 2014)
  gives LFW points in pixels of the 250 x 250 image (e.g. Aaron_Eckhart_0001: eye x 107.25), and
  the 80 x 80 release (`new_training.txt`) is exactly those numbers times 0.32 (34.32), i.e. a
  plain rescale with no MATLAB-style 1 offset anywhere. Measured on the shared copy: the annotated
  eye centres lie on average +0.2/+0.4 px (x, left/right eye) from the darkest (pupil) point in the
  training list, consistent with 0-based coordinates rescaled as x * s (which itself adds about
  +0.34 px), but +1.3 px in the AFLW test list, whose origin is undocumented. We keep both files
  exactly as published so that errors stay comparable with the MTFL/AFLW_M literature, which uses
  the raw numbers.
* MTFL rows whose 5 points are off the face: the images are face-centred crops, yet 2,350 rows of
  `new_training.txt` (the `net_7876/_*` files, lines 7651-10000) carry points shifted ~30 px up,
  onto the forehead or above the head (seen by drawing them). A regressor fitted on them learns a
  wrong mapping for every method alike, so rows whose landmark centroid lies outside the central
  half of the crop are skipped and reported ("points off the face crop"): 2,345 training rows, no
  test row. `read_mtfl(..., keep_off_face=True)` keeps them.
* 300-W: `.pts` files are 1-based (iBUG / MATLAB convention: the top-left pixel centre is (1, 1));
  we subtract 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from training.datasets.base import LICENSES, Dataset, DatasetError, ReadReport, Sample, check_image

__all__ = [
    "IBUG_68_FLIP_PAIRS",
    "IBUG_68_POINTS",
    "IBUG_OUTER_EYE_CORNERS",
    "MTFL_EYES",
    "MTFL_FLIP_PAIRS",
    "MTFL_POINTS",
    "read_300w",
    "read_mtfl",
]

# "left"/"right" as MTFL names them: the left eye is the one on the image's left (x1 < x2 on
# average, i.e. the subject's right eye); the flip pairs do not depend on that reading.
MTFL_POINTS = ["left_eye", "right_eye", "nose", "left_mouth_corner", "right_mouth_corner"]
MTFL_FLIP_PAIRS = [(0, 1), (3, 4)]
MTFL_EYES = (0, 1)  # eye centres: the inter-ocular distance normalising MTFL/AFLW errors

# iBUG 68-point mark-up (0-based indices); left/right are the subject's (the right eye, 36-41,
# is on the image's left for a frontal face), as in the iBUG annotation guidelines.
IBUG_68_POINTS = (
    [f"jaw_{i}" for i in range(1, 18)]                    # 0-16, image left to right
    + [f"right_eyebrow_{i}" for i in range(1, 6)]         # 17-21
    + [f"left_eyebrow_{i}" for i in range(1, 6)]          # 22-26
    + [f"nose_bridge_{i}" for i in range(1, 5)]           # 27-30
    + [f"nose_base_{i}" for i in range(1, 6)]             # 31-35
    + [f"right_eye_{i}" for i in range(1, 7)]             # 36-41, 36 = outer corner
    + [f"left_eye_{i}" for i in range(1, 7)]              # 42-47, 45 = outer corner
    + [f"outer_lip_{i}" for i in range(1, 13)]            # 48-59, 48 and 54 = mouth corners
    + [f"inner_lip_{i}" for i in range(1, 9)]             # 60-67
)
IBUG_68_FLIP_PAIRS = (
    [(i, 16 - i) for i in range(8)]                                     # jaw
    + [(17 + i, 26 - i) for i in range(5)]                              # eyebrows
    + [(31, 35), (32, 34)]                                              # nose base
    + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]      # eyes
    + [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]                # outer lip
    + [(60, 64), (61, 63), (67, 65)]                                    # inner lip
)
IBUG_OUTER_EYE_CORNERS = (36, 45)  # the inter-ocular distance normalising 300-W errors

_MTFL_FORMAT = "MTFL list file: one line per image, `path x1 x2 x3 x4 x5 y1 y2 y3 y4 y5`"
_PTS_FORMAT = "300-W folder: `name.pts` (version: 1 / n_points: 68 / { 68 lines `x y` }) next to name.jpg/.png"


def image_box(path: Path) -> tuple[float, float, float, float] | None:
    """The whole image as an edge-coordinate box (0, 0, W, H), or None if it cannot be opened."""
    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, SyntaxError, ValueError):
        return None
    return (0.0, 0.0, float(w), float(h))


def _finish(name: str, samples: list[Sample], report: ReadReport, source: Path, names, pairs) -> Dataset:
    report.kept = len(samples)
    if not samples:
        raise DatasetError(f"{source}: no usable {name} samples ({report})")
    return Dataset(name, samples, report, list(names), list(pairs), LICENSES[name])


def _off_face(points: np.ndarray, box: tuple[float, ...]) -> bool:
    """The points' centroid lies outside the central half of the crop (see the module notes)."""
    x0, y0, x1, y1 = box
    cx, cy = (points.mean(0) - (x0, y0)) / (x1 - x0, y1 - y0)
    return not (0.25 <= cx <= 0.75 and 0.25 <= cy <= 0.75)


def read_mtfl(list_file: str | Path, verify: bool = True, keep_off_face: bool = False) -> Dataset:
    """MTFL / AFLW 5-point list (`new_training.txt`, `new_testing.txt`, or the original MTFL
    `training.txt` whose lines also carry 4 attribute labels, which are ignored).

    Paths are relative to the list file's folder (backslashes accepted). The images are face crops,
    so each sample's box is the whole image. `verify` fully decodes each image to catch truncated
    files (cheap for 80 x 80 crops).
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise DatasetError(f"{list_file}: no such file; expected an {_MTFL_FORMAT}")
    try:
        lines = list_file.read_text().splitlines()
    except UnicodeDecodeError:
        raise DatasetError(f"{list_file}: not a text file; expected an {_MTFL_FORMAT}") from None
    root = list_file.parent
    report = ReadReport()
    samples: list[Sample] = []
    parsed = 0
    for lineno, line in enumerate(lines, 1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            if len(tokens) not in (11, 15):
                raise ValueError(f"{len(tokens)} fields, expected 11 (or 15 with attributes)")
            values = [float(t) for t in tokens[1:11]]
            if not all(math.isfinite(v) for v in values):
                raise ValueError("non-finite coordinate")
        except ValueError as exc:
            report.skip("malformed line", f"{list_file}:{lineno}: {exc}")
            continue
        parsed += 1
        path = root / tokens[0].replace("\\", "/")
        if not check_image(path, report, verify=verify):
            continue
        box = image_box(path)
        if box is None:  # vanished or unreadable between the two opens
            report.skip("corrupt or unreadable image", str(path))
            continue
        points = np.array([values[:5], values[5:]], dtype=np.float32).T  # (5, 2): x1..x5, y1..y5
        if not keep_off_face and _off_face(points, box):
            report.skip("points off the face crop", f"{list_file}:{lineno}")
            continue
        samples.append(Sample(path=path, points=points, visible=np.ones(5, dtype=bool), box=box))
    if parsed == 0:
        raise DatasetError(f"{list_file}: no line parses; expected an {_MTFL_FORMAT} ({report})")
    return _finish("mtfl", samples, report, list_file, MTFL_POINTS, MTFL_FLIP_PAIRS)


def parse_pts(text: str) -> np.ndarray:
    """The (N, 2) points of a `.pts` file as written (1-based); ValueError if malformed."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    header: dict[str, str] = {}
    i = 0
    while i < len(lines) and lines[i] != "{":
        key, sep, value = lines[i].partition(":")
        if not sep:
            raise ValueError(f"unexpected header line {lines[i]!r}")
        header[key.strip().lower()] = value.strip()
        i += 1
    if i == len(lines):
        raise ValueError("no '{' line")
    if "n_points" not in header:
        raise ValueError("no n_points header")
    n = int(header["n_points"])
    try:
        end = lines.index("}", i + 1)
    except ValueError:
        raise ValueError("no closing '}' line") from None
    body = lines[i + 1:end]
    if len(body) != n:
        raise ValueError(f"n_points is {n} but {len(body)} point lines")
    points = np.array([[float(v) for v in ln.split()] for ln in body], dtype=np.float64)
    if points.shape != (n, 2) or not np.isfinite(points).all():
        raise ValueError("point lines must be two finite numbers `x y`")
    return points


def read_300w(folder: str | Path, verify: bool = False) -> Dataset:
    """300-W style folder (recursive): every `name.pts` with 68 points next to name.jpg / name.png.

    Samples are sorted by path; box is None (derive it from the points). `verify` fully decodes
    images (off by default: 300-W photos are large; the loader skips a corrupt one anyway).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a folder; expected a {_PTS_FORMAT}")
    pts_files = sorted(p for p in folder.rglob("*") if p.suffix.lower() == ".pts" and p.is_file())
    if not pts_files:
        raise DatasetError(f"{folder}: no .pts files; expected a {_PTS_FORMAT}")
    report = ReadReport()
    samples: list[Sample] = []
    parsed = 0
    for pts in pts_files:
        try:
            raw = parse_pts(pts.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            report.skip("malformed .pts file", f"{pts}: {exc}")
            continue
        parsed += 1
        if len(raw) != 68:
            report.skip("not 68 points", f"{pts}: {len(raw)} points")
            continue
        image = next((c for c in (pts.with_suffix(s) for s in (".jpg", ".png", ".jpeg", ".JPG", ".PNG"))
                      if c.is_file()), None)
        if image is None:
            report.skip("missing image file", f"{pts.with_suffix('.jpg')} (or .png)")
            continue
        if not check_image(image, report, verify=verify):
            continue
        points = (raw - 1.0).astype(np.float32)  # 300-W is 1-based -> 0-based pixel centres
        samples.append(Sample(path=image, points=points, visible=np.ones(68, dtype=bool)))
    if parsed == 0:
        raise DatasetError(f"{folder}: no .pts file parses; expected a {_PTS_FORMAT} ({report})")
    return _finish("300w", samples, report, folder, IBUG_68_POINTS, IBUG_68_FLIP_PAIRS)
