"""The inference runtime: one category (the core with its adapter folded in) run by ONNX Runtime, with
numpy and onnx only, no torch. The server's default backend, `landmarks.Detector`, `landmarks export`
and training's served evaluation and calibration all run a category through it.

    architecture   the core's config and layers (what the graph and the expected shapes come from)
    fold           an adapter folded into the core's weights, in numpy
    graph          a category's ONNX graph, built from the architecture with onnx.helper
    int8           int8 calibrations (the ranges an adapter carries) and the int8 graph and weights
    sessions       ONNX Runtime sessions, fp32 or int8, on the CPU or CUDA
    decode         heatmaps -> points in the client's pixels (the graph's last steps, in numpy)
    crops          an image's square crop as the model's input pixels (PIL and numpy)

Nothing here imports torch, `training` or `serving`.
"""
