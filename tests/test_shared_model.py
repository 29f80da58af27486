"""The shared transformer: causality, attention implementations, GQA, RoPE, KV cache, HF parity."""
import math

import pytest
import torch

from shared import model as model_lib
from shared.errors import WorkbookError
from shared.model import GPT, Block, GPTConfig, KVCache, alibi_slopes, apply_rope, rope_cos_sin, sample_logits

VARIANTS = {
    "gpt2-like": dict(),
    "llama-gqa": dict(pos="rope", norm="rmsnorm", activation="swiglu", n_kv_head=2),
    "alibi": dict(pos="alibi"),
    "sinusoidal-window": dict(pos="sinusoidal", window=5),
    "nopos-postnorm": dict(pos="none", norm_position="post"),
    "moe": dict(n_experts=4, expert_top_k=2),
}


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=4, d_model=32, **kw)).eval()


@pytest.mark.parametrize("name", VARIANTS)
def test_future_tokens_never_change_past_logits(name):
    m = tiny(**VARIANTS[name])
    x = torch.randint(40, (2, 24))
    y = x.clone()
    y[:, 12:] = (y[:, 12:] + 7) % 40
    assert torch.allclose(m(x)[:, :12], m(y)[:, :12], atol=1e-6)
    assert not torch.allclose(m(x)[:, 12:], m(y)[:, 12:], atol=1e-3)  # and the future does change


@pytest.mark.parametrize("name", VARIANTS)
def test_explicit_attention_equals_sdpa(name):
    m = tiny(**VARIANTS[name])
    e = GPT(GPTConfig(**{**m.cfg.to_dict(), "attn_impl": "explicit"})).eval()
    e.load_state_dict(m.state_dict())
    x = torch.randint(40, (3, 20))
    assert (m(x) - e(x)).abs().max() < 1e-5


@pytest.mark.parametrize("name", VARIANTS)
def test_kv_cache_logits_and_generation_match_uncached(name):
    m = tiny(**VARIANTS[name])
    x = torch.randint(40, (2, 20))
    cache = KVCache(m.cfg, 2, 20)
    chunks = [m(x[:, :7], cache=cache), m(x[:, 7:8], cache=cache), m(x[:, 8:], cache=cache)]
    assert (torch.cat(chunks, 1) - m(x)).abs().max() < 1e-5
    g1 = m.generate(x[:, :4], 12, temperature=0, use_cache=True)
    g2 = m.generate(x[:, :4], 12, temperature=0, use_cache=False)
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("use_cache", [True, False])
def test_num_samples_equals_repeating_the_prompt(use_cache):
    """num_samples=n runs each prompt once and samples n continuations: the same tokens as
    feeding the prompt n times, row for row, for the same generator state."""
    m = tiny(pos="rope", n_kv_head=2)
    x = torch.randint(40, (2, 9))
    many = m.generate(x, 6, temperature=1.0, use_cache=use_cache, num_samples=3,
                      generator=torch.Generator().manual_seed(5))
    repeated = m.generate(x.repeat_interleave(3, dim=0), 6, temperature=1.0, use_cache=use_cache,
                          generator=torch.Generator().manual_seed(5))
    assert many.shape == (6, 15) and torch.equal(many[:, :9], x.repeat_interleave(3, dim=0))
    assert torch.equal(many, repeated)
    assert len({tuple(r) for r in many[:3, 9:].tolist()}) > 1       # the samples of one prompt differ


def loud(**kw) -> GPT:
    """tiny() with weights far from the init's near-zero scale, so every prompt gives different,
    peaked next-token logits (with the init's, all logits are within ~0.1 of each other)."""
    m = tiny(**kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 1.0))
    return m


