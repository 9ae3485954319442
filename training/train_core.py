"""`landmarks train-core`: supervised heatmap regression of the core on human pose.

Wiring only: data (training.core_data), network (landmarks.hourglass), metric (training.metrics),
loop (training.harness). Outputs in --out: checkpoint.pt (resume), config.json (resolved),
history.jsonl, curve.png, core.safetensors (fp16, with metadata) and val_overlay.png. The same code
runs on a CPU, a GPU (`--device cuda`) or several (`torchrun --nproc_per_node N`).
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from landmarks.adapter_io import load_core, save_core
from landmarks.hourglass import ARCHITECTURES, LandmarkHourglass
from training.augment import AugmentConfig
from training.config_args import add_config_arguments, invocation, values_from_args
from training.core_data import PoseCrops, pose_heatmaps
from training.datasets import open_dataset
from training.devices import BF16_CHOICES, Precision, Processes, choose_precision, start_processes
from training.evaluate_core import predict_core
from training.harness import LoopSettings, RunState, TrainingRun
from training.metrics import pck
from training.optimisers import Optimisers
from training.plots import overlay_grid
from training.sampling import EpochSampler

__all__ = ["PRESETS", "CoreTrainConfig", "add_arguments", "main", "train_core"]


@dataclass(frozen=True)
class CoreTrainConfig:
    data: str = "lspet:../shared/data/lspet"
    train_split: str = ":8500"
    val_split: str = "8500:9000"  # monitoring only; LSPET 9000: stays the untouched test split
    out: str = "runs/core"
    arch: str = "cpu"  # paper (FAN, 6.2M) | w192 (3/4 width, 3.5M) | cpu (half width, 1.6M) | tiny (tests)
    steps: int = 20_000
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_steps: int = 300
    weight_decay: float = 0.0
    sigma: float = 1.5  # target Gaussian exp(-d^2 / sigma^2) on the 32 x 32 grid
    # MSE weight 1 + foreground_weight * target: errors near the joints count more, so the network
    # leaves the "all zeros" solution (whose loss is ~97% of the initial plateau here) sooner.
    foreground_weight: float = 0.0
    rotation_sd: float = 15.0
    colour_jitter: float = 0.0  # per-channel gain in [1 - c, 1 + c]; 0 keeps the shipped core's recipe
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process's own GPU)
    bf16: str = "auto"  # auto: where the device runs it natively (GPU, AVX-512-BF16/AMX CPU) | true | false
    workers: int = 2  # loader processes: decode, crop and augment (the heatmaps are drawn on the device)
    # NHWC activations: oneDNN's convolutions are ~18% faster this way on a 2-core AVX2 CPU
    # (measured with batch 16 at 128 px); results are the same up to float rounding.
    channels_last: bool = True
    val_every: int = 1000
    checkpoint_every: int = 1000  # 0 = only at the end (as `landmarks adapt`); the presets: at every validation
    val_size: int = 500
    seed: int = 0
    max_minutes: float = 0.0  # stop (checkpoint + export) after this long; 0 = run the schedule
    init_from: str = ""  # start from a core file's weights (e.g. adapters/core.safetensors) instead of random
    license: str = ""  # the images' terms of use for the file's metadata; "" = the dataset reader's

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if self.bf16 not in BF16_CHOICES:
            raise ValueError(f"bf16 must be one of {BF16_CHOICES}, got {self.bf16!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")


PRESETS: dict[str, dict] = {
    # What fits a 2-core CPU in under an hour and a half: the half-width `cpu` architecture, channels_last,
    # one loader worker; ~28-30 img/s in fp32 on AVX2, 60.9 img/s in bf16 on AVX-512 BF16.
    "cpu": dict(arch="cpu", steps=8_500, batch_size=16, lr=1e-3, foreground_weight=10.0, workers=1, val_every=500,
                checkpoint_every=500, val_size=300),
    # The paper's setting for a GPU: FAN at full width on MPII, larger batch, longer schedule.
    "paper": dict(arch="paper", data="mpii:data/mpii/mpii_annotations.json", train_split="", val_split="",
                  steps=150_000, batch_size=24, lr=2.5e-4, workers=8, val_every=5000, checkpoint_every=5000),
    # Seconds on synthetic data (tests and smoke runs).
    "smoke": dict(arch="tiny", steps=3, batch_size=2, workers=0, val_every=2, checkpoint_every=2, val_size=4,
                  warmup_steps=1),
}


def _lr_at(cfg: CoreTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class CoreStep:
    """`harness.Task` of train-core: weighted heatmap MSE on augmented person crops, PCK on validation."""

    metric = ("val_pck", "val PCK@0.2 (%)")
    best_is = "max"

    def __init__(self, cfg: CoreTrainConfig, model: LandmarkHourglass, optimisers: Optimisers,
                 train_data: PoseCrops, val_data: PoseCrops, device: torch.device, precision: Precision,
                 processes: Processes, out: Path, export) -> None:
        self.cfg, self.model, self.optimisers, self.device, self.precision = cfg, model, optimisers, device, precision
        self.out, self.export = out, export
        self.name = f"core ({cfg.arch}, {cfg.data.split(':')[0]})"
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.sampler = EpochSampler(len(train_data), cfg.seed, processes)
        cuda = device.type == "cuda"
        self.loader = torch.utils.data.DataLoader(
            train_data, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.workers, drop_last=True,
            pin_memory=cuda, persistent_workers=cfg.workers > 0)
        self.val_loader = torch.utils.data.DataLoader(val_data, batch_size=32, num_workers=min(cfg.workers, 1),
                                                      pin_memory=cuda)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimisers.state()["model"]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimisers.load_state({"model": state["optimizer"]})

    def steps_per_epoch(self) -> int:
        return len(self.sampler) // self.cfg.batch_size

    def batches(self, epoch: int):
        self.sampler.set_epoch(epoch)
        return self.loader

    def train_step(self, batch, step: int) -> dict[str, torch.Tensor | float]:
        images, weights, points = (t.to(self.device, non_blocking=True) for t in batch)
        images = images.contiguous(memory_format=self.memory_format)
        lr = _lr_at(self.cfg, step)
        self.optimisers.set_lr("model", [lr])
        heat = pose_heatmaps(points, weights, self.model.config.input_size, self.cfg.sigma)
        with self.precision.autocast(self.device):
            pred = self.model(images)
        err = F.mse_loss(pred.float(), heat, reduction="none")
        if self.cfg.foreground_weight:
            err = err * (1 + self.cfg.foreground_weight * heat)
        loss = (err.mean((2, 3)) * weights).sum() / weights.sum().clamp(min=1)
        self.optimisers.step(loss)
        return {"loss": loss, "lr": lr}

    def validate(self, step: int) -> dict[str, float]:
        pred, truth, vis, images = predict_core(self.model, self.val_loader, self.device, self.precision)
        _, mean = pck(pred, truth, vis)
        overlay_grid(images[:8], pred[:8], self.out / "val_overlay.png", truth=truth[:8], cols=4)
        self.model.train()
        return {"val_pck": mean}


def train_core(cfg: CoreTrainConfig, resume: bool = False, command: str = "") -> Path:
    """Train (or resume) a core; returns the path of the exported core.safetensors."""
    processes, device = start_processes(cfg.device)
    try:
        return _train_core(cfg, resume, command, processes, device)
    finally:
        processes.close()


def _train_core(cfg: CoreTrainConfig, resume: bool, command: str, processes: Processes,
                device: torch.device) -> Path:
    out = Path(cfg.out)
    run = TrainingRun(out, LoopSettings(cfg.steps, cfg.val_every, cfg.checkpoint_every,
                                        cfg.max_minutes, cfg.seed), processes, device, cfg, command, cfg.batch_size)
    precision = choose_precision(device, cfg.bf16)
    run.log(f"device {device}, {precision.reason}; {processes.world} process(es)")
    full = open_dataset(cfg.data)
    run.log(f"{cfg.data}: {full.report}")
    train_set, val_set = full.subset(cfg.train_split), full.subset(cfg.val_split)
    if cfg.val_size and len(val_set) > cfg.val_size:
        val_set = val_set.subset(f":{cfg.val_size}")
    model_cfg = ARCHITECTURES[cfg.arch](len(full.landmark_names))
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = LandmarkHourglass(model_cfg).to(device, memory_format=memory_format)
    optimisers = Optimisers({"model": torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)},
                            precision, processes, device)
    license_text = cfg.license or full.license or "Trained on user-supplied pose data; check its licence"

    def export(state: RunState) -> Path:
        last_pck = next((h["val_pck"] for h in reversed(state.history) if "val_pck" in h), None)
        path = out / "core.safetensors"
        save_core(path, model, full.landmark_names, command=command, training_seconds=f"{state.elapsed:.0f}",
                  training_steps=str(state.step), dataset=cfg.data, license=license_text,
                  metrics={"val_pck@0.2": last_pck, "val_split": cfg.val_split}, device=device.type,
                  precision=precision.name, processes=str(processes.world), **state.provenance)
        return path

    size = model_cfg.input_size
    augment = AugmentConfig(rotation_sd=cfg.rotation_sd, colour=cfg.colour_jitter)
    task = CoreStep(cfg, model, optimisers, PoseCrops(train_set, size, augment, cfg.seed),
                    PoseCrops(val_set, size), device, precision, processes, out, export)
    resumed = run.restore(task, resume)
    if cfg.init_from and not resumed:
        init = load_core(cfg.init_from)  # safetensors only, validated
        if init.config != model_cfg:
            raise ValueError(f"--init-from {cfg.init_from} has another architecture: {init.config} vs {model_cfg}")
        model.load_state_dict(init.float_state(), strict=False)  # BN step counters are not stored
        # kept in the exported file: --init-from names a path whose contents may change later
        run.state.provenance["initialised_from"] = (
            f"{init.sha256} ({init.metadata.get('training_steps', '?')} steps, "
            f"{init.metadata.get('training_seconds', '?')} s of training)")
        run.log(f"initialised from {cfg.init_from} ({init.sha256[:12]})")
    processes.same_start(model)
    run.write_config(resume)
    model.train()
    path = run.train(task)
    return path or out / "core.safetensors"


_EPILOG = """\
examples:
  landmarks train-core --out runs/core                     # the cpu preset on LSPET rows :8500
  landmarks train-core --out runs/core --resume            # continue after a stop (every 500 steps)
  landmarks train-core --arch w192 --steps 30000 --colour-jitter 0.2 --out runs/core-w192   # a wider core
  landmarks train-core --init-from runs/core/core.safetensors --lr 5e-4 --out runs/core-2
                                                           # a fresh schedule from a core of the same --arch
  torchrun --nproc_per_node 4 -m landmarks.cli train-core --preset paper --data mpii:PATH   # GPUs

