"""`landmarks evaluate`: forward, backward and consistency errors of discovered landmarks.

Protocol (the paper's, without the official code's pitfalls):
- Landmarks are the detector's soft-argmax (beta 10) in eval mode (batch-norm uses its running
  statistics), mapped to input pixels with the half-pixel convention.
- Crops: MTFL/AFLW images are face crops already and are used whole; 300-W images are cropped to
  the box of the annotated points plus a fixed margin (POINTS_MARGIN), squared, no jitter, the
  same for every method.
- Forward: ridge regression from discovered (K x 2) to annotated points on the training split,
  error on the test split = mean point-to-point distance / inter-ocular distance (eye centres
  for 5-point data, outer eye corners for 68-point data), in percent.
- Backward: the same from annotated to discovered points, normalised by the same distance.
- Regressor: ridge with intercept on mean-centred coordinates in units of the input size,
  R = (X'X + lambda * max(X'X) I)^-1 X'Y, lambda = 1e-4 (the official code's form).
  Subset sizes 1, 5, 10, 100, 500, 1000, 5000 and all; sizes <= 100 average 10 random draws.
- Consistency: ||detect(A(y)) - A(detect(y))|| per landmark, A a random rotation N(0, 15 deg)
  about the crop centre, in pixels of a 128 x 128 input.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from landmarks.adapter_io import ArtifactError, Core, find_core, load_adapter, load_core, read_artifact
from landmarks.detector import default_adapters_dir
from landmarks.geometry import apply_affine, similarity_matrix, warp_images
from landmarks.heatmaps import PAPER_BETA, heatmap_to_input, soft_argmax
from landmarks.hourglass import LandmarkHourglass
from landmarks.images import images_to_pixels
from landmarks.projection import fold
from training.datasets import Dataset, DatasetError, open_dataset
from training.devices import resolve_device
from training.image_data import ObjectCrops
from training.metrics import background_points, point_spread

__all__ = [
    "add_arguments",
    "consistency_error",
    "core_of",
    "detect_dataset",
    "detect_points_px",
    "evaluate",
    "iod_indices",
    "load_detector",
    "load_served",
    "main",
    "points_margin",
    "regression_error",
    "ridge_fit",
]

SUBSET_SIZES = (1, 5, 10, 100, 500, 1000, 5000)
RIDGE_LAMBDA = 1e-4
POINTS_MARGIN = 0.25
CONSISTENCY_ROTATION_SD = 15.0
PAPER = {  # Sanchez & Tzimiropoulos 2019, K = 10 (Tables 1-3); % of inter-ocular distance, px at 128
    "proposed": {"forward": 6.69, "backward": 9.19, "consistency": 2.52},
    "finetune": {"forward": 6.79, "backward": 11.14, "consistency": 4.32},
    "scratch": {"forward": 7.65, "backward": 25.50, "consistency": 11.20},
    "cats_consistency": 2.44,
    "shoes_consistency": 2.14,
}


def points_margin(images: str) -> float | None:
    """How an annotated set is cropped: MTFL/AFLW images are face crops already (None: whole), others
    to the box of their points plus POINTS_MARGIN."""
    return None if images.startswith("mtfl:") else POINTS_MARGIN


def core_of(path: Path, core_sha256: str, core_path: Path | None = None) -> Core:
    """The core an adapter file names: `core_path` if given, else the one whose fingerprint is
    `core_sha256`, beside it or in the shipped adapters/ (landmarks.Detector's default)."""
    return load_core(core_path or find_core(path, core_sha256, (default_adapters_dir(),)))


def load_detector(path: Path, core_path: Path | None = None) -> tuple[LandmarkHourglass, dict]:
    """An adapter (folded with its core) or a baseline network file -> eval-mode network."""
    art = read_artifact(path)
    kind = art.metadata["kind"]
    if kind == "adapter":
        core = core_of(path, art.metadata["core_sha256"], core_path)
        adapter = load_adapter(path, core)
        return fold(core.build(), adapter.tensors, adapter.config), dict(adapter.metadata)
    if kind == "network":
        return art.build(), dict(art.metadata)  # type: ignore[union-attr]
    raise ArtifactError(f"{path} is a core; evaluate an adapter or a network (core: landmarks evaluate-core)")


class ServedHeatmaps(torch.nn.Module):
    """An adapter as the server runs it (the inference runtime, `landmarks.runtime`: ONNX Runtime, its
    crops rounded to 8-bit pixels as a client's are), in the shape the protocol takes: forward(images) ->
    heatmaps, with the folded network's `config`. `landmarks evaluate --precision int8` scores what the
    default server answers for an adapter that carries an int8 calibration."""

    def __init__(self, core, adapter, precision: str) -> None:
        super().__init__()
        from landmarks.runtime.sessions import Runtime

        self.config = adapter.config
        self.prepared = Runtime(core, precision=precision).prepare(adapter)  # ValueError without a calibration

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.prepared.heatmaps(images_to_pixels(images.cpu())))


