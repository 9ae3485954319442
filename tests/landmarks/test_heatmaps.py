import torch

from landmarks.heatmaps import (
    PAPER_BETA,
    hard_argmax,
    heatmap_to_input,
    input_to_heatmap,
    refined_argmax,
    render_gaussians,
    soft_argmax,
)

CENTRES = torch.tensor([[5.3, 7.8], [15.5, 15.5], [24.25, 3.9], [10.0, 26.6]])


def test_soft_argmax_of_rendered_gaussian_returns_its_centre():
    # softmax(log g) = g / sum(g): the expectation is the centre up to truncation at the border.
    maps = render_gaussians(CENTRES, 32, sigma=1.0)
    found = soft_argmax(torch.log(maps), beta=1.0)
    assert (found - CENTRES).abs().max() < 0.05


def test_soft_argmax_with_paper_temperature():
    # Scores whose softmax at beta = 10 is the rendered Gaussian: sub-pixel exact. (On a raw
    # Gaussian of height ~1 the background bias is ~1 px; trained detectors learn sharper maps.)
    maps = render_gaussians(CENTRES, 32, sigma=2.0)
    found = soft_argmax(torch.log(maps) / PAPER_BETA, beta=PAPER_BETA)
    assert (found - CENTRES).abs().max() < 0.05


def test_gaussian_has_paper_form():
    maps = render_gaussians(torch.tensor([[4.0, 6.0]]), 16, sigma=0.5**0.5)
    assert maps[0, 6, 4] == 1.0
    assert torch.isclose(maps[0, 6, 5], torch.exp(torch.tensor(-1 / 0.5)))


def test_half_pixel_convention():
    # heatmap pixel 0 (stride 4) covers input pixels 0..3, whose centre is 1.5
    assert heatmap_to_input(torch.tensor(0.0), 4) == 1.5
    assert heatmap_to_input(torch.tensor(31.0), 4) == 125.5
    # the heatmap's edges map to the input's edges
    assert heatmap_to_input(torch.tensor(-0.5), 4) == -0.5
    assert heatmap_to_input(torch.tensor(31.5), 4) == 127.5
    p = torch.rand(10, 2) * 32
    assert torch.allclose(input_to_heatmap(heatmap_to_input(p, 4), 4), p, atol=1e-6)


def test_argmax_decoders():
    centres = torch.tensor([[5.3, 7.8], [15.6, 15.4], [24.25, 3.9]])
    maps = render_gaussians(centres, 32, sigma=1.5)
    assert torch.equal(hard_argmax(maps), centres.round())
    refined, conf = refined_argmax(maps)
    assert (refined - centres).abs().max() <= 0.3
    assert conf.shape == (3,) and (conf > 0.8).all()
