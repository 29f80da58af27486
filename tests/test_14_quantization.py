"""Chapter 14 · Quantization: the quantizers' error bound, int4 packing, AWQ's search on planted
outlier channels, planting outliers without changing the function, the AutoAWQ GEMM layout, W8A8
against a float reference, the straight-through estimator, bitsandbytes' layers on CPU,
shared/gguf_export.py (gguf's reader, the RoPE permutation, and llama.cpp when it imports), and
the scripts end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from shared import gguf_export, stacks
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, apply_rope, rope_cos_sin
from shared.tokenizer import CharTokenizer

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "14_quantization"
Q = load_chapter_module(CHAPTER, "quantizers")
awq = load_chapter_module(CHAPTER, "awq")
awq_layout = load_chapter_module(CHAPTER, "awq_layout")
measures = load_chapter_module(CHAPTER, "quant_measures")
planted_outliers = load_chapter_module(CHAPTER, "planted_outliers")
bnb_layers = load_chapter_module(CHAPTER, "bnb_layers")
QuantSpec = Q.QuantSpec


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def weights(rows=48, cols=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[3, 7] = 0.9          # one big weight: stretches its tensor / row / group range
    w[10] += 0.2           # an all-positive-shifted row: where zero-point beats absmax
    return w


# ----------------------------------------------------------------------------- quantizers
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group", ["tensor", "channel", 16])
def test_rounding_error_is_at_most_half_a_step(bits, symmetric, group):
    w = weights()
    qt = Q.quantize(w, QuantSpec(bits, symmetric, group))
    err = (Q.dequantize(qt) - w).abs()
    assert (err <= Q.element_scale(qt) / 2 * (1 + 1e-5) + 1e-9).all()
    assert qt.q.min() >= qt.spec.qmin and qt.q.max() <= qt.spec.qmax
    if symmetric:  # absmax: the largest |w| of each block lands exactly on +-qmax
        assert (qt.q.abs().amax() == qt.spec.qmax)


def test_finer_granularity_and_more_bits_reduce_error():
    w = weights()
    rel = lambda spec: float((Q.quant_dequant(w, spec) - w).norm() / w.norm())  # noqa: E731
    assert rel(QuantSpec(4, True, "tensor")) > rel(QuantSpec(4, True, "channel")) > rel(QuantSpec(4, True, 16))
    assert rel(QuantSpec(8, True, 16)) < rel(QuantSpec(4, True, 16)) / 8     # ~16x smaller steps
    assert rel(QuantSpec(4, False, 16)) < rel(QuantSpec(4, True, 16))         # zero-point uses all 16 levels


def test_known_values_absmax_int8():
    w = torch.tensor([[0.5, -1.0, 0.25, 1.0 / 127]])
    qt = Q.quantize(w, QuantSpec(8, True, "channel"))
    assert torch.allclose(qt.scale, torch.tensor([[1.0 / 127]]))
    assert qt.q.tolist() == [[64, -127, 32, 1]]   # 63.5 rounds to even (64), exactly like torch.round


def test_int4_packing_round_trip():
    qt = Q.quantize(weights(), QuantSpec(4, False, 16))
    packed = Q.pack_int4(qt.q)
    assert packed.dtype == torch.uint8 and packed.numel() * 2 == qt.q.numel()
    assert torch.equal(Q.unpack_int4(packed), qt.q)
    assert Q.pack_int4(torch.tensor([[1, 2]])).item() == 0x21        # element 0 low nibble, 1 high
    signed = Q.quantize(weights(), QuantSpec(4, True, 16)).q          # -7..7 stored with offset 8
    assert torch.equal(Q.unpack_int4(Q.pack_int4(signed), signed=True), signed)
    for bits in (2, 3):
        codes = Q.quantize(weights(), QuantSpec(bits, False, 16)).q
        packed = Q.pack_bits(codes, bits)
        assert packed.size == math.ceil(codes.numel() * bits / 8)
        assert np.array_equal(Q.unpack_bits(packed, bits, codes.numel()), codes.flatten().numpy())


def test_straight_through_estimator_passes_gradient():
    w = weights().requires_grad_()
    spec = QuantSpec(3, False, 16)
    out = Q.FakeQuant.apply(w, spec)
    assert torch.equal(out.detach(), Q.quant_dequant(w.detach(), spec))
    upstream = torch.randn_like(w)
    out.backward(upstream)
    assert torch.equal(w.grad, upstream)   # round() would give zero gradient without the STE


def test_w8a8_matches_float_and_int_kernel():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96, bias=False)
    x = torch.randn(2, 20, 64)
    x[..., 5] *= 20  # an outlier channel
    ref = lin(x)
    sim = Q.W8A8Linear(lin, use_int_mm=False)(x)
    assert ((sim - ref).norm() / ref.norm()) < 0.03
    if Q.int_mm_available():
        torch.testing.assert_close(Q.W8A8Linear(lin, use_int_mm=True)(x), sim, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- AWQ
def planted_layer(seed=1):
    """A linear whose input has four loud channels (30x the rest): where AWQ's scales should help."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2048, 128, generator=g)
    loud = torch.tensor([3, 40, 77, 100])
    x[:, loud] *= 30.0
    lin = torch.nn.Linear(128, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(64, 128, generator=g) * 0.05)
    return lin, x, loud


