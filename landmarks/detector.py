"""Landmarks in your own process: image in, points out, no server.

    from landmarks import Detector

    detector = Detector.load("faces")                  # the shipped adapters/ (or adapters=DIR,
                                                       # or core=FILE, adapter=FILE; device="cuda")
    result = detector.detect("examples/face.jpg")      # a path, bytes, PIL image or HxWx3 uint8 array
    result.points                                      # (K, 2) float32: (x, y) in the image's pixels
    result.confidences                                 # (K,) the peak of each landmark's softmax map
    result.names                                       # K names (p1 .. pK unless the adapter names them)
    results = detector.detect([img1, img2])            # a list in, a list out (one forward per 16)

The numbers are the default server's (`landmarks serve` + `landmarks.client`), within 1e-3 px: both
run the category on the inference runtime (`landmarks.runtime`: the numpy fold, the same ONNX graph,
ONNX Runtime, int8 where the adapter is calibrated and the CPU runs int8 natively, i.e. the server's
`--precision auto`; `precision="fp32"` runs fp32 as `--precision fp32` does), crop with the same
functions (`landmarks.runtime.crops`), and read images with PIL as they are stored (no EXIF rotation).
`tests/serving/test_detector_agreement.py` compares the two. Needs no torch.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from landmarks import store_layout
from landmarks.adapter_io import Adapter, ArtifactError, Core, load_adapter, load_core
from landmarks.runtime.crops import Box, crop_decoding, square_box
from landmarks.runtime.sessions import Runtime

__all__ = ["Detector", "Landmarks", "default_adapters_dir"]

# the repository's adapters/ next to the package (an editable install, a checkout); a wheel install
# names its own with adapters=DIR or $LANDMARKS_ADAPTERS
_REPO_ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"


def default_adapters_dir() -> Path:
    """$LANDMARKS_ADAPTERS if set, else the repository's adapters/ (what `landmarks serve` loads)."""
    env = os.environ.get("LANDMARKS_ADAPTERS")
    return Path(env) if env else _REPO_ADAPTERS


@dataclass(frozen=True)
class Landmarks:
    """One image's landmarks: `points[i]` is `names[i]` at (x, y) in the image's pixels (pixel centres
    at integers), with confidence `confidences[i]`."""

    points: np.ndarray       # (K, 2) float32
    confidences: np.ndarray  # (K,) float32
    names: list[str]
    category: str
    box: Box                 # the square crop the model saw, in the image's pixels (edge coordinates)
    image_size: tuple[int, int]  # (width, height)

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the same keys as the server's answer (`landmarks.client.DetectResult.to_dict`)."""
        return {
            "category": self.category,
            "box": [float(v) for v in self.box],
            "landmarks": [{"name": n, "x": float(x), "y": float(y), "confidence": float(c)}
                          for n, (x, y), c in zip(self.names, self.points, self.confidences)],
        }

    def __repr__(self) -> str:
        width, height = self.image_size
        lines = [f"Landmarks({self.category!r}: {len(self)} points in a {width}x{height} image"]
        wide = max((len(n) for n in self.names), default=0)
        for name, (x, y), c in zip(self.names, self.points, self.confidences):
            lines.append(f"  {name:<{wide}}  x {x:8.2f}  y {y:8.2f}  confidence {c:.3f}")
        return "\n".join(lines) + ")"


