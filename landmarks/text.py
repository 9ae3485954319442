"""Values from files and clients repeated in error messages, cut to a readable length."""

from __future__ import annotations

__all__ = ["clip"]


def clip(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters with the full length noted: a long value repeated in an
    error must neither flood a log nor, on gRPC, push the message over the metadata limit (the
    client would then see RESOURCE_EXHAUSTED instead of the real error)."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(str(value))} characters)"
