"""Predict the digit in image files with the trained model (not a pipeline stage).

``python -m stages.predict IMAGE...`` prints each image's digit and its probability;
``--json`` prints a JSON list instead. A PNG or JPEG of any size is fitted into 28x28 the
way MNIST itself was made, so the model sees what it was trained on:

1. grayscale; a dark-on-light image is inverted (MNIST digits are light on dark), and the
   background level is subtracted so it becomes 0, as in MNIST;
2. crop to the bounding box of the ink, then scale (antialiased) so its larger side is 20 px,
   keeping the aspect ratio;
3. paste into a black 28x28 canvas so that the centre of mass of the intensities lands on
   pixel (14, 14) (MNIST's training images average (14.00, 14.01));
4. normalize exactly as preprocess did, with the mean and std saved with the model.

An image that cannot be read, or holds no digit, is reported on stderr (one line naming the
file) and in the JSON; the others are still predicted, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from stages.errors import StageError, run_stage
from stages.layout import Layout
from stages.model import load_model, predict_log_probs
from stages.prepared import normalize

SIZE = 28  # the MNIST canvas
BOX = 20  # the larger side of the digit's bounding box in it
FORMATS = ("PNG", "JPEG")
# Ink is what is brighter than this share of the digit's peak above the background: high
# enough to ignore noise and an unevenly lit page around the digit (measured on simulated
# photos), while real MNIST digits re-fitted this way keep their predictions.
INK_FRACTION = 0.3
# A peak less than this many grey levels above the background is no digit: a blank image.
MIN_CONTRAST = 16
BLANK = "no digit found: the image is blank"
MODEL_FILE = Layout().model


class ImageError(StageError):
    """An image that cannot be used: reported for that image while the others still run."""


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = predict_files(args.images, args.model)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "digit" in result:
                print(f"{result['image']}: {result['digit']} "
                      f"(probability {result['probability']:.4f})")
    if any("error" in result for result in results):
        sys.exit(1)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description="Predict the handwritten digit in PNG or JPEG images with the trained model.")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files")
    parser.add_argument("--model", type=Path, default=MODEL_FILE,
                        help=f"model saved by the train stage (default: {MODEL_FILE})")
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of {image, digit, probability} or {image, error}")
    return parser.parse_args(argv)


def predict_files(paths: Sequence[str | Path], model_path: Path) -> list[dict]:
    """One result per path, in order: ``{image, digit, probability}`` or ``{image, error}``.

    The model is loaded first, so a missing model fails before any image is read; the
    readable images then go through it in one batch.
    """
    model, _, normalization = load_model(model_path)
    results: list[dict] = []
    images: list[np.ndarray] = []
    for path in paths:
        try:
            images.append(load_image(path))
            results.append({"image": str(path)})
        except ImageError as err:
            print(f"error: {err}", file=sys.stderr)
            results.append({"image": str(path), "error": str(err)})
    if images:
        inputs = to_model_input(np.stack(images), normalization.mean, normalization.std)
        probs = predict_log_probs(model, inputs, batch_size=len(inputs)).exp()
        best, digits = probs.max(dim=1)
        good = (result for result in results if "error" not in result)
        for result, digit, prob in zip(good, digits.tolist(), best.tolist(), strict=True):
            result.update(digit=digit, probability=round(prob, 4))
    return results


def to_model_input(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28), normalized as preprocess does."""
    return torch.from_numpy(normalize(images, mean, std))


def load_image(path: str | Path) -> np.ndarray:
    """The digit in the image at ``path`` as MNIST would hold it: uint8 28x28, light on dark."""
    ink = light_on_dark(read_gray(path))
    try:
        return fit_digit(ink)
    except ImageError as err:
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


def light_on_dark(gray: np.ndarray) -> np.ndarray:
    """float32 ink intensity: inverted if the background is the lighter part, background 0.

    The border is nearly all background, so a border brighter than the image's mean means
    dark ink on a light background. Its median, robust to a stroke touching the edge, is the
    background level subtracted.
    """
    pixels = gray.astype(np.float32)
    border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
    if np.median(border) > pixels.mean():
        pixels, border = 255 - pixels, 255 - border
    return np.clip(pixels - np.median(border), 0, None)


def fit_digit(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, scale its larger side to 20 px, centre its mass in 28x28 (uint8)."""
    crop = ink[ink_box(ink)]
    crop = crop * (255 / max(float(crop.max()), 1.0))  # MNIST's ink peaks at 255, whatever the pen
    scale = BOX / max(crop.shape)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    resized = Image.fromarray(crop.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    patch = np.asarray(resized)
    return centre_by_mass(np.clip(patch, 0, 255))


def ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The rows and columns holding the ink; an ImageError if there is none.

    Ink is found on a copy blurred over 1 % of the image's size, so that scattered noise (a
    photo's grain, JPEG artefacts) averages out while strokes stay; it is what exceeds
    ``INK_FRACTION`` of the blurred peak.
    """
    eight_bit = Image.fromarray(np.clip(ink, 0, 255).astype(np.uint8))
    smooth = np.asarray(eight_bit.filter(ImageFilter.BoxBlur(max(ink.shape) / 100)))
    peak = int(smooth.max())
    if peak < MIN_CONTRAST:
        raise ImageError(BLANK)
    rows, cols = np.nonzero(smooth >= INK_FRACTION * peak)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def centre_by_mass(patch: np.ndarray) -> np.ndarray:
    """Paste ``patch`` (at most 28x28) into a black 28x28 canvas, its centre of mass on (14, 14).

    The shift is whole pixels, as MNIST's was, and is limited so no ink falls off the canvas
    (only a very lopsided digit needs that, and then its centre lands off by a pixel or two).
    """
    rows, cols = np.indices(patch.shape)
    total = patch.sum()
    if total <= 0:
        raise ImageError(BLANK)
    centre = (rows * patch).sum() / total, (cols * patch).sum() / total
    top, left = (int(np.clip(round(SIZE / 2 - c), 0, SIZE - n))
                 for c, n in zip(centre, patch.shape, strict=True))
    canvas = np.zeros((SIZE, SIZE), dtype=np.uint8)
    canvas[top:top + patch.shape[0], left:left + patch.shape[1]] = np.rint(patch)
    return canvas


if __name__ == "__main__":
    run_stage(main)
