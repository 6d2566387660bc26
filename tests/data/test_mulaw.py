import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sparse_transformer.data import mulaw


def companded(x):
    return np.sign(x) * np.log1p(255 * np.abs(x)) / np.log(256)


def test_known_codes():
    assert mulaw.encode(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
    assert mulaw.encode(np.array([-7.0, 3.0])).tolist() == [0, 255]  # clipped


def test_every_code_survives_decode_then_encode():
    codes = np.arange(256, dtype=np.uint8)
    assert np.array_equal(mulaw.encode(mulaw.decode(codes)), codes)


@given(arrays(np.float64, st.integers(1, 64), elements=st.floats(-1, 1)))
def test_round_trip_error_within_the_8_bit_bound(x):
    codes = mulaw.encode(x)
    assert codes.dtype == np.uint8
    x_hat = mulaw.decode(codes).astype(np.float64)
    # the code is the nearest of 256 levels spaced 2/255 apart in the companded domain
    assert np.all(np.abs(companded(x_hat) - companded(x)) <= 1 / 255 + 1e-6)
    # in the signal domain that is at most one half-step times the slope of F^-1
    bound = np.log(256) / 255**2 * (1 + 255 * np.abs(x)) * 256 ** (1 / 255)
    assert np.all(np.abs(x_hat - x) <= bound + 1e-6)


@given(st.floats(-1, 1), st.floats(-1, 1))
def test_monotonic(a, b):
    lo, hi = sorted((a, b))
    assert mulaw.encode(np.array([lo]))[0] <= mulaw.encode(np.array([hi]))[0]
