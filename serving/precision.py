"""The number format a version runs in, and why, as ListCategories and /v1/categories report it."""

from __future__ import annotations

from landmarks.runtime.int8 import checked_int8

__all__ = ["precision_of"]


def precision_of(backend, adapter) -> tuple[str, str]:
    """(the backend's `precision_for(adapter)`, why): the server's --precision when it was given, under
    auto the calibration's verdict (`landmarks.runtime.int8.checked_int8`)."""
    precision = backend.precision_for(adapter)
    setting = getattr(backend, "precision", "fp32")
    if setting != "auto":
        return precision, f"--precision {setting}"
    passed, why = checked_int8(adapter.metadata)
    if precision == "int8" or not passed:
        return precision, f"auto: {why}"
    return precision, (f"auto: {why}, but int8 runs only on the onnxruntime backend on a CPU with 8-bit dot "
                       "products (VNNI, AMX)")
