"""The images of an adaptation job as a client sends them: files, or zips of them, checked and written
into the job's folder.

Refused outright (the request fails, nothing is kept): more images or bytes than the limits, a zip
entry with an absolute path or a `..` component, a zip bomb (an entry that expands more than
`max_zip_ratio` times, or entries that add up to more than the upload limit), an unreadable zip.
Skipped and counted (the job's `upload` report): files that are not JPEG / PNG / WebP / BMP images
or do not decode, images over the byte or pixel limit, images with a side under `min_image_side`.
Every image is decoded here, once, so the training process never meets a broken one.
"""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

import grpc
from PIL import Image

from serving.errors import Reason, ServingError

__all__ = ["Upload", "UploadLimits", "take_images"]

Code = grpc.StatusCode
MIB = 1 << 20
_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp"}


@dataclass(frozen=True)
class UploadLimits:
    max_images: int = 5000
    max_image_bytes: int = 20 * MIB
    max_image_pixels: int = 40_000_000
    max_upload_bytes: int = 2048 * MIB  # all files together, zips counted expanded
    max_zip_ratio: float = 100.0  # an entry may expand at most this many times (images barely compress)
    min_image_side: int = 16


@dataclass
class Upload:
    kept: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)  # why -> how many: not_image, too_large, too_small

    def to_json(self) -> dict:
        return {"images": self.kept, "bytes": self.bytes, "skipped": dict(self.skipped),
                "skipped_total": sum(self.skipped.values())}


def _refuse(reason: Reason, message: str, code: Code = Code.INVALID_ARGUMENT) -> ServingError:
    return ServingError(code, reason, message, field="images")


def _unsafe_name(name: str) -> bool:
    for path in (PurePosixPath(name), PureWindowsPath(name)):
        if path.is_absolute() or path.anchor or ".." in path.parts:
            return True
    return False


class _Intake:
    def __init__(self, dest: Path, limits: UploadLimits) -> None:
        self.dest, self.limits, self.upload = dest, limits, Upload()
        dest.mkdir(parents=True, exist_ok=True)

    def count(self, size: int) -> None:
        self.upload.bytes += size
        if self.upload.bytes > self.limits.max_upload_bytes:
            raise _refuse(Reason.UPLOAD_TOO_LARGE, f"the upload holds more than {self.limits.max_upload_bytes} bytes "
                          "of files (--max-adaptation-upload-mb); send fewer or smaller images",
                          Code.RESOURCE_EXHAUSTED)

    def add(self, data: bytes) -> None:
        limits = self.limits
        if len(data) > limits.max_image_bytes:
            self.upload.skipped["too_large"] += 1
            return
        try:
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in _FORMATS:
                    self.upload.skipped["not_image"] += 1
                    return
                width, height = image.size
                if width * height > limits.max_image_pixels:
                    self.upload.skipped["too_large"] += 1
                    return
                if min(width, height) < limits.min_image_side:
                    self.upload.skipped["too_small"] += 1
                    return
                image.load()
                suffix = _FORMATS[image.format]
        except Exception:  # noqa: BLE001  whatever PIL raises on a file that is not a good image
            self.upload.skipped["not_image"] += 1
            return
        if self.upload.kept >= limits.max_images:
            raise _refuse(Reason.UPLOAD_TOO_LARGE, f"more than {limits.max_images} images "
                          "(--max-adaptation-images); send fewer", Code.RESOURCE_EXHAUSTED)
        (self.dest / f"{self.upload.kept:06d}{suffix}").write_bytes(data)
        self.upload.kept += 1

    def add_zip(self, name: str, file: BinaryIO) -> None:
        limits = self.limits
        try:
            archive = zipfile.ZipFile(file)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise _refuse(Reason.UPLOAD_UNSAFE, f"{name!r} is not a readable zip file ({exc})") from None
        with archive:
            entries = [e for e in archive.infolist() if not e.is_dir()]
            if len(entries) > 4 * limits.max_images + 1000:
                raise _refuse(Reason.UPLOAD_UNSAFE, f"{name!r} holds {len(entries)} files; at most "
                              f"{limits.max_images} images are taken (--max-adaptation-images)")
            for entry in entries:  # every name and size is checked before anything is expanded
                if _unsafe_name(entry.filename):
                    raise _refuse(Reason.UPLOAD_UNSAFE, f"{name!r}: entry {entry.filename!r} has an absolute path or "
                                  "'..'; zip the images with relative paths inside one folder")
                if entry.file_size > max(1, entry.compress_size) * limits.max_zip_ratio and entry.file_size > MIB:
                    raise _refuse(Reason.UPLOAD_UNSAFE, f"{name!r}: entry {entry.filename!r} expands "
                                  f"{entry.file_size / max(1, entry.compress_size):.0f} times (at most "
                                  f"{limits.max_zip_ratio:g}); a zip bomb is refused")
            expanded = sum(e.file_size for e in entries)
            if expanded > limits.max_upload_bytes:
                raise _refuse(Reason.UPLOAD_UNSAFE, f"{name!r} expands to {expanded} bytes, over the upload limit of "
                              f"{limits.max_upload_bytes} (--max-adaptation-upload-mb)")
            for entry in entries:
                if entry.file_size > limits.max_image_bytes:
                    self.upload.skipped["too_large"] += 1
                    continue
                try:
                    with archive.open(entry) as member:  # never more than the header said (checked by zipfile)
                        data = member.read(limits.max_image_bytes + 1)
                except (zipfile.BadZipFile, RuntimeError, OSError, NotImplementedError, EOFError):
                    self.upload.skipped["not_image"] += 1  # encrypted, corrupt, an unknown compression
                    continue
                self.count(len(data))
                self.add(data)


def take_images(files: Iterable[tuple[str, BinaryIO]], dest: Path, limits: UploadLimits) -> Upload:
    """Check the (name, file) pairs sent and write the usable images into `dest`; raises ServingError
    for a refused upload (the caller removes `dest`)."""
    intake = _Intake(dest, limits)
    sent = 0
    for name, file in files:
        sent += 1
        head = file.read(4)
        file.seek(0)
        if name.lower().endswith(".zip") or head == b"PK\x03\x04":
            intake.add_zip(name, file)
            continue
        data = file.read(limits.max_image_bytes + 1)
        if len(data) > limits.max_image_bytes:
            intake.upload.skipped["too_large"] += 1
            continue
        intake.count(len(data))
        intake.add(data)
    if sent == 0 or (intake.upload.kept == 0 and not intake.upload.skipped):
        raise _refuse(Reason.UPLOAD_EMPTY, "no images were sent; send image files in the field 'images' "
                      "(repeat it for each), or one .zip of them")
    return intake.upload
