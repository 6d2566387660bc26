"""Where completions start: the prompts of `sparse-transformer sample` (sample.prompt).

Images: the top rows of the first test images (the paper's completions: the top half
given, the bottom half sampled), with the images themselves to show beside them.
Streams: the start of a file (text as its bytes; audio decoded, resampled and mu-law
encoded as the data was prepared), the same prompt for every completion; or, without a
file, the starts of the test split's recordings (audio) or test windows spread evenly
over the split (text, bytes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import PromptConfig
from .data.errors import DataError


def image_prompts(cfg: PromptConfig, test_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prompts (count, rows * W * C) uint8: the given top rows, originals (count, H, W, C))."""
    count = min(cfg.count, len(test_images))
    if count == 0:
        raise DataError("sample.prompt: the test split holds no images to complete")
    originals = np.asarray(test_images[:count])
    height, width, channels = originals.shape[1:]
    rows = height // 2 if cfg.rows is None else cfg.rows
    if not 0 < rows < height:
        raise DataError(f"sample.prompt.rows: give between 1 and {height - 1} rows of these {height}-row images, got {rows}")
    return originals[:, :rows].reshape(count, rows * width * channels), originals


def stream_prompts(cfg: PromptConfig, modality: str, sample_rate: int | None, test: np.ndarray,
                   boundaries: np.ndarray) -> np.ndarray:
    """(count, length) uint8: the prompt of each completion, `length` from prompt.length
    (bytes) or prompt.seconds (audio)."""
    length = round(cfg.seconds * sample_rate) if modality == "audio" else cfg.length
    if cfg.file is not None:
        prompt = _file_start(Path(cfg.file), modality, sample_rate, length)
        return np.tile(prompt, (cfg.count, 1))
    if modality == "audio":  # the start of each recording, cycling through them
        starts = [start for start, end in zip(boundaries[:-1], boundaries[1:]) if end - start >= length]
    else:
        starts = np.linspace(0, len(test) - length, cfg.count).astype(np.int64).tolist() if len(test) >= length else []
    if not starts:
        unit = f"{cfg.seconds:g} s" if modality == "audio" else f"{length} bytes"
        raise DataError(f"sample.prompt: the test split holds no {'recording' if modality == 'audio' else 'stretch'} "
                        f"of {unit}: shorten the prompt (prompt.{'seconds' if modality == 'audio' else 'length'}) "
                        "or give a file (prompt.file)")
    return np.stack([np.asarray(test[starts[k % len(starts)]:starts[k % len(starts)] + length]) for k in range(cfg.count)])


def _file_start(path: Path, modality: str, sample_rate: int | None, length: int) -> np.ndarray:
    """The first `length` bytes of a text file, or of an audio file as the data holds audio."""
    if not path.is_file():
        raise DataError(f"sample.prompt.file: {path} does not exist: give a text or audio file whose start is the prompt")
    if modality == "audio":
        from .data.audio import load_mulaw

        data = load_mulaw(path, sample_rate)
    else:
        with path.open("rb") as fh:
            data = np.frombuffer(fh.read(length), dtype=np.uint8)
    if len(data) == 0:
        raise DataError(f"sample.prompt.file: {path} is empty: give a file with a start to continue")
    return data[:length]
