"""The paper's adapter (equation 1): theta_Y,L = W_L x_1 theta_X,L on every conv of a frozen core.

An *adapted* network is the core with each targeted conv wrapped in `ProjectedConv2d`
(frozen `base_layer` + trainable `proj`, identity at init), its batch-norm layers trainable
(initialised from the core) and a new K-landmark head. The adapter is what differs from the
core, named by the core's own module paths:

    <conv path>.proj                     (C_out, C_out) projection W_L
    <bn path>.{weight,bias,running_mean,running_var}
    head.weight, head.bias               the new head (K outputs)
    <conv path>.{weight,bias}            only with targets="3x3" (the official code's choice):
                                         the convs it leaves unprojected train freely

`fold` turns core + adapter into plain conv weights, so serving runs an ordinary network.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Literal

import torch
from torch import nn

from landmarks.hourglass import HourglassConfig, LandmarkHourglass
from landmarks.runtime.architecture import adapter_shapes

__all__ = [
    "ProjectedConv2d",
    "ProjectionTargets",
    "adapter_state_dict",
    "build_adapted",
    "expected_adapter_shapes",
    "first_non_finite",
    "fold",
    "fold_state_dict",
    "load_adapter_state",
]

ProjectionTargets = Literal["all", "3x3"]
HEAD = "head"
_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


class ProjectedConv2d(nn.Module):
    """A frozen conv whose weight is seen through a learnable output-channel projection.

    weight = proj @ base.weight.reshape(C_out, -1); the frozen bias (if any) is added unprojected,
    which is what (proj . conv)(x) + b means and what `fold` reproduces.
    """

    adapter_param_names = ("proj",)

    def __init__(self, base_layer: nn.Conv2d) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.base_layer.requires_grad_(False)
        c_out = base_layer.out_channels
        weight = base_layer.weight
        proj = torch.empty(c_out, c_out, dtype=weight.dtype, device=weight.device)
        # identity; not torch.eye on the meta device (expected_adapter_shapes), which takes seconds there
        # (a Python decomposition), paid by every process that loads an adapter
        self.proj = nn.Parameter(proj if proj.is_meta else torch.eye(c_out, dtype=weight.dtype, device=weight.device))

    def projected_weight(self) -> torch.Tensor:
        base = self.base_layer.weight
        return (self.proj @ base.reshape(base.shape[0], -1)).reshape(base.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer._conv_forward(x, self.projected_weight(), self.base_layer.bias)


def _is_targeted(name: str, conv: nn.Conv2d, targets: ProjectionTargets) -> bool:
    if name == HEAD:
        return False
    if targets == "all":
        return True
    if targets == "3x3":
        return conv.kernel_size == (3, 3)
    raise ValueError(f"targets must be 'all' or '3x3', got {targets!r}")


def build_adapted(
    core: LandmarkHourglass,
    num_landmarks: int,
    targets: ProjectionTargets = "all",
    init_head_from_core: bool = False,
    input_size: int | None = None,
) -> LandmarkHourglass:
    """A copy of `core` ready to learn one category's adapter; `core` itself is untouched.

    Only the adapter (projections, batch-norm, head; plus free convs with targets="3x3")
    requires grad; the core's conv weights are frozen buffers of the wrapped layers.

    Args:
        num_landmarks: K for the new head, trained from scratch unless `init_head_from_core`
            (then it starts as the core's first K maps; needs K <= the core's landmark count).
        targets: "all" convs (the paper) or "3x3" only (the official code).
        input_size: run the (fully convolutional) core at another input size for this category,
            e.g. 64 px for cheap CPU adaptation; recorded in the adapter's config.
    """
    model = copy.deepcopy(core)
    model.requires_grad_(False)
    features = core.config.features
    if init_head_from_core and num_landmarks > core.config.num_landmarks:
        raise ValueError(
            f"init_head_from_core needs K <= the core's {core.config.num_landmarks} landmarks, got {num_landmarks}"
        )
    model.head = nn.Conv2d(features, num_landmarks, 1, bias=True).to(core.head.weight.device)
    if init_head_from_core:  # the first K of the core's maps: the landmarks start spread over the object
        with torch.no_grad():
            model.head.weight.copy_(core.head.weight[:num_landmarks])
            model.head.bias.copy_(core.head.bias[:num_landmarks])
    model.config = core.config.replace(num_landmarks=num_landmarks, input_size=input_size or core.config.input_size)

    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Conv2d):
                if _is_targeted(path, child, targets):
                    setattr(module, child_name, ProjectedConv2d(child))
                else:
                    child.requires_grad_(True)  # head, or a free conv with targets="3x3"
            elif isinstance(child, nn.BatchNorm2d):
                child.requires_grad_(True)
    return model


def adapter_state_dict(model: LandmarkHourglass) -> dict[str, torch.Tensor]:
    """The adapter's tensors, named by the core's module paths (see the module docstring)."""
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if isinstance(module, ProjectedConv2d):
            out[f"{path}.proj"] = module.proj.detach()
        elif isinstance(module, nn.BatchNorm2d):
            for key in _BN_KEYS:
                out[f"{path}.{key}"] = getattr(module, key).detach()
        elif isinstance(module, nn.Conv2d) and not path.endswith(".base_layer") and module.weight.requires_grad:
            out[f"{path}.weight"] = module.weight.detach()
            if module.bias is not None:
                out[f"{path}.bias"] = module.bias.detach()
    return {k: v.contiguous().clone() for k, v in out.items()}


def load_adapter_state(model: LandmarkHourglass, tensors: Mapping[str, torch.Tensor]) -> None:
    """Copy adapter tensors into an adapted model (the inverse of `adapter_state_dict`)."""
    expected = adapter_state_dict(model)
    missing, unexpected = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or unexpected:
        raise KeyError(f"adapter keys do not match the model: missing {sorted(missing)[:5]}, "
                       f"unexpected {sorted(unexpected)[:5]}")
    # Adapter keys are also the adapted model's own state keys (a projected conv keeps its path).
    state = model.state_dict()
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value.to(state[key].dtype))


def expected_adapter_shapes(
    core_config: HourglassConfig, num_landmarks: int, targets: ProjectionTargets
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a valid adapter for this core architecture, from the config alone
    (`landmarks.runtime.architecture.adapter_shapes`; tests/landmarks/test_runtime.py checks it against
    `adapter_state_dict` of a built network)."""
    return adapter_shapes(core_config, num_landmarks, targets)


