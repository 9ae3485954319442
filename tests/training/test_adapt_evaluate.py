"""Adaptation for a few steps on synthetic images, and the evaluation protocol, end to end."""

import numpy as np
import pytest
import torch

from landmarks.adapter_io import load_adapter, load_core, load_network, save_core
from landmarks.projection import adapter_state_dict, build_adapted, fold
from tests.factories import make_tiny_core
from training.adapt import PRESETS, AdaptConfig, adapt
from training.evaluate import Detections, evaluate, forward_backward, markdown, regression_error, ridge_fit


def _cfg(tmp_path, core_file, data, mode):
    return AdaptConfig(**{**PRESETS["smoke"], "images": f"mtfl:{data / 'train.txt'}", "core": str(core_file),
                          "mode": mode, "category": "faces", "out": str(tmp_path / mode), "num_landmarks": 4})


def test_proposed_mode_changes_only_the_adapter(tmp_path, core_file, face_data):
    core = load_core(core_file)
    before = {k: v.clone() for k, v in core.tensors.items()}
    path = adapt(_cfg(tmp_path, core_file, face_data, "proposed"), command="test")
    adapter = load_adapter(path, core)
    assert adapter.metadata["training_steps"] == "3" and adapter.category == "faces"
    # the core file is untouched, and the adapter moved away from its initial values
    after = load_core(core_file)
    assert all(torch.equal(before[k], after.tensors[k]) for k in before)
    init = adapter_state_dict(build_adapted(core.build(), 4))
    moved = [k for k in init if k.endswith(".proj") and not torch.equal(init[k], adapter.tensors[k])]
    assert moved, "no projection changed in 3 steps"
    # everything the adapted network computes beyond the adapter is the core's frozen weights
    assert set(adapter.tensors) == set(init)
    assert (tmp_path / "proposed" / "samples.png").is_file() and (tmp_path / "proposed" / "curve.png").is_file()


@pytest.mark.parametrize("mode", ["finetune", "scratch"])
def test_baselines_write_networks(tmp_path, core_file, face_data, mode):
    net = load_network(adapt(_cfg(tmp_path, core_file, face_data, mode), command="test"))
    assert net.num_landmarks == 4 and net.metadata["mode"] == mode


def test_resume_continues(tmp_path, core_file, face_data):
    cfg = _cfg(tmp_path, core_file, face_data, "proposed")
    adapt(cfg, command="test")
    longer = AdaptConfig(**{**cfg.__dict__, "steps": 5})
    path = adapt(longer, resume=True, command="test")
    assert load_adapter(path, load_core(core_file)).metadata["training_steps"] == "5"


def test_evaluate_end_to_end(tmp_path, core_file, face_data):
    path = adapt(_cfg(tmp_path, core_file, face_data, "proposed"), command="test")
    result = evaluate(path, f"mtfl:{face_data / 'train.txt'}", f"mtfl:{face_data / 'test.txt'}", None,
                      tmp_path / "eval", core_path=core_file, consistency_images=4)
    assert np.isfinite([result["forward"], result["backward"], result["consistency"]]).all()
    assert [r["train_images"] for r in result["subsets"]] == [1, 5, 10]
    assert np.mean(result["backward_per_landmark"]) == pytest.approx(result["backward"], abs=1e-3)
    assert "per discovered landmark" in markdown(result)
    for name in ("evaluation.json", "evaluation.md", "landmarks.png", "consistency.png"):
        assert (tmp_path / "eval" / name).is_file()
    cons = evaluate(path, None, None, f"folder:{face_data / 'img'}", None, core_path=core_file, consistency_images=4)
    assert len(cons["consistency_per_landmark"]) == 4
    assert cons["spread"] > 0 and "Spread:" in markdown(cons)


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    w, b = rng.normal(size=(6, 4)), rng.normal(size=4)
    predict = ridge_fit(x, x @ w + b, lam=1e-12)
    assert np.allclose(predict(x[:5]), x[:5] @ w + b, atol=1e-6)


