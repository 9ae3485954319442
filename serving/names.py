"""Category and version names: what a client may ask for, checked before anything looks them up."""

from __future__ import annotations

import grpc

from landmarks.store_layout import CATEGORY_RE, SHIPPED, SUFFIX, VERSION_RE  # the store's file names
from serving.errors import Reason, ServingError, clip

__all__ = ["CATEGORY_RE", "SHIPPED", "VERSION_RE", "validate_category", "validate_version"]
Code = grpc.StatusCode


def validate_category(name: str, field_name: str = "category") -> str:
    if not isinstance(name, str) or not CATEGORY_RE.fullmatch(name) or name == "core":
        raise ServingError(Code.INVALID_ARGUMENT, Reason.CATEGORY_INVALID,
                           f"{clip(name)} is not a valid category name "
                           f"(lower-case letters, digits, '_' and '-', 1-64 characters, not 'core')",
                           field=field_name)
    return name


def validate_version(version: str, field_name: str = "version", allow_shipped: bool = True) -> str:
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version) or version.endswith(SUFFIX):
        raise ServingError(Code.INVALID_ARGUMENT, Reason.VERSION_INVALID,
                           f"{clip(version)} is not a valid version "
                           f"(letters, digits, '.', '_' and '-', 1-64 characters, starting with a letter or digit)",
                           field=field_name)
    if version == SHIPPED and not allow_shipped:
        raise ServingError(Code.INVALID_ARGUMENT, Reason.VERSION_INVALID,
                           f"{SHIPPED!r} is reserved for the adapter file shipped with the server", field=field_name)
    return version
