"""`landmarks adapt`: learn one category's landmarks without labels, by conditional generation.

The objective is in training.adapt_step; this module holds the options, the presets and the wiring.
Modes (the detector; the generator always trains):
    proposed   the paper: frozen core, learn W_L per conv + batch-norm + a new head -> adapter file
    finetune   baseline: every core weight learns, new head               -> network file
    scratch    baseline: the same network from random init (an IMM)      -> network file

Outputs in --out: checkpoint.pt (resume), config.json, history.jsonl, curve.png,
samples.png (y, y', reconstruction, landmarks), and adapter.safetensors / network.safetensors.
The same code runs on a CPU, a GPU (`--device cuda`) or several (`torchrun --nproc_per_node N`).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landmarks.adapter_io import ArtifactError, load_core, save_adapter, save_network
from landmarks.commands import adapt_remote
from landmarks.heatmaps import PAPER_BETA, PAPER_BOTTLENECK_SIGMA
from landmarks.projection import adapter_state_dict
from training.adapt_step import AdaptationStep, LossWeights, learning_rate_factor
from training.config_args import add_config_arguments, invocation, values_from_args
from training.datasets import DatasetError, open_dataset
from training.detectors import MODES, build_detector, warm_start
from training.devices import BF16_CHOICES, choose_precision, start_processes
from training.generator import ConditionalGenerator, GeneratorConfig
from training.harness import LoopSettings, RunState, TrainingRun
from training.image_bank import ImageBank
from training.optimisers import ClipGroup, Optimisers
from training.pairs import PairConfig
from training.perceptual import PerceptualLoss, load_perceptual
from training.validation import Validation, ValidationSpec

__all__ = ["PRESETS", "AdaptConfig", "adapt", "add_arguments", "main"]

UNKNOWN_LICENSE = "Trained on user-supplied images; check their licence"


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
    # every learning rate times: constant | step (x0.1 every --lr-decay-every steps; the paper: every 30
    # epochs) | cosine (half a cosine from 1 to 0.01 over --steps, the whole planned run; resume keeps it)
    lr_schedule: str = "constant"
    lr_decay_every: int = 0
    clip: float = 1.0  # gradient-norm clipping, detector and generator separately
    generator_channels: int = 32
    generator_blocks: int = 6
    generator_upsample: str = "transposed"  # transposed (official) | resize (nearest x2 + 3x3 conv)
    generator_skips: bool = False  # the encoder's features of y' at S and S/2 into the decoder (U-Net)
    perceptual: str = "auto"  # auto | vgg19 | mobilenet_v2 | none
    pixel_weight: float = 1.0
    # each reconstruction term (pixel, each perceptual layer) divided by a running mean of itself
    perceptual_normalise: bool = False
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
    # Not in the paper: weight of the heatmaps' spatial variance (heatmap px^2; Zhang et al. 2018's
    # concentration term): sharp maps give precise points
    concentration_weight: float = 0.0
    # Not in the paper, for objects photographed on white (product photos such as UT-Zappos shoes):
    # weight of the landmarks' expected distance (heatmap cells) from the object in y, the object being
    # what is not near-white (from the pixels alone)
    foreground_weight: float = 0.0
    # Validation on held-out rows (training.validation): FORMAT:PATH, the rows scored (outside
    # --train-split) and, for annotated images, the rows the regressor is fitted on; every --picture-every
    val: str = ""
    val_split: str = ""
    val_fit_split: str = ""
    head_lr: float = 0.0  # learning rate of the new head (0 = --lr)
    image_size: int = 0  # run the core at this input size (0 = the core's own, 128)
    init_head: str = "scratch"  # scratch (the paper) | core: start from the core's first K maps (proposed)
    # A previous run's checkpoint.pt to start from (its detector's trainable tensors and its generator;
    # not its optimiser or step), or an adapter / network file (e.g. a shipped one; the generator then
    # starts fresh). Re-adapting a category to a retrained core this way takes a fraction
    # of the steps: for `proposed` only the adapter's tensors are taken, the frozen core is the new one.
    warm_start: str = ""
    workers: int = 2  # processes decoding images (once, into memory; or every epoch if they do not fit)
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: each process's own GPU)
    bf16: str = "auto"  # auto: where the device runs it natively (GPU, AVX-512-BF16/AMX CPU) | true | false
    compile: bool = False  # torch.compile the networks (docs/training_speed.md: what it was worth)
    # the images' terms of use, recorded in the file; "" = the dataset reader's (MTFL, 300-W, ...), else
    # a note that the user must check them (a plain folder)
    license: str = ""
    names: str = ""  # comma-separated landmark names written into the adapter; "" = p1 .. pK
    picture_every: int = 500  # 0 = only at the end
    checkpoint_every: int = 500  # 0 = only at the end
    seed: int = 0
    max_minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.names and len(self.landmark_names) != self.num_landmarks:
            raise ValueError(f"--names gives {len(self.landmark_names)} names for --num-landmarks "
                             f"{self.num_landmarks}; give one per landmark, comma-separated")
        if self.init_head not in ("scratch", "core"):
            raise ValueError(f"init_head must be 'scratch' or 'core', got {self.init_head!r}")
        if self.targets not in ("all", "3x3"):
            raise ValueError(f"targets must be 'all' or '3x3', got {self.targets!r}")
        if self.separation_sigma <= 0 or self.separation_weight < 0 or self.head_lr < 0:
            raise ValueError("separation_sigma > 0, separation_weight >= 0 and head_lr >= 0 are required")
        if self.lr_schedule not in ("constant", "step", "cosine"):
            raise ValueError(f"lr_schedule must be constant, step or cosine, got {self.lr_schedule!r}")
        if (self.lr_schedule == "step") != (self.lr_decay_every > 0):
            raise ValueError("--lr-schedule step and --lr-decay-every N (> 0) go together")
        if self.concentration_weight < 0 or self.foreground_weight < 0:
            raise ValueError("concentration_weight and foreground_weight must be >= 0")
        if self.val and not self.val_split:
            raise ValueError("--val needs --val-split: the rows to score, which adaptation must not use "
                             "(e.g. --train-split :6655 --val-split 6655:)")
        if self.bf16 not in BF16_CHOICES:
            raise ValueError(f"bf16 must be one of {BF16_CHOICES}, got {self.bf16!r}")
        if self.num_landmarks < 1 or self.steps < 1 or self.batch_size < 2:
            raise ValueError("num_landmarks >= 1, steps >= 1 and batch_size >= 2 (batch-norm) are required")

    @property
    def landmark_names(self) -> list[str]:
        return [n.strip() for n in self.names.split(",")] if self.names else []

    def pairs(self) -> PairConfig:
        return PairConfig(self.target_rotation_sd, self.deformed_rotation_sd, 40.0,
                          (self.scale_min, self.scale_max), self.shift_sd, self.tps_sd)


PRESETS: dict[str, dict] = {
    # The shipped adapters' recipe (the default): the core at its own 128 px, the head started from the
    # core's first K maps, a separation and an equivariance term (TPS-warped pairs; without them the
    # points collapsed onto one spot at this budget, RESULTS.md), lr 2e-3 on a cosine over the run.
    "cpu": dict(steps=3_000, batch_size=16, image_size=128, lr=2e-3, lr_schedule="cosine", init_head="core",
                separation_weight=1.0, equivariance_weight=1.0, tps_sd=0.08, picture_every=250,
                checkpoint_every=250),
    # The same terms with the core at 64 px: ~3x faster a step, worse points (RESULTS.md); a first look.
    "quick": dict(steps=1_500, batch_size=16, image_size=64, init_head="core", separation_weight=1.0,
                  equivariance_weight=1.0, tps_sd=0.08, picture_every=250, checkpoint_every=250),
    # The paper's schedule (80 epochs x 2,500 iterations, batch 48, lr x0.1 every 30 epochs), for GPUs.
    "paper": dict(steps=200_000, batch_size=48, lr_schedule="step", lr_decay_every=75_000, workers=8,
                  picture_every=2_500, checkpoint_every=2_500),
    # Seconds on synthetic images (tests).
    "smoke": dict(steps=3, batch_size=2, workers=0, picture_every=2, checkpoint_every=2, generator_channels=4,
                  generator_blocks=1, perceptual="none"),
}


class _NoFeatures(nn.Module):
    """`--perceptual none`: the pixel loss alone."""

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return []


def adapt(cfg: AdaptConfig, resume: bool = False, command: str = "",
          on_step: Callable[[RunState], None] | None = None) -> Path:
    """Train one adapter (or baseline network); returns the exported file (rank 0; others get its path).
    `on_step` is called after every step (and its checkpoint) with the run's state."""
    processes, device = start_processes(cfg.device)
    try:
        return _adapt(cfg, resume, command, processes, device, on_step)
    finally:
        processes.close()


