"""The benchmark scripts' own logic, on the CPU with tiny models: what they record and
what they refuse. Their timings are measured on GPUs (docs/benchmarks.md), not here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
    assert all(run["curve"][-1]["wall_s"] >= 1 and run["steps"] > 0 for run in runs)

    refused = bpd_vs_time("--seconds", "2", "--patterns", "fixed", "--append", "--json", str(record))
    assert refused.returncode == 2
    assert "seconds: 1.0 there, 2.0 here" in refused.stderr
    assert [run["pattern"] for run in json.loads(record.read_text())["runs"]] == ["dense", "strided"]  # untouched
