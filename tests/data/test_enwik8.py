import numpy as np
import pytest

from raw_formats import leftovers, truncate, write_enwik8_zip
from sparse_transformer.data import enwik8, hdf5
from sparse_transformer.data.errors import DataError

SPLITS = (700, 200, 100)


@pytest.fixture
def archive(tmp_path, rng):
    data = rng.integers(0, 256, sum(SPLITS), dtype=np.uint8).tobytes()
    return write_enwik8_zip(tmp_path / "enwik8.zip", data), data


def test_round_trip_with_contiguous_splits(tmp_path, archive):
    path, data = archive
    out = tmp_path / "enwik8.h5"
    assert enwik8.prepare(path, out, split_bytes=SPLITS)
    train, valid, test = (bytes(hdf5.open_split(out, s)) for s in hdf5.SPLITS)
    assert (train, valid, test) == (data[:700], data[700:900], data[900:])
    attrs = hdf5.read_attributes(out)
    assert attrs["modality"] == "text" and attrs["dataset"] == "enwik8"
    assert attrs["parameters"] == {"split_bytes": list(SPLITS)} and len(attrs["source_sha256"]["enwik8.zip"]) == 64


def test_the_folder_holding_the_zip_is_accepted_and_reused(tmp_path, archive):
    out = tmp_path / "out" / "enwik8.h5"
    assert enwik8.prepare(tmp_path, out, split_bytes=SPLITS)
    assert not enwik8.prepare(tmp_path, out, split_bytes=SPLITS)
    assert enwik8.prepare(tmp_path, out, split_bytes=(800, 100, 100))


def test_the_papers_split_sizes():
    assert enwik8.SPLIT_BYTES == (90_000_000, 5_000_000, 5_000_000)


def test_a_changed_archive_is_rebuilt(tmp_path, archive):
    path, data = archive
    out = tmp_path / "enwik8.h5"
    enwik8.prepare(path, out, split_bytes=SPLITS)
    write_enwik8_zip(path, data[::-1])
    assert enwik8.prepare(path, out, split_bytes=SPLITS)
    assert bytes(hdf5.open_split(out, "test")) == data[::-1][900:]


@pytest.mark.parametrize("damage, message", [
    (lambda p, d: truncate(p), "not a readable zip archive"),
    (lambda p, d: write_enwik8_zip(p, d[:-1]), "is 999 bytes, expected 1,000"),
    (lambda p, d: p.write_bytes(b"PK\x03\x04 not really a zip"), "not a readable zip archive"),
])
def test_bad_archives_are_named_and_leave_no_output(tmp_path, archive, damage, message):
    path, data = archive
    damage(path, data)
    with pytest.raises(DataError, match=message) as err:
        enwik8.prepare(path, tmp_path / "enwik8.h5", split_bytes=SPLITS)
    assert str(path) in str(err.value)
    assert leftovers(tmp_path) == []


def test_a_corrupted_byte_fails_the_crc(tmp_path, archive):
    path, _ = archive
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the compressed member
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="enwik8.zip"):
        enwik8.prepare(path, tmp_path / "enwik8.h5", split_bytes=SPLITS)
    assert leftovers(tmp_path) == []


def test_missing_member(tmp_path):
    import zipfile

    path = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("enwik9", b"x")
    with pytest.raises(DataError, match="has no member 'enwik8'"):
        enwik8.prepare(path, tmp_path / "e.h5", split_bytes=SPLITS)


def test_missing_archive_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path}/enwik8.zip does not exist: download {enwik8.URL}"):
        enwik8.prepare(tmp_path, tmp_path / "e.h5")


def test_download_then_prepare(tmp_path, monkeypatch):
    from raw_formats import RangeServer

    data = bytes(range(256)) * 4
    zipped = write_enwik8_zip(tmp_path / "served.zip", data[:1000]).read_bytes()
    with RangeServer(zipped) as server:
        monkeypatch.setattr(enwik8, "URL", server.url)
        assert enwik8.prepare(tmp_path / "raw", tmp_path / "e.h5", download=True, split_bytes=SPLITS)
    assert (tmp_path / "raw" / "enwik8.zip").read_bytes() == zipped
    assert bytes(hdf5.open_split(tmp_path / "e.h5", "valid")) == data[700:900]


def test_a_download_of_the_wrong_size_is_deleted(tmp_path, monkeypatch):
    from raw_formats import RangeServer

    with RangeServer(write_enwik8_zip(tmp_path / "served.zip", b"short").read_bytes()) as server:
        monkeypatch.setattr(enwik8, "URL", server.url)
        with pytest.raises(DataError, match="enwik8 is 5 bytes, expected 1,000.*deleted, run again"):
            enwik8.prepare(tmp_path / "raw", tmp_path / "e.h5", download=True, split_bytes=SPLITS)
    assert list((tmp_path / "raw").iterdir()) == [] and leftovers(tmp_path) == []
