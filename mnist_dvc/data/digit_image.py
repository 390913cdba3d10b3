"""An image file's digit as MNIST holds it: uint8 28x28, light on dark (used by predict).

A PNG or JPEG of any size is fitted into 28x28 the way MNIST itself was made, so the model
sees what it was trained on (a model trained on images of another size gets them fitted the
same way into its size, the box and the centre scaled with it):

1. grayscale, averaged down to at most 640 px a side; a dark-on-light image is inverted
   (MNIST digits are light on dark). The polarity comes from the border, unless the border
   is a photo's dark surround of a page (paper on a desk, a page's shadowed edges): then the
   ink is the dark writing on that page;
2. the background becomes 0, as in MNIST: a flat background (a drawing, a scan) is one level
   subtracted; a photo's is estimated locally, what is left once everything as thin as a
   stroke is removed, so shadows, light gradients and the desk go, and dark ink is divided by
   the brightness of the paper under it, so a stroke in shadow keeps its contrast;
3. crop to the bounding box of the digit's ink (its heaviest mark and those near it); strokes
   much thinner than MNIST's (a fine pen) are widened to MNIST's width; scale (antialiased)
   so its larger side is 20 px, keeping the aspect ratio;
4. paste into a black 28x28 canvas so that the centre of mass of the intensities lands on
   pixel (14, 14) (MNIST's training images average (14.00, 14.01)).

An image that cannot be read or holds no digit (blank, under 8x8 px, or a mark under 8 px)
is an ``ImageError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from mnist_dvc.data.spec import MNIST
from mnist_dvc.errors import StageError

SIZE = 28  # the canvas MNIST's digits were fitted into ...
BOX = 20  # ... and the larger side of the digit's bounding box in it
ImageShape = tuple[int, int]
MNIST_SHAPE: ImageShape = MNIST.image_shape
FORMATS = ("PNG", "JPEG")
# Ink is what is brighter than this share of the digit's peak above the background: high
# enough to ignore noise and an unevenly lit page around the digit (measured on simulated
# photos), while real MNIST digits re-fitted this way keep their predictions.
INK_FRACTION = 0.3
# A peak less than this many grey levels above the background is no digit: a blank image.
MIN_CONTRAST = 16
BLANK = "no digit found: the image is blank"
# Images, and marks in them, under this many pixels a side hold no usable digit: at 8 px a
# stroke is a pixel wide and a 3, 8 or 9 differ by a pixel or two; MNIST draws in 20.
MIN_SIDE = 8
WORK_SIDE = 640  # larger images are averaged down to this (the digit ends up 20 px tall)
# Finding a page (has_page): on a copy about COARSE_SIDE px wide, a region brighter than the
# border by PAGE_CONTRAST, three quarters page over windows PAGE_WIDTH of the image wide,
# covering PAGE_AREA of it. Measured on 300 of each rendering in tests/renderings.py: a
# sheet on a desk covers 0.14-0.75 of the frame this way, the lit part of a shadowed page
# 0.11-0.49. Bold MNIST digits light on black reach 0.32 too, so the page test runs only
# behind a border that varies as a photo's does.
COARSE_SIDE = 64
PAGE_CONTRAST = 24
PAGE_WIDTH = 1 / 3
PAGE_AREA = 0.1
# A border whose 10th and 90th percentiles are this close is flat: a drawing or a scan.
# MNIST digits saved as JPEG spread up to 5 levels; photos of pages in shadow or on a desk,
# 23 and more.
FLAT_BORDER = 10
# A photo's background (photo_ink): an opening by a window WINDOW_STROKES stroke widths
# wide, the strokes measured with a window WIDE_WINDOW of the image.
WIDE_WINDOW = 1 / 4
WINDOW_STROKES = 3
GRAIN_SIGMAS = 1.5  # noise allowance subtracted from a photo's ink, in standard deviations
PAPER_FLOOR = 0.25  # dark ink is divided by the paper's brightness, at least this of its top
# Stroke widths in pixels of the 20 px box, as stroke_width measures them: MNIST's training
# digits have a median of 2.5 and none under 1.1; thinner strokes are widened to 2.5.
MNIST_STROKE = 2.5
THIN_STROKE = 1.0
DETAIL = 80  # thin strokes are widened at this size of the digit's larger side (4 x 20)
# The digit's marks (digit_marks): joined on a mask at most MARKS_SIDE px wide; a mark
# within NEAR of the digit's box (in its larger side) is part of it.
MARKS_SIDE = 128
NEAR = 0.25


class ImageError(StageError):
    """An image that cannot be used: reported for that image while the others still run."""



def load_image(path: str | Path, shape: ImageShape = MNIST_SHAPE) -> np.ndarray:
    """The digit in the image at ``path`` as MNIST would hold it: uint8, light on dark, of
    ``shape`` (height, width; MNIST's 28x28 unless a model was trained on another)."""
    try:
        return fit_digit(ink_image(read_gray(path)), shape)
    except ImageError as err:
        if str(err).startswith(f"{path}: "):
            raise
        raise ImageError(f"{path}: {err}") from None


def read_gray(path: str | Path) -> np.ndarray:
    """The image's luminance as uint8 (H, W); any failure to read it is an ImageError."""
    try:
        with Image.open(path, formats=FORMATS) as image:
            return np.asarray(flatten(ImageOps.exif_transpose(image)))
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not a PNG or JPEG image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0] or type(err).__name__
        raise ImageError(f"{path}: unreadable image ({reason[:160]})") from None


