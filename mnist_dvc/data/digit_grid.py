"""Grids of digits as PNG images: evaluate's misclassified digits, review's fixed and broken
ones (no torch here: review reads the raw IDX images)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

COLUMNS = 10
SCALE = 2  # each 28x28 digit drawn at 56x56
CAPTION_HEIGHT = 14


def digit_grid(images: np.ndarray, picks: Sequence[int] | np.ndarray,
               captions: Sequence[str]) -> Image.Image:
    """The digits ``images[picks]`` (uint8, 28x28, light on dark), ten to a row, each with its
    caption underneath; an empty black row when there is none to show."""
    tile = 28 * SCALE
    rows = max(1, -(-len(picks) // COLUMNS))
    grid = Image.new("L", (COLUMNS * tile, rows * (tile + CAPTION_HEIGHT)))
    draw = ImageDraw.Draw(grid)
    for slot, (index, caption) in enumerate(zip(picks, captions, strict=True)):
        x, y = (slot % COLUMNS) * tile, (slot // COLUMNS) * (tile + CAPTION_HEIGHT)
        digit = Image.fromarray(images[index]).resize((tile, tile), Image.Resampling.NEAREST)
        grid.paste(digit, (x, y))
        draw.text((x + 8, y + tile + 1), caption, fill=255)
    return grid


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
