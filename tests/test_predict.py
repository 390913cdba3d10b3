"""The predict command: MNIST-style fitting of image files, its CLI, and real-digit accuracy.

The tests on real MNIST digits need ``data/raw`` and ``data/model/model.pt`` from ``dvc repro``
and are skipped without them; the others use synthetic images and a freshly initialized model.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnist_dvc.commands.predict import main, predict_files, to_model_input
from mnist_dvc.config.workspace import Layout
from mnist_dvc.data.digit_image import ImageError, load_image
from mnist_dvc.data.idx import read_idx
from mnist_dvc.data.prepared import Normalization
from mnist_dvc.data.spec import DatasetSpec
from mnist_dvc.errors import run_stage
from mnist_dvc.model.nets import (
    CHECKPOINT_KIND,
    build_model,
    load_model,
    predict_log_probs,
    save_model,
)
from mnist_dvc.model.torch_files import torch_save_verified
from tests.conftest import REPO_ROOT
from tests.renderings import RENDERINGS, SUFFIX, render_file

# Tests on real digits need real MNIST and a trained model: the e2e pipeline makes them
# where `dvc repro` has not run in this checkout.
needs_real_data = pytest.mark.e2e


# --- helpers ---------------------------------------------------------------------------------

def draw_seven(size: tuple[int, int] = (120, 90), offset: tuple[int, int] = (10, 10),
               ink: int = 255, background: int = 0) -> np.ndarray:
    """A thick-stroked 7 of about 60x40 px on a (height, width) canvas, top-left at offset."""
    image = Image.new("L", (size[1], size[0]), background)
    y, x = offset
    ImageDraw.Draw(image).line([(x, y), (x + 40, y), (x + 15, y + 60)], fill=ink, width=7)
    return np.asarray(image)


def save(path: Path, array: np.ndarray, **options: object) -> Path:
    Image.fromarray(array).save(path, **options)
    return path


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(image.shape)
    total = image.sum(dtype=np.float64)
    return (rows * image).sum() / total, (cols * image).sum() / total


def ink_extent(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of the non-zero pixels."""
    rows, cols = np.nonzero(image)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


def border(image: np.ndarray) -> np.ndarray:
    return np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])


def run_main(argv: list[str]) -> int:
    """``main(argv)`` as the command runs it (one-line errors); returns the exit status."""
    try:
        run_stage(lambda: main(argv))
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained compact net saved as train saves it: its digits are arbitrary but fixed."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, "compact", build_model("compact"), Normalization(0.1307, 0.3081))
    return path


@pytest.fixture
def two_sevens(tmp_path: Path) -> list[Path]:
    return [save(tmp_path / "seven.png", draw_seven()),
            save(tmp_path / "seven.jpg", draw_seven(ink=20, background=230), quality=90)]


# --- the plumbing, on synthetic images (always run) -----------------------------------------


@pytest.mark.parametrize(("what", "expected"), [
    ("text", "not a file written by this project (no checksum header)"),
    ("checkpoint", "a training checkpoint, not a model saved by the train stage"),
    ("directory", "is a directory, not a file"),
    ("damaged", "checksum mismatch (damaged, truncated or tampered with)"),
])
def test_a_model_that_is_not_one_is_one_line_and_exit_1(tiny_model, two_sevens, tmp_path,
                                                        capsys, what, expected):
    model = tmp_path / "model"
    if what == "text":
        model.write_text("these are not weights\n")
    elif what == "checkpoint":
        torch_save_verified(model, {"kind": CHECKPOINT_KIND})
    elif what == "directory":
        model.mkdir()
    else:  # a 4 KiB block zeroed
        data = bytearray(tiny_model.read_bytes())
        data[-4096 - 64:-64] = bytes(4096)
        model.write_bytes(bytes(data))
    assert run_main(["--model", str(model), str(two_sevens[0])]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {model}: {expected}" + (
        " (that is data/model/model.pt)\n" if what == "checkpoint" else "\n")

