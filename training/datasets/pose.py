"""Human pose datasets for the core: LSP, LSP-extended (joints.mat) and MPII (JSON release)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.datasets.base import LICENSES, Dataset, DatasetError, ReadReport, Sample, check_image

__all__ = ["LSP_FLIP_PAIRS", "LSP_JOINTS", "MPII_FLIP_PAIRS", "MPII_JOINTS", "read_lsp", "read_lspet", "read_mpii"]

LSP_JOINTS = [
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
    "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow", "left_wrist",
    "neck", "head_top",
]
LSP_FLIP_PAIRS = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9)]


def _load_joints_mat(root: Path) -> np.ndarray:
    from scipy.io import loadmat  # training extra; serving never reads datasets
    from scipy.io.matlab import MatReadError

    mat_path = root / "joints.mat"
    if not mat_path.is_file():
        raise DatasetError(f"{root}: no joints.mat; expected the LSP/LSPET layout (joints.mat + images/)")
    try:
        joints = loadmat(mat_path)["joints"]
    except (KeyError, ValueError, OSError, MatReadError) as exc:
        raise DatasetError(f"{mat_path}: not a MATLAB file with a 'joints' variable ({exc})") from None
    return np.asarray(joints, dtype=np.float64)


def _read_joints_dataset(root: Path, name: str, joints: np.ndarray, flag_means_visible: bool) -> Dataset:
    """joints: (N, 14, 3) with MATLAB 1-based x, y and a flag."""
    report = ReadReport()
    samples = []
    for i, row in enumerate(joints):
        path = root / "images" / f"im{i + 1:0{5 if name == 'lspet' else 4}d}.jpg"
        if not check_image(path, report):
            continue
        points = (row[:, :2] - 1.0).astype(np.float32)  # MATLAB 1-based -> 0-based pixel centres
        # LSPET: flag 1 = annotated; 0 = not annotated (often junk coordinates).
        # LSP: every joint is annotated; the flag only marks occlusion.
        visible = row[:, 2] > 0.5 if flag_means_visible else np.ones(14, dtype=bool)
        if visible.sum() < 2:
            report.skip("fewer than 2 annotated joints", str(path))
            continue
        samples.append(Sample(path=path, points=points, visible=visible))
    report.kept = len(samples)
    return Dataset(name, samples, report, list(LSP_JOINTS), list(LSP_FLIP_PAIRS), LICENSES[name])


def read_lsp(root: str | Path) -> Dataset:
    """LSP (2,000 images): joints.mat is 3 x 14 x N."""
    root = Path(root)
    joints = _load_joints_mat(root)
    if joints.shape[:2] != (3, 14):
        raise DatasetError(f"{root}/joints.mat has shape {joints.shape}; LSP stores 3 x 14 x N (LSPET is 14 x 3 x N)")
    return _read_joints_dataset(root, "lsp", joints.transpose(2, 1, 0), flag_means_visible=False)


def read_lspet(root: str | Path) -> Dataset:
    """LSP-extended (10,000 images): joints.mat is 14 x 3 x N."""
    root = Path(root)
    joints = _load_joints_mat(root)
    if joints.shape[:2] != (14, 3):
        raise DatasetError(f"{root}/joints.mat has shape {joints.shape}; LSPET stores 14 x 3 x N (LSP is 3 x 14 x N)")
    return _read_joints_dataset(root, "lspet", joints.transpose(2, 0, 1), flag_means_visible=True)


MPII_JOINTS = [
    "right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
    "left_wrist",
]
MPII_FLIP_PAIRS = [(0, 5), (1, 4), (2, 3), (10, 15), (11, 14), (12, 13)]


def read_mpii(annotation_file: str | Path, image_dir: str | Path | None = None, split: str = "train") -> Dataset:
    """MPII in the widely used JSON release (one record per person).

    Each record has `image`, `joints` (16 x 2, 1-based, -1 when absent), `joints_vis`, `center` (x, y)
    and `scale` (person height / 200 px). `split` keeps records whose `isValidation` matches
    ("train": 0, "val": 1, "all": both) when that field exists.
    """
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise DatasetError(f"{annotation_file}: no such MPII annotation file")
    image_dir = Path(image_dir) if image_dir else annotation_file.parent / "images"
    try:
        records = json.loads(annotation_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{annotation_file}: not JSON ({exc})") from None
    if not isinstance(records, list):
        raise DatasetError(f"{annotation_file}: expected a JSON list of person records")
    if split not in ("train", "val", "all"):
        raise DatasetError(f"split must be train, val or all, got {split!r}")
    report = ReadReport()
    samples = []
    for rec in records:
        try:
            if split != "all" and "isValidation" in rec and bool(rec["isValidation"]) != (split == "val"):
                continue
            joints = np.asarray(rec["joints"], dtype=np.float32).reshape(16, 2)
            vis = np.asarray(rec.get("joints_vis", [1] * 16), dtype=np.float32).reshape(16) > 0
            center = np.asarray(rec["objpos"] if "objpos" in rec else rec["center"], dtype=np.float32)
            scale = float(rec["scale_provided"] if "scale_provided" in rec else rec["scale"])
            name = rec["img_paths"] if "img_paths" in rec else rec["image"]
        except (KeyError, ValueError, TypeError) as exc:
            report.skip("malformed record", f"{exc}")
            continue
        path = image_dir / name
        if not check_image(path, report):
            continue
        vis &= (joints[:, 0] > 0) & (joints[:, 1] > 0)
        if vis.sum() < 2:
            report.skip("fewer than 2 annotated joints", str(path))
            continue
        half = scale * 200 * 0.5 * 1.25  # the usual MPII crop: 1.25 x the person size
        box = (center[0] - half, center[1] - half, center[0] + half, center[1] + half)
        samples.append(Sample(path=path, points=joints - 1.0, visible=vis, box=tuple(float(v) for v in box)))
    report.kept = len(samples)
    return Dataset("mpii", samples, report, list(MPII_JOINTS), list(MPII_FLIP_PAIRS), LICENSES["mpii"])
