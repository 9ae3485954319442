"""Regenerate the committed seed corpora and the artifact harness's tiny core.

    .venv/bin/python fuzz/make_seeds.py            # rewrites fuzz/data/ and fuzz/corpus/*/

Deterministic: fixed seeds and a fixed `created` date, so re-running gives the same bytes
(for the same torch and safetensors versions) and a clean `git diff`. The artifacts come from
`landmarks.hourglass.tiny_config` through the same helpers the tests use, so they are real,
valid files of a few KB each.
"""

from __future__ import annotations

import io
import json
import struct

import torch
from _common import IMAGE_PARAM_LEN, MODE_BOX, MODE_ENCODED, MODE_NAMES, MODE_RAW, ROOT
from PIL import Image

from landmarks.adapter_io import load_core, save_adapter, save_core, save_network
from landmarks.projection import adapter_state_dict, build_adapted
from tests.factories import make_tiny_core, randomize_adapter

FUZZ = ROOT / "fuzz"
DATA = FUZZ / "data"
CORPUS = FUZZ / "corpus"
CREATED = "2026-01-01T00:00:00+00:00"  # fixed, so regenerating does not churn the files

PARAM_LEN = IMAGE_PARAM_LEN


def _params(seed: int) -> bytes:
    """Parameter bytes that decode to a plausible box (the fuzzer mutates them from there)."""
    return bytes((seed * 37 + 11 * i) % 256 for i in range(PARAM_LEN))


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def canonical(data: bytes) -> bytes:
    """The same safetensors file with its metadata keys sorted: safetensors writes them in hash
    order, which differs from run to run (tensor entries and payload stay as they are)."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


def artifact_seeds() -> dict[str, bytes]:
    """Tiny core (also written to fuzz/data/), adapters of both target kinds, a network."""
    DATA.mkdir(parents=True, exist_ok=True)
    core_path = DATA / "tiny_core.safetensors"
    model = make_tiny_core(num_landmarks=5, seed=0)
    save_core(core_path, model, landmark_names=[f"core-{i}" for i in range(5)], created=CREATED)
    core_path.write_bytes(canonical(core_path.read_bytes()))
    core = load_core(core_path)
    out = {"core.safetensors": core_path.read_bytes()}
    tmp = DATA / "_tmp.safetensors"
    try:
        for name, k, targets, names in [
            ("adapter_k3_all", 3, "all", ["left eye", "right eye", "nose"]),
            ("adapter_k4_3x3", 4, "3x3", ["a", "b", "c", "d"]),
            ("adapter_k2_nonames", 2, "all", None),
        ]:
            adapted = build_adapted(core.build(), k, targets)
            randomize_adapter(adapted, seed=k)
            save_adapter(
                tmp,
                adapter_state_dict(adapted),
                adapted.config,
                category="mugs",
                core_sha256=core.sha256,
                targets=targets,
                landmark_names=names,
                created=CREATED,
            )
            out[f"{name}.safetensors"] = canonical(tmp.read_bytes())
        save_network(tmp, make_tiny_core(num_landmarks=3, seed=7), category="shoes", created=CREATED)
        out["network_k3.safetensors"] = canonical(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return out


def image_seeds() -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    rgb = Image.fromarray(torch.randint(0, 256, (12, 10, 3), generator=g, dtype=torch.uint8).numpy(), "RGB")
    grey = rgb.convert("L")
    rgba = rgb.convert("RGBA")
    pal = rgb.convert("P")
    encoded = {
        "png_rgb": _encode(rgb, "PNG"),
        "png_grey": _encode(grey, "PNG"),
        "png_rgba": _encode(rgba, "PNG"),
        "png_palette": _encode(pal, "PNG"),
        "png_small": _encode(rgb.resize((9, 7)), "PNG"),
        "png_16bit": _encode(grey.convert("I;16"), "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=50),
        "jpeg_progressive": _encode(rgb, "JPEG", quality=50, progressive=True),
        "jpeg_grey": _encode(grey, "JPEG", quality=50),
        "webp_lossy": _encode(rgb, "WEBP", quality=50),
        "webp_lossless": _encode(rgba, "WEBP", lossless=True),
        "bmp": _encode(rgb, "BMP"),
        "bmp_palette": _encode(pal, "BMP"),
        "gif_refused": _encode(rgb, "GIF"),  # a format the server refuses
    }
    out = {}
    for i, (name, payload) in enumerate(encoded.items()):
        out[f"enc_{name}"] = bytes([MODE_ENCODED]) + _params(i) + payload
    for i, (h, w, c) in enumerate([(8, 6, 3), (5, 7, 1), (6, 6, 4), (4, 4, 2), (3, 9, 3)]):
        params = struct.pack("<iii", h, w, c) + _params(100 + i)[12:]
        out[f"raw_{h}x{w}x{c}"] = bytes([MODE_RAW]) + params + bytes(range(256))[: h * w * c]
    for i in range(3):
        out[f"box_{i}"] = bytes([MODE_BOX]) + _params(200 + i) + struct.pack("<4d", 1.5, 2.0, 40.0 + i, 30.0)
    for i, text in enumerate(["cats", "faces-v2", "core", "shipped", "v1.safetensors", "A.b_c-1", "x" * 65]):
        out[f"names_{i}"] = bytes([MODE_NAMES]) + _params(300 + i) + text.encode()
    return out


def state_seeds() -> dict[str, bytes]:
    digest = "0123456789abcdef" * 4
    states = {
        "empty": {},
        "active": {"active": "v1"},
        "both": {"active": "v2.1_rc-3", "shipped_removed": digest},
        "nulls": {"active": None, "shipped_removed": None},
        "removed": {"shipped_removed": digest},
        "extra_key": {"active": "shipped", "note": [1, 2, {"x": None}]},
    }
    out = {name: json.dumps(value).encode() for name, value in states.items()}
    out["not_object"] = b'["v1"]'
    out["bad_utf8"] = b'{"active": "\xff"}'
    return out


def write(harness: str, seeds: dict[str, bytes]) -> None:
    folder = CORPUS / harness
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    print(f"{folder.relative_to(ROOT)}: {len(seeds)} files, {sum(map(len, seeds.values()))} bytes")


def main() -> None:
    torch.set_num_threads(1)
    write("fuzz_artifact", artifact_seeds())
    write("fuzz_image", image_seeds())
    write("fuzz_state", state_seeds())


if __name__ == "__main__":
    main()
