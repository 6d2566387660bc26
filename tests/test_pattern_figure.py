"""`sparse-transformer pattern`: the picture and its argument errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sparse_transformer.cli import main
from sparse_transformer.pattern_figure import (
    ALLOWED,
    COLOURS,
    FUTURE,
    NOT_ALLOWED,
    QUERY,
    QUERY_KEY,
    cell_categories,
    grid_categories,
)
from sparse_transformer.patterns import Pattern


def test_matrix_categories_follow_the_mask():
    p = Pattern("strided", 3)
    mask = p.mask(8)
    cells = cell_categories(mask, query=6)
    assert cells[6].tolist() == [QUERY_KEY, NOT_ALLOWED, NOT_ALLOWED, QUERY_KEY, QUERY_KEY, QUERY_KEY, QUERY, FUTURE]
    assert cells[7, 4] == ALLOWED and cells[7, 3] == NOT_ALLOWED and cells[2, 5] == FUTURE


def test_grid_lays_positions_out_in_rows_of_the_stride():
    p = Pattern("strided", 3)
    cells = grid_categories(p.mask(8), query=6, width=3)
    assert cells.shape == (3, 3)
    assert cells.tolist() == [
        [QUERY_KEY, NOT_ALLOWED, NOT_ALLOWED],
        [QUERY_KEY, QUERY_KEY, QUERY_KEY],
        [QUERY, FUTURE, -1],  # position 8 does not exist
    ]


def test_command_writes_a_png_with_one_panel_per_head_and_the_union(tmp_path):
    out = tmp_path / "figs" / "fixed.png"
    args = ["pattern", "--kind", "fixed", "--stride", "8", "--summary", "2", "--distinct-summaries"]
    assert main(args + ["--n", "40", "--heads", "3", "--query", "37", "-o", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["fixed.png"]  # no temporary file left behind
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[1] > 4 * image.shape[0] / 2  # four panels side by side
    orange = np.array([int(COLOURS[QUERY][k : k + 2], 16) for k in (1, 3, 5)])
    assert (np.abs(image.astype(int) - orange).sum(-1) < 10).any()  # the query is drawn


def test_command_without_grid(tmp_path):
    out = tmp_path / "dense.png"
    assert main(["pattern", "--kind", "dense", "--heads", "1", "--no-grid", "--n", "20", "-o", str(out)]) == 0
    assert Image.open(out).format == "PNG"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kind", "strided", "--summary", "4"], "--summary"),
        (["--kind", "fixed", "--stride", "4", "--summary", "4"], "--summary"),
        (["--n", "0"], "--n must be between 1"),
        (["--query", "99", "--n", "10"], "--query must be a position in [0, 9]"),
        (["--heads", "0"], "--heads must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["pattern", *args, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()