@pytest.mark.parametrize("group", ["channel", 32])
def test_awq_search_protects_planted_outlier_channels(group):
    lin, x, loud = planted_layer()
    w0 = lin.weight.detach().clone()
    spec = QuantSpec(4, False, group)
    with torch.no_grad():
        rtn = float((x @ (Q.quant_dequant(w0, spec) - w0).T).pow(2).mean())
        s, alpha, curve = awq.search_scale(lin, [lin], x, spec, grid=20)
    assert torch.equal(lin.weight, w0)                                   # the search leaves the layer as it was
    assert curve[0] == pytest.approx(rtn, rel=1e-4)                      # alpha = 0 is RTN
    assert curve[0] == pytest.approx(awq.output_error([w0], x, torch.ones(128), spec), rel=1e-4)
    assert alpha > 0 and min(curve) < 0.7 * curve[0]                     # the scales cut the output error
    assert s[loud].min() > s[~torch.isin(torch.arange(128), loud)].max()  # the loud channels scaled up
    assert s.max() * s.min() == pytest.approx(1.0, rel=1e-4)
    # and it is real AWQ, not a lucky grid point: quantizing W diag(s) and dividing by s beats RTN
    with torch.no_grad():
        awq_err = float((x @ (Q.quant_dequant(w0 * s, spec) / s - w0).T).pow(2).mean())
    assert awq_err == pytest.approx(min(curve), rel=1e-4) and awq_err < 0.7 * rtn


def tiny_llama(seed=0, vocab=40, layers=2):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=layers, n_head=4, d_model=64, block_size=64, pos="rope",
                         norm="rmsnorm", activation="swiglu", tie_embeddings=False)).eval()


def loud_tiny_llama():
    """tiny_llama with a few loud channels after each norm, so the searched scales are not all 1."""
    model = tiny_llama()
    with torch.no_grad():
        for b in model.blocks:
            b.attn_norm.weight[[3, 17]] = 15.0
            b.mlp_norm.weight[[5, 40]] = 15.0
    return model


def test_qkv_scales_are_judged_by_the_attention_output():
    model = loud_tiny_llama()
    x = torch.randint(0, 40, (2, 32))
    xs, kw = awq.block_inputs(model, [x])
    block = model.blocks[0]
    h = block.attn_norm(xs[0])
    lins = [block.attn.q_proj, block.attn.k_proj, block.attn.v_proj]
    spec = QuantSpec(4, False, 16)
    with torch.no_grad():
        ref = block.attn(h, **kw)
        rtn = copy_with(block.attn, lambda w: Q.quant_dequant(w, spec), ("q_proj", "k_proj", "v_proj"))
        rtn_err = float((rtn(h, **kw) - ref).pow(2).mean())
        _, _, curve = awq.search_scale(block.attn, lins, h, spec, grid=4, **kw)
    assert curve[0] == pytest.approx(rtn_err, rel=1e-4)   # softmax, RoPE and o_proj included, o_proj not rounded


def copy_with(module, fn, names):
    import copy

    m = copy.deepcopy(module)
    with torch.no_grad():
        for n in names:
            getattr(m, n).weight.copy_(fn(getattr(m, n).weight))
    return m


