"""Chapter 03 · Attention: every hand-written step against torch, the √d demonstration,
the trained-model probes on small random models, and the scripts end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

from shared.corpus import HundredAcreWood
from shared.model import GPT, GPTConfig
from shared.testing import load_chapter_module, results_of, run_quick, run_script

ch = load_chapter_module("03_attention", "main")
vis = load_chapter_module("03_attention", "visualize")
TOL = 1e-5


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- steps 1-4
def test_one_query_matches_sdpa():
    q, K, V = randn(32), randn(10, 32, seed=1), randn(10, 24, seed=2)
    y, w = ch.attend_one(q, K, V)
    ref = F.scaled_dot_product_attention(q[None], K, V)[0]
    assert (y - ref).abs().max() <= TOL
    assert w.shape == (10,) and abs(w.sum().item() - 1) < 1e-6


@pytest.mark.parametrize("T,S", [(7, 7), (5, 9)])
def test_matrix_form_matches_sdpa_and_stacked_single_queries(T, S):
    Q, K, V = randn(2, T, 16), randn(2, S, 16, seed=1), randn(2, S, 8, seed=2)
    y, w = ch.attend(Q, K, V)
    assert (y - F.scaled_dot_product_attention(Q, K, V)).abs().max() <= TOL
    stacked = torch.stack([torch.stack([ch.attend_one(Q[b, i], K[b], V[b])[0] for i in range(T)]) for b in range(2)])
    assert (y - stacked).abs().max() <= TOL


def test_wrong_scale_is_caught():
    """The comparison can fail: forgetting the 1/√d is far outside the tolerance."""
    Q, K, V = randn(12, 64), randn(12, 64, seed=1), randn(12, 64, seed=2)
    y, _ = ch.attend(Q, K, V, scale=1.0)
    assert (y - F.scaled_dot_product_attention(Q, K, V)).abs().max() > 1e-2


@pytest.mark.parametrize("T,S", [(6, 6), (3, 8)])
def test_causal_matches_sdpa_rows_sum_to_one_and_masked_are_zero(T, S):
    Q, K, V = randn(3, T, 16), randn(3, S, 16, seed=1), randn(3, S, 16, seed=2)
    mask = ch.causal_mask(T, S)
    y, w = ch.attend(Q, K, V, mask)
    assert (y - F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)).abs().max() <= TOL
    if T == S:
        assert (y - F.scaled_dot_product_attention(Q, K, V, is_causal=True)).abs().max() <= TOL
    assert torch.allclose(w.sum(-1), torch.ones(3, T), atol=1e-6)
    assert (w[:, ~mask] == 0).all()
    assert (w[:, mask] > 0).all()


def test_causal_mask_layout():
    assert ch.causal_mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # queries are the LAST positions when there are more keys (a cache holding earlier tokens)
    assert ch.causal_mask(2, 4).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("causal", [True, False])
def test_multihead_matches_sdpa_and_torch_multihead(heads, causal):
    torch.manual_seed(heads)
    mha = ch.MultiHeadAttention(ch.AttentionConfig(d_model=64, n_head=heads, causal=causal)).eval()
    x = randn(2, 11, 64, seed=heads)
    with torch.no_grad():
        y, w = mha(x)
        assert w.shape == (2, heads, 11, 11)
        assert (y - ch.sdpa_multihead(mha, x)).abs().max() <= TOL
        mask = ~ch.causal_mask(11) if causal else None
        ref_y, ref_w = ch.torch_multihead(mha)(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    assert (y - ref_y).abs().max() <= TOL
    assert (w - ref_w).abs().max() <= TOL


def test_bad_head_count_is_one_line_error():
    with pytest.raises(ch.WorkbookError, match="n_head"):
        ch.AttentionConfig(d_model=64, n_head=3)


def test_check_steps_all_pass_and_mask_blocks_the_future():
    rows, facts = ch.check_steps(ch.Config(check_tokens=12, head_counts=(1, 4)), torch.Generator().manual_seed(0))
    assert rows and all(r["ok"] for r in rows)
    assert {r["step"][0] for r in rows} == {"1", "2", "3", "4"}
    assert facts["masked_weight_max"] == 0.0
    assert facts["row_sum_max_err"] < 1e-6
    assert facts["leak"]["masked"] == 0.0          # earlier outputs cannot see a later token
    assert facts["leak"]["unmasked"] > 1e-3        # ...unless the mask is gone


# ----------------------------------------------------------------------------- √d
def test_softmax_jacobian_norm_matches_autograd():
    s = randn(5, 7) * 3
    p = s.softmax(-1)
    closed = ch.softmax_jacobian_norm(p)
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda z: z.softmax(-1), s[i])
        assert abs(J.norm().item() - closed[i].item()) < 1e-5


def test_sqrt_d_scaling_keeps_entropy_and_gradient_unscaled_collapses():
    cfg = ch.Config(scale_dims=(4, 64, 1024), scale_keys=32, scale_samples=400)
    s = ch.scaling_experiment(cfg, torch.Generator().manual_seed(0))
    for i, d in enumerate(s["dims"]):
        assert 0.9 < s["score_std_scaled"][i] < 1.1                     # spread stays 1
        assert 0.85 * math.sqrt(d) < s["score_std_unscaled"][i] < 1.15 * math.sqrt(d)
        assert s["entropy_unscaled"][i] < s["entropy_scaled"][i] <= s["uniform_entropy"]
    assert max(s["entropy_scaled"]) - min(s["entropy_scaled"]) < 0.2      # independent of d
    assert s["entropy_unscaled"][-1] < 0.5                                # nearly one-hot
    assert s["max_weight_unscaled"][-1] > 0.9
    assert s["jacobian_unscaled"][-1] < 0.5 * s["jacobian_scaled"][-1]    # the gradient dies


# ----------------------------------------------------------------------------- trained-model probes
def small_gpt(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=40, block_size=64, n_layer=2, n_head=4, d_model=32)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("shape", [dict(pos="rope"), dict(pos="learned", bias=True), dict(pos="rope", n_kv_head=2)])
def test_layer_scores_reproduce_recorded_weights(shape):
    model = small_gpt(**shape)
    with torch.no_grad():  # sharpen the random model so the check is not trivially uniform
        for b in model.blocks:
            b.attn.q_proj.weight.normal_(0, 0.5)
            b.attn.k_proj.weight.normal_(0, 0.5)
    ids = torch.randint(40, (1, 30), generator=torch.Generator().manual_seed(1))
    recorded = ch.record_attention(model, ids)
    assert recorded.shape == (2, 4, 30, 30)
    assert all(b.attn.record is False for b in model.blocks)
    for layer in range(2):
        s = ch.layer_scores(model, ids, layer)
        w = s.masked_fill(~ch.causal_mask(30), float("-inf")).softmax(-1)
        assert (w - recorded[layer]).abs().max() <= TOL
        assert s.softmax(-1).max() > 0.5  # the comparison is between non-uniform weights


def test_attention_temperature_scales_scores_and_restores_weights():
    model = small_gpt(pos="rope")
    ids = torch.randint(40, (1, 20), generator=torch.Generator().manual_seed(2))
    before = [p.clone() for p in model.parameters()]
    s1 = ch.layer_scores(model, ids, 1)
    with ch.attention_temperature(model, 3.0):
        s0_hot = ch.layer_scores(model, ids, 0)
    assert (ch.layer_scores(model, ids, 0) * 3 - s0_hot).abs().max() < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(ch.layer_scores(model, ids, 1), s1)


def test_story_spans_point_at_the_words():
    wood = HundredAcreWood()
    for st in wood.stories(50, seed=3):
        spans = ch.story_spans(st)  # asserts internally that every span holds its word
        text = "\n" + st.text
        assert text[slice(*spans["ending"])] == st.ending.text
        assert text[slice(*spans["opening"])] == st.opening.text


def test_head_statistics_on_a_random_model_are_sane():
    wood = HundredAcreWood()
    text = "".join(s.text for s in wood.stories(20, seed=0))
    from shared.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text(text + "\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, d_model=32, pos="rope")).eval()
    stats = ch.head_statistics(model, tok, wood.stories(3, seed=5), "cpu")
    for key in ("copy", "previous", "first"):
        m = torch.tensor(stats[key])
        assert m.shape == (2, 2) and (m >= 0).all() and (m <= 1).all()
    # a freshly initialised model attends almost uniformly: its numbers sit near the uniform ones
    assert abs(torch.tensor(stats["entropy"]).mean() - stats["uniform"]["entropy"]) < 0.2
    assert abs(torch.tensor(stats["copy"]).mean() - stats["uniform"]["copy"]) < 0.02


def test_pack_roundtrip():
    w = randn(2, 3, 9, 9).masked_fill(~ch.causal_mask(9), float("-inf")).softmax(-1)
    back = vis.unpack(ch.pack(w)[1][2])
    assert abs(back - w[1, 2].numpy()).max() <= 5e-4


@pytest.mark.parametrize("bad", ["abc", "0,128", ""])
def test_parse_lengths_rejects_bad_input(bad):
    with pytest.raises(ch.WorkbookError, match="--lengths"):
        ch.parse_lengths(bad)


# ----------------------------------------------------------------------------- the scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick("03_attention", tmp_path_factory.mktemp("ch03"))


def test_main_quick_end_to_end(quick_run):
    out, proc = quick_run
    r = results_of(out, "03_attention")
    assert r["meta"]["preset"] == "quick"
    assert all(c["ok"] for c in r["checks"]) and any(c["step"].startswith("5") for c in r["checks"])
    assert r["headline"]["max_abs_diff_vs_reference"] <= TOL
    s = r["scaling"]
    assert s["entropy_unscaled"][-1] < s["entropy_scaled"][-1]
    assert [row["T"] for row in r["timing"]] == list(r["config"]["bench_lengths"])
    assert all(row["max_abs_diff"] <= TOL and row["explicit_ms"] > 0 for row in r["timing"])
    L, H = r["model"]["config"]["n_layer"], r["model"]["config"]["n_head"]
    assert len(r["example"]["weights"]) == L and len(r["example"]["weights"][0]) == H
    t = r["temperature"]
    assert len(t["loss"]) == len(t["multipliers"]) and all(x > t["floor"] for x in t["loss"])
    assert 0 < r["causal"]["mean_future_mass"] < 1
    assert len(list((out / "plots" / "03_attention").glob("*.png"))) == 7


def test_visualize_redraws_from_json(quick_run):
    out, _ = quick_run
    plots = out / "plots" / "03_attention"
    for png in plots.glob("*.png"):
        png.unlink()
    proc = run_script("03_attention", "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    names = {p.stem for p in plots.glob("*.png")}
    assert names == {"attention_all_heads", "attention_lookback", "head_stats", "causal_mask",
                     "sqrt_d_scaling", "temperature", "timing"}
    assert all(p.stat().st_size > 10_000 for p in plots.glob("*.png"))


@pytest.mark.parametrize("args", [["--lengths", "abc"], ["--model", "nope"]])
def test_bad_input_exits_2_with_one_error_line(tmp_path, args):
    proc = run_script("03_attention", "main.py", "--quick", "--out", tmp_path, "--checkpoints", tmp_path, *args)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
