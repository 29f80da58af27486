"""Chapter 11 · Pretraining objectives: the three masks exactly, BERT's 80/10/10 corruption and
its masking rate, the mask-taking model against the shared causal GPT, Poincaré distance
properties, the Bayes-optimal fill-in oracle, and the scripts end to end."""
import math

import torch

from shared.corpus import HundredAcreWood
from shared.model import GPT, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "11_pretraining_objectives"
obj = load_chapter_module(CH, "lm_objectives")
fair = load_chapter_module(CH, "fair_tests")
hyp = load_chapter_module(CH, "hyperbolic")


# ----------------------------------------------------------------------------- masks
def test_masks_exactly_as_specified():
    T = 5
    assert obj.causal_mask(T).int().tolist() == [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                 [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert obj.bidirectional_mask(T).all()
    # prefix of 2: rows 0 and 1 see each other (and not the suffix); later rows are causal
    assert obj.prefix_mask(T, 2).int().tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                    [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    assert torch.equal(obj.prefix_mask(T, 0), obj.causal_mask(T))
    assert torch.equal(obj.prefix_mask(T, 1), obj.causal_mask(T))     # a prefix of one token is causal
    assert torch.equal(obj.prefix_mask(T, T), obj.bidirectional_mask(T))
    batch = obj.prefix_mask(T, torch.tensor([2, 4]))
    assert batch.shape == (2, T, T)
    assert torch.equal(batch[0], obj.prefix_mask(T, 2)) and torch.equal(batch[1], obj.prefix_mask(T, 4))


def tiny(seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=30, block_size=16, n_layer=2, n_head=2, d_model=32)
    return obj.MaskedLM(cfg).eval(), cfg


def test_causal_mask_reproduces_the_shared_gpt():
    model, cfg = tiny()
    ref = GPT(cfg).eval()
    missing = ref.load_state_dict(model.state_dict())  # same parameter names and shapes
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randint(0, 30, (3, 12))
    with torch.no_grad():
        assert torch.allclose(model(x, obj.causal_mask(12)), ref(x), atol=1e-5)
    assert model.num_params() == ref.num_params()


def test_bidirectional_output_depends_on_future_tokens_causal_does_not():
    model, _ = tiny()
    x = torch.randint(0, 30, (1, 10), generator=torch.Generator().manual_seed(3))
    x2 = x.clone()
    x2[0, 7] = (x[0, 7] + 1) % 30              # change a FUTURE token (position 7) only
    i = 3
    with torch.no_grad():
        for mask, should_change in ((obj.causal_mask(10), False), (obj.bidirectional_mask(10), True),
                                    (obj.prefix_mask(10, 5), False), (obj.prefix_mask(10, 8), True)):
            a, b = model(x, mask)[0, i], model(x2, mask)[0, i]
            assert (not torch.allclose(a, b, atol=1e-6)) == should_change


def test_prefix_objective_scores_exactly_the_suffix():
    x = torch.arange(8).repeat(4, 1)
    y = x + 1
    inputs, mask, targets = obj.objective_batch("prefix", x, y, 99, 50, torch.Generator().manual_seed(0))
    for r in range(4):
        s = int(mask[r, 0].sum())                 # row 0 sees exactly the prefix
        assert torch.equal(mask[r], obj.prefix_mask(8, s))
        assert (targets[r, :s - 1] == -100).all() and torch.equal(targets[r, s - 1:], y[r, s - 1:])
    _, m, t = obj.objective_batch("clm", x, y, 99, 50, torch.Generator())
    assert torch.equal(m, obj.causal_mask(8)) and torch.equal(t, y)


def test_bert_80_10_10_on_a_large_sample():
    V = 1000
    idx = torch.randint(0, V, (400, 500), generator=torch.Generator().manual_seed(1))
    inputs, targets, how = obj.bert_corrupt(idx, mask_id=V, n_real=V, generator=torch.Generator().manual_seed(2))
    sel = targets != -100
    n = sel.sum().item()
    assert abs(n / idx.numel() - 0.15) < 0.005
    assert torch.equal(targets[sel], idx[sel]) and torch.equal(inputs[~sel], idx[~sel])
    masked = (inputs == V) & sel
    kept = (inputs == idx) & sel
    changed = sel & ~masked & ~kept
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    # kept: the 10% "keep", plus the random replacements that happened to draw the same token
    assert abs(kept.sum().item() / n - (0.1 + 0.1 / V)) < 0.01
    assert abs(changed.sum().item() / n - 0.1 * (1 - 1 / V)) < 0.01
    assert (inputs[changed] < V).all()            # random replacements are real tokens, never [MASK]
    assert torch.equal(how == 1, masked)


def test_masking_rate_sets_the_share_of_scored_tokens():
    x = torch.randint(0, 50, (200, 100), generator=torch.Generator().manual_seed(4))
    for rate in (0.15, 0.5):
        inputs, mask, targets = obj.objective_batch("mlm", x, x, 99, 50, torch.Generator().manual_seed(5), rate)
        assert abs((targets != -100).float().mean().item() - rate) < 0.01, rate
        assert mask.all()                                  # the masked LM reads both ways
        assert abs((inputs == 99).float().mean().item() - 0.8 * rate) < 0.01, rate


def test_blanks_skip_stories_longer_than_max_len():
    wood = HundredAcreWood()
    tok = obj.WordTokenizer.from_text(wood.text(50_000))
    stories = wood.stories(60, seed=2)
    lengths = sorted(len(tok.split("\n" + st.text)) for st in stories)
    cut = lengths[len(lengths) // 2]                        # about half the stories are longer
    blanks = fair.make_blanks(stories, tok, seed=0, max_len=cut)
    assert 0 < len(blanks) < len(fair.make_blanks(stories, tok, seed=0, max_len=10_000))
    assert all(len(b["pieces"]) <= cut for b in blanks)
    for b in blanks:                                       # the answer is among its category's candidates
        assert b["answer"] in b["candidates"] and b["where"] in ("opening", "middle", "ending")


def test_word_tokenizer_round_trips_the_corpus():
    text = HundredAcreWood().text(5000, seed=4)
    tok = obj.WordTokenizer.from_text(text)
    assert tok.decode(tok.encode(text)) == text
    assert tok.words[tok.mask_id] == "[MASK]"


# ----------------------------------------------------------------------------- the fair test's oracle
def test_oracle_knows_the_ending_repeats_the_opening():
    wood = HundredAcreWood()
    st = wood.stories(1, seed=5)[0]
    tok = obj.WordTokenizer.from_text(wood.text(50_000))
    pieces = tok.split("\n" + st.text)
    hero = st.opening.get("hero")
    pos = pieces.index(" " + hero)                 # the hero's name in the opening
    cands = [" " + c for c in ("Pooh", "Piglet", "Eeyore", "Owl")]
    if " " + hero not in cands:
        cands[0] = " " + hero
    blank = {"pieces": pieces, "pos": pos, "answer": " " + hero, "candidates": cands}
    assert fair.oracle_accuracy(blank, wood) == 1.0
    wrong = dict(blank, answer=next(c for c in cands if c != " " + hero))
    assert fair.oracle_accuracy(wrong, wood) == 0.0


class _Favours(torch.nn.Module):
    """A stub model that predicts one token at ONE position (uniform elsewhere) and records the
    masks it was given: reading the wrong position would leave every candidate tied."""

    def __init__(self, vocab, favourite, at):
        super().__init__()
        self.vocab, self.favourite, self.at, self.masks = vocab, favourite, at, []

    def forward(self, idx, mask):
        self.masks.append(mask)
        logits = torch.zeros(*idx.shape, self.vocab)
        logits[:, self.at, self.favourite] = 5.0
        return logits


def test_candidate_scoring_reads_the_blank_position_for_every_objective():
    wood = HundredAcreWood()
    tok = obj.WordTokenizer.from_text(wood.text(50_000))
    st = wood.stories(1, seed=5)[0]
    pieces = tok.split("\n" + st.text)
    pos = pieces.index(" " + st.opening.get("hero"))
    cands = [" Pooh", " Piglet", " Owl"]
    blank = {"pieces": pieces, "pos": pos, "answer": " Owl", "candidates": cands}
    for objective in ("mlm", "clm", "prefix"):
        # the MLM reads the blank's own position; causal scorers read the position before it
        stub = _Favours(tok.vocab_size, tok.stoi[" Piglet"], pos if objective == "mlm" else pos - 1)
        scores = fair.candidate_scores(stub, objective, blank, tok, "cpu")
        assert cands[int(scores.argmax())] == " Piglet", objective
        mask = stub.masks[-1]
        expected = {"mlm": obj.bidirectional_mask(mask.shape[-1]), "clm": obj.causal_mask(mask.shape[-1]),
                    "prefix": obj.prefix_mask(mask.shape[-1], pos)}[objective]
        assert torch.equal(mask, expected), objective


# ----------------------------------------------------------------------------- Poincaré
def test_poincare_distance_properties():
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(60, 3, generator=g, dtype=torch.float64)
    pts = pts / pts.norm(dim=-1, keepdim=True) * torch.rand(60, 1, generator=g, dtype=torch.float64) * 0.95
    d = hyp.poincare_distance(pts[:, None], pts[None])
    assert torch.allclose(d, d.T, atol=1e-10)
    assert torch.allclose(torch.diagonal(d), torch.zeros(60, dtype=torch.float64), atol=1e-7)
    assert (d[~torch.eye(60, dtype=torch.bool)] > 0).all()
    tri = d[:, :, None] + d[None, :, :] - d[:, None, :].transpose(1, 2)  # d(i,j) + d(j,k) - d(i,k)
    assert tri.min() > -1e-9


def test_poincare_distance_on_a_ray_is_the_closed_form():
    direction = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    for r1, r2 in ((0.0, 0.5), (0.2, 0.9), (0.7, 0.99)):
        d = hyp.poincare_distance(r1 * direction, r2 * direction)
        expected = 2 * math.atanh(r2) - 2 * math.atanh(r1)   # d(0, r) = ln((1 + r) / (1 - r))
        assert abs(float(d) - expected) < 1e-9


def test_tree_distances_and_map_of_a_perfect_embedding():
    nodes, pairs, dist, depth = hyp.tree(HundredAcreWood.hierarchy())
    i = {n: k for k, n in enumerate(nodes)}
    assert dist[i["Pooh"], i["honey pot"]] == 1 and dist[i["Kanga"], i["Roo"]] == 2
    assert dist[i["Hundred Acre Wood"], i["kite"]] == 3 and depth["kite"] == 3
    rel = hyp.related_matrix(len(nodes), pairs)
    assert hyp.mean_average_precision(dist, rel) == 1.0         # tree distances rank the neighbours first
    assert hyp.distortion(dist, dist) < 1e-9
    scrambled = dist[torch.randperm(len(nodes), generator=torch.Generator().manual_seed(0))]
    assert hyp.mean_average_precision(scrambled, rel) < hyp.mean_average_precision(dist, rel)


def test_riemannian_sgd_stays_in_the_ball_and_learns_the_tree():
    nodes, pairs, dist, _ = hyp.tree(HundredAcreWood.hierarchy())
    x = hyp.train_embedding(len(nodes), pairs, 2, "poincare", epochs=200, lr=0.3, seed=0)
    assert (x.norm(dim=-1) < 1).all()
    d = hyp.poincare_distance(x[:, None], x[None])
    assert hyp.mean_average_precision(d, hyp.related_matrix(len(nodes), pairs)) > 0.8


# ----------------------------------------------------------------------------- end to end
def test_main_quick_end_to_end(tmp_path):
    run_quick(CH, tmp_path)
    res = results_of(tmp_path, CH)
    h = res["headline"]
    fill = res["fill_in_the_blank"]
    rows = {row["blank in"]: row for row in fill["table"]}
    parts = [rows[w] for w in ("opening", "middle", "ending") if w in rows]
    assert rows["all"]["n"] == fill["n"] == sum(r["n"] for r in parts) > 0
    for k in ("mlm", "clm", "prefix", "oracle", "chance"):
        assert h[f"fill_acc_{k}"] == rows["all"][k]   # the headline is the all-blanks row, the n-weighted mean
        assert math.isclose(rows["all"][k], sum(r[k] * r["n"] for r in parts) / fill["n"], rel_tol=1e-9)
    for k in ("mlm", "clm", "prefix"):   # a model's accuracy is right answers / blanks
        right = h[f"fill_acc_{k}"] * fill["n"]
        assert abs(right - round(right)) < 1e-6
    assert h["fill_acc_oracle"] > h["fill_acc_chance"]
    assert h["suffix_nats_clm"] > h["suffix_floor_nats"] > 0        # no model beats the exact floor
    assert len(res["masks"]["tokens"]) == len(res["masks"]["clm"])
    assert set(res["histories"]) == {"mlm", "clm", "prefix"}
    assert {row["geometry"] for row in res["hyperbolic"]["table"]} == {"poincare", "euclidean"}
    assert len(res["concepts"]["table"]) == 3
    # the ablation's 15% row is the main masked LM scored on the same blanks: the same accuracy
    ablation = {row["mask_rate"]: row for row in res["mask_rate_ablation"]}
    assert set(ablation) == {0.15, 0.3, 0.5}
    assert math.isclose(ablation[0.15]["fill_all"], rows["all"]["mlm"], rel_tol=1e-9)
    assert all(row["loss_at_0.15"] > 0 for row in ablation.values())
    plots = {p.name for p in (tmp_path / "plots" / CH).glob("*.png")}
    expected = {"objective_masks.png", "loss_curves.png", "fill_in_the_blank.png", "suffix_loss.png", "mask_rate.png",
                "poincare_disk.png", "large_concept_model.png"}
    assert plots == expected

    for p in (tmp_path / "plots" / CH).glob("*.png"):
        p.unlink()
    v = run_script(CH, "visualize.py", "--quick", "--out", tmp_path)
    assert v.returncode == 0, v.stderr[-2000:]
    assert {p.name for p in (tmp_path / "plots" / CH).glob("*.png")} == expected


def test_bad_input_is_one_error_line(tmp_path):
    assert_exit_2(CH, "main.py", ["--quick", "--steps", "0"], "--steps", tmp_path)
    assert_exit_2(CH, "main.py", ["--quick", "--mask-rates", "0.15,1.5"], "--mask-rates", tmp_path)
