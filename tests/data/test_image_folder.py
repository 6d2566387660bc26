import numpy as np
import pytest
from PIL import Image

from raw_formats import leftovers, write_png_folder
from sparse_transformer.data import hdf5, image_folder
from sparse_transformer.data.errors import DataError


def images_of(out):
    return np.concatenate([np.asarray(hdf5.open_split(out, s)) for s in hdf5.SPLITS])


def test_rgb_round_trip_and_split(tmp_path, rng):
    pixels = rng.integers(0, 256, (20, 6, 5, 3), dtype=np.uint8)
    pixels[0] = 0
    pixels[0, 1, 2] = (255, 0, 0)
    write_png_folder(tmp_path / "imgs", pixels)
    out = tmp_path / "imgs.h5"
    assert image_folder.prepare(tmp_path / "imgs", out, fractions=(0.8, 0.1, 0.1), seed=3)
    shapes = [hdf5.open_split(out, s).shape for s in hdf5.SPLITS]
    assert shapes == [(16, 6, 5, 3), (2, 6, 5, 3), (2, 6, 5, 3)]
    assert sorted(map(bytes, images_of(out))) == sorted(map(bytes, pixels))
    red = [img for img in images_of(out) if img.sum() == 255][0]
    assert tuple(red[1, 2]) == (255, 0, 0)
    assert hdf5.read_attributes(out)["example_shape"] == (6, 5, 3)
    assert not image_folder.prepare(tmp_path / "imgs", out, fractions=(0.8, 0.1, 0.1), seed=3)
    assert image_folder.prepare(tmp_path / "imgs", out, fractions=(0.8, 0.1, 0.1), seed=4)


def test_grey_images_have_one_channel(tmp_path, rng):
    pixels = rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    write_png_folder(tmp_path / "g", pixels)
    image_folder.prepare(tmp_path / "g", tmp_path / "g.h5")
    assert sorted(map(bytes, images_of(tmp_path / "g.h5"))) == sorted(map(bytes, pixels))


@pytest.mark.parametrize("odd, described", [
    (lambda p: Image.new("RGB", (7, 6)).save(p), "is 7x6 RGB but .*img_00000.png is 5x6 RGB"),
    (lambda p: Image.new("L", (5, 6)).save(p), "is 5x6 L but .*img_00000.png is 5x6 RGB"),
])
def test_the_first_odd_image_is_named(tmp_path, rng, odd, described):
    write_png_folder(tmp_path / "imgs", rng.integers(0, 256, (6, 6, 5, 3), dtype=np.uint8))
    odd(tmp_path / "imgs" / "img_00003.png")
    odd(tmp_path / "imgs" / "img_00005.png")
    with pytest.raises(DataError, match=f"img_00003.png {described}"):
        image_folder.prepare(tmp_path / "imgs", tmp_path / "imgs.h5")
    assert leftovers(tmp_path) == []


def test_an_undecodable_image_is_named(tmp_path, rng):
    paths = write_png_folder(tmp_path / "imgs", rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8))
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[: len(data) // 2])  # header intact, pixels cut off
    with pytest.raises(DataError, match="img_00002.png cannot be decoded"):
        image_folder.prepare(tmp_path / "imgs", tmp_path / "imgs.h5")
    assert leftovers(tmp_path) == []


def test_unsupported_mode(tmp_path):
    (tmp_path / "imgs").mkdir()
    Image.new("CMYK", (4, 4)).save(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(DataError, match="a.jpg has mode CMYK"):
        image_folder.prepare(tmp_path / "imgs", tmp_path / "imgs.h5")


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="empty holds no image files"):
        image_folder.prepare(tmp_path / "empty", tmp_path / "x.h5")
    with pytest.raises(DataError, match="nowhere does not exist"):
        image_folder.prepare(tmp_path / "nowhere", tmp_path / "x.h5")
    assert leftovers(tmp_path) == []
