import json

import pytest
import torch

from landmarks.adapter_io import load_core
from tests.training.synthetic_pose import write_lspet
from training.evaluate_core import evaluate_core
from training.train_core import PRESETS, CoreTrainConfig, train_core


def test_smoke_training_exports_a_loadable_core_and_resumes(tmp_path):
    data = write_lspet(tmp_path / "lspet", n=8)
    cfg = CoreTrainConfig(**{**PRESETS["smoke"], "data": f"lspet:{data}", "train_split": ":6",
                             "val_split": "6:", "out": str(tmp_path / "run"), "arch": "tiny"})
    path = train_core(cfg, command="test")
    core = load_core(path)
    assert core.num_landmarks == 14 and core.metadata["training_steps"] == "3"
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    for name in ("checkpoint.pt", "config.json", "curve.png", "val_overlay.png"):
        assert (tmp_path / "run" / name).is_file(), name

    # --resume continues from the checkpoint instead of starting over
    longer = CoreTrainConfig(**{**cfg.__dict__, "steps": 5})
    load_core(train_core(longer, resume=True, command="test"))
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5]

    result = evaluate_core(path, f"lspet:{data}", "6:", tmp_path / "eval")
    assert 0.0 <= result["mean_pck@0.2"] <= 100.0 and result["images"] == 2
    assert (tmp_path / "eval" / "core_overlay.png").is_file()


def test_init_from_a_core_file(tmp_path):
    data = write_lspet(tmp_path / "lspet", n=6)
    base = {**PRESETS["smoke"], "data": f"lspet:{data}", "train_split": ":4", "val_split": "4:", "arch": "tiny"}
    first = load_core(train_core(CoreTrainConfig(**{**base, "out": str(tmp_path / "a")}), command="test"))
    cfg = CoreTrainConfig(**{**base, "out": str(tmp_path / "b"), "steps": 1, "lr": 1e-12, "warmup_steps": 0,
                             "init_from": str(tmp_path / "a" / "core.safetensors")})
    second = load_core(train_core(cfg, command="test"))
    # one step at lr 1e-12 from the first core's weights: the same fp16 weights (BN statistics move)
    assert torch.equal(second.tensors["head.weight"], first.tensors["head.weight"])


def test_flip_test_is_mirror_equivariant():
    """With the flip test, the prediction on a mirrored crop is the mirrored prediction, joints swapped."""
    from tests.factories import make_tiny_core
    from training.datasets.base import flip_permutation
    from training.evaluate_core import predict_core

    model = make_tiny_core().eval()
    k, size = model.config.num_landmarks, model.config.input_size
    pairs = [(0, 1), (2, 3)]
    swap = flip_permutation(k, pairs)
    images = torch.rand(3, 3, size, size)
    batch = lambda x: [(x, torch.ones(len(x), k), torch.zeros(len(x), k, 2))]
    pred, *_ = predict_core(model, batch(images), torch.device("cpu"), flip_pairs=pairs)
    pred_m, *_ = predict_core(model, batch(images.flip(-1)), torch.device("cpu"), flip_pairs=pairs)
    mirrored = pred[:, swap].copy()
    mirrored[..., 0] = size - 1 - mirrored[..., 0]
    assert abs(pred_m - mirrored).max() < 1e-3


def test_colour_jitter_scales_channels_and_keeps_geometry(tmp_path):
    from training.augment import AugmentConfig
    from training.core_data import PoseCrops
    from training.datasets import open_dataset

    data = open_dataset(f"lspet:{write_lspet(tmp_path / 'lspet')}")
    plain = PoseCrops(data, 64, AugmentConfig(), seed=3)
    jittered = PoseCrops(data, 64, AugmentConfig(colour=0.3), seed=3)
    for key in (0, 1, 9):  # 9: the same image in its second epoch
        (a, wa, pa), (b, wb, pb) = plain[key], jittered[key]
        # The colour draw comes after the geometric one: the same crop, points and weights.
        assert torch.equal(pa, pb) and torch.equal(wa, wb)
        gains = (b.sum((1, 2)) / a.sum((1, 2))).numpy()
        assert ((gains > 0.69) & (gains < 1.31)).all() and gains.std() > 1e-3, gains
        assert b.min() >= 0 and b.max() <= 1
    assert torch.equal(jittered[1][0], jittered[1][0])  # deterministic per (seed, epoch, index)
    with pytest.raises(ValueError):
        AugmentConfig(colour=1.0)
