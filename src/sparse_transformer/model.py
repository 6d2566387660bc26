"""The Sparse Transformer (Child et al. 2019, sections 5.1-5.4), all in one file.

    H_0 = embed(X);  H_k = H_{k-1} + resblock(H_{k-1});  y = norm(H_N) W_out
    a(H) = dropout(attention(norm(H)))
    b(H) = dropout(ff(norm(H + a(H))))
    resblock(H) = a(H) + b(H)

Bytes in, logits over the next byte out: `SparseTransformer(config)(tokens)` maps
(batch, n) byte values to (batch, n, 256) logits, logits[:, i] predicting the byte after
position i. The attention backend (reference, flex, sdpa, triton) comes from
`config.attention`, resolved to its function once, when the model is built. With a named
mask (`config.mask`, masks.py) every layer attends through the layout of the pairs both
its pattern and the mask allow (`MaskSpec.layout`: block lists, built once per length and
device), through the same backends. This module knows nothing of training loops, files or tracking.

Examples and targets (`inputs_and_targets`): an image is scored on every byte, so its
input is a learned start symbol (token 256, an extra row of the token embedding)
followed by its first n-1 bytes, and its targets are all n bytes. A text or audio window
of n+1 bytes has no beginning to mark: input w[:-1], target w[1:].

Decoding (`decode_step` with a `DecodingCache`): one position at a time, keeping of each
layer's keys and values only what a later query can still read (`CacheLayout`: the last
l positions, plus the summary columns of closed chunks under fixed attention; everything
under dense and strided attention); the new query reads only the cached keys its pattern
allows (`decoding_keys`: about l + n/l of them, not n; on the GPU the fused decode kernel
reads them in place, `attention.attend_decoding`), and gives the same logits as
`forward`. A named mask keeps the pattern's cache (the whole of it under dense attention)
and narrows the keys read to those the mask allows. A step never reads its position back to the host, so it can be replayed as a
CUDA graph. A prompt is read in one forward pass (`prefill`), which fills the cache.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention_function, decoding_function
from .config import ModelConfig
from .masks import MaskSpec
from .patterns import Pattern


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The paper's GeLU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def bits_per_dim(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits: logits (..., 256), targets (...) byte values -> scalar fp32."""
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long())
    return nats / math.log(2)


