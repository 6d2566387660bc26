"""The `prepare` subcommand through the project's CLI entry point."""

import numpy as np
import pytest

from raw_formats import leftovers, write_enwik8_zip
from sparse_transformer import cli
from sparse_transformer.data import hdf5


@pytest.fixture
def main(monkeypatch):
    # only this subcommand: the others are built elsewhere and imported by the CLI
    monkeypatch.setattr(cli, "COMMANDS", {"prepare": cli.COMMANDS["prepare"]})
    return cli.main


def test_bytes_then_reuse(tmp_path, main, capsys):
    (tmp_path / "t.txt").write_bytes(b"hello world " * 100)
    args = ["prepare", "bytes", "--input", str(tmp_path / "t.txt"), "--output", str(tmp_path / "t.h5"),
            "--split-fractions", "0.8", "0.1", "0.1"]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "is up to date (same inputs and parameters): kept" in out
    assert len(hdf5.open_split(tmp_path / "t.h5", "valid")) == 120


def test_digits_needs_no_input(tmp_path, main):
    assert main(["prepare", "digits", "--output", str(tmp_path / "d.h5"), "--seed", "2"]) == 0
    assert hdf5.read_attributes(tmp_path / "d.h5")["parameters"]["seed"] == 2


def test_errors_exit_2_with_the_file_named(tmp_path, main, capsys):
    write_enwik8_zip(tmp_path / "enwik8.zip", b"x" * 10)  # not 100,000,000 bytes
    assert main(["prepare", "enwik8", "--input", str(tmp_path), "--output", str(tmp_path / "e.h5")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparse-transformer prepare: error: ") and "enwik8.zip: enwik8 is 10 bytes, expected 100,000,000" in err
    assert leftovers(tmp_path) == []


def test_offline_without_the_archive_says_what_to_do(tmp_path, main, capsys):
    assert main(["prepare", "cifar10", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "c.h5")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}/raw/cifar-10-python.tar.gz does not exist: download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in err
    assert "--download" in err


def test_download_is_refused_for_local_sources(tmp_path, main, capsys):
    assert main(["prepare", "images", "--input", str(tmp_path), "--output", str(tmp_path / "i.h5"), "--download"]) == 2
    assert "downloading (--download, data.download) works for enwik8, cifar10 only" in capsys.readouterr().err


def test_unknown_dataset_is_a_usage_error(tmp_path, main):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "mnist", "--output", str(tmp_path / "x.h5")])
    assert exit_.value.code == 2


def test_audio_options_reach_the_source(tmp_path, main):
    import soundfile

    (tmp_path / "in").mkdir()
    for name in ("a", "b", "c"):
        soundfile.write(tmp_path / "in" / f"{name}.wav", np.zeros(8000), 8000)
    assert main(["prepare", "audio", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "a.h5"),
                 "--sample-rate", "4000"]) == 0
    assert hdf5.read_attributes(tmp_path / "a.h5")["sample_rate"] == 4000
    assert len(hdf5.open_split(tmp_path / "a.h5", "train")) == 4000


def test_a_data_config_drives_prepare(tmp_path):
    from sparse_transformer.config import load_data_config
    from sparse_transformer.data.prepare import prepare

    cfg = load_data_config({"dataset": "digits", "hdf5": str(tmp_path / "d.h5"), "split_fractions": [0.5, 0.25, 0.25],
                            "seed": 4})
    assert prepare(cfg)
    assert not prepare(cfg)
    assert hdf5.read_attributes(tmp_path / "d.h5")["parameters"] == {"seed": 4, "split_fractions": [0.5, 0.25, 0.25]}


def test_an_output_that_is_the_input_is_refused(tmp_path, main, capsys):
    raw = tmp_path / "t.txt"
    raw.write_bytes(b"hello world " * 100)
    assert main(["prepare", "bytes", "--input", str(raw), "--output", str(raw)]) == 2
    assert f"the output {raw} is the input itself" in capsys.readouterr().err
    assert raw.read_bytes() == b"hello world " * 100


def test_an_output_inside_an_input_folder_is_refused_and_prepared_files_are_not_inputs(tmp_path, main, capsys):
    folder = tmp_path / "text"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"x" * 5000)
    assert main(["prepare", "bytes", "--input", str(folder), "--output", str(folder / "t.h5")]) == 2
    assert "lies inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt"]

    # a file prepared there before (by hand, or by an older release) is not read as raw data
    assert main(["prepare", "bytes", "--input", str(folder / "a.txt"), "--output", str(folder / "old.h5")]) == 0
    assert main(["prepare", "bytes", "--input", str(folder), "--output", str(tmp_path / "t.h5")]) == 0
    assert "skipped 1 prepared-data file(s)" in capsys.readouterr().err
    assert sum(len(hdf5.open_split(tmp_path / "t.h5", s)) for s in hdf5.SPLITS) == 5000


@pytest.mark.parametrize(("output", "problem"), [
    ("/proc/digits.h5", "the output: cannot write in /proc ("),
    ("{tmp}/a-file/digits.h5", "the output: {tmp}/a-file is a file, not a folder"),
    ("{tmp}", "the output: {tmp} is a folder; give the path of a file"),
])
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, main, capsys, output, problem):
    (tmp_path / "a-file").write_text("x")
    assert main(["prepare", "digits", "--output", output.format(tmp=tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem.format(tmp=tmp_path) in err
