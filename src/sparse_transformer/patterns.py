"""Factorized attention patterns (Child et al. 2019, section 4): the one definition.

Every other part of the project derives what it needs from `Pattern`: the reference
attention takes its element masks, the Triton kernels take its plain parameters
(`Pattern.kernel_passes`, through `Pattern.layout`), the sampler's cache takes its key
sets, benchmarks take its analytic pair counts.

Positions are 0-based and attention is causal (key j <= query i) unless the pattern is
made with causal=False, the bidirectional version for encoders, which drops that
condition and keeps the sets. With stride l:

    pattern   A1(i)                          A2(i)
    strided   |i - j| < l                    (i - j) mod l == 0
    fixed     floor(j / l) == floor(i / l)   (j mod l) in the head's summary columns
    local     |i - j| < l (A1 alone)
    dense     every j

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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, get_args

if TYPE_CHECKING:
    import torch

    from .layouts import SparseLayout

# torch is imported inside the methods that build tensors, not here: the command line
# reads KINDS and INTEGRATIONS (and config.py validates a Pattern) without loading
# PyTorch, so that `sparse-transformer --help` answers at once. `allowed` uses only
# operators, so it serves ints and tensors alike.

PatternKind = Literal["dense", "local", "strided", "fixed"]
Integration = Literal["merged", "interleaved", "multihead"]
KINDS = get_args(PatternKind)
INTEGRATIONS = get_args(Integration)


class PatternError(ValueError):
    """An invalid Pattern argument; `field` names it, the message says what to change."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"pattern {field} {problem}")
        self.field = field
        self.problem = problem


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
        causal: keys j <= i only (the autoregressive model's); False keeps the sets
            without that condition (bidirectional, for encoders).
    """

    kind: PatternKind
    stride: int
    summary: int | None = None
    integration: Integration = "merged"
    distinct_summaries: bool = False
    causal: bool = True

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
        if not isinstance(self.causal, bool):
            raise PatternError("causal", f"must be true or false, got {self.causal!r}")

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
        # Non-causal: every pair of positions (which are >= 0), in the shape of i and j.
        causal = (j <= i) if self.causal else (i >= 0) & (j >= 0)
        if self.kind == "dense":
            return causal
        l = self.stride
        if self.kind in ("local", "strided"):
            a1 = abs(i - j) < l
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

    def mask_mod(self, layer: int = 0) -> Callable:
        """`allowed` at `layer` in FlexAttention's convention, mask_mod(b, h, q_idx, kv_idx)."""

        def mask_mod(b, h, q_idx, kv_idx):
            return self.allowed(q_idx, kv_idx, layer, h)

        return mask_mod

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
            return i + 1 if self.causal else torch.full_like(i, n)
        l = self.stride
        sets = self.sets(layer, head)
        chunk, col = i // l, i % l
        if self.kind in ("local", "strided"):
            if self.causal:
                band, every_l = torch.clamp(i + 1, max=l), chunk + 1
            else:
                band = torch.clamp(i + l - 1, max=n - 1) - torch.clamp(i - l + 1, min=0) + 1
                every_l = (n - 1 - col) // l + 1  # the j < n with j = i mod l
            if self.kind == "local" or sets == ("A1",):
                return band
            if sets == ("A2",):
                return every_l
            return band + every_l - 1  # the overlap of A1 and A2 is j = i alone
        # fixed
        own = col + 1 if self.causal else torch.clamp(n - chunk * l, max=l)  # A1: the own chunk (up to i)
        if sets == ("A1",):
            return own
        c = self.summary
        lo, _ = self.summary_columns(head)
        if self.causal:
            if sets == ("A2",):
                return chunk * c + torch.clamp(col + 1 - lo, min=0, max=c)
            return own + chunk * c  # own-chunk summaries are already in A1
        # Non-causal A2: c summaries in each whole chunk, and those of the ragged last one.
        summaries = torch.full_like(i, n // l * c + min(max(n % l - lo, 0), c))
        if sets == ("A2",):
            return summaries
        return own + summaries - torch.clamp(own - lo, min=0, max=c)  # own-chunk summaries counted once

    def pair_count(self, n: int, layer: int = 0, head: int = 0) -> int:
        """Number of allowed (query, key) pairs at length n (for useful-FLOP counts)."""
        return int(self.key_counts(n, layer, head).sum())

    # ------------------------------------------------------------------ layouts
    def layout(self, n: int, heads: int = 1, layer: int = 0, device=None, block: int = 128) -> SparseLayout:
        """What the kernels run for (n, heads, layer) on `device`: a `SparseLayout` with
        the closed-form passes (`spec`) for a causal pattern, and block lists of `block`
        positions built on first use (the only form of a non-causal pattern). Cached per
        (pattern, n, heads it tells apart, layer class, device, block)."""
        from .layouts import pattern_layout

        return pattern_layout(self, n, heads if self.depends_on_head() else None, self.layer_class(layer), device, block)

    # ------------------------------------------------------------------ kernels
    def kernel_passes(self, layer: int = 0) -> tuple[tuple[str, str], ...]:
        """How the Triton kernels compute one layer: a sequence of passes.

        Each pass is (set for even heads, set for odd heads) with sets named
        "dense", "band" (strided A1), "strided" (strided A2), "chunk" (fixed A1) and
        "summary" (fixed A2). Later passes continue the online softmax of the earlier
        ones and skip keys already counted (strided A2 skips j = i, fixed A2 the
        summaries of the query's own chunk), so a merged layer is A1 ∪ A2 exactly.
        Causal patterns only: a non-causal one runs as block lists (`layout(n).lists`).
        """
        if not self.causal:
            raise ValueError(f"the kernels' closed-form passes are causal; {self.describe()} runs as block lists: use its layout(n)")
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
        if not self.causal:
            parts.append("non-causal")
        return ", ".join(parts)