def test_regression_error_is_zero_for_an_exact_affine_relation():
    rng = np.random.default_rng(1)
    disc = rng.uniform(0, 128, size=(300, 10, 2))
    truth = disc[:, :5] * 0.5 + 10  # annotations are an exact linear function of the discovered points
    iod = np.linalg.norm(truth[:, 0] - truth[:, 1], axis=-1) + 1
    assert regression_error(disc[:200], truth[:200], disc[200:], truth[200:], iod[200:], 128) < 0.05  # ridge shrinkage only
    det_train = Detections(disc[:200], truth[:200], np.zeros(0), torch.zeros(0))
    det_test = Detections(disc[200:], truth[200:], np.zeros(0), torch.zeros(0))
    res = forward_backward(det_train, det_test, 128)
    assert res["forward"] < 0.1 and [r["train_images"] for r in res["subsets"]] == [1, 5, 10, 100, 200]


def test_consistency_is_zero_for_an_equivariant_detector():
    from training.evaluate import consistency_error

    class CentreDetector(torch.nn.Module):
        """Always finds the crop centre, which every rotation about the centre keeps in place."""

        config = make_tiny_core().config.replace(num_landmarks=2)

        def forward(self, x):
            h = torch.full((x.shape[0], 2, 8, 8), -100.0)
            h[:, :, 3:5, 3:5] = 100.0
            return h

    err = consistency_error(CentreDetector(), torch.rand(5, 3, 32, 32))
    assert err.shape == (2,) and err.max() < 1e-3


def test_equivariance_and_smaller_input_size(tmp_path, core_file, face_data):
    cfg = AdaptConfig(**{**_cfg(tmp_path, core_file, face_data, "proposed").__dict__,
                         "equivariance_weight": 1.0, "image_size": 16})
    path = adapt(cfg, command="test")
    adapter = load_adapter(path, load_core(core_file))
    assert adapter.config.input_size == 16
    history = (tmp_path / "proposed" / "history.jsonl").read_text().splitlines()
    assert all('"equivariance": 0.0' not in line for line in history)
    model = fold(load_core(core_file).build(), adapter.tensors, adapter.config)
    assert model(torch.rand(1, 3, 16, 16)).shape == (1, 4, 4, 4)


def test_separation_loss_is_one_when_collapsed_and_small_when_apart():
    from training.adapt_step import separation_loss

    collapsed = torch.full((2, 4, 2), 0.5)
    apart = torch.tensor([[[0.1, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.9]]]).repeat(2, 1, 1)
    assert separation_loss(collapsed, 0.06).item() == pytest.approx(1.0)
    assert separation_loss(apart, 0.06).item() < 1e-10
    points = collapsed.clone().requires_grad_(True)
    near = points + torch.tensor([[0.0, 0.0], [0.01, 0.0], [0.0, 0.01], [0.01, 0.01]])
    separation_loss(near, 0.06).backward()
    assert torch.isfinite(points.grad).all()


def test_separation_and_head_lr_train(tmp_path, core_file, face_data):
    cfg = AdaptConfig(**{**_cfg(tmp_path, core_file, face_data, "proposed").__dict__,
                         "separation_weight": 1.0, "head_lr": 1e-4})
    adapt(cfg, command="test")
    history = (tmp_path / "proposed" / "history.jsonl").read_text().splitlines()
    assert all('"separation"' in line for line in history)


def test_finetune_can_start_from_the_core_head(tmp_path, core_file, face_data):
    from training.detectors import build_detector

    core = load_core(core_file).build()
    detector = build_detector("finetune", core, 2, "all", seed=0, init_head="core")
    assert torch.equal(detector.head.weight, core.head.weight[:2])
    assert torch.equal(detector.head.bias, core.head.bias[:2])


def test_warm_start_carries_the_adapter_and_generator_to_another_core(tmp_path, core_file, face_data):
    first = adapt(_cfg(tmp_path, core_file, face_data, "proposed"), command="test")
    old = load_adapter(first, load_core(core_file))
    other_core = tmp_path / "core2.safetensors"
    save_core(other_core, make_tiny_core(seed=1))  # a "retrained" core: same architecture, other weights
    cfg = AdaptConfig(**{**_cfg(tmp_path, core_file, face_data, "proposed").__dict__, "core": str(other_core),
                         "out": str(tmp_path / "warm"), "steps": 1, "lr": 1e-12, "generator_lr": 1e-12,
                         "warm_start": str(tmp_path / "proposed" / "checkpoint.pt")})
    new = load_adapter(adapt(cfg, command="test"), load_core(other_core))
    # one step at a negligible learning rate: the projections are the old run's, bound to the new core
    for key in (k for k in old.tensors if k.endswith(".proj")):
        torch.testing.assert_close(new.tensors[key], old.tensors[key], atol=1e-6, rtol=0)
    assert new.core_sha256 == load_core(other_core).sha256 != old.core_sha256
    assert "3 steps" in new.metadata["warm_started_from"]


