"""Image grids for previews in the Dagster UI, MLflow and reports."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, columns: int = 8, gap: int = 2) -> np.ndarray:
    """Tile ``(N, H, W)`` images in [0, 1] into one array, row-major, with a dark gap."""
    if images.ndim != 3 or not len(images):
        raise ValueError(f"expected a non-empty (N, H, W) stack, got shape {images.shape}")
    count, height, width = images.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.zeros((rows * (height + gap) - gap, columns * (width + gap) - gap), dtype=np.float32)
    for index, image in enumerate(images):
        r, c = divmod(index, columns)
        grid[r * (height + gap) : r * (height + gap) + height, c * (width + gap) : c * (width + gap) + width] = image
    return grid


def png_bytes(image: np.ndarray, upscale: int = 1) -> bytes:
    """8-bit PNG of a gray (H, W) or RGB (H, W, 3) image in [0, 1]; nearest-neighbour upscaling
    keeps pixels honest."""
    array = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    picture = Image.fromarray(array)
    if upscale > 1:
        picture = picture.resize((array.shape[1] * upscale, array.shape[0] * upscale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Inline PNG for Markdown viewers that accept data URIs (the Dagster UI does)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
