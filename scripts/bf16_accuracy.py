"""How far `--precision bf16` moves the shipped adapters' points from fp32's, on held-out images.

    python scripts/bf16_accuracy.py [--images 300]

For each shipped category, the last `--images` images of its held-out split (faces: the first of
AFLW_M's test list, `mtfl/new_testing.txt`; cats and shoes: the last of the folder sorted by path,
which `landmarks evaluate --test-split=-500:` scores), each whole image cropped to the adapter's
input size as the server does (`crop_square`), run through the folded network in fp32 and in
bfloat16 (weights and activations, as `--backend torchscript --precision bf16` runs it), and the
distance between the two points of each landmark, in px at 128 (the consistency error's unit):
mean, 99th percentile and largest. Prints also the speed of both on 8 crops at the adapter's size,
one thread (a batch worker's share on 2 cores).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from landmarks.adapter_io import load_adapter, load_core
from landmarks.geometry import square_box
from landmarks.hardware import cpu_bf16_flags
from landmarks.heatmaps import locate
from landmarks.images import crop_square, pixels_to_images
from landmarks.projection import fold

ROOT = Path(__file__).resolve().parents[1]


def held_out(data: Path, category: str, n: int) -> list[Path]:
    if category == "faces":
        lines = (data / "mtfl" / "new_testing.txt").read_text().splitlines()[:n]
        return [data / "mtfl" / line.split()[0].replace("\\", "/") for line in lines]
    return sorted((data / category).rglob("*.jpg"))[-n:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="held-out images per category (default 300)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="the datasets")
    parser.add_argument("--adapters", type=Path, default=ROOT / "adapters", help="shipped adapters and core")
    args = parser.parse_args()
    torch.set_num_threads(1)
    core = load_core(args.adapters / "core.safetensors")
    print(f"CPU native bf16: {', '.join(cpu_bf16_flags()) or 'none (bf16 is emulated here: slow)'}")
    print("category  size  images  mean  p99  max (px at 128)   8 crops, 1 thread: fp32 ms  bf16 ms")
    for category in ("faces", "cats", "shoes"):
        adapter = load_adapter((args.adapters / f"{category}.safetensors").read_bytes(), core)
        size = adapter.config.input_size
        crops = []
        for path in held_out(args.data, category, args.images):
            image = Image.open(path).convert("RGB")
            crops.append(crop_square(image, square_box((0.0, 0.0, float(image.width), float(image.height))), size))
        images = pixels_to_images(torch.from_numpy(np.stack(crops))).contiguous(memory_format=torch.channels_last)
        fp32 = fold(core.build(), adapter.tensors, adapter.config).eval().to(memory_format=torch.channels_last)
        bf16 = fold(core.build(), adapter.tensors, adapter.config).eval().to(torch.bfloat16,
                                                                           memory_format=torch.channels_last)
        with torch.inference_mode():
            want = torch.cat([fp32(chunk) for chunk in images.split(32)]).float()
            got = torch.cat([bf16(chunk.to(torch.bfloat16)) for chunk in images.split(32)]).float()
            times = {}
            for name, model, dtype in (("fp32", fp32, torch.float32), ("bf16", bf16, torch.bfloat16)):
                batch = images[:8].to(dtype)
                model(batch)
                runs = []
                for _ in range(5):
                    t = time.perf_counter()
                    model(batch)
                    runs.append((time.perf_counter() - t) * 1e3)
                times[name] = statistics.median(runs)
        distance = (locate(want, size)[0] - locate(got, size)[0]).norm(dim=-1).flatten() * 128 / size
        print(f"{category:8s} {size:5d} {len(crops):7d}  {distance.mean():.3f} {distance.quantile(0.99):.3f} "
              f"{distance.max():.3f}   {times['fp32']:24.1f} {times['bf16']:8.1f}")


if __name__ == "__main__":
    main()
