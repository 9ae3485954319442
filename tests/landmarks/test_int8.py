"""int8 serving (`landmarks.int8`, the onnxruntime backend's `precision="int8"`): the calibration a
user's adapter file carries is checked before use; the int8 graph really runs int8 convolutions
(QLinearConv, still there after ONNX Runtime's optimisations) and gives fp32's points to quantisation's rounding."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from landmarks.adapter_io import load_adapter, load_core, save_adapter, save_core
from landmarks.hardware import cpu_int8_flags
from landmarks.images import images_to_pixels
from landmarks.int8 import (
    CALIBRATION_KEY,
    DEFAULT_KEEP_FP32,
    Int8Calibration,
    conv_names,
    conv_ranges,
    int8_graph,
    int8_weights,
    kept_in_fp32,
    measure,
)
from landmarks.projection import adapter_state_dict, build_adapted, fold
from landmarks.runtime import fold as runtime_fold
from landmarks.runtime.graph import external_graph
from serving.backends import make_backend
from tests.factories import make_tiny_core, randomize_adapter


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    """A tiny core and a K=4 adapter of it, with images of its input size."""
    root = tmp_path_factory.mktemp("int8")
    save_core(root / "core.safetensors", make_tiny_core(5), dtype=torch.float32)
    core = load_core(root / "core.safetensors")
    adapted = build_adapted(core.build(), 4)
    randomize_adapter(adapted, seed=3)
    path = save_adapter(root / "cat.safetensors", adapter_state_dict(adapted), adapted.config, category="cats",
                        core_sha256=core.sha256)
    adapter = load_adapter(path, core)
    size = adapter.config.input_size
    images = torch.rand(12, 3, size, size, generator=torch.Generator().manual_seed(0))
    return core, adapter, images


def calibrated(core, adapter, images, keep=DEFAULT_KEEP_FP32):
    model = fold(core.build(), adapter.tensors, adapter.config)
    calibration = measure(model, images, keep)
    return dataclasses.replace(adapter, metadata={**adapter.metadata, CALIBRATION_KEY: calibration.to_json()})


def pixels_of(images):
    size = images.shape[-1]
    return images_to_pixels(images), np.array([[0.0, 0.0, size, size]] * len(images))


def test_ranges_are_each_convolutions_input_and_output_extremes(category):
    core, adapter, images = category
    model = fold(core.build(), adapter.tensors, adapter.config)
    seen = {}
    model.head.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    ranges = conv_ranges(model, images, batch=5)  # three chunks: the extremes over all of them
    with torch.no_grad():
        model(images)
    assert set(ranges) == set(conv_names(model))
    assert ranges["head.weight"] == pytest.approx((seen["x"].min().item(), seen["x"].max().item(),
                                                   seen["y"].min().item(), seen["y"].max().item()), rel=1e-5)
    assert kept_in_fp32(model, ["head", "stem"]) == ("stem.0.weight", "head.weight")


def test_int8_session_runs_fused_int8_convolutions_near_fp32(category, tmp_path):
    """The int8 graph: every quantised convolution is a QLinearConv in the session ONNX Runtime optimised
    (the proof that int8 runs, not fp32 with extra steps), and its points stay near fp32's on the
    calibration images."""
    import onnx
    import onnxruntime as ort

    core, adapter, images = category
    adapter8 = calibrated(core, adapter, images)
    calibration = Int8Calibration.from_metadata(adapter8.metadata)
    weights = runtime_fold.fold(runtime_fold.float32(core.arrays), adapter.arrays)
    graph, _ = external_graph(adapter.config)
    qgraph, qnames = int8_graph(graph, calibration.quantised)
    values = int8_weights(weights, calibration, qnames)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.add_external_initializers(qnames, [ort.OrtValue.ortvalue_from_numpy(values[n]) for n in qnames])
    ort.InferenceSession(qgraph, options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimised.onnx"), load_external_data=False).graph.node]
    assert ops.count("QLinearConv") == len(calibration.quantised) > 0
    assert ops.count("Conv") + ops.count("FusedConv") >= len(calibration.keep_fp32)

    fp32, int8 = make_backend("onnxruntime", core), make_backend("onnxruntime", core, precision="int8")
    pixels, boxes = pixels_of(images)
    want, _ = fp32.locate(fp32.prepare(adapter8), pixels, boxes)
    got, confidence = int8.locate(int8.prepare(adapter8), pixels, boxes)
    assert got.shape == want.shape and got.dtype == np.float32 and np.isfinite(confidence).all()
    assert np.abs(got - want).mean() < 0.05 * adapter.config.input_size  # random tiny weights: a loose bound
    assert int8.nbytes(int8.prepare(adapter8)) < fp32.nbytes(fp32.prepare(adapter8))
    every = calibrated(core, adapter, images, keep=())  # the convolutions with a bias (int32) too
    got, _ = int8.locate(int8.prepare(every), pixels, boxes)
    assert np.isfinite(got).all() and np.abs(got - want).mean() < 0.1 * adapter.config.input_size


def test_int8_weights_are_ort_static_quantisation(category):
    core, adapter, images = category
    adapter8 = calibrated(core, adapter, images, keep=())
    calibration = Int8Calibration.from_metadata(adapter8.metadata)
    weights = runtime_fold.fold(runtime_fold.float32(core.arrays), adapter.arrays)
    graph, _ = external_graph(adapter.config)
    _, names = int8_graph(graph, calibration.quantised)
    values = int8_weights(weights, calibration, names)
    w = weights["head.weight"]
    q, scale = values["head.weight::q"], values["head.weight::w_scale"]
    assert q.dtype == np.int8 and np.abs(q).max() == 127  # symmetric per output channel, full 8 bits
    np.testing.assert_allclose(q * scale[:, None, None, None], w, atol=scale.max() / 2 + 1e-7)
    lo, hi = calibration.ranges["head.weight"][:2]
    x_scale, x_zero = values["head.weight::x_scale"], values["head.weight::x_zero"]
    assert x_zero.dtype == np.uint8 and x_scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255)
    bias = values["head.bias::q"]
    assert bias.dtype == np.int32
    np.testing.assert_allclose(bias * x_scale * scale, weights["head.bias"], atol=float((x_scale * scale).max()))
    seven = int8_weights(weights, calibration, names, reduce_range=True)
    assert np.abs(seven["head.weight::q"]).max() == 63  # CPUs without 8-bit dot products


def test_calibration_metadata_is_checked_before_use(category):
    core, adapter, images = category
    good = calibrated(core, adapter, images)
    parsed = Int8Calibration.from_metadata(good.metadata)
    assert Int8Calibration.from_metadata({CALIBRATION_KEY: parsed.to_json()}) == parsed
    assert Int8Calibration.from_metadata(adapter.metadata) is None
    data = json.loads(parsed.to_json())
    first = next(iter(data["ranges"]))
    bad = ["{not json", json.dumps([1, 2]), json.dumps({**data, "format": 9}),
           json.dumps({**data, "ranges": {first: [0, 1, 2]}}), json.dumps({**data, "ranges": {first: [1, 0, 0, 1]}}),
           json.dumps({**data, "ranges": {first: [0, "1", 0, 1]}}), json.dumps({**data, "ranges": []}),
           json.dumps({**data, "keep_fp32": [3]}), '{"format": 1, "ranges": {"a": [0, 1e999, 0, 1]}}']
    for text in bad:
        with pytest.raises(ValueError, match="calibrate it again"):
            Int8Calibration.from_metadata({CALIBRATION_KEY: text}, "adapter 'cats'")
    with pytest.raises(ValueError, match="no range for 1 convolution"):
        del data["ranges"][first]
        Int8Calibration.from_metadata({CALIBRATION_KEY: json.dumps(data)}).require(conv_names(core.build()))


def test_int8_backend_refuses_an_adapter_without_calibration(category):
    core, adapter, _ = category
    backend = make_backend("onnxruntime", core, precision="int8")
    with pytest.raises(ValueError, match="no int8 calibration.*landmarks calibrate"):
        backend.prepare(adapter)
    model = core.build()
    partial = Int8Calibration({n: (0.0, 1.0, 0.0, 1.0) for n in conv_names(model)[1:]})
    with pytest.raises(ValueError, match="no range for 1"):
        backend.prepare(dataclasses.replace(adapter, metadata={**adapter.metadata, CALIBRATION_KEY: partial.to_json()}))
    huge = Int8Calibration({n: (-1e300, 1e300, 0.0, 1.0) for n in conv_names(model)})
    with pytest.raises(ValueError, match="too wide for a float32 scale"):
        backend.prepare(dataclasses.replace(adapter, metadata={**adapter.metadata, CALIBRATION_KEY: huge.to_json()}))
    with pytest.raises(ValueError, match="on the CPU"):
        make_backend("onnxruntime", core, device="cuda", precision="int8")


def test_cpu_int8_flags_read_from_cpuinfo():
    assert cpu_int8_flags("flags\t: fpu avx2 avx512_vnni amx_int8\n") == ["avx512_vnni", "amx_int8"]
    assert cpu_int8_flags("flags\t: fpu avx2\n") == []
