import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest

from raw_formats import leftovers, truncate, write_cifar_tarball
from sparse_transformer.data import cifar10, hdf5
from sparse_transformer.data.errors import DataError

ROWS = 20  # per batch: 100 training images, 20 test


@pytest.fixture
def tarball(tmp_path, rng):
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = write_cifar_tarball(path, ROWS, rng)
    return path, batches, hashlib.md5(path.read_bytes()).hexdigest()


def prepare(path, out, md5, **kw):
    return cifar10.prepare(path, out, md5=md5, valid_images=10, **kw)


def test_round_trip_exact_and_interleaved(tmp_path, tarball):
    path, batches, md5 = tarball
    out = tmp_path / "cifar.h5"
    prepare(path, out, md5)
    train, valid, test = (np.asarray(hdf5.open_split(out, s)) for s in hdf5.SPLITS)
    assert train.shape == (90, 32, 32, 3) and valid.shape == (10, 32, 32, 3) and test.shape == (20, 32, 32, 3)
    planar = batches["test_batch"].reshape(-1, 3, 32, 32)
    assert np.array_equal(test[..., 0], planar[:, 0]) and np.array_equal(test[..., 2], planar[:, 2])
    # train + valid are exactly the 100 training images, each once
    all_train = np.concatenate([batches[f"data_batch_{k}"] for k in range(1, 6)])
    got = np.concatenate([train, valid]).transpose(0, 3, 1, 2).reshape(-1, 3072)
    assert sorted(map(bytes, got)) == sorted(map(bytes, all_train))
    attrs = hdf5.read_attributes(out)
    assert attrs["example_shape"] == (32, 32, 3) and attrs["modality"] == "image"


def test_a_red_pixel_stays_red(tmp_path, rng):
    path = tmp_path / "cifar-10-python.tar.gz"
    batches = write_cifar_tarball(path, ROWS, rng)
    # rebuild the test batch with image 0 all black except pixel (row 2, col 5) pure red
    row = np.zeros(3072, np.uint8)
    row[2 * 32 + 5] = 255  # R plane only
    batches["test_batch"][0] = row
    with tarfile.open(path, "w:gz") as tar:
        for name, rows in batches.items():
            payload = pickle.dumps({b"data": rows, b"labels": [0] * len(rows)}, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "cifar.h5"
    prepare(path, out, None)
    image = hdf5.open_split(out, "test")[0]
    assert tuple(image[2, 5]) == (255, 0, 0)
    assert image.sum() == 255


def test_valid_is_drawn_by_the_seed(tmp_path, tarball):
    path, _, md5 = tarball
    prepare(path, tmp_path / "a.h5", md5, seed=0)
    prepare(path, tmp_path / "b.h5", md5, seed=0)
    prepare(path, tmp_path / "c.h5", md5, seed=1)
    a, b, c = (np.asarray(hdf5.open_split(tmp_path / f"{n}.h5", "valid")) for n in "abc")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_reuse_and_rebuild(tmp_path, tarball):
    path, _, md5 = tarball
    out = tmp_path / "cifar.h5"
    assert prepare(path, out, md5)
    assert not prepare(path, out, md5)
    assert prepare(path, out, md5, seed=5)


def test_the_published_checksum(tmp_path, tarball):
    path, _, md5 = tarball
    assert cifar10.MD5 == "c58f30108f718f92721af3b95e74349a"
    with pytest.raises(DataError, match=f"md5 is {md5} but the published file has {cifar10.MD5}") as err:
        cifar10.prepare(path, tmp_path / "cifar.h5", valid_images=10)
    assert str(path) in str(err.value) and "--skip-checksum" in str(err.value)
    assert leftovers(tmp_path) == []


def test_truncated_tarball(tmp_path, tarball):
    path, _, _ = tarball
    truncate(path, 0.6)
    with pytest.raises(DataError, match="cifar-10-python.tar.gz cannot be read.*corrupt or truncated"):
        prepare(path, tmp_path / "cifar.h5", None)
    assert leftovers(tmp_path) == []


def test_missing_batch(tmp_path, rng):
    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        payload = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_2"):
        prepare(path, tmp_path / "cifar.h5", None)
    assert leftovers(tmp_path) == []


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        payload = pickle.dumps({b"data": Evil()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    with pytest.raises(DataError, match=r"unexpected object (__builtin__|builtins)\.print"):
        prepare(path, tmp_path / "cifar.h5", None)
