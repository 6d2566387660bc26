"""Where completions start (prompts.py): test images' top rows, recording starts, files."""

from __future__ import annotations

import numpy as np
import pytest

from sparse_transformer.config import PromptConfig
from sparse_transformer.data.errors import DataError
from sparse_transformer.prompts import image_prompts, stream_prompts


def test_images_give_their_top_rows():
    images = np.arange(5 * 4 * 3 * 2, dtype=np.uint8).reshape(5, 4, 3, 2)
    given, originals = image_prompts(PromptConfig(count=3), images)  # rows null: the top half
    assert given.shape == (3, 2 * 3 * 2) and np.array_equal(originals, images[:3])
    assert np.array_equal(given[1], images[1, :2].reshape(-1))
    with pytest.raises(DataError, match="give between 1 and 3 rows of these 4-row images, got 4"):
        image_prompts(PromptConfig(count=1, rows=4), images)


def test_audio_prompts_are_recording_starts_and_text_prompts_spread_over_the_split():
    test = np.arange(100, dtype=np.uint8)
    boundaries = np.array([0, 30, 35, 100])  # the middle recording is too short for 0.001 s at 8 kHz
    audio = stream_prompts(PromptConfig(count=3, seconds=0.001), "audio", 8000, test, boundaries)
    assert audio.tolist() == [list(range(0, 8)), list(range(35, 43)), list(range(0, 8))]  # cycling
    text = stream_prompts(PromptConfig(count=3, length=10), "text", None, test, np.array([0, 100]))
    assert [row[0] for row in text] == [0, 45, 90]
    with pytest.raises(DataError, match=r"no stretch of 200 bytes: shorten the prompt \(prompt.length\)"):
        stream_prompts(PromptConfig(count=1, length=200), "text", None, test, np.array([0, 100]))


def test_a_file_gives_every_completion_its_start(tmp_path):
    start = tmp_path / "start.txt"
    start.write_bytes(b"It was a dark and stormy night")
    given = stream_prompts(PromptConfig(count=2, file=str(start), length=6), "text", None, np.zeros(0, np.uint8),
                           np.array([0, 0]))
    assert [row.tobytes() for row in given] == [b"It was", b"It was"]
    with pytest.raises(DataError, match="does not exist: give a text or audio file"):
        stream_prompts(PromptConfig(count=1, file=str(tmp_path / "missing.txt")), "text", None, given[0], np.array([0, 6]))
