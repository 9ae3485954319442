"""`landmarks adapt`: learn one category's landmarks without labels, by conditional generation.

    y, y'  = two random warps of an image                       (training.pairs)
    points = softargmax(detector(y))        K x 2, beta = 10    (landmarks.heatmaps)
    maps   = Gaussians at points            sigma = sqrt(0.5)
    y_hat  = generator(y', maps)                                (training.generator)
    loss   = pixel + perceptual(y_hat, y)                       (training.perceptual)
           [+ separation(points) + equivariance(points, points of y')]   cpu preset only, RESULTS.md

Modes (the detector; the generator always trains):
    proposed   the paper: frozen core, learn W_L per conv + batch-norm + a new head -> adapter file
    finetune   baseline: every core weight learns, new head               -> network file
    scratch    baseline: the same network from random init (an IMM)      -> network file

Outputs in --out: checkpoint.pt (resume), config.json, history.jsonl, curve.png,
samples.png (y, y', reconstruction, landmarks), and adapter.safetensors / network.safetensors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from landmarks.adapter_io import ArtifactError, load_core, save_adapter, save_network
from landmarks.geometry import apply_affine
from landmarks.heatmaps import (
    PAPER_BETA,
    PAPER_BOTTLENECK_SIGMA,
    heatmap_to_input,
    input_to_heatmap,
    render_gaussians,
    soft_argmax,
)
from landmarks.hourglass import LandmarkHourglass
from landmarks.projection import adapter_state_dict, build_adapted
from training.config_args import add_config_arguments, invocation, values_from_args
from training.datasets import DatasetError, open_dataset
from training.generator import ConditionalGenerator, GeneratorConfig
from training.image_data import ObjectCrops
from training.pairs import PairConfig, make_pairs
from training.perceptual import PerceptualLoss, load_perceptual

__all__ = ["PRESETS", "AdaptConfig", "adapt", "add_arguments", "build_detector", "main"]

MODES = ("proposed", "finetune", "scratch")


@dataclass(frozen=True)
class AdaptConfig:
    images: str = ""  # FORMAT:PATH; annotations, if any, are never read for training
    core: str = "adapters/core.safetensors"
    mode: str = "proposed"
    category: str = ""
    out: str = "runs/adapt"
    num_landmarks: int = 10
    targets: str = "all"  # proposed: projections on all convs (paper) or 3x3 only (official code)
    train_split: str = ""
    steps: int = 10_000
    batch_size: int = 16
    lr: float = 1e-3  # detector (adapter or whole network)
    generator_lr: float = 1e-3
    beta1: float = 0.0  # Adam betas (0, 0.9) as in the official code
    beta2: float = 0.9
    lr_decay_every: int = 0  # x0.1 every N steps (paper: every 30 epochs); 0 = constant
    clip: float = 1.0  # gradient-norm clipping, detector and generator separately
    generator_channels: int = 32
    generator_blocks: int = 6
    perceptual: str = "auto"  # auto | vgg19 | mobilenet_v2 | none
    pixel_weight: float = 1.0
    softargmax_beta: float = PAPER_BETA
    bottleneck_sigma: float = PAPER_BOTTLENECK_SIGMA
    target_rotation_sd: float = 30.0
    deformed_rotation_sd: float = 15.0
    scale_min: float = 0.9
    scale_max: float = 1.1
    shift_sd: float = 0.05
    tps_sd: float = 0.0
    # Not in the paper: weight of an equivariance loss ||T(p(y)) - p(y')||^2 (heatmap px) between the
    # landmarks of y and of y' (T the known warp between them). It gives the detector a direct signal
    # from the first step; the reconstruction keeps landmarks spread out. 0 = the paper's objective.
    equivariance_weight: float = 0.0
    # Not in the paper: Zhang et al. (2018)'s separation term, mean over landmark pairs of
    # exp(-d^2 / (2 sigma^2)) with d in units of the image width. It stops the K points from
    # collapsing onto one place, which is what the bottleneck alone does at our budget (RESULTS.md).
    separation_weight: float = 0.0
    separation_sigma: float = 0.06
    head_lr: float = 0.0  # learning rate of the new head (0 = --lr)
    image_size: int = 0  # run the core at this input size (0 = the core's own, 128)
    init_head: str = "scratch"  # scratch (the paper) | core: start from the core's first K maps (proposed)
    # A previous run's checkpoint.pt to start from (its detector's trainable tensors and its generator;
    # not its optimiser or step). Re-adapting a category to a retrained core this way takes a fraction
    # of the steps: for `proposed` only the adapter's tensors are taken, the frozen core is the new one.
    warm_start: str = ""
    workers: int = 2
    bf16: bool = False
    picture_every: int = 500
    checkpoint_every: int = 500
    seed: int = 0
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.init_head not in ("scratch", "core"):
            raise ValueError(f"init_head must be 'scratch' or 'core', got {self.init_head!r}")
        if self.targets not in ("all", "3x3"):
            raise ValueError(f"targets must be 'all' or '3x3', got {self.targets!r}")
        if self.separation_sigma <= 0 or self.separation_weight < 0 or self.head_lr < 0:
            raise ValueError("separation_sigma > 0, separation_weight >= 0 and head_lr >= 0 are required")
        if self.num_landmarks < 1 or self.steps < 1 or self.batch_size < 2:
            raise ValueError("num_landmarks >= 1, steps >= 1 and batch_size >= 2 (batch-norm) are required")

    def pairs(self) -> PairConfig:
        return PairConfig(self.target_rotation_sd, self.deformed_rotation_sd, 40.0,
                          (self.scale_min, self.scale_max), self.shift_sd, self.tps_sd)


PRESETS: dict[str, dict] = {
    # What a 2-core CPU affords (~30 min, 13 img/s), chosen by the probes in RESULTS.md: the paper's
    # objective alone learned nothing in that time, so the core runs at 64 px, the head starts from
    # the core's first K maps, and a separation and an equivariance term (TPS-warped pairs) help.
    "cpu": dict(steps=1_500, batch_size=16, image_size=64, init_head="core", separation_weight=1.0,
                equivariance_weight=1.0, tps_sd=0.08, picture_every=250, checkpoint_every=250),
    # The paper's schedule (80 epochs x 2,500 iterations, batch 48, lr x0.1 every 30 epochs), for a GPU.
    "paper": dict(steps=200_000, batch_size=48, lr_decay_every=75_000, bf16=True, workers=8,
                  picture_every=2_500, checkpoint_every=2_500),
    # Seconds on synthetic images (tests).
    "smoke": dict(steps=3, batch_size=2, workers=0, picture_every=2, checkpoint_every=2, generator_channels=4,
                  generator_blocks=1, perceptual="none"),
}


class _NoFeatures(nn.Module):
    """`--perceptual none`: the pixel loss alone."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return []


