import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sparse_transformer.data.errors import DataError
from sparse_transformer.data.splits import shuffled_split, split_sizes


@given(st.integers(1, 10_000), st.sampled_from([(0.9, 0.05, 0.05), (0.8, 0.2, 0.0), (1.0, 0.0, 0.0), (0.34, 0.33, 0.33)]),
       st.booleans())
def test_sizes_cover_the_total_and_train_is_never_empty(total, fractions, at_least_one):
    sizes = split_sizes(total, fractions, at_least_one)
    assert sum(sizes) == total and sizes[0] >= 1 and min(sizes) >= 0


def test_at_least_one_recording_per_split():
    assert split_sizes(3, (0.9, 0.05, 0.05)) == (3, 0, 0)
    assert split_sizes(3, (0.9, 0.05, 0.05), at_least_one=True) == (1, 1, 1)
    assert split_sizes(2, (0.9, 0.05, 0.05), at_least_one=True) == (1, 1, 0)  # valid before test


def test_shuffled_split_is_a_seeded_partition():
    parts = shuffled_split(100, (0.8, 0.1, 0.1), seed=7)
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert all(np.array_equal(a, b) for a, b in zip(parts, shuffled_split(100, (0.8, 0.1, 0.1), seed=7)))
    assert not np.array_equal(parts[1], shuffled_split(100, (0.8, 0.1, 0.1), seed=8)[1])


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.0, 0.5, 0.5), (0.9, -0.1, 0.2), (0.5, 0.2, 0.2)])
def test_bad_fractions(bad):
    with pytest.raises(DataError, match="split fractions"):
        split_sizes(10, bad)
