"""Chapter 03 · Attention: every hand-written step against torch, the hand-traced example, the √d
demonstration, the trained-model probes on small random models, the figures, and the scripts end to end."""
import math

import pytest
import torch
import torch.nn.functional as F

from shared import plotting
from shared.corpus import HundredAcreWood
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, attention_weights
from shared.tokenizer import CharTokenizer

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

steps = load_chapter_module("03_attention", "attention_steps")
probes = load_chapter_module("03_attention", "head_probes")
report = load_chapter_module("03_attention", "report")
vis = load_chapter_module("03_attention", "visualize")
TOL = 1e-5


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the hand-traced example
def test_hand_example_numbers_a_reader_can_check():
    h = steps.hand_example()
    assert h["dots"] == [2, 0, 4, 2]                       # integers: q·k by hand
    assert h["scaled"] == [1, 0, 2, 1]                     # ÷√4 is a halving
    e = math.e
    expected = [e, 1, e**2, e]
    assert [round(w, 3) for w in h["weights"]] == [round(x / sum(expected), 3) for x in expected]
    assert [round(w, 3) for w in h["weights"]] == [0.197, 0.072, 0.534, 0.197]   # the README's table
    assert [round(x, 3) for x in h["output"]] == [0.393, 0.341, 1.069, 1.124]
    Q, K, V = (torch.tensor(h[m], dtype=torch.float64) for m in "QKV")
    y, w = steps.attend_one(Q[-1], K, V)
    assert torch.allclose(y, torch.tensor(h["output"], dtype=torch.float64))
    masked_weights = steps.attend(Q, K, V, steps.causal_mask(4))[1]
    assert torch.allclose(torch.tensor(h["weights_matrix"], dtype=torch.float64), masked_weights)
    assert h["weights_matrix"][-1] == pytest.approx(h["weights"])     # the last row is step 1's query
    assert all(w == 0 for i, row in enumerate(h["weights_matrix"]) for w in row[i + 1:])


# ----------------------------------------------------------------------------- steps 1-4
def test_one_query_matches_sdpa():
    q, K, V = randn(32), randn(10, 32, seed=1), randn(10, 24, seed=2)
    y, w = steps.attend_one(q, K, V)
    assert (y - F.scaled_dot_product_attention(q[None], K, V)[0]).abs().max() <= TOL
    assert w.shape == (10,) and abs(w.sum().item() - 1) < 1e-6


@pytest.mark.parametrize("T,S", [(7, 7), (5, 9)])
def test_matrix_form_matches_sdpa_and_stacked_single_queries(T, S):
    Q, K, V = randn(2, T, 16), randn(2, S, 16, seed=1), randn(2, S, 8, seed=2)
    y, _ = steps.attend(Q, K, V)
    assert (y - F.scaled_dot_product_attention(Q, K, V)).abs().max() <= TOL
    stacked = torch.stack([torch.stack([steps.attend_one(Q[b, i], K[b], V[b])[0] for i in range(T)])
                           for b in range(2)])
    assert (y - stacked).abs().max() <= TOL


def test_wrong_scale_is_caught():
    """The comparison can fail: forgetting the 1/√d is far outside the tolerance."""
    Q, K, V = randn(12, 64), randn(12, 64, seed=1), randn(12, 64, seed=2)
    y, _ = steps.attend(Q, K, V, scale=1.0)
    assert (y - F.scaled_dot_product_attention(Q, K, V)).abs().max() > 1e-2


@pytest.mark.parametrize("T,S", [(6, 6), (3, 8)])
def test_causal_matches_sdpa_rows_sum_to_one_and_masked_are_zero(T, S):
    Q, K, V = randn(3, T, 16), randn(3, S, 16, seed=1), randn(3, S, 16, seed=2)
    mask = steps.causal_mask(T, S)
    y, w = steps.attend(Q, K, V, mask)
    assert (y - F.scaled_dot_product_attention(Q, K, V, attn_mask=mask)).abs().max() <= TOL
    if T == S:
        assert (y - F.scaled_dot_product_attention(Q, K, V, is_causal=True)).abs().max() <= TOL
    assert torch.allclose(w.sum(-1), torch.ones(3, T), atol=1e-6)
    assert (w[:, ~mask] == 0).all()
    assert (w[:, mask] > 0).all()


