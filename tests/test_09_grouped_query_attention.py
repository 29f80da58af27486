"""Chapter 09 · Grouped-query attention: the MHA → GQA conversion, the cache-size formula,
the latent (MLA) layer and its cache, and the scripts end to end."""

import pytest
import torch

from shared.model import GPT, GPTConfig, KVCache

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

av = load_chapter_module("09_grouped_query_attention", "attention_variants")

CFG = dict(vocab_size=40, block_size=64, n_layer=2, n_head=8, d_model=64, pos="rope")


def mha_model(seed=0, **over):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**CFG, **over})).eval()


def ids(T=24, seed=1):
    return torch.randint(0, CFG["vocab_size"], (2, T), generator=torch.Generator().manual_seed(seed))


def test_groups_equal_heads_is_the_same_model():
    m = mha_model()
    x = ids()
    with torch.no_grad():
        assert torch.allclose(av.to_gqa(m, 8)(x), m(x), atol=1e-6)


def test_mean_pooling_averages_heads_within_groups():
    W = torch.randn(8 * 4, 16)                 # 8 heads of dim 4
    pooled = av.mean_pool_heads(W, n_head=8, groups=2)
    assert pooled.shape == (2 * 4, 16)
    heads = W.view(8, 4, 16)
    assert torch.allclose(pooled[:4], heads[:4].mean(0))
    assert torch.allclose(pooled[4:], heads[4:].mean(0))
    mqa = av.mean_pool_heads(W, n_head=8, groups=1)
    assert torch.allclose(mqa, heads.mean(0))


def test_converted_model_uses_the_pooled_weights_and_changes_the_output():
    m = mha_model()
    g = av.to_gqa(m, 2)
    assert g.cfg.n_kv_head == 2
    k = m.blocks[0].attn.k_proj.weight.view(8, -1, 64)
    assert torch.allclose(g.blocks[0].attn.k_proj.weight[: k.shape[1]], k[:4].mean(0))
    x = ids()
    with torch.no_grad():
        assert (g(x) - m(x)).abs().max() > 1e-3   # pooling is lossy on random weights


def test_query_heads_read_their_own_groups_pooled_head():
    """GQA with G groups == an MHA model whose every K/V head is replaced by its group's
    mean: proves query head i reads K/V head i // (H/G), the grouping mean_pool_heads assumed."""
    m = mha_model()
    twin = mha_model()
    for block in twin.blocks:
        for proj in (block.attn.k_proj, block.attn.v_proj):
            W = proj.weight.data.view(2, 4, 8, 64)           # (groups, heads per group, head_dim, d)
            W[:] = W.mean(1, keepdim=True)
    x = ids()
    with torch.no_grad():
        assert torch.allclose(av.to_gqa(m, 2)(x), twin(x), atol=1e-5)


def test_bad_group_count_is_a_clear_error():
    from shared.errors import WorkbookError
    with pytest.raises(WorkbookError, match="groups"):
        av.to_gqa(mha_model(), 3)


@pytest.mark.parametrize("kv_heads", [8, 4, 2, 1])
@pytest.mark.parametrize("tokens", [1, 100, 4096])
def test_cache_bytes_formula_equals_the_shared_cache(kv_heads, tokens):
    cfg = GPTConfig(**{**CFG, "n_kv_head": kv_heads})
    measured = KVCache(cfg, 1, tokens, device="meta").nbytes
    assert measured == av.kv_cache_bytes(cfg.n_layer, kv_heads, cfg.head_dim, tokens)
    assert measured == 2 * 2 * kv_heads * 8 * tokens * 4


def test_seed_claim_is_exactly_four_times_for_four_groups_of_sixteen():
    big = dict(vocab_size=64, n_layer=1, n_head=16, d_model=256)
    mha = KVCache(GPTConfig(**big), 1, 512, device="meta").nbytes
    gqa = KVCache(GPTConfig(**big, n_kv_head=4), 1, 512, device="meta").nbytes
    assert mha / gqa == 4


def test_full_rank_latent_attention_reproduces_the_model():
    """[W_k; W_v] has rank ≤ d_model, so an SVD latent of size d_model is exact."""
    m = mha_model()
    x = ids()
    with torch.no_grad():
        exact = av.to_mla(m, CFG["d_model"])(x)
        assert torch.allclose(exact, m(x), atol=1e-4)
        low = av.to_mla(m, 8)(x)
        assert (low - m(x)).abs().max() > 1e-3   # a rank-8 latent cannot be exact


def test_latent_cache_decoding_equals_uncached_greedy():
    m = av.to_mla(mha_model(), 16)
    prompt = ids(T=10)[:1]
    cached = av.greedy_decode_mla(m, prompt, 12)
    out = prompt
    with torch.no_grad():
        for _ in range(12):
            out = torch.cat([out, m(out)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(cached, out)


def test_latent_cache_is_smaller_than_kv_cache():
    assert av.latent_bytes_per_token(2, 16) * 8 == av.kv_cache_bytes(2, 8, 8, 1)  # 16 vs 2·8·8 per layer


def test_effective_rank():
    W = torch.randn(32, 4) @ torch.randn(4, 32)      # rank 4
    assert av.effective_rank(W, energy=0.999999) == 4
    assert av.effective_rank(torch.eye(10), energy=0.95) == 10


# ----------------------------------------------------------------------------- scripts
def test_main_quick_end_to_end(tmp_path):
    run_quick("09_grouped_query_attention", tmp_path)
    r = results_of(tmp_path, "09_grouped_query_attention")
    assert [g["kv_heads"] for g in r["groups"]] == sorted({g["kv_heads"] for g in r["groups"]}, reverse=True)
    assert all(row["measured_bytes"] == row["formula_bytes"] for row in r["cache"])
    assert r["seed_claim"]["ratio"] == 4
    assert all(row["cache_matches_uncached"] for row in r["mla"])
    plots = tmp_path / "plots" / "09_grouped_query_attention"
    names = {"gqa_sharing", "quality_vs_groups", "uptraining", "cache_bytes", "decode_speed", "mla_quality"}
    assert {p.stem for p in plots.glob("*.png")} == names
    from PIL import Image

    assert all(Image.open(p).width <= 1400 for p in plots.glob("*.png"))   # legible at README width

    for p in (tmp_path / "plots" / "09_grouped_query_attention").glob("*.png"):
        p.unlink()
    redraw = run_script("09_grouped_query_attention", "visualize.py", "--quick", "--out", tmp_path)
    assert redraw.returncode == 0, redraw.stderr[-2000:]
    assert {p.stem for p in plots.glob("*.png")} == names


@pytest.mark.parametrize("args, message", [(["--uptrain-steps", "-3"], "a positive integer"),
                                           (["--uptrain-steps", "0"], "a positive integer"),
                                           (["--seed", "-1"], "a seed between"),
                                           (["--text", "wood"], "unrecognized arguments")])
def test_bad_input_is_one_error_line(tmp_path, args, message):
    assert_exit_2("09_grouped_query_attention", "main.py", ["--quick", *args], message, tmp_path)


def test_visualize_without_results_is_one_error_line(tmp_path):
    res = run_script("09_grouped_query_attention", "visualize.py", "--quick", "--device", "cuda", "--out", tmp_path)
    assert res.returncode == 2 and res.stderr.startswith("error: no results at") and res.stderr.count("\n") == 1