def load_served(path: Path, precision: str, core_path: Path | None = None) -> tuple[torch.nn.Module, dict]:
    """An adapter file -> `ServedHeatmaps` in `precision` (onnxruntime's fp32 or int8)."""
    art = read_artifact(path)
    if art.metadata["kind"] != "adapter":
        raise ArtifactError(f"{path}: --precision scores an adapter as the server serves it; give --adapter")
    core = core_of(path, art.metadata["core_sha256"], core_path)
    adapter = load_adapter(path, core)
    return ServedHeatmaps(core, adapter, precision), dict(adapter.metadata)


@dataclass
class Detections:
    points: np.ndarray  # (N, K, 2) discovered, input px
    truth: np.ndarray  # (N, P, 2) annotated, input px (P = 0 for unlabelled data)
    images: np.ndarray  # a few crops for pictures (n, S, S, 3)
    tensors: torch.Tensor  # all crops (N, 3, S, S) for consistency (kept small by the caller)


def _device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters(), torch.zeros(())).device


@torch.no_grad()
def detect_points_px(model: LandmarkHourglass, images: torch.Tensor, beta: float = PAPER_BETA) -> torch.Tensor:
    """Points in input pixels, on the CPU (the images go to the model's device)."""
    heat = model(images.to(_device_of(model), non_blocking=True)).float()
    stride = model.config.input_size / model.config.heatmap_size
    return heatmap_to_input(soft_argmax(heat, beta), stride).cpu()


