"""Raw inputs in their real formats, small, for the data tests to build fresh."""

from __future__ import annotations

import http.server
import io
import pickle
import re
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from local_server import LocalServer
from PIL import Image


def write_enwik8_zip(path: Path, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("enwik8", data)
    return path


def write_cifar_tarball(path: Path, rows_per_batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz like the real one (protocol-2 pickles of dicts with bytes
    keys); returns the planar rows of each batch."""
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
        for name in names:
            rows = rng.integers(0, 256, (rows_per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, 10, rows_per_batch).tolist()
            batches[name] = rows
            _add(tar, f"cifar-10-batches-py/{name}", pickle.dumps(
                {b"batch_label": name.encode(), b"labels": labels, b"data": rows, b"filenames": []}, protocol=2))
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(
            {b"label_names": [b"airplane"] * 10, b"num_cases_per_batch": rows_per_batch, b"num_vis": 3072}, protocol=2))
    return batches


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_png_folder(folder: Path, images: np.ndarray) -> list[Path]:
    """images (N, H, W, C) -> folder/img_00000.png ... (C = 1 grey, 3 RGB)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, image in enumerate(images):
        path = folder / f"img_{k:05d}.png"
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
        paths.append(path)
    return paths


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def leftovers(folder: Path) -> list[str]:
    """Files a failed prepare might leave behind: outputs and temporaries."""
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".h5", ".tmp") or ".tmp" in p.name)


class RangeServer(LocalServer):
    """Serves `payload` at any path on 127.0.0.1, honouring `Range: bytes=N-` unless told
    not to; records the ranges asked for and the body bytes it sent."""

    def __init__(self, payload: bytes, honour_range: bool = True):
        self.payload, self.honour_range, self.sent, self.ranges = payload, honour_range, 0, []
        super().__init__(_Handler)

    @property
    def url(self):
        return f"{self.address}/enwik8.zip"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and self.server.honour_range:
            start = int(match[1])
            self.server.ranges.append(start)
            if start >= len(self.server.payload):
                self.send_response(416)
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(self.server.payload) - 1}/{len(self.server.payload)}")
        else:
            self.send_response(200)
        body = self.server.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # Counted before writing: the client may read the whole body, finish and check
        # `sent` before this thread runs again.
        self.server.sent += len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass
