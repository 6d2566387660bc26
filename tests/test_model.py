"""The model of the paper's section 5: information flow, recomputation, initialization, learning."""

from __future__ import annotations

import copy
import math
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from pattern_cases import paper_patterns
from sparse_transformer import acceleration
from sparse_transformer.config import ConfigError, ModelConfig, load_model_config
from sparse_transformer.model import SparseTransformer, bits_per_dim, gelu
from sparse_transformer.patterns import Pattern
from tiny_model import tiny_model

REPO = Path(__file__).resolve().parents[1]

PATTERNS = [*paper_patterns(), Pattern("fixed", 8, 2, integration="interleaved")]


def small_model(pattern: Pattern, **overrides) -> SparseTransformer:
    return tiny_model(pattern, out_std=0.1, **{"context": 26, "heads": 4, "ff_mult": 2, **overrides})


def dependency_matrix(model: SparseTransformer, n: int) -> torch.Tensor:
    """(n, n) bool: [i, j] = changing input byte j changes the logits at position i."""
    base = torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(1))
    changed = base.repeat(n, 1)  # row j: byte j replaced
    changed[torch.arange(n), torch.arange(n)] = (base[0] + 1) % 256
    with torch.no_grad():
        diff = (model(changed) - model(base)).abs().amax(dim=-1)  # (j, i)
    return (diff > 0).T


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_information_flows_exactly_along_two_hops_of_the_pattern(pattern):
    """Causality (nothing after i reaches i) and reach (every j within two hops of the
    layers' patterns does): the dependency set of a two-layer model is exactly the reach."""
    n, heads = 26, 4
    model = small_model(pattern)
    eye = torch.eye(n, dtype=torch.bool)
    hop1 = (pattern.layer_mask(n, 0, heads) | eye).to(torch.int64)
    hop2 = (pattern.layer_mask(n, 1, heads) | eye).to(torch.int64)
    reach = (hop2 @ hop1) > 0
    depends = dependency_matrix(model, n)
    assert not depends.triu(1).any(), "an output depends on a later input"
    assert torch.equal(depends, reach)
    if pattern.kind == "local":
        assert not depends[n - 1, 0]  # the matrix is not trivially all-causal


# Longformer-style: a window of 5 and the first 3 positions global; the model adds causality.
MASK = {"name": "sliding_window_global", "window": 5, "globals": 3}


