"""The inference runtime (`landmarks.runtime`) against the torch reference: the numpy fold and the graph
built with onnx.helper give the adapted torch network's numbers (`LandmarkHourglass` with the adapter's
projections applied, not folded) in fp32, for both projection targets, several K and input sizes; the
architecture without torch names and shapes what the torch network holds; numpy decoding is torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from landmarks.adapter_io import load_adapter, load_core, save_adapter, save_core
from landmarks.hourglass import LandmarkHourglass, cpu_config, tiny_config
from landmarks.images import locate_in_boxes, pixels_to_images
from landmarks.int8 import conv_names as torch_conv_names
from landmarks.projection import adapter_state_dict, build_adapted, fold_state_dict
from landmarks.runtime import architecture, decode, fold, graph
from landmarks.runtime.sessions import Runtime
from tests.factories import make_tiny_core, randomize_adapter


@pytest.mark.parametrize("config", [tiny_config(5), tiny_config(3).replace(depth=1, input_size=16), cpu_config(7)],
                         ids=["tiny", "depth1", "cpu"])
@pytest.mark.parametrize("targets", ["all", "3x3"])
def test_architecture_names_and_shapes_the_torch_network(config, targets):
    with torch.device("meta"):
        core = LandmarkHourglass(config)
        state = {k: tuple(v.shape) for k, v in core.state_dict().items() if not k.endswith("num_batches_tracked")}
        adapter = {k: tuple(v.shape) for k, v in adapter_state_dict(build_adapted(core, 4, targets)).items()}
    assert list(architecture.network_shapes(config).items()) == list(state.items())  # the same order too
    assert architecture.adapter_shapes(config, 4, targets) == adapter
    assert architecture.conv_names(config) == torch_conv_names(core)


@pytest.fixture(scope="module")
def core_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("runtime") / "core.safetensors"
    save_core(path, make_tiny_core(5, seed=4))  # float16, as cores are stored
    return path


def _adapter(core_file, tmp_path, k: int, targets: str, input_size: int | None, seed: int):
    core = load_core(core_file)
    adapted = build_adapted(core.build(), k, targets, input_size=input_size)
    randomize_adapter(adapted, seed)
    if targets == "3x3":  # the convs it leaves unprojected train freely
        with torch.no_grad():
            for name, p in adapted.named_parameters():
                if p.requires_grad and name.endswith(".weight") and p.ndim == 4 and not name.startswith("head"):
                    p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)))
    path = save_adapter(tmp_path / f"a{k}{targets}.safetensors", adapter_state_dict(adapted), adapted.config,
                        category="things", core_sha256=core.sha256, targets=targets)
    return core, load_adapter(path, core), adapted.eval()


@pytest.mark.parametrize(("k", "targets", "input_size"), [(4, "all", None), (2, "3x3", None), (6, "all", 16),
                                                          (3, "3x3", 64)])
def test_numpy_fold_and_built_graph_give_the_adapted_torch_network(core_file, tmp_path, k, targets, input_size):
    core, adapter, adapted = _adapter(core_file, tmp_path, k, targets, input_size, seed=k)
    weights = fold.fold(fold.float32(core.arrays), adapter.arrays)
    reference = fold_state_dict(core.build().state_dict(), adapter.tensors)
    for name, value in weights.items():  # the numpy fold is torch's
        np.testing.assert_allclose(value, reference[name].float().numpy(), atol=1e-6, rtol=1e-5, err_msg=name)

    size = adapter.config.input_size
    rng = np.random.default_rng(k)
    pixels = rng.integers(0, 256, (3, size, size, 3), dtype=np.uint8)
    boxes = np.array([[0.0, 0.0, size, size], [-7.5, 3.0, 90.5, 101.0], [10.0, 20.0, 11.0, 21.0]])
    with torch.no_grad():  # the adapted network: projections applied at run time, nothing folded
        heatmaps = adapted(pixels_to_images(torch.from_numpy(pixels)))
        want_points, want_confidence = locate_in_boxes(heatmaps, torch.from_numpy(boxes), size)

    prepared = Runtime(core, threads=1, precision="fp32").prepare(adapter)
    assert prepared.precision == "fp32"
    points, confidence = prepared.locate(pixels, boxes)
    scale = float(heatmaps.abs().max())
    np.testing.assert_allclose(prepared.heatmaps(pixels), heatmaps.numpy(), atol=1e-5 * scale, rtol=1e-4)
    np.testing.assert_allclose(points, want_points.numpy(), atol=1e-3)  # px, boxes up to ~100 px
    np.testing.assert_allclose(confidence, want_confidence.numpy(), atol=1e-5)

    # the exported file (self-contained) runs to the same points
    import onnx
    import onnxruntime as ort

    model = graph.with_weights(adapter.config, weights)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    exported, _ = session.run(None, {"pixels": pixels, "boxes": boxes})
    np.testing.assert_allclose(exported, points, atol=1e-4)


def test_numpy_decoding_is_torchs():
    rng = np.random.default_rng(0)
    heatmaps = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    boxes = np.array([[0.0, 0.0, 32.0, 32.0], [-5.5, 10.0, 200.0, 215.5]])
    points, confidence = decode.locate_in_boxes(heatmaps, boxes, 32)
    want_points, want_confidence = locate_in_boxes(torch.from_numpy(heatmaps), torch.from_numpy(boxes), 32)
    np.testing.assert_allclose(points, want_points.numpy(), atol=1e-4)
    np.testing.assert_allclose(confidence, want_confidence.numpy(), atol=1e-6)


def test_folding_to_non_finite_weights_is_refused():
    core = {"c.weight": np.full((2, 1, 1, 1), 3e38, np.float32)}
    with pytest.raises(ValueError, match="c.proj produced non-finite"):
        fold.fold(core, {"c.proj": np.full((2, 2), 3e38, np.float32)})
