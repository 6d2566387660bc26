import numpy as np

from sparse_transformer.data import digits, hdf5


def test_digits_are_8x8_grey_scaled_to_bytes(tmp_path):
    out = tmp_path / "digits.h5"
    assert digits.prepare(out)
    parts = [np.asarray(hdf5.open_split(out, s)) for s in hdf5.SPLITS]
    assert [len(p) for p in parts] == [1617, 90, 90]
    images = np.concatenate(parts)
    assert images.shape[1:] == (8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert set(np.unique(images)) <= {round(v * 255 / 16) for v in range(17)}
    attrs = hdf5.read_attributes(out)
    assert attrs["modality"] == "image" and attrs["example_shape"] == (8, 8, 1)
    assert not digits.prepare(out)
    assert digits.prepare(out, seed=1)