Writes OUT/core.safetensors (the last weights), OUT/best-core.safetensors (the best validation PCK),
OUT/checkpoint.pt (for --resume), OUT/history.jsonl, OUT/curve.png and OUT/val_overlay.png while it
trains. Score a core on rows it never saw:
  landmarks evaluate-core OUT/core.safetensors --dataset lspet:../shared/data/lspet --split 9000:
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu: 8,500 steps of the half-width network, ~40 min on 2 cores with AVX-512 BF16, "
                             "~80 on AVX2 only (--arch w192 / paper: ~1.5x / ~3x longer); paper: MPII schedule for GPUs "
                             "(torchrun --nproc_per_node N -m landmarks.cli train-core ...); smoke: seconds, tiny network")
    add_config_arguments(parser, CoreTrainConfig, choices={"arch": sorted(ARCHITECTURES), "bf16": BF16_CHOICES},
                         help={"device": "auto (a GPU if there is one), cpu, cuda or cuda:N",
                               "bf16": "auto: bf16 autocast where the device runs it natively (GPUs; CPUs with "
                                       "avx512_bf16 or amx_bf16; the log says which), fp16 + loss scaling on GPUs "
                                       "without bf16; true / false force it",
                               "colour_jitter": "colour augmentation: each crop's R, G and B are scaled by gains "
                                                "drawn from [1-C, 1+C], e.g. 0.2 (0: off)",
                               "license": "terms of use of the images, written into the core file "
                                          "(default: the dataset reader's)"}, presets=PRESETS)


def main(args: argparse.Namespace) -> int:
    cfg = CoreTrainConfig(**values_from_args(args, CoreTrainConfig, PRESETS))
    path = train_core(cfg, resume=args.resume, command=invocation())
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the process that wrote it
        print(f"wrote {path}")
    return 0