def test_causal_mask_layout():
    assert steps.causal_mask(3).int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    # queries are the LAST positions when there are more keys (a cache holding earlier tokens)
    assert steps.causal_mask(2, 4).int().tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("heads", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("causal", [True, False])
def test_multihead_matches_sdpa_and_torch_multihead(heads, causal):
    torch.manual_seed(heads)
    mha = steps.MultiHeadAttention(steps.AttentionConfig(d_model=64, n_head=heads, causal=causal)).eval()
    x = randn(2, 11, 64, seed=heads)
    with torch.no_grad():
        y, w = mha(x)
        assert w.shape == (2, heads, 11, 11)
        assert (y - steps.sdpa_multihead(mha, x)).abs().max() <= TOL
        mask = ~steps.causal_mask(11) if causal else None
        ref_y, ref_w = steps.torch_multihead(mha)(x, x, x, attn_mask=mask, need_weights=True,
                                                  average_attn_weights=False)
    assert (y - ref_y).abs().max() <= TOL
    assert (w - ref_w).abs().max() <= TOL


def test_bad_head_count_is_one_line_error():
    with pytest.raises(WorkbookError, match="n_head"):
        steps.AttentionConfig(d_model=64, n_head=3)


def test_checks_cover_every_step_and_pass():
    gen = torch.Generator().manual_seed(0)
    rows = steps.check_single_head(12, 16, gen) + steps.check_multihead(12, 16, (1, 4), gen)
    assert all(r["ok"] for r in rows)
    assert {r["step"][0] for r in rows} == {"1", "2", "3", "4"}
    assert len([r for r in rows if r["step"].startswith("4")]) == 2 * 3


def test_the_mask_blocks_the_future_and_its_absence_leaks():
    leak = steps.causal_leak(12, 16, torch.Generator().manual_seed(0))
    assert leak["masked"] == 0.0          # earlier outputs cannot see a later token
    assert leak["unmasked"] > 1e-3        # ...unless the mask is gone


# ----------------------------------------------------------------------------- √d
def test_softmax_jacobian_norm_matches_autograd():
    s = randn(5, 7) * 3
    closed = steps.softmax_jacobian_norm(s.softmax(-1))
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda z: z.softmax(-1), s[i])
        assert abs(J.norm().item() - closed[i].item()) < 1e-5


def test_sqrt_d_scaling_keeps_entropy_and_gradient_unscaled_collapses():
    s = steps.scaling_experiment((4, 64, 1024), keys=32, samples=400, gen=torch.Generator().manual_seed(0))
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
    recorded = attention_weights(model, ids)
    for layer in range(2):
        s = probes.layer_scores(model, ids, layer)
        w = s.masked_fill(~steps.causal_mask(30), float("-inf")).softmax(-1)
        assert (w - recorded[layer]).abs().max() <= TOL
        assert s.softmax(-1).max() > 0.5  # the comparison is between non-uniform weights
    demo = probes.causal_demo(model, ids, [1, 2], 8)
    assert demo["recompute_max_abs_diff"] <= TOL and len(demo["scores"]) == 8
    assert 0.05 < demo["mean_future_mass"] < 0.95


def test_attention_temperature_scales_scores_and_restores_weights():
    model = small_gpt(pos="rope")
    ids = torch.randint(40, (1, 20), generator=torch.Generator().manual_seed(2))
    before = [p.clone() for p in model.parameters()]
    s1 = probes.layer_scores(model, ids, 1)
    with probes.attention_temperature(model, 3.0):
        s0_hot = probes.layer_scores(model, ids, 0)
    assert (probes.layer_scores(model, ids, 0) * 3 - s0_hot).abs().max() < 1e-4
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(probes.layer_scores(model, ids, 1), s1)


def test_story_spans_point_at_the_words():
    for st in HundredAcreWood().stories(50, seed=3):
        spans = probes.story_spans(st)
        text = "\n" + st.text
        assert text[slice(*spans["ending"])] == st.ending.text
        assert text[slice(*spans["opening"])] == st.opening.text
        for field, f in spans["words"].items():
            assert text[slice(*f["opening"])] == text[slice(*f["ending"])] == st.opening.get(field)


def test_word_spans_cover_the_words_and_the_newline():
    spans = probes.word_spans("\nOn a sad day, Pooh had a red kite.\n")
    assert spans[0] == [0, 1, "⏎"]
    assert [w for _, _, w in spans[1:]] == ["On", "a", "sad", "day,", "Pooh", "had", "a", "red", "kite."]
    text = "\nOn a sad day, Pooh had a red kite.\n"
    assert all(text[a:b] == w for a, b, w in spans[1:])


def wood_char_model():
    wood = HundredAcreWood()
    tok = CharTokenizer.from_text("".join(s.text for s in wood.stories(50, seed=0)) + "\n")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=256, n_layer=2, n_head=2, d_model=32,
                          pos="rope")).eval()
    return wood, tok, model


def test_head_statistics_of_a_random_model_sit_at_uniform_and_name_no_head():
    wood, tok, model = wood_char_model()
    stats = probes.head_statistics(model, tok, wood.stories(3, seed=5), "cpu")
    for key in ("copy", "previous", "first"):
        m = torch.tensor(stats[key])
        assert m.shape == (2, 2) and (m >= 0).all() and (m <= 1).all()
    # a freshly initialised model attends almost uniformly: its numbers sit near the uniform ones
    assert abs(torch.tensor(stats["entropy"]).mean() - stats["uniform"]["entropy"]) < 0.2
    assert abs(torch.tensor(stats["copy"]).mean() - stats["uniform"]["copy"]) < 0.02
    assert not any(h["named"] for h in probes.name_heads(stats).values())


