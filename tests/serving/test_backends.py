"""Every backend gives the eager backend's numbers (heatmaps, points in the boxes' pixels, confidences)
for adapters of different K and input size and any batch; `landmarks export` writes an ONNX file
that ONNX Runtime runs to the same points. The CUDA variants run where a GPU and the matching
packages are; here they are skipped, saying why."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landmarks.adapter_io import load_adapter, load_core, save_adapter
from landmarks.images import pixels_to_images
from landmarks.projection import adapter_state_dict, build_adapted
from serving.backends import BACKEND_NAMES, available_backends, make_backend


def _cuda_ort() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available()


def _variants():
    for name in BACKEND_NAMES:
        for device in ("cpu", "cuda"):
            why = ""
            if name not in available_backends():
                why = f"{name}: its package is not installed"
            elif device == "cuda" and name == "onnxruntime" and not _cuda_ort():
                why = "onnxruntime CUDA: needs a GPU and onnxruntime-gpu (the gpu extra)"
            elif device == "cuda" and not torch.cuda.is_available():
                why = "no CUDA device"
            yield pytest.param(name, device, id=f"{name}-{device}", marks=[pytest.mark.skip(reason=why)] if why else [])


@pytest.fixture(scope="module")
def adapters(artifacts, tmp_path_factory):
    core = load_core(artifacts.core)
    small = build_adapted(core.build(), 2, input_size=16)  # runs the 32 px core at 16 px
    small_path = save_adapter(tmp_path_factory.mktemp("small") / "small.safetensors", adapter_state_dict(small),
                              small.config, category="small", core_sha256=core.sha256)
    paths = (artifacts.shipped["cats"], artifacts.shipped["faces"], small_path)
    return core, [load_adapter(p, core) for p in paths]


@pytest.mark.parametrize(("name", "device"), list(_variants()))
def test_backend_matches_eager_for_every_batch_size_k_and_input_size(adapters, name, device):
    core, loaded = adapters
    backend, eager = make_backend(name, core, device), make_backend("eager", core)
    assert backend.name == name
    for adapter in loaded:
        prepared, reference = backend.prepare(adapter), eager.prepare(adapter)
        assert backend.nbytes(prepared) >= eager.nbytes(reference) > 0
        size = adapter.config.input_size
        for batch in (1, 3):
            gen = torch.Generator().manual_seed(batch)
            pixels = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=gen)
            images = pixels_to_images(pixels)
            out = backend.run(prepared, images)
            assert out.shape == (batch, adapter.num_landmarks, size // 4, size // 4)
            assert isinstance(out, np.ndarray)
            np.testing.assert_allclose(out, eager.run(reference, images), atol=1e-4, rtol=1e-4)
            # the boxes are inputs of the graph, not constants of a trace
            boxes = torch.tensor([[-3.5, 2.0, 40.5, 46.0], [10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 1e3, 1e3]],
                                 dtype=torch.float64)[:batch]
            pixels_np, boxes_np = pixels.numpy(), boxes.numpy()  # what the server hands a backend
            (points, confidence), (want_points, want_confidence) = (backend.locate(prepared, pixels_np, boxes_np),
                                                                    eager.locate(reference, pixels_np, boxes_np))
            assert isinstance(points, np.ndarray) and points.dtype == confidence.dtype == np.float32
            assert points.shape == (batch, adapter.num_landmarks, 2)
            np.testing.assert_allclose(points, want_points, atol=1e-3, rtol=0)  # pixels, up to a 1000 px box
            np.testing.assert_allclose(confidence, want_confidence, atol=1e-5, rtol=1e-4)


def test_torchscript_traces_one_graph_for_every_adapter(adapters):
    core, loaded = adapters
    backend = make_backend("torchscript", core)
    assert len({id(backend.prepare(a).graph) for a in loaded}) == 1


def test_unknown_backend_names_the_choices(adapters):
    with pytest.raises(ValueError, match="unknown backend 'onnx'; choose one of onnxruntime, torchscript, eager"):
        make_backend("onnx", adapters[0])


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="onnxruntime is not installed")
def test_onnxruntime_on_cuda_without_the_gpu_package_says_what_to_install(adapters):
    if _cuda_ort():
        pytest.skip("this machine has onnxruntime-gpu")
    with pytest.raises(ValueError, match=r"onnxruntime-gpu \(pip install 'landmark-adapters\[gpu\]'\)"):
        make_backend("onnxruntime", adapters[0], "cuda")


@pytest.mark.skipif("onnxruntime" not in available_backends(), reason="onnxruntime is not installed")
def test_export_round_trips_through_onnxruntime(artifacts, adapters, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    from landmarks.cli import main

    core, loaded = adapters
    out = tmp_path / "faces.onnx"
    assert main(["export", str(artifacts.shipped["faces"]), "--core", str(artifacts.core), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    faces = loaded[1]
    assert meta["category"] == "faces" and int(meta["num_landmarks"]) == faces.num_landmarks == 6
    assert json.loads(meta["landmark_names"]) == faces.landmark_names
    assert int(meta["input_size"]) == faces.config.input_size
    assert (meta["core_sha256"], meta["adapter_sha256"], meta["opset"]) == (core.sha256, faces.sha256, "17")
    # a client with onnxruntime and numpy only: uint8 crops + boxes in, points in the boxes' pixels out
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixels", "boxes"]
    assert [o.name for o in session.get_outputs()] == ["points", "confidence"]
    size = faces.config.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    boxes = np.array([[0, 0, size, size], [10, 20, 410, 420], [-7.5, 3, 50.5, 61], [100, 100, 101, 101]], np.float64)
    points, confidence = session.run(None, {"pixels": pixels, "boxes": boxes})
    torchscript = make_backend("torchscript", core)
    want_points, want_confidence = torchscript.locate(torchscript.prepare(faces), pixels, boxes)
    np.testing.assert_allclose(points, want_points, atol=1e-3, rtol=0)
    np.testing.assert_allclose(confidence, want_confidence, atol=1e-5, rtol=1e-4)


def test_export_refuses_an_adapter_of_another_core(artifacts, tmp_path, capsys):
    from landmarks.cli import main
    from tests.serving.helpers import make_core

    other = tmp_path / "other-core.safetensors"
    make_core(other, seed=7)
    code = main(["export", str(artifacts.shipped["faces"]), "--core", str(other), "--out", str(tmp_path / "x.onnx")])
    assert code == 2 and "was trained against core" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("name", ["torchscript", "eager"])
def test_bf16_runs_the_same_network_in_bfloat16(adapters, name):
    """`precision="bf16"`: bfloat16 weights and images, fp32 heatmaps and points, the fp32 backend's
    numbers to bfloat16's rounding (8 bits of mantissa: heatmaps within 3% of their peak here); the
    TorchScript graph agrees with the eager bf16 network."""
    core, loaded = adapters
    backend, fp32, eager_bf16 = (make_backend(name, core, precision="bf16"), make_backend("eager", core),
                                 make_backend("eager", core, precision="bf16"))
    assert backend.precision == "bf16"
    for adapter in loaded:
        prepared, reference, same = backend.prepare(adapter), fp32.prepare(adapter), eager_bf16.prepare(adapter)
        size = adapter.config.input_size
        pixels = torch.randint(0, 256, (3, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        images = pixels_to_images(pixels)
        out, want = backend.run(prepared, images), fp32.run(reference, images)
        assert out.dtype == np.float32 and out.shape == want.shape
        assert np.abs(out - want).max() <= 0.03 * np.abs(want).max()
        np.testing.assert_allclose(out, eager_bf16.run(same, images), atol=2e-2 * np.abs(want).max(), rtol=0)
        boxes = np.array([[0.0, 0.0, size, size]] * 3)
        points, confidence = backend.locate(prepared, pixels.numpy(), boxes)
        want_points, _ = fp32.locate(reference, pixels.numpy(), boxes)
        assert points.dtype == confidence.dtype == np.float32
        assert np.abs(points - want_points).max() < 0.03 * size  # random weights: flat heatmaps, a loose bound


def test_every_float_precision_the_server_accepts_has_a_torch_dtype(adapters):
    from serving.backends import PRECISIONS
    from serving.backends.torchscript import DTYPES

    # int8 is onnxruntime's (landmarks.int8); auto means fp32 on the torch backends
    assert tuple(DTYPES) == tuple(p for p in PRECISIONS if p not in ("int8", "auto"))
    assert make_backend("torchscript", adapters[0], precision="auto").precision == "fp32"


def test_precision_other_than_fp32_is_refused_where_it_cannot_run(adapters):
    core = adapters[0]
    with pytest.raises(ValueError, match="choose one of fp32, bf16"):
        make_backend("eager", core, precision="fp16")
    if "onnxruntime" in available_backends():
        with pytest.raises(ValueError, match="onnxruntime backend runs fp32"):
            make_backend("onnxruntime", core, precision="bf16")


def test_torchscript_warms_each_graph_shape_once(adapters, monkeypatch):
    """The profiling executor's warm-up calls are forward passes: a registration pays them only for
    the first adapter of its input size and K (the optimised graph is shared)."""
    core, loaded = adapters
    backend = make_backend("torchscript", core)
    calls = []
    forward = backend._forward
    monkeypatch.setattr(backend, "_forward", lambda prepared, images: calls.append(1) or forward(prepared, images))
    shapes = set()
    for adapter in loaded + loaded:
        before = len(calls)
        backend.prepare(adapter)
        shape = (adapter.config.input_size, adapter.num_landmarks)
        assert len(calls) - before == (0 if shape in shapes else backend.WARMUP_CALLS)
        shapes.add(shape)