def test_awq_folding_leaves_the_float_model_unchanged():
    model = loud_tiny_llama()
    x = torch.randint(0, 40, (2, 32))
    spec = QuantSpec(4, False, 32)
    folded, report = awq.apply_awq(model, [x], spec, grid=6, clip=False)
    assert {r["group"] for r in report["scales"]} == {"qkv", "o", "gate_up", "down"} and not report["clip"]
    assert any(r["alpha"] > 0 for r in report["scales"])              # some weights really were rescaled
    assert not torch.allclose(folded.blocks[0].attn.q_proj.weight, model.blocks[0].attn.q_proj.weight)
    torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)
    assert all(r["awq_error"] <= r["rtn_error"] for r in report["scales"])
    clipped, report = awq.apply_awq(model, [x], spec, grid=6, clip=True)
    names = {r["linear"] for r in report["clip"]}
    assert names == {"attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    for a, b in zip(clipped.blocks, folded.blocks):                   # same scales; q/k are never clipped
        assert torch.equal(a.attn.q_proj.weight, b.attn.q_proj.weight)
        assert (a.mlp.down_proj.weight.abs() <= b.mlp.down_proj.weight.abs() + 1e-7).all()


@pytest.mark.parametrize("group", ["channel", 16])
def test_clipping_never_increases_a_groups_error(group):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(48, 64, generator=g) * 0.05
    w[torch.arange(48), torch.randint(0, 64, (48,), generator=g)] = 0.6   # one stray weight per row
    x = torch.randn(600, 64, generator=g)
    spec = QuantSpec(4, False, group)
    max_val, err, rtn_err = awq.search_clip(w, x, spec, grid=20)
    assert (err <= rtn_err).all()                                      # shrink 0 (no clip) is on the grid
    assert (err < rtn_err).float().mean() > 0.2 and err.sum() < 0.98 * rtn_err.sum()   # stray weights: clip pays
    org = Q._grouped(w, group).abs().amax(-1)
    assert (max_val <= org + 1e-7).all() and (max_val >= 0.5 * org - 1e-7).all()
    # the reported error is what the clipped, rounded weights really give on those tokens
    lin = torch.nn.Linear(64, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
        awq.clip_(lin, max_val, spec)
    xs = x[torch.linspace(0, len(x) - 1, 512).long()]
    qg, wg = Q._grouped(Q.quant_dequant(lin.weight.detach(), spec), group), Q._grouped(w, group)
    xg = xs.reshape(len(xs), wg.shape[1], -1)
    real = torch.einsum("tng,ong->ont", xg, qg - wg).pow(2).mean(-1)
    torch.testing.assert_close(real, err, rtol=1e-4, atol=1e-9)


def test_per_story_matches_story_loss_and_paired_difference():
    from shared.corpus import HundredAcreWood
    from shared.evaluate import story_loss

    stories = HundredAcreWood().stories(12, seed=5)
    tok = CharTokenizer.from_text("\n" + "".join(st.text for st in stories))
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, block_size=512, pos="rope",
                          norm="rmsnorm", activation="swiglu")).eval()
    nats, chars, kept = measures.per_story(model, tok, stories, "cpu")
    ref = story_loss(model, tok, stories, "cpu")
    assert len(kept) == ref["stories"] > 0
    assert float(nats.sum() / chars.sum()) == pytest.approx(ref["model_nats_per_char"], rel=1e-5)
    d, se = measures.paired_difference(nats + 0.01 * chars, nats, chars)   # a constant 0.01 nats/char worse
    assert d == pytest.approx(0.01) and se == pytest.approx(0.0, abs=1e-12)
    d, se = measures.paired_difference(nats * 1.1, nats, chars)            # differences vary: se > 0
    assert d > 0 and se > 0


def test_awq_gemm_layout_round_trip():
    assert awq_layout.AWQ_REVERSE == (0, 4, 1, 5, 2, 6, 3, 7)
    packed = awq_layout.pack_awq(torch.arange(8)[None])
    assert packed.item() == 0x75316420   # nibble slot i holds column ORDER[i]: 7,5,3,1,6,4,2,0 from the top
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (32, 48), generator=g)
    assert torch.equal(awq_layout.unpack_awq(awq_layout.pack_awq(codes)), codes)
    w = weights(rows=48, cols=64)
    t = awq_layout.to_awq_gemm(w, group=16)
    assert t["qweight"].shape == (64, 6) and t["qweight"].dtype == torch.int32
    assert t["qzeros"].shape == (4, 6) and t["scales"].shape == (4, 48) and t["scales"].dtype == torch.float16
    qt = Q.quantize(w, QuantSpec(4, False, 16))
    assert torch.equal(awq_layout.unpack_awq(t["qweight"]).T, qt.q.long())
    # dequantized with the stored fp16 scales == the chapter's own dequant up to fp16 rounding of the scale
    torch.testing.assert_close(awq_layout.from_awq_gemm(t, 16), awq_layout.awq_rtn_reference(w, 16),
                               atol=1e-3 * w.abs().max().item(), rtol=1e-3)


