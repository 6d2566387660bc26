"""Data pipeline benchmark: prepare Enwik8 and CIFAR-10 at full size, then feed windows.

The inputs are synthetic but in the real formats and of the real sizes: an enwik8.zip
whose deflated `enwik8` member is 100,000,000 bytes of text (the quickstart Shakespeare,
repeated with every copy shuffled by lines so that it compresses like prose, not like a
repeat), and a cifar-10-python.tar.gz of six pickled batches of 10,000 random images.
Preparation is timed end to end, including checksums and the reuse check (forced
rebuild). Loading is timed through a DataLoader with one worker, the way training
reads: random windows of 12,289 bytes (context 12,288 + 1) from the prepared Enwik8,
with one worker process and with none (the training process reading the windows).

    python benchmarks/data.py [--workdir DIR] [--seconds 10] [--batch-sizes 8 32 64]

Results are recorded in docs/benchmarks.md ("Data").
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import pickle
import platform
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from sparse_transformer.data import cifar10, enwik8
from sparse_transformer.data.datamodule import ImageDataModule, StreamDataModule

TEXT = Path(__file__).resolve().parents[1] / "data" / "quickstart" / "text" / "tinyshakespeare.txt"


def make_enwik8_zip(path: Path, rng: np.random.Generator) -> None:
    lines = TEXT.read_bytes().split(b"\n")
    chunks, size = [], 0
    while size < 100_000_000:
        chunk = b"\n".join(lines[k] for k in rng.permutation(len(lines)))
        chunks.append(chunk)
        size += len(chunk)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", b"".join(chunks)[:100_000_000])


def make_cifar_tarball(path: Path, rng: np.random.Generator) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                     b"labels": rng.integers(0, 10, 10_000).tolist(), b"batch_label": name.encode()}
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def feed_rate(loader, seconds: float) -> tuple[float, int]:
    """Examples per second through `loader` after a warm-up batch; and the bytes per example."""
    iterator = iter(loader)
    first = next(iterator)
    count, start = 0, time.perf_counter()
    for batch in iterator:
        count += len(batch)
        if time.perf_counter() - start > seconds:
            break
    return count / (time.perf_counter() - start), first.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where to build the inputs (default: a temporary folder)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to time each loader")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        zip_path, tar_path = work / "enwik8.zip", work / "cifar-10-python.tar.gz"
        build_zip = timed(lambda: make_enwik8_zip(zip_path, rng))
        build_tar = timed(lambda: make_cifar_tarball(tar_path, rng))
        md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "torch_threads": torch.get_num_threads(),
            "inputs": {"enwik8.zip bytes": zip_path.stat().st_size, "cifar tarball bytes": tar_path.stat().st_size,
                       "build seconds (not timed below)": round(build_zip + build_tar, 1)},
            "prepare enwik8 s": timed(lambda: enwik8.prepare(zip_path, work / "enwik8.h5", force=True)),
            "reuse check enwik8 s": timed(lambda: enwik8.prepare(zip_path, work / "enwik8.h5")),
            "prepare cifar10 s": timed(lambda: cifar10.prepare(tar_path, work / "cifar10.h5", md5=md5, force=True)),
        }
        for batch_size in args.batch_sizes:
            for workers in (1, 0):  # 0: the training process reads the windows itself
                streams = StreamDataModule(work / "enwik8.h5", context=12_288, batch_size=batch_size, num_workers=workers)
                rate, length = feed_rate(streams.train_dataloader(), args.seconds)
                results[f"train windows/s of {length} bytes, batch {batch_size}, {workers} worker(s)"] = rate
        images = ImageDataModule(work / "cifar10.h5", batch_size=128, num_workers=1)
        rate, length = feed_rate(images.train_dataloader(), min(args.seconds, 5))
        results[f"train images/s of {length} bytes, 1 worker, batch 128"] = rate
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
