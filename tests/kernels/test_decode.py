"""The decoding kernel against the float64 reference of the same gather and softmax, on the CPU.

Without a GPU the kernel runs under Triton's interpreter (tests/conftest.py). Its q.k is
a sum of products, not `tl.dot`, so bf16 is right under the interpreter too (NOTES.md:
only the interpreter's bf16 dot is broken). The interpreter runs one program at a time,
so the shapes stay tiny; the GPU tests (test_kernels_gpu.py) take large ones.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse_kernels import decode
from sparse_kernels.decode import MAX_SPLITS, SPLIT_MIN_KEYS, decode_attention, decode_splits
from sparse_transformer.attention import reference_decoding

from .oracle import rel_err

pytestmark = pytest.mark.interpreter


def decode_inputs(batch, heads, slots, keys, d_qk, d_v, dtype=torch.float32, q_dtype=None, seed=0, device="cpu"):
    """q, caches and a random key list per head: head 0 reads nothing, head 1 every key listed."""
    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randn(batch, heads, d_qk, generator=gen, device=device).to(q_dtype or dtype)
    key_cache = torch.randn(batch, heads, slots, d_qk, generator=gen, device=device).to(dtype)
    value_cache = torch.randn(batch, heads, slots, d_v, generator=gen, device=device).to(dtype)
    index = torch.randint(0, slots, (heads, keys), generator=gen, device=device)
    valid = torch.rand(heads, keys, generator=gen, device=device) < 0.6
    valid[0] = False
    if heads > 1:
        valid[1] = True
    return q, key_cache, value_cache, index, valid


def check_decode(batch, heads, slots, keys, d_qk, d_v, dtype=torch.float32, q_dtype=None, tol=1e-6,
                 keys_per_split=None, device="cpu"):
    q, key_cache, value_cache, index, valid = decode_inputs(batch, heads, slots, keys, d_qk, d_v, dtype, q_dtype,
                                                            device=device)
    out = decode_attention(q, key_cache, value_cache, index, valid, 1 / math.sqrt(d_qk), keys_per_split)
    expected = reference_decoding(q.double(), key_cache.double(), value_cache.double(), index, valid)
    assert out.shape == (batch, heads, d_v) and out.dtype == q.dtype
    assert (out[:, 0] == 0).all(), "a head that reads no key outputs 0"
    assert rel_err(out, expected) < tol, f"{rel_err(out, expected):.2e}"


@pytest.fixture(autouse=True)
def poisoned_buffers(monkeypatch):
    """The output and scratch start as NaN, so an element no kernel writes fails the check."""
    empty = decode._buffer
    monkeypatch.setattr(decode, "_buffer", lambda *shape, **kw: empty(*shape, **kw).fill_(float("nan")))


@pytest.mark.parametrize("keys, d_qk, d_v, keys_per_split", [
    (100, 16, 16, None),  # one program per head; its second block of keys is ragged
    (90, 96, 48, 16),  # 6 splits, head dims padded to powers of two, d_qk != d_v
    (70, 64, 128, 32),  # 3 splits, the last ragged; the half-size q/k of the CIFAR-10 model
    (45, 256, 256, None),  # the largest head dim, with smaller key blocks
    (600, 32, 32, None),  # long enough that decode_splits splits it by itself
], ids=lambda v: str(v))
def test_decoding_matches_the_float64_reference(keys, d_qk, d_v, keys_per_split):
    check_decode(batch=2, heads=3, slots=130, keys=keys, d_qk=d_qk, d_v=d_v, keys_per_split=keys_per_split)


@pytest.mark.parametrize("keys_per_split", [None, 16], ids=["one split", "split"])
def test_bf16_caches_and_a_bf16_query_from_autocast(keys_per_split):
    check_decode(2, 3, 50, 40, 64, 64, dtype=torch.bfloat16, tol=1e-2, keys_per_split=keys_per_split)
    check_decode(2, 3, 50, 40, 64, 64, dtype=torch.float32, q_dtype=torch.bfloat16, tol=1e-2)  # fp32 cache


def test_a_query_of_any_strides():
    """q read through its strides: heads and batch rows apart in another order, padded rows."""
    _, key_cache, value_cache, index, valid = decode_inputs(2, 3, 20, 12, 16, 16)
    q = torch.randn(3, 2, 32)[:, :, :16].transpose(0, 1)  # (2, 3, 16), strides (32, 64, 1)
    out = decode_attention(q, key_cache, value_cache, index, valid, 0.25)
    torch.testing.assert_close(out, decode_attention(q.contiguous(), key_cache, value_cache, index, valid, 0.25))


def test_splits_come_from_the_shapes_alone():
    assert decode_splits(batch_heads=32, keys=127) == 1  # the CIFAR-10 model at batch 16: one program a query
    assert decode_splits(batch_heads=4, keys=600) == 4  # ranges of at least SPLIT_MIN_KEYS = 128 keys
    for batch_heads in (1, 8, 64, 512, 4096):
        for keys in (1, 255, 256, 257, 5000, 1 << 20):
            splits = decode_splits(batch_heads, keys)
            assert 1 <= splits <= MAX_SPLITS
            assert splits == 1 or keys / splits >= SPLIT_MIN_KEYS


def test_bad_inputs_are_refused_before_any_launch():
    q, key_cache, value_cache, index, valid = decode_inputs(1, 2, 20, 8, 16, 16)
    with pytest.raises(ValueError, match="slots and valid must both be"):
        decode_attention(q, key_cache, value_cache, index[:1], valid[:1], 0.25)
    with pytest.raises(TypeError, match="valid bool"):
        decode_attention(q, key_cache, value_cache, index, valid.int(), 0.25)
    with pytest.raises(ValueError, match="head dims up to 256"):
        wide = torch.zeros(1, 2, 20, 512)
        decode_attention(q, key_cache, wide, index, valid, 0.25)
    with pytest.raises(ValueError, match="shapes must be"):
        decode_attention(q, key_cache[:, :, :, :8], value_cache, index, valid, 0.25)
