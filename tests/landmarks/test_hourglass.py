import pytest
import torch
from torch import nn

from landmarks.hourglass import HourglassConfig, LandmarkHourglass, cpu_config, paper_config, tiny_config


def _conv3x3(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]


def test_paper_preset_matches_reference_counts():
    with torch.device("meta"):
        model = LandmarkHourglass(paper_config(14))
    assert sum(p.numel() for p in model.parameters()) == 6_235_790  # REFERENCE.md: about 6.23M
    convs = _conv3x3(model)
    assert len(convs) == 51
    assert sum(c.out_channels**2 for c in convs) == 380_928
    blocks = [m for m in model.modules() if type(m).__name__ == "ConvBlock"]
    assert len(blocks) == 17


@pytest.mark.parametrize("config", [tiny_config(3), cpu_config(7)])
def test_output_shape(config):
    model = LandmarkHourglass(config).eval()
    out = model(torch.rand(2, 3, config.input_size, config.input_size))
    assert out.shape == (2, config.num_landmarks, config.heatmap_size, config.heatmap_size)


def test_config_validation_and_json_round_trip():
    with pytest.raises(ValueError, match="multiple of 4"):
        HourglassConfig(features=30)
    with pytest.raises(ValueError, match="must be a multiple of 4"):
        HourglassConfig(input_size=100)
    cfg = cpu_config(10)
    assert HourglassConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        HourglassConfig.from_json('{"bogus": 1}')
