import numpy as np
import torch
from PIL import Image

from landmarks.geometry import (
    apply_affine,
    crop_to_tensor,
    input_to_original,
    original_to_input,
    similarity_matrix,
    square_box,
    warp_images,
)


def _dot_image(w, h, x, y):
    """A 2x2 white square whose centre is (x + 0.5, y + 0.5)."""
    a = np.zeros((h, w, 3), np.uint8)
    a[y : y + 2, x : x + 2] = 255
    return Image.fromarray(a)


def _centroid(t):
    m = t[0] / t[0].sum()
    ys, xs = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
    return torch.tensor([(m * xs).sum(), (m * ys).sum()])


def test_crop_maps_points_as_documented():
    image = _dot_image(100, 80, 40, 30)  # dot centre (40.5, 30.5)
    box = (20.0, 10.0, 80.0, 70.0)
    crop = crop_to_tensor(image, box, 120)
    expected = original_to_input(torch.tensor([[40.5, 30.5]]), box, 120)[0]
    assert torch.allclose(_centroid(crop), expected, atol=0.05)
    back = input_to_original(expected[None], box, 120)
    assert torch.allclose(back, torch.tensor([[40.5, 30.5]]), atol=1e-5)


def test_crop_past_the_border_pads_with_zeros():
    image = Image.new("RGB", (10, 10), (255, 255, 255))
    crop = crop_to_tensor(image, (-10.0, -10.0, 20.0, 20.0), 30)
    assert crop.shape == (3, 30, 30)
    assert crop[:, :8, :8].max() == 0 and crop[:, 12:18, 12:18].min() > 0.99


def test_square_box():
    assert square_box((0, 0, 10, 20)) == (-5.0, 0.0, 15.0, 20.0)


def test_warp_images_moves_points_like_apply_affine():
    image = torch.from_numpy(np.asarray(_dot_image(64, 64, 20, 40), np.float32) / 255).permute(2, 0, 1)[None]
    m = similarity_matrix(torch.tensor([25.0]), torch.tensor([1.1]), torch.tensor([[3.0, -2.0]]), center=31.5)
    warped = warp_images(image, m)
    expected = apply_affine(torch.tensor([[[20.5, 40.5]]]), m)[0, 0]
    assert torch.allclose(_centroid(warped[0]), expected, atol=0.1)