class Detector:
    """One category's adapter folded into the core, ready to run; `Detector.load` makes one.

    `precision`: "auto" (default, what the default server runs: int8 for an adapter that carries an int8
    calibration on a CPU with 8-bit dot products, else fp32), "fp32" or "int8". `threads`: the ONNX
    Runtime session's (default: the physical cores)."""

    def __init__(self, core: Core, adapter: Adapter, device: str = "cpu", batch_size: int = 16,
                 precision: str = "auto", threads: int | None = None) -> None:
        self.device = _device(device)
        self.core = core
        self.adapter = adapter
        self.category = adapter.category
        self.names = adapter.landmark_names
        self.input_size = adapter.config.input_size
        self.batch_size = max(1, int(batch_size))
        # its own arena: a library user's process may hold several detectors and sessions of its own
        runtime = Runtime(core, self.device, threads, precision=precision, share_arena=False)
        self.model = runtime.prepare(adapter)  # ValueError for int8 without a calibration, non-finite weights
        self.precision = self.model.precision

    @classmethod
    def load(cls, category: str | None = None, *, adapters: str | Path | None = None,
             core: str | Path | None = None, adapter: str | Path | None = None, version: str | None = None,
             device: str = "cpu", precision: str = "auto") -> Detector:
        """The detector of `category`, from an adapters directory as `landmarks serve` reads it
        (`adapters`, default: the repository's adapters/ or $LANDMARKS_ADAPTERS): its core.safetensors
        and the category's active version (a registered one, else <category>.safetensors); or from
        explicit files, `adapter=FILE` (and `core=FILE`, default: the directory's core). `version`
        picks a registered version ("shipped": the flat file). `device`: "cpu", "cuda", "cuda:1", "auto"
        (CUDA needs onnxruntime-gpu). `precision`: "auto" (the default server's), "fp32" or "int8".
        Raises FileNotFoundError / ValueError (landmarks.adapter_io.ArtifactError) saying what to do."""
        directory = Path(adapters) if adapters is not None else default_adapters_dir()
        if adapter is None:
            if not category:
                raise ValueError("name a category, e.g. Detector.load('faces'), or an adapter file: "
                                 f"Detector.load(adapter='runs/mugs/adapter.safetensors'); in {directory}: "
                                 f"{', '.join(cls.categories(directory)) or 'none'}")
            _check_names(directory, category, version)
        core_file = Path(core) if core is not None else directory / "core.safetensors"
        if not core_file.is_file():
            hint = ("pass core=FILE" if core is None else "check the path")
            raise FileNotFoundError(f"no core file at {core_file}; {hint} (or adapters=DIR with a core.safetensors)")
        loaded_core = load_core(core_file)
        if adapter is None:
            adapter, loaded = _served_adapter(directory, category, version, loaded_core)
        else:
            loaded = load_adapter(adapter, loaded_core)
        if category and loaded.category != category:
            raise ValueError(f"{adapter} is an adapter for {loaded.category!r}, not {category!r}")
        return cls(loaded_core, loaded, device, precision=precision)

    @staticmethod
    def categories(adapters: str | Path | None = None) -> list[str]:
        """The categories an adapters directory holds (flat files and registered versions)."""
        directory = Path(adapters) if adapters is not None else default_adapters_dir()
        return sorted(store_layout.scan(directory))

    def detect(self, image: Any, box: Sequence[float] | Sequence[Sequence[float] | None] | None = None
               ) -> Landmarks | list[Landmarks]:
        """Landmarks of one image (a path, encoded bytes, a PIL image, an H x W (x 1|3|4) uint8 array),
        or of a list of them (then a list). `box` (x0, y0, x1, y1, image pixels, edge coordinates):
        where the object is (default: the whole image); made square around its centre as the server
        does; for a list, one box per image (or None)."""
        if isinstance(image, (list, tuple)):
            boxes = list(box) if box is not None else [None] * len(image)
            if len(boxes) != len(image):
                raise ValueError(f"{len(boxes)} boxes for {len(image)} images; give one per image (or None)")
            return self._detect([_open(im) for im in image], boxes)
        return self._detect([_open(image)], [box])[0]

    __call__ = detect

    def _detect(self, images: list[tuple[Image.Image, str]], boxes: list[Sequence[float] | None]
                ) -> list[Landmarks]:
        size = self.input_size
        sizes = [im.size for im, _ in images]
        squares = [_square(b, *wh) for wh, b in zip(sizes, boxes)]
        # as the server (serving.preprocess.decode_crop): a large JPEG is decoded smaller
        crops = [crop_decoding(image, square, size, partial(_loaded, label=label))
                 for (image, label), square in zip(images, squares)]
        out: list[Landmarks] = []
        for start in range(0, len(images), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(images)))
            pixels = np.stack([crops[i] for i in chunk])
            points, confidence = self.model.locate(pixels, np.array([squares[i] for i in chunk], np.float64))
            for j, i in enumerate(chunk):
                out.append(Landmarks(points[j], confidence[j], list(self.names), self.category, squares[i],
                                     sizes[i]))
        return out

    def __repr__(self) -> str:
        return (f"Detector({self.category!r}, K={len(self.names)}, {self.input_size} px, "
                f"adapter {self.adapter.sha256[:12]}, core {self.core.sha256[:12]}, device {self.device}, {self.precision})")


def to_rgb(image: Any) -> Image.Image:
    """A path, encoded bytes (JPEG, PNG, WebP, BMP, ...), a PIL image, or an H x W, H x W x 1|3|4 uint8
    array (numpy, or anything with .numpy()) -> a decoded RGB PIL image, pixels as stored."""
    return _loaded(*_open(image))


