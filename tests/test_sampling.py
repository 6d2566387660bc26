"""Sampling: cached decoding reads only the keys a pattern allows and predicts exactly what
a full forward pass does; samples are written as PNG / WAV / TXT."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from pattern_cases import case_id, paper_patterns
from sparse_transformer import acceleration
from sparse_transformer.data import mulaw
from sparse_transformer.masks import MaskSpec
from sparse_transformer.model import DecodingCache, SparseTransformer, decoding_keys
from sparse_transformer.patterns import Pattern
from sparse_transformer.sampling import (GRID_GUTTER, CUDAGraphDecoder, draw, generate, image_grid, matmul_weights_cast,
                                        write_samples)
from tiny_model import tiny_model
from training_setup import digits_h5, experiment, text_h5  # noqa: F401 (fixtures)

PATTERNS = paper_patterns()
UNMASKED = [(pattern, None) for pattern in PATTERNS]
# (pattern, named mask): a window with global tokens alone (dense: the whole cache), and
# narrowing a pattern with a pruned cache (local: the band) that differs per head (multihead strided).
MASKED = [
    (Pattern("dense", 6), {"name": "sliding_window_global", "window": 5, "globals": 3}),
    (Pattern("local", 6), {"name": "sliding_window_global", "window": 2, "globals": 1}),
    (Pattern("strided", 6, integration="multihead"), {"name": "sliding_window", "window": 8}),
]
IMAGE_SHAPE = (3, 4, 2)  # 24 bytes


def model_for(pattern: Pattern, image: bool, **overrides) -> SparseTransformer:
    return tiny_model(pattern, **{"context": 24, "layers": 3, "heads": 4, "ff_mult": 2,
                                  "image_shape": IMAGE_SHAPE if image else None, **overrides})


def keys_read(p, heads: int, n: int, i: int, layer: int) -> list[list[int]]:
    """Per head, the key positions a decoding step at i reads, in the order read."""
    index, valid = decoding_keys(p, heads, n, torch.tensor(i), layer)
    return [index[h][valid[h]].tolist() for h in range(heads)]


@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_decoding_keys_are_the_patterns_row_each_once(pattern):
    p, n, heads = pattern, 40, 4
    for layer in (0, 1):
        for i in range(n):
            index, valid = decoding_keys(p, heads, n, torch.tensor(i), layer)
            assert index.shape == valid.shape == decoding_keys(p, heads, n, torch.tensor(0), layer)[0].shape
            for head, keys in enumerate(keys_read(p, heads, n, i, layer)):
                assert sorted(keys) == torch.nonzero(p.mask(n, layer, head)[i]).flatten().tolist(), (layer, head, i)
                assert len(keys) == p.key_counts(n, layer, head)[i]  # no key twice


@pytest.mark.parametrize("pattern, mask", MASKED, ids=case_id)
def test_decoding_keys_under_a_mask_are_the_rows_both_allow_each_once(pattern, mask):
    p, mask, n, heads = pattern, MaskSpec.parse(mask), 40, 4
    rows = torch.arange(n)
    named = mask.mask_mod()(0, 0, rows[:, None], rows[None, :])
    for i in range(n):
        index, valid = decoding_keys(p, heads, n, torch.tensor(i), 0, mask)
        for head in range(heads):
            keys = index[head][valid[head]].tolist()
            assert sorted(keys) == torch.nonzero(p.mask(n, 0, head)[i] & named[i]).flatten().tolist(), (head, i)
            assert len(keys) == len(set(keys))


def test_a_decoding_step_reads_about_two_sqrt_n_keys():
    n, stride = 1024, 32
    position = torch.tensor(n - 1)
    strided, fixed = Pattern("strided", stride), Pattern("fixed", stride, 4)
    assert decoding_keys(strided, 2, n, position, 0)[0].shape[1] <= stride + n // stride
    assert decoding_keys(fixed, 2, n, position, 0)[0].shape[1] <= stride + 4 * n // stride


class HostReads(TorchDispatchMode):
    """Records every operator that copies a tensor's value to the host (`.item()`, a 0-dim
    index, nonzero): inside a CUDA graph capture each of them is an error."""

    READS = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default)

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("pattern, mask, attention", [
    *((pattern, mask, "reference") for pattern, mask in [*UNMASKED, MASKED[0]]),
    pytest.param(PATTERNS[8], None, "triton", marks=pytest.mark.interpreter),  # the fused decode kernel's launches
], ids=case_id)
def test_a_decoding_step_never_reads_a_tensor_on_the_host(pattern, mask, attention):
    """What lets CUDAGraphDecoder capture a step (checked here on the CPU; the capture itself by the gpu tests)."""
    model = model_for(pattern, image=True, half_qk=pattern.kind == "fixed", attention=attention, mask=mask)
    cache = DecodingCache(model, batch=2)
    with torch.no_grad(), HostReads() as reads:
        for token in (model.start_token, 7):
            model.decode_step(torch.full((2,), token), cache)
    assert reads.ops == []


@pytest.mark.parametrize("image", [False, True], ids=["stream", "image"])
@pytest.mark.parametrize("pattern, mask", [*UNMASKED, *MASKED], ids=case_id)
def test_cached_decoding_gives_the_distributions_of_a_full_forward_pass(pattern, mask, image):
    """A prompt read in one pass (prefill; 1 position: a decoding step), then decoding step
    by step through the pruned cache: the distributions of one full forward pass."""
    model = model_for(pattern, image, half_qk=pattern.kind == "fixed", mask=mask)
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(2))
    if image:
        tokens[:, 0] = model.start_token
    with torch.no_grad():
        full = torch.softmax(model(tokens), dim=-1)  # (B, n, 256)
        assert full.std() > 1e-4  # the distributions are not trivially uniform
        for prompt in (1, 7, 13):
            cache = DecodingCache(model, batch=2)
            read = torch.softmax(model.prefill(tokens[:, :prompt], cache), -1)
            stepped = [torch.softmax(model.decode_step(tokens[:, i], cache), -1) for i in range(prompt, 24)]
            torch.testing.assert_close(torch.cat([read, torch.stack(stepped, dim=1)], dim=1), full, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="empty cache"):
        model.prefill(tokens[:, :3], cache)


FUSED_PATTERNS = [*(UNMASKED[i] for i in (0, 1, 2, 3, 5, 7, 8)), MASKED[0]]  # every kind, layout and integration, a mask


def decoded_logits(model: SparseTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """Logits (B, n, vocab) of decoding `tokens` (B, n) one position at a time from an empty cache."""
    cache = DecodingCache(model, batch=len(tokens), device=tokens.device)
    return torch.stack([model.decode_step(tokens[:, i], cache) for i in range(tokens.shape[1])], dim=1)


@pytest.mark.interpreter
@pytest.mark.parametrize("pattern, mask", FUSED_PATTERNS, ids=case_id)
def test_the_fused_decode_kernel_gives_the_reference_steps_logits(pattern, mask, monkeypatch):
    """The triton backend decodes with the fused kernel (reading the pruned cache in place),
    the reference backend with PyTorch's gather: the same logits at every position. Two
    heads of 16 dims (8 for fixed's half-size q/k) and one batch row keep the interpreter's
    programs few (test_decode.py checks batches)."""
    from sparse_kernels import decode

    launches = []
    kernel = decode.decode_attention
    monkeypatch.setattr(decode, "decode_attention", lambda *args: launches.append(1) or kernel(*args))
    tokens = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference, fused = (decoded_logits(model_for(pattern, image=False, heads=2, layers=2, attention=attention,
                                                     half_qk=pattern.kind == "fixed", mask=mask), tokens)
                            for attention in ("reference", "triton"))
    assert len(launches) == 24 * 2  # every step of every layer, and only under the triton backend
    assert reference.std() > 0.1
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)


N, L, C = 1024, 32, 4


@pytest.mark.parametrize("pattern, kept", [
    (Pattern("fixed", L, C, integration="merged"), ((L + C * N / L) / N,) * 2),
    (Pattern("fixed", L, C, integration="multihead", distinct_summaries=True), ((L + C * N / L) / N,) * 2),
    (Pattern("local", L), (L / N,) * 2),
    (Pattern("strided", L, integration="interleaved"), (L / N, 1.0)),  # A1 layers keep the band only
    (Pattern("strided", L, integration="merged"), (1.0, 1.0)),
    (Pattern("dense", L), (1.0, 1.0)),
])
def test_the_cache_keeps_only_what_later_queries_read(pattern, kept):
    """Per layer, at most this fraction of a cache of every position: (l + c n / l) / n for
    fixed, l / n for local; strided A2 and dense read every past position again."""
    model = model_for(pattern, image=False, context=N, layers=2)
    cache = DecodingCache(model, batch=1)
    every_position = 2 * N * model.config.d_model * 4  # keys and values of all heads, fp32
    for layer, fraction in enumerate(kept):
        held = cache.keys[layer].nbytes + cache.values[layer].nbytes
        assert held <= fraction * every_position, (layer, cache.layouts[layer])
        assert held > 0.5 * fraction * every_position, (layer, cache.layouts[layer])  # and not less: it is the bound


def test_generate_samples_from_the_models_distribution_at_the_temperature():
    model = model_for(Pattern("strided", 6), image=False)
    first = torch.tensor([[65], [66]])
    greedy = generate(model, first, 12, temperature=1e-6, progress=False)
    assert greedy.shape == (2, 12) and greedy.dtype == torch.uint8 and greedy[:, 0].tolist() == [65, 66]
    with torch.no_grad():
        assert torch.equal(model(greedy[:, :-1]).argmax(-1), greedy[:, 1:].long())  # each byte the most likely
    hot = generate(model, first, 12, temperature=1.0, generator=torch.Generator().manual_seed(0), progress=False)
    again = generate(model, first, 12, temperature=1.0, generator=torch.Generator().manual_seed(0), progress=False)
    assert torch.equal(hot, again) and not torch.equal(hot, greedy)


def test_under_autocast_the_weights_are_cast_once_with_the_same_logits_and_restored():
    """matmul_weights_cast spares autocast's per-step weight casts without changing a
    product; generate uses it and gives the model back as it was."""
    model = model_for(Pattern("fixed", 8, 2), image=False)
    before = {name: parameter.clone() for name, parameter in model.named_parameters()}
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(5))
    logits = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for cast in (False, True):
            cache = DecodingCache(model, batch=2, dtype=torch.bfloat16)
            with matmul_weights_cast(model, torch.bfloat16 if cast else torch.float32):
                assert model.blocks[0].ff.w1.weight.dtype == (torch.bfloat16 if cast else torch.float32)
                logits.append(torch.stack([model.decode_step(tokens[:, i], cache) for i in range(10)]))
        generate(model, tokens[:, :2], 6, progress=False)
    assert torch.equal(logits[0], logits[1])
    for name, parameter in model.named_parameters():
        assert parameter.dtype == torch.float32 and torch.equal(parameter, before[name]), name


def test_images_are_generated_from_the_start_symbol_and_are_whole():
    model = model_for(Pattern("strided", 6), image=True)
    images = generate(model, torch.full((2, 1), model.start_token), 24, progress=False)
    assert images.shape == (2, 24)


def test_draw_keeps_the_top_k_bytes_and_the_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.2, 0.05]])).expand(4000, 5)
    gen = torch.Generator().manual_seed(0)
    assert (draw(logits, top_k=1, generator=gen) == 1).all()
    assert (draw(logits, top_p=0.1, generator=gen) == 1).all()  # the most likely byte always stays
    assert set(draw(logits, top_k=3, generator=gen).tolist()) == {1, 2, 3}
    assert set(draw(logits, top_p=0.65, generator=gen).tolist()) == {1, 2}  # 0.4 + 0.3 reach 0.65
    nucleus = draw(logits, top_p=0.8, generator=gen)  # 0.4 + 0.3 + 0.2, renormalised
    assert set(nucleus.tolist()) == {1, 2, 3} and abs((nucleus == 1).float().mean().item() - 0.4 / 0.9) < 0.03
    cold = draw(logits, temperature=0.01, generator=gen)
    assert (cold == 1).all()


def test_a_prompt_is_continued_and_a_stream_slides_past_the_context():
    """The output starts with the prompt; past the context, each byte is predicted from
    the last half context read again (the sliding window), as a full forward pass over
    that window predicts it."""
    model = model_for(Pattern("fixed", 8, 2), image=False)  # context 24
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(3))
    greedy = generate(model, prompt, 60, temperature=1e-6, progress=False).long()
    assert greedy.shape == (2, 60) and torch.equal(greedy[:, :5], prompt)
    start = 0
    with torch.no_grad():
        for t in range(5, 60):
            if t - start > 24:  # the window would exceed the context: its last half goes on
                start = t - 12
            assert torch.equal(model(greedy[:, start:t])[:, -1].argmax(-1), greedy[:, t]), t
    long_prompt = torch.randint(0, 256, (1, 30), generator=torch.Generator().manual_seed(4))
    assert torch.equal(generate(model, long_prompt, 40, progress=False)[:, :30].long(), long_prompt)


def test_compiled_decoding_gives_the_same_logits_with_one_graph_per_part_for_every_block():
    """acceleration.for_decoding: what surrounds each block's attention, traced once for all blocks
    and positions (two graphs: the projections, and the residual update); the same logits."""
    from torch._dynamo.utils import counters

    model = model_for(Pattern("strided", 6, integration="interleaved"), image=False)
    tokens = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(6))
    logits = []
    with torch.no_grad():
        for compiled in (False, True):
            if compiled:
                torch._dynamo.reset()
                counters.clear()
                acceleration.for_decoding(model, backend="eager")  # dynamo's tracing, without Inductor's compile time
            cache = DecodingCache(model, batch=2)
            logits.append(torch.stack([model.decode_step(tokens[:, i], cache) for i in range(12)]))
    assert counters["stats"]["unique_graphs"] == 2
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_cuda_graph_replays_the_eager_decoding_steps(pattern, bf16):
    model = model_for(pattern, image=True, half_qk=pattern.kind == "fixed").cuda()
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1)).cuda()
    tokens[:, 0] = model.start_token
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        cache = DecodingCache(model, batch=3, device="cuda")
        eager = torch.stack([model.decode_step(tokens[:, i], cache) for i in range(24)], dim=1)
        decoder = CUDAGraphDecoder(model, DecodingCache(model, batch=3, device="cuda"), tokens[:, 0])
        replayed = torch.stack([decoder(tokens[:, i]).clone() for i in range(24)], dim=1)
        with pytest.raises(ValueError, match="the cache is full"):
            decoder(tokens[:, 0])
        full = model(tokens)  # (B, n, vocab)
    assert eager.std() > 1e-3
    torch.testing.assert_close(replayed, eager, rtol=1e-5, atol=1e-5)
    tolerance = 2e-2 if bf16 else 1e-4  # the full forward's attention rounds differently
    torch.testing.assert_close(torch.softmax(replayed.float(), -1), torch.softmax(full.float(), -1), rtol=0, atol=tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_compiled_decoding_replayed_as_a_cuda_graph_predicts_what_the_forward_pass_does(pattern):
    """What the sampler runs on a GPU: acceleration.for_decoding (Inductor), the decode kernel, weights
    cast once, a bf16 cache, each step replayed as a CUDA graph, under bf16 autocast."""
    torch._dynamo.reset()
    model = model_for(pattern, image=True, half_qk=pattern.kind == "fixed", attention="auto", d_model=64, heads=2).cuda()
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1)).cuda()
    tokens[:, 0] = model.start_token
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        full = model(tokens)  # (B, n, vocab)
        acceleration.for_decoding(model)
        with matmul_weights_cast(model, torch.bfloat16):
            decoder = CUDAGraphDecoder(model, DecodingCache(model, batch=3, device="cuda", dtype=torch.bfloat16),
                                       tokens[:, 0])
            replayed = torch.stack([decoder(tokens[:, i]).clone() for i in range(24)], dim=1)
    torch.testing.assert_close(torch.softmax(replayed.float(), -1), torch.softmax(full.float(), -1), rtol=0, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("pattern", PATTERNS, ids=Pattern.describe)
def test_a_captured_fused_decode_step_gives_the_reference_steps_logits(pattern, bf16):
    """The fused decode kernel (backend auto on CUDA) inside a CUDA graph, replayed at every
    position, against eager decoding through PyTorch's gather (backend reference)."""
    tokens = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(1)).cuda()
    tokens[:, 0] = model_for(pattern, image=True).start_token
    fused, reference = (model_for(pattern, image=True, half_qk=pattern.kind == "fixed", attention=attention).cuda()
                        for attention in ("auto", "reference"))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        decoder = CUDAGraphDecoder(fused, DecodingCache(fused, batch=3, device="cuda"), tokens[:, 0])
        replayed = torch.stack([decoder(tokens[:, i]).clone() for i in range(24)], dim=1)
        eager = decoded_logits(reference, tokens)
    assert eager.std() > 1e-3
    tolerance = 2e-2 if bf16 else 1e-4  # under autocast each attention output is rounded to bf16
    torch.testing.assert_close(torch.softmax(replayed.float(), -1), torch.softmax(eager.float(), -1), rtol=0, atol=tolerance)


