"""Training pairs (y, y') for conditional image generation, made on the fly from one image.

y (the target) and y' (what the generator sees) are two random warps of the same image. The
landmarks come from y; the generator must move the parts of y' to where y's landmarks say.
If the two warps are nearly the same the generator copies y' and ignores the landmarks, which
is why the official code rotates y by N(0, 30 deg) and y' by N(0, 15 deg). A thin-plate-spline
warp of y' (as in IMM) adds non-rigid deformation the generator cannot undo without landmarks.

Random numbers come from a CPU generator (a few per image) and the warps run where the images are,
so a seed gives the same pairs on a CPU and on a GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from landmarks.geometry import invert_affine, similarity_matrix, warp_images

__all__ = ["PairConfig", "Pairs", "compose", "make_pairs", "random_similarities", "tps_warp"]


@dataclass(frozen=True)
class PairConfig:
    target_rotation_sd: float = 30.0  # y, degrees (official code)
    deformed_rotation_sd: float = 15.0  # y'
    max_rotation: float = 40.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    shift_sd: float = 0.05  # fraction of the image size
    tps_sd: float = 0.0  # control-point jitter of y' as a fraction of the size; 0 = no TPS

    def __post_init__(self) -> None:
        if min(self.target_rotation_sd, self.deformed_rotation_sd, self.shift_sd, self.tps_sd) < 0:
            raise ValueError("pair deformation strengths must be >= 0")
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))


def random_similarities(batch: int, size: int, rotation_sd: float, cfg: PairConfig,
                        generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, 2, 3) random similarities about the image centre (pixels), on `device`."""
    angle = (torch.randn(batch, generator=generator) * rotation_sd).clamp(-cfg.max_rotation, cfg.max_rotation)
    lo, hi = cfg.scale_range
    scale = lo + (hi - lo) * torch.rand(batch, generator=generator)
    shift = (torch.randn(batch, 2, generator=generator) * cfg.shift_sd).clamp(-2 * cfg.shift_sd, 2 * cfg.shift_sd)
    return similarity_matrix(angle, scale, shift * size, center=(size - 1) / 2).to(device)


def _tps_kernel(d2: torch.Tensor) -> torch.Tensor:
    return d2 * torch.log(d2.clamp(min=1e-12))  # U(r) = r^2 log r^2 (up to a constant factor)


@functools.lru_cache(maxsize=8)
def _tps_plan(h: int, w: int, grid_points: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """What every TPS warp of an h x w image shares: the control points, and the spline basis at each
    output pixel times the inverse of the spline's system (computed once per size, on the device)."""
    f64 = dict(dtype=torch.float64, device=device)
    lin = torch.linspace(-1, 1, grid_points, **f64)
    ctrl = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), -1).reshape(-1, 2)  # (n, 2)
    n = ctrl.shape[0]
    p = torch.cat((torch.ones(n, 1, **f64), ctrl), 1)
    system = torch.zeros(n + 3, n + 3, **f64)
    system[:n, :n], system[:n, n:], system[n:, :n] = _tps_kernel(torch.cdist(ctrl, ctrl) ** 2), p, p.T
    ys, xs = torch.meshgrid(torch.linspace(-1 + 1 / h, 1 - 1 / h, h, **f64),
                            torch.linspace(-1 + 1 / w, 1 - 1 / w, w, **f64), indexing="ij")
    pts = torch.stack((xs, ys), -1).reshape(-1, 2)  # (HW, 2), pixel centres in normalised coords
    basis = torch.cat((_tps_kernel(torch.cdist(pts, ctrl) ** 2), torch.ones(len(pts), 1, **f64), pts), 1)
    return ctrl.float(), (basis @ torch.linalg.inv(system)).float()  # grid = that @ (sample points; 0)


def tps_warp(images: torch.Tensor, sd: float, grid_points: int = 5,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Warp each image by a random thin-plate spline: a grid_points^2 lattice of control points,
    each moved by N(0, sd) (in units of the normalised [-1, 1] image), interpolated smoothly."""
    b, _, h, w = images.shape
    ctrl, weights = _tps_plan(h, w, grid_points, images.device)
    jitter = (torch.randn(b, len(ctrl), 2, generator=generator) * (2 * sd)).to(images.device)
    # the spline maps output control points (ctrl) to input sample points (ctrl + jitter)
    rhs = torch.cat((ctrl + jitter, ctrl.new_zeros(b, 3, 2)), 1)  # (B, n+3, 2)
    grid = (weights @ rhs).reshape(b, h, w, 2).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@dataclass
class Pairs:
    target: torch.Tensor  # y
    deformed: torch.Tensor  # y' as the generator sees it (similarity, then TPS if enabled)
    deformed_rigid: torch.Tensor  # y' before TPS: exactly `transform` of y
    transform: torch.Tensor  # (B, 2, 3): pixels of y -> pixels of deformed_rigid
    target_transform: torch.Tensor  # (B, 2, 3): pixels of the source image -> pixels of y


def compose(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """(B,2,3) affine maps: outer after inner."""
    return torch.cat((outer[:, :, :2] @ inner[:, :, :2], outer[:, :, :2] @ inner[:, :, 2:] + outer[:, :, 2:]), -1)


def make_pairs(images: torch.Tensor, cfg: PairConfig, generator: torch.Generator | None = None) -> Pairs:
    """(B,3,S,S) images in [0,1] -> y and y', two independently warped versions, and how they relate."""
    b, _, s, _ = images.shape
    a_target = random_similarities(b, s, cfg.target_rotation_sd, cfg, generator, images.device)
    a_deformed = random_similarities(b, s, cfg.deformed_rotation_sd, cfg, generator, images.device)
    target = warp_images(images, a_target)
    rigid = warp_images(images, a_deformed)
    deformed = tps_warp(rigid, cfg.tps_sd, generator=generator) if cfg.tps_sd > 0 else rigid
    return Pairs(target, deformed, rigid, compose(a_deformed, invert_affine(a_target)), a_target)
