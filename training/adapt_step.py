"""One step of `landmarks adapt` as a `harness.Task`: pairs, landmarks, reconstruction, losses.

    y, y'  = two random warps of an image                       (training.pairs, on the device)
    points = softargmax(detector(y))        K x 2, beta = 10    (landmarks.heatmaps)
    maps   = Gaussians at points            sigma = sqrt(0.5)
    y_hat  = generator(y', maps)                                (training.generator)
    loss   = pixel + perceptual(y_hat, y)                       (training.perceptual)
           [+ separation(points) + equivariance(points, points of y')]   cpu preset, RESULTS.md
           [+ concentration(maps of y)]                                 optional
           [+ distance from the foreground(maps of y)]                  on-white photos (shoes)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from landmarks.geometry import apply_affine, warp_images
from landmarks.heatmaps import (
    expected_location,
    heatmap_to_input,
    input_to_heatmap,
    render_gaussians,
    spatial_softmax,
)
from training.detectors import detect_points
from training.devices import Precision
from training.image_bank import ImageBank
from training.metrics import background_pixels
from training.optimisers import Optimisers
from training.pairs import PairConfig, make_pairs

__all__ = [
    "AdaptationStep",
    "LossWeights",
    "background_distance",
    "concentration_loss",
    "equivariance_loss",
    "foreground_mask",
    "learning_rate_factor",
    "separation_loss",
]


@dataclass(frozen=True)
class LossWeights:
    softargmax_beta: float
    bottleneck_sigma: float
    equivariance: float = 0.0
    separation: float = 0.0
    separation_sigma: float = 0.06
    concentration: float = 0.0
    foreground: float = 0.0


def learning_rate_factor(schedule: str, step: int, steps: int, decay_every: int) -> float:
    """The multiplier of every learning rate at `step`: constant; step (x0.1 every `decay_every`);
    cosine (from 1 at step 0 to 0.01 at `steps`, half a cosine over the whole planned run)."""
    if schedule == "step" and decay_every:
        return 0.1 ** (step // decay_every)
    if schedule == "cosine":
        t = min(step / max(steps, 1), 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))
    return 1.0


def concentration_loss(heatmaps: torch.Tensor, beta: float) -> torch.Tensor:
    """Mean spatial variance (heatmap px^2) of softmax(beta * heatmap) per landmark (Zhang et al. 2018):
    a diffuse map pulls the soft-argmax towards the map's centre and makes the point imprecise."""
    probs = spatial_softmax(heatmaps, beta)
    mean = expected_location(probs)  # (B, K, 2) as (x, y)
    h, w = probs.shape[-2:]
    ys = torch.arange(h, device=probs.device, dtype=probs.dtype)
    xs = torch.arange(w, device=probs.device, dtype=probs.dtype)
    var_x = (probs.sum(-2) * (xs - mean[..., :1]).square()).sum(-1)
    var_y = (probs.sum(-1) * (ys - mean[..., 1:]).square()).sum(-1)
    return (var_x + var_y).mean()


def separation_loss(points: torch.Tensor, sigma: float) -> torch.Tensor:
    """Mean over ordered pairs i != j of exp(-|p_i - p_j|^2 / (2 sigma^2)); points (B, K, 2), any unit."""
    k = points.shape[1]
    if k < 2:
        return points.new_zeros(())
    d2 = (points[:, :, None] - points[:, None]).square().sum(-1)
    # the diagonal (d = 0) adds exactly k ones; no boolean mask, which would make a GPU wait
    return ((torch.exp(-d2 / (2 * sigma**2)).sum((1, 2)) - k) / (k * (k - 1))).mean()


def equivariance_loss(points: torch.Tensor, points_moved: torch.Tensor, transform: torch.Tensor,
                      stride: float) -> torch.Tensor:
    """||A p(y) - p(A y)||^2 in heatmap pixels, A (B,2,3) the known warp in input pixels."""
    moved = input_to_heatmap(apply_affine(heatmap_to_input(points, stride), transform), stride)
    return (moved - points_moved).square().sum(-1).mean()


def foreground_mask(images: torch.Tensor) -> torch.Tensor:
    """(B,3,S,S) in [0,1] -> (B,1,S,S): 1 on the object of an on-white photo, i.e. what the background
    measure does not count as background (`training.metrics.background_pixels`: near-white, and the
    padding bars of a wide photo's crop with the seam beside them, where a shoe point learned to sit)."""
    return (~background_pixels(images))[:, None].to(images.dtype)


def background_distance(heatmaps: torch.Tensor, foreground: torch.Tensor, beta: float,
                        share: float = 0.1) -> torch.Tensor:
    """Mean over landmarks of the expected distance (heatmap cells) from the nearest foreground cell,
    under softmax(beta * heatmap): 0 for a point on the object, larger the further into the white it
    sits. A cell is foreground when at least `share` of its pixels are (`foreground` (B,1,S,S), 0
    outside the image). Unlike the mass on background cells, its gradient does not vanish when a
    landmark's whole distribution is in the white: nearer cells always cost less. For on-white
    product photos, where a point in the white says nothing about the object."""
    probs = spatial_softmax(heatmaps, beta)
    b, _, h, w = probs.shape
    cells = F.adaptive_avg_pool2d(foreground.float(), (h, w)).reshape(b, h * w) >= share  # (B, hw)
    ys, xs = torch.meshgrid(torch.arange(h, device=probs.device), torch.arange(w, device=probs.device),
                            indexing="ij")
    grid = torch.stack((xs, ys), -1).reshape(h * w, 2).to(probs.dtype)
    pairwise = torch.cdist(grid, grid)  # (hw, hw) between cell centres
    far = pairwise.max() + 1
    # per image: each cell's distance to its nearest foreground cell (0 where there is no foreground)
    nearest = torch.where(cells[:, None, :], pairwise[None], far).amin(-1)  # (B, hw)
    nearest = torch.where(cells.any(-1, keepdim=True), nearest, torch.zeros_like(nearest))
    return (probs.reshape(b, -1, h * w) * nearest[:, None]).sum(-1).mean()


