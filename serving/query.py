"""What one detection asks for, whichever plane it came in on: gRPC's DetectRequest (`from_proto`) or
an HTTP body with its query parameters (serving.http_api). The batcher and preprocessing read only this."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Box", "DetectQuery", "RawImage"]

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels (edge coordinates)


class RawImage(NamedTuple):
    pixels: bytes  # H x W x C uint8, row-major
    height: int
    width: int
    channels: int  # 1 (grey), 3 (RGB) or 4 (RGBA)


class DetectQuery(NamedTuple):
    category: str
    version: str = ""                # "" = the active version
    encoded: bytes | None = None     # JPEG/PNG/WebP/BMP bytes, or
    raw: RawImage | None = None      # decoded pixels (neither: the request is refused)
    box: Box | None = None           # None = the whole image

    @classmethod
    def from_proto(cls, request) -> DetectQuery:
        """From a landmarks.v1.DetectRequest."""
        which = request.image.WhichOneof("data") if request.HasField("image") else None
        raw = None
        if which == "raw":
            r = request.image.raw
            raw = RawImage(r.pixels, r.height, r.width, r.channels)
        b = request.box
        return cls(request.category, request.version, request.image.encoded if which == "encoded" else None, raw,
                   (b.x0, b.y0, b.x1, b.y1) if request.HasField("box") else None)
