"""Draw an attention pattern like Figure 3 of the paper (`sparse-transformer pattern`,
commands/pattern.py).

One column per head (and one for the union of the layer's heads when there are
several). The bottom row is the (n x n) connectivity matrix, query i down, key j
across, with one query's row highlighted; the top row (--grid) lays the positions out
in rows of width l, as the paper does, and marks the keys that query reads.
"""

from __future__ import annotations

from pathlib import Path

from .errors import UserError
from .figures import pyplot, save_png

MAX_N = 2048  # an n x n picture beyond this is unreadable anyway

# Cell categories and their colours (the paper's blues, the query in orange).
FUTURE, NOT_ALLOWED, ALLOWED, QUERY_KEY, QUERY = range(5)
COLOURS = ["#eeeeee", "#ffffff", "#a6c8e6", "#1f5fa8", "#f08a24"]
LABELS = ["later (j > i)", "not attended", "attended", "keys of the query", "the query"]


class FigureError(UserError):
    """A drawing argument the user can correct."""


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
