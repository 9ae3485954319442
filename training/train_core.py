"""`landmarks train-core`: supervised heatmap regression of the core on human pose.

Wiring only: data (training.core_data), network (landmarks.hourglass), metric (training.metrics).
Outputs in --out: checkpoint.pt (resume), config.json (resolved), history.jsonl, curve.png,
core.safetensors (fp16, with metadata) and val_overlay.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from landmarks.adapter_io import load_core, save_core
from landmarks.heatmaps import heatmap_to_input, refined_argmax
from landmarks.hourglass import ARCHITECTURES, HourglassConfig, LandmarkHourglass
from training.augment import AugmentConfig
from training.config_args import add_config_arguments, invocation, values_from_args
from training.core_data import PoseCrops
from training.datasets import open_dataset
from training.datasets.base import flip_permutation
from training.metrics import pck
from training.plots import overlay_grid, plot_curves

__all__ = ["PRESETS", "CoreTrainConfig", "add_arguments", "main", "predict_core", "train_core"]


@dataclass(frozen=True)
class CoreTrainConfig:
    data: str = "lspet:../shared/data/lspet"
    train_split: str = ":8500"
    val_split: str = "8500:9000"  # monitoring only; LSPET 9000: stays the untouched test split
    out: str = "runs/core"
    arch: str = "cpu"  # paper (FAN, 6.2M) | cpu (half width, 1.6M) | tiny (tests)
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
    bf16: bool = False  # autocast to bfloat16: a win on GPUs and AVX-512-BF16 CPUs, 20x slower on AVX2
    workers: int = 2
    # NHWC activations: oneDNN's convolutions are ~18% faster this way on a 2-core AVX2 CPU
    # (measured with batch 16 at 128 px); results are the same up to float rounding.
    channels_last: bool = True
    val_every: int = 1000
    val_size: int = 500
    seed: int = 0
    max_minutes: float = 0.0  # stop (checkpoint + export) after this long; 0 = run the schedule
    init_from: str = ""  # start from a core file's weights (e.g. adapters/core.safetensors) instead of random

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps, batch_size and lr must be positive")


PRESETS: dict[str, dict] = {
    # What fits a 2-core AVX2 machine in about 80 minutes: the half-width `cpu` architecture,
    # fp32, channels_last, ~28-30 img/s including data loading (one loader worker keeps up).
    "cpu": dict(arch="cpu", steps=8_500, batch_size=16, lr=1e-3, foreground_weight=10.0, workers=1, val_every=500,
                val_size=300),
    # The paper's setting for a GPU: FAN at full width on MPII, larger batch, longer schedule.
    "paper": dict(arch="paper", data="mpii:data/mpii/mpii_annotations.json", train_split="", val_split="",
                  steps=150_000, batch_size=24, lr=2.5e-4, bf16=True, workers=8, val_every=5000),
    # Seconds on synthetic data (tests and smoke runs).
    "smoke": dict(arch="tiny", steps=3, batch_size=2, workers=0, val_every=2, val_size=4, warmup_steps=1),
}


def _lr_at(cfg: CoreTrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _autocast(cfg: CoreTrainConfig, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16)


@torch.no_grad()
def predict_core(model: LandmarkHourglass, loader, device: torch.device, bf16: bool = False,
                 flip_pairs: list[tuple[int, int]] | None = None):
    """-> (pred, truth, visible, images) with points in input pixels, as numpy.

    With `flip_pairs` (left/right joint pairs), the heatmaps are averaged with those of the mirrored
    image (the usual pose "flip test"): mirrored back and with left and right swapped. Mirroring is
    exact on the heatmap grid because input pixel centres map to heatmap pixel centres.
    """
    model.eval()
    swap = None if flip_pairs is None else flip_permutation(model.config.num_landmarks, flip_pairs)
    preds, truths, vis, images = [], [], [], []
    for image, _, weights, points in loader:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            heat = model(image.to(device)).float()
            if swap is not None:
                mirrored = model(image.to(device).flip(-1)).float().flip(-1)[:, swap]
                heat = (heat + mirrored) / 2
        pts, _ = refined_argmax(heat)
        preds.append(heat_to_np(pts, model.config))
        truths.append(points.numpy())
        vis.append(weights.numpy() > 0)
        images.append(image.permute(0, 2, 3, 1).numpy())
    return np.concatenate(preds), np.concatenate(truths), np.concatenate(vis), np.concatenate(images)


def heat_to_np(points: torch.Tensor, config: HourglassConfig) -> np.ndarray:
    return heatmap_to_input(points, config.input_size / config.heatmap_size).cpu().numpy()


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def train_core(cfg: CoreTrainConfig, resume: bool = False, command: str = "") -> Path:
    """Train (or resume) a core; returns the path of the exported core.safetensors."""
    rank, world = _distributed()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    full = open_dataset(cfg.data)
    print(f"{cfg.data}: {full.report}", file=sys.stderr)
    train_set, val_set = full.subset(cfg.train_split), full.subset(cfg.val_split)
    if cfg.val_size and len(val_set) > cfg.val_size:
        val_set = val_set.subset(f":{cfg.val_size}")
    model_cfg = ARCHITECTURES[cfg.arch](len(full.landmark_names))
    model = LandmarkHourglass(model_cfg).to(device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    step, history, elapsed, initialised_from = 0, [], 0.0, ""
    ckpt_path = out / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        # weights_only: our own checkpoint, still never a full unpickle
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history, elapsed = ckpt["step"], ckpt["history"], ckpt["elapsed"]
        initialised_from = ckpt.get("init_from_sha256", "")
        print(f"resumed from {ckpt_path} at step {step}", file=sys.stderr)
    elif resume:
        print(f"--resume: no checkpoint in {out}, starting fresh", file=sys.stderr)
    if cfg.init_from and step == 0:
        init = load_core(cfg.init_from)  # safetensors only, validated
        if init.config != model_cfg:
            raise ValueError(f"--init-from {cfg.init_from} has another architecture: {init.config} vs {model_cfg}")
        model.load_state_dict(init.float_state(), strict=False)  # BN step counters are not stored
        # kept in the exported file: --init-from names a path whose contents may change later
        initialised_from = f"{init.sha256} ({init.metadata.get('training_steps', '?')} steps, " \
                   f"{init.metadata.get('training_seconds', '?')} s of training)"
        print(f"initialised from {cfg.init_from} ({init.sha256[:12]})", file=sys.stderr)
    if rank == 0:
        # every invocation (a resumed run may change flags) is kept, in order
        previous = []
        if resume and (out / "config.json").is_file():
            old = json.loads((out / "config.json").read_text())
            previous = old.get("commands") or [{"command": old.get("command", ""), "from_step": 0}]
        (out / "config.json").write_text(json.dumps(
            {**dataclasses.asdict(cfg), "command": command, "commands": [*previous, {"command": command, "from_step": step}]},
            indent=2))

    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    size = model_cfg.input_size
    train_data = PoseCrops(train_set, size, cfg.sigma, AugmentConfig(rotation_sd=cfg.rotation_sd), cfg.seed)
    val_loader = torch.utils.data.DataLoader(PoseCrops(val_set, size, cfg.sigma), batch_size=32,
                                             num_workers=min(cfg.workers, 1))

    def validate() -> float:
        pred, truth, vis, images = predict_core(model, val_loader, device, cfg.bf16)
        _, mean = pck(pred, truth, vis)
        overlay_grid(images[:8], pred[:8], out / "val_overlay.png", truth=truth[:8], cols=4)
        model.train()
        return mean

    def save(final: bool = False) -> None:
        if rank != 0:
            return
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "history": history, "elapsed": elapsed, "init_from_sha256": initialised_from}, out / "checkpoint.tmp")
        (out / "checkpoint.tmp").replace(ckpt_path)
        with open(out / "history.jsonl", "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        plot_curves(history, out / "curve.png", f"core ({cfg.arch}, {cfg.data.split(':')[0]})",
                    metric_key="val_pck", metric_label="val PCK@0.2 (%)")
        last_pck = next((h["val_pck"] for h in reversed(history) if "val_pck" in h), None)
        save_core(out / "core.safetensors", model, full.landmark_names, command=command,
                  training_seconds=f"{elapsed:.0f}", training_steps=str(step),
                  **({"initialised_from": initialised_from} if initialised_from else {}),
                  dataset=cfg.data, metrics={"val_pck@0.2": last_pck, "val_split": cfg.val_split},
                  license="Trained on LSP-extended (research use only; Johnson & Everingham 2011)")

    model.train()
    start, epoch = time.time() - elapsed, step * cfg.batch_size // max(1, len(train_data))
    bar = tqdm(total=cfg.steps, initial=step, desc="train-core", disable=rank != 0, mininterval=10,
               dynamic_ncols=True)
    stop = False
    while step < cfg.steps and not stop:
        train_data.epoch = epoch
        sampler = (torch.utils.data.distributed.DistributedSampler(train_data, seed=cfg.seed + epoch)
                   if world > 1 else None)
        loader = torch.utils.data.DataLoader(
            train_data, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
            num_workers=cfg.workers, drop_last=True, generator=torch.Generator().manual_seed(cfg.seed + epoch))
        tick, seen = time.time(), 0
        for images, heat, weights, _ in loader:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg, step)
            images, heat, weights = images.to(device, memory_format=memory_format), heat.to(device), weights.to(device)
            with _autocast(cfg, device):
                pred = net(images)
            err = F.mse_loss(pred.float(), heat, reduction="none")
            if cfg.foreground_weight:
                err = err * (1 + cfg.foreground_weight * heat)
            loss = (err.mean((2, 3)) * weights).sum() / weights.sum().clamp(min=1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            seen += images.shape[0]
            elapsed = time.time() - start
            record = {"step": step, "loss": float(loss.detach()), "lr": _lr_at(cfg, step - 1), "time": round(elapsed, 1)}
            if step % cfg.val_every == 0 or step == cfg.steps:
                record["val_pck"] = validate() if rank == 0 else float("nan")
                record["img_per_s"] = seen * world / max(1e-9, time.time() - tick)
                bar.write(f"step {step}: loss {loss:.2e}  val PCK@0.2 {record['val_pck']:.1f}%  "
                          f"{record['img_per_s']:.1f} img/s  {elapsed / 60:.1f} min")
            history.append(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.2e}", ips=f"{seen * world / max(1e-9, time.time() - tick):.1f}")
            if step % cfg.val_every == 0:
                save()
            if cfg.max_minutes and elapsed > cfg.max_minutes * 60:
                print(f"stopping at step {step}: --max-minutes {cfg.max_minutes} reached (resume with --resume)",
                      file=sys.stderr)
                stop = True
            if step >= cfg.steps or stop:
                break
        epoch += 1
    bar.close()
    if history and "val_pck" not in history[-1]:
        history[-1]["val_pck"] = validate() if rank == 0 else float("nan")
    save(final=True)
    if world > 1:
        torch.distributed.destroy_process_group()
    return out / "core.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu: ~100 min on 2 cores, half-width network; paper: MPII schedule for a GPU (torchrun works); "
                             "smoke: seconds, tiny network")
    add_config_arguments(parser, CoreTrainConfig, choices={"arch": sorted(ARCHITECTURES)})


def main(args: argparse.Namespace) -> int:
    cfg = CoreTrainConfig(**values_from_args(args, CoreTrainConfig, PRESETS))
    path = train_core(cfg, resume=args.resume, command=invocation())
    print(f"wrote {path}")
    return 0
