"""The core's architecture without torch: its config, and its layers in the order of the torch
network's state dict (`landmarks.hourglass.LandmarkHourglass`), which is what the ONNX graph, the
adapter's expected shapes and the int8 calibration's convolution names are made from.

Shapes for the `paper` preset: 128x128 RGB in, K raw 32x32 heatmaps out, ~6.23M parameters.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from landmarks.text import clip

__all__ = [
    "ARCHITECTURES",
    "Conv",
    "HourglassConfig",
    "adapter_shapes",
    "conv_names",
    "convs",
    "cpu_config",
    "network_shapes",
    "paper_config",
    "tiny_config",
    "w192_config",
]


# (field, lowest, highest): far beyond any sensible network, tight enough that no config read from
# a file can make building or running it take the machine's memory.
_INT_LIMITS = (
    ("num_landmarks", 1, 1024),
    ("stem_channels", 4, 4096),
    ("mid_channels", 4, 4096),
    ("features", 4, 4096),
    ("depth", 1, 6),
    ("input_size", 8, 1024),
)


@dataclass(frozen=True)
class HourglassConfig:
    """Architecture of the core. Stored as JSON in every core and adapter file.

    Attributes:
        num_landmarks: K, the number of heatmaps the head produces.
        stem_channels: output channels of the 7x7 stride-2 stem conv (FAN: 64).
        mid_channels: channels of the first two ConvBlocks (FAN: 128).
        features: channels inside the hourglass (FAN: 256).
        depth: number of 2x downsamplings inside the hourglass (FAN: 4).
        input_size: side of the square input image; heatmaps are input_size / 4.
        mean, std: per-channel normalisation applied inside `forward` to images in [0, 1],
            so preprocessing travels with the weights and cannot drift between train and serve.
    """

    num_landmarks: int = 14
    stem_channels: int = 64
    mid_channels: int = 128
    features: int = 256
    depth: int = 4
    input_size: int = 128
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        # Configs arrive from files users hand us: check types and ranges here, the one place every
        # core, adapter and network passes, so a bad value is a clear ValueError, never a torch error.
        for name, low, high in _INT_LIMITS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {clip(value)} ({type(value).__name__})")
            if not low <= value <= high:
                raise ValueError(f"{name} must be in {low}..{high}, got {value}")
        for name in ("stem_channels", "mid_channels", "features"):
            value = getattr(self, name)
            if value % 4:
                raise ValueError(f"{name} must be a positive multiple of 4 (ConvBlock splits it 2:1:1), got {value}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, (list, tuple)) or len(values) != 3
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in values)):
                raise ValueError(f"{name} needs 3 finite numbers, got {clip(values)}")
        # Stem /2, pool /2, then `depth` halvings inside the hourglass must stay integral.
        if self.input_size % (4 * 2**self.depth):
            step = 4 * 2**self.depth  # the stem and pool halve twice, then the hourglass depth times
            raise ValueError(f"input_size {self.input_size} must be a multiple of 4 * 2**depth = {step} for this "
                             f"network (e.g. {step} or {2 * step})")
        if min(self.std) <= 0:
            raise ValueError(f"std must be > 0, got {list(self.std)}")
        # JSON round trips give lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def heatmap_size(self) -> int:
        return self.input_size // 4

    def replace(self, **changes) -> HourglassConfig:
        return HourglassConfig(**{**asdict(self), **changes})

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> HourglassConfig:
        """Raises ValueError (with what is wrong) for anything but a valid config object."""
        try:
            data = json.loads(text)
        except RecursionError:
            raise ValueError("config JSON is nested too deeply") from None
        if not isinstance(data, dict):
            raise ValueError(f"config must be a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown hourglass config fields {sorted(unknown)}")
        return cls(**data)


def paper_config(num_landmarks: int = 14) -> HourglassConfig:
    """FAN as in the paper's code: one stack, depth 4, 256 features, 128 px."""
    return HourglassConfig(num_landmarks=num_landmarks)


def cpu_config(num_landmarks: int = 14) -> HourglassConfig:
    """Half-width FAN for 2-core CPU training: same topology and 128 px input, 1.57M parameters.

    Measured on a 2-core AMD EPYC (AVX2, no AVX-512): one fp32 training step of batch 16 runs
    at ~31 img/s (~34 with channels_last) against ~6.5 img/s for `paper_config`
    (`python scripts/training_speed.py core` measures both on the machine at hand).
    """
    return HourglassConfig(num_landmarks=num_landmarks, stem_channels=32, mid_channels=64, features=128)


def w192_config(num_landmarks: int = 14) -> HourglassConfig:
    """Three-quarter-width FAN (192 features), between `cpu_config` and `paper_config`."""
    return HourglassConfig(num_landmarks=num_landmarks, stem_channels=48, mid_channels=96, features=192)