class AdaptationStep:
    """The detector and generator, their optimisers, and the category's images."""

    metric = None

    def __init__(self, name: str, detector: nn.Module, generator: nn.Module, loss_fn: nn.Module,
                 optimisers: Optimisers, lrs: dict[str, tuple[float, ...]], schedule: Callable[[int], float],
                 images: ImageBank, pairs: PairConfig, weights: LossWeights, precision: Precision,
                 device: torch.device, seed: int, pictures: Path | None, export: Callable[[Any], Path],
                 validation: Callable[[nn.Module], dict[str, float]] | None = None,
                 metric: tuple[str, str] | None = None) -> None:
        self.name, self.detector, self.generator, self.loss_fn = name, detector, generator, loss_fn
        self.optimisers, self.lrs, self.schedule = optimisers, lrs, schedule  # schedule: step -> lr factor
        self.validation, self.metric = validation, metric
        self.best_is = "min"  # errors: forward or consistency
        self.images, self.pair_config, self.weights = images, pairs, weights
        self.precision, self.device, self.seed, self.pictures = precision, device, seed, pictures
        self.export = export  # (harness.RunState) -> the adapter or network file
        # what the step calls: the modules, or compiled versions of them (`use_compiled`); checkpoints
        # and exports always read the modules themselves
        self.run_detector, self.run_generator, self.run_loss = detector, generator, loss_fn
        self.heat_size = detector.config.heatmap_size
        self.stride = detector.config.input_size / self.heat_size
        self._pair_generator = torch.Generator()
        self._last: tuple[torch.Tensor, ...] | None = None

    def use_compiled(self) -> str:
        """Run the detector, generator and perceptual loss through torch.compile; returns why or why not."""
        from training.devices import compiled

        self.run_detector, why = compiled(self.detector, self.device)
        self.run_generator, _ = compiled(self.generator, self.device)
        self.run_loss, _ = compiled(self.loss_fn, self.device)
        return why

    # ------------------------------------------------------------------------------ Task protocol
    def state(self) -> dict[str, Any]:
        opt = self.optimisers.state()
        return {"detector": self.detector.state_dict(), "generator": self.generator.state_dict(),
                "opt_det": opt["detector"], "opt_gen": opt["generator"], "loss": self.loss_fn.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.generator.load_state_dict(state["generator"])
        if "loss" in state:  # the perceptual term's running scales (checkpoints before them have none)
            self.loss_fn.load_state_dict(state["loss"], strict=False)
        self.optimisers.load_state({"detector": state["opt_det"], "generator": state["opt_gen"]})

    def steps_per_epoch(self) -> int:
        return self.images.steps_per_epoch()

    def batches(self, epoch: int):
        self._pair_generator.manual_seed(self.seed * 1_000_003 + epoch)
        return self.images.batches(epoch)

    def train_step(self, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        decay = self.schedule(step)
        for name, lrs in self.lrs.items():
            self.optimisers.set_lr(name, [lr * decay for lr in lrs])
        w = self.weights
        pairs = make_pairs(images, self.pair_config, self._pair_generator)
        with self.precision.autocast(self.device):
            points, heat = detect_points(self.run_detector, pairs.target, w.softargmax_beta)
            maps = render_gaussians(points, self.heat_size, w.bottleneck_sigma)
            recon = self.run_generator(pairs.deformed, maps)
            if w.equivariance:
                points_deformed, _ = detect_points(self.run_detector, pairs.deformed_rigid, w.softargmax_beta)
        # the perceptual network stays in fp32: in bf16 it was no faster (docs/training_speed.md)
        reconstruction = self.run_loss(recon.float(), pairs.target)
        loss = reconstruction
        equivariance = torch.zeros((), device=self.device)
        if w.equivariance:
            equivariance = equivariance_loss(points, points_deformed, pairs.transform, self.stride)
            loss = loss + w.equivariance * equivariance
        separation = separation_loss(points / self.heat_size, w.separation_sigma)
        if w.separation:
            loss = loss + w.separation * separation
        concentration = concentration_loss(heat, w.softargmax_beta)
        if w.concentration:
            loss = loss + w.concentration * concentration
        record = {}
        if w.foreground:
            # the source's foreground moved as y was (zero, i.e. background, outside the image)
            foreground = warp_images(foreground_mask(images), pairs.target_transform)
            record["background_distance"] = background_distance(heat, foreground, w.softargmax_beta)
            loss = loss + w.foreground * record["background_distance"]
        self.optimisers.step(loss)
        self._last = (pairs.target.detach(), pairs.deformed.detach(), recon.detach(), points.detach())
        # spread: of the landmarks in heatmap px; near zero means they collapsed onto one place
        return {"loss": loss, "reconstruction": reconstruction, "equivariance": equivariance,
                "separation": separation, "concentration": concentration.detach(),
                "spread": points.detach().std(dim=1).mean(), "lr_factor": decay, **record}

    def validate(self, step: int) -> dict[str, float]:
        """Scores on held-out images (`training.validation`, if given), and a picture of the last batch
        (y, y', reconstruction, landmarks)."""
        metrics = self.validation(self.detector) if self.validation is not None else {}
        if self.pictures is not None and self._last is not None:
            from training.plots import save_pair_samples

            target, deformed, recon, points = self._last
            save_pair_samples(self.pictures, target, deformed, recon.float(),
                              heatmap_to_input(points, self.stride).cpu().numpy())
        return metrics
