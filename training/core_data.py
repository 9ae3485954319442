"""Torch datasets for supervised core training: person crops and augmentation (in loader worker
processes), and the heatmap targets (`pose_heatmaps`, rendered on the training device)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from landmarks.geometry import square_box
from landmarks.heatmaps import input_to_heatmap, render_gaussians
from training.augment import (
    AugmentConfig,
    crop_matrix,
    points_box,
    random_colour,
    random_similarity,
    transform_points,
    warp_pil,
)
from training.datasets.base import Dataset, Sample, flip_permutation

__all__ = ["PoseCrops", "pose_heatmaps", "sample_box"]

PERSON_MARGIN = 0.3  # square box around the joints, 30% larger (LSP people fill the crop)


def sample_box(sample: Sample) -> tuple[float, float, float, float]:
    if sample.box is not None:
        return sample.box
    return square_box(points_box(sample.points, sample.visible), margin=PERSON_MARGIN)


def pose_heatmaps(points: torch.Tensor, weights: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Targets (B, K, S/4, S/4): a Gaussian at each joint, zero where the joint does not count."""
    heat = render_gaussians(input_to_heatmap(points, 4.0), size // 4, sigma)
    return heat * weights[..., None, None]


class PoseCrops(torch.utils.data.Dataset):
    """key -> (image (3,S,S) in [0,1], weights (K,), points (K,2) in input px).

    With `augment` None the crop is deterministic (validation / evaluation). A key past the end is
    `epoch * len + index` (training.sampling.EpochSampler): the augmentation of that epoch.
    """

    def __init__(self, dataset: Dataset, size: int = 128, augment: AugmentConfig | None = None,
                 seed: int = 0) -> None:
        self.dataset, self.size, self.augment, self.seed = dataset, size, augment, seed
        self.failures = 0
        num_points = len(dataset.landmark_names) or len(dataset.samples[0].points)
        self.flip_index = np.array(flip_permutation(num_points, dataset.flip_pairs))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(key, len(self))
        for attempt in range(len(self)):
            sample = self.dataset.samples[(index + attempt) % len(self)]
            try:
                with Image.open(sample.path) as im:
                    image = im.convert("RGB")
                break
            except (OSError, SyntaxError, ValueError):
                self.failures += 1  # corrupt image: use the next one rather than kill the epoch
        else:
            raise RuntimeError("no readable image in the dataset")
        matrix = crop_matrix(sample_box(sample), self.size)
        points, visible = sample.points.astype(np.float64), sample.visible.copy()
        gains = None
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            sim, flipped = random_similarity(rng, self.size, self.augment)
            matrix = sim @ matrix
            if flipped:
                points, visible = points[self.flip_index], visible[self.flip_index]
            gains = random_colour(rng, self.augment)
        crop = warp_pil(image, matrix, self.size)
        pts = transform_points(points, matrix)
        inside = (pts >= -0.5).all(1) & (pts <= self.size - 0.5).all(1)
        weights = (visible & inside).astype(np.float32)
        pixels = np.asarray(crop, dtype=np.float32) / 255.0
        if gains is not None:
            pixels = np.clip(pixels * gains.astype(np.float32), 0.0, 1.0)
        tensor = torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
        return tensor, torch.from_numpy(weights), torch.from_numpy(pts.astype(np.float32))
