"""Shared library of landmark-adapters: the core network, the projection adapter, heatmaps, file formats.

Both `training` and `serving` import from here; nothing here imports either of them.
"""

__version__ = "0.1.0"
