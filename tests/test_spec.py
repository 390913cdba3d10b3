"""The dataset spec (mnist_dvc/data/spec.py), its record beside the data, and the idx source:
a user's own IDX files, checked for structure before any lands."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from mnist_dvc.config.params import Params, parse_params
from mnist_dvc.data.idx import encode_idx, read_idx
from mnist_dvc.data.sources import land_idx_dir
from mnist_dvc.data.spec import (
    DATASET_FILE,
    IDX_FILES,
    MNIST,
    SPLITS,
    DatasetSpec,
    read_dataset,
    verify_raw_dir,
    write_dataset,
)
from mnist_dvc.errors import StageError
from tests.conftest import SYNTHETIC, write_params

TRAIN_IMAGES, TRAIN_LABELS = IDX_FILES["train"]
TEST_IMAGES, TEST_LABELS = IDX_FILES["test"]


def one_line(info: pytest.ExceptionInfo, culprit: Path) -> str:
    """The error's message, once it is one line that starts with the culprit's path."""
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{culprit}: "), message
    return message


# --- the spec --------------------------------------------------------------------------------

def test_mnists_canonical_sizes_follow_from_its_shape_and_the_idx_headers():
    counts = {"train": 60000, "test": 10000}
    height, width = MNIST.image_shape
    sizes = {f.name: f.size for f in MNIST.canonical}
    assert list(sizes) == MNIST.file_names
    for split in SPLITS:
        images, labels = MNIST.split_files[split]
        assert sizes[images] == 16 + counts[split] * height * width  # magic + 3 dims, pixels
        assert sizes[labels] == 8 + counts[split]  # magic + 1 dim, one byte a label
    assert MNIST.class_names == tuple("0123456789") and MNIST.num_classes == 10


def test_the_record_round_trips_with_each_files_size_and_md5(raw_dir):
    spec = read_dataset(raw_dir)  # conftest's raw_dir holds the synthetic files and record

    assert spec == SYNTHETIC
    assert verify_raw_dir(raw_dir) == SYNTHETIC
    record = json.loads((raw_dir / DATASET_FILE).read_text())
    assert sorted(record["files"]) == sorted(SYNTHETIC.file_names)
    assert record["files"][TEST_LABELS]["bytes"] == (raw_dir / TEST_LABELS).stat().st_size


def test_a_record_without_files_is_the_spec_alone(tmp_path):
    spec = DatasetSpec("idx", (12, 20), ("ant", "bee", "cat"))
    write_dataset(tmp_path, spec, files=False)
    assert read_dataset(tmp_path) == spec
    assert "files" not in json.loads((tmp_path / DATASET_FILE).read_text())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_raw_file_unlike_its_record_is_refused_naming_it(raw_dir, damage):
    path = raw_dir / TEST_IMAGES
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[1000] ^= 1  # still a well-formed IDX file: only the checksum can tell
    else:
        del data[-1]
    path.write_bytes(bytes(data))

    with pytest.raises(StageError) as info:
        verify_raw_dir(raw_dir)

    assert "size or md5 is not the synthetic file's" in one_line(info, path)


def test_a_missing_raw_file_is_refused_naming_it(raw_dir):
    (raw_dir / TRAIN_LABELS).unlink()
    with pytest.raises(StageError) as info:
        verify_raw_dir(raw_dir)
    assert "file not found" in one_line(info, raw_dir / TRAIN_LABELS)


def test_a_missing_record_is_refused_naming_it(raw_dir):
    (raw_dir / DATASET_FILE).unlink()
    with pytest.raises(StageError) as info:
        verify_raw_dir(raw_dir)
    assert "file not found (run the stage that makes" in one_line(info, raw_dir / DATASET_FILE)


@pytest.mark.parametrize(("change", "reason"), [
    ({"image_shape": [28]}, "not enough values"),
    ({"image_shape": [0, 28]}, "two positive integers"),
    ({"class_names": ["only"]}, "at least two"),
    ({"class_names": ["a", "b", "a"]}, "named twice: a"),
    ({"class_names": ["a", ""]}, "empty"),
    ({"normalization": {"mean": 0.1, "std": 0}}, "std > 0"),
    ({"files": {TRAIN_IMAGES: {"bytes": 3, "md5": "xyz"}}}, "md5 must be 32 hex digits"),
    ({"name": None}, "name must be a non-empty string"),
], ids=["one-side", "zero-side", "one-class", "twice", "empty-name", "zero-std", "bad-md5",
        "no-name"])
def test_a_malformed_record_is_one_line_naming_it(raw_dir, change, reason):
    path = raw_dir / DATASET_FILE
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(StageError) as info:
        verify_raw_dir(raw_dir)
    message = one_line(info, path)
    assert "not a dataset record" in message and reason in message


def test_a_record_that_says_mnist_must_describe_its_canonical_files(raw_dir):
    write_dataset(raw_dir, dataclasses.replace(SYNTHETIC, name="mnist"))
    with pytest.raises(StageError) as info:
        verify_raw_dir(raw_dir)
    assert "says mnist but does not describe its canonical files" in one_line(
        info, raw_dir / DATASET_FILE)


# --- the idx source: a user's own files, checked for structure --------------------------------

def write_idx_dir(root: Path, shape: tuple[int, int] = (24, 20), classes: int = 5,
                  counts: tuple[int, int] = (40, 15), gz: bool = False,
                  names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Four IDX files of random images, labels 0..classes-1 in turn; the arrays written."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    arrays = {}
    for split, count in zip(SPLITS, counts, strict=True):
        images_name, labels_name = IDX_FILES[split]
        arrays[images_name] = rng.integers(0, 256, (count, *shape)).astype(np.uint8)
        arrays[labels_name] = (np.arange(count) % classes).astype(np.uint8)
    for name, array in arrays.items():
        data = encode_idx(array)
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / name).write_bytes(data)
    if names is not None:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return arrays


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_an_idx_dir_lands_whole_with_its_shape_and_class_names(tmp_path, gz):
    source, dest = tmp_path / "mine", tmp_path / "raw"
    arrays = write_idx_dir(source, gz=gz, names=["ant", "bee", "cat", "dog", "emu"])

    spec = land_idx_dir(dest, str(source))

    assert spec == DatasetSpec("idx", (24, 20), ("ant", "bee", "cat", "dog", "emu"))
    assert sorted(p.name for p in dest.iterdir()) == sorted(arrays)
    for name, array in arrays.items():  # uncompressed, byte for byte
        assert np.array_equal(read_idx(dest / name, array.ndim, None), array)
    write_dataset(dest, spec)
    assert verify_raw_dir(dest) == spec


def test_without_classes_txt_the_classes_are_named_by_number(tmp_path):
    write_idx_dir(tmp_path / "mine", classes=3)
    spec = land_idx_dir(tmp_path / "raw", str(tmp_path / "mine"))
    assert spec.class_names == ("0", "1", "2")


def refused(tmp_path: Path, culprit: str) -> str:
    """Land ``tmp_path/mine`` expecting a one-line StageError naming ``culprit`` there, with
    nothing landed."""
    dest = tmp_path / "raw"
    with pytest.raises(StageError) as info:
        land_idx_dir(dest, str(tmp_path / "mine"))
    assert not dest.exists() or not list(dest.iterdir())
    return one_line(info, tmp_path / "mine" / culprit)


def test_an_idx_file_with_a_bad_magic_number_is_refused(tmp_path):
    write_idx_dir(tmp_path / "mine")
    images = read_idx(tmp_path / "mine" / TEST_IMAGES, 3, None)
    (tmp_path / "mine" / TEST_LABELS).write_bytes(encode_idx(images))  # 3 dimensions, not 1
    assert "bad magic number 0x00000803" in refused(tmp_path, TEST_LABELS)


def test_idx_files_with_mismatched_counts_are_refused(tmp_path):
    arrays = write_idx_dir(tmp_path / "mine")
    (tmp_path / "mine" / TRAIN_LABELS).write_bytes(encode_idx(arrays[TRAIN_LABELS][:-1]))
    assert "39 labels for the 40 images" in refused(tmp_path, TRAIN_LABELS)


def test_a_label_beyond_the_named_classes_is_refused(tmp_path):
    write_idx_dir(tmp_path / "mine", classes=5, names=["ant", "bee", "cat", "dog"])
    assert "label 4 is no class: there are 4 (0-3)" in refused(tmp_path, TRAIN_LABELS)


def test_a_test_label_the_training_split_never_has_is_refused(tmp_path):
    arrays = write_idx_dir(tmp_path / "mine", classes=3)
    labels = arrays[TEST_LABELS].copy()
    labels[0] = 3
    (tmp_path / "mine" / TEST_LABELS).write_bytes(encode_idx(labels))
    assert "label 3 is no class: there are 3 (0-2)" in refused(tmp_path, TEST_LABELS)


def test_test_images_of_another_shape_than_the_training_images_are_refused(tmp_path):
    arrays = write_idx_dir(tmp_path / "mine")
    (tmp_path / "mine" / TEST_IMAGES).write_bytes(
        encode_idx(arrays[TEST_IMAGES][:, :, :19].copy()))
    assert "images are 24x19, the training images 24x20" in refused(tmp_path, TEST_IMAGES)


def test_a_missing_idx_file_is_refused(tmp_path):
    write_idx_dir(tmp_path / "mine")
    (tmp_path / "mine" / TEST_IMAGES).unlink()
    assert "file not found (nor t10k-images-idx3-ubyte.gz)" in refused(tmp_path, TEST_IMAGES)


def test_a_truncated_idx_file_is_refused(tmp_path):
    write_idx_dir(tmp_path / "mine")
    path = tmp_path / "mine" / TRAIN_IMAGES
    path.write_bytes(path.read_bytes()[:-5])
    assert "truncated" in refused(tmp_path, TRAIN_IMAGES)


@pytest.mark.parametrize(("names", "reason"), [
    (["ant", "bee", "ant", "dog", "emu"], "named twice: ant"),
    (["ant", "", "cat", "dog", "emu"], "empty"),
], ids=["twice", "blank-line"])
def test_a_bad_classes_txt_is_refused(tmp_path, names, reason):
    write_idx_dir(tmp_path / "mine", names=names)
    assert reason in refused(tmp_path, "classes.txt")


def test_an_idx_dataset_needs_its_directory(tmp_path):
    with pytest.raises(StageError, match=r"download\.local_path is not set"):
        land_idx_dir(tmp_path / "raw", None)
    with pytest.raises(StageError) as info:
        land_idx_dir(tmp_path / "raw", str(tmp_path / "nowhere"))
    assert "no such directory" in one_line(info, tmp_path / "nowhere")


# --- the download stage, then preprocess, by params alone -------------------------------------

def test_download_and_preprocess_take_an_idx_dataset_from_params(tmp_path, monkeypatch):
    from stages import download, preprocess

    write_idx_dir(tmp_path / "mine", shape=(20, 18), classes=3, names=["x", "y", "z"])
    params = parse_params({"download": {"dataset": "idx", "local_path": str(tmp_path / "mine")}})
    write_params(tmp_path / "params.yaml", params)
    monkeypatch.chdir(tmp_path)

    download.main()
    preprocess.main()

    raw_spec = verify_raw_dir(Path("data/raw"))
    assert (raw_spec.image_shape, raw_spec.class_names) == ((20, 18), ("x", "y", "z"))
    prepared = read_dataset(Path("data/prepared"))
    assert prepared.normalization is not None  # measured: idx data have no published one
    assert dataclasses.replace(prepared, normalization=None) == raw_spec


def test_the_default_dataset_is_mnist():
    assert Params().download.dataset == "mnist"
    with pytest.raises(StageError, match=r"download.dataset must be one of 'mnist', 'idx'"):
        parse_params({"download": {"dataset": "fashion"}})

