"""The file formats: a core, an adapter, or a full network, each one `safetensors` file.

Every file carries string metadata (`__metadata__`):

    format_version   "1"
    kind             "core" | "adapter" | "network" (a baseline: all weights, no projection)
    config           the HourglassConfig as JSON (K, widths, depth, input size, normalisation)
    num_landmarks, input_size, normalization (JSON mean/std), landmark_names (JSON list)
    core_sha256      core: its own content fingerprint; adapter: the exact core it adapts
    category         adapter/network: what it finds landmarks on
    targets          adapter: which convs carry projections ("all" or "3x3")
    command, created, training_seconds, metrics (JSON), license   provenance

The fingerprint is the SHA-256 of the tensors as stored (names, dtypes, shapes, bytes), so
re-saving with other metadata keeps it. Loading never unpickles: we parse the safetensors
header ourselves, reject pickle and zip (torch.save) content by its magic bytes, and check
names, shapes, dtypes, finiteness, version and fingerprint with a message that says what to do.

Reading needs numpy only (`safetensors.numpy`): an artifact holds numpy `arrays`, which the serving
side (`landmarks.runtime`) runs; `tensors`, the same as torch tensors, and the `save_*` functions of
torch models are for training and need torch.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save_numpy

from landmarks.artifact_checks import (
    ALLOWED_DTYPES,
    MAX_HEADER,
    MAX_INPUT_SIZE_FACTOR,
    ArtifactError,
    BatchNormError,
    CoreMismatchError,
    MetadataError,
    NonFiniteError,
    NotSafetensorsError,
    PickleFileError,
    TensorMismatchError,
    TooLargeError,
    check_metadata,
    check_tensors,
    parse_header,
)
from landmarks.fingerprint import dense, tensor_fingerprint
from landmarks.runtime.architecture import HourglassConfig, adapter_shapes, network_shapes
from landmarks.text import clip

if TYPE_CHECKING:
    import torch

    from landmarks.hourglass import LandmarkHourglass

__all__ = [
    "FORMAT_VERSION",
    "Adapter",
    "ArtifactError",
    "BatchNormError",
    "Core",
    "CoreMismatchError",
    "MetadataError",
    "Network",
    "NonFiniteError",
    "NotSafetensorsError",
    "PickleFileError",
    "TensorMismatchError",
    "TooLargeError",
    "default_landmark_names",
    "find_core",
    "load_adapter",
    "load_core",
    "load_network",
    "read_artifact",
    "save_adapter",
    "save_core",
    "save_network",
    "save_with_metadata",
    "tensor_fingerprint",
]

FORMAT_VERSION = "1"


def default_landmark_names(k: int) -> list[str]:
    return [f"p{i + 1}" for i in range(k)]


# ---------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class _Artifact:
    config: HourglassConfig
    arrays: dict[str, np.ndarray]  # as stored (a core: float16), read-only views of the file's bytes
    metadata: dict[str, str]
    sha256: str  # fingerprint of this file's tensors

    @functools.cached_property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The arrays as torch tensors (training, the torch backends; needs torch)."""
        import torch

        return {k: torch.from_numpy(np.array(v)) for k, v in self.arrays.items()}

    @property
    def num_landmarks(self) -> int:
        return self.config.num_landmarks

    @functools.cached_property
    def landmark_names(self) -> list[str]:
        """K names: the file's own (checked when it was read), else p1 .. pK. Parsed once (a server
        reads them for every answer); callers must not change the list."""
        names = json.loads(self.metadata.get("landmark_names", "[]"))
        return names or default_landmark_names(self.num_landmarks)

    def num_parameters(self) -> int:
        return sum(a.size for k, a in self.arrays.items() if not k.endswith(("running_mean", "running_var",
                                                                              "num_batches_tracked")))

    def num_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values())


@dataclass(frozen=True)
class Core(_Artifact):
    def build(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> LandmarkHourglass:
        """The core as a torch network (float32 unless `dtype`), in eval mode."""
        import torch

        from landmarks.hourglass import LandmarkHourglass

        model = LandmarkHourglass(self.config)
        model.load_state_dict(self.float_state(dtype or torch.float32))
        return model.to(device).eval()

    def float_state(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        import torch

        dtype = dtype or torch.float32
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in self.tensors.items()}


@dataclass(frozen=True)
class Adapter(_Artifact):
    @property
    def category(self) -> str:
        return self.metadata["category"]

    @property
    def core_sha256(self) -> str:
        return self.metadata["core_sha256"]

    @property
    def targets(self) -> str:
        return self.metadata["targets"]


@dataclass(frozen=True)
class Network(_Artifact):
    """A baseline's full network (finetune / scratch): every weight, no projection."""

    @property
    def category(self) -> str:
        return self.metadata.get("category", "")

    def build(self, device: torch.device | str = "cpu") -> LandmarkHourglass:
        from landmarks.hourglass import LandmarkHourglass

        model = LandmarkHourglass(self.config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in self.tensors.items()})
        return model.to(device).eval()


