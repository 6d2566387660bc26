"""Outputs: written whole or not at all, temporaries of dead processes cleaned, paths that
cannot be written refused before any work."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from sparse_transformer.outputs import (
    OutputError, check_file, check_folder, remove_stale_temporaries, replacing, temporary_path, write_text,
)


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    out = tmp_path / "metrics.json"
    write_text(out, "old\n")
    with pytest.raises(RuntimeError, match="disk full"), replacing(out) as temporary:
        temporary.write_text("half of the new")
        raise RuntimeError("disk full")
    assert out.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_temporaries_of_ended_processes_are_removed_and_others_kept(tmp_path):
    out = tmp_path / "data.h5"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".data.h5.{socket.gethostname()}-{int(ended.stdout)}.tmp"  # a killed writer's leftover
    alive = temporary_path(out)  # this process's: still writing
    elsewhere = tmp_path / f".data.h5.another-host-{int(ended.stdout)}.tmp"  # a shared folder: not ours to judge
    for path in (dead, alive, elsewhere):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(out) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])


@pytest.mark.parametrize(("where", "problem"), [
    (lambda tmp: "/proc/metrics.json", "cannot write in /proc"),
    (lambda tmp: "/proc/sparse/metrics.json", "cannot write in /proc"),
    (lambda tmp: tmp / "a-file" / "metrics.json", "a-file is a file, not a folder"),
    (lambda tmp: tmp / "a-file" / "deeper" / "metrics.json", "a-file is a file, not a folder"),
    (lambda tmp: tmp / "a-folder", "a-folder is a folder; give the path of a file"),
])
def test_unwritable_output_files_are_refused_before_any_work(tmp_path, where, problem):
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    with pytest.raises(OutputError, match=f"^evaluate.metrics_file: .*{problem}"):
        check_file(where(tmp_path), "evaluate.metrics_file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]  # nothing made


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "samples").write_text("x")
    with pytest.raises(OutputError, match="sample.output_dir: .*samples is a file; give the path of a folder"):
        check_folder(tmp_path / "samples", "sample.output_dir")
    assert check_folder(tmp_path / "new" / "samples", "sample.output_dir") == tmp_path / "new" / "samples"
    assert not (tmp_path / "new").exists()
