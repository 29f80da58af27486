"""Chapter 02 · Positional embeddings: the hand-written schemes against shared.model (and the
closed forms, and Hugging Face's RoPE where installed), RoPE's relative-position property,
the learned table's refusal past its length, order blindness without positions, and the
scripts end to end."""
import math

import pytest
import torch

from shared import model as shared_model
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.testing import load_chapter_module, results_of, run_quick, run_script

CHAPTER = "02_positional_embeddings"
P = load_chapter_module(CHAPTER, "positions")
ch = load_chapter_module(CHAPTER, "main")
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


def test_rope_relative_check_in_main_is_flat():
    rel = ch.rope_relative_check(16)
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
    assert "block_size=16" in ch.learned_table_error(11, 16)


# ----------------------------------------------------------------------------- in the model
@torch.no_grad()
def test_hand_written_schemes_reproduce_the_shared_models_attention():
    diffs = ch.check_against_model(vocab_size=13, train_len=24)
    assert set(diffs) == set(ch.SCHEMES)
    assert all(v <= 1e-5 for v in diffs.values()), diffs


@torch.no_grad()
def test_hand_attention_notices_a_wrong_scheme():
    """The layer-0 check can fail: ALiBi's bias left out of a RoPE model is far off."""
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=13, block_size=24, n_layer=1, n_head=4, d_model=32, pos="alibi")).eval()
    for p in m.parameters():
        p.mul_(20.0)
    idx = torch.randint(13, (2, 24), generator=torch.Generator().manual_seed(2))
    ours, theirs = ch.hand_attention(m, idx)
    assert (ours - theirs).abs().max() <= 1e-5
    m.cfg.pos = "none"  # the hand-written path now skips the bias the model still adds
    ours_wrong, _ = ch.hand_attention(m, idx)
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
        sens[pos] = ch.shuffle_sensitivity(m, idx)
    assert sens["none"] < 1e-4
    assert sens["rope"] > 1e-2


def test_bands_split_at_the_training_length():
    b = ch.bands([1.0] * 4 + [3.0] * 12, train_len=4, eval_len=16)
    assert b["in_range"] == pytest.approx(1.0)
    assert b["beyond"] == pytest.approx(3.0)
    assert b["whole_8"] == pytest.approx(2.0)
    assert b["whole_16"] == pytest.approx(2.5)
    assert "beyond" not in ch.bands([1.0] * 4, train_len=4, eval_len=16)


# ----------------------------------------------------------------------------- scripts
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CHAPTER, tmp_path_factory.mktemp("out"))


def test_main_quick_end_to_end(quick_run):
    out, proc = quick_run
    res = results_of(out, CHAPTER)
    cfg = res["config"]
    assert res["meta"]["preset"] == "quick"
    assert set(res["schemes"]) == set(ch.VARIANTS)
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
            assert len(losses) == cfg["eval_len"] and "beyond" in r["bands"]
        # training did something: the last validation loss is below the first (uniform ~ ln vocab)
        assert r["history"]["val"][-1]["loss"] < r["history"]["val"][0]["loss"]
    assert res["headline"]["rope_loss_in_range"] == pytest.approx(res["schemes"]["rope"]["bands"]["in_range"], abs=1e-4)
    assert "estimate:" in proc.stdout


def test_visualize_redraws_from_results(quick_run):
    out, _ = quick_run
    plots, gif = out / "plots" / CHAPTER, out / "animations" / CHAPTER / "rope_rotation.gif"
    names = ["sinusoidal_table", "similarity_vs_distance", "alibi_bias", "loss_vs_position", "extrapolation",
             "attention_entropy", "training_curves"]
    assert all((plots / f"{n}.png").exists() for n in names) and gif.exists()
    for n in names:
        (plots / f"{n}.png").unlink()
    gif.unlink()
    proc = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for n in names:
        assert (plots / f"{n}.png").stat().st_size > 10_000
    assert gif.stat().st_size > 10_000


def test_bad_scheme_is_one_error_line(tmp_path):
    proc = run_script(CHAPTER, "main.py", "--quick", "--schemes", "rope,cosine", "--out", tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "cosine" in errors[0]


def test_visualize_without_results_is_one_error_line(tmp_path):
    proc = run_script(CHAPTER, "visualize.py", "--quick", "--out", tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "main.py" in errors[0]
