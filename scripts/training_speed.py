"""Training speed on this machine, measured side by side (docs/training_speed.md has the results).

    # the core network: train steps and inference, both memory layouts (+ the training data loader)
    python scripts/training_speed.py core                      # cpu and paper archs
    python scripts/training_speed.py core --arch w192 --sizes 128 --batches 16 --iters 5 --compile
    python scripts/training_speed.py core --arch cpu --skip-train --sizes 64,128 --batches 1,8,16
    python scripts/training_speed.py core --data lspet:../shared/data/lspet
    # a `landmarks adapt` preset (--preset, default cpu): the adaptation step alone, variants alternated
    python scripts/training_speed.py step --core adapters/core.safetensors [--rounds 5 --steps 8]
    # the whole command (data included), this tree against another (e.g. the previous main,
    # `git archive <commit> | tar -x -C /tmp/base`), alternated run by run
    python scripts/training_speed.py command --before /tmp/base --images mtfl:../shared/data/mtfl/new_training.txt

core: one training step (forward, heatmap MSE, backward, Adam) on random images, batch 16, in fp32
NCHW and NHWC, in bf16 NHWC (what `train-core` runs where the CPU has bf16) and, with --compile, that
under torch.compile; and inference in eval mode under `torch.inference_mode`, per-image milliseconds
per batch size, in the default (NCHW) and channels_last (NHWC) memory formats; with --data, the training loader's
rate (decode, augment, crop, heatmaps) in one process. Rates are medians over rounds; alternating
makes both sides see the same load on a shared machine. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from landmarks.adapter_io import load_core
from landmarks.hourglass import ARCHITECTURES, LandmarkHourglass
from training.adapt import PRESETS, AdaptConfig
from training.adapt_step import AdaptationStep, LossWeights
from training.detectors import build_detector
from training.devices import Precision, Processes
from training.generator import ConditionalGenerator, GeneratorConfig
from training.optimisers import ClipGroup, Optimisers
from training.perceptual import MOBILENET_LAYERS, MobileNetV2Features, PerceptualLoss

ROOT = Path(__file__).resolve().parents[1]

# name -> changes to the preset's step (everything else as `landmarks adapt --preset PRESET`)
VARIANTS: dict[str, dict] = {
    "fp32": dict(bf16=False),
    "bf16 + perceptual in bf16": dict(bf16=True, perceptual_bf16=True),
    "bf16": dict(bf16=True),
    "bf16 + channels_last": dict(bf16=True, channels_last=True),
    "bf16 + compile": dict(bf16=True, compile=True),
    # these two change the objective (a quality check would have to come with them)
    "bf16 + perceptual to block 5": dict(bf16=True, perceptual_layers=(0, 2, 5)),
    "bf16 + generator 16 channels": dict(bf16=True, generator_channels=16),
}


def _time(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def train_step_rate(arch: str, channels_last: bool, batch: int, iters: int, bf16: bool = False,
                    compile_: bool = False) -> float:
    torch.manual_seed(0)
    model = LandmarkHourglass(ARCHITECTURES[arch](14)).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    size = model.config.input_size
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=fmt)
    y = torch.rand(batch, 14, size // 4, size // 4)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    run = torch.compile(model) if compile_ else model  # compiled in the warm-up steps

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = run(x)
        loss = (out.float() - y).square().mean()
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


def core_rates(args) -> None:
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
        # the last two: what `train-core` runs where the CPU has bf16 (NHWC under autocast), and that compiled
        columns = {"NCHW": {}, "NHWC": dict(channels_last=True),
                   "NHWC bf16": dict(channels_last=True, bf16=True),
                   "+ compile": dict(channels_last=True, bf16=True, compile_=True)}
        if not args.compile:
            del columns["+ compile"]
        print("\ntraining step, batch 16 (img/s)")
        print(f"{'arch':>6}" + "".join(f"{c:>11}" for c in columns))
        for arch in archs:
            rates = [train_step_rate(arch, batch=16, iters=args.iters, **{"channels_last": False, **kw})
                     for kw in columns.values()]
            print(f"{arch:>6}" + "".join(f"{r:11.1f}" for r in rates), flush=True)
    print("\ninference (ms per image)")
    print(f"{'arch':>6} {'size':>5} {'batch':>6} {'NCHW':>8} {'NHWC':>8}")
    for arch in archs:
        for size in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                ms = [inference_ms(arch, cl, size, batch, args.iters) for cl in (False, True)]
                print(f"{arch:>6} {size:5d} {batch:6d} {ms[0]:8.2f} {ms[1]:8.2f}")



class _Images:
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def batches(self, epoch: int):
        while True:
            yield self.images


def _under_autocast(loss_fn):
    def run(pred, target):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return loss_fn(pred, target).float()

    return run


def build_step(core, variant: dict, batch: int, preset: str = "cpu") -> tuple[AdaptationStep, torch.Tensor]:
    cfg = AdaptConfig(**{**PRESETS[preset], "images": "x"})
    torch.manual_seed(0)
    det = build_detector("proposed", core.build(), cfg.num_landmarks, "all", 0, cfg.image_size, "core").train()
    gen = ConditionalGenerator(GeneratorConfig(cfg.num_landmarks, variant.get("generator_channels", 32),
                                               variant.get("generator_blocks", 6))).train()
    features = MobileNetV2Features(layers=variant.get("perceptual_layers", MOBILENET_LAYERS))
    loss_fn = PerceptualLoss(features)
    if variant.get("channels_last"):
        for m in (det, gen, loss_fn):
            m.to(memory_format=torch.channels_last)
    params = [p for p in det.parameters() if p.requires_grad]
    head = {id(p) for p in det.head.parameters()}
    precision = Precision(torch.bfloat16 if variant.get("bf16") else None, "")
    opts = Optimisers({"detector": torch.optim.Adam([{"params": [p for p in params if id(p) not in head]},
                                                     {"params": [p for p in params if id(p) in head]}]),
                       "generator": torch.optim.Adam(gen.parameters())}, precision, Processes(),
                      torch.device("cpu"), clip=[ClipGroup(params, 1.0), ClipGroup(list(gen.parameters()), 1.0)])
    images = torch.rand(batch, 3, cfg.image_size, cfg.image_size)
    if variant.get("channels_last"):
        images = images.contiguous(memory_format=torch.channels_last)
    task = AdaptationStep("speed", det, gen, loss_fn, opts, {"detector": (1e-3, 1e-3), "generator": (1e-3,)},
                          lambda step: 1.0,  # a constant rate: the schedule does not change a step's cost
                          _Images(images), cfg.pairs(),
                          LossWeights(cfg.softargmax_beta, cfg.bottleneck_sigma, cfg.equivariance_weight,
                                      cfg.separation_weight, cfg.separation_sigma),
                          precision, torch.device("cpu"), 0, None, export=None)
    if variant.get("perceptual_bf16"):  # the perceptual loss under the step's autocast (not kept)
        task.run_loss = _under_autocast(loss_fn)
    if variant.get("compile"):
        print(f"compile: {task.use_compiled()}", flush=True)
    return task, images


def step_rates(args) -> None:
    core = load_core(args.core)
    names = args.variants.split(",") if args.variants else list(VARIANTS)
    tasks = {}
    for name in names:
        task, _ = build_step(core, VARIANTS[name], args.batch_size, args.preset)
        batches = task.batches(0)
        for _ in range(args.warmup):  # compile and oneDNN kernel selection happen here
            task.train_step(next(batches), 0)
        tasks[name] = (task, batches)
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            task, batches = tasks[name]
            start = time.perf_counter()
            for _ in range(args.steps):
                float(task.train_step(next(batches), 0)["loss"].detach())
            rates[name].append(args.steps * args.batch_size / (time.perf_counter() - start))
        print(f"round {r + 1}: " + "  ".join(f"{n} {rates[n][-1]:.1f}" for n in names), flush=True)
    _summary(rates)


def _summary(rates: dict[str, list[float]]) -> None:
    """Median rate of each, and the median over rounds of its ratio to the first (same load, same round)."""
    first = next(iter(rates))
    print(json.dumps({n: {"img_per_s": round(statistics.median(v), 2),
                          f"x {first}": round(statistics.median(a / b for a, b in zip(v, rates[first])), 2)}
                      for n, v in rates.items()}))


def _command_rate(tree: Path, images: str, core: str, steps: int, skip: int, preset: str, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        # (-c, not -m landmarks.cli: older trees' cli.py does not run as __main__)
        cmd = [sys.executable, "-c", "import sys; from landmarks.cli import main; sys.exit(main())", "adapt", images, "--preset", preset, "--core", core,
               "--steps", str(steps), "--out", out, "--picture-every", "100000", "--checkpoint-every", "100000",
               *extra]
        env = {**os.environ, "PYTHONPATH": str(tree)}
        done = subprocess.run(cmd, cwd=tree, env=env, check=False, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{tree}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        history = [json.loads(line) for line in (Path(out) / "history.jsonl").read_text().splitlines()]
    t = {h["step"]: h["time"] for h in history}
    return (steps - skip) * 16 / (t[steps] - t[skip])


def command_rates(args) -> None:
    core = str(Path(args.core).resolve())
    sides = {"before": (Path(args.before).resolve(), args.before_preset or args.preset, args.before_args.split()),
             "after": (ROOT, args.preset, args.after_args.split())}
    rates: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.rounds):
        for name, (tree, preset, extra) in sides.items():
            rates[name].append(_command_rate(tree, args.images, core, args.steps, args.skip, preset, extra))
        print(f"round {r + 1}: " + "  ".join(f"{n} {rates[n][-1]:.1f}" for n in rates), flush=True)
    _summary(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    core = sub.add_parser("core", help="the core network's train steps and inference")
    core.add_argument("--arch", default="cpu,paper", help="comma-separated architectures (default %(default)s)")
    core.add_argument("--sizes", default="128", help="inference input sizes (default %(default)s)")
    core.add_argument("--batches", default="1,4,16", help="inference batch sizes (default %(default)s)")
    core.add_argument("--iters", type=int, default=10)
    core.add_argument("--skip-train", action="store_true")
    core.add_argument("--compile", action="store_true", help="also the bf16 NHWC step under torch.compile "
                                                            "(minutes of compiling per architecture)")
    core.add_argument("--data", default="", help="also time the training loader on this dataset, e.g. lspet:PATH")
    core.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    step = sub.add_parser("step", help="the adaptation step alone, variants alternated")
    step.add_argument("--variants", default="", help=f"comma-separated, from {list(VARIANTS)}")
    step.add_argument("--warmup", type=int, default=3)
    command = sub.add_parser("command", help="`landmarks adapt --preset PRESET` of two trees, alternated")
    command.add_argument("--before", required=True, help="the other tree (e.g. the previous main)")
    command.add_argument("--images", required=True, help="FORMAT:PATH of real images")
    command.add_argument("--skip", type=int, default=10, help="steps left out of the rate (warm-up)")
    command.add_argument("--before-args", default="", help="extra flags for the before side")
    command.add_argument("--before-preset", default="",
                         help="the before side's name for the same recipe, where it differs (default: --preset; "
                              "trees before the 128 px default call the 64 px recipe cpu, later ones quick)")
    command.add_argument("--after-args", default="", help="extra flags for the after side")
    for p in (step, command):
        p.add_argument("--preset", default="cpu", help="the `landmarks adapt` preset whose step is timed "
                                                       "(default %(default)s; quick: the 64 px recipe)")
        p.add_argument("--core", default="adapters/core.safetensors")
        p.add_argument("--rounds", type=int, default=3)
        p.add_argument("--steps", type=int, default=8)
        p.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    {"core": core_rates, "step": step_rates, "command": command_rates}[args.what](args)


if __name__ == "__main__":
    main()
