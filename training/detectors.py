"""The network `landmarks adapt` trains, per mode, and how it starts: from the core, from scratch,
or from a previous run (warm start)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from landmarks.heatmaps import soft_argmax
from landmarks.hourglass import LandmarkHourglass
from landmarks.projection import adapter_state_dict, build_adapted

__all__ = ["MODES", "build_detector", "detect_points", "warm_start"]

MODES = ("proposed", "finetune", "scratch")


def build_detector(mode: str, core_model: LandmarkHourglass, num_landmarks: int, targets: str,
                   seed: int, input_size: int | None = None, init_head: str = "scratch") -> LandmarkHourglass:
    """proposed: the core with an adapter (projections, batch-norm, new head) to learn; finetune: every
    core weight learns, new head; scratch: the same network from random init. On the core's device."""
    input_size = input_size or core_model.config.input_size
    if mode == "proposed":
        return build_adapted(core_model, num_landmarks, targets, init_head_from_core=init_head == "core",
                             input_size=input_size)
    torch.manual_seed(seed)
    config = core_model.config.replace(num_landmarks=num_landmarks, input_size=input_size)
    device = core_model.head.weight.device
    if mode == "scratch":
        return LandmarkHourglass(config).to(device)
    detector = LandmarkHourglass(config).to(device)  # finetune: core weights, new head (or the core's first K)
    state = core_model.state_dict()
    if init_head == "core":
        state = {**state, **{k: v[:num_landmarks] for k, v in state.items() if k.startswith("head.")}}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    detector.load_state_dict(state, strict=False)
    return detector


def detect_points(detector: nn.Module, images: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (points in heatmap pixels (B,K,2), raw heatmaps); the soft-argmax runs in fp32."""
    heat = detector(images).float()
    return soft_argmax(heat, beta), heat


def warm_start(path: str, mode: str, detector: LandmarkHourglass, generator: nn.Module) -> str:
    """Copy a previous run's adapter (or network) and generator weights, not its optimiser or step
    (see `AdaptConfig.warm_start`). Returns where they came from, for the exported file's metadata."""
    from training.harness import read_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"--warm-start {path}: no such file (give a run's checkpoint.pt, "
                                "e.g. runs/adapt/faces/checkpoint.pt, or an adapter file such as "
                                "adapters/faces.safetensors)")
    if path.endswith(".safetensors"):
        return _warm_start_from_file(path, mode, detector)
    ckpt = read_checkpoint(Path(path))
    if not {"detector", "generator"} <= set(ckpt):
        raise ValueError(f"--warm-start {path}: not a `landmarks adapt` checkpoint (no detector/generator state)")
    keys = set(adapter_state_dict(detector)) if mode == "proposed" else set(detector.state_dict())
    state = {k: v for k, v in ckpt["detector"].items() if k in keys}
    if keys - set(state):
        raise ValueError(f"--warm-start {path}: its detector lacks {sorted(keys - set(state))[:3]}; "
                         f"was it trained with another --mode, --num-landmarks or core architecture?")
    try:
        detector.load_state_dict(state, strict=False)
        generator.load_state_dict(ckpt["generator"])
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"--warm-start {path} does not fit this run: {exc}") from None
    return f"{path}: {ckpt.get('step', '?')} steps, {float(ckpt.get('elapsed', 0)):.0f} s of training"


def _warm_start_from_file(path: str, mode: str, detector: LandmarkHourglass) -> str:
    """An adapter (proposed) or network (finetune/scratch) file, e.g. a shipped one: its tensors, not
    its core (re-adapting to a retrained core is the point); the generator starts fresh. Checkpoints
    do not travel with the repository, the shipped files do."""
    from landmarks.adapter_io import ArtifactError, read_artifact

    try:
        art = read_artifact(path)
    except ArtifactError as exc:
        raise ValueError(f"--warm-start {path}: {exc}") from None
    wanted = "adapter" if mode == "proposed" else "network"
    if art.metadata["kind"] != wanted:
        raise ValueError(f"--warm-start {path} is a {art.metadata['kind']} file; --mode {mode} starts from "
                         f"an {wanted} file or a checkpoint.pt")
    keys = set(adapter_state_dict(detector)) if mode == "proposed" else set(detector.state_dict())
    device = detector.head.weight.device
    state = {k: v.to(device) for k, v in art.tensors.items() if k in keys}
    missing = keys - set(state)
    try:
        if missing:
            raise RuntimeError(f"it lacks {sorted(missing)[:3]}")
        detector.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise ValueError(f"--warm-start {path} does not fit this run ({exc}); was it made with another "
                         "--num-landmarks, --targets or core architecture?") from None
    return f"{path}: {art.metadata.get('training_steps', '?')} steps (generator started fresh)"
