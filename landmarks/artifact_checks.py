"""What a core, adapter or network file must satisfy before anything uses it: the errors that say
what is wrong and what to do, the safetensors header parsed without unpickling anything, and the
metadata and tensor invariants the fold relies on (names, shapes, dtypes, finiteness, batch-norm
variances). `landmarks.adapter_io` reads files through these checks."""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping

import numpy as np

from landmarks.runtime.architecture import HourglassConfig
from landmarks.runtime.fold import first_non_finite
from landmarks.text import clip

__all__ = [
    "ALLOWED_DTYPES",
    "MAX_HEADER",
    "MAX_INPUT_SIZE_FACTOR",
    "MAX_METADATA_VALUE_CHARS",
    "MAX_NAME_CHARS",
    "ArtifactError",
    "BatchNormError",
    "CoreMismatchError",
    "MetadataError",
    "NonFiniteError",
    "NotSafetensorsError",
    "PickleFileError",
    "TensorMismatchError",
    "TooLargeError",
    "check_metadata",
    "check_tensors",
    "parse_header",
]

# safetensors' dtype names of the tensors a file may hold (bfloat16 has no numpy type: save float16 or float32)
ALLOWED_DTYPES = {"F16": "float16", "F32": "float32"}
MAX_HEADER = 16 * 1024 * 1024


class ArtifactError(ValueError):
    """A core/adapter/network file is unusable; the message says why and what to do."""


class NotSafetensorsError(ArtifactError):
    pass


class PickleFileError(NotSafetensorsError):
    pass


class MetadataError(ArtifactError):
    pass


class TensorMismatchError(ArtifactError):
    pass


class NonFiniteError(ArtifactError):
    pass


class BatchNormError(ArtifactError):
    """A batch-norm statistic the fold cannot use (a negative running_var)."""


class CoreMismatchError(ArtifactError):
    """The adapter was trained against another core (serving: FAILED_PRECONDITION)."""


class TooLargeError(ArtifactError):
    pass


MAX_NAME_CHARS = 64          # one landmark name
MAX_METADATA_VALUE_CHARS = 64 * 1024  # any other metadata value (commands and metrics are long)
# how much larger than its core's input an adapter may run the (fully convolutional) core: memory
# and time grow with the square of the side, and a file must not be able to take the server down
MAX_INPUT_SIZE_FACTOR = 2



def parse_header(data: bytes, source: str) -> dict:
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        raise PickleFileError(
            f"{source} is a Python pickle, which we never load (unpickling runs arbitrary code). "
            "Convert the weights to safetensors (safetensors.torch.save_file) and try again."
        )
    if data[:4] == b"PK\x03\x04":
        raise PickleFileError(
            f"{source} is a zip archive, most likely torch.save output (pickle inside), which we never load. "
            "Convert it to safetensors (safetensors.torch.save_file) and try again."
        )
    if len(data) < 10:
        raise NotSafetensorsError(f"{source} is {len(data)} bytes: too short to be a safetensors file")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > min(MAX_HEADER, len(data) - 8) or data[8:9] != b"{":
        raise NotSafetensorsError(f"{source} is not a safetensors file (bad header); save it with safetensors")
    try:
        return json.loads(data[8 : 8 + header_len])
    except (ValueError, RecursionError) as exc:  # (JSON errors, bad UTF-8, a 5,000-digit integer)
        raise NotSafetensorsError(f"{source}: safetensors header is not valid JSON ({exc})") from None


def check_metadata(label: str, kind: str, meta: Mapping[str, str], config: HourglassConfig) -> None:
    """Every metadata value a reader of ours uses, by type and range, before anything uses it."""
    for key, value in meta.items():
        limit = MAX_METADATA_VALUE_CHARS
        if len(key) > 256 or len(value) > limit:
            raise MetadataError(f"{label}: metadata {clip(key)} is over {limit} characters")
    for key, expected in (("num_landmarks", config.num_landmarks), ("input_size", config.input_size)):
        if key in meta and meta[key] != str(expected):
            raise MetadataError(f"{label}: metadata {key} is {clip(meta[key])} but its config says {expected}")
    try:
        names = json.loads(meta.get("landmark_names", "[]"))
    except (ValueError, RecursionError):  # (ValueError: also a 5,000-digit integer)
        names = None
    if (not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names)
            or len(names) not in (0, config.num_landmarks)):
        raise MetadataError(
            f"{label}: landmark_names must be a JSON list of {config.num_landmarks} names (1-{MAX_NAME_CHARS} "
            f"characters each) or [], got {clip(meta.get('landmark_names', ''))}; fix it with "
            "landmarks.adapter_io.save_adapter(..., landmark_names=[...])")
    if kind == "adapter":
        if meta["targets"] not in ("all", "3x3"):
            raise MetadataError(f"{label}: targets {clip(meta['targets'])} must be 'all' or '3x3'")
        if not re.fullmatch(r"[0-9a-f]{64}", meta["core_sha256"]):
            raise MetadataError(f"{label}: core_sha256 {clip(meta['core_sha256'])} is not a sha256 hex digest")


def check_tensors(label: str, tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]]) -> None:
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise TensorMismatchError(
            f"{label}: tensor names do not match this architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for key, shape in expected.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != tuple(shape):
            raise TensorMismatchError(f"{label}: tensor {key} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
        if tensor.dtype.name not in ALLOWED_DTYPES.values():
            raise TensorMismatchError(f"{label}: tensor {key} has dtype {tensor.dtype}; use float16/float32")
    bad = first_non_finite(tensors)
    if bad is not None:
        raise NonFiniteError(f"{label}: tensor {bad} contains NaN or Inf values; the file is broken")
    # folding divides by sqrt(running_var + eps): a negative variance gives NaN weights
    negative = next((k for k, t in tensors.items() if k.endswith("running_var") and bool((t < 0).any())), None)
    if negative is not None:
        raise BatchNormError(f"{label}: tensor {negative} has negative values; a batch-norm running variance "
                             "is never negative, so the file is broken (train or export it again)")