@pytest.mark.gpu
def test_generate_draws_the_same_samples_with_and_without_cuda_graphs():
    model = model_for(PATTERNS[5], image=True).cuda()
    first = torch.full((4, 1), model.start_token, device="cuda")
    draws = [generate(model, first, 24, generator=torch.Generator("cuda").manual_seed(0), progress=False, graph=graph)
             for graph in (True, False)]
    assert torch.equal(draws[0], draws[1])


def test_image_grid_places_each_image(tmp_path):
    images = np.arange(5 * 2 * 3 * 3, dtype=np.uint8).reshape(5, 2, 3, 3)
    grid = np.asarray(image_grid(images))
    scale = 256 // 11  # 3 columns of width 3 with 1-pixel gaps: 11 pixels, enlarged to at least 256
    small = grid[::scale, ::scale]
    assert small.shape == (2 * 3 - 1, 3 * 4 - 1, 3)
    assert np.array_equal(small[3:5, 4:7], images[4])  # the fifth image: second row, second column
    # mid-grey gutters (and the empty sixth cell), which black or white images do not hide in
    assert (small[2] == GRID_GUTTER).all() and (small[:, [3, 7]] == GRID_GUTTER).all()
    assert (small[3:5, 8:11] == GRID_GUTTER).all()


def test_samples_are_written_as_png_wav_and_txt(tmp_path):
    import soundfile  # here, not at the top: the GPU machines that run this module's gpu tests lack it

    samples = np.random.default_rng(0).integers(0, 256, (4, 64), dtype=np.uint8)
    files, images = write_samples(samples, {"modality": "image", "example_shape": (8, 8, 1)}, tmp_path / "img")
    assert [f.name for f in files] == ["samples.png"] and list(images) == files
    assert Image.open(files[0]).mode == "L"

    files, images = write_samples(samples, {"modality": "audio", "sample_rate": 12_000}, tmp_path / "wav")
    audio, rate = soundfile.read(files[1], dtype="float32")
    assert rate == 12_000 and images == {}
    np.testing.assert_allclose(audio, mulaw.decode(samples[1]), atol=1e-4)  # 16-bit PCM

    files, _ = write_samples(samples, {"modality": "text"}, tmp_path / "txt")
    assert [f.read_bytes() for f in files] == [s.tobytes() for s in samples]
    files, _ = write_samples(samples[:2], {"modality": "text"}, tmp_path / "txt")
    assert sorted(p.name for p in (tmp_path / "txt").glob("[!.]*")) == ["sample_000.txt", "sample_001.txt"]


