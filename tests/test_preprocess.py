"""Stage 2, preprocess: IDX checks, torchvision-exact normalization, the prepared file format."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_dvc.config.params import Params
from mnist_dvc.config.preprocess import PreprocessParams
from mnist_dvc.data.idx import encode_idx, read_idx
from mnist_dvc.data.prepared import (
    normalize,
    read_normalization,
    read_split,
    split_digest,
    split_files,
    write_split,
)
from mnist_dvc.data.spec import DatasetSpec, Normalization, read_dataset, write_dataset
from mnist_dvc.errors import StageError
from stages import preprocess
from stages.preprocess import choose_normalization, measure_normalization, read_raw_split
from tests.conftest import REPO_ROOT, SYNTHETIC, synthetic_digits, write_params, write_raw_dir

DEFAULT = PreprocessParams(mean=0.1307, std=0.3081)


def write_prepared(prepared: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """A split's arrays with the dataset's spec beside them, as preprocess leaves them."""
    write_split(prepared, split, images, labels)
    write_dataset(prepared, SYNTHETIC, files=False)


def prepare_split(raw_dir: Path, split: str, params: PreprocessParams = DEFAULT,
                  spec: DatasetSpec = SYNTHETIC) -> tuple[np.ndarray, np.ndarray]:
    """A split as preprocess prepares it: (normalized images, labels)."""
    images, labels = read_raw_split(raw_dir, split, spec)
    assert params.mean is not None and params.std is not None
    return normalize(images, params.mean, params.std), labels
# raw_dir (conftest): train = synthetic_digits(512, seed=0), t10k = synthetic_digits(256, seed=1)
SPLIT_SOURCES = {"train": (512, 0), "test": (256, 1)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- normalization ---------------------------------------------------------------------------

@pytest.mark.parametrize(("mean", "std"), [(DEFAULT.mean, DEFAULT.std), (0.5, 0.25)],
                         ids=["default", "other"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_prepared_tensors_equal_torchvision_transform(raw_dir: Path, split: str, mean: float,
                                                      std: float) -> None:
    # imported here, not at the top: torchvision takes seconds to import, and this way it
    # overlaps the stage run that the module fixture ``failed_run`` has already started
    from torchvision import transforms

    images, labels = prepare_split(raw_dir, split, PreprocessParams(mean=mean, std=std))
    count, seed = SPLIT_SOURCES[split]
    raw_images, raw_labels = synthetic_digits(count, seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])

    pil_images = [Image.fromarray(image) for image in raw_images]
    assert {image.mode for image in pil_images} == {"L"}
    from_pil = torch.stack([transform(image) for image in pil_images])
    from_numpy = torch.stack([transform(image) for image in raw_images])

    assert images.dtype == np.float32
    assert labels.dtype == np.int64
    assert images.shape == (count, 1, 28, 28)
    assert labels.shape == (count,)
    torch.testing.assert_close(torch.from_numpy(images), from_pil, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(images), from_numpy, rtol=0, atol=1e-6)
    assert np.array_equal(labels, raw_labels)
    # the data exercise the whole range: black-ish noise and 255 blocks
    assert images.max() == pytest.approx((1 - mean) / std, abs=1e-6)


def test_mean_and_std_change_the_output(raw_dir: Path) -> None:
    default, _ = prepare_split(raw_dir, "test", DEFAULT)
    other, _ = prepare_split(raw_dir, "test", PreprocessParams(mean=0.5, std=0.25))
    assert not np.allclose(default, other)


def test_measured_normalization_is_the_training_pixels_mean_and_std() -> None:
    images, _ = synthetic_digits(64, seed=5)
    measured = measure_normalization(images)
    scaled = images.astype(np.float64) / 255
    assert measured.mean == pytest.approx(scaled.mean(), rel=1e-12)
    assert measured.std == pytest.approx(scaled.std(), rel=1e-12)


def test_flat_training_images_cannot_be_normalized() -> None:
    with pytest.raises(StageError, match="all one grey level"):
        measure_normalization(np.full((3, 4, 4), 17, np.uint8))


@pytest.mark.parametrize(("mean", "std"), [(None, None), (0.5, None), (None, 0.25), (0.5, 0.25)])
@pytest.mark.parametrize("published", [True, False], ids=["published", "measured"])
def test_each_empty_param_is_the_datasets_own_normalization(mean: float | None,
                                                            std: float | None,
                                                            published: bool) -> None:
    images, _ = synthetic_digits(64, seed=6)
    spec = SYNTHETIC if published else dataclasses.replace(SYNTHETIC, normalization=None)
    own = SYNTHETIC.normalization if published else measure_normalization(images)
    assert own is not None

    chosen = choose_normalization(PreprocessParams(mean=mean, std=std), spec, images)

    assert chosen == (own.mean if mean is None else mean, own.std if std is None else std)


def test_main_prepares_a_dataset_of_another_shape_and_class_count(tmp_path: Path,
                                                                   monkeypatch) -> None:
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    spec = DatasetSpec("idx", (12, 20), ("ant", "bee", "cat"))
    rng = np.random.default_rng(7)
    for split, count in (("train", 30), ("test", 9)):
        images_name, labels_name = spec.split_files[split]
        (raw / images_name).write_bytes(encode_idx(
            rng.integers(0, 256, (count, 12, 20)).astype(np.uint8)))
        (raw / labels_name).write_bytes(encode_idx(np.arange(count, dtype=np.uint8) % 3))
    write_dataset(raw, spec)
    write_params(tmp_path / "params.yaml", Params())  # preprocess.mean and std empty
    monkeypatch.chdir(tmp_path)

    preprocess.main()

    prepared = tmp_path / "data" / "prepared"
    train_images, _ = read_raw_split(raw, "train", spec)
    normalization = measure_normalization(train_images)
    assert read_normalization(prepared) == normalization
    assert read_dataset(prepared) == dataclasses.replace(spec, normalization=normalization)
    test = read_split(prepared, "test")
    assert test.images.shape == (9, 1, 12, 20)
    assert test.labels.tolist() == [0, 1, 2] * 3


# --- the prepared file: write, load, digest --------------------------------------------------

def _file_hashes(prepared: Path, split: str) -> list[str]:
    return [_sha256(path) for path in split_files(prepared, split)]


def test_write_read_round_trip_is_bit_identical_and_digest_tracks_pixels(
    raw_dir: Path, tmp_path: Path
) -> None:
    images, labels = prepare_split(raw_dir, "train", DEFAULT)
    write_prepared(tmp_path / "a", "train", images, labels)
    first_hashes = _file_hashes(tmp_path / "a", "train")
    loaded = read_split(tmp_path / "a", "train")

    assert np.array_equal(loaded.images, images)
    assert np.array_equal(loaded.labels, labels)
    assert loaded.images.dtype == np.float32
    assert loaded.labels.dtype == np.int64
    digest = split_digest(tmp_path / "a", "train")

    # same input, written again over itself and into another directory: the same bytes
    write_prepared(tmp_path / "a", "train", images, labels)
    write_prepared(tmp_path / "b", "train", images, labels)
    assert _file_hashes(tmp_path / "a", "train") == first_hashes
    assert _file_hashes(tmp_path / "b", "train") == first_hashes
    assert split_digest(tmp_path / "b", "train") == digest
    # and no temp files were left beside them
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "dataset.json", "train_images.npy", "train_labels.npy"]

    # prepared again from the same raw files: still the same bytes
    write_prepared(tmp_path / "c", "train", *prepare_split(raw_dir, "train", DEFAULT))
    assert _file_hashes(tmp_path / "c", "train") == first_hashes

    # one pixel changed in the raw file: a different digest and different image bytes
    changed_raw = tmp_path / "changed"
    shutil.copytree(raw_dir, changed_raw)
    raw_images = read_idx(changed_raw / "train-images-idx3-ubyte", 3, (28, 28)).copy()
    raw_images[17, 3, 5] ^= 1
    (changed_raw / "train-images-idx3-ubyte").write_bytes(encode_idx(raw_images))
    write_prepared(tmp_path / "d", "train", *prepare_split(changed_raw, "train", DEFAULT))
    assert split_digest(tmp_path / "d", "train") != digest
    assert _file_hashes(tmp_path / "d", "train")[0] != first_hashes[0]


def test_digest_tracks_labels(raw_dir: Path, tmp_path: Path) -> None:
    images, labels = prepare_split(raw_dir, "test", DEFAULT)
    write_prepared(tmp_path / "a", "test", images, labels)
    swapped = labels.copy()
    swapped[0] = (swapped[0] + 1) % 10
    write_prepared(tmp_path / "b", "test", images, swapped)
    assert split_digest(tmp_path / "a", "test") != split_digest(tmp_path / "b", "test")


def test_prepared_tensors_share_the_mapped_file(raw_dir: Path, tmp_path: Path) -> None:
    from mnist_dvc import runtime

    write_prepared(tmp_path, "test", *prepare_split(raw_dir, "test", DEFAULT))
    split = read_split(tmp_path, "test")
    loaded = runtime.to_device(split)
    images = split.images
    assert isinstance(images, np.memmap)
    assert loaded.images.data_ptr() == images.ctypes.data  # no copy
    assert loaded.images.dtype == torch.float32
    assert loaded.labels.dtype == torch.int64
    assert np.array_equal(loaded.images.numpy(), images)
    # copy-on-write: writing to the tensor never reaches the file
    before = _file_hashes(tmp_path, "test")
    loaded.images[0] = 7.0
    del loaded
    assert _file_hashes(tmp_path, "test") == before


def test_main_writes_both_splits_from_params_yaml(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_raw_dir(tmp_path / "data" / "raw", train_count=40, test_count=24)
    wanted = PreprocessParams(mean=0.5, std=0.25)
    write_params(tmp_path / "params.yaml", Params(preprocess=wanted))
    monkeypatch.chdir(tmp_path)
    preprocess.main()
    prepared = tmp_path / "data" / "prepared"
    assert sorted(p.name for p in prepared.iterdir()) == [
        "dataset.json", "normalization.json", "test_images.npy", "test_labels.npy",
        "train_images.npy", "train_labels.npy"]
    assert read_normalization(prepared) == (0.5, 0.25)
    assert read_dataset(prepared) == dataclasses.replace(SYNTHETIC,
                                                         normalization=Normalization(0.5, 0.25))
    for split, count in (("train", 40), ("test", 24)):
        loaded = read_split(prepared, split)
        images, labels = prepare_split(tmp_path / "data" / "raw", split, wanted)
        assert len(loaded.labels) == count
        assert np.array_equal(loaded.images, images)
        assert np.array_equal(loaded.labels, labels)


# --- bad raw files ---------------------------------------------------------------------------

def test_image_and_label_count_mismatch(raw_dir: Path) -> None:
    _, labels = synthetic_digits(512, 0)
    (raw_dir / "train-labels-idx1-ubyte").write_bytes(encode_idx(labels[:-1]))
    with pytest.raises(StageError) as info:
        prepare_split(raw_dir, "train", DEFAULT)
    message = str(info.value)
    assert str(raw_dir) in message
    assert "512 images but 511 labels" in message


def test_label_out_of_range(raw_dir: Path) -> None:
    _, labels = synthetic_digits(256, 1)
    labels = labels.copy()
    labels[100] = 10
    (raw_dir / "t10k-labels-idx1-ubyte").write_bytes(encode_idx(labels))
    with pytest.raises(StageError) as info:
        prepare_split(raw_dir, "test", DEFAULT)
    message = str(info.value)
    assert str(raw_dir / "t10k-labels-idx1-ubyte") in message
    assert "label 10" in message
    assert "0-9" in message


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"])
def test_missing_idx_file(raw_dir: Path, name: str) -> None:
    (raw_dir / name).unlink()
    with pytest.raises(StageError) as info:
        prepare_split(raw_dir, "train", DEFAULT)
    assert str(raw_dir / name) in str(info.value)
    assert "file not found" in str(info.value)


@pytest.mark.parametrize("name", ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"])
def test_truncated_idx_file(raw_dir: Path, name: str) -> None:
    path = raw_dir / name
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(StageError) as info:
        prepare_split(raw_dir, "test", DEFAULT)
    assert str(path) in str(info.value)
    assert "truncated" in str(info.value)


def test_wrong_image_shape(raw_dir: Path) -> None:
    path = raw_dir / "train-images-idx3-ubyte"
    path.write_bytes(encode_idx(np.zeros((512, 28, 27), dtype=np.uint8)))
    with pytest.raises(StageError, match="not the expected") as info:
        prepare_split(raw_dir, "train", DEFAULT)
    assert str(path) in str(info.value)


# --- bad prepared files ----------------------------------------------------------------------

class Payload:
    """Runs a shell command when unpickled."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


