"""The Sparse Transformer (SPEC section 2), all in one file.

    H_0 = embed(X);  H_k = H_{k-1} + resblock(H_{k-1});  y = norm(H_N) W_out
    a(H) = dropout(attention(norm(H)))
    b(H) = dropout(ff(norm(H + a(H))))
    resblock(H) = a(H) + b(H)

Bytes in, logits over the next byte out: `SparseTransformer(config)(tokens)` maps
(batch, n) byte values to (batch, n, 256) logits, logits[:, i] predicting the byte after
position i. The attention backend (reference, flex, sdpa, triton) comes from
`config.attention`. This module knows nothing of training loops, files or tracking.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .attention import attend
from .config import ModelConfig
from .patterns import Pattern


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The paper's GeLU approximation x * sigmoid(1.702 x)."""
    return x * torch.sigmoid(1.702 * x)


def bits_per_dim(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in bits: logits (..., 256), targets (...) byte values -> scalar fp32."""
    nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).long())
    return nats / math.log(2)


def _init_linear(layer: nn.Linear, gain: float = 1.0) -> None:
    """SPEC init: weight std sqrt(0.125 / fan_in) times `gain`, bias 0."""
    nn.init.normal_(layer.weight, std=gain * math.sqrt(0.125 / layer.in_features))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class PositionEmbedding(nn.Module):
    """A sum of learned embeddings, one per coordinate of a position (SPEC section 2).

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

    def forward(self, n: int) -> torch.Tensor:
        """(n, d_model): the embedding of positions 0 .. n-1."""
        return sum(table(self.coords[axis, :n]) for axis, table in enumerate(self.tables))


class SparseAttention(nn.Module):
    """attention(X) = W_p attend(X W_q, X W_k, X W_v) with the layer's pattern, per head."""

    def __init__(self, config: ModelConfig, pattern: Pattern, layer: int):
        super().__init__()
        d, heads = config.d_model, config.heads
        qk_width = d // 2 if config.half_qk else d
        self.heads, self.layer, self.pattern, self.backend = heads, layer, pattern, config.attention
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape  # (B, n, d)
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        out = attend(q, k, v, self.pattern, self.layer, self.backend)  # (B, heads, n, d / heads)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


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

    def __init__(self, config: ModelConfig, pattern: Pattern, layer: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.d_model)
        self.attn = SparseAttention(config, pattern, layer)
        self.ff_norm = nn.LayerNorm(config.d_model)
        self.ff = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = self.dropout(self.attn(self.attn_norm(h)))
        b = self.dropout(self.ff(self.ff_norm(h + a)))
        return a + b


class SparseTransformer(nn.Module):
    """Bytes (B, n) -> next-byte logits (B, n, vocab_size), n <= config.context."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        pattern = config.pattern.build()
        d = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, d)
        nn.init.normal_(self.token_embedding.weight, std=math.sqrt(0.125 / d))
        self.position_embedding = PositionEmbedding(config.context, d, config.image_shape, pattern.stride)
        self.blocks = nn.ModuleList(ResidualBlock(config, pattern, layer) for layer in range(config.layers))
        self.final_norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, config.vocab_size, bias=False)  # W_out
        nn.init.zeros_(self.out.weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n = tokens.shape[1]
        if n > self.config.context:
            raise ValueError(f"sequence length {n} exceeds the model's context {self.config.context}")
        h = self.token_embedding(tokens.long()) + self.position_embedding(n)  # (B, n, d)
        recompute = self.config.recompute and torch.is_grad_enabled()
        for block in self.blocks:
            # With recomputation only h (the residual stream) is stored between blocks.
            h = h + (checkpoint(block, h, use_reentrant=False) if recompute else block(h))
        return self.out(self.final_norm(h))  # (B, n, vocab)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean bits per dim of predicting targets[:, i] from inputs[:, :i+1]; both (B, n).

        For next-byte prediction on a window w of n+1 bytes: loss(w[:, :-1], w[:, 1:]).
        """
        return bits_per_dim(self(inputs), targets)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
