"""Hard renderings of real MNIST digits, as a user's photos and drawings would show them.

A test helper, not shipped with the stages: each function takes a real 28x28 MNIST digit
(uint8, light on dark) and a seeded ``numpy.random.Generator`` and returns a uint8 grayscale
image of a few hundred pixels, the way the predict command meets digits in the wild:

- ``thin_pen``: the digit's centre line drawn with a 2 px pen, dark on white (a tablet or a
  fine pen, far thinner than MNIST's strokes once scaled down);
- ``paper_on_desk``: the digit written on a sheet of paper photographed on a dark desk, the
  sheet slightly turned and covering only part of the frame, with blur, grain and uneven light;
- ``shadowed_page``: the digit on a page that fills the frame, one side much darker than the
  other and a hard-edged shadow across it (through the digit).

``python -m tests.renderings DIR`` writes the example images shipped in ``digits/`` into DIR.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from stages.idx import read_idx
from stages.paths import RAW_DIR

PEN = 2  # the thin pen's width in pixels
NEIGHBOURS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))


def skeleton(mask: np.ndarray) -> np.ndarray:
    """The one-pixel-wide centre line of a boolean mask (Zhang and Suen's thinning, 1984)."""
    image = np.pad(mask.astype(bool), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(image, (-dr, -dc), axis=(0, 1)) for dr, dc in NEIGHBOURS]
            count = sum(q.astype(np.uint8) for q in p)
            transitions = sum((~p[i] & p[(i + 1) % 8]).astype(np.uint8) for i in range(8))
            # p[0]=north, p[2]=east, p[4]=south, p[6]=west
            if step == 0:
                side = ~(p[0] & p[2] & p[4]) & ~(p[2] & p[4] & p[6])
            else:
                side = ~(p[0] & p[2] & p[6]) & ~(p[0] & p[4] & p[6])
            remove = image & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                image &= ~remove
                changed = True
        if not changed:
            return image[1:-1, 1:-1]


def centre_line(digit: np.ndarray, upscale: int = 4) -> np.ndarray:
    """The skeleton of the digit's strokes, on a grid ``upscale`` times finer than 28x28."""
    big = Image.fromarray(digit).resize((28 * upscale, 28 * upscale), Image.BICUBIC)
    return skeleton(np.asarray(big) >= 96)


def draw_centre_line(draw: ImageDraw.ImageDraw, line: np.ndarray, scale: float,
                     origin: tuple[float, float], width: int, fill: int) -> None:
    """Join each pair of 8-neighbours on the skeleton ``line`` with a pen stroke.

    ``scale`` is the size of one skeleton cell in output pixels; ``origin`` is (x, y) of cell 0.
    """
    rows, cols = np.nonzero(line)
    cells = set(zip(rows.tolist(), cols.tolist(), strict=True))
    radius = width / 2
    for r, c in cells:
        x, y = origin[0] + c * scale, origin[1] + r * scale
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill)
        for dr, dc in NEIGHBOURS[1:5]:  # each neighbour pair once
            if (r + dr, c + dc) in cells:
                draw.line([(x, y), (x + dc * scale, y + dr * scale)], fill=fill, width=width)


def thin_pen(digit: np.ndarray, rng: np.random.Generator, size: int = 400) -> np.ndarray:
    """The digit's centre line drawn with a 2 px pen, dark ink on white, on a size x size image.

    The 20 px MNIST box becomes 45-75 % of the image, placed anywhere it fits. Drawn at 4x
    and scaled down, so the pen's edges are antialiased as a tablet or scanner would make them.
    """
    over = 4
    line = centre_line(digit)
    box = size * rng.uniform(0.45, 0.75)  # output pixels per 20 MNIST pixels
    scale = box / 20 / 4 * over  # per skeleton cell (4 per MNIST pixel), at 4x
    free = size - 28 * box / 20
    origin = tuple(float(v) * over for v in rng.uniform(0, max(free, 0), 2) - 4 * box / 20)
    ink, paper = int(rng.integers(0, 60)), int(rng.integers(235, 256))
    canvas = Image.new("L", (size * over, size * over), paper)
    draw_centre_line(ImageDraw.Draw(canvas), line, scale, origin, PEN * over, ink)
    return np.asarray(canvas.resize((size, size), Image.BOX))


def written(digit: np.ndarray, height: int, rng: np.random.Generator) -> np.ndarray:
    """The digit at ``height`` px for its 28 px, as ink coverage 0..1, its pen 0.6-1x MNIST's."""
    big = Image.fromarray(digit).resize((height, height), Image.BICUBIC)
    thinner = rng.uniform(0.0, 0.4)  # erode up to 40 % of the stroke: pens are finer than MNIST
    size = 2 * round(thinner * height / 28 * 1.5 / 2) + 1
    if size > 1:
        big = big.filter(ImageFilter.MinFilter(size))
    return np.asarray(big, dtype=np.float32) / 255


