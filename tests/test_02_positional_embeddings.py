"""Chapter 02 · Positional embeddings: the hand-written schemes against shared.model (and the
closed forms, and Hugging Face's RoPE where installed), RoPE's relative-position property,
the learned table's refusal past its length, order blindness without positions, and the
scripts end to end."""
import math

import pytest
import torch

from shared import model as shared_model
from shared import plotting
from shared.errors import SelfCheckError, WorkbookError
from shared.model import GPT, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "02_positional_embeddings"
P = load_chapter_module(CHAPTER, "positions")
checks = load_chapter_module(CHAPTER, "position_checks")
ext = load_chapter_module(CHAPTER, "length_extrapolation")
TOL = 1e-6


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- sinusoidal
@pytest.mark.parametrize("n,dim", [(50, 16), (300, 64)])
def test_sinusoidal_equals_shared(n, dim):
    ours = P.sinusoidal(n, dim)
    assert ours.shape == (n, dim)
    assert (ours - shared_model.sinusoidal_table(torch.arange(n), dim)).abs().max() <= TOL


def test_sinusoidal_closed_form_entries():
    d = 64
    pe = P.sinusoidal(40, d)
    for p, i in [(0, 0), (1, 0), (7, 3), (33, 10)]:
        w = 1 / 10000 ** (2 * i / d)
        assert abs(pe[p, 2 * i].item() - math.sin(p * w)) <= 1e-6
        assert abs(pe[p, 2 * i + 1].item() - math.cos(p * w)) <= 1e-6
    # and the comparison can fail: swapping sin and cos is far off
    assert abs(pe[3, 0].item() - math.cos(3)) > 0.5


def test_sinusoidal_odd_dim_is_a_workbook_error():
    with pytest.raises(WorkbookError, match="even"):
        P.sinusoidal(4, 7)


# ----------------------------------------------------------------------------- RoPE
def test_rope_equals_shared_apply_rope():
    x, pos = randn(2, 3, 20, 16), torch.arange(20)
    cos, sin = shared_model.rope_cos_sin(pos, 16)
    assert (P.rope(x, pos) - shared_model.apply_rope(x, cos, sin)).abs().max() <= TOL
    # offset positions (a KV-cache continuation) too
    pos = torch.arange(100, 120)
    cos, sin = shared_model.rope_cos_sin(pos, 16)
    assert (P.rope(x, pos) - shared_model.apply_rope(x, cos, sin)).abs().max() <= 1e-5


def test_rope_equals_hugging_face_rotate_half():
    llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    q, k, pos = randn(1, 2, 12, 8), randn(1, 2, 12, 8, seed=1), torch.arange(12)
    cos, sin = shared_model.rope_cos_sin(pos, 8)
    hq, hk = llama.apply_rotary_pos_emb(q, k, cos[None], sin[None])
    assert (P.rope(q, pos) - hq).abs().max() <= TOL
    assert (P.rope(k, pos) - hk).abs().max() <= TOL


def test_rope_interleaved_is_rotate_half_up_to_a_permutation():
    x, pos = randn(4, 10, 12), torch.arange(10)
    half = P.interleaved_to_half
    assert (half(P.rope_interleaved(x, pos)) - P.rope(half(x), pos)).abs().max() <= TOL
    # without the permutation the two layouts disagree
    assert (P.rope_interleaved(x, pos) - P.rope(x, pos)).abs().max() > 1e-2


def test_rope_matrix_is_a_rotation():
    R = P.rope_matrix(37, 16)
    assert torch.allclose(R @ R.T, torch.eye(16, dtype=R.dtype), atol=1e-12)
    assert abs(torch.linalg.det(R).item() - 1) < 1e-9


@pytest.mark.parametrize("offset", [0, 1, 5, 40])
def test_rope_score_depends_only_on_offset(offset):
    d = 32
    q, k = randn(d), randn(d, seed=1)
    scores = [float(P.rope(q[None], torch.tensor([m + offset]))[0] @ P.rope(k[None], torch.tensor([m]))[0])
              for m in (0, 3, 50, 500)]
    assert max(scores) - min(scores) <= 1e-4
    # ... but it does depend on the offset (or the property would be vacuous)
    other = float(P.rope(q[None], torch.tensor([offset + 2]))[0] @ k)
    assert abs(other - scores[0]) > 1e-3


def test_rope_relative_check_is_flat():
    rel = checks.rope_relative_check(16)
    assert all(r["max_minus_min"] <= 1e-4 for r in rel.values())


# ----------------------------------------------------------------------------- ALiBi
def test_alibi_slopes_8_heads_closed_form():
    assert torch.allclose(P.alibi_slopes(8), 2.0 ** -torch.arange(1, 9, dtype=torch.float32), atol=0)


@pytest.mark.parametrize("n", [1, 2, 4, 6, 8, 12, 16, 24])
def test_alibi_slopes_equal_shared(n):
    ours = P.alibi_slopes(n)
    assert ours.shape == (n,)
    assert (ours - shared_model.alibi_slopes(n)).abs().max() <= TOL
    assert (ours > 0).all() and (ours < 1).all()