def test_json_lists_predictions_and_errors_in_order(tiny_model, two_sevens, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "missing.png"
    argv = [str(two_sevens[0]), str(missing), str(two_sevens[1])]

    assert run_main([*argv, "--json", "--model", str(tiny_model)]) == 1

    out, err = capsys.readouterr()
    results = json.loads(out)
    assert [r["image"] for r in results] == argv
    assert set(results[1]) == {"image", "error"}
    assert str(missing) in results[1]["error"] and "not found" in results[1]["error"]
    assert err.splitlines() == [f"error: {results[1]['error']}"]
    # the good images were predicted in the batch exactly as the model sees them one by one
    model, _, normalization, _ = load_model(tiny_model)
    for path, result in zip(two_sevens, results[::2], strict=True):
        assert set(result) == {"image", "class", "probability"}
        inputs = to_model_input(load_image(path)[None], *normalization)
        probs = predict_log_probs(model, inputs, batch_size=1).exp()[0]
        assert result["class"] == str(int(probs.argmax()))  # MNIST's class names
        assert result["probability"] == pytest.approx(float(probs.max()), abs=1e-4)
        assert 0 < result["probability"] <= 1


def test_text_output_and_exit_zero_when_all_succeed(tiny_model, two_sevens, capsys):
    assert run_main([*map(str, two_sevens), "--model", str(tiny_model)]) == 0

    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert err == "" and len(lines) == 2
    for path, line in zip(two_sevens, lines, strict=True):
        name, _, rest = line.rpartition(": ")
        digit, _, probability = rest.partition(" (probability ")
        assert name == str(path) and digit in list("0123456789")
        assert 0 < float(probability.rstrip(")")) <= 1


@pytest.mark.parametrize("content", ["random", "truncated", "bmp", "directory", "blank"])
def test_a_bad_image_is_one_line_naming_it_and_the_others_still_run(
        content, tiny_model, two_sevens, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    if content == "random":
        bad.write_bytes(np.random.default_rng(0).bytes(3000))
    elif content == "truncated":
        bad.write_bytes(save(tmp_path / "whole.png", draw_seven()).read_bytes()[:200])
    elif content == "bmp":
        bad = save(tmp_path / "seven.bmp", draw_seven())
    elif content == "directory":
        bad.mkdir()
    else:
        bad = save(tmp_path / "blank.png", np.full((50, 40), 255, np.uint8))

    status = run_main([str(two_sevens[0]), str(bad), str(two_sevens[1]), "--json",
                       "--model", str(tiny_model)])

    out, err = capsys.readouterr()
    assert status == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {bad}: ")
    results = json.loads(out)
    assert set(results[1]) == {"image", "error"} and results[1]["image"] == str(bad)
    assert "class" in results[0] and "class" in results[2]


def test_blank_images_of_any_shade_are_reported_not_predicted(tmp_path):
    for shade in (0, 128, 255):
        path = save(tmp_path / f"blank{shade}.png", np.full((30, 30), shade, np.uint8))
        with pytest.raises(ImageError, match="no digit found: the image is blank"):
            load_image(path)


def test_missing_model_is_one_line_and_exit_1_from_the_command_line(two_sevens, tmp_path):
    model = tmp_path / "no-model.pt"
    done = subprocess.run(
        [sys.executable, "-m", "mnist_dvc", "predict", "--model", str(model),
         str(two_sevens[0])],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True, text=True, timeout=120)

    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"error: {model}: file not found (run the stage that makes it: dvc repro)"]


def test_off_centre_digit_is_scaled_to_20_px_and_centred_by_mass(tmp_path):
    # a lopsided shape far from the centre of a non-square canvas: a disc with a tail
    image = Image.new("L", (300, 200), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((200, 20, 260, 80), fill=255)
    draw.line([(230, 50), (230, 170)], fill=255, width=15)
    source = np.asarray(image)
    rows, _ = np.nonzero(source)
    assert abs(centre_of_mass(source)[0] - (rows.min() + rows.max()) / 2) > 10  # lopsided

    fitted = load_image(save(tmp_path / "blob.png", source))

    assert fitted.shape == (28, 28) and fitted.dtype == np.uint8
    row, col = centre_of_mass(fitted)
    # the shift is whole pixels, so a symmetric shape of even width lands exactly 0.5 off
    assert abs(row - 14) <= 0.5 + 1e-9 and abs(col - 14) <= 0.5 + 1e-9
    height, width = ink_extent(fitted)
    assert height == 20  # the larger side: 155 px of ink scaled to 20
    assert width == pytest.approx(20 * 61 / 158, abs=1)  # the aspect ratio is kept
    assert fitted.max() == 255


@pytest.mark.parametrize(("shape", "box"), [((56, 56), 40), ((21, 35), 15)])
def test_a_digit_is_fitted_into_another_shape_in_the_same_proportions(tmp_path, shape, box):
    image = Image.new("L", (300, 200), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 20, 160, 80), fill=255)
    draw.line([(130, 50), (130, 170)], fill=255, width=15)

    fitted = load_image(save(tmp_path / "blob.png", np.asarray(image)), shape)

    assert fitted.shape == shape and fitted.dtype == np.uint8
    assert ink_extent(fitted)[0] == box  # MNIST's 20 of 28, of the shorter side
    row, col = centre_of_mass(fitted)
    assert abs(row - shape[0] / 2) <= 0.5 + 1e-9 and abs(col - shape[1] / 2) <= 0.5 + 1e-9


def test_predict_fits_images_to_the_models_shape_and_names_its_classes(tmp_path, two_sevens):
    dataset = DatasetSpec("idx", (20, 24), ("ant", "bee", "cat"))
    torch.manual_seed(3)
    model = build_model("compact", image_shape=dataset.image_shape, num_classes=3).eval()
    save_model(tmp_path / "model.pt", "compact", model, Normalization(0.2, 0.3), dataset)

    results = predict_files(two_sevens, tmp_path / "model.pt")

    for path, result in zip(two_sevens, results, strict=True):
        inputs = to_model_input(load_image(path, (20, 24))[None], 0.2, 0.3)
        probs = predict_log_probs(model, inputs, 1).exp()[0]
        assert result == {"image": str(path), "class": dataset.class_names[int(probs.argmax())],
                          "probability": round(float(probs.max()), 4)}


def test_a_very_lopsided_digit_keeps_all_its_ink(tmp_path):
    """Centring its mass exactly would push part of it off the canvas: it stops at the edge."""
    image = Image.new("L", (100, 100), 0)
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 50, 50), fill=255)
    draw.line([(30, 30), (30, 90)], fill=100, width=3)

    fitted = load_image(save(tmp_path / "lopsided.png", np.asarray(image)))

    height, width = ink_extent(fitted)
    # centred exactly, its bottom row would fall off the canvas: all 20 rows are kept
    assert height == 20 and width == pytest.approx(20 * 41 / 81, abs=1)
    row, col = centre_of_mass(fitted)
    assert 12.5 <= row < 13.5 and abs(col - 14) <= 0.5 + 1e-9  # as near 14 as the ink allows


