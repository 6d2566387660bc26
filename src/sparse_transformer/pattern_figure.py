"""`sparse-transformer pattern`: draw an attention pattern like Figure 3 of the paper.

One column per head (and one for the union of the layer's heads when there are
several). The bottom row is the (n x n) connectivity matrix, query i down, key j
across, with one query's row highlighted; the top row (--grid) lays the positions out
in rows of width l, as the paper does, and marks the keys that query reads.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError
from .figures import pyplot, save_png
from .patterns import INTEGRATIONS, KINDS

MAX_N = 2048  # an n x n picture beyond this is unreadable anyway

# Cell categories and their colours (the paper's blues, the query in orange).
FUTURE, NOT_ALLOWED, ALLOWED, QUERY_KEY, QUERY = range(5)
COLOURS = ["#eeeeee", "#ffffff", "#a6c8e6", "#1f5fa8", "#f08a24"]
LABELS = ["later (j > i)", "not attended", "attended", "keys of the query", "the query"]


class FigureError(UserError):
    """A drawing argument the user can correct."""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, default="strided", help="pattern kind (default: strided)")
    parser.add_argument("--stride", type=int, default=6, help="l: window / chunk length, grid width (default: 6)")
    parser.add_argument("--summary", type=int, default=None, help="c: summary columns per chunk (fixed only)")
    parser.add_argument("--integration", choices=INTEGRATIONS, default="multihead", help="how the two sets are used (default: multihead)")
    parser.add_argument("--distinct-summaries", action="store_true", help="fixed: each A2 head reads its own summary sub-block")
    parser.add_argument("--n", type=int, default=36, help="sequence length (default: 36)")
    parser.add_argument("--heads", type=int, default=2, help="heads to draw (default: 2)")
    parser.add_argument("--layer", type=int, default=0, help="layer index (interleaved: its parity picks the set)")
    parser.add_argument("--query", type=int, default=None, help="the highlighted query position (default: n - 1 - stride // 2)")
    parser.add_argument("--no-grid", dest="grid", action="store_false", help="leave out the 2-D grid view")
    parser.add_argument("-o", "--output", type=Path, default=Path("pattern.png"), help="PNG to write (default: pattern.png)")
    parser.add_argument("--dpi", type=int, default=150, help="resolution in dots per inch (default: 150)")


def run(args: argparse.Namespace) -> int:
    from .patterns import Pattern, PatternError

    try:
        pattern = Pattern(args.kind, args.stride, args.summary, args.integration, args.distinct_summaries)
    except PatternError as err:
        raise FigureError(f"--{err.field.replace('_', '-')}: {err.problem}") from None
    if not 1 <= args.n <= MAX_N:
        raise FigureError(f"--n must be between 1 and {MAX_N}, got {args.n}")
    if args.heads < 1:
        raise FigureError(f"--heads must be at least 1, got {args.heads}")
    if args.layer < 0:
        raise FigureError(f"--layer must be 0 or more, got {args.layer}")
    # By default a query half a row before the end, so that its local window wraps a row of the grid.
    query = max(0, args.n - 1 - args.stride // 2) if args.query is None else args.query
    if not 0 <= query < args.n:
        raise FigureError(f"--query must be a position in [0, {args.n - 1}], got {query}")
    draw(pattern, args.n, args.heads, args.layer, query, args.grid, args.output, args.dpi)
    print(f"wrote {args.output}")
    return 0


SET_NAMES = {"dense": ("all j <= i",), "local": ("A1 local",), "strided": ("A1 local", "A2 strided"), "fixed": ("A1 chunk", "A2 summary")}


def set_label(pattern, layer: int, head: int) -> str:
    """What the head reads, e.g. "A1 local + A2 strided"; with the summary columns for fixed A2."""
    names = dict(zip(("A1", "A2"), SET_NAMES[pattern.kind]))
    label = " + ".join(names[s] for s in pattern.sets(layer, head))
    if pattern.kind == "fixed" and "A2" in pattern.sets(layer, head):
        lo, hi = pattern.summary_columns(head)
        label += f" [{lo},{hi})"
    return label


def cell_categories(mask, query: int):
    """(n, n) int array of categories for the matrix view of one (n, n) bool mask."""
    import numpy as np

    allowed = mask.numpy()
    n = allowed.shape[0]
    cells = np.where(np.tril(np.ones((n, n), dtype=bool)), NOT_ALLOWED, FUTURE)
    cells[allowed] = ALLOWED
    cells[query, allowed[query]] = QUERY_KEY
    cells[query, query] = QUERY
    return cells


def grid_categories(mask, query: int, width: int):
    """(rows, width) categories of each position for the grid view; -1 pads past n."""
    import numpy as np

    n = mask.shape[0]
    rows = -(-n // width)
    cells = np.full(rows * width, -1)
    cells[:n] = np.where(np.arange(n) <= query, NOT_ALLOWED, FUTURE)
    cells[:n][mask[query].numpy()] = QUERY_KEY
    cells[query] = QUERY
    return cells.reshape(rows, width)


def draw(pattern, n: int, heads: int, layer: int, query: int, grid: bool, output: Path, dpi: int = 150) -> None:
    """Write the figure to `output` (PNG), through a temporary file so no half picture is left."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = pyplot()
    panels = [(f"head {h}: {set_label(pattern, layer, h)}", pattern.mask(n, layer, h)) for h in range(heads)]
    if heads > 1:
        panels.append((f"all {heads} heads", pattern.layer_mask(n, layer, heads)))
    rows = 2 if grid else 1
    width = pattern.stride
    grid_rows = -(-n // width)
    grid_height = 3.0 * min(1.0, max(0.35, grid_rows / width))
    height = 4.0 + (grid_height if grid else 0)  # inches: matrix, titles, legend strip of 0.4
    fig, axes = plt.subplots(
        rows,
        len(panels),
        figsize=(3.0 * len(panels), height),
        squeeze=False,
        gridspec_kw={"height_ratios": [grid_height, 3.0] if grid else [3.0]},
    )
    colours = ListedColormap(COLOURS)
    padded = ListedColormap(["#ffffff00"] + COLOURS)  # -1 (past n) transparent
    lines = n <= 64  # cell borders only while cells are big enough to see
    for column, (title, mask) in enumerate(panels):
        matrix_ax = axes[-1, column]
        matrix_ax.imshow(cell_categories(mask, query), cmap=colours, vmin=0, vmax=len(COLOURS) - 1, interpolation="nearest")
        _frame(matrix_ax, n, n, lines)
        # A pointer to the highlighted row, which is one pixel thin when n is large.
        matrix_ax.plot([-0.5], [query], marker=">", markersize=7, color=COLOURS[QUERY], clip_on=False)
        matrix_ax.set_xlabel("key j")
        if column == 0:
            matrix_ax.set_ylabel("query i")
        keys = int(mask[query].sum())
        axes[0, column].set_title(f"{title}\nquery {query} reads {keys} key{'s' if keys != 1 else ''}", fontsize=9)
        if grid:
            grid_ax = axes[0, column]
            cells = grid_categories(mask, query, width)
            grid_ax.imshow(cells + 1, cmap=padded, vmin=0, vmax=len(COLOURS), interpolation="nearest")
            _frame(grid_ax, cells.shape[0], width, width <= 64)
            if column == 0:
                grid_ax.set_ylabel(f"rows of l = {width}")
    fig.legend(
        handles=[Patch(facecolor=c, edgecolor="#999999", label=label) for c, label in zip(COLOURS, LABELS)],
        loc="lower center",
        ncol=len(LABELS),
        fontsize=8,
        frameon=False,
    )
    layer_note = f", layer {layer}" if pattern.integration == "interleaved" and pattern.factorized else ""
    fig.suptitle(f"{pattern.describe()}, n = {n}{layer_note}", fontsize=11)
    fig.tight_layout(rect=(0, 0.4 / height, 1, 1), h_pad=1.0)
    save_png(fig, output, dpi)


def _frame(ax, rows: int, cols: int, lines: bool) -> None:
    """Hide ticks; draw thin cell borders when the cells are large enough to see."""
    import numpy as np

    ax.set_xticks([])
    ax.set_yticks([])
    if lines:
        ax.set_xticks(np.arange(-0.5, cols, 1), minor=True)
        ax.set_yticks(np.arange(-0.5, rows, 1), minor=True)
        ax.grid(which="minor", color="#cccccc", linewidth=0.4)
        ax.tick_params(which="minor", length=0)
