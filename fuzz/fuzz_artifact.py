"""Fuzz the safetensors artifact reader: `read_artifact(bytes)` and `load_adapter(bytes, core)`.

    .venv/bin/python fuzz/fuzz_artifact.py fuzz/corpus/fuzz_artifact -runs=200     # seeds + a few
    .venv/bin/python fuzz/fuzz_artifact.py NEW_DIR fuzz/corpus/fuzz_artifact -max_total_time=300
    .venv/bin/python fuzz/fuzz_artifact.py fuzz/regressions/fuzz_artifact/*        # replay findings

Every input is a whole file. A structure-aware mutator (libFuzzer's custom mutator) takes the
file apart (header JSON, metadata, tensor entries, payload bytes), changes one thing, and puts
it back together with a correct header length and offsets, so most inputs get past the framing
to the checks behind it: a metadata value replaced by fuzzed JSON-ish text or by a non-string,
a key dropped, one config field set to an odd value (also with the matching num_landmarks /
input_size metadata, to get past that check), landmark names, a tensor dropped / renamed /
retyped / reshaped / given a NaN; some mutations are libFuzzer's byte-level ones on the header
text or the whole file.

Contract (anything else is a finding, raised as an exception so libFuzzer saves the input):
- read_artifact and load_adapter raise nothing but `landmarks.adapter_io.ArtifactError`;
- a returned artifact has a usable config (real ints in range, finite mean/std, std > 0,
  input_size <= MAX_INPUT_SIZE), `landmark_names` is a list of K non-empty strings, the
  metadata copies of num_landmarks / input_size agree with the config, the tensors are finite
  floats, a core/network builds from them;
- an adapter accepted by `load_adapter` names this core, folds into it (ValueError for
  non-finite folded weights is the one allowed exception, the registry catches it) and runs
  at its input size giving (1, K, S/4, S/4) heatmaps;
- its int8 calibration (metadata `int8_calibration`, what `--precision int8` reads) parses or
  raises ValueError, and one that parses gives finite ranges and per-adapter int8 numbers (or
  ValueError), as the onnxruntime backend computes them at registration.

FUZZ_KNOWN_BUGS=names,... tolerates the listed known bugs (KNOWN_BUG_NAMES) while they are being
fixed; see fuzz/README.md.
"""

from __future__ import annotations

import json
import math
import random
import struct
import sys

import _common
import atheris

# Not instrumented: large, native, and not what is under test.
import numpy  # noqa: F401
import torch

with atheris.instrument_imports(include=["landmarks", "safetensors"]):
    from landmarks import adapter_io, int8
    from landmarks.hourglass import HourglassConfig
    from landmarks.projection import fold

torch.set_num_threads(1)

CORE_PATH = _common.FUZZ / "data" / "tiny_core.safetensors"
CORE = adapter_io.load_core(CORE_PATH)
CORE_MODEL = CORE.build()
CONVS = int8.conv_names(CORE_MODEL)
MAX_INPUT_SIZE = 1024  # a file may not make the server's trial forward allocate more
KNOWN_BUG_NAMES = ("names", "metadata_ints", "input_size")
KNOWN = _common.known_bugs()

META_KEYS = (
    "format_version",
    "kind",
    "config",
    "num_landmarks",
    "input_size",
    "normalization",
    "landmark_names",
    "core_sha256",
    "category",
    "targets",
    "created",
    "command",
    "metrics",
    "training_seconds",
    "license",
    int8.CALIBRATION_KEY,
)
CONFIG_FIELDS = (
    "num_landmarks",
    "stem_channels",
    "mid_channels",
    "features",
    "depth",
    "input_size",
    "mean",
    "std",
)
DTYPES = {
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
    "I8": 1,
    "U8": 1,
    "I16": 2,
    "I32": 4,
    "I64": 8,
    "BOOL": 1,
    "F8_E4M3": 1,
    "U32": 4,
}
NAN_BYTES = {
    "F16": b"\x00\x7e",
    "BF16": b"\xc0\x7f",
    "F32": struct.pack("<f", math.nan),
    "F64": struct.pack("<d", math.inf),
}
INTERESTING_TEXT = (
    "",
    "0",
    "1",
    "-1",
    "2",
    "3",
    "4",
    "5",
    "8",
    "16",
    "32",
    "64",
    "128",
    "1024",
    "1e309",
    "NaN",
    "Infinity",
    "-0",
    "null",
    "true",
    "[]",
    "{}",
    '[""]',
    '["a"]',
    "[1, 2, 3]",
    '{"mean": [0.5, 0.5, 0.5], "std": [0, 0, 0]}',
    "9" * 5000,
    "[" * 3000 + "]" * 3000,
    "\x00",
    "\u2603",
    "\ud800",
    "all",
    "3x3",
    "core",
    "adapter",
    "network",
    "x" * 70_000,
)
INTERESTING_JSON = (
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    16,
    32,
    48,
    64,
    96,
    128,
    1024,
    1025,
    4096,
    2**31,
    2**63,
    10**30,
    0.5,
    -0.0,
    1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "8",
    "x" * 100,
    [],
    [0.5],
    [0.5, 0.5, 0.5],
    [0, 0, 0],
    [1e-45, 1, 1],
    [math.nan] * 3,
    {},
    {"a": 1},
)


