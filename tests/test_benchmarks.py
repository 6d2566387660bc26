"""The benchmark scripts' own logic, on the CPU with tiny models: what they record and
what they refuse. Their timings are measured on GPUs (docs/benchmarks.md), not here."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--eval-every", "1", "--set", "model.layers=2", "--set", "model.d_model=32",
        "--set", "model.context=64", "--set", "model.attention=reference", "--set", "data.batch_size=2"]


def bpd_vs_time(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/bpd_vs_time.py", *TINY, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_bpd_runs_made_one_pattern_at_a_time_join_one_record(tmp_path):
    record = tmp_path / "bpd.json"
    for pattern in ("strided", "dense", "strided"):  # strided twice: the second run replaces the first
        done = bpd_vs_time("--seconds", "1", "--patterns", pattern, "--append", "--json", str(record))
        assert done.returncode == 0, done.stderr
    runs = json.loads(record.read_text())["runs"]
    assert [run["pattern"] for run in runs] == ["dense", "strided"]
    assert all(run["curve"][-1]["wall_s"] >= 1 and run["steps"] > 0 and run["finished"] for run in runs)

    refused = bpd_vs_time("--seconds", "2", "--patterns", "fixed", "--append", "--json", str(record))
    assert refused.returncode == 2
    assert "seconds: 1.0 there, 2.0 here" in refused.stderr
    assert [run["pattern"] for run in json.loads(record.read_text())["runs"]] == ["dense", "strided"]  # untouched


def test_bpd_runs_made_apart_are_merged_into_one_record(tmp_path):
    # As on a host of several GPUs: one process per pattern, each with its own record.
    for pattern in ("fixed", "dense"):
        done = bpd_vs_time("--seconds", "1", "--patterns", pattern, "--json", str(tmp_path / f"{pattern}.json"))
        assert done.returncode == 0, done.stderr
    joined = tmp_path / "all.json"
    merged = bpd_vs_time("--merge", str(tmp_path / "fixed.json"), str(tmp_path / "dense.json"), "--json", str(joined))
    assert merged.returncode == 0, merged.stderr
    record = json.loads(joined.read_text())
    assert [run["pattern"] for run in record["runs"]] == ["dense", "fixed"]
    assert record["runs"][0] == json.loads((tmp_path / "dense.json").read_text())["runs"][0]

    twice = bpd_vs_time("--merge", str(tmp_path / "dense.json"), str(joined), "--json", str(tmp_path / "twice.json"))
    assert twice.returncode == 2 and "pattern dense is in more than one record" in twice.stderr
    other = tmp_path / "other.json"
    done = bpd_vs_time("--seconds", "2", "--patterns", "strided", "--json", str(other))
    assert done.returncode == 0, done.stderr
    refused = bpd_vs_time("--merge", str(joined), str(other), "--json", str(tmp_path / "mixed.json"))
    assert refused.returncode == 2 and "seconds: 1.0 in" in refused.stderr
    assert not (tmp_path / "twice.json").exists() and not (tmp_path / "mixed.json").exists()


def test_a_bpd_run_stopped_early_keeps_its_curve_so_far(tmp_path):
    record = tmp_path / "bpd.json"
    command = [sys.executable, "benchmarks/bpd_vs_time.py", *TINY, "--seconds", "600", "--patterns", "fixed",
               "--json", str(record)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not record.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert record.exists(), process.stderr.read() if process.poll() is not None else "no record in 240 s"
    finally:
        process.kill()  # as a device call's time limit would
        process.wait()
    run = json.loads(record.read_text())["runs"][0]  # written whole (renamed into place), so readable now
    assert run["pattern"] == "fixed" and run["finished"] is False
    assert len(run["curve"]) >= 2 and run["curve"][-1]["step"] == run["steps"] > 0


def test_bpd_runs_train_a_prepared_image_file_as_images(tmp_path):
    """Any prepared file: images keep their shape and start symbol (the model takes the
    file's image shape and a context of one image), streams are read as byte streams."""
    from sparse_transformer.data import digits

    images = tmp_path / "digits.h5"
    digits.prepare(images)
    record = tmp_path / "bpd.json"
    done = bpd_vs_time("--seconds", "1", "--patterns", "strided", "--data", str(images), "--set", "model.context=16",
                       "--json", str(record))
    assert done.returncode == 0, done.stderr
    meta = json.loads(record.read_text())["meta"]
    assert meta["model"]["image_shape"] == [8, 8, 1] and meta["model"]["context"] == 64
    assert "images [8, 8, 1]" in meta["data"]


def test_the_sampling_benchmark_completes_the_test_images_of_a_prepared_file(tmp_path):
    from sparse_transformer.data import digits

    images = tmp_path / "digits.h5"
    digits.prepare(images)
    record = tmp_path / "sampling.json"
    done = subprocess.run([sys.executable, "benchmarks/sampling.py", "--device", "cpu", "--batch", "3", "--set",
                           "model.layers=2", "--set", "model.d_model=32", "--data", str(images), "--eager-positions",
                           "4", "--check-length", "8", "--json", str(record)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    cached = json.loads(record.read_text())["cached"]
    assert cached["positions"] == 64 and cached["given"] == 32  # the top half of each 8x8 digit given
    assert json.loads(record.read_text())["meta"]["model"]["image_shape"] == [8, 8, 1]


def test_a_profiled_training_step_records_where_its_host_time_goes(tmp_path):
    """benchmarks/train_step.py --profile: one step's operator tables by device and by host
    time, and its host events in the record (kernels and the GPU's busy share need a GPU);
    the timed steps of every round in the record."""
    record = tmp_path / "table2.json"
    done = subprocess.run([sys.executable, "benchmarks/train_step.py", "--device", "cpu", "--experiment", "enwik8",
                           "--patterns", "dense", "--steps", "1", "--rounds", "2", "--warmup", "1", "--set", "model.layers=1",
                           "--set", "model.context=64", "--set", "evaluate.min_context=32", "--profile",
                           str(tmp_path / "profile"), "--json", str(record)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    row = json.loads(record.read_text())["rows"][0]
    assert row["host_events"] > 50 and row["kernels"] == 0 and row["gpu_busy_share"] is None
    assert len(row["steps_s"]) == 2 and row["step_s"] in row["steps_s"]
    table = (tmp_path / "profile" / "dense.txt").read_text()
    assert "by device time" in table and "by host time" in table and "aten::addmm" in table


@pytest.mark.parametrize("flag", ["--steps", "--rounds"])
def test_the_training_step_benchmark_refuses_no_timed_steps_in_one_line(flag):
    """train_step.py with no timed step (--steps 0 or --rounds 0): exit 2 naming the flag, no traceback."""
    done = subprocess.run([sys.executable, "benchmarks/train_step.py", "--device", "cpu", flag, "0"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "must be at least 1" in done.stderr and flag in done.stderr
    assert "Traceback" not in done.stderr


def test_layout_benchmark_gives_ours_and_flexattention_the_same_mask():
    """benchmarks/layouts.py times our layout against FlexAttention's block mask of a
    mask_mod: for every case the two must allow the same pairs (checked on the CPU at a
    small length; the timings need a GPU)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import layouts
    finally:
        sys.path.pop(0)
    n = 200
    args = layouts.argparse.Namespace(layouts=["longformer", "bigbird", "prefix-lm", "documents", "local", "fixed", "gqa"],
                                      block=32, window=20, globals=5, document=40, stride=16, summary=4, heads=2,
                                      gqa_heads=4)
    cases = layouts.cases(args, n, torch.device("cpu"))
    assert len(cases) == 8  # gqa at two kv head counts
    idx = torch.arange(n)
    zero = torch.tensor(0)
    for case in cases:
        expected = case["mask_mod"](zero, zero, idx[:, None], idx[None, :])
        for build in (case["ours"], case.get("closed")):
            if build is not None:
                assert torch.equal(build().element_mask(idx, idx)[0, 0], expected), case["name"]
    _, ids = layouts.document_ids(n, 40, seed=0)
    assert len(ids) == n and ids.min() == 0 and bool((ids.diff() >= 0).all())


def test_layout_kernel_variants_drop_only_bigbirds_global_row_or_column():
    """benchmarks/layout_kernels.py prices BigBird's global row and column by timing it
    without them: each variant is BigBird's own blocks less exactly that row or column."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import layout_kernels
        import layouts
    finally:
        sys.path.pop(0)
    full = layouts.bigbird_blocks(2048, 64, 3, seed=0)
    variants = layout_kernels.bigbird_variants(2048, 64)
    for name, add_row, add_col in (("no global row", True, False), ("no global col", False, True),
                                   ("no globals", True, True)):
        blocks = variants["bigbird " + name].clone()
        assert not (blocks[0].all() if add_row else False) and not (blocks[:, 0].all() if add_col else False)
        blocks[0, :] |= add_row
        blocks[:, 0] |= add_col
        assert torch.equal(blocks, full), name