GOOD_IMAGES = np.zeros((2, 1, 28, 28), dtype=np.float32)
GOOD_LABELS = np.zeros(2, dtype=np.int64)


def _save_split(prepared: Path, images: np.ndarray, labels: np.ndarray,
                spec: DatasetSpec = SYNTHETIC) -> None:
    prepared.mkdir(parents=True, exist_ok=True)
    write_dataset(prepared, spec, files=False)
    images_path, labels_path = split_files(prepared, "train")
    np.save(images_path, images, allow_pickle=True)
    np.save(labels_path, labels, allow_pickle=True)


@pytest.mark.parametrize(("images", "labels", "culprit", "reason"), [
    (GOOD_IMAGES.astype(np.float64), GOOD_LABELS, "images", "not prepared images"),
    (np.zeros((2, 28, 28), np.float32), GOOD_LABELS, "images", "not prepared images"),
    (np.zeros(3, np.float32), GOOD_LABELS, "images", "not prepared images"),
    (GOOD_IMAGES, GOOD_LABELS.astype(np.int32), "labels", "not 2 int64 labels"),
    (GOOD_IMAGES, np.zeros(3, np.int64), "labels", "not 2 int64 labels"),
    (GOOD_IMAGES, np.zeros((2, 1), np.int64), "labels", "not 2 int64 labels"),
    (np.array([Payload()], dtype=object), GOOD_LABELS, "images", "unreadable or corrupt"),
    (GOOD_IMAGES, np.array([1, "x"], dtype=object), "labels", "unreadable or corrupt"),
], ids=["float64", "no-channel", "1-d", "int32-labels", "count-mismatch", "2-d-labels",
        "pickled-code", "object-labels"])
