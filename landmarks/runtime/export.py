"""One category (core + adapter, folded) as a self-contained ONNX file that any ONNX Runtime client
runs (`landmarks export`): the category graph (`graph`) with the folded weights as its initializers,
without the heatmaps output, and metadata saying what it is and how to feed it.
"""

from __future__ import annotations

import json

from landmarks.runtime import fold, graph

__all__ = ["export_adapter", "metadata"]


def metadata(core, adapter, opset: int = graph.OPSET) -> dict[str, str]:
    """What the exported file says about itself (ONNX metadata_props, all strings)."""
    size = adapter.config.input_size
    return {
        "category": adapter.category,
        "num_landmarks": str(adapter.num_landmarks),
        "landmark_names": json.dumps(adapter.landmark_names),
        "input_size": str(size),
        "core_sha256": core.sha256,
        "adapter_sha256": adapter.sha256,
        "opset": str(opset),
        "inputs": f"pixels: (B, {size}, {size}, 3) uint8 RGB crops; boxes: (B, 4) float64, the x0, y0, x1, y1 "
                  "each crop was cut from, in the original image's pixels (edges)",
        "outputs": "points: (B, K, 2) float32 x, y in the original image's pixels (pixel centres at integers); "
                   "confidence: (B, K) float32, the peak of each landmark's spatial softmax",
        "producer": "landmark-adapters (landmarks export)",
    }


def export_adapter(core, adapter, opset: int = graph.OPSET):
    """core + adapter (`landmarks.adapter_io`) -> a checked, self-contained onnx.ModelProto (points and
    confidences only). ValueError if folding gives non-finite weights."""
    import onnx

    weights = fold.fold(fold.float32(core.arrays), adapter.arrays)
    model = graph.with_weights(adapter.config, weights, heatmaps=False, opset=opset)
    model.doc_string = f"landmarks of category {adapter.category!r} (K={adapter.num_landmarks})"
    for key, value in metadata(core, adapter, opset).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    return model
