import numpy as np
import pytest

from raw_formats import leftovers, truncate, write_png_folder
from sparse_transformer.data import hdf5, imagenet64
from sparse_transformer.data.errors import DataError


def write_npz_release(root, rng, rows=3):
    """Ten train batches (named like the release, no extension) and val_data.npz."""
    batches = {}
    (root / "Imagenet64_train_part1").mkdir(parents=True)
    for name in (*imagenet64.TRAIN_BATCHES, imagenet64.VALID_BATCH):
        data = rng.integers(0, 256, (rows, 12288), dtype=np.uint8)
        batches[name] = data
        folder = root / "Imagenet64_train_part1" if name.startswith("train") else root
        target = folder / (name + ".npz")
        np.savez(target, data=data, labels=np.ones(rows, np.int64))
        if name.startswith("train"):
            target.rename(folder / name)
    return batches


def test_npz_release_round_trip(tmp_path, rng):
    batches = write_npz_release(tmp_path / "in", rng)
    out = tmp_path / "i.h5"
    assert imagenet64.prepare(tmp_path / "in", out)
    train, valid, test = (np.asarray(hdf5.open_split(out, s)) for s in hdf5.SPLITS)
    assert train.shape == (30, 64, 64, 3) and valid.shape == (3, 64, 64, 3)
    planar = np.concatenate([batches[n] for n in imagenet64.TRAIN_BATCHES]).reshape(-1, 3, 64, 64)
    assert np.array_equal(train, planar.transpose(0, 2, 3, 1))
    assert np.array_equal(test, valid)
    assert hdf5.read_attributes(out)["parameters"] == {"release": "npz", "test": "valid"}
    assert not imagenet64.prepare(tmp_path / "in", out)


def test_png_release_round_trip(tmp_path, rng):
    train = rng.integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    valid = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    write_png_folder(tmp_path / "in" / "train_64x64", train)
    write_png_folder(tmp_path / "in" / "valid_64x64", valid)
    out = tmp_path / "i.h5"
    imagenet64.prepare(tmp_path / "in", out)
    assert np.array_equal(hdf5.open_split(out, "train"), train)
    assert np.array_equal(hdf5.open_split(out, "test"), valid)


def test_png_release_of_another_size(tmp_path, rng):
    write_png_folder(tmp_path / "in" / "train_64x64", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    write_png_folder(tmp_path / "in" / "valid_64x64", rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="img_00000.png is 32x32 RGB, expected 64x64 RGB"):
        imagenet64.prepare(tmp_path / "in", tmp_path / "i.h5")


def test_missing_batches_are_listed(tmp_path, rng):
    write_npz_release(tmp_path / "in", rng)
    (tmp_path / "in" / "Imagenet64_train_part1" / "train_data_batch_7").unlink()
    with pytest.raises(DataError, match="lacks train_data_batch_7: download ImageNet 64x64"):
        imagenet64.prepare(tmp_path / "in", tmp_path / "i.h5")


def test_truncated_batch(tmp_path, rng):
    write_npz_release(tmp_path / "in", rng)
    truncate(tmp_path / "in" / "val_data.npz", 0.5)
    with pytest.raises(DataError, match="val_data.npz .*corrupt or truncated"):
        imagenet64.prepare(tmp_path / "in", tmp_path / "i.h5")
    assert leftovers(tmp_path) == []


def test_an_empty_folder_says_how_to_get_the_data(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(DataError, match="holds neither ImageNet64 release: download ImageNet 64x64 from https://image-net.org"):
        imagenet64.prepare(tmp_path / "in", tmp_path / "i.h5")
    assert leftovers(tmp_path) == []
