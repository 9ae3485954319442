"""Validation during `landmarks adapt`: scores on images the adaptation never sees, no test set.

Annotated images (faces): the protocol of `landmarks evaluate`, on training-list rows only. The
ridge regressor is fitted on `fit` rows (images adaptation may also use: only their labels are new
here, as in the paper's protocol, which fits on the whole training list) and scored on `held-out`
rows that `--train-split` leaves out of adaptation; forward, backward (% inter-ocular) and
consistency (px at 128). Fit on rows of every source the held-out rows come from: MTFL's list
holds LFW faces first and web faces last, and a regressor fitted on LFW rows alone and scored on
web faces read ~23% for an adapter at ~11.7% with a fit over all adaptation rows.
Unannotated images (cats, shoes): consistency on the held-out images, and how many points sit on a
near-white background (`training.metrics.background_points`, for products photographed on white).

The crops are decoded once, at the detector's input size, and kept in memory (1,000 images at 64 px
are 49 MB); each validation is a few batched forwards in eval mode.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from training.datasets import DatasetError, open_dataset
from training.evaluate import (
    consistency_error,
    detect_points_px,
    iod_indices,
    points_margin,
    regression_error,
)
from training.image_data import ObjectCrops
from training.metrics import background_points, point_spread

__all__ = ["Validation", "ValidationSpec", "load_crops"]


@dataclass(frozen=True)
class ValidationSpec:
    images: str  # FORMAT:PATH
    held_out: str  # rows scored, e.g. '6655:' (must be outside adaptation's --train-split)
    fit: str = ""  # rows the regressor is fitted on (annotated data); '' = consistency only
    max_images: int = 2000  # per split, evenly spread

    def __post_init__(self) -> None:
        if not self.held_out:
            raise ValueError("--val-split is required with --val: the rows to score, which adaptation must not "
                             "use (e.g. --train-split :6655 --val-split 6655:)")


def load_crops(images: str, split: str, size: int, limit: int) -> tuple[torch.Tensor, np.ndarray | None]:
    """At most `limit` object crops of rows `split` of `images` at `size` px ((N, 3, S, S) floats in
    [0, 1]), and their annotated points if the set has any."""
    data = open_dataset(images).subset(split)
    if len(data) == 0:
        raise DatasetError(f"split {split!r} of {images} holds no images")
    # at most `limit` rows, evenly spread over the split (lists are often sorted by source: MTFL's
    # LFW faces come before its web faces)
    keep = np.unique(np.linspace(0, len(data) - 1, min(limit, len(data))).round().astype(int))
    data = dataclasses.replace(data, samples=[data.samples[i] for i in keep])
    crops = ObjectCrops(data, size, points_margin(images) if data.samples[0].points is not None else None)
    tensors, points = [], []
    for i in range(len(crops)):
        image, pts, _, ok = crops[i]
        if bool(ok):
            tensors.append(image)
            points.append(pts)
    annotated = bool(points) and points[0].numel() > 0
    return torch.stack(tensors), (torch.stack(points).numpy() if annotated else None)


def _points(detector: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    return torch.cat([detect_points_px(detector, chunk) for chunk in images.split(64)]).numpy()


class Validation:
    """Scores a detector (any module mapping (B,3,S,S) images to (B,K,H,W) heatmaps with a `.config`)."""

    def __init__(self, spec: ValidationSpec, size: int) -> None:
        self.spec, self.size = spec, size
        self.images, self.truth = load_crops(spec.images, spec.held_out, size, spec.max_images)
        self.fit_images = self.fit_truth = None
        if spec.fit:
            if self.truth is None:
                raise DatasetError(f"--val-fit-split needs annotated images; {spec.images} has none")
            self.fit_images, self.fit_truth = load_crops(spec.images, spec.fit, size, spec.max_images)

    @property
    def metric(self) -> tuple[str, str]:
        """The history key and label of the number the curve draws."""
        if self.fit_images is not None:
            return "val_forward", "validation forward error (% inter-ocular)"
        return "val_consistency", "validation consistency (px at 128)"

    @property
    def description(self) -> str:
        fit = f", regressor fitted on {len(self.fit_images)} rows ({self.spec.fit})" if self.fit_images is not None else ""
        return f"validation: {len(self.images)} held-out images ({self.spec.held_out}) of {self.spec.images}{fit}"

    @torch.no_grad()
    def __call__(self, detector: torch.nn.Module) -> dict[str, float]:
        was_training = detector.training
        detector.eval()
        try:
            points = _points(detector, self.images)
            result = {"val_consistency": float(consistency_error(detector, self.images, points=points).mean()),
                      "val_spread": point_spread(points, self.size)}
            if self.fit_images is not None:
                fit_points = _points(detector, self.fit_images)
                a, b = iod_indices(self.truth.shape[1])
                iod = np.linalg.norm(self.truth[:, a] - self.truth[:, b], axis=-1)
                result["val_forward"] = regression_error(fit_points, self.fit_truth, points, self.truth, iod, self.size)
                result["val_backward"] = regression_error(self.fit_truth, fit_points, self.truth, points, iod,
                                                          self.size)
            else:
                result["val_background_points"] = float(background_points(self.images.numpy(), points).mean())
        finally:
            detector.train(was_training)
        return {k: round(v, 3) for k, v in result.items()}