def _init_linear(layer: nn.Linear, gain: float = 1.0) -> None:
    """The paper's initialization (section 6) read as a variance: weight std sqrt(0.125 / fan_in)
    times `gain`, bias 0 (why a variance: docs/architecture.md, "Model")."""
    nn.init.normal_(layer.weight, std=gain * math.sqrt(0.125 / layer.in_features))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class PositionEmbedding(nn.Module):
    """A sum of learned embeddings, one per coordinate of a position (the paper's section 5.3).

    images (H, W, C), raster order with channels interleaved: (row, column, channel)
    of i = (row * W + column) * C + channel; 1-D data with stride l: (i div l, i mod l).
    """

    def __init__(self, context: int, d_model: int, image_shape: tuple[int, int, int] | None, stride: int):
        super().__init__()
        i = torch.arange(context)
        if image_shape is not None:
            _, width, channels = image_shape
            sizes = image_shape
            coords = [i // (width * channels), i // channels % width, i % channels]
        else:
            sizes = (math.ceil(context / stride), stride)
            coords = [i // stride, i % stride]
        self.tables = nn.ModuleList(nn.Embedding(size, d_model) for size in sizes)
        self.register_buffer("coords", torch.stack(coords), persistent=False)  # (n_emb, context)
        std = math.sqrt(0.125 / (d_model * len(sizes)))
        for table in self.tables:
            nn.init.normal_(table.weight, std=std)

    def forward(self, positions: slice | torch.Tensor) -> torch.Tensor:
        """(n, d_model) for a slice of positions (slice(0, n): positions 0 .. n-1) or for a (n,)
        tensor of positions (read on the device: a 0-dim index would be read on the host)."""
        return sum(table(self.coords[axis, positions]) for axis, table in enumerate(self.tables))


class SparseAttention(nn.Module):
    """attention(X) = W_p attend(X W_q, X W_k, X W_v) with the layer's pattern, per head;
    with a named mask, with the layout of the pairs both allow (`MaskSpec.layout`)."""

    def __init__(self, config: ModelConfig, pattern: Pattern, layer: int, mask: MaskSpec | None = None):
        super().__init__()
        d, heads, qk_width = config.d_model, config.heads, config.qk_width
        self.heads, self.layer, self.pattern, self.mask = heads, layer, pattern, mask
        self.attention = attention_function(config.attention)  # (q, k, v, pattern or layout, layer) -> out
        self.decoding = decoding_function(config.attention)  # one query per head against a cache
        # What attention needs of the layer index: blocks of one class then trace alike,
        # so torch.compile builds one graph for all of them, not one per layer.
        self.layer_class = pattern.layer_class(layer)
        self.query = nn.Linear(d, qk_width)
        self.key = nn.Linear(d, qk_width)
        self.value = nn.Linear(d, d)
        self.proj = nn.Linear(d, d)  # W_p
        for projection in (self.query, self.key, self.value):
            _init_linear(projection)
        _init_linear(self.proj, gain=1 / math.sqrt(2 * config.layers))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, n, heads * dh) -> (B, heads, n, dh)."""
        b, n, width = x.shape
        return x.view(b, n, self.heads, width // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: DecodingCache | None = None) -> torch.Tensor:
        """x (B, n, d) -> (B, n, d); the cache as in `attend`."""
        return self.merge(self.attend(*self.project(x), cache))

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, n, d) -> q, k (B, H, n, dqk) and v (B, H, n, dh), views of one matrix product
        with the three projections side by side: one launch (and under autocast one cast of
        x, W and b) where three would do, in the forward, its recomputation and the backward."""
        projections = (self.query, self.key, self.value)
        weight = torch.cat([p.weight for p in projections])  # (2 dqk + d, d)
        bias = torch.cat([p.bias for p in projections])
        q, k, v = F.linear(x, weight, bias).split([p.out_features for p in projections], dim=-1)
        return self._split(q), self._split(k), self._split(v)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               cache: DecodingCache | None = None) -> torch.Tensor:
        """The heads' outputs (B, H, n, dh). With a cache: n = 1 is position cache.position
        (a decoding step), or positions 0 .. n-1 of a prompt, whose keys and values fill the
        empty cache (prefill)."""
        if cache is not None and q.shape[2] == 1:
            return self._decode(q, k, v, cache)
        if self.mask is None:
            out = self.attention(q, k, v, self.pattern, self.layer_class)
        else:  # the layout is built once per (length, device) and kept
            layout = self.mask.layout(self.pattern, q.shape[2], self.heads, self.layer_class, q.device)
            out = self.attention(q, k, v, layout, self.layer_class)
        if cache is not None:
            cache.fill(self.layer, k, v)
        return out

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        """The heads' outputs (B, H, n, dh) side by side, times W_p -> (B, n, d)."""
        b, _, n, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))

    def _decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: DecodingCache) -> torch.Tensor:
        """q, k, v (B, H, 1, dh) of position i = cache.position -> (B, H, 1, dv), reading only allowed keys."""
        cache.store(self.layer, k, v)
        slots, valid = cache.reads(self.layer)  # (H, K) cache slots, (H, K) False where not read
        out = self.decoding(q[:, :, 0], cache.keys[self.layer], cache.values[self.layer], slots, valid)
        return out[:, :, None]  # (B, H, 1, dv)