def _adapt(cfg: AdaptConfig, resume: bool, command: str, processes, device: torch.device,
           on_step: Callable[[RunState], None] | None = None) -> Path:
    out = Path(cfg.out)
    run = TrainingRun(out, LoopSettings(cfg.steps, cfg.picture_every, cfg.checkpoint_every, cfg.max_minutes,
                                        cfg.seed), processes, device, cfg, command, cfg.batch_size, on_step)
    precision = choose_precision(device, cfg.bf16)
    run.log(f"device {device}, {precision.reason}; {processes.world} process(es)")
    core = load_core(cfg.core)
    core_model = core.build(device)
    size = cfg.image_size or core.config.input_size
    data = open_dataset(cfg.images).subset(cfg.train_split or None)
    run.log(f"{cfg.images}: {data.report}")

    detector = build_detector(cfg.mode, core_model, cfg.num_landmarks, cfg.targets, cfg.seed, size,
                              init_head=cfg.init_head).train()
    generator = ConditionalGenerator(GeneratorConfig(cfg.num_landmarks, cfg.generator_channels, cfg.generator_blocks,
                                                     cfg.generator_upsample, cfg.generator_skips)).to(device).train()
    features = _NoFeatures() if cfg.perceptual == "none" else load_perceptual(cfg.perceptual)
    loss_fn = PerceptualLoss(features, pixel_weight=cfg.pixel_weight, normalise=cfg.perceptual_normalise).to(device)
    det_params = [p for p in detector.parameters() if p.requires_grad]
    head_ids = {id(p) for p in detector.head.parameters()}
    betas = (cfg.beta1, cfg.beta2)
    opt_det = torch.optim.Adam([{"params": [p for p in det_params if id(p) not in head_ids], "lr": cfg.lr},
                                {"params": [p for p in det_params if id(p) in head_ids], "lr": cfg.head_lr or cfg.lr}],
                               betas=betas)
    opt_gen = torch.optim.Adam(generator.parameters(), lr=cfg.generator_lr, betas=betas)
    optimisers = Optimisers({"detector": opt_det, "generator": opt_gen}, precision, processes, device,
                            clip=[ClipGroup(det_params, cfg.clip), ClipGroup(list(generator.parameters()), cfg.clip)])
    run.log(f"mode {cfg.mode}: {sum(p.numel() for p in det_params):,} trainable detector parameters, generator "
            f"{sum(p.numel() for p in generator.parameters()):,}, perceptual {type(features).__name__}")
    license_text = cfg.license or data.license or UNKNOWN_LICENSE

    def export(state) -> Path:
        provenance = dict(command=command, training_seconds=f"{state.elapsed:.0f}", training_steps=str(state.step),
                          dataset=cfg.images, mode=cfg.mode, license=license_text, device=str(device.type),
                          precision=precision.name, processes=str(processes.world), **state.provenance)
        if cfg.mode == "proposed":
            return save_adapter(out / "adapter.safetensors", adapter_state_dict(detector), detector.config,
                                category=cfg.category or "unnamed", core_sha256=core.sha256, targets=cfg.targets,
                                landmark_names=cfg.landmark_names, **provenance)
        return save_network(out / "network.safetensors", detector, cfg.category or "unnamed",
                            core_sha256=core.sha256, **provenance)

    images = ImageBank(data, size, device, processes, cfg.batch_size, cfg.seed, cfg.workers)
    run.log(f"images: {images.description}")
    weights = LossWeights(cfg.softargmax_beta, cfg.bottleneck_sigma, cfg.equivariance_weight,
                          cfg.separation_weight, cfg.separation_sigma, cfg.concentration_weight,
                          cfg.foreground_weight)
    lrs = {"detector": (cfg.lr, cfg.head_lr or cfg.lr), "generator": (cfg.generator_lr,)}
    validation = None
    if cfg.val and processes.main:
        validation = Validation(ValidationSpec(cfg.val, cfg.val_split, cfg.val_fit_split), size)
        run.log(validation.description)
    task = AdaptationStep(f"adapt {cfg.category or cfg.images} ({cfg.mode})", detector, generator, loss_fn,
                          optimisers, lrs,
                          functools.partial(learning_rate_factor, cfg.lr_schedule, steps=cfg.steps,
                                            decay_every=cfg.lr_decay_every),
                          images, cfg.pairs(), weights, precision, device, cfg.seed,
                          out / "samples.png" if processes.main else None, export,
                          validation, validation.metric if validation else None)
    if cfg.compile:
        run.log(f"compile: {task.use_compiled()}")
    resumed = run.restore(task, resume)
    if cfg.warm_start and not resumed:
        run.state.provenance["warm_started_from"] = warm_start(cfg.warm_start, cfg.mode, detector, generator)
        run.log(f"warm start: {run.state.provenance['warm_started_from']}")
    processes.same_start(detector, generator)
    run.write_config(resume)
    path = run.train(task)
    return path or out / ("adapter.safetensors" if cfg.mode == "proposed" else "network.safetensors")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="?", default=None,
                        help="FORMAT:PATH of the category's images, e.g. folder:photos/ or mtfl:.../new_training.txt "
                             "(annotations are never used for training); a bare folder means folder:PATH")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu",
                        help="cpu (default): the shipped adapters' recipe, 128 px, separation + equivariance "
                             "terms, lr 2e-3 cosine, 3,000 steps; quick: the same terms at 64 px, lr 1e-3 constant, "
                             "1,500 steps; paper: the paper's objective and 200k-step schedule (GPUs); smoke: seconds")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="skip the int8 calibration that ends a run (the server then runs the adapter in fp32); "
                             "by default the last rows of the images (up to 300, a tenth at most) are held out of "
                             "training, and the adapter is calibrated on the rest and checked on them")
    add_config_arguments(parser, AdaptConfig, skip=("images",), choices={
        "mode": MODES, "targets": ("all", "3x3"), "init_head": ("scratch", "core"),
        "lr_schedule": ("constant", "step", "cosine"), "generator_upsample": ("transposed", "resize"),
        "perceptual": ("auto", "vgg19", "mobilenet_v2", "none"), "bf16": BF16_CHOICES}, help={
        "device": "auto (a GPU if there is one), cpu, cuda or cuda:N; several GPUs: "
                  "torchrun --nproc_per_node N -m landmarks.cli adapt ...",
        "bf16": "auto: bf16 autocast where the device runs it natively (GPUs; CPUs with avx512_bf16 or "
                "amx_bf16; the log says which), fp16 + loss scaling on GPUs without bf16; true / false force it",
        "license": "the images' terms of use, written into the adapter file; default: the reader's for a "
                   "known dataset (mtfl, 300w, cats, lsp...), else 'user-supplied images; check their licence', "
                   "e.g. --license 'AFHQ (CC BY-NC 4.0; Choi et al. 2020)'",
        "workers": "processes that decode the images (once, into memory, when they fit)",
        "lr_schedule": "every learning rate times: constant; step (x0.1 every --lr-decay-every steps); cosine "
                       "(from 1 to 0.01 over --steps, the whole planned run; a resumed run keeps its place)",
        "generator_upsample": "the generator's x2 upsampling: transposed (the official code's stride-2 transposed "
                              "convs) or resize (nearest-neighbour x2 then a 3x3 conv: no checkerboard)",
        "generator_skips": "feed the encoder's features of y' at full and half size into the decoder (a U-Net "
                           "from y' only; never from y, whose appearance would bypass the landmarks)",
        "perceptual_normalise": "divide the pixel term and each perceptual layer by a running mean of itself, "
                                "so each counts ~1 and --pixel-weight is their ratio (RESULTS.md: reconstructions "
                                "then carry the target's colours)",
        "concentration_weight": "weight of the heatmaps' spatial variance (sharp maps, Zhang et al. 2018); 0 = off",
        "foreground_weight": "for objects photographed on white (product photos): weight of the landmarks' expected "
                             "distance (heatmap cells) from the object, which is what is not near-white; 0 = off",
        "val": "FORMAT:PATH of images to validate on every --picture-every steps (history.jsonl, curve.png; "
               "best-adapter.safetensors keeps the export at the best score), e.g. the same list as the images",
        "val_split": "the rows of --val to score, outside --train-split; write negative ones with '=', e.g. "
                     "--train-split=:-1000 --val-split=-1000:-500",
        "val_fit_split": "annotated --val only: the rows the forward/backward regressor is fitted on (up to 2,000 "
                         "spread over them), e.g. the adaptation rows; without it, consistency only",
        "names": "landmark names for the adapter file, comma-separated, one per landmark "
                 "(e.g. 'left-eye,right-eye,nose,...'; default p1 .. pK); servers and Detector report them",
        "compile": "torch.compile the detector, generator and perceptual network (needs a C++ compiler on "
                   "the CPU; a graph that fails to compile runs eagerly); see docs/training_speed.md"}, presets=PRESETS)
    adapt_remote.add_arguments(parser)


