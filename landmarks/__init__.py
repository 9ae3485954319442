"""Shared library of landmark-adapters: the core network, the projection adapter, heatmaps, file formats,
and the in-process API:

    from landmarks import Detector
    print(Detector.load("faces").detect("examples/face.jpg"))

Both `training` and `serving` import from here; nothing here imports either of them. `Detector` and
`Landmarks` (landmarks/detector.py) load on first use, so `import landmarks` (and the `landmarks`
command's --help) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Detector", "Landmarks", "__version__"]

if TYPE_CHECKING:
    from landmarks.detector import Detector, Landmarks


def __getattr__(name: str) -> Any:
    if name in ("Detector", "Landmarks"):
        from landmarks import detector

        return getattr(detector, name)
    raise AttributeError(f"module 'landmarks' has no attribute {name!r}")
