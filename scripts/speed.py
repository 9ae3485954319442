"""Throughput of the core network on this machine, side by side in one run, so presets and
serving settings are chosen from measurements rather than guesses.

    python scripts/speed.py                      # train steps + inference, cpu and paper archs
    python scripts/speed.py --arch cpu --skip-train --sizes 64,128 --batches 1,8,16
    python scripts/speed.py --data lspet:../shared/data/lspet   # + the training data loader

Training: one fp32 step (forward, heatmap MSE, backward, Adam) on random images, batch 16.
Inference: eval mode under `torch.inference_mode`, per-image milliseconds per batch size.
Both in the default (NCHW) and channels_last (NHWC) memory formats. With --data, also the
training loader's rate (decode, augment, crop, heatmaps) in one process, to check that loading
is a small part of a step. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch

from landmarks.hourglass import ARCHITECTURES, LandmarkHourglass


def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def train_step_rate(arch: str, channels_last: bool, batch: int, iters: int) -> float:
    torch.manual_seed(0)
    model = LandmarkHourglass(ARCHITECTURES[arch](14)).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    size = model.config.input_size
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.rand(batch, 14, size // 4, size // 4)
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        loss = (model(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return batch / _time(step, 2, iters)


def inference_ms(arch: str, channels_last: bool, size: int, batch: int, iters: int) -> float:
    torch.manual_seed(0)
    model = LandmarkHourglass(ARCHITECTURES[arch](14).replace(input_size=size)).eval()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)

    def forward():
        with torch.inference_mode():
            model(x)

    return _time(forward, 3, iters) / batch * 1e3


def loader_rate(spec: str, samples: int) -> float:
    from training.augment import AugmentConfig
    from training.core_data import PoseCrops
    from training.datasets import open_dataset

    crops = PoseCrops(open_dataset(spec), 128, AugmentConfig())
    crops[0]
    start = time.perf_counter()
    for i in range(samples):
        crops[i % len(crops)]
    return samples / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="cpu,paper", help="comma-separated architectures (default %(default)s)")
    parser.add_argument("--sizes", default="128", help="inference input sizes (default %(default)s)")
    parser.add_argument("--batches", default="1,4,16", help="inference batch sizes (default %(default)s)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--data", default="", help="also time the training loader on this dataset, e.g. lspet:PATH")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    archs = args.arch.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.data:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # what a DataLoader worker gets
        print(f"\ntraining loader, one process: {loader_rate(args.data, 300):.0f} samples/s")
        torch.set_num_threads(threads)
    if not args.skip_train:
        print("\ntraining step, batch 16 (img/s)")
        print(f"{'arch':>6} {'NCHW':>8} {'NHWC':>8}")
        for arch in archs:
            rates = [train_step_rate(arch, cl, 16, args.iters) for cl in (False, True)]
            print(f"{arch:>6} {rates[0]:8.1f} {rates[1]:8.1f}")
    print("\ninference (ms per image)")
    print(f"{'arch':>6} {'size':>5} {'batch':>6} {'NCHW':>8} {'NHWC':>8}")
    for arch in archs:
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                ms = [inference_ms(arch, cl, size, batch, args.iters) for cl in (False, True)]
                print(f"{arch:>6} {size:5d} {batch:6d} {ms[0]:8.2f} {ms[1]:8.2f}")


if __name__ == "__main__":
    main()