class FeedForward(nn.Module):
    """ff(x) = W2 gelu(W1 x + b1) + b2, width ff_mult * d."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        width = config.ff_mult * config.d_model
        self.w1 = nn.Linear(config.d_model, width)
        self.w2 = nn.Linear(width, config.d_model)
        _init_linear(self.w1)
        _init_linear(self.w2, gain=1 / math.sqrt(2 * config.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(gelu(self.w1(x)))


class ResidualBlock(nn.Module):
    """resblock(H) = a(H) + b(H); returns the update, the caller adds it to H."""

    def __init__(self, config: ModelConfig, pattern: Pattern, layer: int, mask: MaskSpec | None = None):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = SparseAttention(config, pattern, layer, mask)
        self.ff_norm = nn.LayerNorm(config.d_model)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor, cache: DecodingCache | None = None) -> torch.Tensor:
        return self.update(h, self.attn.attend(*self.project(h), cache))

    def project(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The attention's q, k, v of norm(H)."""
        return self.attn.project(self.attn_norm(h))

    def update(self, h: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        """resblock(H) from the attention heads' outputs (B, H, n, dh)."""
        a = self.dropout(self.attn.merge(heads))
        b = self.dropout(self.ff(self.ff_norm(h + a)))
        return a + b


class SparseTransformer(nn.Module):
    """Bytes (B, n) -> next-byte logits (B, n, vocab_size), n <= config.context."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        pattern = config.pattern
        d = config.d_model
        # One row more than there are bytes: row vocab_size is the start symbol of images.
        self.token_embedding = nn.Embedding(config.vocab_size + 1, d)
        nn.init.normal_(self.token_embedding.weight, std=math.sqrt(0.125 / d))
        self.position_embedding = PositionEmbedding(config.context, d, config.image_shape, pattern.stride)
        mask = config.mask_spec()
        self.blocks = nn.ModuleList(ResidualBlock(config, pattern, layer, mask) for layer in range(config.layers))
        self.final_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.vocab_size, bias=False)  # W_out
        nn.init.zeros_(self.out.weight)

    @property
    def start_token(self) -> int:
        """The input symbol before an image's first byte."""
        return self.config.vocab_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, n): byte values, or start_token -> logits (B, n, vocab)."""
        n = tokens.shape[1]
        if n > self.config.context:
            raise ValueError(f"sequence length {n} exceeds the model's context {self.config.context}")
        h = self.token_embedding(tokens.long()) + self.position_embedding(slice(0, n))  # (B, n, d)
        for block in self.blocks:
            h = h + self.run_block(block, h)
        return self.out(self.final_norm(h))  # (B, n, vocab)

    # How forward runs each residual block, and (below) what a decoding step does around
    # each block's attention: seams where the training and sampling sides put
    # recomputation and compiled functions (acceleration.py).
    @staticmethod
    def run_block(block: ResidualBlock, h: torch.Tensor) -> torch.Tensor:
        return block(h)

    def decode_step(self, tokens: torch.Tensor, cache: DecodingCache) -> torch.Tensor:
        """tokens (B,): the inputs at position cache.position -> logits (B, vocab) of the next byte.

        Equal to forward(prefix)[:, -1] for the prefix of all tokens given so far; advances the cache.
        """
        cache.check_room()
        h = self.token_embedding(tokens.long()[:, None]) + self.position_embedding(cache.position.view(1))  # (B, 1, d)
        for block in self.blocks:
            heads = block.attn.attend(*self.decoding_project(block, h), cache)  # (B, H, 1, dh)
            h = self.decoding_residual(block, h, heads)
        cache.advance()
        return self.out(self.final_norm(h))[:, 0]  # (B, vocab)

    # The cache writes and reads between these two stay outside them (and eager).
    @staticmethod
    def decoding_project(block: ResidualBlock, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return block.project(h)

    @staticmethod
    def decoding_residual(block: ResidualBlock, h: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
        return h + block.update(h, heads)

    def prefill(self, tokens: torch.Tensor, cache: DecodingCache) -> torch.Tensor:
        """tokens (B, n): a prompt, read in one forward pass through the attention backend
        into an empty cache -> logits (B, n, vocab). Decoding continues at position n."""
        if cache.step:
            raise ValueError(f"prefill reads a prompt into an empty cache; this one holds {cache.step} positions")
        n = tokens.shape[1]
        if n > cache.context:
            raise ValueError(f"a prompt of {n} positions exceeds the model's context {cache.context}")
        h = self.token_embedding(tokens.long()) + self.position_embedding(slice(0, n))  # (B, n, d)
        for block in self.blocks:
            h = h + block(h, cache)
        cache.advance(n)
        return self.out(self.final_norm(h))  # (B, n, vocab)

    def inputs_and_targets(self, example: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of examples -> (inputs, targets), both (B, n) int64.

        Images (B, n): (start symbol + the first n-1 bytes, all n bytes), so every byte is
        scored. Stream windows (B, n+1): (w[:, :-1], w[:, 1:]).
        """
        example = example.long()
        if self.config.image_shape is None:
            return example[:, :-1], example[:, 1:]
        start = example.new_full((example.shape[0], 1), self.start_token)
        return torch.cat([start, example[:, :-1]], dim=1), example

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean bits per dim of predicting targets[:, i] from inputs[:, :i+1]; both (B, n).

        For a batch of examples: loss(*inputs_and_targets(examples)).
        """
        return bits_per_dim(self(inputs), targets)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------- decoding
def decoding_keys(pattern: Pattern, heads: int, context: int, position: torch.Tensor,
                  layer: int, mask: MaskSpec | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys query `position` (a 0-dim integer tensor) reads in `layer`: (index, valid), both (H, K).

    Head h reads keys index[h, valid[h]], which are exactly the row `Pattern.allowed` gives
    (and `mask` allows, if given: the candidates stay the pattern's, a superset), each once. K depends only on (pattern, context), never on the position, and nothing
    here leaves the device, so a decoding step can be captured as a CUDA graph. The
    candidates are built from the pattern's structure, in two disjoint groups:
    the last l positions (the band; it holds the query's own chunk), and the strided or
    summary columns before the band: K = l + n/l (strided) or l + c n/l (fixed), not n.
    """
    device = position.device
    if pattern.kind == "dense":
        keys = torch.arange(context, device=device).expand(heads, context)  # (H, n)
    else:
        l, chunks = pattern.stride, math.ceil(context / pattern.stride)
        band = position - torch.arange(l, device=device)  # (l,): position, position - 1, ...
        if pattern.kind == "local":
            columns = band[:0]
        elif pattern.kind == "strided":
            columns = position - l * torch.arange(1, chunks, device=device)  # (chunks - 1,), all before the band
        else:  # fixed: head h's summary columns [lo_h, hi_h) of every chunk but the last, those before the band
            lo, _ = pattern.summary_columns(torch.arange(heads, device=device)[:, None])  # (H, 1)
            starts = torch.arange(chunks - 1, device=device)[:, None] * l + torch.arange(pattern.summary, device=device)
            columns = starts.flatten() + lo  # (H, (chunks - 1) * c)
            columns = torch.where(columns <= position - l, columns, -1)
        keys = torch.cat([band.expand(heads, l), columns.expand(heads, -1)], dim=1)  # (H, K)
    head = torch.arange(heads, device=device)[:, None]  # (H, 1)
    valid = (keys >= 0) & pattern.allowed(position, keys, layer, head)
    if mask is not None:
        valid &= mask.mask_mod()(0, head, position, keys)
    return keys.clamp(min=0), valid


