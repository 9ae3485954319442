import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from landmarks.adapter_io import (
    CoreMismatchError,
    MetadataError,
    NonFiniteError,
    NotSafetensorsError,
    PickleFileError,
    TensorMismatchError,
    TooLargeError,
    load_adapter,
    load_core,
    read_artifact,
    save_adapter,
    save_core,
    tensor_fingerprint,
)
from landmarks.projection import adapter_state_dict, build_adapted
from tests.factories import make_tiny_core, randomize_adapter


@pytest.fixture
def files(tmp_path, tiny_core):
    core_path = tmp_path / "core.safetensors"
    fingerprint = save_core(core_path, tiny_core, [f"p{i}" for i in range(5)], command="test")
    core = load_core(core_path)
    adapted = build_adapted(core.build(), 4)
    randomize_adapter(adapted)
    adapter_path = save_adapter(tmp_path / "cats.safetensors", adapter_state_dict(adapted), adapted.config,
                                category="cats", core_sha256=core.sha256)
    return core_path, adapter_path, core, adapted, fingerprint


def _rewrite(src, dst, mutate_tensors=None, mutate_meta=None):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(src))
    if mutate_tensors:
        mutate_tensors(tensors)
    if mutate_meta:
        mutate_meta(meta)
    save_file(tensors, str(dst), metadata=meta)
    return dst


def test_core_round_trip_is_bit_exact(files, tiny_core):
    core_path, _, core, _, fingerprint = files
    assert core.sha256 == fingerprint and core.metadata["kind"] == "core"
    for key, value in tiny_core.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(core.tensors[key], value.half())
    assert load_core(core_path).sha256 == core.sha256
    assert core.landmark_names == [f"p{i}" for i in range(5)]


def test_adapter_round_trip_is_bit_exact(files):
    _, adapter_path, core, adapted, _ = files
    adapter = load_adapter(adapter_path, core)
    for key, value in adapter_state_dict(adapted).items():
        assert torch.equal(adapter.tensors[key], value)
    assert adapter.category == "cats" and adapter.num_landmarks == 4 and adapter.core_sha256 == core.sha256
    assert load_adapter(adapter_path.read_bytes(), core).sha256 == adapter.sha256  # from bytes too


def test_rejects_wrong_key(files, tmp_path):
    _, adapter_path, core, _, _ = files
    bad = _rewrite(adapter_path, tmp_path / "bad.safetensors",
                   lambda t: t.__setitem__("stem.0.projx", t.pop("stem.0.proj")))
    with pytest.raises(TensorMismatchError, match=r"missing \['stem.0.proj'\].*unexpected \['stem.0.projx'\]"):
        load_adapter(bad, core)


def test_rejects_wrong_shape(files, tmp_path):
    _, adapter_path, core, _, _ = files
    bad = _rewrite(adapter_path, tmp_path / "bad.safetensors",
                   lambda t: t.__setitem__("stem.0.proj", torch.eye(3)))
    with pytest.raises(TensorMismatchError, match=r"stem.0.proj has shape \(3, 3\), expected \(8, 8\)"):
        load_adapter(bad, core)


def test_rejects_nan(files, tmp_path):
    _, adapter_path, core, _, _ = files

    def poison(t):
        t["head.bias"][1] = float("nan")

    with pytest.raises(NonFiniteError, match="head.bias contains NaN"):
        load_adapter(_rewrite(adapter_path, tmp_path / "bad.safetensors", poison), core)


def test_rejects_other_core(files, tmp_path):
    _, adapter_path, _, _, _ = files
    other_path = tmp_path / "other.safetensors"
    save_core(other_path, make_tiny_core(seed=7))
    with pytest.raises(CoreMismatchError, match="trained against core .* but this core is"):
        load_adapter(adapter_path, load_core(other_path))


def test_rejects_pickle_and_torch_save(files, tmp_path):
    _, _, core, adapted, _ = files
    p = tmp_path / "adapter.pkl"
    p.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(PickleFileError, match="pickle, which we never load"):
        load_adapter(p, core)
    z = tmp_path / "adapter.pt"
    torch.save(adapter_state_dict(adapted), z)
    with pytest.raises(PickleFileError, match="torch.save"):
        load_adapter(z, core)


