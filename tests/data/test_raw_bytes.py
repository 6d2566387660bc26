import pytest

from raw_formats import leftovers
from sparse_transformer.data import hdf5, raw_bytes
from sparse_transformer.data.errors import DataError


def splits(out):
    return [bytes(hdf5.open_split(out, s)) for s in hdf5.SPLITS]


def test_a_file_is_cut_into_contiguous_parts(tmp_path):
    data = bytes(range(256)) * 4
    (tmp_path / "t.txt").write_bytes(data)
    raw_bytes.prepare(tmp_path / "t.txt", tmp_path / "t.h5", fractions=(0.8, 0.1, 0.1))
    train, valid, test = splits(tmp_path / "t.h5")
    assert (len(train), len(valid), len(test)) == (820, 102, 102)
    assert train + valid + test == data
    assert hdf5.read_attributes(tmp_path / "t.h5")["modality"] == "bytes"


def test_a_folder_is_concatenated_in_path_order_skipping_hidden_files(tmp_path):
    (tmp_path / "in" / "sub").mkdir(parents=True)
    (tmp_path / "in" / "b.bin").write_bytes(b"B" * 50)
    (tmp_path / "in" / "a.bin").write_bytes(b"A" * 30)
    (tmp_path / "in" / "sub" / "c.bin").write_bytes(b"C" * 20)
    (tmp_path / "in" / ".hidden").write_bytes(b"H" * 99)
    raw_bytes.prepare(tmp_path / "in", tmp_path / "f.h5")
    assert b"".join(splits(tmp_path / "f.h5")) == b"A" * 30 + b"B" * 50 + b"C" * 20
    assert [len(s) for s in splits(tmp_path / "f.h5")] == [90, 5, 5]


def test_reuse_and_rebuild(tmp_path):
    (tmp_path / "t.txt").write_bytes(b"x" * 100)
    assert raw_bytes.prepare(tmp_path / "t.txt", tmp_path / "t.h5")
    assert not raw_bytes.prepare(tmp_path / "t.txt", tmp_path / "t.h5")
    (tmp_path / "t.txt").write_bytes(b"y" * 100)
    assert raw_bytes.prepare(tmp_path / "t.txt", tmp_path / "t.h5")
    assert splits(tmp_path / "t.h5")[0] == b"y" * 90


def test_empty_input_and_bad_fractions(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no bytes"):
        raw_bytes.prepare(tmp_path / "empty", tmp_path / "e.h5")
    (tmp_path / "t.txt").write_bytes(b"x" * 10)
    with pytest.raises(DataError, match=r"split fractions \[0.5, 0.5, 0.5\] are invalid"):
        raw_bytes.prepare(tmp_path / "t.txt", tmp_path / "e.h5", fractions=(0.5, 0.5, 0.5))
    assert leftovers(tmp_path) == []
