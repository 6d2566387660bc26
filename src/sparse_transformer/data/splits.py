"""Split sizes from fractions, for sources without an official split (bytes, images,
audio, digits)."""

from __future__ import annotations

import numpy as np

from .errors import DataError

#: train, valid, test: enwik8's 90/5/5 proportions.
DEFAULT_FRACTIONS = (0.9, 0.05, 0.05)


def check_fractions(fractions: tuple[float, float, float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6 or fractions[0] == 0:
        raise DataError(
            f"split fractions {list(fractions)} are invalid: give three non-negative numbers "
            "(train, valid, test) that sum to 1, with train > 0"
        )


def split_sizes(total: int, fractions: tuple[float, float, float], at_least_one: bool = False) -> tuple[int, int, int]:
    """Sizes (train, valid, test) summing to `total`: valid and test are rounded from
    their fractions and train takes the rest.

    at_least_one: a split with a non-zero fraction gets at least one item while items
    remain (three recordings still give a valid and a test recording).
    """
    check_fractions(fractions)
    valid, test = (int(round(total * f)) for f in fractions[1:])
    if at_least_one:
        valid = max(valid, 1) if fractions[1] > 0 else 0
        test = max(test, 1) if fractions[2] > 0 else 0
    while valid + test >= total and valid + test > 0:  # train keeps at least one item
        if test >= valid and test > 0:
            test -= 1
        else:
            valid -= 1
    return total - valid - test, valid, test


def shuffled_split(total: int, fractions: tuple[float, float, float], seed: int, at_least_one: bool = False) -> list[np.ndarray]:
    """Indices of each split (train, valid, test), drawn by a seeded permutation and kept
    in their original order within a split."""
    sizes = split_sizes(total, fractions, at_least_one)
    order = np.random.default_rng(seed).permutation(total)
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[bounds[k]:bounds[k + 1]]) for k in range(3)]