@pytest.mark.parametrize("use_cache", [True, False])
def test_num_samples_continue_their_own_prompt(use_cache, monkeypatch):
    """Every step's logits, for every output row, are the model's logits on that row's own prompt
    and tokens so far: row i*n + j continues prompt i. Read from what generate hands the sampler."""
    m = loud(pos="rope", n_kv_head=2)
    x = torch.randint(40, (2, 7), generator=torch.Generator().manual_seed(1))
    seen, real = [], model_lib.sample_logits

    def recording_sampler(logits, *args, **kwargs):
        seen.append(logits.clone())
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(model_lib, "sample_logits", recording_sampler)
    out = m.generate(x, 5, use_cache=use_cache, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert out.shape == (6, 12) and len(seen) == 5
    assert torch.equal(out[:, :7], x.repeat_interleave(3, dim=0))
    with torch.no_grad():
        for step, logits in enumerate(seen):
            expected = m(out[:, :7 + step])[:, -1]   # each row on its own, in one full forward
            assert (logits - expected).abs().max() < 1e-4, step
    assert (seen[0][0] - seen[0][3]).abs().max() > 1.0    # the two prompts' logits differ (so a mix-up shows)


def test_top_p_keeps_the_smallest_prefix_and_renormalises(monkeypatch):
    """Top-p at p = 0.8, 0.88 and 0.9 on logits [1, 3, 2, -1] (and the same reversed): the probabilities
    handed to the sampler, against a hand computation. softmax = [.0889, .6572, .2418, .0120]."""
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0], [-1.0, 2.0, 3.0, 1.0]])
    e = [math.exp(v) for v in (1.0, 3.0, 2.0, -1.0)]
    # p = 0.8: 3 alone has .657 < .8, with 2 it has .899 >= .8 -> keep {3, 2}
    keep2 = [0.0, e[1] / (e[1] + e[2]), e[2] / (e[1] + e[2]), 0.0]
    # p = 0.9: .899 < .9, so the next token (1, .089) joins -> keep {3, 2, 1}
    z3 = e[0] + e[1] + e[2]
    keep3 = [e[0] / z3, e[1] / z3, e[2] / z3, 0.0]
    handed, real = [], torch.multinomial

    def recording_multinomial(probs, *args, **kwargs):
        handed.append(probs.clone())
        return real(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    for top_p, row in ((0.8, keep2), (0.88, keep2), (0.9, keep3)):   # .88: just under the .899 that two reach
        handed.clear()
        sample_logits(logits, top_p=top_p, generator=torch.Generator().manual_seed(0))
        (probs,) = handed
        assert probs[0].tolist() == pytest.approx(row, abs=1e-6)
        assert probs[1].tolist() == pytest.approx(row[::-1], abs=1e-6)   # the same, in the other row's order
    # temperature applies before the cut: at T = 2 the softmax is flatter and p = 0.8 keeps three tokens
    handed.clear()
    sample_logits(logits[:1], temperature=2.0, top_p=0.8, generator=torch.Generator().manual_seed(0))
    h = [math.exp(v / 2) for v in (1.0, 3.0, 2.0)]
    assert handed[0][0].tolist() == pytest.approx([h[0] / sum(h), h[1] / sum(h), h[2] / sum(h), 0.0], abs=1e-6)


def test_sliding_window_sees_itself_and_window_minus_one_before():
    m = tiny(pos="sinusoidal", window=5, attn_impl="explicit")   # near-uniform weights: every visible key > 0
    block = m.blocks[1]
    block.attn.record = True
    with torch.no_grad():
        m(torch.randint(40, (1, 12), generator=torch.Generator().manual_seed(2)))
    i, j = torch.arange(12)[:, None], torch.arange(12)[None, :]
    visible = (i - j >= 0) & (i - j < 5)
    w = block.attn.weights[0]
    assert torch.equal(w > 0, visible.expand_as(w))


def test_alibi_slopes_are_the_papers():
    """Press et al.: for n heads a geometric sequence from 2^(-8/n); for 12 heads the 8-head slopes
    followed by every other one of the 16-head slopes."""
    assert alibi_slopes(8).tolist() == pytest.approx([2.0 ** -k for k in range(1, 9)], rel=1e-6)
    assert alibi_slopes(4).tolist() == pytest.approx([2.0 ** -k for k in (2, 4, 6, 8)], rel=1e-6)
    assert alibi_slopes(12).tolist() == pytest.approx([2.0 ** -k for k in range(1, 9)]
                                                      + [2.0 ** -k for k in (0.5, 1.5, 2.5, 3.5)], rel=1e-6)


@pytest.mark.parametrize("position", ["pre", "post"])
def test_block_wiring_pre_and_post_norm(position):
    """Pre-norm: x + attn(norm(x)), then + mlp(norm(.)). Post-norm (2017): norm(x + attn(x)), then
    norm(. + mlp(.)). Written out from the block's own parts."""
    torch.manual_seed(0)
    block = Block(GPTConfig(d_model=32, n_head=4, norm_position=position), 0).eval()
    with torch.no_grad():
        for p in block.parameters():   # gains away from 1, so a norm in the wrong place shows
            p.add_(torch.randn(p.shape) * 0.3)
        x = torch.randn(2, 10, 32)
        a, f, n1, n2 = block.attn, block.mlp, block.attn_norm, block.mlp_norm
        if position == "pre":
            h = x + a(n1(x))
            expected = h + f(n2(h))
        else:
            h = n1(x + a(x))
            expected = n2(h + f(h))
        assert (block(x) - expected).abs().max() < 1e-5


def test_moe_mixes_the_top_k_experts_by_renormalised_router_probabilities():
    m = loud(n_experts=4, expert_top_k=2)
    moe = m.blocks[0].mlp
    x = torch.randn(7, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = moe(x)
        probs = moe.router(x).softmax(-1)
        for t in range(len(x)):
            top = probs[t].topk(2)
            weights = top.values / top.values.sum()
            expected = sum(w * moe.experts[e](x[t]) for w, e in zip(weights, top.indices.tolist()))
            assert (out[t] - expected).abs().max() < 1e-5
    # the load-balancing term: E * sum_e (share of the k-choices routed to e) * (mean router probability of e)
    share = torch.bincount(moe.last_choice.flatten(), minlength=4).float() / moe.last_choice.numel()
    assert moe.aux_loss.item() == pytest.approx(4 * (share * probs.mean(0)).sum().item(), rel=1e-5)


def test_gqa_equals_mha_with_repeated_kv_heads():
    """GQA with 2 K/V heads == MHA whose K/V weights repeat each K/V head for its group of query heads."""
    gqa = tiny(pos="rope", n_kv_head=2)
    mha = tiny(pos="rope", n_kv_head=4)
    state = gqa.state_dict()
    hd = gqa.cfg.head_dim
    for k, v in list(state.items()):
        if k.endswith(("k_proj.weight", "v_proj.weight")):
            heads = v.view(2, hd, -1)
            state[k] = heads.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(state)
    x = torch.randint(40, (2, 16))
    assert (gqa(x) - mha(x)).abs().max() < 1e-5
    # and with independent K/V heads the models differ (the test can fail)
    assert (gqa(x) - tiny(pos="rope", n_kv_head=4)(x)).abs().max() > 1e-3


def test_rope_scores_depend_only_on_relative_position():
    torch.manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cq, sq = rope_cos_sin(torch.tensor([m]), 16)
        ck, sk = rope_cos_sin(torch.tensor([n]), 16)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum().item()

    assert score(5, 2) == pytest.approx(score(103, 100), abs=1e-4)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    # rotation preserves length
    c, s = rope_cos_sin(torch.tensor([37]), 16)
    assert apply_rope(q, c, s).norm().item() == pytest.approx(q.norm().item(), rel=1e-5)


def test_learned_positions_refuse_sequences_longer_than_the_table():
    m = tiny()
    with pytest.raises(WorkbookError, match="block_size"):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_bad_config_is_one_clear_error():
    with pytest.raises(WorkbookError, match="pos="):
        GPTConfig(pos="spiral")
    with pytest.raises(WorkbookError, match="n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)


def test_sampling_greedy_topk_topp():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert sample_logits(logits, temperature=0).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_logits(logits, top_k=1, generator=g).item() for _ in range(20)} == {1}
    assert {sample_logits(logits, top_p=0.01, generator=g).item() for _ in range(20)} == {1}
    assert len({sample_logits(logits, top_k=2, generator=g).item() for _ in range(200)}) == 2


def test_flops_count_matches_parameter_count_for_dense_model():
    m = tiny(tie_embeddings=False)
    linear = sum(p.numel() for n, p in m.named_parameters() if p.dim() == 2 and "emb" not in n)
    assert m.matmul_params() == linear
    assert m.flops_per_token(10) == 6 * linear + 12 * 2 * 32 * 10


def _hf_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1000.0, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def test_hf_llama_round_trip_identical_logits(tmp_path):
    from shared import hf

    ref = _hf_llama()
    ours = hf.from_hf_llama(ref)
    x = torch.randint(50, (2, 30))
    with torch.no_grad():
        assert (ref(x).logits - ours(x)).abs().max() < 1e-5
        back = hf.to_hf_llama(ours)
        assert (back(x).logits - ref(x).logits).abs().max() < 1e-5
        hf.save_pretrained(ours, tmp_path / "m")
        loaded = hf.load_pretrained(tmp_path / "m")
        assert (loaded(x) - ours(x)).abs().max() < 1e-6


def test_hf_gpt2_round_trip_identical_logits():
    from transformers import GPT2Config, GPT2LMHeadModel

    from shared import hf

    torch.manual_seed(0)
    ref = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=64, n_embd=32, n_layer=2, n_head=4)).eval()
    ours = hf.from_hf_gpt2(ref)
    x = torch.randint(50, (2, 30))
    with torch.no_grad():
        assert (ref(x).logits - ours(x)).abs().max() < 1e-5
        assert (hf.to_hf_gpt2(ours)(x).logits - ref(x).logits).abs().max() < 1e-5


def test_non_llama_config_cannot_export_to_llama():
    from shared import hf

    with pytest.raises(WorkbookError, match="Llama"):
        hf.to_hf_llama(tiny())