# --------------------------------------------------------------------------------------- the contract
def _finding(what: str, name: str | None = None) -> None:
    """A contract violation: raise (libFuzzer saves the input) unless `name` is a tolerated known bug."""
    if name is not None and name in KNOWN:
        return
    raise AssertionError(what)


def check_config(config: object) -> None:
    if not isinstance(config, HourglassConfig):
        _finding(f"config is {type(config).__name__}, not HourglassConfig")
    for field in ("num_landmarks", "stem_channels", "mid_channels", "features", "depth", "input_size"):
        value = getattr(config, field)
        if type(value) is not int or value < 1:
            _finding(f"config.{field} = {value!r} is not a positive int")
    if config.input_size > MAX_INPUT_SIZE:
        _finding(
            f"config.input_size = {config.input_size} > {MAX_INPUT_SIZE}: the server's trial forward "
            "would allocate a huge image",
            "input_size",
        )
    for field in ("mean", "std"):
        values = getattr(config, field)
        if len(values) != 3 or not all(type(v) is float and math.isfinite(v) for v in values):
            _finding(f"config.{field} = {values!r} is not 3 finite floats")
    if min(config.std) <= 0:
        _finding(f"config.std = {config.std!r} has a value <= 0")


def check_artifact(art: adapter_io._Artifact) -> None:
    check_config(art.config)
    k = art.config.num_landmarks
    if art.num_landmarks != k:
        _finding(f"num_landmarks {art.num_landmarks!r} != config's {k}")
    meta = art.metadata
    for key in ("num_landmarks", "input_size"):
        if key in meta and meta[key] != str(getattr(art.config, key)):
            _finding(
                f"metadata {key}={meta[key][:80]!r} disagrees with the config's {getattr(art.config, key)}",
                "metadata_ints",
            )
    try:
        names = art.landmark_names
    except Exception as exc:  # noqa: BLE001  any exception here is the finding
        _finding(f"landmark_names raised {type(exc).__name__}: {str(exc)[:200]}", "names")
    else:
        if not isinstance(names, list) or len(names) != k or not all(isinstance(n, str) and n for n in names):
            _finding(f"landmark_names is not a list of {k} non-empty strings: {str(names)[:200]!r}", "names")
    for key, tensor in art.tensors.items():
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            _finding(f"tensor {key} is {tensor.dtype} or not finite")
    if not (isinstance(art.sha256, str) and len(art.sha256) == 64):
        _finding(f"sha256 {art.sha256!r}")
    if isinstance(art, adapter_io.Core | adapter_io.Network):
        art.build()  # must not raise: the shapes were checked against this config