def test_dark_on_light_is_inverted_to_mnist_light_on_dark(tmp_path):
    light_on_dark = load_image(save(tmp_path / "mnist-like.png", draw_seven()))
    dark_on_light = load_image(save(tmp_path / "paper.png", 255 - draw_seven()))

    assert border(dark_on_light).max() == 0 and dark_on_light.max() == 255
    assert np.array_equal(dark_on_light, light_on_dark)


def test_faint_ink_is_stretched_to_the_full_range_like_mnist(tmp_path):
    faint = load_image(save(tmp_path / "faint.png", draw_seven(ink=90, background=30)))
    bold = load_image(save(tmp_path / "bold.png", draw_seven()))

    assert faint.max() == 255 and border(faint).max() == 0
    assert np.abs(faint.astype(int) - bold).max() <= 3


def test_grey_noisy_unevenly_lit_page_fits_like_a_clean_drawing(tmp_path):
    """Pencil on paper: background 200 with grain and a lighting gradient, ink at 80."""
    clean = draw_seven(size=(240, 300), offset=(60, 150)).astype(np.float64)
    rng = np.random.default_rng(0)
    page = (200 - clean * 120 / 255 + rng.normal(0, 12, clean.shape)
            + np.linspace(-20, 20, clean.shape[1]))
    photo = save(tmp_path / "photo.jpg", np.clip(page, 0, 255).astype(np.uint8), quality=80)

    fitted = load_image(photo)
    reference = load_image(save(tmp_path / "clean.png", 255 - clean.astype(np.uint8)))

    assert ink_extent(fitted > 64) == pytest.approx(ink_extent(reference > 64), abs=1)
    assert np.corrcoef(fitted.ravel(), reference.ravel())[0, 1] > 0.9