def tiny_config(num_landmarks: int = 5) -> HourglassConfig:
    """A few-thousand-parameter hourglass for tests: same topology, 32 px input."""
    return HourglassConfig(
        num_landmarks=num_landmarks, stem_channels=8, mid_channels=8, features=8, depth=2, input_size=32
    )


ARCHITECTURES = {"paper": paper_config, "w192": w192_config, "cpu": cpu_config, "tiny": tiny_config}


# ------------------------------------------------------------------------------------------- layers
BN_KEYS = ("weight", "bias", "running_mean", "running_var")
HEAD = "head"


@dataclass(frozen=True)
class Conv:
    """One convolution of the network: its module path and shape (square kernel, 'same' padding)."""

    path: str
    in_ch: int
    out_ch: int
    kernel: int
    stride: int = 1
    bias: bool = False

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_ch, self.in_ch, self.kernel, self.kernel)


def _conv_block(path: str, in_ch: int, out_ch: int) -> list[tuple[str, object]]:
    """ConvBlock's layers: three pre-activated 3x3 branches and, when the widths differ, a 1x1 skip;
    each branch is (BatchNorm `.0`, ReLU `.1`, Conv `.2`)."""
    half, quarter = out_ch // 2, out_ch // 4
    layers: list[tuple[str, object]] = []
    for name, cin, cout, kernel in (("branch1", in_ch, half, 3), ("branch2", half, quarter, 3),
                                    ("branch3", quarter, quarter, 3)):
        layers += [("bn", (f"{path}.{name}.0", cin)), ("conv", Conv(f"{path}.{name}.2", cin, cout, kernel))]
    if in_ch != out_ch:
        layers += [("bn", (f"{path}.skip.0", in_ch)), ("conv", Conv(f"{path}.skip.2", in_ch, out_ch, 1))]
    return layers


def _hourglass(path: str, depth: int, features: int) -> list[tuple[str, object]]:
    layers = _conv_block(f"{path}.upper", features, features) + _conv_block(f"{path}.down", features, features)
    inner = f"{path}.inner"
    layers += _hourglass(inner, depth - 1, features) if depth > 1 else _conv_block(inner, features, features)
    return layers + _conv_block(f"{path}.up", features, features)


def layers(config: HourglassConfig) -> list[tuple[str, object]]:
    """("conv", Conv) and ("bn", (path, channels)) in the torch network's registration order."""
    c = config
    out: list[tuple[str, object]] = [("conv", Conv("stem.0", 3, c.stem_channels, 7, 2, True)),
                                     ("bn", ("stem.1", c.stem_channels))]
    out += _conv_block("block1", c.stem_channels, c.mid_channels)
    out += _conv_block("block2", c.mid_channels, c.mid_channels)
    out += _conv_block("block3", c.mid_channels, c.features)
    out += _hourglass("hourglass", c.depth, c.features)
    out += _conv_block("top", c.features, c.features)
    out += [("conv", Conv("top_conv.0", c.features, c.features, 1, 1, True)), ("bn", ("top_conv.1", c.features)),
            ("conv", Conv(HEAD, c.features, c.num_landmarks, 1, 1, True))]
    return out


def convs(config: HourglassConfig) -> list[Conv]:
    return [layer for kind, layer in layers(config) if kind == "conv"]  # type: ignore[misc]


def conv_names(config: HourglassConfig) -> list[str]:
    """Every convolution's weight name, in the network's order (what int8 calibrations are keyed by)."""
    return [f"{conv.path}.weight" for conv in convs(config)]


def network_shapes(config: HourglassConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every stored tensor of a plain network (a core's file: no BN step counters)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for kind, layer in layers(config):
        if kind == "conv":
            shapes[f"{layer.path}.weight"] = layer.weight_shape
            if layer.bias:
                shapes[f"{layer.path}.bias"] = (layer.out_ch,)
        else:
            path, channels = layer
            shapes.update({f"{path}.{key}": (channels,) for key in BN_KEYS})
    return shapes


def adapter_shapes(config: HourglassConfig, num_landmarks: int, targets: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a valid adapter (landmarks.projection's format): a projection (C_out, C_out) per
    targeted conv ("all" but the head, or "3x3" only; the convs "3x3" leaves train freely: their weight
    and bias), every batch norm's four tensors, and the new head with `num_landmarks` outputs."""
    if targets not in ("all", "3x3"):
        raise ValueError(f"targets must be 'all' or '3x3', got {targets!r}")
    shapes: dict[str, tuple[int, ...]] = {}
    for kind, layer in layers(config.replace(num_landmarks=num_landmarks)):
        if kind == "bn":
            path, channels = layer
            shapes.update({f"{path}.{key}": (channels,) for key in BN_KEYS})
        elif layer.path != HEAD and (targets == "all" or layer.kernel == 3):
            shapes[f"{layer.path}.proj"] = (layer.out_ch, layer.out_ch)
        else:
            shapes[f"{layer.path}.weight"] = layer.weight_shape
            if layer.bias:
                shapes[f"{layer.path}.bias"] = (layer.out_ch,)
    return shapes