def test_a_head_at_uniform_copy_mass_is_not_called_a_copy_head():
    """The old figures labelled the head with the most copy mass 'copy' even at 0.044 vs uniform 0.045."""
    stats = {"copy": [[0.044, 0.030]], "previous": [[0.20, 0.02]], "first": [[0.02, 0.03]],
             "uniform": {"copy": 0.045, "previous": 0.025, "first": 0.025}}
    named = probes.name_heads(stats)
    assert named["copy"]["head"] == 0 and not named["copy"]["named"]
    assert named["previous"]["named"] and named["previous"]["over_uniform"] == pytest.approx(8.0)
    r = {"named_heads": named}
    assert "copy" not in vis.head_name(r, 0, 0).replace("no named", "")
    assert vis.head_name(r, 0, 0).startswith("previous-token head")


def test_ending_fact_nats_of_a_random_model_are_worse_than_guessing():
    wood, tok, model = wood_char_model()
    f = probes.ending_fact_nats(model, tok, wood.stories(4, seed=7), "cpu")
    chars = sum(len(w) for w in ["Pooh", "red", "kite"])      # ~11 characters at ~ln(vocab) each
    assert f["fact_nats_per_story"] > f["guess_nats_per_story"] == pytest.approx(3 * math.log(8))
    assert f["fact_nats_per_story"] > 0.5 * chars * math.log(tok.vocab_size)
    assert 0 < f["fact_share_of_gap"] < 1


def test_causal_rows_roundtrip():
    w = randn(9, 9).masked_fill(~steps.causal_mask(9), float("-inf")).softmax(-1)
    back = vis.unpack(probes.causal_rows(w))
    assert abs(back - w.numpy()).max() <= 5e-5


# ----------------------------------------------------------------------------- the scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick("03_attention", tmp_path_factory.mktemp("ch03"))


FIGURES = {"attention_mechanism", "you_are_here", "attention_heatmap", "head_stats", "causal_mask",
           "sqrt_d_scaling", "temperature", "timing"}


def test_main_quick_end_to_end(quick_run):
    out, _ = quick_run
    r = results_of(out, "03_attention")
    assert r["meta"]["preset"] == "quick"
    assert all(c["ok"] for c in r["checks"]) and {c["step"][0] for c in r["checks"]} == {"1", "2", "3", "4"}
    assert r["hand"]["weights"] == steps.hand_example()["weights"]
    assert r["headline"] == report.headline(r) and r["headline"]["max_abs_diff_vs_reference"] <= TOL
    assert [row["T"] for row in r["timing"]] == list(r["config"]["lengths"])
    assert all(row["max_abs_diff"] <= TOL and row["explicit_ms"] > 0 for row in r["timing"])
    t = r["temperature"]
    assert len(t["loss"]) == len(t["multipliers"]) and all(x > t["floor"] for x in t["loss"])
    assert t["root_head_dim"] in t["multipliers"]
    assert len(r["example"]["weights"]) == len(r["example"]["text"])
    assert r["causal"]["recompute_max_abs_diff"] <= TOL
    assert {p.stem for p in (out / "plots" / "03_attention").glob("*.png")} == FIGURES
    notes = report.notes(r)
    assert "Step 1 by hand" in notes and "0.534" in notes


def test_visualize_redraws_from_json(quick_run):
    out, _ = quick_run
    plots = out / "plots" / "03_attention"
    for png in plots.glob("*.png"):
        png.unlink()
    proc = run_script("03_attention", "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {p.stem for p in plots.glob("*.png")} == FIGURES
    assert all(p.stat().st_size > 10_000 for p in plots.glob("*.png"))


@pytest.fixture
def drawn(quick_run, monkeypatch):
    """Every figure of the quick run, kept open (save_fig records instead of saving)."""
    figs = {}

    def keep(fig, directory, name, **kw):
        figs[name] = fig
        return name

    monkeypatch.setattr(vis.plotting, "save_fig", keep)
    vis.draw(results_of(quick_run[0], "03_attention"), quick_run[0] / "unused")
    yield figs
    for fig in figs.values():
        vis.plt.close(fig)


def test_every_figure_is_legible_at_readme_width(drawn):
    small = {name: round(plotting.smallest_text_pt(fig), 1) for name, fig in drawn.items()
             if plotting.smallest_text_pt(fig) < plotting.MIN_SHOWN_PT - 0.5}
    assert not small, f"text below ~9 pt at README width: {small}"


def test_timing_memory_axis_has_no_negative_ticks(drawn):
    memory = drawn["timing"].axes[1]
    assert memory.get_yscale() == "log"
    assert all(t > 0 for t in memory.get_yticks() if memory.get_ylim()[0] <= t <= memory.get_ylim()[1])


def test_causal_mask_suptitle_clears_the_panel_titles(drawn):
    fig = drawn["causal_mask"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    top = fig._suptitle.get_window_extent(renderer)
    assert all(not top.overlaps(ax.title.get_window_extent(renderer)) for ax in fig.axes if ax.get_title())


@pytest.mark.parametrize("args,message", [(["--lengths", "abc"], "--lengths"), (["--lengths", "0,128"], "--lengths"),
                                          (["--model", "nope"], "--model")])
def test_bad_input_exits_2_with_one_error_line(tmp_path, args, message):
    assert_exit_2("03_attention", "main.py", ["--quick", *args], message, tmp_path)