def flatten(image: Image.Image) -> Image.Image:
    """8-bit grayscale; a transparent background becomes the opposite of the ink's shade.

    A drawing exported on a transparent background has undefined colour under it, so the
    opaque pixels decide: dark ink goes onto white, light ink onto black.
    """
    if image.mode.startswith("I"):  # 16-bit grayscale: convert("L") would clip, not scale
        return Image.fromarray(np.clip(np.asarray(image) / 257, 0, 255).round().astype(np.uint8))
    if image.mode not in ("RGBA", "LA", "PA") and "transparency" not in image.info:
        return image.convert("L")
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    shade = np.asarray(rgba.convert("L"))[alpha > 127]
    background = 255 if shade.size and shade.mean() < 128 else 0
    canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
    return Image.alpha_composite(canvas, rgba).convert("L")


def ink_image(gray: np.ndarray) -> np.ndarray:
    """float32 ink intensity, light on dark with the background at 0, at a working size.

    A drawing program's canvas, or a scan, is one flat level all round: that level is
    subtracted, as MNIST's own background was 0. A photo's background is not one level (a
    page lit unevenly, a shadow across it, a desk around it), which shows on its border:
    then the background is estimated all over the image (``photo_ink``).
    """
    if min(gray.shape) < MIN_SIDE:
        raise ImageError(f"image too small ({gray.shape[1]}x{gray.shape[0]} px): "
                         f"a digit needs at least {MIN_SIDE}x{MIN_SIDE}")
    work = shrink(gray)
    dark = has_dark_ink(work)
    pixels = 255 - work if dark else work
    border = edge_pixels(pixels)
    if is_flat(border):
        return np.clip(pixels - np.median(border), 0, None)
    return photo_ink(pixels, dark)


def photo_ink(pixels: np.ndarray, dark: bool) -> np.ndarray:
    """The ink above a background estimated locally: what is left without the strokes.

    The background is a morphological opening of the image (``opening``): everything as
    thin as a stroke is removed, while a shadow's edge, a desk or a lighting gradient stays.
    Its window is three stroke widths, the strokes measured on the ink that a window a
    quarter of the image wide finds, lightly blurred so that the speckled edge of a stroke
    in a grainy shadow does not count as perimeter. A narrower window follows a shadow's
    edge, a desk's texture and a sheet's corners more closely.
    """
    wide = odd(min(pixels.shape) * WIDE_WINDOW)
    ink = ink_above(pixels, wide, dark)
    eight_bit = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8))
    stroke = stroke_width(np.asarray(eight_bit.filter(ImageFilter.BoxBlur(1)), np.float32))
    return ink_above(pixels, min(wide, odd(WINDOW_STROKES * stroke)), dark)


