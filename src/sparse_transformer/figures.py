"""Figures as PNG files: the training curve, and the saving every figure shares.

`write_curve_figure` draws train.curve_file (step, train_bpd, valid_bpd) as curve.png
beside it. DVC shows that PNG as an image plot, which needs no JavaScript and so no
network, unlike its interactive plots of the CSV (see workflow/plots/).

matplotlib is imported inside the functions: the command line's help stays light.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot drawing off-screen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig: Any, output: Path, dpi: int = 100) -> None:
    """Write `fig` to `output` through a temporary file, so no half picture is left; close it."""
    plt = pyplot()
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    try:
        fig.savefig(partial, format="png", dpi=dpi)
        os.replace(partial, output)
    finally:
        plt.close(fig)
        partial.unlink(missing_ok=True)


def curve_figure_path(curve_file: str | Path) -> Path:
    """Where the figure of a curve file goes: curve.csv -> curve.png beside it."""
    return Path(curve_file).with_suffix(".png")


def read_curve(curve_file: Path) -> dict[str, list[tuple[int, float]]]:
    """{"train_bpd": [(step, value), ...], "valid_bpd": [...]} from the curve CSV (empty cells left out)."""
    series: dict[str, list[tuple[int, float]]] = {"train_bpd": [], "valid_bpd": []}
    with curve_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            for name, points in series.items():
                if row.get(name):
                    points.append((int(row["step"]), float(row[name])))
    return series


def write_curve_figure(curve_file: str | Path, title: str) -> Path:
    """Bits per dim against the optimizer step, training and validation, as a PNG beside
    the curve file; returns its path."""
    curve_file = Path(curve_file)
    series = read_curve(curve_file)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"train_bpd": dict(label="training", color="#1f5fa8", linewidth=1.2),
              "valid_bpd": dict(label="validation", color="#f08a24", linewidth=1.5, marker="o", markersize=4)}
    for name, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, **styles[name])
    if any(series.values()):
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no points yet", transform=ax.transAxes, ha="center", va="center", color="#777777")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("bits per dim")
    ax.set_title(title)
    ax.grid(color="#dddddd", linewidth=0.6)
    fig.tight_layout()
    output = curve_figure_path(curve_file)
    save_png(fig, output)
    return output