def test_read_split_rejects_what_is_not_a_prepared_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, images: np.ndarray, labels: np.ndarray,
    culprit: str, reason: str,
) -> None:
    _save_split(tmp_path, images, labels)
    monkeypatch.chdir(tmp_path)  # where the payload would leave its mark
    with pytest.raises(StageError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / f'train_{culprit}.npy'}: {reason}")
    assert "\n" not in message
    assert not (tmp_path / "pwned").exists()


def test_read_split_accepts_a_minimal_valid_split(tmp_path: Path) -> None:
    # guards the rejection table above: the same files with correct types do load
    _save_split(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    assert read_split(tmp_path, "train").labels.shape == (2,)


@pytest.mark.parametrize("damage", ["truncated", "not-npy", "empty"])
def test_read_split_on_damaged_file(raw_dir: Path, tmp_path: Path, damage: str) -> None:
    write_prepared(tmp_path, "test", *prepare_split(raw_dir, "test", DEFAULT))
    path = split_files(tmp_path, "test")[0]
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "not-npy": b"PK\x03\x04" + data[4:],
                      "empty": b""}[damage])
    with pytest.raises(StageError) as info:
        read_split(tmp_path, "test")
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable or corrupt")
    assert "\n" not in message


def _write_npy(path: Path, shape: tuple[int, ...], data_bytes: int, descr: str = "<f4") -> None:
    """A .npy file whose header claims ``shape`` and ``descr``, followed by ``data_bytes``."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": descr, "fortran_order": False, "shape": shape})
        f.write(bytes(data_bytes))


@pytest.mark.parametrize(("shape", "data_bytes", "reason"), [
    ((-1, 1, 28, 28), 0, "negative length"),
    ((2**70, 1, 28, 28), 3136, "needs"),
    ((2**62, 1, 28, 28), 3136, "needs"),   # the byte count overflows a C long
    ((2**59, 1, 28, 28), 3136, "needs"),   # ... and wraps to exactly zero
    ((3, 1, 28, 28), 2 * 3136, "needs"),   # a header promising more than the file holds
    ((1, 1, 28, 28), 2 * 3136, "needs"),   # trailing bytes
], ids=["negative", "2**70", "overflow", "wraps-to-zero", "short", "trailing"])
def test_read_split_on_lying_header(tmp_path: Path, shape: tuple[int, ...], data_bytes: int,
                                    reason: str) -> None:
    _save_split(tmp_path, GOOD_IMAGES, GOOD_LABELS)
    path = split_files(tmp_path, "train")[0]
    _write_npy(path, shape, data_bytes)
    with pytest.raises(StageError) as info:
        read_split(tmp_path, "train")
    message = str(info.value)
    assert message.startswith(f"{path}: unreadable or corrupt (")
    assert reason in message
    assert "\n" not in message


@pytest.mark.parametrize(("labels", "reason"), [
    (np.array([3, 10]), "a label outside 0-9"),
    (np.array([-1, 3]), "a label outside 0-9"),
], ids=["ten", "negative"])
def test_read_split_rejects_labels_that_are_not_digits(tmp_path: Path, labels: np.ndarray,
                                                       reason: str) -> None:
    _save_split(tmp_path, GOOD_IMAGES, labels.astype(np.int64))
    with pytest.raises(StageError) as info:
        read_split(tmp_path, "train")
    assert str(info.value).startswith(f"{split_files(tmp_path, 'train')[1]}: {reason}")


def test_read_split_rejects_an_empty_split(tmp_path: Path) -> None:
    _save_split(tmp_path, GOOD_IMAGES[:0], GOOD_LABELS[:0])
    with pytest.raises(StageError, match="no images"):
        read_split(tmp_path, "train")


def test_read_split_missing_file(raw_dir: Path, tmp_path: Path) -> None:
    write_prepared(tmp_path, "train", *prepare_split(raw_dir, "train", DEFAULT))
    labels_path = split_files(tmp_path, "train")[1]
    labels_path.unlink()
    with pytest.raises(StageError) as info:
        read_split(tmp_path, "train")
    assert str(info.value).startswith(f"{labels_path}: file not found")


# --- a failed run keeps the old outputs ------------------------------------------------------

def _prepared_then_broken(work: Path, broken: str) -> dict[str, bytes]:
    """Prepare ``work/data/prepared``, then change the raw data but truncate ``broken``.

    Returns the prepared files' bytes before the rerun.
    """
    raw = write_raw_dir(work / "data" / "raw", train_count=48, test_count=32)
    shutil.copyfile(REPO_ROOT / "params.yaml", work / "params.yaml")
    prepared = work / "data" / "prepared"
    for split in ("train", "test"):
        write_split(prepared, split, *prepare_split(raw, split, DEFAULT))
    before = {p.name: p.read_bytes() for p in prepared.iterdir()}
    assert sorted(before) == [
        "test_images.npy", "test_labels.npy", "train_images.npy", "train_labels.npy"]
    # new raw data, so a rerun that got past the broken file would write different bytes
    write_raw_dir(raw, train_count=64, test_count=40)
    (raw / broken).write_bytes((raw / broken).read_bytes()[:-3])
    return before


def _prepared_files(work: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (work / "data" / "prepared").iterdir()}


@pytest.fixture(scope="module", autouse=True)
def failed_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, dict[str, bytes], subprocess.Popen[str]]]:
    """``python -m stages.preprocess`` over a truncated train labels file.

    Starting python + torch costs seconds, so the run starts when this module starts and goes
    on while the in-process tests run; the test at the end waits for it.
    """
    work = tmp_path_factory.mktemp("failed-run")
    before = _prepared_then_broken(work, "train-labels-idx1-ubyte")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "stages.preprocess"], cwd=work, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield work, before, process
    if process.poll() is None:
        process.kill()
        process.wait()


def test_failed_main_keeps_previous_prepared_files(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # the test split is broken: the train split must not be replaced either (both or neither)
    before = _prepared_then_broken(tmp_path, "t10k-labels-idx1-ubyte")
    write_dataset(tmp_path / "data" / "raw", SYNTHETIC)  # as recorded: only parsing can tell
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match="t10k-labels-idx1-ubyte: truncated"):
        preprocess.main()
    assert _prepared_files(tmp_path) == before


def test_failed_preprocess_command_keeps_previous_prepared_files(
    failed_run: tuple[Path, dict[str, bytes], subprocess.Popen[str]],
) -> None:
    work, before, process = failed_run
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert stderr.count("\n") == 1
    # the stage checks md5s first: a damaged file never reaches the parser
    assert stderr.startswith("error: data/raw/train-labels-idx1-ubyte: size or md5 is not")
    assert stdout == ""
    after = _prepared_files(work)
    assert not [name for name in after if name.startswith(".")]
    assert after == before


def test_a_bit_flipped_raw_file_is_refused_before_parsing(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    raw = write_raw_dir(tmp_path / "data" / "raw", train_count=40, test_count=24)
    image_file = raw / "t10k-images-idx3-ubyte"
    data = bytearray(image_file.read_bytes())
    data[500] ^= 0x01  # still a well-formed IDX file: only the md5 differs
    image_file.write_bytes(bytes(data))
    read_idx(image_file, 3, (28, 28))
    shutil.copyfile(REPO_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StageError, match="t10k-images-idx3-ubyte: size or md5 is not"):
        preprocess.main()
    assert not (tmp_path / "data" / "prepared").exists()
