"""What every reader returns: display-ready pixels plus the facts the manifest records."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SourceImage:
    # float32 in [0, 1] at the original size, radiographic display convention: bright = dense.
    pixels: np.ndarray
    # Hash of the stored sample values as decoded (before any LUT): equal for the same pixels
    # whatever the container or compression, so exact duplicates are found across formats.
    pixel_hash: str
    fields: dict[str, Any] = field(default_factory=dict)


def hash_pixels(values: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(repr(values.shape).encode())
    digest.update(np.ascontiguousarray(values).astype(values.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()