def test_warm_start_rejects_a_missing_or_mismatched_checkpoint(tmp_path, core_file, face_data):
    cfg = _cfg(tmp_path, core_file, face_data, "proposed")
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        adapt(AdaptConfig(**{**cfg.__dict__, "warm_start": str(tmp_path / "nope.pt")}), command="test")
    adapt(cfg, command="test")
    wrong_k = AdaptConfig(**{**cfg.__dict__, "num_landmarks": 3, "out": str(tmp_path / "k3"),
                             "warm_start": str(tmp_path / "proposed" / "checkpoint.pt")})
    with pytest.raises(ValueError, match="does not fit"):
        adapt(wrong_k, command="test")


def test_names_and_zero_meaning_never(tmp_path, core_file, face_data):
    """`--names` writes the landmark names into the adapter; `--picture-every 0` and `--checkpoint-every 0`
    mean "only at the end" (they used to divide by zero)."""
    cfg = AdaptConfig(**{**_cfg(tmp_path, core_file, face_data, "proposed").__dict__,
                         "names": "a, b,c,d", "picture_every": 0, "checkpoint_every": 0})
    adapter = load_adapter(adapt(cfg, command="test"), load_core(core_file))
    assert adapter.landmark_names == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="--names"):
        AdaptConfig(**{**cfg.__dict__, "names": "a,b"})


def test_help_shows_what_each_preset_sets():
    import argparse

    from training.adapt import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    assert "(cpu: 3000, quick: 1500, paper: 200000, smoke: 3)" in " ".join(text.split()) and "default from preset" not in text


def test_background_points_counts_points_on_white():
    from training.metrics import background_points

    images = np.ones((2, 3, 32, 32), dtype=np.float32)  # white
    images[:, :, 8:24, 8:24] = 0.3  # a dark object in the middle
    points = np.array([[[16, 16], [2, 2], [40, 5]], [[10, 10], [20, 20], [12, 22]]], dtype=np.float32)
    # image 0: one point on the object, one on white, one outside the crop; image 1: all on the object
    assert background_points(images, points).tolist() == [2, 0]
    images[:, :, :6, :] = 0.0  # the black bar that squares a wide photo's crop: outside the photo
    images[:, :, 6, :] = 0.5  # and the grey seam resizing leaves between bar and photo
    on_seam = np.array([[[16, 2]], [[3, 6]]], dtype=np.float32)
    assert background_points(images, on_seam).tolist() == [1, 1]


def test_point_spread_is_the_rms_distance_from_the_centroid_at_128():
    from training.metrics import point_spread

    square = np.array([[[0, 0], [2, 0], [2, 2], [0, 2]]], dtype=np.float32)  # each point sqrt(2) from (1, 1)
    assert point_spread(square, 128) == pytest.approx(np.sqrt(2))
    assert point_spread(square, 64) == pytest.approx(2 * np.sqrt(2))  # px at 128
    gathered = np.concatenate([square, square * 0.1 + 0.9])
    assert point_spread(gathered, 128) == pytest.approx((np.sqrt(2) + 0.1 * np.sqrt(2)) / 2)


def test_warm_start_from_an_adapter_file(tmp_path, core_file, face_data):
    """A shipped adapter file (no checkpoint) starts a run on another core: its tensors, a fresh generator."""
    first = adapt(_cfg(tmp_path, core_file, face_data, "proposed"), command="test")
    old = load_adapter(first, load_core(core_file))
    other_core = tmp_path / "core2.safetensors"
    save_core(other_core, make_tiny_core(seed=1))
    cfg = AdaptConfig(**{**_cfg(tmp_path, core_file, face_data, "proposed").__dict__, "core": str(other_core),
                         "out": str(tmp_path / "warm"), "steps": 1, "lr": 1e-12, "warm_start": str(first)})
    new = load_adapter(adapt(cfg, command="test"), load_core(other_core))
    for key in (k for k in old.tensors if k.endswith(".proj")):
        torch.testing.assert_close(new.tensors[key], old.tensors[key], atol=1e-6, rtol=0)
    assert "generator started fresh" in new.metadata["warm_started_from"]
    with pytest.raises(ValueError, match="network file"):
        adapt(AdaptConfig(**{**cfg.__dict__, "mode": "finetune", "out": str(tmp_path / "ft")}), command="test")