@pytest.mark.parametrize("ink", [0, 255])
def test_a_drawing_on_a_transparent_background(ink, tmp_path):
    """The colour under transparent pixels is arbitrary; the ink's shade decides the background."""
    mask = draw_seven()
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[..., :3] = ink
    rgba[..., 3] = mask
    fitted = load_image(save(tmp_path / "transparent.png", rgba))

    expected = load_image(save(tmp_path / "plain.png", mask))
    assert np.abs(fitted.astype(int) - expected).max() <= 2


# --- real MNIST digits rendered as image files (need `dvc repro`) ---------------------------

# Measured with the default model on all 9,923 test digits it gets right in prepared form,
# rendered as below, upright and inverted alike: 28x28 PNG 100 %, 112x112 PNG 99.80 %,
# off-centre on 90x140 99.68 %, JPEG 99.88 %. About 0.07 misses are expected in 40, so one
# is allowed: a margin for another trained model, while a real regression still fails.
MIN_CORRECT = 39


@pytest.fixture(scope="module")
def real_digits(trained_project: Path) -> tuple[np.ndarray, np.ndarray]:
    """40 test digits, 4 of each class, that the model gets right in their prepared form."""
    project = Layout(trained_project)
    images = read_idx(project.raw / "t10k-images-idx3-ubyte", 3, (28, 28))
    labels = read_idx(project.raw / "t10k-labels-idx1-ubyte", 1)
    order = np.random.default_rng(0).permutation(len(labels))[:1000]
    model, _, normalization, _ = load_model(project.model)
    inputs = to_model_input(images[order], *normalization)
    predicted = predict_log_probs(model, inputs, batch_size=1000).argmax(1).numpy()
    right = order[predicted == labels[order]]
    chosen = np.concatenate([right[labels[right] == digit][:4] for digit in range(10)])
    return images[chosen], labels[chosen].astype(int)


def render(directory: Path, images: np.ndarray, invert: bool) -> list[Path]:
    """Each digit as a file, by turns: 28x28 PNG, 112x112 PNG, off-centre on 90x140, JPEG."""
    directory.mkdir()
    paths = []
    for i, image in enumerate(images):
        big = Image.fromarray(image).resize((112, 112), Image.BICUBIC)
        kind = i % 4
        if kind == 0:
            array, suffix = image, "png"
        elif kind == 1:
            array, suffix = np.asarray(big), "png"
        elif kind == 2:
            array, suffix = np.zeros((140, 90), np.uint8), "png"
            top, left = [(4, 2), (80, 30), (40, 34)][i % 3]
            array[top:top + 56, left:left + 56] = np.asarray(big.resize((56, 56)))
        else:
            array, suffix = np.asarray(big), "jpg"
        paths.append(save(directory / f"{i:02d}.{suffix}", 255 - array if invert else array))
    return paths