def masked_reference(model: SparseTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits with each attention written out in float64: softmax over the
    keys j <= i with |i - j| < 5 or i < 3 or j < 3 (MASK's under a dense pattern), through the model's own
    projections and residual updates."""
    n = tokens.shape[1]
    allowed = torch.tensor([[j <= i and (abs(i - j) < 5 or i < 3 or j < 3) for j in range(n)] for i in range(n)])
    model = copy.deepcopy(model).double()
    h = model.token_embedding(tokens) + model.position_embedding(slice(0, n))
    for block in model.blocks:
        q, k, v = block.project(h)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        h = h + block.update(h, torch.softmax(scores, dim=-1) @ v)
    return model.out(model.final_norm(h))


@pytest.mark.parametrize("attention", ["reference", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_a_model_with_a_named_mask_computes_the_masked_attention(attention):
    """Every layer attends through the layout of causal AND the mask; the triton backend
    runs its block lists (two heads of 16 dims keep the interpreter's programs few)."""
    model = small_model(Pattern("dense", 6), mask=MASK, heads=2, attention=attention)
    tokens = torch.randint(0, 256, (2, 26), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = masked_reference(model, tokens)
        dense = small_model(Pattern("dense", 6), heads=2)(tokens).double()
        assert (want - dense).abs().max() > 1e-3  # the mask changes the logits
        if attention == "reference":
            torch.testing.assert_close(model.double()(tokens), want, rtol=1e-10, atol=1e-10)
        else:  # the kernels take float32
            torch.testing.assert_close(model(tokens).double(), want, rtol=1e-4, atol=1e-4)


def test_recomputation_runs_each_block_again_with_the_same_loss_and_gradients():
    """acceleration.for_training with recomputation: each block's forward runs once more
    in the backward pass, and the loss and gradients are those without it."""
    pattern = Pattern("fixed", 8, 2, integration="interleaved")
    tokens = torch.randint(0, 256, (3, 27), generator=torch.Generator().manual_seed(2))
    results, block_calls = [], []
    for recompute in (False, True):
        model = acceleration.for_training(small_model(pattern, dropout=0.2).train(), recompute)
        calls = []
        model.blocks[1].register_forward_pre_hook(lambda *_: calls.append(1))  # the recomputation may stop early
        torch.manual_seed(3)  # the same dropout masks; checkpoint replays the RNG state
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        block_calls.append(len(calls))
        results.append((loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}))
    assert block_calls == [1, 2]
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert torch.allclose(loss_on, loss_off, rtol=1e-6)
    for name, grad in grads_off.items():
        assert torch.allclose(grads_on[name], grad, rtol=1e-5, atol=1e-7), name
    assert any(g.abs().sum() > 0 for name, g in grads_off.items() if "blocks.0.attn.query" in name)


def test_compiled_blocks_match_eager_with_one_graph_per_layer_class():
    """acceleration.for_training with a compile mode: the same loss and gradients (recomputation on), and blocks of one
    layer class share a graph (the interleaved pattern has two classes)."""
    from torch._dynamo.utils import counters

    tokens = torch.randint(0, 256, (2, 27), generator=torch.Generator().manual_seed(4))
    model = small_model(Pattern("strided", 6, integration="interleaved"), layers=4, recompute=True).train()
    results = []
    for compiled in (False, True):
        if compiled:
            torch._dynamo.reset()
            counters.clear()
            acceleration.for_training(model, recompute=True, compile_mode="default")
        loss = model.loss(tokens[:, :-1], tokens[:, 1:])
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()))))
    (loss_eager, grads_eager), (loss_compiled, grads_compiled) = results
    assert counters["stats"]["unique_graphs"] == 2
    assert torch.allclose(loss_compiled, loss_eager, rtol=1e-5)
    for got, want in zip(grads_compiled, grads_eager):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def weight_groups(model: SparseTransformer) -> dict[str, torch.Tensor]:
    """Every parameter of the model, concatenated by the role the paper (sections 5.2 and 6) gives it."""
    groups: dict[str, list[torch.Tensor]] = {}
    for name, p in model.named_parameters():
        parts = name.split(".")
        if name.startswith("blocks."):
            role = ".".join(parts[2:])  # e.g. attn.query.weight, ff_norm.bias
        elif name.startswith("position_embedding."):
            role = f"position.{parts[2]}"
        else:
            role = name
        groups.setdefault(role, []).append(p.detach().flatten())
    return {role: torch.cat(ps) for role, ps in groups.items()}


@pytest.mark.parametrize("image_shape", [None, (16, 16, 3)])
def test_initialization_matches_spec(image_shape):
    d, layers, ff = 256, 4, 4
    config = ModelConfig(
        context=768,
        layers=layers,
        d_model=d,
        heads=4,
        ff_mult=ff,
        image_shape=image_shape,
        pattern=Pattern("strided", 32),
    )
    torch.manual_seed(0)
    groups = weight_groups(SparseTransformer(config))
    residual_scale = 1 / math.sqrt(2 * layers)
    n_emb = 2 if image_shape is None else 3
    expected_std = {
        "token_embedding.weight": math.sqrt(0.125 / d),
        "attn.query.weight": math.sqrt(0.125 / d),
        "attn.key.weight": math.sqrt(0.125 / d),
        "attn.value.weight": math.sqrt(0.125 / d),
        "attn.proj.weight": math.sqrt(0.125 / d) * residual_scale,
        "ff.w1.weight": math.sqrt(0.125 / d),
        "ff.w2.weight": math.sqrt(0.125 / (ff * d)) * residual_scale,
    }
    for axis in range(n_emb):
        expected_std[f"position.{axis}"] = math.sqrt(0.125 / (d * n_emb))
    assert {role for role in groups if role.startswith("position.")} == {f"position.{a}" for a in range(n_emb)}
    for role, std in expected_std.items():
        assert abs(groups[role].std().item() / std - 1) < 0.1, role
        assert abs(groups[role].mean().item()) < 0.1 * std, role
    assert torch.equal(groups["out.weight"], torch.zeros_like(groups["out.weight"]))
    for role, values in groups.items():
        if role.endswith("bias"):
            assert torch.equal(values, torch.zeros_like(values)), role
        if role.endswith("norm.weight"):
            assert torch.equal(values, torch.ones_like(values)), role
    assert set(groups) == set(expected_std) | {"out.weight"} | {
        r for r in groups if r.endswith("bias") or r.endswith("norm.weight")
    }