def _open(image: Any) -> tuple[Image.Image, str]:
    """`to_rgb`'s image with, for a path or bytes, only the header read (so that a large JPEG can be
    decoded smaller, `decode_scale`), and a label for errors."""
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as fh:  # FileNotFoundError names the path
            return _open_encoded(fh.read(), str(image)), str(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open_encoded(bytes(image), "the image bytes"), "the image bytes"
    if isinstance(image, Image.Image):
        # decoded as it is (a caller's image is never drafted smaller in place)
        return _loaded(image, "the image"), "the image"
    if hasattr(image, "numpy") and not isinstance(image, np.ndarray):  # a torch tensor
        image = image.detach().cpu().numpy() if hasattr(image, "detach") else image.numpy()
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"an image array must be uint8 (0-255), got {image.dtype}; e.g. "
                             "(array * 255).round().astype(np.uint8) for floats in [0, 1]")
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be H x W, H x W x 1, 3 (RGB) or 4 (RGBA), got shape {image.shape}")
        rgb = Image.fromarray(np.ascontiguousarray(image))
        return (rgb if rgb.mode == "RGB" else rgb.convert("RGB")), "the image array"
    raise TypeError(f"cannot read a {type(image).__name__} as an image: give a path, bytes, a PIL image "
                    "or an H x W x 3 uint8 array")


def _open_encoded(data: bytes, label: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ValueError(f"{label}: not an image PIL can read ({len(data)} bytes starting {data[:8]!r})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{label}: image header is truncated or corrupt ({exc})") from None


def _loaded(image: Image.Image, label: str) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{label}: image data is truncated or corrupt ({exc})") from None
    return image if image.mode == "RGB" else image.convert("RGB")


def _square(box: Sequence[float] | None, width: int, height: int) -> Box:
    """The square box the model sees, as the server makes it (`serving.preprocess.resolve_box`)."""
    if box is None:
        return square_box((0.0, 0.0, float(width), float(height)))
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise ValueError(f"box coordinates must be finite, got {box!r}")
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise ValueError(f"a box needs x1 > x0 and y1 > y0 (at least 1 px), got {box!r}")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise ValueError(f"box {box!r} lies outside the {width}x{height} image")
    return square_box((x0, y0, x1, y1))


def _device(device: Any) -> str:
    """'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA where ONNX Runtime has it: onnxruntime-gpu and a GPU)."""
    text = str(device)
    if text == "auto":
        import onnxruntime as ort

        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return text


def _check_names(directory: Path, category: str, version: str | None) -> None:
    if not store_layout.CATEGORY_RE.fullmatch(category):
        raise ValueError(f"category {category!r}: lower-case letters, digits, '_' and '-' only (it names a file)")
    if version is not None and not store_layout.VERSION_RE.fullmatch(version):
        raise ValueError(f"version {version!r}: letters, digits, '.', '_' and '-' only")
    if not directory.is_dir():
        raise FileNotFoundError(f"no adapters directory at {directory}: pass adapters=DIR (a directory with "
                                "core.safetensors and <category>.safetensors), set $LANDMARKS_ADAPTERS, or "
                                "give core=FILE and adapter=FILE")


def _served_adapter(directory: Path, category: str, version: str | None, core: Core) -> tuple[Path, Adapter]:
    """The file `landmarks serve` would serve for `category` (or its `version`) and its adapter, by the
    store's rules (`landmarks.store_layout`): the state's active version, else the newest that loads;
    a shipped file unregistered on the server is not a version."""
    versions = store_layout.scan(directory, category).get(category, {})
    try:
        state = store_layout.read_state(directory, category)
    except (OSError, ValueError):
        state = {}  # as the server: a bad state file costs only the choice of the active version
    loaded: dict[str, Adapter | Exception] = {}

    def load(name: str) -> Adapter | Exception:
        if name not in loaded:
            try:
                loaded[name] = load_adapter(versions[name], core)
            except (ArtifactError, OSError) as exc:
                loaded[name] = exc
        return loaded[name]

    removed = state.get("shipped_removed")
    if removed and store_layout.SHIPPED in versions:
        shipped = load(store_layout.SHIPPED)
        if isinstance(shipped, Adapter) and shipped.sha256 == removed:
            del versions[store_layout.SHIPPED]
    if not versions:
        known = Detector.categories(directory)
        raise FileNotFoundError(f"no adapter for {category!r} in {directory} (no {category}{store_layout.SUFFIX} "
                                f"or {category}/*{store_layout.SUFFIX}); it holds: {', '.join(known) or 'no categories'}")
    if version is not None:
        if version not in versions:
            raise FileNotFoundError(f"{category!r} has no version {version!r} in {directory}; it has "
                                    f"{', '.join(sorted(versions))}")
        name = version
    else:
        created = {v: store_layout.created(path) for v, path in versions.items()}
        name = store_layout.pick_active(state, created, lambda v: isinstance(load(v), Adapter))
        if name is None:  # none loads: the newest one's reason
            name = store_layout.newest_first(created)[0]
    result = load(name)
    if isinstance(result, Exception):
        raise result
    return versions[name], result
