"""The shipped quickstart files prepare as documented in data/quickstart/README.md."""

from pathlib import Path

import numpy as np

from sparse_transformer.data import audio, hdf5, raw_bytes

QUICKSTART = Path(__file__).resolve().parents[2] / "data" / "quickstart"


def test_license_notes_are_shipped():
    notes = (QUICKSTART / "README.md").read_text()
    assert "public domain" in notes and "GPL-2.0-or-later" in notes and "CC BY 4.0" in notes


def test_text(tmp_path):
    out = tmp_path / "text.h5"
    raw_bytes.prepare(QUICKSTART / "text" / "tinyshakespeare.txt", out)
    assert [len(hdf5.open_split(out, s)) for s in hdf5.SPLITS] == [1_003_854, 55_770, 55_770]
    assert bytes(hdf5.open_split(out, "train")[:9]) == b"First Cit"


def test_audio(tmp_path):
    out = tmp_path / "audio.h5"
    audio.prepare(QUICKSTART / "audio", out)
    lengths = [len(hdf5.open_split(out, f"{s}_boundaries")) - 1 for s in hdf5.SPLITS]
    assert lengths == [1, 1, 1]  # three recordings, each whole in one split
    for split in hdf5.SPLITS:
        codes = np.asarray(hdf5.open_split(out, split))
        assert abs(len(codes) - 45 * 12_000) <= 12_000 and codes.std() > 5  # 45 s of music, not silence
