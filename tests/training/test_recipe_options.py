"""The recipe options of `landmarks adapt`: validation during adaptation, schedules, concentration, generator
variants and the normalised reconstruction terms."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from torch import nn

from landmarks.adapter_io import load_adapter, load_core
from training.adapt import PRESETS, AdaptConfig, adapt
from training.adapt_step import concentration_loss, learning_rate_factor
from training.generator import ConditionalGenerator, GeneratorConfig
from training.perceptual import PerceptualLoss
from training.validation import Validation, ValidationSpec


def test_learning_rate_schedules():
    assert learning_rate_factor("constant", 900, 1000, 0) == 1.0
    assert learning_rate_factor("step", 250, 1000, 100) == pytest.approx(0.01)
    cosine = [learning_rate_factor("cosine", s, 1000, 0) for s in range(0, 1001, 100)]
    assert cosine[0] == 1.0 and cosine[-1] == pytest.approx(0.01) and cosine[5] == pytest.approx(0.505)
    assert all(a > b for a, b in itertools.pairwise(cosine))
    assert learning_rate_factor("cosine", 5000, 1000, 0) == pytest.approx(0.01)  # past the plan: stays low


def test_concentration_is_small_for_peaked_maps_and_large_for_flat_ones():
    flat = torch.zeros(1, 1, 16, 16)
    peaked = flat.clone()
    peaked[0, 0, 5, 9] = 3.0  # beta 10: the softmax puts ~all mass on one pixel
    flat_var = concentration_loss(flat, 10.0)
    # the variance of a uniform distribution over 16 pixels is (16^2 - 1) / 12 per axis
    assert flat_var.item() == pytest.approx(2 * (16**2 - 1) / 12, rel=1e-4)
    assert concentration_loss(peaked, 10.0).item() < 1e-6


@pytest.mark.parametrize("upsample,skips", [("transposed", False), ("transposed", True), ("resize", False),
                                            ("resize", True)])
def test_generator_variants(upsample, skips):
    generator = ConditionalGenerator(GeneratorConfig(5, 8, 1, upsample, skips))
    deformed, maps = torch.rand(2, 3, 32, 32, requires_grad=True), torch.rand(2, 5, 8, 8, requires_grad=True)
    out = generator(deformed, maps)
    assert out.shape == (2, 3, 32, 32) and out.min() >= 0 and out.max() <= 1
    out.mean().backward()
    assert maps.grad.abs().sum() > 0 and deformed.grad.abs().sum() > 0
    transposed = any(isinstance(m, nn.ConvTranspose2d) for m in generator.modules())
    assert transposed == (upsample == "transposed")


def test_generator_rejects_an_unknown_upsampling():
    with pytest.raises(ValueError, match="upsample"):
        GeneratorConfig(upsample="bilinear-ish")


class _TwoScales(nn.Module):
    """Features at very different scales, as deep layers are against pixels."""

    def forward(self, images):
        return [images * 100.0, images * 0.01]


def test_normalised_terms_start_at_one_each_and_keep_their_scales_in_the_state():
    loss = PerceptualLoss(_TwoScales(), pixel_weight=1.0, normalise=True).train()
    pred, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    assert loss(pred, target).item() == pytest.approx(3.0)  # pixel + two layers, each over its own scale
    scales = loss.state_dict()["scales"].clone()
    assert scales.shape == (3,) and scales[1] / scales[2] == pytest.approx(1e4, rel=1e-3)
    loss(pred * 0, target)  # training mode: the running means move
    assert not torch.equal(loss.state_dict()["scales"], scales)
    plain = PerceptualLoss(_TwoScales(), pixel_weight=1.0)
    assert plain(pred, target).item() > 10  # unnormalised, the large layer dominates
    # a fresh loss (a resumed run's) takes the saved running means, sized by the first batch
    resumed = PerceptualLoss(_TwoScales(), pixel_weight=1.0, normalise=True)
    resumed.load_state_dict(loss.state_dict())
    assert torch.equal(resumed.scales, loss.scales)


def test_validation_scores_held_out_rows(face_data):
    spec = ValidationSpec(f"mtfl:{face_data / 'train.txt'}", "6:", ":6")
    validation = Validation(spec, 32)
    assert len(validation.images) == 4 and len(validation.fit_images) == 6
    assert validation.metric[0] == "val_forward"

    class Fixed(nn.Module):  # heatmaps peaked at fixed places, whatever the image
        config = type("C", (), {"input_size": 32, "heatmap_size": 8})

        def forward(self, images):
            maps = torch.zeros(len(images), 3, 8, 8)
            maps[:, 0, 2, 2] = maps[:, 1, 2, 6] = maps[:, 2, 6, 4] = 5.0
            return maps

    result = validation(Fixed())
    # points that never move: consistency is the rotation's own displacement, and forward is what
    # the mean shape gives (a constant input explains nothing)
    assert set(result) == {"val_consistency", "val_spread", "val_forward", "val_backward"}
    assert result["val_consistency"] > 1 and result["val_forward"] > 0 and math.isfinite(result["val_backward"])
    assert result["val_spread"] > 0


def test_validation_needs_held_out_rows():
    with pytest.raises(ValueError, match="--val-split"):
        ValidationSpec("folder:x", "")


def test_adapt_records_the_validation_curve(tmp_path, core_file, face_data):
    cfg = AdaptConfig(**{**PRESETS["smoke"], "images": f"mtfl:{face_data / 'train.txt'}", "core": str(core_file),
                         "category": "faces", "out": str(tmp_path / "run"), "num_landmarks": 4, "train_split": ":6",
                         "val": f"mtfl:{face_data / 'train.txt'}", "val_split": "6:", "val_fit_split": ":6",
                         "lr_schedule": "cosine", "generator_upsample": "resize", "generator_skips": True,
                         "perceptual_normalise": True, "concentration_weight": 0.1})
    adapt(cfg, command="test")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    validated = [h for h in history if "val_forward" in h]
    assert validated and validated[-1]["step"] == 3
    assert history[-1]["lr_factor"] < history[0]["lr_factor"]
    # the export at the best validation score is kept beside the last one
    best = min(validated, key=lambda h: h["val_forward"])
    kept = load_adapter(tmp_path / "run" / "best-adapter.safetensors", load_core(core_file))
    assert kept.metadata["training_steps"] == str(best["step"])
    # resumed with the normalised loss's running means (sized lazily) and run to more steps
    adapt(dataclasses.replace(cfg, steps=5), resume=True, command="test")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert history[-1]["step"] == 5


def test_adapt_refuses_inconsistent_schedule_flags():
    with pytest.raises(ValueError, match="lr-decay-every"):
        AdaptConfig(images="folder:x", lr_schedule="step")
    with pytest.raises(ValueError, match="--val-split"):
        AdaptConfig(images="folder:x", val="folder:y")


def test_background_distance_is_zero_on_the_object_and_pulls_points_towards_it():
    from training.adapt_step import background_distance, foreground_mask

    images = torch.ones(1, 3, 32, 32)
    images[:, :, 8:24, 8:24] = 0.3  # a grey object on white: heatmap cells 2..5 of 8
    foreground = foreground_mask(images)
    assert foreground.sum() == 16 * 16
    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 0, 4, 4] = 5.0  # on the object
    maps[0, 1, 0, 0] = 5.0  # in the white corner: sqrt(2^2 + 2^2) cells from the object's corner cell
    distance = background_distance(maps, foreground, beta=10.0)
    assert distance.item() == pytest.approx(math.sqrt(8) / 2, abs=0.01)  # mean over the two landmarks
    soft = maps.clone().requires_grad_(True)
    background_distance(soft, foreground, beta=1.0).backward()  # beta 1: not saturated
    assert soft.grad[0, 1, 0, 0] > 0  # the far corner costs more than the average cell
    assert soft.grad[0, 1, 1, 1] < soft.grad[0, 1, 0, 1] < soft.grad[0, 1, 0, 0]  # nearer cells cost less
    assert soft.grad[0, 1, 4, 4] < 0
    padded = images.clone()
    padded[:, :, :3] = 0.0  # letterbox padding is not the object, nor the grey seam beside it
    padded[:, :, 3] = 0.5
    assert foreground_mask(padded).sum() == 16 * 16
    empty = background_distance(maps, torch.zeros_like(foreground), beta=10.0)
    assert empty.item() == 0  # no object in the picture: no pull anywhere


def test_adapt_with_the_foreground_term(tmp_path, core_file, face_data):
    cfg = AdaptConfig(**{**PRESETS["smoke"], "images": f"mtfl:{face_data / 'train.txt'}", "core": str(core_file),
                         "category": "things", "out": str(tmp_path / "run"), "num_landmarks": 4,
                         "foreground_weight": 1.0})
    adapt(cfg, command="test")
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(h["background_distance"] >= 0 for h in history)
