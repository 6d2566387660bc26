import json

import h5py
import numpy as np
import pytest

from sparse_transformer.data import hdf5
from sparse_transformer.data.errors import DataError

from raw_formats import leftovers


def recipe(**overrides):
    fields = dict(dataset="bytes", modality="bytes", example_shape=(), parameters={"a": 1}, sources={"x": "00"})
    return hdf5.Recipe(**{**fields, **overrides})


def write_three(fh, data=np.arange(10, dtype=np.uint8)):
    for name in hdf5.SPLITS:
        hdf5.write_split(fh, name, data)


def test_build_writes_contiguous_splits_and_attributes(tmp_path):
    out = tmp_path / "d.h5"
    assert hdf5.build(out, recipe(), write_three)
    assert leftovers(tmp_path) == ["d.h5"]  # the temporary file became the output
    with h5py.File(out) as fh:
        assert fh["train"].dtype == np.uint8 and fh["train"].chunks is None and fh["train"].compression is None
        assert json.loads(fh.attrs["parameters"]) == {"a": 1}
    attrs = hdf5.read_attributes(out)
    assert attrs["format_version"] == hdf5.FORMAT_VERSION and attrs["vocab_size"] == 256
    assert attrs["modality"] == "bytes" and attrs["example_shape"] == () and attrs["source_sha256"] == {"x": "00"}
    view = hdf5.open_split(out, "valid")
    assert isinstance(view, np.memmap) and np.array_equal(view, np.arange(10))


def test_reused_when_recipe_matches_rebuilt_when_it_differs(tmp_path):
    out = tmp_path / "d.h5"
    calls = []

    def write(fh):
        calls.append(1)
        write_three(fh)

    assert hdf5.build(out, recipe(), write)
    assert not hdf5.build(out, recipe(), write)
    assert hdf5.build(out, recipe(parameters={"a": 2}), write)
    assert hdf5.build(out, recipe(parameters={"a": 2}, sources={"x": "01"}), write)
    assert hdf5.build(out, recipe(parameters={"a": 2}, sources={"x": "01"}), write, force=True)
    assert len(calls) == 4


def test_a_failing_writer_leaves_no_file_and_keeps_the_old_one(tmp_path):
    out = tmp_path / "d.h5"

    def broken(fh):
        hdf5.write_split(fh, "train", np.zeros(5, np.uint8))
        raise DataError("bad input")

    with pytest.raises(DataError):
        hdf5.build(out, recipe(), broken)
    assert leftovers(tmp_path) == []
    hdf5.build(out, recipe(), write_three)
    with pytest.raises(DataError):
        hdf5.build(out, recipe(parameters={"a": 3}), broken)
    assert leftovers(tmp_path) == ["d.h5"] and hdf5.read_attributes(out)["parameters"] == {"a": 1}


def test_an_unreadable_output_is_rebuilt(tmp_path):
    out = tmp_path / "d.h5"
    out.write_bytes(b"not hdf5")
    assert hdf5.build(out, recipe(), write_three)
    assert hdf5.read_attributes(out)["dataset"] == "bytes"


def test_empty_split_reads_as_empty_array(tmp_path):
    out = tmp_path / "d.h5"

    def write(fh):
        hdf5.write_split(fh, "train", np.ones(4, np.uint8))
        hdf5.write_split(fh, "valid", np.zeros(0, np.uint8))
        hdf5.write_split(fh, "test", np.zeros(0, np.uint8))

    hdf5.build(out, recipe(), write)
    assert hdf5.open_split(out, "test").shape == (0,)


def test_reading_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="missing.h5 does not exist"):
        hdf5.read_attributes(tmp_path / "missing.h5")
    out = tmp_path / "d.h5"
    hdf5.build(out, recipe(), write_three)
    with pytest.raises(DataError, match="no dataset 'nope'"):
        hdf5.open_split(out, "nope")
    with h5py.File(out, "a") as fh:
        fh.attrs["format_version"] = 99
    with pytest.raises(DataError, match="format version 99"):
        hdf5.read_attributes(out)


def test_compressed_split_is_refused(tmp_path):
    out = tmp_path / "c.h5"
    with h5py.File(out, "w") as fh:
        fh.create_dataset("train", data=np.zeros(100, np.uint8), compression="gzip")
    with pytest.raises(DataError, match="cannot be memory-mapped"):
        hdf5.open_split(out, "train")


def test_each_split_is_checksummed_and_damage_is_rebuilt(tmp_path, capsys):
    import hashlib

    out = tmp_path / "d.h5"
    hdf5.build(out, recipe(), write_three)
    recorded = hdf5.read_attributes(out)[hdf5.CHECKSUMS]
    assert recorded == {name: hashlib.sha256(np.arange(10, dtype=np.uint8).tobytes()).hexdigest() for name in hdf5.SPLITS}
    hdf5.check_intact(out, "test")

    offset = h5py.File(out, "r")["test"].id.get_offset()
    with open(out, "r+b") as fh:  # garbage over the test split
        fh.seek(offset)
        fh.write(b"\xff" * 4)
    assert hdf5.damaged_splits(out) == ["test"]
    with pytest.raises(DataError, match="test no longer match.* the file is damaged; prepare it again"):
        hdf5.check_intact(out, "test")
    assert hdf5.build(out, recipe(), write_three)  # not "up to date": rebuilt
    assert "test no longer match(es) the checksum" in capsys.readouterr().err
    hdf5.check_intact(out, "test")


def test_a_file_written_before_checksums_is_checksummed_on_reuse_not_refused(tmp_path):
    out = tmp_path / "d.h5"
    hdf5.build(out, recipe(), write_three)
    with h5py.File(out, "a") as fh:
        del fh.attrs[hdf5.CHECKSUMS]  # as an older release wrote it
    assert not hdf5.build(out, recipe(), write_three)  # reused
    assert set(hdf5.read_attributes(out)[hdf5.CHECKSUMS]) == set(hdf5.SPLITS)


def test_a_killed_writers_temporary_is_removed_by_the_next_build(tmp_path):
    import socket
    import subprocess
    import sys

    ended = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    (tmp_path / f".d.h5.{socket.gethostname()}-{ended}.tmp").write_bytes(b"half an HDF5 file")
    hdf5.build(tmp_path / "d.h5", recipe(), write_three)
    assert leftovers(tmp_path) == ["d.h5"]