def paper_on_desk(digit: np.ndarray, rng: np.random.Generator,
                  size: tuple[int, int] = (360, 480)) -> np.ndarray:
    """A photo of the digit written on a sheet of paper lying on a dark desk.

    The sheet (a light grey) covers about 20-60 % of the frame, turned by up to
    12 degrees; the desk is dark with a coarse texture. Then the whole photo gets a lighting
    gradient, a slight blur and sensor grain.
    """
    height, width = size
    desk = smooth_noise(size, rng, cells=6) * 25 + rng.uniform(25, 70)
    sheet_h = int(height * rng.uniform(0.5, 0.9))
    sheet_w = int(sheet_h * rng.uniform(0.75, 1.3))
    paper = rng.uniform(185, 235)
    sheet = np.full((sheet_h, sheet_w), paper, np.float32)
    digit_h = int(min(sheet_h, sheet_w) * rng.uniform(0.6, 0.9))
    ink = written(digit, digit_h, rng)
    top = int(rng.integers(0, sheet_h - digit_h + 1))
    left = int(rng.integers(0, sheet_w - digit_h + 1))
    darkest = rng.uniform(0.15, 0.4)  # ink reflects 15-40 % of the light the paper does
    sheet[top:top + digit_h, left:left + digit_h] *= 1 - (1 - darkest) * ink
    angle = rng.uniform(-12, 12)
    turned = Image.fromarray(sheet).rotate(angle, Image.BILINEAR, expand=True)
    mask = Image.new("L", (sheet_w, sheet_h), 255).rotate(angle, Image.BILINEAR, expand=True)
    photo = Image.fromarray(desk.astype(np.float32))
    free_x, free_y = width - turned.width, height - turned.height
    x = int(rng.integers(min(0, free_x), max(0, free_x) + 1))
    y = int(rng.integers(min(0, free_y), max(0, free_y) + 1))
    photo.paste(turned, (x, y), mask.point(lambda v: 255 if v > 127 else 0))
    lit = np.asarray(photo) * ramp(size, rng, low=rng.uniform(0.75, 0.95))
    return finish(lit, rng, blur=rng.uniform(0.6, 1.4), grain=rng.uniform(2, 6))


def shadowed_page(digit: np.ndarray, rng: np.random.Generator,
                  size: tuple[int, int] = (400, 400)) -> np.ndarray:
    """The digit on a page filling the frame, in a strong light gradient and a hard shadow.

    One side of the page gets 30-45 % of the light of the other (a linear ramp in a random
    direction), and a hard-edged shadow (a hand, a phone) darkens one side of a straight
    line through the digit to 35-55 % more, its edge blurred by 1-3 px of penumbra.
    """
    height, width = size
    paper = rng.uniform(200, 245)
    page = np.full(size, paper, np.float32)
    digit_h = int(min(size) * rng.uniform(0.4, 0.7))
    ink = written(digit, digit_h, rng)
    top = int(rng.integers(0, height - digit_h + 1))
    left = int(rng.integers(0, width - digit_h + 1))
    page[top:top + digit_h, left:left + digit_h] *= 1 - rng.uniform(0.6, 0.85) * ink
    light = ramp(size, rng, low=rng.uniform(0.3, 0.45))
    shadow = half_plane(size, (top + digit_h * rng.uniform(0.3, 0.7),
                               left + digit_h * rng.uniform(0.3, 0.7)), rng)
    penumbra = Image.fromarray((shadow * 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(rng.uniform(1, 3)))
    depth = rng.uniform(0.35, 0.55)  # the shadow keeps this share of the light
    light *= 1 - (1 - depth) * np.asarray(penumbra, np.float32) / 255
    return finish(page * light, rng, blur=0.7, grain=rng.uniform(2, 4))


def smooth_noise(size: tuple[int, int], rng: np.random.Generator, cells: int) -> np.ndarray:
    """Noise in -1..1 that varies over about ``cells`` blobs across the image."""
    coarse = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32))
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
    """1.0 on one side of a straight line in a random direction through (row, col), else 0."""
    angle = rng.uniform(0, 2 * math.pi)
    rows, cols = np.indices(size, dtype=np.float32)
    side = (rows - through[0]) * math.sin(angle) + (cols - through[1]) * math.cos(angle)
    return (side > 0).astype(np.float32)


def finish(image: np.ndarray, rng: np.random.Generator, blur: float, grain: float) -> np.ndarray:
    """A camera's last touches: a slight blur, then sensor grain; uint8."""
    eight_bit = Image.fromarray(np.clip(image, 0, 255).round().astype(np.uint8))
    blurred = np.asarray(eight_bit.filter(ImageFilter.GaussianBlur(blur)), np.float32)
    return np.clip(blurred + rng.normal(0, grain, image.shape), 0, 255).round().astype(np.uint8)


RENDERINGS = {"thin_pen": thin_pen, "paper_on_desk": paper_on_desk,
              "shadowed_page": shadowed_page}


# (file name, rendering, index of the real test digit): one example of each kind, plus a
# plain MNIST digit scaled up and inverted, as a user's first try would be.
EXAMPLES = (
    ("seven.png", None, 0),
    ("two-on-paper.jpg", paper_on_desk, 1),
    ("one-thin-pen.png", thin_pen, 2),
    ("zero-in-shadow.jpg", shadowed_page, 3),
    ("four-thin-pen.png", thin_pen, 4),
)


def write_examples(directory: Path, raw_dir: Path = RAW_DIR) -> list[Path]:
    """Render the example images of ``digits/`` from real MNIST test digits into ``directory``."""
    images = read_idx(raw_dir / "t10k-images-idx3-ubyte", 3, (28, 28))
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, render, index in EXAMPLES:
        rng = np.random.default_rng(index)
        if render is None:
            array = 255 - np.asarray(Image.fromarray(images[index]).resize((112, 112),
                                                                           Image.BICUBIC))
        else:
            array = render(images[index], rng)
        path = directory / name
        options = {"quality": 85} if path.suffix == ".jpg" else {"optimize": True}
        Image.fromarray(array).save(path, **options)
        paths.append(path)
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m tests.renderings",
                                     description="Write the example digit images into DIR.")
    parser.add_argument("directory", type=Path, metavar="DIR")
    for written_path in write_examples(parser.parse_args().directory):
        print(written_path)
