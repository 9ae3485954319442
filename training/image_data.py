"""Object crops for adaptation and evaluation: one square crop per image, resized to S x S.

The crop is the sample's box if it has one, else the whole image made square (padding black).
For annotated data evaluated with a box from the points (300-W), `crop_box` takes the points'
box plus a fixed margin, identically for every method and without jitter.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from landmarks.geometry import crop_to_tensor, original_to_input, square_box
from training.datasets.base import Dataset, Sample

__all__ = ["ObjectCrops", "crop_box"]


def crop_box(sample: Sample, image_size: tuple[int, int], points_margin: float | None) -> tuple[float, ...]:
    if sample.box is not None:
        return sample.box
    if points_margin is not None and sample.points is not None:
        p = sample.points[sample.visible] if sample.visible is not None else sample.points
        box = (float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max() + 1), float(p[:, 1].max() + 1))
        return square_box(box, margin=points_margin)
    w, h = image_size
    return square_box((0.0, 0.0, float(w), float(h)))


class ObjectCrops(torch.utils.data.Dataset):
    """index -> (image (3,S,S) in [0,1], points in input px (K,2) or empty, box (4,), ok flag)."""

    def __init__(self, dataset: Dataset, size: int, points_margin: float | None = None) -> None:
        self.dataset, self.size, self.points_margin = dataset, size, points_margin

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        sample = self.dataset.samples[index]
        try:
            with Image.open(sample.path) as im:
                image = im.convert("RGB")
        except (OSError, SyntaxError, ValueError):
            # unreadable image: an all-zero crop flagged not-ok, so evaluation can leave it out
            blank = torch.zeros(3, self.size, self.size)
            return blank, torch.zeros(0, 2), torch.zeros(4), torch.tensor(False)
        box = crop_box(sample, image.size, self.points_margin)
        tensor = crop_to_tensor(image, box, self.size)
        if sample.points is not None:
            pts = original_to_input(torch.from_numpy(sample.points.astype(np.float32)), box, self.size)
        else:
            pts = torch.zeros(0, 2)
        return tensor, pts, torch.tensor(box, dtype=torch.float32), torch.tensor(True)