# ----------------------------------------------------------------------------------------- saving
def _base_metadata(kind: str, config: HourglassConfig, landmark_names: list[str] | None, extra: Mapping[str, object]):
    names = list(landmark_names or [])
    if names and len(names) != config.num_landmarks:
        raise ValueError(f"{len(names)} landmark names for K={config.num_landmarks}")
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "config": config.to_json(),
        "num_landmarks": str(config.num_landmarks),
        "input_size": str(config.input_size),
        "normalization": json.dumps({"mean": list(config.mean), "std": list(config.std)}),
        "landmark_names": json.dumps(names),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    for key, value in extra.items():
        if value is None:
            continue
        meta[key] = value if isinstance(value, str) else json.dumps(value)
    return meta


def _write(path: Path | str, tensors: Mapping[str, Any], metadata: dict[str, str]) -> Path:
    """Torch tensors (training's) or numpy arrays (an artifact's own), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if all(isinstance(v, np.ndarray) for v in tensors.values()):
        data = _st_save_numpy({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    else:
        from safetensors.torch import save

        data = save({k: dense(v) for k, v in tensors.items()}, metadata=metadata)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)  # atomic: readers never see a half-written file
    return path


def save_core(
    path: Path | str,
    model: LandmarkHourglass,
    landmark_names: list[str] | None = None,
    dtype: torch.dtype | None = None,
    **provenance: object,
) -> str:
    """Store a trained core (fp16 by default, ~13 MB for the paper preset); returns its fingerprint."""
    import torch

    dtype = dtype or torch.float16
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()
               if not k.endswith("num_batches_tracked")}
    fingerprint = tensor_fingerprint(tensors)
    meta = _base_metadata("core", model.config, landmark_names, {"core_sha256": fingerprint, **provenance})
    _write(path, tensors, meta)
    return fingerprint


def save_adapter(
    path: Path | str,
    tensors: Mapping[str, torch.Tensor],
    config: HourglassConfig,
    category: str,
    core_sha256: str,
    targets: str = "all",
    landmark_names: list[str] | None = None,
    **provenance: object,
) -> Path:
    """Store an adapter (float32: the projections sit close to identity and fp16 would blur them)."""
    meta = _base_metadata("adapter", config, landmark_names,
                          {"category": category, "core_sha256": core_sha256, "targets": targets, **provenance})
    return _write(path, {k: v.float() for k, v in tensors.items()}, meta)


def save_with_metadata(path: Path | str, adapter: Adapter, **metadata: str) -> Path:
    """`adapter`'s tensors, unchanged (its fingerprint too), with `metadata` added to its own (e.g. an
    int8 calibration), written atomically to `path`."""
    return _write(path, adapter.arrays, {**adapter.metadata, **metadata})


def save_network(path: Path | str, model: LandmarkHourglass, category: str, **provenance: object) -> Path:
    tensors = {k: v.float() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    meta = _base_metadata("network", model.config, None, {"category": category, **provenance})
    return _write(path, tensors, meta)


# ---------------------------------------------------------------------------------------- loading
def read_artifact(
    source: Path | str | bytes, expected_kind: str | None = None, max_bytes: int | None = None, name: str = ""
) -> Core | Adapter | Network:
    """Parse and validate any of our files (structure, metadata, tensors); no core check here."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "the adapter bytes"
    else:
        path = Path(source)
        label = name or str(path)
        if not path.is_file():
            raise ArtifactError(f"{label}: no such file")
        if max_bytes is not None and path.stat().st_size > max_bytes:
            raise TooLargeError(f"{label} is {path.stat().st_size} bytes, over the {max_bytes}-byte limit")
        data = path.read_bytes()
    if max_bytes is not None and len(data) > max_bytes:
        raise TooLargeError(f"{label} is {len(data)} bytes, over the {max_bytes}-byte limit")

    header = parse_header(data, label)
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise MetadataError(f"{label}: __metadata__ must map strings to strings")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise MetadataError(
            f"{label}: format_version {version!r} is not supported (this build reads {FORMAT_VERSION!r}); "
            "re-export the file with this version of landmark-adapters"
        )
    kind = meta.get("kind")
    if kind not in ("core", "adapter", "network"):
        raise MetadataError(f"{label}: kind {kind!r} must be 'core', 'adapter' or 'network'")
    if expected_kind and kind != expected_kind:
        raise MetadataError(f"{label} is a {kind} file, expected a {expected_kind}")
    required = {"config"} | ({"category", "core_sha256", "targets"} if kind == "adapter" else set())
    missing = sorted(required - set(meta))
    if missing:
        raise MetadataError(f"{label}: metadata lacks {missing}")
    try:
        config = HourglassConfig.from_json(meta["config"])
    except (ValueError, TypeError) as exc:
        raise MetadataError(f"{label}: bad config metadata: {exc}") from None
    check_metadata(label, kind, meta, config)

    for key, entry in header.items():  # numpy has no bfloat16: say so before safetensors fails on it
        dtype = entry.get("dtype") if isinstance(entry, dict) and key != "__metadata__" else None
        if dtype is not None and dtype not in ALLOWED_DTYPES:
            raise TensorMismatchError(f"{label}: tensor {clip(key)} has dtype {clip(dtype)}; store float16 or "
                                      "float32 (e.g. tensor.float() before saving)")
    try:
        tensors = _st_load(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises assorted error types for corrupt payloads
        raise NotSafetensorsError(f"{label}: corrupt safetensors payload ({exc})") from None

    if kind == "adapter":
        # The core's own K does not change an adapter's shapes (the head is new).
        expected = adapter_shapes(config, config.num_landmarks, meta["targets"])
    else:
        expected = network_shapes(config)
    check_tensors(label, tensors, expected)
    cls = {"core": Core, "adapter": Adapter, "network": Network}[kind]
    artifact = cls(config=config, arrays=tensors, metadata=dict(meta), sha256=tensor_fingerprint(tensors))
    if kind == "core" and meta.get("core_sha256") not in (None, artifact.sha256):
        raise MetadataError(f"{label}: tensors do not match the core_sha256 in its metadata (file corrupted or edited)")
    return artifact


def load_core(source: Path | str | bytes) -> Core:
    return read_artifact(source, expected_kind="core")  # type: ignore[return-value]


def load_network(source: Path | str | bytes) -> Network:
    return read_artifact(source, expected_kind="network")  # type: ignore[return-value]


def load_adapter(
    source: Path | str | bytes, core: Core, max_bytes: int | None = None, name: str = ""
) -> Adapter:
    """Load an adapter and check it against `core`: fingerprint and architecture."""
    adapter = read_artifact(source, expected_kind="adapter", max_bytes=max_bytes, name=name)
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview)) else "the adapter bytes")
    if adapter.core_sha256 != core.sha256:
        raise CoreMismatchError(
            f"{label} was trained against core {adapter.core_sha256[:12]}, but this core is {core.sha256[:12]}; "
            "adapt it again against this core (landmarks adapt --core ...)"
        )
    # K and the input size may differ (new head; the core is fully convolutional); nothing else may.
    if adapter.config.replace(num_landmarks=core.config.num_landmarks, input_size=core.config.input_size) != core.config:
        raise CoreMismatchError(f"{label}: its architecture config differs from the core's")
    largest = MAX_INPUT_SIZE_FACTOR * core.config.input_size
    if adapter.config.input_size > largest:
        raise MetadataError(f"{label}: input_size {adapter.config.input_size} is over {largest}, "
                            f"{MAX_INPUT_SIZE_FACTOR}x its core's {core.config.input_size}; adapt at a smaller size")
    return adapter  # type: ignore[return-value]