@needs_real_data
def test_real_digits_as_files_are_recognised_from_the_command_line(real_digits, tmp_path,
                                                                  trained_project):
    images, labels = real_digits
    paths = render(tmp_path / "upright", images, invert=False)

    # cwd is a trained project, so this also runs the default model path
    done = subprocess.run([sys.executable, "-m", "mnist_dvc", "predict", "--json",
                           *map(str, paths)],
                          cwd=trained_project, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                          capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert [r["image"] for r in results] == list(map(str, paths))
    assert sum(r.get("class") == str(label) for r, label in zip(results, labels, strict=True)) \
        >= MIN_CORRECT
    assert all(0 < r["probability"] <= 1 for r in results)


@needs_real_data
def test_real_digits_dark_on_light_are_recognised(real_digits, tmp_path, trained_project):
    images, labels = real_digits
    paths = render(tmp_path / "inverted", images, invert=True)

    results = predict_files(paths, Layout(trained_project).model)

    assert sum(r.get("class") == str(label) for r, label in zip(results, labels, strict=True)) \
        >= MIN_CORRECT
    assert all(0 < r["probability"] <= 1 for r in results)


@needs_real_data
def test_a_real_28x28_digit_is_refitted_almost_unchanged(real_digits, tmp_path):
    """MNIST digits already are fitted this way: re-fitting one moves little ink."""
    images, _ = real_digits
    for i, image in enumerate(images[:10]):
        fitted = load_image(save(tmp_path / f"{i}.png", image))
        assert np.abs(centre_of_mass(fitted)[0] - centre_of_mass(image)[0]) <= 1
        assert np.abs(centre_of_mass(fitted)[1] - centre_of_mass(image)[1]) <= 1
        assert max(ink_extent(fitted)) in (19, 20, 21)


# --- images with no usable digit ---------------------------------------------------------

def one_dark_pixel(size: int) -> np.ndarray:
    image = np.full((size, size), 255, np.uint8)
    image[size // 2, size // 2] = 0
    return image


def speck(size: int, side: int) -> np.ndarray:
    image = np.full((size, size), 255, np.uint8)
    image[size // 3:size // 3 + side, size // 2:size // 2 + side] = 0
    return image


@pytest.mark.parametrize(("name", "image", "reason"), [
    ("dot3.png", one_dark_pixel(3), "image too small (3x3 px)"),
    ("dot7.png", one_dark_pixel(7), "image too small (7x7 px)"),
    ("strip.png", draw_seven(size=(7, 60), offset=(0, 5)), "image too small (60x7 px)"),
    ("dot50.png", one_dark_pixel(50), "no digit found: the only mark is 1x1 px"),
    ("speck.jpg", speck(400, 5), "no digit found: the only mark is 5x5 px"),
])
def test_an_image_too_small_to_hold_a_digit_is_refused_in_one_line(
        name, image, reason, tiny_model, two_sevens, tmp_path, capsys):
    """A digit drawn in under 8 px has strokes a pixel wide: a 3 is an 8 by a pixel or two."""
    tiny = save(tmp_path / name, image)

    status = run_main([str(two_sevens[0]), str(tiny), str(two_sevens[1]), "--json",
                       "--model", str(tiny_model)])

    out, err = capsys.readouterr()
    assert status == 1
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {tiny}: {reason}")
    results = json.loads(out)
    assert set(results[1]) == {"image", "error"}
    assert "class" in results[0] and "class" in results[2]


def test_a_digit_of_8_px_is_still_read(tmp_path):
    image = Image.new("L", (12, 12), 255)
    ImageDraw.Draw(image).line([(2, 2), (8, 2), (4, 9)], fill=0, width=1)

    fitted = load_image(save(tmp_path / "small.png", np.asarray(image)))

    assert max(ink_extent(fitted)) == 20


@pytest.mark.parametrize("shadowed", [False, True])
def test_a_blank_grainy_photo_is_reported_not_predicted(shadowed, tmp_path):
    """A photo's grain and its uneven light are no digit, though they are not one level."""
    rng = np.random.default_rng(1)
    page = 200 + rng.normal(0, 12, (240, 300)) + np.linspace(-20, 20, 300)
    if shadowed:
        page[:, 150:] *= 0.45
    photo = save(tmp_path / "blank.jpg", np.clip(page, 0, 255).astype(np.uint8), quality=85)

    with pytest.raises(ImageError, match="no digit found: the image is blank"):
        load_image(photo)


# --- photos and pen drawings, on synthetic sevens (always run) ------------------------------

def stroke_weight(fitted: np.ndarray) -> float:
    """Mean stroke width of a fitted digit: ink (in units of 255) per pixel of its centre line.

    The centre line is approximated by the ink's extent along its rows and columns: a stroke
    of width w and length L holds about w * L ink.
    """
    ink = fitted.astype(np.float64) / 255
    length = np.count_nonzero(ink.max(axis=1) > 0.5) + np.count_nonzero(ink.max(axis=0) > 0.5)
    return ink.sum() / length


def aligned_correlation(fitted: np.ndarray, reference: np.ndarray) -> float:
    """The correlation of two fitted digits, the best over shifts of up to a pixel each way.

    Centring is by whole pixels, as MNIST's was: a centre of mass half a pixel off in the
    source may land a pixel off, which alone takes a thin seven's correlation to about 0.5.
    """
    return max(np.corrcoef(np.roll(fitted, (dy, dx), axis=(0, 1)).ravel(), reference.ravel())[0, 1]
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_thin_pen_strokes_are_widened_to_mnist_weight(tmp_path):
    """A 2 px pen on a 400 px page, scaled to 20 px, would be a faint fifth of a pixel."""
    def seven(width: int) -> np.ndarray:
        image = Image.new("L", (400, 400), 255)
        ImageDraw.Draw(image).line([(80, 60), (300, 60), (160, 340)], fill=0, width=width)
        return np.asarray(image)

    thin = load_image(save(tmp_path / "thin.png", seven(2)))
    mnist_weight = load_image(save(tmp_path / "marker.png", seven(36)))  # 2.5 px of 20

    assert thin.max() > 200  # unwidened, a 2 px line peaks near 40 at 20 px
    assert 0.8 < stroke_weight(thin) / stroke_weight(mnist_weight) < 1.25
    assert aligned_correlation(thin, mnist_weight) > 0.85


def clean_seven(tmp_path: Path) -> np.ndarray:
    """The 60x40 px seven of ``draw_seven`` fitted from a clean drawing: the reference."""
    return load_image(save(tmp_path / "clean.png", draw_seven()))


def paste_seven(page: np.ndarray, top: int, left: int, ink: float) -> np.ndarray:
    """``page`` with draw_seven's seven written on it at (top, left), ink multiplying it."""
    cover = draw_seven().astype(np.float64) / 255
    written = page.copy()
    region = written[top:top + cover.shape[0], left:left + cover.shape[1]]
    region *= 1 - (1 - ink) * cover
    return written


def test_paper_on_a_dark_desk_is_read_as_dark_writing_on_the_paper(tmp_path):
    """The desk makes the border dark: the page in the middle is what the digit is on."""
    rng = np.random.default_rng(2)
    rows, cols = np.indices((300, 400))
    desk = 45 + 15 * np.sin(cols / 23) * np.cos(rows / 31) + rng.normal(0, 4, rows.shape)
    sheet = Image.new("L", (190, 200), 215).rotate(8, expand=True, fillcolor=0)
    photo = desk.copy()
    on_sheet = np.asarray(sheet) > 0
    photo[40:40 + on_sheet.shape[0], 120:120 + on_sheet.shape[1]][on_sheet] = 215
    photo = paste_seven(photo, 90, 180, ink=0.25)
    path = save(tmp_path / "desk.jpg", np.clip(photo, 0, 255).astype(np.uint8), quality=85)

    fitted = load_image(path)

    reference = clean_seven(tmp_path)
    assert ink_extent(fitted > 64) == pytest.approx(ink_extent(reference > 64), abs=1)
    assert aligned_correlation(fitted, reference) > 0.9


@pytest.mark.parametrize("dark_side", ["left", "right"])
def test_a_hard_shadow_through_the_digit_is_no_ink(dark_side, tmp_path):
    """Half the page, half the seven with it, gets 40 % of the light, and a gradient more."""
    page = np.full((240, 300), 225.0) * np.linspace(1.0, 0.7, 300)
    page = paste_seven(page, 80, 120, ink=0.2)
    shadow = slice(0, 145) if dark_side == "left" else slice(145, None)
    page[:, shadow] *= 0.4
    rng = np.random.default_rng(3)
    photo = np.clip(page + rng.normal(0, 3, page.shape), 0, 255).astype(np.uint8)

    fitted = load_image(save(tmp_path / "shadow.jpg", photo, quality=85))

    reference = clean_seven(tmp_path)
    assert ink_extent(fitted > 64) == pytest.approx(ink_extent(reference > 64), abs=1)
    assert aligned_correlation(fitted, reference) > 0.9


# --- real MNIST digits in hard renderings (need `dvc repro`) --------------------------------

# Measured with the default model on the first 200 test digits it gets right in prepared
# form, rendered by tests/renderings.py as below: thin pen 198, paper on a desk 198, shadowed
# page 197 (before predict fitted photos and pens: 32, 17 and 21). On the next 500 such
# digits: 97.6 %, 97.4 % and 98.2 %. (The previous defaults' model: 198, 197, 199.) The
# floors leave room for another trained model.
RENDERING_FLOORS = {"thin_pen": 190, "paper_on_desk": 188, "shadowed_page": 188}


@pytest.fixture(scope="module")
def first_right_digits(trained_project: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indices, images, labels) of the first 200 test digits the model gets right as is."""
    project = Layout(trained_project)
    images = read_idx(project.raw / "t10k-images-idx3-ubyte", 3, (28, 28))
    labels = read_idx(project.raw / "t10k-labels-idx1-ubyte", 1).astype(int)
    model, _, normalization, _ = load_model(project.model)
    inputs = to_model_input(images[:400], *normalization)
    predicted = predict_log_probs(model, inputs, batch_size=400).argmax(1).numpy()
    right = np.flatnonzero(predicted == labels[:400])[:200]
    return right, images[right], labels[right]


@needs_real_data
@pytest.mark.parametrize("kind", sorted(RENDERING_FLOORS))
def test_real_digits_in_hard_renderings_are_recognised(kind, first_right_digits, tmp_path,
                                                       trained_project):
    indices, images, labels = first_right_digits
    paths = [render_file(tmp_path / f"{index:04d}{SUFFIX[kind]}", image, kind, int(index))
             for index, image in zip(indices, images, strict=True)]

    results = predict_files(paths, Layout(trained_project).model)

    assert all("class" in r for r in results)
    correct = sum(r["class"] == str(label) for r, label in zip(results, labels, strict=True))
    assert correct >= RENDERING_FLOORS[kind]


def test_renderings_are_deterministic():
    """The same digit and seed give the same image, another seed another image."""
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255  # a plain 1
    for kind, render in RENDERINGS.items():
        first = render(digit, np.random.default_rng(5))
        assert first.dtype == np.uint8 and min(first.shape) >= 300, kind
        assert np.array_equal(first, render(digit, np.random.default_rng(5))), kind
        assert not np.array_equal(first, render(digit, np.random.default_rng(6))), kind


DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@needs_real_data
def test_the_shipped_example_digits_are_recognised(trained_project):
    examples = sorted((REPO_ROOT / "digits").glob("*.*"))
    assert len(examples) >= 4

    results = predict_files(examples, Layout(trained_project).model)

    for path, result in zip(examples, results, strict=True):
        assert result.get("class") == str(DIGIT_NAMES.index(path.stem.split("-")[0])), result
        assert path.stat().st_size < 50_000