def build_detector(mode: str, core_model: LandmarkHourglass, num_landmarks: int, targets: str,
                   seed: int, input_size: int | None = None, init_head: str = "scratch") -> LandmarkHourglass:
    input_size = input_size or core_model.config.input_size
    if mode == "proposed":
        return build_adapted(core_model, num_landmarks, targets, init_head_from_core=init_head == "core",
                             input_size=input_size)
    torch.manual_seed(seed)
    config = core_model.config.replace(num_landmarks=num_landmarks, input_size=input_size)
    if mode == "scratch":
        return LandmarkHourglass(config)
    detector = LandmarkHourglass(config)  # finetune: core weights, new head (or the core's first K maps)
    state = core_model.state_dict()
    if init_head == "core":
        state = {**state, **{k: v[:num_landmarks] for k, v in state.items() if k.startswith("head.")}}
    else:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    detector.load_state_dict(state, strict=False)
    return detector


def separation_loss(points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean over ordered pairs i != j of exp(-|p_i - p_j|^2 / (2 sigma^2)); points (B, K, 2), any unit."""
    k = points.shape[1]
    if k < 2:
        return points.new_zeros(())
    d2 = (points[:, :, None] - points[:, None]).square().sum(-1)
    off = ~torch.eye(k, dtype=torch.bool, device=points.device)
    return torch.exp(-d2[:, off] / (2 * sigma**2)).mean()


def detect_points(detector: nn.Module, images: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (points in heatmap pixels (B,K,2), raw heatmaps)."""
    heat = detector(images).float()
    return soft_argmax(heat, beta), heat


def _save_samples(path: Path, y, yd, recon, points_input) -> None:
    from training.plots import _pyplot

    plt = _pyplot()
    n = min(6, len(y))
    fig, axes = plt.subplots(4, n, figsize=(1.8 * n, 7.4), squeeze=False)
    colours = plt.cm.tab10(np.linspace(0, 1, points_input.shape[1]))
    rows = [("y (target)", y), ("y' (deformed)", yd), ("reconstruction", recon), ("landmarks on y", y)]
    for r, (title, batch) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(batch[i].permute(1, 2, 0).clamp(0, 1).cpu().numpy())
            ax.axis("off")
            if r == 3:
                ax.scatter(points_input[i, :, 0], points_input[i, :, 1], s=16, c=colours, edgecolors="black",
                           linewidths=0.4)
            if i == 0:
                ax.set_title(title, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _warm_start(path: str, mode: str, detector: LandmarkHourglass, generator: nn.Module) -> str:
    """Copy a previous run's adapter (or network) and generator weights; see `AdaptConfig.warm_start`.
    Returns a description of where they came from, for the exported file's metadata."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--warm-start {path}: no such file (give a run's checkpoint.pt, e.g. runs/adapt/faces/checkpoint.pt)")
    # weights_only: tensors and plain containers, never arbitrary objects; our own checkpoint format
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or not {"detector", "generator"} <= set(ckpt):
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
    print(f"warm start from {path} (step {ckpt.get('step', '?')}: {len(state)} detector tensors and the generator)",
          file=sys.stderr)
    return f"{path}: {ckpt.get('step', '?')} steps, {float(ckpt.get('elapsed', 0)):.0f} s of training"


def adapt(cfg: AdaptConfig, resume: bool = False, command: str = "") -> Path:
    """Train one adapter (or baseline network); returns the exported file."""
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    core = load_core(cfg.core)
    core_model = core.build("cpu")
    size = cfg.image_size or core.config.input_size
    data = open_dataset(cfg.images).subset(cfg.train_split or None)
    print(f"{cfg.images}: {data.report}", file=sys.stderr)

    detector = build_detector(cfg.mode, core_model, cfg.num_landmarks, cfg.targets, cfg.seed, size,
                              init_head=cfg.init_head).train()
    heat_size = detector.config.heatmap_size
    stride = size / heat_size
    generator = ConditionalGenerator(GeneratorConfig(cfg.num_landmarks, cfg.generator_channels,
                                                     cfg.generator_blocks)).train()
    features = _NoFeatures() if cfg.perceptual == "none" else load_perceptual(cfg.perceptual)
    loss_fn = PerceptualLoss(features, pixel_weight=cfg.pixel_weight)
    det_params = [p for p in detector.parameters() if p.requires_grad]
    head_ids = {id(p) for p in detector.head.parameters()}
    betas = (cfg.beta1, cfg.beta2)
    det_lrs = (cfg.lr, cfg.head_lr or cfg.lr)
    opt_det = torch.optim.Adam([{"params": [p for p in det_params if id(p) not in head_ids], "lr": det_lrs[0]},
                                {"params": [p for p in det_params if id(p) in head_ids], "lr": det_lrs[1]}],
                               betas=betas)
    opt_gen = torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr, betas=betas)
    n_trainable = sum(p.numel() for p in det_params)
    print(f"mode {cfg.mode}: {n_trainable:,} trainable detector parameters, generator "
          f"{sum(p.numel() for p in generator.parameters()):,}, perceptual {type(features).__name__}",
          file=sys.stderr)

    step, history, elapsed, warm_from = 0, [], 0.0, ""
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        warm_from = ckpt.get("warm_started_from", "")
        detector.load_state_dict(ckpt["detector"])
        generator.load_state_dict(ckpt["generator"])
        opt_det.load_state_dict(ckpt["opt_det"])
        opt_gen.load_state_dict(ckpt["opt_gen"])
        step, history, elapsed = ckpt["step"], ckpt["history"], ckpt["elapsed"]
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    elif resume:
        print(f"--resume: no checkpoint in {out}, starting fresh", file=sys.stderr)
    if cfg.warm_start and step == 0:
        warm_from = _warm_start(cfg.warm_start, cfg.mode, detector, generator)
    (out / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "command": command}, indent=2))

    def export() -> Path:
        provenance = dict(command=command, training_seconds=f"{elapsed:.0f}", training_steps=str(step),
                          dataset=cfg.images, mode=cfg.mode,
                          license=_licence_for(cfg.images), **({"warm_started_from": warm_from} if warm_from else {}))
        if cfg.mode == "proposed":
            return save_adapter(out / "adapter.safetensors", adapter_state_dict(detector), detector.config,
                                category=cfg.category or "unnamed", core_sha256=core.sha256, targets=cfg.targets,
                                **provenance)
        return save_network(out / "network.safetensors", detector, cfg.category or "unnamed",
                            core_sha256=core.sha256, **provenance)

    def checkpoint() -> None:
        torch.save({"detector": detector.state_dict(), "generator": generator.state_dict(),
                    "opt_det": opt_det.state_dict(), "opt_gen": opt_gen.state_dict(), "step": step,
                    "history": history, "elapsed": elapsed, "warm_started_from": warm_from}, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(ckpt_path)
        with open(out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        from training.plots import plot_curves

        plot_curves(history, out / "curve.png", f"adapt {cfg.category or cfg.images} ({cfg.mode})")
        export()

    crops = ObjectCrops(data, size)
    pair_cfg = cfg.pairs()
    start = time.time() - elapsed
    bar = tqdm(total=cfg.steps, initial=step, desc=f"adapt {cfg.mode}", mininterval=10, dynamic_ncols=True)
    stop, epoch = False, step * cfg.batch_size // max(1, len(crops))
    while step < cfg.steps and not stop:
        loader = torch.utils.data.DataLoader(crops, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                             num_workers=cfg.workers,
                                             generator=torch.Generator().manual_seed(cfg.seed + epoch))
        pair_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        tick, seen = time.time(), 0
        for images, _, _, ok in loader:
            images = images[ok]
            if len(images) < 2:
                continue
            decay = 0.1 ** (step // cfg.lr_decay_every) if cfg.lr_decay_every else 1.0
            for group, base_lr in zip(opt_det.param_groups, det_lrs):
                group["lr"] = base_lr * decay
            for group in opt_gen.param_groups:
                group["lr"] = cfg.generator_lr * decay
            pairs = make_pairs(images, pair_cfg, pair_gen)
            target, deformed = pairs.target, pairs.deformed
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
                points, _ = detect_points(detector, target, cfg.softargmax_beta)
                maps = render_gaussians(points, heat_size, cfg.bottleneck_sigma)
                recon = generator(deformed, maps)
                if cfg.equivariance_weight:
                    points_deformed, _ = detect_points(detector, pairs.deformed_rigid, cfg.softargmax_beta)
            recon_loss = loss_fn(recon.float(), target)
            loss = recon_loss
            equivariance = torch.zeros(())
            if cfg.equivariance_weight:
                moved = input_to_heatmap(apply_affine(heatmap_to_input(points, stride), pairs.transform), stride)
                equivariance = (moved - points_deformed).square().sum(-1).mean()
                loss = loss + cfg.equivariance_weight * equivariance
            separation = separation_loss(points / heat_size, cfg.separation_sigma)
            if cfg.separation_weight:
                loss = loss + cfg.separation_weight * separation
            opt_det.zero_grad(set_to_none=True)
            opt_gen.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                nn.utils.clip_grad_norm_(det_params, cfg.clip)
                nn.utils.clip_grad_norm_(generator.parameters(), cfg.clip)
            opt_det.step()
            opt_gen.step()
            step += 1
            seen += len(images)
            elapsed = time.time() - start
            # spread of the landmarks (heatmap px): near zero means they collapsed to one place
            spread = float(points.detach().std(dim=1).mean())
            history.append({"step": step, "loss": float(loss.detach()), "reconstruction": float(recon_loss.detach()),
                            "equivariance": float(equivariance.detach()),
                            "separation": round(float(separation.detach()), 4), "spread": round(spread, 3),
                            "time": round(elapsed, 1)})
            bar.update(1)
            bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", ips=f"{seen / max(1e-9, time.time() - tick):.1f}")
            if step % cfg.picture_every == 0 or step == cfg.steps:
                _save_samples(out / "samples.png", target.detach(), deformed, recon.detach().float(),
                              heatmap_to_input(points.detach(), stride).numpy())
            if step % cfg.checkpoint_every == 0:
                checkpoint()
            if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
                print(f"stopping at step {step}: --max-minutes reached (continue with --resume)", file=sys.stderr)
                stop = True
            if step >= cfg.steps or stop:
                break
        epoch += 1
    bar.close()
    checkpoint()
    return export()


def _licence_for(spec: str) -> str:
    fmt, _, path = spec.partition(":")
    lowered = path.lower()
    if fmt == "mtfl" or "mtfl" in lowered or "aflw" in lowered:
        return "Trained on MTFL images (research use only; Zhang et al. 2014)"
    if "cat" in lowered:
        return "Trained on AFHQ cats (CC BY-NC 4.0; Choi et al. 2020)"
    if "shoe" in lowered or "zappos" in lowered:
        return "Trained on UT-Zappos50K images (research use only; Yu & Grauman 2014)"
    return "Trained on user-supplied images; check their licence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="?", default=None,
                        help="FORMAT:PATH of the category's images, e.g. folder:photos/ or mtfl:.../new_training.txt "
                             "(annotations are never used for training); a bare folder means folder:PATH")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu: ~30 min on 2 cores, 64 px, with separation + equivariance terms (RESULTS.md); "
                             "paper: the paper's objective and 200k-step schedule (GPU); "
                             "smoke: seconds")
    add_config_arguments(parser, AdaptConfig, skip=("images",), choices={
        "mode": MODES, "targets": ("all", "3x3"), "init_head": ("scratch", "core"),
        "perceptual": ("auto", "vgg19", "mobilenet_v2", "none")})


def main(args: argparse.Namespace) -> int:
    values = values_from_args(args, AdaptConfig, PRESETS)
    if not values.get("images"):
        print("error: give the category's images, e.g. `landmarks adapt folder:my_photos/ --category mugs`",
              file=sys.stderr)
        return 2
    if ":" not in values["images"] or Path(values["images"]).exists():
        values["images"] = f"folder:{values['images']}"
    try:
        cfg = AdaptConfig(**values)
        path = adapt(cfg, resume=args.resume, command=invocation())
    except (ArtifactError, DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
