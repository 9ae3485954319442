import torch

from landmarks.geometry import apply_affine
from training.generator import ConditionalGenerator, GeneratorConfig
from training.pairs import PairConfig, make_pairs, tps_warp


def _centroids(images):
    m = images[:, 0] / images[:, 0].sum((1, 2), keepdim=True)
    ys, xs = torch.meshgrid(torch.arange(m.shape[1]), torch.arange(m.shape[2]), indexing="ij")
    return torch.stack(((m * xs).sum((1, 2)), (m * ys).sum((1, 2))), -1)


def test_pair_transform_maps_target_to_deformed():
    images = torch.zeros(4, 3, 64, 64)
    images[:, :, 28:32, 36:40] = 1.0  # a blob centred at (37.5, 29.5)
    pairs = make_pairs(images, PairConfig(tps_sd=0.05), torch.Generator().manual_seed(0))
    predicted = apply_affine(_centroids(pairs.target)[:, None], pairs.transform)[:, 0]
    assert torch.allclose(predicted, _centroids(pairs.deformed_rigid), atol=0.15)
    assert not torch.allclose(pairs.deformed, pairs.deformed_rigid)  # TPS moved things further


def test_tps_with_zero_jitter_is_identity():
    images = torch.rand(2, 3, 32, 32)
    assert torch.allclose(tps_warp(images, 0.0), images, atol=1e-4)


def test_generator_shapes_and_range():
    gen = ConditionalGenerator(GeneratorConfig(num_landmarks=10))
    assert 2.0e6 < sum(p.numel() for p in gen.parameters()) < 2.8e6  # ~2.4M as in the official code
    small = ConditionalGenerator(GeneratorConfig(num_landmarks=3, base_channels=4, num_res_blocks=1))
    out = small(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