def test_alibi_bias_values():
    b = P.alibi_bias(8, 6)
    assert b.shape == (8, 6, 6)
    assert b[0, 5, 2].item() == pytest.approx(-0.5 * 3)       # head 1, slope 1/2, distance 3
    assert b[7, 4, 0].item() == pytest.approx(-4 / 256)       # head 8, slope 1/256, distance 4
    assert (b.diagonal(dim1=1, dim2=2) == 0).all()


# ----------------------------------------------------------------------------- learned
def test_learned_lookup_refuses_positions_past_the_table():
    table = randn(8, 4)
    assert torch.equal(P.learned_lookup(table, torch.arange(8)), table)
    with pytest.raises(WorkbookError, match="no row"):
        P.learned_lookup(table, torch.arange(9))


def test_learned_position_model_longer_than_table_is_a_clear_workbook_error():
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, d_model=16, pos="learned"))
    m(torch.zeros(1, 16, dtype=torch.long))  # exactly the table's length is fine
    with pytest.raises(WorkbookError, match="longer than the learned position table"):
        m(torch.zeros(1, 17, dtype=torch.long))
    assert "block_size=16" in checks.learned_table_error(11, 16)


# ----------------------------------------------------------------------------- in the model
@torch.no_grad()
def test_hand_written_schemes_reproduce_the_shared_models_attention():
    diffs = checks.check_against_model(vocab_size=13, seq_len=24)
    assert set(diffs) == set(checks.SCHEMES)
    assert all(v <= 1e-5 for v in diffs.values()), diffs


