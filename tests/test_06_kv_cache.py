"""Chapter 06 (KV cache): the hand-written cache must give the same tokens and logits as
no cache and as shared.model.KVCache, its bytes must follow the formula, the quantized cache
must round-trip within half a step and cost the bytes its formula says, the ring buffer must
equal a sliding-window model, and the sinks variant must keep its sink rows.

    uv run pytest tests/test_06_kv_cache.py
"""
from __future__ import annotations

import pytest
import torch

from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, KVCache

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "06_kv_cache"
kc = load_chapter_module(CHAPTER, "kvcache")
qk = load_chapter_module(CHAPTER, "quantized_kvcache")
cm = load_chapter_module(CHAPTER, "cache_measures")

LLAMA = dict(pos="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)


def tiny(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=23, n_layer=2, n_head=4, d_model=32, block_size=64, **{**LLAMA, **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():  # bigger weights than the 0.02 init, so attention is far from uniform
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model


def ids(t, seed=1, vocab=23):
    return torch.randint(0, vocab, (1, t), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- same tokens, same logits
@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_cached_and_uncached_greedy_tokens_are_identical(n_kv_head):
    model = tiny(n_kv_head=n_kv_head)
    prompt = ids(5)
    n = 30
    hand_cached = kc.generate_cached(model, prompt, n, kc.FullCache(model.cfg, 1, prompt.shape[1] + n))
    hand_uncached = kc.generate_uncached(model, prompt, n)
    assert hand_cached.shape == (1, 5 + n)
    assert torch.equal(hand_cached, hand_uncached)
    assert torch.equal(hand_cached, model.generate(prompt, n, temperature=0, use_cache=True))
    assert torch.equal(hand_cached, model.generate(prompt, n, temperature=0, use_cache=False))
    # the check is not vacuous: greedy output actually varies
    assert len(set(hand_cached[0, 5:].tolist())) > 2


@torch.no_grad()
def test_hand_cache_logits_equal_shared_kvcache_and_full_forward():
    model = tiny(n_kv_head=2)
    x = ids(30, seed=3)
    r = cm.compare_with_shared_cache(model, x, n_prefill=7)
    assert r["max_abs_diff_vs_shared_kvcache"] < 1e-5
    assert r["max_abs_diff_vs_full_forward"] < 1e-5
    assert r["cache_rows_equal"]
    # and the stored rows are literally the same keys as shared.model.KVCache holds, every layer
    hand, ref = kc.FullCache(model.cfg, 1, 30), KVCache(model.cfg, 1, 30)
    kc.forward(model, x, hand)
    model(x, cache=ref)
    for layer in range(model.cfg.n_layer):
        torch.testing.assert_close(hand.k[layer], ref.k[layer], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(hand.v[layer], ref.v[layer], atol=1e-6, rtol=1e-5)
    assert hand.length == ref.pos == 30


def test_cache_refuses_to_overflow():
    model = tiny()
    cache = kc.FullCache(model.cfg, 1, 4)
    with pytest.raises(WorkbookError):
        kc.forward(model, ids(5), cache)


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("n_kv_head", [8, 4, 2, 1])
@pytest.mark.parametrize("dtype,size", [(torch.float32, 4), (torch.float16, 2)])
def test_cache_bytes_equal_the_formula(n_kv_head, dtype, size):
    cfg = GPTConfig(n_layer=3, n_head=8, n_kv_head=n_kv_head, d_model=64, pos="rope")
    tokens = 37
    formula = 2 * 3 * n_kv_head * 8 * tokens * size
    assert kc.cache_bytes(3, n_kv_head, 8, tokens, size) == formula
    assert kc.FullCache(cfg, 1, tokens, dtype=dtype).nbytes == formula
    assert KVCache(cfg, 1, tokens, dtype=dtype).nbytes == formula
    assert kc.RollingCache(cfg, 1, 16, dtype=dtype).nbytes == 2 * 3 * n_kv_head * 8 * 16 * size  # W rows only


def test_memory_table_rows_all_match_and_gqa_shrinks():
    rows = cm.memory_table(tiny().cfg, [16, 64])
    assert rows and all(r["matches"] for r in rows)
    by_kv = {r["n_kv_head"]: r["formula_bytes"] for r in rows if r["tokens"] == 64}
    assert by_kv[4] == 4 * by_kv[1] and by_kv[2] == 2 * by_kv[1]


def test_token_passes_closed_form():
    for p, n in [(1, 1), (16, 10), (7, 100)]:
        brute = sum(p + i for i in range(n))
        assert cm.token_passes(p, n, cached=False) == brute
        assert cm.token_passes(p, n, cached=True) == p + n - 1
    model = tiny()
    assert cm.decode_flops(model, 16, 100, cached=False) > 20 * cm.decode_flops(model, 16, 100, cached=True)


# ----------------------------------------------------------------------------- rolling buffer
@pytest.mark.parametrize("window,n_kv_head", [(5, 4), (8, 2), (3, 1)])
@torch.no_grad()
def test_rolling_buffer_equals_windowed_attention(window, n_kv_head):
    """A ring of W rows, fed one token at a time, gives the logits of GPTConfig(window=W)
    run on the whole sequence at once without a cache (several wraps of the ring)."""
    model = tiny(n_kv_head=n_kv_head, window=window)
    x = ids(4 * window + 3, seed=window)
    cache = kc.RollingCache(model.cfg, 1, window)
    stepped = torch.cat([kc.forward(model, x[:, j:j + 1], cache) for j in range(x.shape[1])], dim=1)
    reference = model(x)                         # shared.model's windowed mask, no cache
    torch.testing.assert_close(stepped, reference, atol=1e-5, rtol=1e-5)
    hand_full = kc.forward(model, x, last_only=False)   # the chapter's own uncached windowed pass
    torch.testing.assert_close(hand_full, reference, atol=1e-5, rtol=1e-5)
    # the ring really is bounded, and a full-attention model gives different logits (the test can fail)
    assert cache.k[0].shape[2] == window and sorted(cache.positions()) == list(range(x.shape[1] - window, x.shape[1]))
    full = tiny(n_kv_head=n_kv_head)
    assert (full(x) - reference).abs().max() > 1e-3


def test_ring_slots_wrap():
    cache = kc.RollingCache(GPTConfig(n_layer=1, n_head=2, d_model=8, pos="rope"), 1, 4, n_sink=1)
    assert [cache.slot(p) for p in range(9)] == [0, 1, 2, 3, 1, 2, 3, 1, 2]
    with pytest.raises(WorkbookError):
        kc.RollingCache(GPTConfig(n_layer=1, n_head=2, d_model=8), 1, 4, n_sink=4)


# ----------------------------------------------------------------------------- attention sinks
@torch.no_grad()
def reference_sinks(model: GPT, x: torch.Tensor, n_sink: int, n_recent: int) -> torch.Tensor:
    """Full forward where each query sees the first n_sink tokens plus its last n_recent (text positions)."""
    cfg = model.cfg
    pos = torch.arange(x.shape[1])
    rope = kc.rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta)
    causal = pos[None, :] <= pos[:, None]
    mask = causal & (((pos[:, None] - pos[None, :]) < n_recent) | (pos[None, :] < n_sink))
    h = model.tok_emb(x)
    for layer, block in enumerate(model.blocks):
        h = h + kc.attention(block, block.attn_norm(h), layer, rope, None, mask)
        h = h + block.mlp(block.mlp_norm(h))
    return model.lm_head(model.norm_f(h))


@torch.no_grad()
def test_sinks_keep_the_first_rows_and_match_a_masked_forward():
    model = tiny()
    n_sink, size = 2, 6
    x = ids(25, seed=5)
    cache = kc.RollingCache(model.cfg, 1, size, n_sink=n_sink, sink_positions="text")
    stepped = torch.cat([kc.forward(model, x[:, j:j + 1], cache) for j in range(x.shape[1])], dim=1)
    torch.testing.assert_close(stepped, reference_sinks(model, x, n_sink, size - n_sink), atol=1e-5, rtol=1e-5)
    # the sink rows still hold tokens 0 and 1 after many wraps: their keys equal a fresh prefill's
    assert cache.positions()[:n_sink] == [0, 1]
    fresh = kc.FullCache(model.cfg, 1, n_sink)
    kc.forward(model, x[:, :n_sink], fresh)
    for layer in range(model.cfg.n_layer):
        torch.testing.assert_close(cache.k[layer][:, :, :n_sink], fresh.k[layer], atol=1e-6, rtol=1e-5)
    # without sinks the same ring has forgotten token 0
    plain = kc.RollingCache(model.cfg, 1, size)
    for j in range(x.shape[1]):
        kc.forward(model, x[:, j:j + 1], plain)
    assert 0 not in plain.positions()


@torch.no_grad()
def test_sinks_at_cache_positions_are_a_rope_shift():
    """Moving the sinks to sit just before the oldest rolling row changes nothing until the
    ring wraps, and afterwards equals rotating the stored sink keys by the shift."""
    model = tiny()
    x = ids(20, seed=9)
    a = kc.RollingCache(model.cfg, 1, 6, n_sink=2, sink_positions="cache")
    b = kc.RollingCache(model.cfg, 1, 6, n_sink=2, sink_positions="text")
    la = torch.cat([kc.forward(model, x[:, j:j + 1], a) for j in range(x.shape[1])], dim=1)
    lb = torch.cat([kc.forward(model, x[:, j:j + 1], b) for j in range(x.shape[1])], dim=1)
    torch.testing.assert_close(la[:, :6], lb[:, :6], atol=1e-6, rtol=1e-5)   # before the wrap: identical
    assert (la[:, 8:] - lb[:, 8:]).abs().max() > 1e-4                          # after: the sinks moved
    assert [a.sink_shift(p) for p in (3, 6, 7, 10)] == [0, 1, 2, 5]
    cos, sin = kc.rope_cos_sin(torch.tensor([3]), model.cfg.head_dim)
    k = torch.randn(1, 4, 1, model.cfg.head_dim)
    pos5 = kc.apply_rope(k, *kc.rope_cos_sin(torch.tensor([5]), model.cfg.head_dim))
    pos2 = kc.apply_rope(k, *kc.rope_cos_sin(torch.tensor([2]), model.cfg.head_dim))
    torch.testing.assert_close(kc.apply_rope(pos2, cos, sin), pos5, atol=1e-5, rtol=1e-5)  # R(2+3) = R(3) R(2)


# ----------------------------------------------------------------------------- quantized cache
@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_round_trip_is_within_half_a_step(bits):
    x = torch.randn(2, 3, 50, 16) * torch.logspace(-3, 1, 50)[None, None, :, None]   # rows of very different size
    q, scale = qk.quantize(x, bits)
    assert q.dtype == torch.int8 and scale.dtype == torch.float16 and scale.shape == (2, 3, 50, 1)
    assert q.abs().max() <= qk.QMAX[bits]
    err = (qk.dequantize(q, scale) - x).abs()
    assert (err <= scale.float() / 2 * (1 + 1e-3) + 1e-12).all()      # rounding: at most half a step
    # and the step is the row's own: the largest element of each row is hit (almost) exactly
    assert (q.abs().amax(-1) == qk.QMAX[bits]).float().mean() > 0.95
    zeros, zscale = qk.quantize(torch.zeros(1, 1, 2, 16), bits)
    assert (zeros == 0).all() and (qk.dequantize(zeros, zscale) == 0).all()


def test_int4_packing_round_trips_every_code_two_per_byte():
    codes = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)          # (3, 32): every 4-bit value
    packed = qk.pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 16)
    assert torch.equal(qk.unpack_int4(packed), codes)


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_quantized_cache_bytes_equal_the_formula(bits, n_kv_head):
    cfg = GPTConfig(n_layer=3, n_head=4, n_kv_head=n_kv_head, d_model=64, pos="rope")   # head_dim 16
    cache = qk.QuantizedCache(cfg, 2, 37, bits=bits)
    assert cache.nbytes == qk.quantized_cache_bytes(3, n_kv_head, 16, 37, bits, batch=2)
    assert cache.nbytes == 2 * 3 * n_kv_head * 37 * 2 * (16 * bits // 8 + 2)           # codes + fp16 scale
    assert kc.FullCache(cfg, 2, 37).nbytes / cache.nbytes == pytest.approx(64 / (16 * bits / 8 + 2))


@torch.no_grad()
def test_quantized_cache_stays_close_to_fp32_and_int4_moves_more_than_int8():
    model = tiny(n_kv_head=2)
    x = ids(40, seed=11)
    exact = qk.logits_through_cache(model, x, 32, n_prefill=8)
    torch.testing.assert_close(exact, model(x)[0].float(), atol=1e-5, rtol=1e-5)
    int8 = (qk.logits_through_cache(model, x, 8, n_prefill=8) - exact).abs().max().item()
    int4 = (qk.logits_through_cache(model, x, 4, n_prefill=8) - exact).abs().max().item()
    assert 0 < int8 < 0.05 * exact.abs().max().item()
    assert int4 > 3 * int8


@torch.no_grad()
def test_quantized_prefill_in_one_chunk_equals_token_by_token():
    """Each row is quantized on its own, so a chunked prefill sees exactly what decoding sees."""
    model = tiny()
    x = ids(20, seed=4)
    chunked = kc.forward(model, x, qk.QuantizedCache(model.cfg, 1, 20, bits=4), last_only=False)
    cache = qk.QuantizedCache(model.cfg, 1, 20, bits=4)
    stepped = torch.cat([kc.forward(model, x[:, j:j + 1], cache) for j in range(20)], dim=1)
    torch.testing.assert_close(chunked, stepped, atol=1e-5, rtol=1e-5)


def test_story_loss_through_the_fp32_cache_equals_shared_story_nats():
    from shared.corpus import HundredAcreWood
    from shared.evaluate import story_nats
    from shared.tokenizer import CharTokenizer

    stories = HundredAcreWood().stories(6, seed=3)
    tok = CharTokenizer.from_text("\n" + "".join(s.text for s in stories))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=2, n_head=4, d_model=32, block_size=256, **LLAMA)).eval()
    ref, kept_ref = story_nats(model, tok, stories)
    mine, kept = qk.story_nats_through_cache(model, tok, stories, 32, batch_size=4)
    assert kept == kept_ref and len(kept) > 3
    torch.testing.assert_close(mine, ref, atol=1e-3, rtol=1e-6)
    int4, _ = qk.story_nats_through_cache(model, tok, stories, 4, batch_size=4)
    assert (int4 - ref).abs().max() > 1e-6            # the quantized cache really is in the loop


def test_quantized_cache_rejects_odd_head_dim_for_int4_and_other_bit_widths():
    with pytest.raises(WorkbookError, match="even"):
        qk.QuantizedCache(GPTConfig(n_layer=1, n_head=2, d_model=10), 1, 4, bits=4)
    with pytest.raises(WorkbookError, match="8 or 4"):
        qk.QuantizedCache(GPTConfig(n_layer=1, n_head=2, d_model=8), 1, 4, bits=2)


# ----------------------------------------------------------------------------- sink heads
def test_sink_ratio_is_one_for_uniform_attention_and_not_for_a_trained_like_model():
    model = tiny()
    x = ids(40, seed=2)
    ratio = torch.tensor(cm.sink_ratio(model, x, from_query=10))
    assert ratio.shape == (2, 4) and (ratio - 1).abs().max() > 0.05
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.zero_()     # every score 0: softmax is uniform over the visible keys
    torch.testing.assert_close(torch.tensor(cm.sink_ratio(model, x, from_query=10)), torch.ones(2, 4),
                               atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CHAPTER, tmp_path_factory.mktemp("ch06"))


PLOTS = {"kv_cache_diagram", "speedup", "step_latency", "memory", "quantized_cache", "hit_miss", "ring_buffer",
         "long_text_loss", "sink_attention"}


def test_main_quick_end_to_end(quick_run):
    out, r = quick_run
    res = results_of(out, CHAPTER)
    assert res["meta"]["preset"] == "quick"
    assert res["identical"]["identical"] is True and res["headline"]["identical_tokens"] is True
    assert res["identical"]["max_abs_diff_vs_shared_kvcache"] < 1e-4
    assert res["long_text"]["ring_vs_window_model_max_diff"] < 1e-4
    assert all(row["matches"] for row in res["memory"]["model_table"])
    rows = res["speed"]["rows"]
    assert [row["new_tokens"] for row in rows] == [5, 20, 60]
    assert all(row["uncached_s"] > 0 and row["cached_s"] > 0 for row in rows)
    assert rows[-1]["token_pass_ratio"] > rows[0]["token_pass_ratio"]
    # the biggest measured cache shows up in the process' memory
    big = max(res["memory"]["measured_peak"], key=lambda x: x["formula_MiB"])
    assert 0.5 * big["formula_MiB"] < big["peak_growth_MiB"] < 3 * big["formula_MiB"]
    quant = {q["bits"]: q for q in res["quantized"]["rows"]}
    assert set(quant) == {32, 8, 4}
    assert all(q["bytes_per_token"] == q["formula_bytes_per_token"] for q in quant.values())
    assert quant[32]["max_abs_logit_change"] == 0 and quant[32]["story_loss_change"] == 0
    assert 0 < quant[8]["max_abs_logit_change"] < quant[4]["max_abs_logit_change"]
    full = res["trace"]["steps"]["full cache"]
    assert all(st["computed"] == [st["query"]] for st in full)            # one miss per step
    assert len(res["trace"]["steps"]["no cache"][-1]["computed"]) == len(res["trace"]["tokens"])
    for name in PLOTS:
        assert (out / "plots" / CHAPTER / f"{name}.png").stat().st_size > 10_000
    assert (out / "animations" / CHAPTER / "hit_miss.gif").exists()


def test_visualize_redraws_from_json(quick_run, tmp_path):
    out, _ = quick_run
    for p in (out / "plots" / CHAPTER).glob("*.png"):
        p.unlink()
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {p.stem for p in (out / "plots" / CHAPTER).glob("*.png")} == PLOTS
    from PIL import Image

    assert all(Image.open(p).width <= 1400 for p in (out / "plots" / CHAPTER).glob("*.png"))
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", tmp_path / "empty")
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error:")


@pytest.mark.parametrize("args, message", [(["--lengths", "10,x"], "expected a positive integer, got 'x'"),
                                           (["--lengths", "10,0"], "expected a positive integer, got '0'"),
                                           (["--cache-size", "0"], "a positive integer"),
                                           (["--sinks", "-1"], "an integer >= 0"),
                                           (["--sinks", "999"], "sinks < cache size")])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *args], message, tmp_path)
