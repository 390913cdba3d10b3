"""Hard renderings of real MNIST digits, as the predict command meets digits in the wild.

A test helper, not shipped with the stages. Each rendering takes a real 28x28 MNIST test
digit (uint8, light on dark) and a seeded ``numpy.random.Generator`` and returns a uint8
grayscale image a few hundred pixels wide; the same digit and seed give the same image:

- ``thin_pen``: the digit's centre line drawn with a 2 px pen, dark on white, the digit
  45-75 % of a 400 px image (a tablet or a fine pen: scaled down to MNIST's 20 px, its strokes
  would be a fifth of a pixel wide);
- ``paper_on_desk``: the digit written on a sheet of paper photographed on a dark, textured
  desk, the sheet turned by up to 12 degrees and covering about a fifth to two thirds of the
  frame, with uneven light, a slight blur and grain;
- ``shadowed_page``: the digit on a page filling the frame, lit so that one side gets a third
  of the light of the other, with a hard-edged shadow through the digit on top.

``python -m tests.renderings DIR`` writes the example images shipped in ``digits/`` into DIR
(run from the project's root: it reads ``data/raw``).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.idx import read_idx

PEN = 2  # the thin pen's width in pixels
OVER = 4  # thin pens are drawn this many times larger, then scaled down (antialiasing)
CELLS = 4  # the skeleton's grid has this many cells per MNIST pixel
# The 8 neighbours of a pixel, clockwise from north, as (row, column) steps.
NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide centre line of a boolean mask (Zhang and Suen's thinning, 1984)."""
    image = np.pad(mask.astype(bool), 1)
    changed = True
    while changed:
        changed = False
        for step in (0, 1):
            p = [np.roll(image, (-dr, -dc), axis=(0, 1)) for dr, dc in NEIGHBOURS]
            count = sum(q.astype(np.uint8) for q in p)
            transitions = sum((~p[i] & p[(i + 1) % 8]).astype(np.uint8) for i in range(8))
            north, east, south, west = p[0], p[2], p[4], p[6]
            if step == 0:
                side = ~(north & east & south) & ~(east & south & west)
            else:
                side = ~(north & east & west) & ~(north & south & west)
            remove = image & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                image &= ~remove
                changed = True
    return image[1:-1, 1:-1]


def centre_line(digit: np.ndarray) -> np.ndarray:
    """The skeleton of the digit's strokes, on a grid CELLS times finer than 28x28."""
    big = Image.fromarray(digit).resize((28 * CELLS, 28 * CELLS), Image.BICUBIC)
    return skeleton(np.asarray(big) >= 96)


def draw_centre_line(draw: ImageDraw.ImageDraw, line: np.ndarray, scale: float,
                     origin: tuple[float, float], width: int, fill: int) -> None:
    """Join each pair of 8-neighbours on the skeleton ``line`` with a pen stroke.

    ``scale`` is the size of one skeleton cell on the canvas; ``origin`` is (x, y) of cell 0.
    """
    rows, cols = np.nonzero(line)
    cells = set(zip(rows.tolist(), cols.tolist(), strict=True))
    radius = width / 2
    for r, c in sorted(cells):
        x, y = origin[0] + c * scale, origin[1] + r * scale
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        for dr, dc in NEIGHBOURS[1:5]:  # each neighbouring pair once
            if (r + dr, c + dc) in cells:
                draw.line([(x, y), (x + dc * scale, y + dr * scale)], fill=fill, width=width)


def thin_pen(digit: np.ndarray, rng: np.random.Generator, size: int = 400) -> np.ndarray:
    """The digit's centre line drawn with a PEN px pen, dark ink on white, size x size px.

    MNIST's 20 px box becomes 45-75 % of the image, anywhere it fits with a 5 % margin.
    Drawn OVER times larger and scaled down, so the pen's edges are antialiased as a tablet
    or a scanner makes them.
    """
    box = size * rng.uniform(0.45, 0.75)  # image pixels for MNIST's 20
    margin = 0.05 * size
    corner = rng.uniform(margin, size - box - margin, 2)  # of the 20 px box, MNIST's (4, 4)
    scale = box / 20 / CELLS * OVER
    origin = tuple(float(v - 4 * box / 20) * OVER for v in corner)
    ink, paper = int(rng.integers(0, 60)), int(rng.integers(235, 256))
    canvas = Image.new("L", (size * OVER, size * OVER), paper)
    draw_centre_line(ImageDraw.Draw(canvas), centre_line(digit), scale, origin, PEN * OVER, ink)
    return np.asarray(canvas.resize((size, size), Image.BOX))


