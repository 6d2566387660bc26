"""Factorized attention patterns (Child et al. 2019, section 4): the one definition.

Every other part of the project derives what it needs from `Pattern`: the reference
attention takes its element masks, the Triton kernels take its plain parameters
(`Pattern.kernel_passes`), the sampler's cache takes its key sets, benchmarks take its
analytic pair counts.

Positions are 0-based and attention is causal (key j <= query i). With stride l:

    pattern   A1(i)                          A2(i)
    strided   0 <= i - j < l                 (i - j) mod l == 0
    fixed     floor(j / l) == floor(i / l)   (j mod l) in the head's summary columns

The summary columns of `fixed` are the last c positions of every chunk of l
(`summary_columns`); with `distinct_summaries` the v = l // c sub-blocks of width c are
dealt out to the heads that use A2, so that head g (counted among those heads) reads
(j mod l) in [l - (g mod v + 1) c, l - (g mod v) c).  Counting among A2 heads (not over
all heads) matters for the multi-head integration: there only odd heads use A2, and
indexing by the raw head number would never give the last sub-block to anyone, which
breaks validity (positions near a chunk's end could not reach later chunks).

Integrations (section 5.1): `merged` - every head attends to A1 ∪ A2; `interleaved` -
layer r uses A^(r mod 2) for all heads; `multihead` - head h uses A^(h mod 2).
`dense` (all j <= i) and `local` (A1 of strided alone) use one set everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch

# torch is imported inside the methods that build tensors, not here: the command line
# reads KINDS and INTEGRATIONS (and config.py validates a Pattern) without loading
# PyTorch, so that `sparse-transformer --help` answers at once. `allowed` uses only
# operators, so it serves ints and tensors alike.

KINDS = ("dense", "local", "strided", "fixed")
INTEGRATIONS = ("merged", "interleaved", "multihead")


class PatternError(ValueError):
    """An invalid Pattern argument; `field` names it, the message says what to change."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"pattern {field} {problem}")
        self.field = field
        self.problem = problem


class BlockLayout(NamedTuple):
    """Which key blocks each query block visits.

    visit[qb, kb]  - some (query, key) pair of the two blocks is allowed
    full[qb, kb]   - every pair with both indices < n is allowed (no mask needed)
    """

    block_m: int
    block_n: int
    visit: torch.Tensor  # (ceil(n / block_m), ceil(n / block_n)) bool
    full: torch.Tensor  # same shape, bool; full implies visit


