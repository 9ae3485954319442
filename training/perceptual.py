"""Perceptual network and loss for the image-reconstruction objective.

The paper (Sanchez & Tzimiropoulos, NeurIPS 2019, following Jakab et al. 2018) trains the generator with a
perceptual loss: L1 distances between ImageNet VGG-19 activations of the generated and the real image at
relu1_2, relu2_2, relu3_3 and relu4_3. These are the last activations before each of the first four
poolings, i.e. features at strides 1, 2, 4 and 8: low layers keep the reconstruction sharp and aligned,
higher ones make it match in content rather than pixel by pixel.

Two feature networks are provided, with one interface (images in [0, 1], shape (B, 3, H, W) -> a list of
four feature maps, frozen, always in eval mode):

* `VGG19Features`: the paper's layers, from torchvision's VGG-19 ImageNet weights. Used only when the
  weights file is already in the torch hub cache of the machine (`load_perceptual` never downloads).
* `MobileNetV2Features`: the fallback, and what ships with the repository. It loads
  `training/assets/mobilenet_v2_imagenet.safetensors` (ImageNet MobileNetV2 1.0 224, dequantised from
  Coral's Apache-2.0 uint8 TFLite test model by `scripts/convert_mobilenet_v2.py`; see assets/README.md).
  The four taps are the outputs of inverted-residual blocks 0, 2, 5 and 12, the last block at strides
  2, 4, 8 and 16 (16, 24, 32 and 96 channels): the same role as VGG's four taps, one resolution level
  lower each because MobileNetV2's stem already downsamples by 2 (there is no stride-1 feature to tap).
  Block outputs are the linear bottlenecks (after the residual add, no ReLU6): compact, with the ReLU6
  clipping of the expansions not throwing away the sign of the response.
  TFLite's "SAME" padding is reproduced exactly (asymmetric for stride 2: the extra row/column goes at the
  bottom/right), batch norm is folded, and ReLU6 is used where the TFLite graph fuses it, so `classify`
  reproduces the TFLite model's ImageNet predictions.

`PerceptualLoss` takes the feature network as an argument, so tests (and ablations) can inject any module
that returns a list of tensors.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ASSET = Path(__file__).resolve().parent / "assets" / "mobilenet_v2_imagenet.safetensors"
MOBILENET_LAYERS = (0, 2, 5, 12)  # blocks ending at strides 2, 4, 8, 16
VGG19_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 24}  # indices in vgg19().features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Frozen(nn.Module):
    """A module whose parameters never train and that stays in eval mode."""

    def _freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True):
        # always eval (mode is ignored): a fixed feature extractor
        return super().train(False)


def _tf_same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's SAME padding: total = max((ceil(n/s)-1)*s + k - n, 0), the odd pixel at the end."""
    h, w = x.shape[-2:]
    ph = max((math.ceil(h / stride) - 1) * stride + kernel - h, 0)
    pw = max((math.ceil(w / stride) - 1) * stride + kernel - w, 0)
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class _SameConv(nn.Conv2d):
    """Conv2d with TF SAME padding (stride 1 is symmetric and uses the built-in padding)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        sym = stride == 1
        super().__init__(cin, cout, kernel, stride, padding=(kernel - 1) // 2 if sym else 0, groups=groups)
        self._tf_pad = not sym

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._tf_pad:
            x = _tf_same_pad(x, self.kernel_size[0], self.stride[0])
        return super().forward(x)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, hidden: int, stride: int, expand: bool, residual: bool):
        super().__init__()
        self.expand = _SameConv(cin, hidden, 1) if expand else None
        self.dw = _SameConv(hidden, hidden, 3, stride, groups=hidden)
        self.project = _SameConv(hidden, cout, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self.expand(x)) if self.expand is not None else x
        h = self.project(F.relu6(self.dw(h)))
        return x + h if self.residual else h


class MobileNetV2Features(_Frozen):
    """ImageNet MobileNetV2 (from the shipped safetensors file) as a frozen perceptual feature extractor.

    `forward(images)` -> [block 0, block 2, block 5, block 12 outputs] (strides 2, 4, 8, 16) by default;
    `classify(images)` -> (B, 1001) logits (index 0 is "background", as in the TFLite model; the model was
    trained at 224x224). Images are RGB in [0, 1]; the input normalisation of the TFLite model
    ((255 x - 128) / 128, from its uint8 input quantisation) is applied inside.
    """

    def __init__(self, path: str | os.PathLike | None = None, layers: tuple[int, ...] = MOBILENET_LAYERS):
        super().__init__()
        from safetensors import safe_open

        path = Path(path) if path is not None else ASSET
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "landmark-adapters/mobilenet_v2_features":
                raise ValueError(f"{path} is not a converted MobileNetV2 feature file")
            state = {k: f.get_tensor(k).float() for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
        arch = json.loads(meta["architecture"])
        self.metadata = dict(meta)
        self.input_scale = float(arch["input_scale"])
        self.input_zero_point = float(arch["input_zero_point"])
        blocks = arch["blocks"]
        if not layers or any(not 0 <= i < len(blocks) for i in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(f"layers must be increasing block indices in [0, {len(blocks)}), got {layers}")
        self.layers = tuple(layers)
        self.stem = _SameConv(3, blocks[0]["in"], 3, 2)
        self.blocks = nn.ModuleList(
            _InvertedResidual(b["in"], b["out"], b["hidden"], b["stride"], b["expand"], b["residual"])
            for b in blocks
        )
        cw = state["head.weight"]
        self.head = _SameConv(cw.shape[1], cw.shape[0], 1)
        self.classifier = nn.Linear(*state["classifier.weight"].shape[::-1])
        self.load_state_dict(state, strict=True)
        self.out_channels = [blocks[i]["out"] for i in self.layers]
        self._freeze()

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images * 255.0 - self.input_zero_point) * self.input_scale

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self.stem(self.normalise(images)))
        feats = []
        for i, block in enumerate(
            self.blocks[: self.layers[-1] + 1]
        ):  # nothing past the last tap is computed
            x = block(x)
            if i in self.layers:
                feats.append(x)
        return feats

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(self.normalise(images)))
        for block in self.blocks:
            x = block(x)
        x = F.relu6(self.head(x)).mean(dim=(2, 3))
        return self.classifier(x)


class VGG19Features(_Frozen):
    """The paper's perceptual network: torchvision VGG-19 (ImageNet) at relu1_2, relu2_2, relu3_3, relu4_3.

    Built from a state dict that the caller provides (see `load_perceptual`, which only reads it from the
    torch hub cache). Images are RGB in [0, 1]; ImageNet mean/std normalisation is applied inside.
    """

    def __init__(self, state_dict: dict[str, torch.Tensor], layers: tuple[str, ...] = tuple(VGG19_LAYERS)):
        super().__init__()
        from torchvision.models import vgg19

        net = vgg19()
        net.load_state_dict(state_dict)
        self.taps = [VGG19_LAYERS[name] for name in layers]
        self.features = net.features[: max(self.taps) + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._freeze()

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = (images - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.taps:
                feats.append(x)
        return feats


def vgg19_cache_file() -> Path:
    """Where torchvision would cache VGG-19's ImageNet weights (vgg19-dcbb9e9d.pth under the hub dir)."""
    url = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"  # VGG19_Weights.IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def load_perceptual(name: str = "auto") -> nn.Module:
    """The perceptual feature network: 'vgg19', 'mobilenet_v2' or 'auto' (VGG-19 if available).

    VGG-19 is used only if its ImageNet weights are already in the torch hub cache; nothing is downloaded.
    Otherwise 'vgg19' and 'auto' fall back to the shipped MobileNetV2 ('vgg19' with a warning).
    """
    if name not in ("auto", "vgg19", "mobilenet_v2"):
        raise ValueError(f"unknown perceptual network {name!r}")
    if name in ("auto", "vgg19"):
        cached = vgg19_cache_file()
        if cached.is_file():
            state = torch.load(cached, map_location="cpu", weights_only=True)
            return VGG19Features(state)
        if name == "vgg19":
            warnings.warn(f"VGG-19 ImageNet weights not found at {cached}; using MobileNetV2", stacklevel=2)
    return MobileNetV2Features()