@torch.no_grad()
def test_hand_attention_notices_a_wrong_scheme():
    """The layer-0 check can fail: ALiBi's bias left out of a RoPE model is far off."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=13, block_size=24, n_layer=1, n_head=4, d_model=32, pos="alibi")).eval()
    for p in m.parameters():
        p.mul_(20.0)
    idx = torch.randint(13, (1, 24), generator=torch.Generator().manual_seed(2))
    ours, theirs = checks.hand_attention(m, idx)
    assert (ours - theirs).abs().max() <= 1e-5
    m.cfg.pos = "none"  # the hand-written path now skips the bias the model still adds
    ours_wrong, _ = checks.hand_attention(m, idx)
    m.cfg.pos = "alibi"
    assert (ours_wrong - theirs).abs().max() > 1e-2


@torch.no_grad()
def test_one_layer_without_positions_is_blind_to_prefix_order_but_rope_is_not():
    idx = torch.randint(20, (4, 24), generator=torch.Generator().manual_seed(0))
    sens = {}
    for pos in ("none", "rope"):
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=20, block_size=24, n_layer=1, n_head=2, d_model=32, pos=pos))
        for p in m.parameters():
            p.mul_(10.0)
        sens[pos] = checks.shuffle_sensitivity(m, idx)
    assert sens["none"] < 1e-4
    assert sens["rope"] > 1e-2


def test_bands_split_at_the_training_length():
    b = ext.bands([1.0] * 4 + [3.0] * 12, train_len=4, eval_len=16)
    assert b["in_range"] == pytest.approx(1.0)
    assert b["beyond"] == pytest.approx(3.0)
    assert b["whole_8"] == pytest.approx(2.0)
    assert b["whole_16"] == pytest.approx(2.5)
    assert "beyond" not in ext.bands([1.0] * 4, train_len=4, eval_len=16)


@pytest.mark.parametrize("distance", [2, 8])
def test_rope_plane_view_keeps_the_angle_and_the_score(distance):
    """In one rotation plane q and k turn together: the angle between them is the same at every
    position, and equals distance·ω when k starts parallel to q in that plane."""
    head_dim, pair = 16, 1
    q, k = randn(head_dim), randn(head_dim, seed=1)
    plane = [pair, pair + head_dim // 2]
    k[plane] = 0.6 * q[plane]
    view = P.rope_plane_view(q, k, pair, distance, list(range(0, 40, 3)))
    omega = P.rope_frequencies(head_dim)[pair].item()
    angles = [v["angle_deg"] for v in view]
    assert max(angles) - min(angles) < 1e-3
    assert angles[0] == pytest.approx(math.degrees(distance * omega), abs=1e-3)
    dots = [v["dot_whole_head"] for v in view]
    assert max(dots) - min(dots) < 1e-4
    # the arrows themselves do turn (or the picture would show nothing)
    assert abs(view[0]["q"][0] - view[3]["q"][0]) > 0.05


def test_sinusoidal_small_is_the_sinusoidal_table_at_token_scale_and_frozen():
    m = ext.build_model("sinusoidal_small", vocab_size=11, train_len=16, eval_len=64, n_layer=1, n_head=2, d_model=16)
    table = m.pos_emb.weight
    assert table.shape == (64, 16) and not table.requires_grad
    assert table.pow(2).mean().sqrt().item() == pytest.approx(ext.SMALL_RMS, rel=1e-4)
    direction = P.sinusoidal(64, 16)
    assert torch.allclose(table / table.norm(), direction / direction.norm(), atol=1e-6)
    m(torch.zeros(1, 64, dtype=torch.long))  # rows for every evaluated position
    assert ext.build_model("rope", 11, 16, 64, 1, 2, 16).cfg.pos == "rope"


@torch.no_grad()
def test_attention_entropy_of_uniform_attention_is_log_of_the_prefix():
    """With q = 0 every score is 0: attention is uniform over the p + 1 visible keys, entropy ln(p + 1)."""
    m = GPT(GPTConfig(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=16, pos="none"))
    for block in m.blocks:
        block.attn.q_proj.weight.zero_()
    x = torch.randint(11, (2, 12), generator=torch.Generator().manual_seed(0))
    ent = ext.attention_entropy_by_position(m, x)
    assert ent == pytest.approx([math.log(p + 1) for p in range(12)], abs=1e-5)
    # and it can tell: trained-looking (random, scaled up) weights are sharper than uniform
    for p in m.parameters():
        p.normal_(0, 1)
    assert ext.attention_entropy_by_position(m, x)[-1] < math.log(12) - 0.1


def test_loss_by_position_is_the_per_position_cross_entropy():
    m = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, d_model=16, pos="rope")).eval()
    x = torch.randint(11, (5, 8), generator=torch.Generator().manual_seed(0))
    y = torch.randint(11, (5, 8), generator=torch.Generator().manual_seed(1))
    per_position = ext.loss_by_position(m, x, y, batch=2)
    assert len(per_position) == 8
    with torch.no_grad():
        mean = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), y.flatten()).item()
    assert sum(per_position) / 8 == pytest.approx(mean, rel=1e-5)


def test_learned_table_error_is_a_self_check_failure_when_the_table_does_not_refuse(monkeypatch):
    assert "block_size=16" in checks.learned_table_error(11, 16)
    # a model whose table is one row longer than asked accepts the long input: that is our bug, not the user's
    monkeypatch.setattr(checks, "GPTConfig", lambda **kw: GPTConfig(**{**kw, "block_size": kw["block_size"] + 1}))
    with pytest.raises(SelfCheckError, match="accepted a sequence longer"):
        checks.learned_table_error(11, 16)


# ----------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CHAPTER, tmp_path_factory.mktemp("out"))


def test_main_quick_end_to_end(quick_run):
    out, proc = quick_run
    res = results_of(out, CHAPTER)
    cfg = res["config"]
    assert res["meta"]["preset"] == "quick"
    assert set(res["schemes"]) == set(ext.VARIANTS)
    assert all(v <= 1e-5 for v in res["checks"]["vs_shared"].values())
    assert all(v <= 1e-5 for v in res["checks"]["layer0_attention_vs_shared"].values())
    assert "longer than the learned position table" in res["checks"]["learned_error"]
    assert res["checks"]["one_layer_nope_shuffle"] < 1e-4
    for s, r in res["schemes"].items():
        losses = r["loss_by_position"]
        assert all(math.isfinite(v) and 0 < v < 10 for v in losses)
        if s == "learned":  # evaluated in range only, with the refusal recorded
            assert len(losses) == cfg["train_len"] and "longer than" in r["error_beyond_train_len"]
            assert "beyond" not in r["bands"]
        else:
            assert len(losses) == res["eval_len"] and "beyond" in r["bands"]
        # training did something: the last validation loss is below the first (uniform ~ ln vocab)
        assert r["history"]["val"][-1]["loss"] < r["history"]["val"][0]["loss"]
    for view in res["rope_view"]["views"].values():
        assert max(v["angle_deg"] for v in view) - min(v["angle_deg"] for v in view) < 1e-2
    assert res["headline"]["rope_loss_in_range"] == pytest.approx(res["schemes"]["rope"]["bands"]["in_range"], abs=1e-4)
    assert "estimate:" in proc.stdout


FIGURES = ["where_position_enters", "sinusoidal_table", "rope_relative", "alibi_bias", "similarity_vs_distance",
           "loss_vs_position", "extrapolation", "attention_entropy", "training_curves"]


def test_visualize_redraws_from_results(quick_run):
    from PIL import Image

    out, _ = quick_run
    plots, gif = out / "plots" / CHAPTER, out / "animations" / CHAPTER / "rope_rotation.gif"
    assert all((plots / f"{n}.png").exists() for n in FIGURES) and gif.exists()
    for n in FIGURES:
        (plots / f"{n}.png").unlink()
    gif.unlink()
    proc = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in FIGURES:
        with Image.open(plots / f"{n}.png") as im:
            assert im.width <= plotting.MAX_WIDTH_PX, n
        assert (plots / f"{n}.png").stat().st_size > 10_000
    assert 10_000 < gif.stat().st_size < 1_000_000  # a modest GIF


@pytest.mark.parametrize("args,message", [(["--schemes", "rope,cosine"], "cosine"),
                                          (["--train-len", "4"], "--train-len"),
                                          (["--steps", "0"], "--steps")])
def test_bad_flags_are_one_error_line(args, message, tmp_path):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *args], message, tmp_path)


def test_visualize_without_results_is_one_error_line(tmp_path):
    proc = run_script(CHAPTER, "visualize.py", "--quick", "--out", tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "main.py" in errors[0]