def detect_dataset(model: LandmarkHourglass, data: Dataset, points_margin: float | None,
                   keep_tensors: int = 0, batch_size: int = 64) -> Detections:
    loader = torch.utils.data.DataLoader(ObjectCrops(data, model.config.input_size, points_margin),
                                         batch_size=batch_size, num_workers=1,
                                         pin_memory=_device_of(model).type == "cuda")
    points, truth, kept = [], [], []
    try:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"detect {data.name}", mininterval=10, leave=False)
    except ImportError:
        pass
    for images, pts, _, ok in loader:
        images, pts = images[ok], pts[ok]
        points.append(detect_points_px(model, images).numpy())
        truth.append(pts.numpy())
        if sum(len(k) for k in kept) < keep_tensors:
            kept.append(images)
    all_kept = torch.cat(kept)[:keep_tensors] if kept else torch.zeros(0)
    return Detections(np.concatenate(points), np.concatenate(truth),
                      all_kept[:12].permute(0, 2, 3, 1).numpy() if len(all_kept) else np.zeros(0), all_kept)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float = RIDGE_LAMBDA):
    """Ridge with intercept: returns predict(x_new). x: (N, Dx), y: (N, Dy)."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    gram = xc.T @ xc
    reg = lam * max(float(np.abs(gram).max()), 1e-12)
    coef = np.linalg.solve(gram + reg * np.eye(gram.shape[0]), xc.T @ yc)
    return lambda xn: (xn - mx) @ coef + my


def iod_indices(num_points: int) -> tuple[int, int]:
    if num_points == 5:
        return (0, 1)  # MTFL/AFLW: eye centres
    if num_points == 68:
        return (36, 45)  # 300-W: outer eye corners
    raise DatasetError(f"no inter-ocular convention for {num_points}-point annotations (need 5 or 68)")


def regression_errors(src_train, dst_train, src_test, dst_test, iod: np.ndarray, size: int) -> np.ndarray:
    """(N, K) point-to-point errors / iod in percent of the ridge regressor from src to dst points."""
    n = len(src_train)
    predict = ridge_fit(src_train.reshape(n, -1) / size, dst_train.reshape(n, -1) / size)
    pred = predict(src_test.reshape(len(src_test), -1) / size).reshape(dst_test.shape) * size
    return 100 * np.linalg.norm(pred - dst_test, axis=-1) / iod[:, None]


def regression_error(src_train, dst_train, src_test, dst_test, iod: np.ndarray, size: int) -> float:
    """Mean over test images of mean point-to-point error / iod, in percent."""
    return float(regression_errors(src_train, dst_train, src_test, dst_test, iod, size).mean())


def forward_backward(train: Detections, test: Detections, size: int, seed: int = 0) -> dict:
    a, b = iod_indices(test.truth.shape[1])
    iod = np.linalg.norm(test.truth[:, a] - test.truth[:, b], axis=-1)
    rng = np.random.default_rng(seed)
    rows = []
    n_all = len(train.points)
    for n in [s for s in SUBSET_SIZES if s < n_all] + [n_all]:
        draws = 10 if n <= 100 else 1
        fwd, bwd = [], []
        for _ in range(draws):
            idx = rng.choice(n_all, n, replace=False) if n < n_all else np.arange(n_all)
            fwd.append(regression_error(train.points[idx], train.truth[idx], test.points, test.truth, iod, size))
            bwd.append(regression_error(train.truth[idx], train.points[idx], test.truth, test.points, iod, size))
        rows.append({"train_images": int(n), "forward": float(np.mean(fwd)), "backward": float(np.mean(bwd))})
    mean_shape = float(100 * (np.linalg.norm(train.truth.mean(0) - test.truth, axis=-1).mean(1) / iod).mean())
    # which discovered points the annotations predict badly (all training images): the backward error's parts
    per_point = regression_errors(train.truth, train.points, test.truth, test.points, iod, size).mean(0)
    return {"mean_shape_forward": mean_shape, "backward_per_landmark": per_point.round(3).tolist(),
            "regressor": f"ridge with intercept, lambda={RIDGE_LAMBDA} x max(X'X), coordinates / input size",
            "normalisation": "eye centres" if test.truth.shape[1] == 5 else "outer eye corners",
            "subsets": rows, "forward": rows[-1]["forward"], "backward": rows[-1]["backward"]}


@torch.no_grad()
def consistency_error(model: LandmarkHourglass, images: torch.Tensor, seed: int = 0,
                      rotation_sd: float = CONSISTENCY_ROTATION_SD, points: np.ndarray | None = None) -> np.ndarray:
    """(K,) mean ||detect(A(y)) - A(detect(y))|| per landmark in px of a 128 input. `points`: detect(y)
    where the caller has them already (N, K, 2), so they are not computed again."""
    g = torch.Generator().manual_seed(seed)
    size = model.config.input_size
    errors = []
    for start, chunk in zip(range(0, len(images), 64), images.split(64)):
        n = len(chunk)
        m = similarity_matrix(torch.randn(n, generator=g) * rotation_sd, torch.ones(n), torch.zeros(n, 2),
                              center=(size - 1) / 2)
        found_here = detect_points_px(model, chunk) if points is None else torch.from_numpy(points[start:start + n])
        moved = apply_affine(found_here, m)
        found = detect_points_px(model, warp_images(chunk, m))
        errors.append(torch.linalg.norm(found - moved, dim=-1))
    return (torch.cat(errors).mean(0) * (128 / size)).numpy()


def _pictures(out: Path, det: Detections, per_landmark: np.ndarray, title: str) -> None:
    from training.plots import _pyplot, overlay_grid

    if len(det.images):
        n = len(det.images)
        overlay_grid(det.images, det.points[:n], out / "landmarks.png", cols=6)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(len(per_landmark)), per_landmark, color=plt.cm.tab10(np.linspace(0, 1, len(per_landmark))))
    ax.set_xlabel("landmark")
    ax.set_ylabel("consistency error (px at 128)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out / "consistency.png", dpi=100)
    plt.close(fig)


def evaluate(detector_path: Path, train: str | None, test: str | None, images: str | None,
             out: Path | None, core_path: Path | None = None, consistency_images: int = 1000,
             seed: int = 0, train_split: str | None = None, test_split: str | None = None,
             device: str = "auto", precision: str | None = None) -> dict:
    if precision is None:
        model, meta = load_detector(detector_path, core_path)
        model = model.to(resolve_device(device))
    else:
        model, meta = load_served(detector_path, precision, core_path)
    size = model.config.input_size
    result: dict = {"detector": str(detector_path), "kind": meta["kind"], "mode": meta.get("mode", "proposed"),
                    "category": meta.get("category", ""), "num_landmarks": model.config.num_landmarks,
                    "precision": f"{precision} (onnxruntime, as served)" if precision else "fp32 (PyTorch)"}
    if train and test:
        train_data, test_data = open_dataset(train).subset(train_split), open_dataset(test).subset(test_split)
        margin = points_margin(train)
        train_det = detect_dataset(model, train_data, margin)
        test_det = detect_dataset(model, test_data, margin, keep_tensors=consistency_images)
        result.update(forward_backward(train_det, test_det, size, seed))
        result.update(train=train, test=test, train_images=len(train_det.points), test_images=len(test_det.points))
        cons_det = test_det
    elif images:
        cons_det = detect_dataset(model, open_dataset(images).subset(test_split), None,
                                  keep_tensors=consistency_images)
        result.update(images=images)
    else:
        raise DatasetError("give --train and --test (annotated data), or --images (consistency only)")
    if images:  # unlabelled photos: how many points sit on a near-white background (shoes on white)
        on_white = background_points(cons_det.tensors.numpy(), cons_det.points[:len(cons_det.tensors)])
        result.update(background_points_per_image=round(float(on_white.mean()), 3),
                      background_points_protocol="points whose 7x7 neighbourhood is >= 90% near-white "
                                                 "(every channel >= 0.92) or padding (exactly black, or within "
                                                 "2 px of it), or outside the crop")
    per_landmark = consistency_error(model, cons_det.tensors, seed, points=cons_det.points[:len(cons_det.tensors)])
    result.update(consistency=float(per_landmark.mean()), consistency_per_landmark=per_landmark.round(3).tolist(),
                  spread=round(point_spread(cons_det.points[:len(cons_det.tensors)], size), 3),
                  consistency_images=len(cons_det.tensors),
                  consistency_protocol=f"rotation N(0, {CONSISTENCY_ROTATION_SD} deg) about the centre, px at 128")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2))
        (out / "evaluation.md").write_text(markdown(result))
        _pictures(out, cons_det, per_landmark, f"{result['category'] or detector_path.stem} ({result['mode']})")
    return result


def markdown(result: dict) -> str:
    lines = []
    if "precision" in result and not result["precision"].startswith("fp32 (PyTorch)"):
        lines.append(f"Points as served: {result['precision']}.\n")
    if "subsets" in result:
        lines += ["| regressor training images | forward (%) | backward (%) |", "|---|---|---|"]
        lines += [f"| {r['train_images']} | {r['forward']:.2f} | {r['backward']:.2f} |" for r in result["subsets"]]
        paper = PAPER.get(result["mode"], {})
        if paper:
            lines.append(f"| paper, AFLW, all ({result['mode']}) | {paper['forward']:.2f} | {paper['backward']:.2f} |")
        reference = (f"Regressor: {result['regressor']}; normalised by {result['normalisation']}. "
                     f"Reference: predicting the mean training shape for every test image gives "
                     f"{result['mean_shape_forward']:.2f}% (landmarks with no information).")
        lines += ["", reference, ""]
        if "backward_per_landmark" in result:
            parts = ", ".join(f"{i + 1}: {e:.2f}" for i, e in enumerate(result["backward_per_landmark"]))
            lines += [f"Backward error per discovered landmark (all training images; %): {parts}.", ""]
    lines.append(f"Consistency: {result['consistency']:.2f} px at 128 ({result['consistency_images']} images; "
                 f"{result['consistency_protocol']}).")
    if "spread" in result:
        lines.append(f"Spread: the points lie {result['spread']:.2f} px at 128 from their centroid (root mean "
                     "square, mean over the same images; read beside consistency, which favours points that "
                     "gather near the centre).")
    if "background_points_per_image" in result:
        lines.append(f"Points on the background: {result['background_points_per_image']:.2f} of "
                     f"{result['num_landmarks']} per image ({result['background_points_protocol']}).")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--adapter", type=Path, help="an adapter file (folded with --core)")
    what.add_argument("--network", type=Path, help="a baseline's full network file (finetune / scratch)")
    parser.add_argument("--core", type=Path, default=None,
                        help="core for --adapter (default: the core whose fingerprint the adapter names, "
                             "beside it or in the shipped adapters/)")
    parser.add_argument("--train", help="annotated regressor-training data, e.g. mtfl:.../new_training.txt")
    parser.add_argument("--test", help="annotated test data, e.g. mtfl:.../new_testing.txt or 300w:<folder>")
    parser.add_argument("--images", help="unlabelled images for consistency only, e.g. folder:.../cats")
    parser.add_argument("--train-split", default=None, help="START:STOP subset of --train (e.g. :2000 for a quick look)")
    parser.add_argument("--test-split", default=None, help="START:STOP subset of --test or --images")
    parser.add_argument("--consistency-images", type=int, default=1000, help="how many images for consistency")
    parser.add_argument("--out", type=Path, default=None, help="folder for evaluation.json/.md and pictures")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda or cuda:N; "
                                                         "fp32 everywhere, so numbers compare across machines")
    parser.add_argument("--precision", choices=["fp32", "int8"], default=None,
                        help="score the adapter as the server runs it (ONNX Runtime on the CPU, crops rounded to "
                             "8-bit pixels): int8 needs an int8 calibration (landmarks calibrate) and is what the "
                             "default server answers for such an adapter; default: the folded network in PyTorch fp32")


def main(args: argparse.Namespace) -> int:
    path = args.adapter or args.network
    try:
        result = evaluate(path, args.train, args.test, args.images, args.out, args.core,
                          args.consistency_images, args.seed, args.train_split, args.test_split, args.device,
                          args.precision)
    except (ArtifactError, DatasetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(result), end="")
    if "forward" in result:
        print(f"forward: {result['forward']:.2f}")
        print(f"backward: {result['backward']:.2f}")
    print(f"consistency: {result['consistency']:.2f}")
    return 0
