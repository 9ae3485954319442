"""Perceptual network and loss.

Fast tests use the shipped safetensors file and tiny injected networks. The ImageNet checks need the
original TFLite model and its test images in ../shared/models/mobilenet_v2 (absent in a fresh clone:
skipped) and, for the comparison with the TFLite interpreter's own outputs, `ai-edge-litert`
(or `tflite-runtime`) from the dev extra.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import perceptual
from training.perceptual import MobileNetV2Features, PerceptualLoss, load_perceptual

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO.parent / "shared" / "models" / "mobilenet_v2"
TFLITE = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
EXPECTED = {
    "cat.bmp": {"Egyptian cat", "tabby, tabby cat", "tiger cat"},
    "grace_hopper.bmp": {"military uniform"},
}
needs_models = pytest.mark.skipif(not TFLITE.is_file(), reason=f"{MODELS} not present")


def _interpreter_cls():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            pytest.skip("no TFLite interpreter package (ai-edge-litert / tflite-runtime)")
    return Interpreter


@pytest.fixture(scope="module")
def mobilenet() -> MobileNetV2Features:
    return MobileNetV2Features()


def _image(name: str) -> np.ndarray:
    from PIL import Image

    with Image.open(MODELS / name) as im:
        return np.array(
            im.convert("RGB").resize((224, 224), Image.BILINEAR)
        )  # uint8 HWC, as the TFLite input


def _to_torch(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0


# --- the shipped network, no ../shared needed ---------------------------------------------------------


def test_shipped_file_metadata_and_frozen(mobilenet):
    meta = mobilenet.metadata
    assert meta["source"] == "mobilenet_v2_1.0_224_quant.tflite" and len(meta["source_sha256"]) == 64
    assert meta["license"].startswith("Apache-2.0")
    assert "convert_mobilenet_v2.py" in meta["conversion_command"] and meta["input_normalisation"]
    assert perceptual.ASSET.stat().st_size < 10_000_000
    assert all(not p.requires_grad for p in mobilenet.parameters())
    mobilenet.train()
    assert not mobilenet.training


def test_feature_shapes_and_classifier(mobilenet):
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        feats = mobilenet(x)
        logits = mobilenet.classify(torch.rand(1, 3, 224, 224))
    assert [f.shape[1] for f in feats] == mobilenet.out_channels == [16, 24, 32, 96]
    assert [tuple(f.shape[2:]) for f in feats] == [(32, 48), (16, 24), (8, 12), (4, 6)]  # strides 2, 4, 8, 16
    assert all(torch.isfinite(f).all() for f in feats)
    assert logits.shape == (1, 1001)
    # odd sizes: TF SAME padding gives ceil(n / stride)
    assert [tuple(f.shape[2:]) for f in mobilenet(torch.rand(1, 3, 37, 50))] == [
        (19, 25),
        (10, 13),
        (5, 7),
        (3, 4),
    ]


def test_tf_same_padding_is_asymmetric():
    x = torch.ones(1, 1, 4, 5)
    y = perceptual._tf_same_pad(x, 3, 2)  # totals: h 1 -> (0, 1), w 2 -> (1, 1)
    assert y.shape == (1, 1, 5, 7)
    assert y[0, 0, -1].sum() == 0 and y[0, 0, 0, 1:-1].sum() == 5 and y[0, 0, :, 0].sum() == 0


def test_load_perceptual_falls_back_without_cached_vgg(monkeypatch, tmp_path):
    monkeypatch.setattr(perceptual, "vgg19_cache_file", lambda: tmp_path / "vgg19-dcbb9e9d.pth")
    assert isinstance(load_perceptual("auto"), MobileNetV2Features)
    with pytest.warns(UserWarning, match="VGG-19"):
        assert isinstance(load_perceptual("vgg19"), MobileNetV2Features)
    with pytest.raises(ValueError):
        load_perceptual("resnet")


def test_load_perceptual_uses_cached_vgg(monkeypatch, tmp_path):
    cached = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save({"w": torch.ones(2)}, cached)
    monkeypatch.setattr(perceptual, "vgg19_cache_file", lambda: cached)
    monkeypatch.setattr(perceptual, "VGG19Features", lambda state: ("vgg", state))
    kind, state = load_perceptual("vgg19")
    assert kind == "vgg" and torch.equal(state["w"], torch.ones(2))
    assert isinstance(load_perceptual("mobilenet_v2"), MobileNetV2Features)


# --- the loss, with an injected tiny network ----------------------------------------------------------


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.c1(x))
        return [a, torch.relu(self.c2(a))]


def test_perceptual_loss_with_injected_net():
    torch.manual_seed(0)
    net = _Tiny()
    loss_fn = PerceptualLoss(net, layer_weights=[1.0, 0.5], pixel_weight=1.0)
    target = torch.rand(2, 3, 16, 16)
    assert loss_fn(target.clone(), target).item() == 0.0
    pred = torch.rand(2, 3, 16, 16, requires_grad=True)
    loss = loss_fn(pred, target)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    # the feature term matters: same pixel error, weights off -> smaller loss
    assert PerceptualLoss(net, layer_weights=[0, 0])(pred, target) < loss
    assert PerceptualLoss(net, pixel_loss="l1")(pred, target) > 0
    with pytest.raises(ValueError):
        PerceptualLoss(net, layer_weights=[1.0])(pred, target)


def test_perceptual_loss_with_mobilenet(mobilenet):
    target = torch.rand(1, 3, 32, 32)
    pred = (target + 0.1 * torch.randn_like(target)).clamp(0, 1).requires_grad_(True)
    loss_fn = PerceptualLoss(mobilenet)
    assert loss_fn(target, target).item() == 0.0
    loss = loss_fn(pred, target)
    loss.backward()
    assert loss.item() > 0 and pred.grad.abs().sum() > 0


# --- against the original TFLite model (needs ../shared) ----------------------------------------------


@needs_models
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_expected_imagenet_class(mobilenet, name):
    labels = (MODELS / "imagenet_labels.txt").read_text().splitlines()
    assert len(labels) == 1001
    with torch.no_grad():
        top1 = int(mobilenet.classify(_to_torch(_image(name))).argmax())
    assert labels[top1] in EXPECTED[name]


@needs_models
@pytest.mark.filterwarnings("ignore:Warning. Enabling `experimental_preserve_all_tensors`")
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_matches_tflite_interpreter(mobilenet, name):
    Interpreter = _interpreter_cls()
    it = Interpreter(model_path=str(TFLITE), experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    img = _image(name)
    it.set_tensor(it.get_input_details()[0]["index"], img[None])
    it.invoke()
    out = it.get_output_details()[0]
    scale, zero = out["quantization"]
    ref_prob = (it.get_tensor(out["index"])[0].astype(np.float32) - zero) * scale
    x = _to_torch(img)
    with torch.no_grad():
        prob = mobilenet.classify(x).softmax(-1)[0].numpy()
        feats = mobilenet(x)
    assert int(prob.argmax()) == int(ref_prob.argmax())
    assert abs(prob.max() - ref_prob.max()) < 0.05
    # intermediate features agree too (this is what fails with symmetric padding: correlation ~0.4)
    tensors = {t["name"]: t for t in it.get_tensor_details()}
    for block, feat in zip(mobilenet.layers, feats):
        scope = "expanded_conv" if block == 0 else f"expanded_conv_{block}"
        tname = (
            next(n for n in tensors if n.endswith(f"MobilenetV2/{scope}/add"))
            if block
            else next(n for n in tensors if n.endswith(f"MobilenetV2/{scope}/project/BatchNorm_Fold/bias1"))
        )
        t = tensors[tname]
        s, z = t["quantization"]
        ref = (it.get_tensor(t["index"]).astype(np.float32) - z) * s
        got = feat[0].permute(1, 2, 0).numpy()
        assert got.shape == ref.shape[1:]
        assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99