def test_image_positions_are_row_column_channel_in_raster_order():
    model = SparseTransformer(ModelConfig(context=2 * 3 * 4, image_shape=(2, 3, 4), pattern=Pattern("strided", 4)))
    coords = model.position_embedding.coords
    expected = [(row, col, ch) for row in range(2) for col in range(3) for ch in range(4)]
    assert [tuple(c) for c in coords.T.tolist()] == expected


def test_text_positions_are_row_and_column_of_a_stride_wide_matrix():
    model = SparseTransformer(ModelConfig(context=10, pattern=Pattern("strided", 4)))
    assert model.position_embedding.coords.T.tolist() == [[i // 4, i % 4] for i in range(10)]
    assert [t.num_embeddings for t in model.position_embedding.tables] == [3, 4]


def test_untrained_model_predicts_uniform_bytes():
    """W_out = 0, so every byte has probability 1/256: exactly 8 bits per byte."""
    model = SparseTransformer(ModelConfig(context=16, pattern=Pattern("strided", 4)))
    tokens = torch.randint(0, 256, (2, 17), dtype=torch.uint8)
    assert model(tokens[:, :-1]).shape == (2, 16, 256)
    assert model.loss(tokens[:, :-1], tokens[:, 1:]).item() == pytest.approx(8.0, abs=1e-5)


def test_bits_per_dim_is_cross_entropy_in_bits():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # p = 1/4, 3/4
    assert bits_per_dim(logits, torch.tensor([[0]])).item() == pytest.approx(2.0)
    assert bits_per_dim(logits, torch.tensor([[1]])).item() == pytest.approx(math.log2(4 / 3))


def test_gelu_is_the_sigmoid_approximation():
    x = torch.tensor([-2.0, 0.0, 1.0])
    assert torch.allclose(gelu(x), x / (1 + torch.exp(-1.702 * x)))


def shakespeare() -> bytes:
    return (REPO / "data/quickstart/text/tinyshakespeare.txt").read_bytes()  # shipped with the repository


@pytest.mark.parametrize("integration", ["merged", "interleaved", "multihead"])
def test_small_model_overfits_a_text_window(integration):
    text = torch.tensor(list(shakespeare()[:4 * 65]), dtype=torch.long).view(4, 65)
    config = ModelConfig(
        context=64, layers=2, d_model=64, heads=2, attention="reference", pattern=Pattern("strided", 8, integration=integration)
    )
    torch.manual_seed(0)
    model = SparseTransformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(text[:, :-1], text[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 3.0


@pytest.mark.parametrize("half_qk", [False, True])
def test_the_projections_are_one_product_equal_to_the_three(half_qk):
    """q, k and v come from one matrix product with W_q, W_k and W_v side by side: the
    three projections applied one by one, the parameters and their names unchanged."""
    attn = small_model(Pattern("strided", 4), half_qk=half_qk).blocks[0].attn
    x = torch.randn(2, 26, attn.value.in_features, generator=torch.Generator().manual_seed(0))
    for got, projection in zip(attn.project(x), (attn.query, attn.key, attn.value)):
        assert torch.allclose(got, attn._split(projection(x)), rtol=1e-6, atol=1e-6)


def test_bf16_autocast_forward_runs():
    model = small_model(Pattern("fixed", 8, 2, integration="merged"), half_qk=True)
    tokens = torch.randint(0, 256, (2, 26))
    with torch.no_grad():
        full = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(tokens)
    assert half.dtype == torch.bfloat16
    assert torch.isfinite(half).all()
    assert (half.float() - full).abs().max() < 0.05 * full.abs().max()


def test_backend_comes_from_the_config():
    dense = Pattern("dense", 4)
    tokens = torch.randint(0, 256, (2, 26))
    with torch.no_grad():
        by_reference = small_model(dense, attention="reference")(tokens)
        by_sdpa = small_model(dense, attention="sdpa")(tokens)
    assert torch.allclose(by_reference, by_sdpa, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "sdpa", "flex", "triton", "auto"])
def test_the_backend_is_resolved_once_when_the_model_is_built(backend):
    from sparse_transformer import attention

    model = SparseTransformer(ModelConfig(context=8, pattern=Pattern("dense", 4), attention=backend))
    assert {block.attn.attention for block in model.blocks} == {attention.attention_function(backend)}
    assert {block.attn.decoding for block in model.blocks} == {attention.decoding_function(backend)}


def test_unknown_backend_names_the_choices():
    with pytest.raises(ConfigError) as info:
        SparseTransformer(ModelConfig(attention="cuda"))
    for name in ("auto", "reference", "flex", "sdpa", "triton"):
        assert name in str(info.value)


def test_a_non_causal_pattern_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="autoregressive") as info:
        SparseTransformer(ModelConfig(pattern=Pattern("strided", 4, causal=False)))
    assert "\n" not in str(info.value)


def test_sequences_longer_than_the_context_are_refused():
    model = SparseTransformer(ModelConfig(context=8, pattern=Pattern("strided", 4)))
    with pytest.raises(ValueError, match="exceeds the model's context 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


# The paper's three models (its section 7), as params.yaml would give them.
PAPER_MODELS = {
    "cifar10": (
        59e6,
        """
        context: 3072
        image_shape: [32, 32, 3]
        layers: 128
        d_model: 256
        heads: 2
        ff_mult: 2
        half_qk: true
        pattern: {kind: strided, stride: 32, integration: multihead}
        """,
    ),
    "enwik8": (
        95e6,
        """
        context: 12288
        layers: 30
        d_model: 512
        heads: 8
        ff_mult: 4
        pattern: {kind: fixed, stride: 128, summary: 32, integration: merged}
        """,
    ),
    "imagenet64": (
        152e6,
        """
        context: 12288
        image_shape: [64, 64, 3]
        layers: 48
        d_model: 512
        heads: 16
        ff_mult: 4
        pattern: {kind: strided, stride: 128}
        """,
    ),
}


@pytest.mark.parametrize("name", PAPER_MODELS)
def test_paper_models_have_the_papers_parameter_counts(name):
    paper_count, text = PAPER_MODELS[name]
    config = load_model_config(yaml.safe_load(textwrap.dedent(text)), where=f"{name}.model")
    with torch.device("meta"):  # shapes only: no memory, no time
        model = SparseTransformer(config)
    count = model.num_params()
    print(f"{name}: {count:,} parameters (paper: {paper_count / 1e6:.0f}M)")
    assert abs(count / paper_count - 1) < 0.03


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_compiled_blocks_match_eager_on_gpu(mode):
    """acceleration.for_training on a GPU around the Triton kernels, recomputation on, in fp32: the
    same losses and gradients as eager over several batches, so CUDA graphs
    (reduce-overhead) replay correctly with new inputs. The kernels multiply fp32 in
    TF32, so a tiny change of their inputs (Inductor's fused arithmetic) moves gradients
    by about 1e-4 of their norm; a replay on stale inputs would move them by order 1."""
    pattern = Pattern("fixed", 32, 8, integration="merged")
    model = small_model(pattern, context=512, layers=4, d_model=128, heads=4, attention="triton", recompute=True)
    model = model.cuda().train()
    batches = torch.randint(0, 256, (3, 2, 513), generator=torch.Generator().manual_seed(5)).cuda()

    def losses_and_gradients():
        results = []
        for tokens in batches:
            loss = model.loss(tokens[:, :-1], tokens[:, 1:])
            grads = torch.autograd.grad(loss, list(model.parameters()))
            results.append((loss.detach().clone(), [g.clone() for g in grads]))  # graph outputs get reused
        return results

    eager = losses_and_gradients()
    torch._dynamo.reset()
    acceleration.for_training(model, recompute=True, compile_mode=mode)
    compiled = losses_and_gradients()
    tolerance = 5e-3
    # The key biases get no gradient in exact arithmetic (q.b shifts all of a query's
    # scores alike, which the softmax ignores): both sides hold rounding noise there.
    checked = [i for i, (name, _) in enumerate(model.named_parameters()) if not name.endswith("attn.key.bias")]
    for (loss_eager, grads_eager), (loss_compiled, grads_compiled) in zip(eager, compiled):
        assert torch.allclose(loss_compiled, loss_eager, rtol=1e-4)
        errors = [relative_error(grads_compiled[i], grads_eager[i]) for i in checked]
        print(f"{mode}: largest relative gradient error {max(errors):.2e}")
        assert max(errors) < tolerance
    # The check can see a stale replay: one batch's gradients are far from the next one's.
    flat = [torch.cat([grads[i].flatten() for i in checked]) for _, grads in eager[:2]]
    assert relative_error(flat[1], flat[0]) > 10 * tolerance
