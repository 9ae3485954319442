"""The files this repository ships: every adapter in adapters/ loads against the shipped core and
finds K distinct, finite landmarks inside the crop of its bundled example photo."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from landmarks.adapter_io import load_adapter, load_core
from landmarks.geometry import crop_to_tensor, square_box
from landmarks.heatmaps import heatmap_to_input, soft_argmax
from landmarks.projection import fold

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"faces": "face.jpg", "cats": "cat.jpg", "shoes": "shoe.jpg"}


@pytest.mark.parametrize("category", sorted(EXAMPLES))
def test_shipped_adapter_detects_on_its_example(category):
    path = ROOT / "adapters" / f"{category}.safetensors"
    if not path.is_file():
        pytest.skip(f"{path.name} is not shipped")
    core = load_core(ROOT / "adapters" / "core.safetensors")
    adapter = load_adapter(path, core)
    assert adapter.category == category and adapter.num_landmarks == 10
    assert "research" in adapter.metadata["license"] or "CC BY-NC" in adapter.metadata["license"]
    model = fold(core.build(), adapter.tensors, adapter.config).eval()
    size = adapter.config.input_size
    with Image.open(ROOT / "examples" / EXAMPLES[category]) as im:
        crop = crop_to_tensor(im, square_box((0, 0, *im.size)), size)
    with torch.no_grad():
        heat = model(crop[None])
    points = heatmap_to_input(soft_argmax(heat), size / heat.shape[-1])[0]
    assert torch.isfinite(points).all() and points.min() >= 0 and points.max() <= size - 1
    # not collapsed: the landmarks spread over the object
    assert points.std(0).mean() > size * 0.05
