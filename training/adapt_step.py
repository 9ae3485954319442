"""One step of `landmarks adapt` as a `harness.Task`: pairs, landmarks, reconstruction, losses.

    y, y'  = two random warps of an image                       (training.pairs, on the device)
    points = softargmax(detector(y))        K x 2, beta = 10    (landmarks.heatmaps)
    maps   = Gaussians at points            sigma = sqrt(0.5)
    y_hat  = generator(y', maps)                                (training.generator)
    loss   = pixel + perceptual(y_hat, y)                       (training.perceptual)
           [+ separation(points) + equivariance(points, points of y')]   cpu preset, RESULTS.md
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landmarks.geometry import apply_affine
from landmarks.heatmaps import heatmap_to_input, input_to_heatmap, render_gaussians
from training.detectors import detect_points
from training.devices import Precision
from training.image_bank import ImageBank
from training.optimisers import Optimisers
from training.pairs import PairConfig, make_pairs

__all__ = ["AdaptationStep", "LossWeights", "equivariance_loss", "separation_loss"]


@dataclass(frozen=True)
class LossWeights:
    softargmax_beta: float
    bottleneck_sigma: float
    equivariance: float = 0.0
    separation: float = 0.0
    separation_sigma: float = 0.06


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


class AdaptationStep:
    """The detector and generator, their optimisers, and the category's images."""

    metric = None

    def __init__(self, name: str, detector: nn.Module, generator: nn.Module, loss_fn: nn.Module,
                 optimisers: Optimisers, lrs: dict[str, tuple[float, ...]], lr_decay_every: int,
                 images: ImageBank, pairs: PairConfig, weights: LossWeights, precision: Precision,
                 device: torch.device, seed: int, pictures: Path | None, export: Callable[[Any], Path]) -> None:
        self.name, self.detector, self.generator, self.loss_fn = name, detector, generator, loss_fn
        self.optimisers, self.lrs, self.lr_decay_every = optimisers, lrs, lr_decay_every
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
                "opt_det": opt["detector"], "opt_gen": opt["generator"]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.detector.load_state_dict(state["detector"])
        self.generator.load_state_dict(state["generator"])
        self.optimisers.load_state({"detector": state["opt_det"], "generator": state["opt_gen"]})

    def steps_per_epoch(self) -> int:
        return self.images.steps_per_epoch()

    def batches(self, epoch: int):
        self._pair_generator.manual_seed(self.seed * 1_000_003 + epoch)
        return self.images.batches(epoch)

    def train_step(self, images: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        decay = 0.1 ** (step // self.lr_decay_every) if self.lr_decay_every else 1.0
        for name, lrs in self.lrs.items():
            self.optimisers.set_lr(name, [lr * decay for lr in lrs])
        w = self.weights
        pairs = make_pairs(images, self.pair_config, self._pair_generator)
        with self.precision.autocast(self.device):
            points, _ = detect_points(self.run_detector, pairs.target, w.softargmax_beta)
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
        self.optimisers.step(loss)
        self._last = (pairs.target.detach(), pairs.deformed.detach(), recon.detach(), points.detach())
        # spread: of the landmarks in heatmap px; near zero means they collapsed onto one place
        return {"loss": loss, "reconstruction": reconstruction, "equivariance": equivariance,
                "separation": separation, "spread": points.detach().std(dim=1).mean()}

    def validate(self, step: int) -> dict[str, float]:
        """No labels to score: a picture of the last batch (y, y', reconstruction, landmarks)."""
        if self.pictures is not None and self._last is not None:
            from training.plots import save_pair_samples

            target, deformed, recon, points = self._last
            save_pair_samples(self.pictures, target, deformed, recon.float(),
                              heatmap_to_input(points, self.stride).cpu().numpy())
        return {}
