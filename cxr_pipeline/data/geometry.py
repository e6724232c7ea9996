"""Bring a radiograph to the square training size.

Aspect policies:
- ``pad`` (default): letterbox the short side with 0 (air), then resize. Nothing of the
  anatomy is cut, and the scale is isotropic, so measurements (cardiothoracic ratio) survive.
- ``crop``: centre-crop the long side, then resize. Fills the frame, may cut costophrenic angles.
- ``stretch``: resize each axis independently. Distorts anatomy; only for compatibility.
Resampling is Lanczos with Pillow's scale-aware antialiasing, on float32 data, clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from PIL import Image


class AspectPolicy(str, Enum):
    PAD = "pad"
    CROP = "crop"
    STRETCH = "stretch"


@dataclass(frozen=True)
class ResizeRecord:
    """How to map between stored and original pixel coordinates."""

    scale_y: float  # stored pixels per original pixel
    scale_x: float
    offset_y: int  # original-pixel offset of the square's top-left corner (negative = padding)
    offset_x: int


def to_square(pixels: np.ndarray, size: int, policy: AspectPolicy) -> tuple[np.ndarray, ResizeRecord]:
    height, width = pixels.shape
    offset_y = offset_x = 0
    if policy is AspectPolicy.PAD and height != width:
        side = max(height, width)
        offset_y, offset_x = -((side - height) // 2), -((side - width) // 2)
        square = np.zeros((side, side), dtype=np.float32)
        square[-offset_y : -offset_y + height, -offset_x : -offset_x + width] = pixels
        pixels = square
    elif policy is AspectPolicy.CROP and height != width:
        side = min(height, width)
        offset_y, offset_x = (height - side) // 2, (width - side) // 2
        pixels = pixels[offset_y : offset_y + side, offset_x : offset_x + side]
    resized = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
    out = np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)
    record = ResizeRecord(
        scale_y=size / pixels.shape[0],
        scale_x=size / pixels.shape[1],
        offset_y=offset_y,
        offset_x=offset_x,
    )
    return out, record
