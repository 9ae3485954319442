"""Images per second of one adaptation step (detector + generator + perceptual loss) for a few
settings, on random images, so a schedule can be planned before a long run.

    python scripts/adapt_speed.py --core adapters/core.safetensors [--steps 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from landmarks.adapter_io import load_core
from landmarks.heatmaps import render_gaussians
from training.detectors import build_detector, detect_points
from training.generator import ConditionalGenerator, GeneratorConfig
from training.pairs import PairConfig, make_pairs
from training.perceptual import PerceptualLoss, load_perceptual

SETTINGS = [  # (input size, generator channels, generator blocks, equivariance)
    (128, 32, 6, False),
    (128, 16, 3, False),
    (64, 32, 6, False),
    (64, 32, 6, True),
    (64, 16, 3, True),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--core", default="adapters/core.safetensors")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    core = load_core(args.core)
    loss_fn = PerceptualLoss(load_perceptual("mobilenet_v2"))
    print(f"{'size':>5} {'gen':>7} {'equiv':>6} {'img/s':>7}")
    for size, channels, blocks, equivariance in SETTINGS:
        det = build_detector("proposed", core.build(), 10, "all", 0, size).train()
        gen = ConditionalGenerator(GeneratorConfig(10, channels, blocks)).train()
        params = [p for p in det.parameters() if p.requires_grad] + list(gen.parameters())
        opt = torch.optim.Adam(params, 1e-4)
        images = torch.rand(args.batch_size, 3, size, size)
        for i in range(args.steps + 1):
            if i == 1:
                start = time.perf_counter()
            pairs = make_pairs(images, PairConfig(tps_sd=0.05))
            points, _ = detect_points(det, pairs.target, 10.0)
            recon = gen(pairs.deformed, render_gaussians(points, det.config.heatmap_size))
            loss = loss_fn(recon, pairs.target)
            if equivariance:
                loss = loss + detect_points(det, pairs.deformed_rigid, 10.0)[0].square().mean() * 0
            opt.zero_grad()
            loss.backward()
            opt.step()
        rate = args.steps * args.batch_size / (time.perf_counter() - start)
        print(f"{size:>5} {channels:>3}x{blocks:<3} {equivariance!s:>6} {rate:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