CALIBRATION_HOLD_OUT = 300  # at most this many images (and a tenth of the set) held out for int8's check


def held_out_rows(images: str, train_split: str) -> tuple[str, str] | None:
    """(calibration rows, check rows) for the int8 calibration that ends `landmarks adapt`: the training
    rows and the rows after them. With no --train-split, the last rows are held out (the caller trains
    on the rest); None where the training rows leave nothing after them to check on."""
    if not train_split:
        total = len(open_dataset(images))
        held = min(CALIBRATION_HOLD_OUT, total // 10)
        return (f":-{held}", f"-{held}:") if held >= 4 else None
    match = re.fullmatch(r":(-?\d+)", train_split.strip())
    return (train_split, f"{match[1]}:") if match else None


def _calibrate(path: Path, images: str, core: str, rows: tuple[str, str] | None) -> None:
    from training.calibrate import calibrate

    if rows is None:
        print(f"not calibrated for int8 (no held-out rows after --train-split); to serve it in int8: "
              f"landmarks calibrate {path} --images {images} --split ROWS --held-out ROWS")
        return
    try:
        result = calibrate(path, images, rows[0], rows[1], None, core_path=Path(core), record_refusal=True)
    except (ArtifactError, DatasetError, ValueError) as exc:  # the adapter stands; it runs in fp32
        print(f"warning: not calibrated for int8 ({exc}); the server runs it in fp32", file=sys.stderr)
        return
    measured = (f"int8 vs fp32 on {result['images']} held-out images: mean {result['mean_px']:.3f}, "
                f"p95 {result['p95_px']:.3f} px at 128")
    if result["accepted"]:
        print(f"calibrated for int8 ({measured}); the default server runs it in int8")
    else:
        print(f"int8 calibration refused ({measured}; the rule is 0.5): the server runs it in fp32 and says why")


def main(args: argparse.Namespace) -> int:
    if args.server:
        return adapt_remote.main(args)
    values = values_from_args(args, AdaptConfig, PRESETS)
    if not values.get("images"):
        print("error: give the category's images, e.g. `landmarks adapt folder:my_photos/ --category mugs`",
              file=sys.stderr)
        return 2
    if ":" not in values["images"] or Path(values["images"]).exists():
        values["images"] = f"folder:{values['images']}"
    calibrating = not args.no_calibrate and values.get("mode", "proposed") == "proposed"
    try:
        rows = held_out_rows(values["images"], values.get("train_split", "")) if calibrating else None
        if calibrating and rows is not None and not values.get("train_split"):
            values["train_split"] = rows[0]  # the check's images are never trained on
        cfg = AdaptConfig(**values)
        path = adapt(cfg, resume=args.resume, command=invocation())
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, the process that wrote it
            print(f"wrote {path}")
            if calibrating:
                _calibrate(path, cfg.images, cfg.core, rows)
    except (ArtifactError, DatasetError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