def fold_state_dict(
    core_state: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Core + adapter -> the state dict of a plain `LandmarkHourglass` (no projection at run time).

    Pure tensor math, no I/O; raises ValueError if folding produces non-finite weights.
    """
    folded = {k: v for k, v in core_state.items()}
    made = {}
    for key, value in adapter.items():
        if key.endswith(".proj"):
            path = key[: -len(".proj")]
            base = core_state[f"{path}.weight"]
            proj = value.to(device=base.device, dtype=torch.float32)
            made[key] = (proj @ base.float().reshape(base.shape[0], -1)).reshape(base.shape)
            folded[f"{path}.weight"] = made[key].to(base.dtype)
        else:
            folded[key] = value
    bad = first_non_finite(made)
    if bad is not None:
        raise ValueError(f"folding {bad} produced non-finite weights")
    return folded


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose tensor holds a NaN or Inf, else None. Checked at once through their norms
    (one fused call; a NaN or Inf makes its norm non-finite): a check per tensor cost ~25 us each,
    and an adapter has hundreds. Only a non-finite norm, which huge finite values can also give,
    leads to the per-tensor check."""
    values = [t.detach() for t in tensors.values() if t.numel()]
    if not values or bool(torch.isfinite(torch.stack(torch._foreach_norm(values)).float()).all()):
        return None
    return next((k for k, t in tensors.items() if not torch.isfinite(t).all()), None)


def fold(core: LandmarkHourglass, adapter: Mapping[str, torch.Tensor],
         config: HourglassConfig | None = None) -> LandmarkHourglass:
    """Core + adapter -> a new plain network with ordinary conv weights, in eval mode.

    `config` is the adapter's (it may run the core at another input size); default: the core's with K.
    """
    num_landmarks = adapter[f"{HEAD}.weight"].shape[0]
    param = next(core.parameters())
    config = config or core.config.replace(num_landmarks=num_landmarks)
    if config.num_landmarks != num_landmarks:
        raise ValueError(f"config has K={config.num_landmarks} but the adapter's head has {num_landmarks}")
    with torch.device("meta"):
        plain = LandmarkHourglass(config)
    state = fold_state_dict(core.state_dict(), adapter)
    plain.load_state_dict({k: v.to(param.device, param.dtype) if v.is_floating_point() else v
                           for k, v in state.items()}, assign=True)
    # non-persistent normalisation buffers were created on meta; rebuild them on the right device
    plain.pixel_mean = core.pixel_mean.clone()
    plain.pixel_std = core.pixel_std.clone()
    return plain.eval()