# ----------------------------------------------------------------------------- GGUF (shared/gguf_export.py)
def interleaved_rope(x, positions, theta=10000.0):
    """llama.cpp's 'normal' RoPE: dims (2i, 2i+1) rotate together by angle p * theta^(-2i/d)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = positions.float()[:, None] * inv[None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = a * ang.cos() - b * ang.sin()
    out[..., 1::2] = a * ang.sin() + b * ang.cos()
    return out


def test_qk_permutation_turns_rotate_half_into_interleaved_rope():
    torch.manual_seed(0)
    heads, hd, d, t = 2, 8, 16, 5
    wq, wk, x = torch.randn(heads * hd, d), torch.randn(heads * hd, d), torch.randn(t, d)
    pos = torch.arange(t)
    cos, sin = rope_cos_sin(pos, hd)
    split = lambda y: y.reshape(t, heads, hd).transpose(0, 1)  # noqa: E731
    q_hf, k_hf = apply_rope(split(x @ wq.T), cos, sin), apply_rope(split(x @ wk.T), cos, sin)
    q_cpp = interleaved_rope(split(x @ gguf_export.permute_qk(wq, heads).T), pos)
    k_cpp = interleaved_rope(split(x @ gguf_export.permute_qk(wk, heads).T), pos)
    torch.testing.assert_close(q_cpp @ k_cpp.transpose(-1, -2), q_hf @ k_hf.transpose(-1, -2), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(interleaved_rope(split(x @ wq.T), pos), q_hf, atol=1e-3)   # the permutation matters
    assert torch.equal(gguf_export.unpermute_qk(gguf_export.permute_qk(wq, heads), heads), wq)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    text = "Pooh and Piglet walked.\nEeyore sat by the river, sad.\n"
    tok = CharTokenizer.from_text(text)
    model = tiny_llama(vocab=tok.vocab_size)
    folder = tmp_path_factory.mktemp("gguf")
    infos = {kind: gguf_export.export(model, tok, folder / f"m.{kind}.gguf", kind) for kind in gguf_export.TYPES}
    return model, tok, text, infos


def test_gguf_files_read_back_with_the_right_types_and_shapes(exported):
    import gguf

    model, tok, text, infos = exported
    expect = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        ref = model(ids)
    for kind, info in infos.items():
        reader = gguf.GGUFReader(info["path"])
        assert reader.fields["general.architecture"].contents() == "llama"
        assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
        assert reader.fields["tokenizer.ggml.tokens"].contents() == [c.replace(" ", "\u2581") for c in tok.chars]
        cfg, state, meta = gguf_export.read_back(info["path"])
        assert meta["types"]["blk.0.attn_q.weight"] == expect[kind]
        assert meta["types"]["blk.1.ffn_norm.weight"] == "F32"                      # 1-D gains stay F32
        assert meta["shapes"]["blk.0.ffn_gate.weight"] == tuple(model.blocks[0].mlp.gate_proj.weight.shape)
        assert meta["shapes"]["token_embd.weight"] == (tok.vocab_size, 64)
        assert (cfg.n_layer, cfg.n_head, cfg.d_model, cfg.d_ff) == (2, 4, 64, model.cfg.d_ff)
        back = gguf_export.load_model(info["path"])
        with torch.no_grad():
            diff = float((back(ids) - ref).abs().max())
        assert diff <= {"f32": 0.0, "f16": 1e-2, "q8_0": 5e-2, "q4_0": 0.5}[kind], (kind, diff)
    bpw = {k: round(v["bits_per_weight"], 2) for k, v in infos.items()}
    assert bpw == {"f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q4_0": 4.5}


def test_gguf_export_rejects_bad_input(exported, tmp_path):
    model, tok, _, _ = exported
    with pytest.raises(WorkbookError):
        gguf_export.export(model, tok, tmp_path / "x.gguf", "q3_k")
    gpt2ish = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, block_size=16))
    with pytest.raises(WorkbookError):
        gguf_export.export(gpt2ish, tok, tmp_path / "x.gguf", "f32")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(WorkbookError):
        gguf_export.read_back(tmp_path / "junk.gguf")


@pytest.mark.skipif(not stacks.available("llama-cpp"), reason="llama-cpp-python not installed (uv sync --extra llama)")
def test_llama_cpp_runs_the_gguf_with_the_same_logits(exported):
    model, tok, text, infos = exported
    ids = tok.encode(text)
    ref = model(torch.tensor([ids]))[0].detach().numpy()
    llm = gguf_export.load_llama_cpp(infos["f32"]["path"], n_ctx=64, n_threads=1)
    try:
        logits = gguf_export.llama_cpp_logits(llm, ids)
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == ids
        assert llm.detokenize(ids).decode() == text
    finally:
        llm.close()
    assert np.abs(logits - ref).max() <= 1e-4
    llm = gguf_export.load_llama_cpp(infos["q8_0"]["path"], n_ctx=64, n_threads=1)
    try:
        q8 = gguf_export.llama_cpp_logits(llm, ids)
    finally:
        llm.close()
    assert 0 < np.abs(q8 - ref).max() < 0.05     # quantized: close, not equal


# ----------------------------------------------------------------------------- planted outliers
def test_planting_outliers_keeps_the_function_and_makes_round_to_nearest_hurt():
    model = tiny_llama(layers=2)
    x = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(4))
    channels = planted_outliers.loudest_channels(model, [x], n=3)
    assert {k: len(v) for k, v in channels.items()} == {f"{i}.{n}": 3 for i in range(2)
                                                         for n in ("attn_norm", "mlp_norm", "down")}
    planted = planted_outliers.plant(model, channels, 30.0, check_ids=x)       # self-checks the logits too
    torch.testing.assert_close(planted(x), model(x), atol=1e-4, rtol=1e-4)
    c = channels["0.attn_norm"]
    assert torch.allclose(planted.blocks[0].attn_norm.weight[c], 30 * model.blocks[0].attn_norm.weight[c])
    inputs = awq.collect_inputs(planted, [x])["blocks.0.attn.q_proj"].abs().mean(0)
    assert inputs.max() / inputs.median() > 10                                  # now big-model loud
    spec = QuantSpec(4, False, "channel")
    with torch.no_grad():
        err = {name: float((Q.quantize_model(m, spec)(x) - m(x)).pow(2).mean()) for name, m in
               (("plain", model), ("planted", planted))}
        folded, _ = awq.apply_awq(planted, [x], spec, grid=10)
        err["awq"] = float((Q.quantize_model(folded, spec)(x) - planted(x)).pow(2).mean())
    assert err["planted"] > 3 * err["plain"]      # the rewrite is free in float, not after rounding
    assert err["awq"] < 0.5 * err["planted"]      # AWQ's scales undo it


# ----------------------------------------------------------------------------- bitsandbytes on CPU
@pytest.mark.skipif(not stacks.available("bitsandbytes"), reason="bitsandbytes not installed")
def test_bitsandbytes_layers_run_on_cpu_with_the_expected_bits_and_small_loss_change():
    torch.manual_seed(0)                           # d_model 128 -> down_proj reads 352 = 5.5 blocks of 64 per row,
    model = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=4, d_model=128, block_size=64, pos="rope",
                          norm="rmsnorm", activation="swiglu", tie_embeddings=False)).eval()   # as in the zoo model
    x = torch.randint(0, 40, (2, 32), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(model(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        change, bits = {}, {}
        for kind in bnb_layers.KINDS:
            bm = bnb_layers.bnb_model(model, kind)
            assert {type(m).__name__ for m in bm.modules()} & {"Linear8bitLt", "Linear4bit"}
            bits[kind] = bnb_layers.bnb_bits(bm)
            loss = torch.nn.functional.cross_entropy(bm(x)[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten())
            change[kind] = float(loss - ref)
        ours = bnb_layers.blockwise_model(model)
        change["ours"] = float(torch.nn.functional.cross_entropy(ours(x)[:, :-1].flatten(0, 1), x[:, 1:].flatten())
                               - ref)
    widths = [lin.in_features for _, lin in Q.quantizable(model)]
    int8_bits = 8 + 32 * sum(1 / w for w in widths) / len(widths)   # int8 codes + one fp32 scale per row
    assert bits["int8"] == pytest.approx(int8_bits, rel=0.05) and bits["int8+outliers"] == bits["int8"]
    assert bits["nf4"] == pytest.approx(4.125, abs=0.01) and bits["fp4"] == pytest.approx(4.125, abs=0.01)
    assert bnb_layers.blockwise_bits() == 4.25
    assert all(abs(v) < 0.05 for v in change.values()), change      # a random model: close to its own fp32
    assert abs(change["int8"]) < abs(change["fp4"])                   # 8 bits sit closer than 4


def test_blockwise_model_uses_blocks_of_64_across_rows():
    lin = torch.nn.Linear(96, 4, bias=False)     # 384 weights = 6 blocks, some spanning two rows
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 96) * 0.05)
        lin.weight[1, 10] = 2.0                  # one big weight: only its own block of 64 gets a coarse step
    model = torch.nn.Module()
    model.q_proj = lin
    out = bnb_layers.blockwise_model(model)
    err = (out.q_proj.weight - lin.weight).abs().flatten().reshape(-1, 64).amax(1)
    assert err[1] > 5 * err[[0, 2, 3, 4, 5]].max()   # flat index 106 lies in block 1 (64..127)


# ----------------------------------------------------------------------------- the scripts
@pytest.mark.parametrize("args, message", [(["--group-size", "24"], "power of two"),
                                           (["--low-bits", "4,9"], "--low-bits"),
                                           (["--outlier-factor", "0"], "--outlier-factor")])
def test_bad_input_exits_2_with_one_error_line(args, message, tmp_path):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *args], message, tmp_path)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out, _ = run_quick(CHAPTER, tmp_path_factory.mktemp("quick"))
    return out, results_of(out, CHAPTER)


def test_main_quick_end_to_end(quick):
    _, r = quick
    h = r["headline"]
    assert h["floor_nats_per_char"] < h["fp32_nats_per_char"]
    assert all(row["max_err_over_half_scale"] <= 1 + 1e-4 for row in r["error_vs_bits"])
    for name in ("plain", "planted"):
        sizes = {row["method"]: row["bytes_on_disk"] for row in r["ptq"][name]}
        assert sizes["fp32"] > sizes["RTN int8 absmax channel"] > sizes["RTN int4 absmax channel"]
    # planting is exact in float: both models score the same before quantizing
    assert r["ptq"]["planted"][0]["nats_per_char"] == pytest.approx(r["ptq"]["plain"][0]["nats_per_char"], abs=1e-4)
    assert {row["bits"] for row in r["qat"]["rows"]} == {4, 3, 2}
    assert [row["type"] for row in r["gguf"]["rows"]] == ["F32", "F16", "Q8_0", "Q4_0"]
    assert r["awq_export"]["codes_roundtrip_exact"]
    rows = r["awq_vs_rtn"]["rows"]
    assert all("awq_scales_only_vs_fp32" in row and row["awq_minus_rtn_se"] > 0 for row in rows)
    assert all(row["module_error_ratio"] <= 1 for row in rows)
    if stacks.available("bitsandbytes"):
        methods = {(row["model"], row["method"]) for row in r["bitsandbytes"]["rows"]}
        assert ("planted", "bitsandbytes nf4") in methods and ("plain", "ours int4 absmax, blocks of 64") in methods
    if stacks.available("llama-cpp"):
        assert r["gguf"]["checks"]["f32_logits_match_torch_1e-4"] and r["gguf"]["checks"]["q8_0_ppl_within_1pct"]
        assert r["gguf"]["checks"]["tokenizer_roundtrip"]
    report = load_chapter_module(CHAPTER, "report")
    assert report.headline(r) == r["headline"] and "AWQ vs RTN" in report.notes(r)


def test_visualize_redraws_every_figure(quick):
    out, _ = quick
    plots = out / "plots" / CHAPTER
    for p in plots.glob("*.png"):
        p.unlink()
    redraw = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert redraw.returncode == 0, redraw.stderr[-2000:]
    assert {p.stem for p in plots.glob("*.png")} == {"quantization_diagram", "error_vs_bits", "histograms",
                                                     "loss_vs_size", "awq_vs_rtn", "qat"}