def ink_above(pixels: np.ndarray, window: int, dark: bool) -> np.ndarray:
    """The ink above the opening of ``pixels`` by ``window``.

    The photo's grain is subtracted too: the median left over, and GRAIN_SIGMAS times its
    spread, which most pixels of a blank but grainy page stay under (and which keeps a dark
    desk's grain from being magnified below). Dark ink is divided by the brightness of the
    paper under it, as light falling on the page multiplies both: a stroke in shadow keeps
    the contrast it has in full light. A floor (PAPER_FLOOR of the brightest paper) limits
    the gain in the darkest parts.
    """
    level = opening(pixels, window)
    rest = pixels - level
    rest -= np.median(rest[::2, ::2])  # statistics on every fourth pixel: as good, faster
    grain = 1.4826 * float(np.median(np.abs(rest[::2, ::2])))  # the noise's std deviation
    ink = np.clip(rest - GRAIN_SIGMAS * grain, 0, None)
    if dark:
        paper = 255 - level
        top = float(np.percentile(paper[::2, ::2], 95))
        ink *= 255 / np.maximum(paper, max(PAPER_FLOOR * top, 1.0))
    return ink


def is_flat(border: np.ndarray) -> bool:
    """Whether the border's pixels are all but one level (within FLAT_BORDER grey levels)."""
    low, high = np.percentile(border, [10, 90])
    return bool(high - low <= FLAT_BORDER)