def find_core(adapter_path: Path | str, core_sha256: str, elsewhere: tuple[Path | str, ...] = ()) -> Path:
    """The core an adapter names (`core_sha256`): core.safetensors beside the adapter, else any core
    file beside it or in `elsewhere` (e.g. the shipped adapters/) whose fingerprint matches. Only
    headers are read until one matches; ArtifactError listing where it looked if none does."""
    folders = [Path(adapter_path).resolve().parent, *(Path(f) for f in elsewhere)]
    looked = []
    for folder in folders:
        candidates = [folder / "core.safetensors"] + sorted(set(folder.glob("*.safetensors")) - {folder / "core.safetensors"})
        for candidate in candidates:
            if not candidate.is_file():
                continue
            looked.append(str(candidate))
            try:
                with open(candidate, "rb") as fh:
                    head = fh.read(8)
                    size = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
                    header = parse_header(head + fh.read(min(size, MAX_HEADER)), str(candidate))
            except (OSError, ArtifactError):
                continue
            meta = header.get("__metadata__")
            meta = meta if isinstance(meta, dict) else {}
            if meta.get("kind") == "core" and meta.get("core_sha256") == core_sha256:
                return candidate
    raise ArtifactError(f"no core with fingerprint {core_sha256[:12]} beside {adapter_path} or in "
                        f"{', '.join(map(str, folders[1:])) or 'no other folder'} (looked at {len(looked)} files); "
                        "give it with --core FILE")
