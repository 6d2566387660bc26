"""`sparse-transformer pattern [--kind ...] [-o pattern.png]`: draw an attention pattern
like Figure 3 of the paper (pattern_figure.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..patterns import INTEGRATIONS, KINDS


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
    from ..pattern_figure import MAX_N, FigureError, draw
    from ..patterns import Pattern, PatternError

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