def test_a_new_run_replaces_the_samples_it_wrote_and_nothing_else(tmp_path):
    samples = np.random.default_rng(0).integers(0, 256, (3, 8), dtype=np.uint8)
    (tmp_path / "sample_data.csv").write_text("a user's file, named like a sample")
    write_samples(samples, {"modality": "text"}, tmp_path)
    write_samples(samples[:1], {"modality": "text"}, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("[!.]*")) == ["sample_000.txt", "sample_data.csv"]
    assert (tmp_path / "sample_data.csv").read_text() == "a user's file, named like a sample"


def test_an_output_folder_that_is_a_file_is_refused_before_any_work(tmp_path):
    from sparse_transformer.config import ExperimentConfig, SampleConfig
    from sparse_transformer.outputs import OutputError
    from sparse_transformer.sampling import sample

    (tmp_path / "samples").write_text("not a folder")
    with pytest.raises(OutputError, match="sample.output_dir: .*samples is a file; give the path of a folder"):
        sample(ExperimentConfig(sample=SampleConfig(output_dir=str(tmp_path / "samples"))))


def test_images_are_completed_from_their_top_rows_beside_the_originals(tmp_path, digits_h5):
    """The paper's completions: the top rows of test images given, the rest sampled, each
    completion drawn next to its original in completions.png."""
    from sparse_transformer.data.datamodule import data_module_for
    from sparse_transformer.sampling import COMPLETIONS_FILE, sample
    from sparse_transformer.training import train

    cfg = experiment(tmp_path, digits_h5, train={"max_steps": 2, "val_every_steps": None}, tracking={"enabled": False},
                     sample={"count": 2, "prompt": {"count": 3, "rows": 3}})
    train(cfg)
    files = sample(cfg, progress=False)
    assert [f.name for f in files] == ["samples.png", COMPLETIONS_FILE]
    grid = np.asarray(Image.open(tmp_path / "samples" / COMPLETIONS_FILE))
    scale = 256 // (4 * 9 - 1)  # 2 pairs of 8x8 images a row, 1-pixel gutters
    cells = grid[::scale, ::scale]
    originals = data_module_for(str(digits_h5), batch_size=1, context=64).split_array("test")[:3, :, :, 0]
    for k in range(3):
        top, left = k // 2 * 9, k % 2 * 18
        assert np.array_equal(cells[top:top + 8, left:left + 8], originals[k])  # the original
        completion = cells[top:top + 8, left + 9:left + 17]
        assert np.array_equal(completion[:3], originals[k][:3])  # its given rows, then sampled ones


def test_text_is_continued_from_a_file(tmp_path, text_h5):
    from sparse_transformer.sampling import sample
    from sparse_transformer.training import train

    start = tmp_path / "prompt.txt"
    start.write_bytes(b"ROMEO: wherefore art thou")
    cfg = experiment(tmp_path, text_h5, train={"max_steps": 2, "val_every_steps": None}, tracking={"enabled": False},
                     sample={"count": 1, "length": 100, "top_k": 20, "top_p": 0.9,
                             "prompt": {"count": 2, "file": str(start), "length": 10}})
    train(cfg)
    files = sample(cfg, progress=False)
    assert [f.name for f in files] == ["sample_000.txt", "completion_000.txt", "completion_001.txt"]
    assert len(files[0].read_bytes()) == 100  # past the context of 64: the sliding window
    for completion in files[1:]:
        text = completion.read_bytes()
        assert len(text) == 110 and text.startswith(b"ROMEO: whe")