@dataclass(frozen=True)
class Pattern:
    """A factorized attention pattern.

    Args:
        kind: "dense", "local", "strided" or "fixed".
        stride: l, the local window (strided) or chunk length (fixed); also the width of
            the (row, column) position embedding of 1-D data. Any positive int for dense.
        summary: c, the number of summary columns per chunk (fixed only), 1 <= c < l.
        integration: "merged", "interleaved" or "multihead" (strided and fixed only).
        distinct_summaries: give each A2 head its own width-c sub-block (fixed only).
    """

    kind: str
    stride: int
    summary: int | None = None
    integration: str = "merged"
    distinct_summaries: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise PatternError("kind", f"{self.kind!r} is unknown: choose one of {', '.join(KINDS)}")
        if self.integration not in INTEGRATIONS:
            raise PatternError("integration", f"{self.integration!r} is unknown: choose one of {', '.join(INTEGRATIONS)}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise PatternError("stride", f"must be a positive integer, got {self.stride!r}")
        if self.kind == "fixed":
            if self.summary is None:
                raise PatternError("summary", "kind 'fixed' needs summary (c, the summary width), e.g. summary=32 with stride=128")
            if isinstance(self.summary, bool) or not isinstance(self.summary, int) or not 1 <= self.summary < self.stride:
                raise PatternError(
                    "summary",
                    f"must satisfy 1 <= summary < stride, got summary={self.summary!r}, stride={self.stride}: "
                    "lower summary or raise stride",
                )
        elif self.summary is not None:
            raise PatternError("summary", f"is only used by kind 'fixed'; remove it for kind {self.kind!r}")
        if self.distinct_summaries and self.kind != "fixed":
            raise PatternError("distinct_summaries", f"applies only to kind 'fixed'; set it to false for kind {self.kind!r}")

    # ------------------------------------------------------------------ index sets
    @property
    def factorized(self) -> bool:
        """True when the pattern has two index sets A1 and A2."""
        return self.kind in ("strided", "fixed")

    def sets(self, layer: int = 0, head: int = 0) -> tuple[str, ...]:
        """The index sets that (layer, head) attends to: a subset of ("A1", "A2").

        dense and local report ("A1",): their single set.
        """
        if not self.factorized or self.integration == "merged":
            return ("A1", "A2") if self.factorized else ("A1",)
        parity = layer % 2 if self.integration == "interleaved" else head % 2
        return ("A1",) if parity == 0 else ("A2",)

    def summary_group(self, head: int | torch.Tensor) -> int | torch.Tensor:
        """The summary sub-block (0 = the last c columns) that `head` reads under fixed A2."""
        if not self.distinct_summaries:
            return 0
        a2_rank = head // 2 if self.integration == "multihead" else head
        return a2_rank % (self.stride // self.summary)

    def summary_columns(self, head: int | torch.Tensor = 0) -> tuple[int | torch.Tensor, int | torch.Tensor]:
        """[lo, hi): the values of (j mod l) that are summaries for `head` (fixed only)."""
        if self.kind != "fixed":
            raise ValueError(f"summary columns exist only for kind 'fixed', not {self.kind!r}")
        g = self.summary_group(head)
        hi = self.stride - g * self.summary
        return hi - self.summary, hi

    def layer_class(self, layer: int) -> int:
        """The layer index up to what the pattern tells apart: its parity under the
        interleaved integration, 0 otherwise. Layers of one class attend alike."""
        return layer % 2 if self.integration == "interleaved" else 0

    def allowed(self, i: torch.Tensor, j: torch.Tensor, layer: int = 0, head: int | torch.Tensor = 0) -> torch.Tensor:
        """Elementwise: may query i attend to key j? i, j broadcast (integer tensors).

        `head` may be an int or an integer tensor broadcasting with i and j: FlexAttention's
        mask_mod passes one, and the reference attention asks for all heads at once with
        head of shape (heads, 1, 1). Both sets are computed and the head's chosen by
        arithmetic, never by Python branching on a tensor, so the predicate can be traced.
        Operators only (`%` and `//` floor like torch.remainder and floor division).
        """
        causal = j <= i
        if self.kind == "dense":
            return causal
        l = self.stride
        if self.kind in ("local", "strided"):
            a1 = (i - j) < l
            if self.kind == "local":
                return causal & a1
            a2 = (i - j) % l == 0
        else:  # fixed
            a1 = j // l == i // l
            lo, hi = self.summary_columns(head)
            col = j % l
            a2 = (col >= lo) & (col < hi)
        if self.integration == "merged":
            return causal & (a1 | a2)
        if self.integration == "interleaved":
            return causal & (a1 if layer % 2 == 0 else a2)
        # multihead: odd heads use A2
        if isinstance(head, int):
            return causal & (a2 if head % 2 == 1 else a1)
        odd = head % 2 == 1  # a tensor of heads
        return causal & ((odd & a2) | (~odd & a1))

    def depends_on_head(self) -> bool:
        """True when different heads of one layer see different keys."""
        return self.factorized and (self.integration == "multihead" or self.distinct_summaries)

    def mask(self, n: int, layer: int = 0, head: int = 0) -> torch.Tensor:
        """The (n, n) torch.bool matrix of allowed (query, key) pairs."""
        import torch

        idx = torch.arange(n)
        return self.allowed(idx[:, None], idx[None, :], layer, head)

    def layer_mask(self, n: int, layer: int, heads: int) -> torch.Tensor:
        """(n, n) bool: keys any of the layer's `heads` heads may read (what flows in one hop)."""
        import torch

        out = torch.zeros(n, n, dtype=torch.bool)
        for h in range(heads):
            out |= self.mask(n, layer, h)
        return out

    # ------------------------------------------------------------------ counts
    def key_counts(self, n: int, layer: int = 0, head: int = 0) -> torch.Tensor:
        """(n,) int64: how many keys each query attends to, in closed form (O(n))."""
        import torch

        i = torch.arange(n, dtype=torch.int64)
        if self.kind == "dense":
            return i + 1
        l = self.stride
        sets = self.sets(layer, head)
        chunk, col = i // l, i % l
        if self.kind in ("local", "strided"):
            local = torch.clamp(i + 1, max=l)
            if self.kind == "local" or sets == ("A1",):
                return local
            if sets == ("A2",):
                return chunk + 1
            return local + chunk  # the overlap of A1 and A2 is j = i alone
        # fixed
        if sets == ("A1",):
            return col + 1
        c = self.summary
        if sets == ("A2",):
            lo, _ = self.summary_columns(head)
            return chunk * c + torch.clamp(col + 1 - lo, min=0, max=c)
        return col + 1 + chunk * c  # own-chunk summaries are already in A1

    def pair_count(self, n: int, layer: int = 0, head: int = 0) -> int:
        """Number of allowed (query, key) pairs at length n (for useful-FLOP counts)."""
        return int(self.key_counts(n, layer, head).sum())

    # ------------------------------------------------------------------ blocks
    def block_layout(
        self, n: int, block_m: int, block_n: int | None = None, layer: int = 0, head: int = 0, rows_per_step: int = 1024
    ) -> BlockLayout:
        """Block-level view of `mask(n, layer, head)` for tiles of block_m x block_n.

        Derived from the element predicate, a slab of query rows at a time, so memory
        stays O(rows_per_step * n) and time O(n^2): meant for analysis and tests up to
        n of a few ten thousand, not for the kernels (which use `kernel_passes`).
        """
        import torch

        block_n = block_n or block_m
        qb_count, kb_count = math.ceil(n / block_m), math.ceil(n / block_n)
        rows_per_step = max(block_m, rows_per_step // block_m * block_m)
        keys = torch.arange(n)
        key_block = keys // block_n
        allowed_count = torch.zeros(qb_count, kb_count, dtype=torch.int64)
        for start in range(0, n, rows_per_step):
            rows = torch.arange(start, min(n, start + rows_per_step))
            slab = self.allowed(rows[:, None], keys[None, :], layer, head)  # (rows, n)
            per_key_block = torch.zeros(len(rows), kb_count, dtype=torch.int64)
            per_key_block.index_add_(1, key_block, slab.to(torch.int64))
            row_block = rows // block_m
            allowed_count.index_add_(0, row_block, per_key_block)
        visit = allowed_count > 0
        rows_in = torch.clamp(n - torch.arange(qb_count) * block_m, max=block_m)
        cols_in = torch.clamp(n - torch.arange(kb_count) * block_n, max=block_n)
        full = allowed_count == rows_in[:, None] * cols_in[None, :]
        return BlockLayout(block_m, block_n, visit, full)

    # ------------------------------------------------------------------ kernels
    def kernel_passes(self, layer: int = 0) -> tuple[tuple[str, str], ...]:
        """How the Triton kernels compute one layer: a sequence of passes.

        Each pass is (set for even heads, set for odd heads) with sets named
        "dense", "band" (strided A1), "strided" (strided A2), "chunk" (fixed A1) and
        "summary" (fixed A2). Later passes continue the online softmax of the earlier
        ones and skip keys already counted (strided A2 skips j = i, fixed A2 the
        summaries of the query's own chunk), so a merged layer is A1 ∪ A2 exactly.
        """
        if self.kind == "dense":
            return (("dense", "dense"),)
        if self.kind == "local":
            return (("band", "band"),)
        names = {"strided": ("band", "strided"), "fixed": ("chunk", "summary")}[self.kind]
        if self.integration == "merged":
            return ((names[0], names[0]), (names[1], names[1]))
        if self.integration == "interleaved":
            name = names[layer % 2]
            return ((name, name),)
        return ((names[0], names[1]),)

    def describe(self) -> str:
        parts = [self.kind, f"l={self.stride}"]
        if self.summary is not None:
            parts.append(f"c={self.summary}")
        if self.factorized:
            parts.append(self.integration)
        if self.distinct_summaries:
            parts.append("distinct summaries")
        return ", ".join(parts)
