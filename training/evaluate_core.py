"""`landmarks evaluate-core`: PCK of a core on annotated pose data, plus an overlay picture.

PCK@0.2 uses the LSP convention (error <= 0.2 x torso diameter, right shoulder to left hip);
for MPII-style data (16 joints) PCKh@0.5 is reported too (0.5 x head segment, upper neck to
head top, a common approximation of the head-box size). Only annotated joints count. The crop
is the deterministic person box of training (no augmentation). `--flip` averages the heatmaps
with those of the mirrored crop (the "flip test" of the pose literature, left and right joints
swapped); the default is the single pass, the number the README reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from landmarks.adapter_io import ArtifactError, load_core
from landmarks.heatmaps import heatmap_to_input, refined_argmax
from landmarks.hourglass import LandmarkHourglass
from training.core_data import PoseCrops
from training.datasets import DatasetError, open_dataset
from training.datasets.base import flip_permutation
from training.devices import BF16_CHOICES, Precision, choose_precision, resolve_device
from training.metrics import LSP_TORSO, pck
from training.plots import overlay_grid

__all__ = ["add_arguments", "evaluate_core", "main", "predict_core"]

FP32 = Precision(None, "fp32")
MPII_TORSO = (12, 3)  # right shoulder - left hip in MPII order
MPII_HEAD = (8, 9)  # upper neck - head top


@torch.no_grad()
def predict_core(model: LandmarkHourglass, loader, device: torch.device, precision: Precision | None = None,
                 flip_pairs: list[tuple[int, int]] | None = None):
    """-> (pred, truth, visible, images) with points in input pixels, as numpy.

    With `flip_pairs` (left/right joint pairs), the heatmaps are averaged with those of the mirrored
    image (the usual pose "flip test"): mirrored back and with left and right swapped. Mirroring is
    exact on the heatmap grid because input pixel centres map to heatmap pixel centres.
    """
    model.eval()
    swap = None if flip_pairs is None else flip_permutation(model.config.num_landmarks, flip_pairs)
    stride = model.config.input_size / model.config.heatmap_size
    preds, truths, vis, images = [], [], [], []
    for image, weights, points in loader:
        on_device = image.to(device, non_blocking=True)
        with (precision or FP32).autocast(device):
            heat = model(on_device).float()
            if swap is not None:
                mirrored = model(on_device.flip(-1)).float().flip(-1)[:, swap]
                heat = (heat + mirrored) / 2
        pts, _ = refined_argmax(heat)
        preds.append(heatmap_to_input(pts, stride).cpu().numpy())
        truths.append(points.numpy())
        vis.append(weights.numpy() > 0)
        images.append(image.permute(0, 2, 3, 1).numpy())
    return np.concatenate(preds), np.concatenate(truths), np.concatenate(vis), np.concatenate(images)


def evaluate_core(core_path: Path, dataset_spec: str, split: str | None, out: Path | None,
                  batch_size: int = 32, bf16: str = "false", flip: bool = False, device: str = "auto") -> dict:
    core = load_core(core_path)
    data = open_dataset(dataset_spec).subset(split)
    if core.num_landmarks != len(data.landmark_names):
        raise DatasetError(f"the core predicts {core.num_landmarks} joints, {dataset_spec} has "
                           f"{len(data.landmark_names)}; evaluate on data in the core's joint order")
    where = resolve_device(device)
    precision = choose_precision(where, bf16)
    model = core.build(where)
    loader = torch.utils.data.DataLoader(PoseCrops(data, core.config.input_size), batch_size=batch_size,
                                         num_workers=1, pin_memory=where.type == "cuda")
    if flip and not data.flip_pairs:
        raise DatasetError(f"{dataset_spec} declares no left/right joint pairs; evaluate without --flip")
    pred, truth, vis, images = predict_core(model, loader, where, precision,
                                            flip_pairs=data.flip_pairs if flip else None)
    mpii = len(data.landmark_names) == 16
    per_joint, mean = pck(pred, truth, vis, MPII_TORSO if mpii else LSP_TORSO, 0.2)
    result = {
        "core": str(core_path), "core_sha256": core.sha256, "dataset": dataset_spec, "split": split or ":",
        "images": len(pred), "metric": "PCK@0.2 (torso)", "flip_test": flip,
        "per_joint": {name: round(float(v), 2) for name, v in zip(data.landmark_names, per_joint)},
        "mean_pck@0.2": round(mean, 2),
    }
    if mpii:
        a, b = MPII_HEAD
        _, mean_h = pck(pred, truth, vis, (a, b), 0.5)
        result["mean_pckh@0.5"] = round(mean_h, 2)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "core_eval.json").write_text(json.dumps(result, indent=2))
        (out / "core_eval.md").write_text(markdown_table(result))
        idx = np.linspace(0, len(pred) - 1, min(12, len(pred))).astype(int)
        edges = [(0, 1), (1, 2), (3, 4), (4, 5), (6, 7), (7, 8), (9, 10), (10, 11), (12, 13), (8, 12), (9, 12),
                 (2, 8), (3, 9)] if not mpii else []
        overlay_grid(images[idx], pred[idx], out / "core_overlay.png", cols=6, edges=edges)
    return result


def markdown_table(result: dict) -> str:
    lines = ["| joint | PCK@0.2 (%) |", "|---|---|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in result["per_joint"].items()]
    lines.append(f"| **mean** | **{result['mean_pck@0.2']:.1f}** |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("core", type=Path, help="core .safetensors file")
    parser.add_argument("--dataset", required=True, help="FORMAT:PATH, e.g. lspet:../shared/data/lspet")
    parser.add_argument("--split", default=None, help="START:STOP subset, e.g. 9000: (LSPET's held-out 1,000)")
    parser.add_argument("--out", type=Path, default=None, help="folder for core_eval.json/.md and core_overlay.png")
    parser.add_argument("--bf16", choices=BF16_CHOICES, default="false",
                        help="bfloat16 autocast: auto = where the device runs it natively (the reported numbers "
                             "are fp32, the default)")
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N")
    parser.add_argument("--flip", action="store_true",
                        help="flip test: average with the mirrored crop's heatmaps (left/right joints swapped)")


def main(args: argparse.Namespace) -> int:
    try:
        result = evaluate_core(args.core, args.dataset, args.split, args.out, bf16=args.bf16, flip=args.flip,
                               device=args.device)
    except (ArtifactError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(result), end="")
    print(f"images: {result['images']}, flip test: {'on' if result['flip_test'] else 'off'}")
    if "mean_pckh@0.5" in result:
        print(f"mean PCKh@0.5: {result['mean_pckh@0.5']:.2f}")
    print(f"mean PCK@0.2: {result['mean_pck@0.2']:.2f}")
    return 0
