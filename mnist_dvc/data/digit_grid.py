"""Grids of images as PNG: evaluate's misclassified images, review's fixed and broken ones
(no torch here: review reads the raw IDX images)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = 10
TILE = 56  # each image is drawn at least this many pixels a side (MNIST's 28 x 2)
CAPTION_HEIGHT = 14


def tile_scale(image_shape: tuple[int, ...]) -> int:
    """The whole factor that draws an image of ``image_shape`` at least TILE pixels a side."""
    return max(1, -(-TILE // max(image_shape)))


def digit_grid(images: np.ndarray, picks: Sequence[int] | np.ndarray,
               captions: Sequence[str]) -> Image.Image:
    """The images ``images[picks]`` (uint8, N x H x W, light on dark), ten to a row, each
    with its caption underneath; an empty black row when there is none to show."""
    scale = tile_scale(images.shape[1:])
    height, width = (side * scale for side in images.shape[1:])
    rows = max(1, -(-len(picks) // COLUMNS))
    grid = Image.new("L", (COLUMNS * width, rows * (height + CAPTION_HEIGHT)))
    draw = ImageDraw.Draw(grid)
    for slot, (index, caption) in enumerate(zip(picks, captions, strict=True)):
        x, y = (slot % COLUMNS) * width, (slot // COLUMNS) * (height + CAPTION_HEIGHT)
        image = Image.fromarray(images[index]).resize((width, height), Image.Resampling.NEAREST)
        grid.paste(image, (x, y))
        draw.text((x + 8, y + height + 1), caption, fill=255)
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