def shrink(gray: np.ndarray) -> np.ndarray:
    """float32 copy of ``gray``, averaged down by a whole factor to at most WORK_SIDE a side.

    The digit ends up 20 px tall: a phone's 4000 px photo holds nothing more that matters,
    and the filters below cost time in proportion to the pixels. A long thin image keeps
    MIN_SIDE px across.
    """
    factor = min(-(-max(gray.shape) // WORK_SIDE), min(gray.shape) // MIN_SIDE)
    if factor > 1:
        gray = np.asarray(Image.fromarray(gray).reduce(factor))
    return gray.astype(np.float32)


def has_dark_ink(gray: np.ndarray) -> bool:
    """Whether the digit is dark on a lighter background (a page) rather than light on dark.

    The border is mostly background: a border brighter than the mean means dark ink, and a
    dark border as flat as a drawing program's canvas means light ink. A dark border that
    varies is a photo's, and may surround a page (paper on a desk, a page whose edges are in
    shadow): if a bright region too thick to be a stroke covers a good part of the image,
    it is that page, and the handwriting on it is dark.
    """
    border = edge_pixels(gray)
    if np.median(border) > gray.mean():
        return True
    return not is_flat(border) and has_page(gray)


def has_page(gray: np.ndarray) -> bool:
    """Whether a bright region at least a third of the image thick covers PAGE_AREA of it.

    Found on a copy averaged down to about 64 px: a window a third of the image wide is on
    the page if three quarters of its pixels are brighter than halfway from the border to
    the page (the digit's strokes are the rest).
    """
    factor = -(-max(gray.shape) // COARSE_SIDE)
    coarse = np.asarray(Image.fromarray(gray).reduce(factor)) if factor > 1 else gray
    floor = float(np.median(edge_pixels(coarse)))
    window = odd(min(coarse.shape) * PAGE_WIDTH)
    eight_bit = Image.fromarray(np.clip(coarse, 0, 255).astype(np.uint8))
    bright = np.asarray(eight_bit.filter(ImageFilter.RankFilter(window, window * window // 4)))
    level = (floor + float(bright.max())) / 2
    if level - floor < PAGE_CONTRAST / 2:
        return False
    centres = (bright > level).astype(np.float32)
    windows = running(running(centres, window, 0, np.maximum), window, 1, np.maximum)
    return float(np.mean((windows > 0) & (coarse > level))) >= PAGE_AREA


def edge_pixels(image: np.ndarray) -> np.ndarray:
    """The pixels on the image's four edges."""
    return np.concatenate([image[0], image[-1], image[1:-1, 0], image[1:-1, -1]])


def opening(image: np.ndarray, window: int) -> np.ndarray:
    """Grey-level opening by a square ``window``: bright features narrower than it removed.

    The image is first extended by its edge pixels, so a region cut by the image's edge
    counts as wide as it may be beyond it.
    """
    if window < 3:
        return image.astype(np.float32)
    padded = np.pad(image.astype(np.float32), window, mode="edge")
    eroded = running(running(padded, window, 0, np.minimum), window, 1, np.minimum)
    opened = running(running(eroded, window, 0, np.maximum), window, 1, np.maximum)
    return opened[window:-window, window:-window]


def running(image: np.ndarray, window: int, axis: int, op: np.ufunc) -> np.ndarray:
    """``op`` (np.minimum or np.maximum) over a centred odd ``window`` along ``axis``.

    van Herk and Gil-Werman's method: prefix and suffix extremes within blocks of the window's
    length, so the cost does not grow with the window (Pillow's MinFilter grows with its area).
    Each step of the scans is one operation on whole rows. Beyond the edges the edge pixels
    are repeated.
    """
    data = np.moveaxis(image, axis, 0)
    length, radius = data.shape[0], window // 2
    blocks = -(-(length + 2 * radius) // window)
    extra = blocks * window - length - radius
    padded = np.pad(data, [(radius, extra)] + [(0, 0)] * (data.ndim - 1), mode="edge")
    prefix: np.ndarray = padded.reshape(blocks, window, -1)
    suffix: np.ndarray = prefix.copy()
    for step in range(1, window):
        op(prefix[:, step], prefix[:, step - 1], out=prefix[:, step])
        op(suffix[:, window - 1 - step], suffix[:, window - step],
           out=suffix[:, window - 1 - step])
    prefix, suffix = prefix.reshape(padded.shape), suffix.reshape(padded.shape)
    return np.moveaxis(op(suffix[:length], prefix[window - 1:window - 1 + length]), 0, axis)


def stroke_width(ink: np.ndarray) -> float:
    """The mean width in pixels of the strokes in ``ink``: twice the area over the perimeter.

    Measured on the pixels above half the peak. A stroke of width w and length L has area wL
    and perimeter about 2L; the perimeter is counted as pixel edges, which overcount a slanted
    boundary by 4/pi on average over directions.
    """
    peak = float(ink.max())
    if peak <= 0:
        return 1.0
    mask = ink >= peak / 2
    edges = (np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
             + np.count_nonzero(edge_pixels(mask)))
    return max(1.0, 2 * float(np.count_nonzero(mask)) / (edges * np.pi / 4))


def odd(size: float) -> int:
    """``size`` made an odd integer (2 * floor(size / 2) + 1), at least 1."""
    return max(1, 2 * int(size // 2) + 1)


def fit_digit(ink: np.ndarray, shape: ImageShape = MNIST_SHAPE) -> np.ndarray:
    """Crop to the ink, scale its larger side to 20 px, centre its mass in 28x28 (uint8);
    for another ``shape``, the box is the same share of its shorter side."""
    crop = thicken(ink[ink_box(ink)])
    crop = crop * (255 / max(float(crop.max()), 1.0))  # MNIST's ink peaks at 255, whatever the pen
    scale = max(1, min(shape) * BOX // SIZE) / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    patch = np.asarray(resized)
    return centre_by_mass(np.clip(patch, 0, 255), shape)


def thicken(crop: np.ndarray) -> np.ndarray:
    """The digit with strokes at least as wide as MNIST's, relative to its size.

    A fine pen's strokes, scaled down with the digit to 20 px, would be a fraction of a pixel
    wide and faint: nothing like the 2-3 px strokes the model learnt. Strokes thinner than
    THIN_STROKE (in 20 px units) are widened to MNIST_STROKE by a dilation with a disc, done
    at DETAIL px (4 times the final scale) so that the disc is round and the edges stay
    antialiased. The crop is brought to that size by the maximum of each block, not the
    mean, so a thin stroke stays a full-strength line instead of a faint, uneven one.
    """
    if stroke_width(crop) * BOX / max(crop.shape) >= THIN_STROKE:
        return crop
    factor = max(1, max(crop.shape) // DETAIL)
    height, width = -(-crop.shape[0] // factor), -(-crop.shape[1] // factor)
    padded = np.zeros((height * factor, width * factor), np.float32)
    padded[:crop.shape[0], :crop.shape[1]] = crop
    pooled = padded.reshape(height, factor, width, factor).max(axis=(1, 3))
    # a disc of diameter d widens strokes by d and the digit's box by d too: solve
    # w + d = MNIST_STROKE * (side + d) / BOX for d
    share = MNIST_STROKE / BOX
    return dilate(pooled, (share * max(pooled.shape) - stroke_width(pooled)) / (1 - share))


def dilate(image: np.ndarray, diameter: float) -> np.ndarray:
    """Grey-level dilation by a disc of ``diameter`` pixels, the image grown to hold it."""
    radius = max(0, round((diameter - 1) / 2))
    padded = np.pad(image, radius)
    out = padded.copy()
    height, width = image.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy * dy + dx * dx <= radius * radius + radius:
                shifted = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
                region = out[radius:radius + height, radius:radius + width]
                np.maximum(region, shifted, out=region)
    return out


def ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns holding the digit's ink; an ImageError if there is none.

    Ink is found on a copy blurred over 1 % of the image's size, so that scattered noise (a
    photo's grain, JPEG artefacts) averages out while strokes stay; it is what exceeds
    ``INK_FRACTION`` of the blurred peak. Of that, the digit is the connected mark holding
    the most ink, with the marks near it (``digit_marks``): a sheet's edge, a desk's grain
    or a speck elsewhere in a photo does not stretch the box.
    """
    eight_bit = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8))
    smooth = np.asarray(eight_bit.filter(ImageFilter.BoxBlur(max(ink.shape) / 100)))
    peak = int(smooth.max())
    if peak < MIN_CONTRAST:
        raise ImageError(BLANK)
    rows, cols = np.nonzero(digit_marks(smooth >= INK_FRACTION * peak, smooth))
    box = slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)
    height, width = extent(ink[box] >= INK_FRACTION * ink[box].max())
    if max(height, width) < MIN_SIDE:
        raise ImageError(f"no digit found: the only mark is {width}x{height} px "
                         f"(a digit needs at least {MIN_SIDE} px)")
    return box


def extent(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box holding the True pixels of ``mask`` (at least one)."""
    rows, cols = np.nonzero(mask)
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def digit_marks(mask: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The part of ``mask`` that is the digit: its heaviest connected mark and those near it.

    Marks are found on a copy of the mask pooled to at most MARKS_SIDE px a side (any pixel
    of a block), which is quick; a mark belongs to the digit if its box comes within NEAR of
    the digit's box, in units of that box's larger side, so a 5's detached bar still does.
    """
    factor = -(-max(mask.shape) // MARKS_SIDE)
    height, width = -(-mask.shape[0] // factor), -(-mask.shape[1] // factor)
    padded = np.zeros((height * factor, width * factor), bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask
    pooled = np.asarray(padded.reshape(height, factor, width, factor).any(axis=(1, 3)))
    labels = label(pooled)
    heavy = np.bincount(labels.ravel(), weights=pool_sum(weight * mask, factor, (height, width)))
    heavy[0] = 0
    boxes = mark_boxes(labels)
    chosen = {int(heavy.argmax())}
    grown = True
    while grown:
        top, left, bottom, right = merged(boxes[n] for n in chosen)
        margin = NEAR * max(bottom - top, right - left)
        near = {n for n, (t, lf, b, r) in boxes.items()
                if t <= bottom + margin and b >= top - margin
                and lf <= right + margin and r >= left - margin}
        grown = not near <= chosen
        chosen |= near
    keep = np.isin(labels, sorted(chosen))
    full = np.repeat(np.repeat(keep, factor, axis=0), factor, axis=1)
    return mask & full[:mask.shape[0], :mask.shape[1]]


def label(mask: np.ndarray) -> np.ndarray:
    """Connected regions of ``mask`` (8-connected) numbered by a pixel of each; 0 elsewhere.

    Each pixel takes the smallest number among its neighbours, then the number its number's
    pixel holds (pointer jumping), until nothing changes: a few dozen vectorised passes.
    """
    height, width = mask.shape
    none = height * width
    labels = np.where(mask, np.arange(none).reshape(mask.shape), none)
    while True:
        padded = np.pad(labels, 1, constant_values=none)
        least = labels.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                np.minimum(least, padded[dy:dy + height, dx:dx + width], out=least)
        least = np.where(mask, least, none)
        flat = np.append(least.ravel(), none)
        jumped = flat[flat[:-1]].reshape(mask.shape)
        if np.array_equal(jumped, labels):
            return np.where(mask, labels + 1, 0)
        labels = jumped


def pool_sum(image: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Sums over ``factor`` x ``factor`` blocks, padded with zeros to ``shape`` blocks."""
    padded = np.zeros((shape[0] * factor, shape[1] * factor), np.float64)
    padded[:image.shape[0], :image.shape[1]] = image
    return padded.reshape(shape[0], factor, shape[1], factor).sum(axis=(1, 3)).ravel()


def mark_boxes(labels: np.ndarray) -> dict[int, tuple[int, int, int, int]]:
    """{number: (top, left, bottom, right)} of each numbered region, inclusive."""
    numbered = labels > 0
    rows, cols = np.nonzero(numbered)
    numbers = labels[numbered]
    count = int(labels.max()) + 1
    tops, lefts = np.full(count, labels.size), np.full(count, labels.size)
    bottoms, rights = np.full(count, -1), np.full(count, -1)
    np.minimum.at(tops, numbers, rows)
    np.minimum.at(lefts, numbers, cols)
    np.maximum.at(bottoms, numbers, rows)
    np.maximum.at(rights, numbers, cols)
    return {int(n): (int(tops[n]), int(lefts[n]), int(bottoms[n]), int(rights[n]))
            for n in np.unique(numbers)}


def merged(boxes: Iterable[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """The smallest box holding all ``boxes``."""
    tops, lefts, bottoms, rights = zip(*boxes, strict=True)
    return min(tops), min(lefts), max(bottoms), max(rights)


def centre_by_mass(patch: np.ndarray, shape: ImageShape = MNIST_SHAPE) -> np.ndarray:
    """Paste ``patch`` (at most 28x28) into a black 28x28 canvas, its centre of mass on (14, 14)
    (or into a canvas of ``shape``, on its centre).

    The shift is whole pixels, as MNIST's was, and is limited so no ink falls off the canvas
    (only a very lopsided digit needs that, and then its centre lands off by a pixel or two).
    """
    rows, cols = np.indices(patch.shape)
    total = patch.sum()
    if total <= 0:
        raise ImageError(BLANK)
    centre = (rows * patch).sum() / total, (cols * patch).sum() / total
    top, left = (int(np.clip(round(side / 2 - c), 0, side - n))
                 for c, n, side in zip(centre, patch.shape, shape, strict=True))
    canvas = np.zeros(shape, dtype=np.uint8)
    canvas[top:top + patch.shape[0], left:left + patch.shape[1]] = np.rint(patch)
    return canvas