def test_rejects_garbage_version_kind_and_size(files, tmp_path):
    core_path, adapter_path, core, _, _ = files
    g = tmp_path / "garbage.safetensors"
    g.write_bytes(b"hello, I am not a tensor file at all")
    with pytest.raises(NotSafetensorsError, match="not a safetensors file"):
        load_adapter(g, core)
    with pytest.raises(NotSafetensorsError, match="too short"):
        load_adapter(b"", core)
    v2 = _rewrite(adapter_path, tmp_path / "v2.safetensors", mutate_meta=lambda m: m.update(format_version="2"))
    with pytest.raises(MetadataError, match="format_version '2' is not supported"):
        load_adapter(v2, core)
    with pytest.raises(MetadataError, match="is a core file, expected a adapter"):
        load_adapter(core_path, core)
    with pytest.raises(TooLargeError, match="over the 1000-byte limit"):
        load_adapter(adapter_path, core, max_bytes=1000)


def test_core_tamper_detected(files, tmp_path):
    core_path, _, _, _, _ = files

    def tamper(t):
        t["head.bias"][0] += 1

    with pytest.raises(MetadataError, match="do not match the core_sha256"):
        read_artifact(_rewrite(core_path, tmp_path / "tampered.safetensors", tamper))


def test_paper_core_and_adapter_sizes(tmp_path):
    from landmarks.hourglass import LandmarkHourglass, paper_config

    core = LandmarkHourglass(paper_config(14))
    save_core(tmp_path / "core.safetensors", core)
    size_core = (tmp_path / "core.safetensors").stat().st_size
    assert 12e6 < size_core < 13.5e6  # ~13 MB in fp16
    adapted = build_adapted(core, 10)
    save_adapter(tmp_path / "a.safetensors", adapter_state_dict(adapted), adapted.config, "faces", "x" * 64)
    assert 2.0e6 < (tmp_path / "a.safetensors").stat().st_size < 2.6e6  # ~2 MB in fp32


def test_channels_last_models_save_and_fingerprint_like_row_major_ones(tmp_path):
    core = make_tiny_core()
    plain = save_core(tmp_path / "a.safetensors", core)
    nhwc = save_core(tmp_path / "b.safetensors", core.to(memory_format=torch.channels_last))
    assert plain == nhwc


def test_fingerprint_hashes_row_major_bytes_whatever_the_layout():
    """The digest of a tensor is that of its dense row-major copy: channels_last (also 1x1, whose
    strides numpy and torch judge differently), transposed, bf16 (no numpy dtype), empty."""
    import hashlib

    def reference(tensors):
        digest = hashlib.sha256()
        for name in sorted(tensors):
            t = tensors[name].clone(memory_format=torch.contiguous_format)
            digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()

    g = torch.Generator().manual_seed(0)
    tensors = {"a": torch.randn(8, 4, 1, 1, generator=g), "b": torch.randn(8, 4, 3, 3, generator=g),
               "c": torch.randn(5, 3, generator=g), "d": torch.randn(4, 4, generator=g).to(torch.bfloat16),
               "e": torch.zeros(0, 3), "f": torch.tensor([True, False]), "g": torch.arange(6)}
    expected = reference(tensors)
    laid_out = {**tensors, "a": tensors["a"].to(memory_format=torch.channels_last),
                "b": tensors["b"].to(memory_format=torch.channels_last), "c": tensors["c"].t().contiguous().t()}
    assert not laid_out["c"].is_contiguous()
    assert tensor_fingerprint(tensors) == tensor_fingerprint(laid_out) == expected


def test_find_core_by_fingerprint(files, tmp_path):
    from landmarks.adapter_io import ArtifactError, find_core, load_core

    core_path, adapter_path = files[0], files[1]
    sha = load_core(core_path).sha256
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "my-core.safetensors").write_bytes(core_path.read_bytes())
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "adapter.safetensors").write_bytes(adapter_path.read_bytes())
    (lonely / "core.safetensors").write_bytes(b"not a core")  # skipped, not fatal
    assert find_core(lonely / "adapter.safetensors", sha, (elsewhere,)) == elsewhere / "my-core.safetensors"
    with pytest.raises(ArtifactError, match="--core"):
        find_core(lonely / "adapter.safetensors", sha)
