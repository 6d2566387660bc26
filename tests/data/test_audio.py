import h5py
import numpy as np
import pytest
import soundfile

from raw_formats import leftovers
from sparse_transformer.data import audio, hdf5, mulaw
from sparse_transformer.data.errors import DataError


def sine(seconds, rate, freq=440.0, amplitude=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return amplitude * np.sin(2 * np.pi * freq * t)


@pytest.fixture
def recordings(tmp_path):
    """Four recordings in four formats, rates and channel counts; {name: seconds}."""
    folder = tmp_path / "music"
    folder.mkdir()
    soundfile.write(folder / "a.wav", np.stack([sine(1.0, 16000), sine(1.0, 16000)], 1), 16000, subtype="PCM_16")
    soundfile.write(folder / "b.flac", sine(0.5, 22050), 22050)
    soundfile.write(folder / "c.ogg", sine(0.75, 44100), 44100, format="OGG")
    soundfile.write(folder / "d.mp3", sine(0.6, 24000), 24000, format="MP3")
    return folder, {"a.wav": 1.0, "b.flac": 0.5, "c.ogg": 0.75, "d.mp3": 0.6}


def test_recordings_are_split_whole_and_resampled(tmp_path, recordings):
    folder, seconds = recordings
    out = tmp_path / "audio.h5"
    assert audio.prepare(folder, out, fractions=(0.5, 0.25, 0.25), seed=0)
    attrs = hdf5.read_attributes(out)
    assert attrs["modality"] == "audio" and attrs["sample_rate"] == 12000
    seen = []
    for split in hdf5.SPLITS:
        stream = hdf5.open_split(out, split)
        bounds = hdf5.open_split(out, f"{split}_boundaries")
        with h5py.File(out) as fh:
            names = [n.decode() for n in fh[f"{split}_files"][:]]
        assert bounds[0] == 0 and bounds[-1] == len(stream) and len(bounds) == len(names) + 1
        for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
            expected = seconds[name] * 12000
            # mp3 decoders add a little padding at the start
            assert abs((hi - lo) - expected) <= (1200 if name.endswith(".mp3") else 1), name
            piece = mulaw.decode(stream[lo:hi]).astype(np.float64)
            spectrum = np.abs(np.fft.rfft(piece))
            assert abs(np.argmax(spectrum) * 12000 / len(piece) - 440) < 5, name
            assert abs(np.sqrt(np.mean(piece[len(piece) // 4:-len(piece) // 4] ** 2)) - 0.5 / np.sqrt(2)) < 0.02, name
        seen += names
    assert sorted(seen) == sorted(seconds)
    assert [len(hdf5.open_split(out, f"{s}_boundaries")) - 1 for s in hdf5.SPLITS] == [2, 1, 1]


def test_channels_are_mixed_to_mono(tmp_path):
    (tmp_path / "in").mkdir()
    soundfile.write(tmp_path / "in" / "x.wav", np.stack([sine(0.2, 12000), -sine(0.2, 12000)], 1), 12000, subtype="FLOAT")
    audio.prepare(tmp_path / "in", tmp_path / "x.h5", fractions=(1.0, 0.0, 0.0))
    codes = np.asarray(hdf5.open_split(tmp_path / "x.h5", "train"))
    assert len(codes) == 2400 and set(codes.tolist()) == {128}  # silence


def test_reuse_and_rebuild_on_a_new_rate(tmp_path, recordings):
    folder, _ = recordings
    out = tmp_path / "audio.h5"
    assert audio.prepare(folder, out)
    assert not audio.prepare(folder, out)
    assert audio.prepare(folder, out, sample_rate=8000)
    assert hdf5.read_attributes(out)["sample_rate"] == 8000


def test_an_undecodable_file_is_named(tmp_path, recordings):
    folder, _ = recordings
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(DataError, match="broken.wav cannot be decoded as audio.*--skip-undecodable"):
        audio.prepare(folder, tmp_path / "audio.h5")
    assert leftovers(tmp_path) == []


def test_undecodable_files_can_be_skipped_and_are_counted(tmp_path, recordings, capsys):
    folder, seconds = recordings
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (folder / "broken2.flac").write_bytes(b"fLaC" + bytes(100))
    assert audio.prepare(folder, tmp_path / "audio.h5", skip_undecodable=True)
    assert "skipped 2 undecodable file(s)" in capsys.readouterr().err
    total = sum(len(hdf5.open_split(tmp_path / "audio.h5", s)) for s in hdf5.SPLITS)
    assert total > 0.9 * sum(seconds.values()) * 12000


def test_empty_folder(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no audio files"):
        audio.prepare(tmp_path / "in", tmp_path / "a.h5")
    assert leftovers(tmp_path) == []


def test_a_truncated_ogg_is_named_not_prepared_as_half_a_recording(tmp_path, recordings):
    folder, _ = recordings
    whole = (folder / "c.ogg").read_bytes()
    assert audio.ogg_ends_whole(folder / "c.ogg")
    (folder / "cut.ogg").write_bytes(whole[:int(len(whole) * 0.9)])  # decodes without an error, shorter
    with pytest.raises(DataError, match="cut.ogg is truncated .*: remove it or pass --skip-undecodable"):
        audio.prepare(folder, tmp_path / "audio.h5")
    assert audio.prepare(folder, tmp_path / "audio.h5", skip_undecodable=True)
    with h5py.File(tmp_path / "audio.h5") as fh:
        assert "cut.ogg" not in {name.decode() for split in hdf5.SPLITS for name in fh[f"{split}_files"][:]}
