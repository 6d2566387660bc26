"""8-bit mu-law companding of audio (the paper's section 7.4), as WaveNet and torchaudio do it:
F(x) = sign(x) ln(1 + 255|x|) / ln 256 for x in [-1, 1]; byte = round((F(x) + 1) / 2 * 255)."""

from __future__ import annotations

import numpy as np

MU = 255


def encode(samples: np.ndarray) -> np.ndarray:
    """Samples in [-1, 1] (clipped) -> uint8 codes."""
    x = np.clip(np.asarray(samples, dtype=np.float64), -1.0, 1.0)
    companded = np.sign(x) * np.log1p(MU * np.abs(x)) / np.log1p(MU)
    return np.rint((companded + 1) / 2 * MU).astype(np.uint8)


def decode(codes: np.ndarray) -> np.ndarray:
    """uint8 codes -> float32 samples in [-1, 1], the inverse of F at each code's centre."""
    companded = np.asarray(codes, dtype=np.float64) / MU * 2 - 1
    return (np.sign(companded) * np.expm1(np.abs(companded) * np.log1p(MU)) / MU).astype(np.float32)