class CacheLayout(NamedTuple):
    """Which positions a layer's decoding cache keeps, and in which slot: the cache pruned
    by the pattern, so it holds only what some later query can still read.

    whole      every position, slot = position: dense and strided A2 read every past
               position again.
    band       the last l positions, slot = position mod l (a ring): local, and the layers
               whose heads all use A1 (interleaved even layers).
    summaries  the band, then the c summary columns of each closed chunk: fixed with A2,
               head h's column lo_h + s of chunk X in slot l + X c + s (its columns of the
               last chunk are read only while they are in the band).
    """

    kind: str
    stride: int
    summary: int
    size: int  # slots

    @classmethod
    def for_layer(cls, pattern: Pattern, heads: int, context: int, layer: int) -> CacheLayout:
        l, chunks = pattern.stride, math.ceil(context / pattern.stride)
        reads_a2 = any("A2" in pattern.sets(layer, head) for head in range(heads))
        if pattern.kind == "fixed" and reads_a2:
            layout = cls("summaries", l, pattern.summary, l + pattern.summary * (chunks - 1))
        elif pattern.kind == "local" or (pattern.factorized and not reads_a2):
            layout = cls("band", l, 0, l)
        else:
            layout = cls("whole", l, 0, context)
        return layout if layout.size < context else cls("whole", l, 0, context)

    def read_slots(self, keys: torch.Tensor, position: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        """Key positions (H, K) of `decoding_keys` at `position` -> their slots (H, K); lo (H, 1):
        each head's first summary column. Positions not read (masked) get some slot in range."""
        if self.kind == "whole":
            return keys
        ring = keys % self.stride
        if self.kind == "band":
            return ring
        column = keys % self.stride - lo
        summary = self.stride + keys // self.stride * self.summary + column
        return torch.where(keys > position - self.stride, ring, summary.clamp(0, self.size - 1))

    def write_slots(self, position: torch.Tensor, lo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The slot of `position` in the band or whole cache (1,), and per head (H,) its summary
        slot (summaries only: its band slot where it is no summary column of that head)."""
        if self.kind == "whole":
            return position.view(1), None
        ring = (position % self.stride).view(1)
        if self.kind == "band":
            return ring, None
        chunk, column = position // self.stride, position % self.stride - lo.view(-1)  # (), (H,)
        kept = (column >= 0) & (column < self.summary) & (chunk < (self.size - self.stride) // self.summary)
        return ring, torch.where(kept, self.stride + chunk * self.summary + column, ring)


class DecodingCache:
    """The keys and values of the positions decoded so far, for `decode_step`, each layer
    pruned by its `CacheLayout`: keys[layer] (B, H, slots, dqk), values[layer]
    (B, H, slots, dv). The next position to decode is kept twice: `position`, a 0-dim
    tensor on the device that the step reads (a CUDA graph replays it), and `step`, the
    same count on the host, for checks and for reusing one step's key sets across layers.
    """

    def __init__(self, model: SparseTransformer, batch: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        config = model.config
        qk_width = config.qk_width
        self.pattern, self.heads, self.context = config.pattern, config.heads, config.context
        self.mask = config.mask_spec()  # a named mask keeps the pattern's cache and narrows its reads
        self.layouts = [CacheLayout.for_layer(self.pattern, config.heads, config.context, layer)
                        for layer in range(config.layers)]
        self.keys = [torch.zeros(batch, config.heads, layout.size, qk_width // config.heads, device=device, dtype=dtype)
                     for layout in self.layouts]
        self.values = [torch.zeros(batch, config.heads, layout.size, config.head_dim, device=device, dtype=dtype)
                       for layout in self.layouts]
        heads = torch.arange(config.heads, device=device)[:, None]  # (H, 1)
        # (H, 1): each head's first summary column (fixed; the same for all heads unless distinct)
        self.lo = torch.zeros_like(heads) + (self.pattern.summary_columns(heads)[0] if self.pattern.kind == "fixed" else 0)
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.step = 0
        self._reads: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer class -> reads at _reads_at
        self._reads_at = -1

    def check_room(self) -> None:
        if self.step >= self.context:
            raise ValueError(f"the cache is full: the model's context is {self.context}")

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k (B, H, 1, dqk) and v (B, H, 1, dv) of the current position."""
        slot, summary = self.layouts[layer].write_slots(self.position, self.lo)
        for cached, new in ((self.keys[layer], k), (self.values[layer], v)):
            new = new.to(cached.dtype)
            cached.index_copy_(2, slot, new)
            if summary is not None:
                cached.scatter_(2, summary.view(1, -1, 1, 1).expand(new.shape), new)

    def fill(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Write k (B, H, n, dqk) and v (B, H, n, dv) of positions 0 .. n-1 (a prompt)."""
        layout, n = self.layouts[layer], k.shape[2]
        for cached, new in ((self.keys[layer], k), (self.values[layer], v)):
            new = new.to(cached.dtype)
            if layout.kind == "whole":
                cached[:, :, :n] = new
                continue
            band = torch.arange(max(0, n - layout.stride), n, device=new.device)  # the last l positions
            cached[:, :, band % layout.stride] = new[:, :, band]
            if layout.kind == "summaries":
                closed = (layout.size - layout.stride) // layout.summary  # chunks whose summaries are kept
                chunk = torch.arange(closed, device=new.device)[:, None]
                column = torch.arange(layout.summary, device=new.device)[None, :]
                slots = (layout.stride + chunk * layout.summary + column).flatten()
                for head in range(self.heads):
                    positions = (chunk * layout.stride + self.lo[head] + column).flatten()
                    kept = positions < n
                    cached[:, head, slots[kept]] = new[:, head, positions[kept]]

    def advance(self, positions: int = 1) -> None:
        self.position += positions
        self.step += positions

    def rewind(self) -> None:
        """Back to position 0 (what was stored is overwritten as decoding goes on)."""
        self.position.zero_()
        self.step, self._reads, self._reads_at = 0, {}, -1

    def reads(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots, valid), both (H, K): head h reads the cached keys slots[h, valid[h]] at the current position."""
        if self._reads_at != self.step:
            self._reads, self._reads_at = {}, self.step
        # Layers of one class (Pattern.layer_class) read the same keys: one key set per class and step.
        layer_class = self.pattern.layer_class(layer)
        if layer_class not in self._reads:
            keys, valid = decoding_keys(self.pattern, self.heads, self.context, self.position, layer_class, self.mask)
            slots = self.layouts[layer].read_slots(keys, self.position, self.lo)
            self._reads[layer_class] = (slots, valid)
        return self._reads[layer_class]

    def nbytes(self) -> int:
        """Memory the cache holds, keys and values of every layer."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))