def written(digit: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The digit scaled to size x size px as ink cover 0..1, its strokes thinned by 0-40 %.

    Pens on paper are finer than MNIST's strokes scaled up: a grey-level erosion takes off
    up to 40 % of a typical (2.5 px of 28) stroke's width.
    """
    big = Image.fromarray(digit).resize((size, size), Image.BICUBIC)
    erosion = 2 * round(rng.uniform(0.0, 0.4) * 2.5 * size / 28 / 2) + 1
    if erosion > 1:
        big = big.filter(ImageFilter.MinFilter(erosion))
    return np.asarray(big, dtype=np.float32) / 255


def paper_on_desk(digit: np.ndarray, rng: np.random.Generator,
                  size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """A photo of the digit written on a sheet of paper lying on a dark desk.

    The sheet is 50-90 % of the frame's height and 0.75-1.3 times as wide as high, turned by
    up to 12 degrees; the digit covers 60-90 % of its shorter side, the ink reflecting 15-40 %
    of the light the paper does. The desk (grey 25-70) has a blotchy texture of +-25 levels.
    Then light falls off by 5-25 % across the frame, a blur of 0.6-1.4 px softens it all, and
    grain of 2-6 levels is added.
    """
    height, width = size
    desk = smooth_noise(size, rng, blotches=6) * 25 + rng.uniform(25, 70)
    sheet_h = int(height * rng.uniform(0.5, 0.9))
    sheet_w = int(sheet_h * rng.uniform(0.75, 1.3))
    paper = rng.uniform(185, 235)
    sheet = np.full((sheet_h, sheet_w), paper, np.float32)
    digit_size = int(min(sheet_h, sheet_w) * rng.uniform(0.6, 0.9))
    top = int(rng.integers(0, sheet_h - digit_size + 1))
    left = int(rng.integers(0, sheet_w - digit_size + 1))
    darkest = rng.uniform(0.15, 0.4)
    sheet[top:top + digit_size, left:left + digit_size] *= (
        1 - (1 - darkest) * written(digit, digit_size, rng))
    angle = rng.uniform(-12, 12)
    turned = Image.fromarray(sheet).rotate(angle, Image.BILINEAR, expand=True, fillcolor=paper)
    outline = Image.new("L", (sheet_w, sheet_h), 255).rotate(angle, Image.BILINEAR, expand=True)
    photo = Image.fromarray(desk.astype(np.float32))
    free_x, free_y = width - turned.width, height - turned.height
    x = int(rng.integers(min(0, free_x), max(0, free_x) + 1))
    y = int(rng.integers(min(0, free_y), max(0, free_y) + 1))
    photo.paste(turned, (x, y), outline.point(lambda v: 255 if v > 127 else 0))
    lit = np.asarray(photo) * ramp(size, rng, low=rng.uniform(0.75, 0.95))
    return finish(lit, rng, blur=rng.uniform(0.6, 1.4), grain=rng.uniform(2, 6))


def shadowed_page(digit: np.ndarray, rng: np.random.Generator,
                  size: tuple[int, int] = (400, 400)) -> np.ndarray:
    """The digit on a page filling the frame, in a steep light gradient and a hard shadow.

    The digit covers 40-70 % of the page's side, its ink absorbing 60-85 % of the light.
    Light falls linearly, in a random direction, to 30-45 % across the page; on top, a
    hard-edged shadow (a hand, a phone) covers one side of a straight line through the
    digit, keeping 35-55 % of the light, its edge softened by 1-3 px of penumbra. The
    darkest corner gets a tenth to a quarter of the light of the brightest.
    """
    height, width = size
    page = np.full(size, rng.uniform(200, 245), np.float32)
    digit_size = int(min(size) * rng.uniform(0.4, 0.7))
    top = int(rng.integers(0, height - digit_size + 1))
    left = int(rng.integers(0, width - digit_size + 1))
    page[top:top + digit_size, left:left + digit_size] *= (
        1 - rng.uniform(0.6, 0.85) * written(digit, digit_size, rng))
    light = ramp(size, rng, low=rng.uniform(0.3, 0.45))
    through = (top + digit_size * rng.uniform(0.3, 0.7), left + digit_size * rng.uniform(0.3, 0.7))
    edge = Image.fromarray((half_plane(size, through, rng) * 255).astype(np.uint8))
    penumbra = np.asarray(edge.filter(ImageFilter.GaussianBlur(rng.uniform(1, 3))), np.float32)
    light *= 1 - (1 - rng.uniform(0.35, 0.55)) * penumbra / 255
    return finish(page * light, rng, blur=0.7, grain=rng.uniform(2, 4))


def smooth_noise(size: tuple[int, int], rng: np.random.Generator, blotches: int) -> np.ndarray:
    """Noise in about -1..1 varying smoothly over ``blotches`` blotches across the image."""
    coarse = Image.fromarray(rng.uniform(-1, 1, (blotches, blotches)).astype(np.float32))
    return np.asarray(coarse.resize((size[1], size[0]), Image.BICUBIC))


def ramp(size: tuple[int, int], rng: np.random.Generator, low: float) -> np.ndarray:
    """Light falling linearly from 1 to ``low`` across the image, in a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    rows, cols = np.indices(size, dtype=np.float32)
    along = rows * math.sin(angle) + cols * math.cos(angle)
    along = (along - along.min()) / (along.max() - along.min())
    return (1 - (1 - low) * along).astype(np.float32)


def half_plane(size: tuple[int, int], through: tuple[float, float],
               rng: np.random.Generator) -> np.ndarray:
    """1 on one side of a straight line in a random direction through (row, col), else 0."""
    angle = rng.uniform(0, 2 * math.pi)
    rows, cols = np.indices(size, dtype=np.float32)
    side = (rows - through[0]) * math.sin(angle) + (cols - through[1]) * math.cos(angle)
    return (side > 0).astype(np.float32)


def finish(image: np.ndarray, rng: np.random.Generator, blur: float, grain: float) -> np.ndarray:
    """A camera's last touches: a slight Gaussian blur, then sensor grain; uint8."""
    eight_bit = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8))
    blurred = np.asarray(eight_bit.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    return np.clip(blurred + rng.normal(0, grain, image.shape), 0, 255).round().astype(np.uint8)


Rendering = Callable[[np.ndarray, np.random.Generator], np.ndarray]
RENDERINGS: dict[str, Rendering] = {
    "thin_pen": thin_pen, "paper_on_desk": paper_on_desk, "shadowed_page": shadowed_page}
# How each is saved: thin pen drawings as PNG, the photos as a phone's JPEG.
SUFFIX = {"thin_pen": ".png", "paper_on_desk": ".jpg", "shadowed_page": ".jpg"}


def render_file(path: Path, digit: np.ndarray, kind: str, seed: int) -> Path:
    """Save the ``kind`` rendering of ``digit`` (seeded by ``seed``) at ``path``."""
    image = Image.fromarray(RENDERINGS[kind](digit, np.random.default_rng(seed)))
    image.save(path, **({"quality": 85} if path.suffix == ".jpg" else {"optimize": True}))
    return path


# The examples in digits/: (file name, rendering or None for the plain digit scaled up 4x
# and inverted, index of the MNIST test digit, which also seeds the rendering).
EXAMPLES = (
    ("seven.png", None, 0),
    ("two-on-paper.jpg", "paper_on_desk", 1),
    ("one-thin-pen.png", "thin_pen", 2),
    ("zero-in-shadow.jpg", "shadowed_page", 3),
    ("four-thin-pen.png", "thin_pen", 4),
    ("nine-on-paper.jpg", "paper_on_desk", 9),
)


def write_examples(directory: Path, raw_dir: Path = Layout().raw) -> list[Path]:
    """Render the example images of ``digits/`` from real MNIST test digits into ``directory``."""
    images = read_idx(raw_dir / "t10k-images-idx3-ubyte", 3, (28, 28))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, kind, index in EXAMPLES:
        path = directory / name
        if kind is None:
            big = Image.fromarray(255 - images[index]).resize((112, 112), Image.BICUBIC)
            big.save(path, optimize=True)
        else:
            render_file(path, images[index], kind, index)
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.renderings",
                                     description="Write the example digit images into DIR.")
    parser.add_argument("directory", type=Path, metavar="DIR")
    for example in write_examples(parser.parse_args().directory):
        print(example)