def check_loaded(adapter: adapter_io.Adapter) -> None:
    if adapter.core_sha256 != CORE.sha256:
        _finding("load_adapter accepted an adapter of another core")
    try:
        model = fold(CORE_MODEL, adapter.tensors, adapter.config)
    except ValueError:
        return  # non-finite folded weights: the registry turns this into INVALID_ARGUMENT
    size = adapter.config.input_size
    if size > MAX_INPUT_SIZE:
        return  # reported by check_config (or tolerated as known): not worth the memory
    with torch.inference_mode():
        out = model.eval()(torch.zeros(1, 3, size, size))
    if tuple(out.shape) != (1, adapter.num_landmarks, size // 4, size // 4):
        _finding(f"folded model gives {tuple(out.shape)} at input {size}")
    check_calibration(adapter, model)


def check_calibration(adapter: adapter_io.Adapter, model: torch.nn.Module) -> None:
    """The onnxruntime backend's int8 path up to the session: parse, require, quantise (ValueError only)."""
    try:
        calibration = int8.Int8Calibration.from_metadata(adapter.metadata)
    except ValueError:
        return  # the registration fails with its message
    if calibration is None:
        return
    if not all(len(v) == 4 and all(math.isfinite(x) for x in v) for v in calibration.ranges.values()):
        _finding("a calibration with non-finite ranges parsed")
    try:
        calibration.require(CONVS)
        if not calibration.quantised <= set(CONVS):
            return  # int8_graph raises ValueError ("no convolution reads ...")
        weights = {n: t.detach() for n, t in model.state_dict().items() if t.is_floating_point()}
        values = int8.int8_weights(weights, calibration, [])
    except ValueError:
        return
    if values:
        _finding("int8_weights returned values nobody asked for")


def TestOneInput(data: bytes) -> None:
    try:
        art = adapter_io.read_artifact(data)
    except adapter_io.ArtifactError:
        return
    check_artifact(art)
    if isinstance(art, adapter_io.Adapter):
        try:
            adapter = adapter_io.load_adapter(data, CORE)
        except adapter_io.ArtifactError:
            return
        check_artifact(adapter)
        check_loaded(adapter)


# ------------------------------------------------------------------------------ structure-aware mutator
def split(data: bytes) -> tuple[dict, dict[str, bytes]] | None:
    """A safetensors file -> (header dict, tensor name -> its payload bytes); None if it is not one."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        return None
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, RecursionError):
        return None
    if not isinstance(header, dict):
        return None
    payload = data[8 + n :]
    blobs = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            blobs[name] = payload[start:end]
        except (TypeError, KeyError, ValueError):
            blobs[name] = b""
    return header, blobs


def join(header: dict, blobs: dict[str, bytes]) -> bytes:
    """Header + payloads -> a safetensors file with consistent offsets (metadata may be anything)."""
    out_header, chunks, offset = {}, [], 0
    if "__metadata__" in header:
        out_header["__metadata__"] = header["__metadata__"]
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        blob = blobs.get(name, b"")
        entry = dict(entry) if isinstance(entry, dict) else {"dtype": "F32", "shape": [len(blob) // 4]}
        entry["data_offsets"] = [offset, offset + len(blob)]
        out_header[name] = entry
        chunks.append(blob)
        offset += len(blob)
    text = json.dumps(out_header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the payload
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def fuzz_text(rng: random.Random, old: str | None) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(INTERESTING_TEXT)
    if roll < 0.6:
        return json.dumps(fuzz_json(rng, 3))
    if old is not None and roll < 0.9:
        raw = atheris.Mutate(old.encode("utf-8", "surrogatepass"), len(old) + 64)
        return raw.decode("utf-8", "replace")
    return "".join(
        chr(rng.choice((rng.randrange(32, 127), rng.randrange(0x10FFFF)))) for _ in range(rng.randrange(20))
    )


def fuzz_json(rng: random.Random, depth: int) -> object:
    roll = rng.random()
    if depth <= 0 or roll < 0.5:
        return rng.choice(INTERESTING_JSON)
    if roll < 0.75:
        return [fuzz_json(rng, depth - 1) for _ in range(rng.randrange(5))]
    keys = CONFIG_FIELDS + ("mean", "std", "x", "")
    return {rng.choice(keys): fuzz_json(rng, depth - 1) for _ in range(rng.randrange(5))}


def mutate_metadata(rng: random.Random, header: dict, blobs: dict[str, bytes]) -> None:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        header["__metadata__"] = meta = {}
    key = rng.choice(META_KEYS + tuple(meta) + ("x",))
    roll = rng.random()
    if roll < 0.1:
        meta.pop(key, None)
    elif roll < 0.2:
        meta[key] = fuzz_json(rng, 2)  # a non-string value
    elif roll < 0.4 and key == int8.CALIBRATION_KEY:  # calibration-shaped JSON with odd numbers and names
        odd = (0.0, -1.0, 1e38, 3.5e38, -1e300, 1e-45, 2**31, float("nan"), "1", None, True)
        names = list(rng.sample(CONVS, rng.randrange(len(CONVS) + 1))) + rng.choice(([], ["x.weight"], [""]))
        ranges = {n: [rng.choice(odd) if rng.random() < 0.2 else rng.uniform(-10, 10) for _ in range(4)]
                  for n in names}
        keep = rng.sample(CONVS, rng.randrange(4))
        meta[key] = json.dumps({"format": rng.choice((1, 1, 1, 2, "1")), "ranges": ranges, "keep_fp32": keep})
    elif roll < 0.4 and key in ("landmark_names", "num_landmarks"):
        k = rng.choice((0, 1, 2, 3, 4, 5))
        names = [rng.choice(("a", "", "x" * 70, "\u00e9", 1, None, ["a"])) for _ in range(k)]
        meta["landmark_names"] = json.dumps(names)
    else:
        meta[key] = fuzz_text(rng, meta.get(key) if isinstance(meta.get(key), str) else None)


def mutate_config(rng: random.Random, header: dict, blobs: dict[str, bytes]) -> None:
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), str):
        return mutate_metadata(rng, header, blobs)
    try:
        config = json.loads(meta["config"])
    except (ValueError, RecursionError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    field = rng.choice(CONFIG_FIELDS + ("bogus",))
    roll = rng.random()
    if roll < 0.1:
        config.pop(field, None)
    elif roll < 0.6 and isinstance(config.get(field), int) and field != "bogus":
        # a plausible change, mirrored into the metadata copies so their check passes
        config[field] = rng.choice(
            (
                config[field] * 2,
                config[field] // 2,
                config[field] + 1,
                config[field] - 1,
                config[field] * 64,
                0,
                -config[field],
            )
        )
        if field in ("num_landmarks", "input_size"):
            meta[field] = str(config[field])
    else:
        config[field] = fuzz_json(rng, 2)
    meta["config"] = json.dumps(config)


def mutate_tensor(rng: random.Random, header: dict, blobs: dict[str, bytes]) -> None:
    names = [n for n in header if n != "__metadata__"]
    if not names:
        return
    name = rng.choice(names)
    entry = header[name] if isinstance(header[name], dict) else {}
    header[name] = entry
    roll = rng.random()
    if roll < 0.15:
        del header[name]
    elif roll < 0.25:
        new = name + rng.choice(("x", ".proj", ".weight"))
        header[new] = header.pop(name)
        blobs[new] = blobs.get(name, b"")
    elif roll < 0.45:  # same bytes, another dtype of that width (gets past the length check)
        width = DTYPES.get(entry.get("dtype"), 4)
        entry["dtype"] = rng.choice([d for d, w in DTYPES.items() if w == width] + ["F64", "X"])
    elif roll < 0.6:  # same numel, other shape
        shape = entry.get("shape") or [1]
        numel = math.prod(shape) if all(isinstance(s, int) for s in shape) else 1
        entry["shape"] = rng.choice(
            ([numel], [1, numel], shape[::-1], [*shape, 1], [0], [], [numel + 1], [-1])
        )
    elif roll < 0.8:  # one NaN or Inf in the payload
        blob = bytearray(blobs.get(name, b""))
        bad = NAN_BYTES.get(entry.get("dtype"), b"\xff\xff\xff\xff")
        if len(blob) >= len(bad):
            at = rng.randrange(0, len(blob) - len(bad) + 1, len(bad))
            blob[at : at + len(bad)] = bad
        blobs[name] = bytes(blob)
    else:  # payload truncated or grown
        blob = blobs.get(name, b"")
        blobs[name] = blob[: rng.randrange(len(blob) + 1)] if rng.random() < 0.5 else blob + blob[:8]


def mutate_header_bytes(rng: random.Random, data: bytes, max_size: int) -> bytes:
    """libFuzzer's byte mutations inside the header text only, length prefix fixed up."""
    (n,) = struct.unpack("<Q", data[:8])
    text = atheris.Mutate(data[8 : 8 + n], min(n + 256, max(8, max_size - len(data) + n)))
    return struct.pack("<Q", len(text)) + text + data[8 + n :]


MUTATORS = ((mutate_metadata, 4), (mutate_config, 4), (mutate_tensor, 2))


def CustomMutator(data: bytes, max_size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    parts = split(data)
    roll = rng.random()
    if parts is None or roll < 0.1:
        return atheris.Mutate(data, max_size)
    if roll < 0.25:
        out = mutate_header_bytes(rng, data, max_size)
    else:
        header, blobs = parts
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            mutator = rng.choices([m for m, _ in MUTATORS], weights=[w for _, w in MUTATORS])[0]
            mutator(rng, header, blobs)
        try:
            out = join(header, blobs)
        except (TypeError, ValueError):  # e.g. a surrogate the JSON encoder refuses
            return atheris.Mutate(data, max_size)
    return out if len(out) <= max_size else atheris.Mutate(data, max_size)


def main() -> None:
    _common.check_known_names(KNOWN, KNOWN_BUG_NAMES)
    # The seeds are 20-45 KB; leave room for mutations that grow them.
    atheris.Setup(
        _common.argv_with_defaults(sys.argv, max_len=131072), TestOneInput, custom_mutator=CustomMutator
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