class PerceptualLoss(nn.Module):
    """pixel_weight * pixel loss (MSE or L1) + sum_l layer_weights[l] * mean |f_l(pred) - f_l(target)|.

    `feature_net` is any frozen module mapping (B, 3, H, W) images in [0, 1] to a list of feature maps.
    Gradients flow to `pred` only: the target's features are computed without a graph, and the feature
    network's parameters are frozen here in case the caller did not.
    """

    def __init__(
        self,
        feature_net: nn.Module,
        layer_weights: list[float] | tuple[float, ...] | None = None,
        pixel_weight: float = 1.0,
        pixel_loss: str = "mse",
        normalise: bool = False,
    ):
        super().__init__()
        if pixel_loss not in ("mse", "l1"):
            raise ValueError("pixel_loss must be 'mse' or 'l1'")
        self.feature_net = feature_net.eval()
        for p in self.feature_net.parameters():
            p.requires_grad_(False)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.pixel_weight = float(pixel_weight)
        self.pixel_loss = pixel_loss
        # normalise: each term (the pixel loss, each layer) divided by a running mean of itself, so that
        # every term starts at ~1 whatever its scale (L1 of deep features ~10, MSE of pixels ~0.05) and
        # the weights say how much each counts, as in Jakab et al. (2018)'s code; the running means are
        # state (saved with the checkpoint), updated without a gradient, momentum 0.99
        self.normalise = normalise
        self.register_buffer("scales", torch.zeros(0))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the running scales are sized by the first batch (how many terms the loss has); a fresh loss
        # resumed from a checkpoint takes the saved ones' size before they are copied in
        saved = state_dict.get(prefix + "scales")
        if saved is not None and saved.shape != self.scales.shape:
            self.scales = torch.zeros(saved.shape, dtype=self.scales.dtype, device=self.scales.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _normalised(self, terms: list[torch.Tensor]) -> list[torch.Tensor]:
        values = torch.stack([t.detach().float() for t in terms])
        if self.scales.numel() != len(terms):
            self.scales = values.clone()
        elif self.training:
            self.scales.mul_(0.99).add_(0.01 * values)
        return [t / self.scales[i].clamp(min=1e-8) for i, t in enumerate(terms)]

    def train(self, mode: bool = True):
        super().train(mode)
        self.feature_net.eval()  # the feature network never leaves eval mode
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"shape mismatch: {tuple(pred.shape)} vs {tuple(target.shape)}")
        target = target.detach()
        pix = F.mse_loss(pred, target) if self.pixel_loss == "mse" else F.l1_loss(pred, target)
        fp = self.feature_net(pred)
        with torch.no_grad():
            ft = self.feature_net(target)
        weights = self.layer_weights if self.layer_weights is not None else [1.0] * len(fp)
        if len(weights) != len(fp) or len(ft) != len(fp):
            raise ValueError(f"{len(weights)} layer weights for {len(fp)} feature maps")
        terms = [pix] + [F.l1_loss(a, b) for a, b in zip(fp, ft)]
        if self.normalise:
            terms = self._normalised(terms)
        loss = self.pixel_weight * terms[0]
        for w, term in zip(weights, terms[1:]):
            if w:
                loss = loss + w * term
        return loss
