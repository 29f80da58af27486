"""Chapter 12 · Fine-tuning: answer-only label masking, LoRA (merged == unmerged, only A and B
learn), the reward/DPO/PPO/GRPO objectives against values worked out by hand, the
teacher-forced exact match against real greedy decoding, and the scripts end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.model import GPT, GPTConfig

from workbook_testing import load_chapter_module, run_script

CHAPTER = "12_finetuning"
m = load_chapter_module(CHAPTER, "main")
X = load_chapter_module(CHAPTER, "extras")
O = m.obj
L = m.lora_lib


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tiny_gpt(vocab=53, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, d_model=32, block_size=64, pos="rope",
                         norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)).eval()


def tok():
    base = "\n \",.EGHIKLOPRTabcdefghiklmnoprstuvwy"
    return m.GrownCharTokenizer(base, "0123456789:?AQSW")


# ----------------------------------------------------------------------------- SFT masking
def test_sft_labels_mask_the_prompt():
    x, y = O.sft_example([10, 11, 12], [20, 21])
    assert x == [10, 11, 12, 20]
    assert y == [O.IGNORE, O.IGNORE, 20, 21]  # predicting 11 and 12 is not scored; 20 and 21 are


def test_sft_batch_scores_exactly_the_answer_and_end():
    t = tok()
    exs = [m.Example("color", "Story: Pooh.\nQuestion: What?\nAnswer:", " red"),
           m.Example("hero", "Story: Owl.\nQuestion: Who?\nAnswer:", " Owl")]
    x, y = m.sft_batch(t, exs)
    for row_x, row_y, ex in zip(x, y, exs):
        scored = row_y[row_y != O.IGNORE].tolist()
        assert t.decode(scored) == ex.answer + "\n"
        n = len(ex.prompt) + len(ex.answer) + 1 - 1
        assert t.decode(row_x[:n].tolist()) == (ex.prompt + ex.answer + "\n")[:-1]  # inputs: everything but the last
    # the masked loss is the mean cross-entropy over answer positions only, by hand
    model = tiny_gpt()
    logits, loss = model(x, y)
    logp = logits.log_softmax(-1)
    picks = [-logp[b, t_, y[b, t_]] for b in range(2) for t_ in range(y.shape[1]) if y[b, t_] != O.IGNORE]
    assert loss.item() == pytest.approx(torch.stack(picks).mean().item(), rel=1e-5)


def test_unmasked_variant_scores_the_prompt_too():
    t = tok()
    ex = m.Example("hero", "Story: Owl.\nAnswer:", " Owl")
    _, y = m.sft_batch(t, [ex], masked=False)
    assert (y != O.IGNORE).sum().item() == len(ex.prompt) + len(ex.answer)


def test_token_logprobs_zero_on_ignored():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, O.IGNORE, 4], [O.IGNORE, O.IGNORE, 0]])
    lp = O.token_logprobs(logits, labels)
    assert lp[0, 1] == 0 and lp[1, 0] == 0
    assert lp[0, 2].item() == pytest.approx(logits[0, 2].log_softmax(-1)[4].item(), rel=1e-6)


# ----------------------------------------------------------------------------- exact match == greedy decoding
def test_teacher_forced_exact_match_equals_greedy_decoding(monkeypatch):
    """Take what greedy decoding actually produces after a prompt; declare its first tokens the
    gold answer and its next token the end symbol. Teacher-forced exact match must then be 1,
    and 0 as soon as one answer character is changed."""
    t = tok()
    prompt = "Story: Pooh had a red kite.\nQuestion: Who?\nAnswer:"
    for seed in range(50):  # a random tiny model often repeats one character; find one that does not
        model = tiny_gpt(seed=seed)
        text = t.decode(model.generate(torch.tensor([t.encode(prompt)]), 4, temperature=0)[0, len(prompt):].tolist())
        if text[3] not in text[:3]:
            break
    else:
        raise AssertionError("no seed gave a usable greedy continuation")
    monkeypatch.setattr(m, "END", text[3])
    assert m.exact_match(model, t, [m.Example("x", prompt, text[:3])])["overall"] == 1.0
    wrong = ("a" if text[0] != "a" else "b") + text[1:3]
    assert m.exact_match(model, t, [m.Example("x", prompt, wrong)])["overall"] == 0.0
    too_short = text[:2]  # stopping one token early is not an exact match either
    assert m.exact_match(model, t, [m.Example("x", prompt, too_short)])["overall"] == 0.0


# ----------------------------------------------------------------------------- vocabulary growth
def test_grown_vocab_keeps_old_ids_and_old_logits():
    t = tok()
    base = tiny_gpt(vocab=t.n_base)
    grown = m.grow_vocab(base, t.vocab_size - t.n_base, seed=0).eval()
    assert t.encode("Pooh?") == ["\n \",.EGHIKLOPRTabcdefghiklmnoprstuvwy".index(c) for c in "Pooh"] + [t.n_base + 11]
    x = torch.tensor([t.encode("Pooh had a red kite.")])
    with torch.no_grad():
        assert torch.allclose(grown(x)[..., :t.n_base], base(x), atol=1e-6)
    new = grown.tok_emb.weight[t.n_base:]
    assert torch.allclose(new.mean(0), base.tok_emb.weight.mean(0), atol=0.02)


# ----------------------------------------------------------------------------- LoRA
def test_lora_starts_at_base_and_merged_equals_unmerged():
    torch.manual_seed(0)
    lin = nn.Linear(16, 12)
    ref = lin(torch.ones(1, 16)).detach()
    lo = L.LoRALinear(lin, r=4, alpha=8)
    x = torch.randn(5, 16)
    assert torch.allclose(lo(torch.ones(1, 16)), ref)  # B = 0: exactly the base layer
    with torch.no_grad():
        lo.B.normal_()
    unmerged = lo(x)
    expected = x @ (lin.weight + lo.B @ lo.A * 2.0).T + lin.bias  # W + (alpha/r) B A
    assert torch.allclose(unmerged, expected, atol=1e-5)
    assert torch.linalg.matrix_rank(lo.delta_weight()).item() <= 4
    w0 = lin.weight.detach().clone()
    lo.merge()
    assert not torch.allclose(lin.weight, w0)  # the update really moved into W
    assert torch.allclose(lo(x), unmerged, atol=1e-5)
    lo.unmerge()
    assert torch.allclose(lin.weight, w0, atol=1e-6)
    assert torch.allclose(lo(x), unmerged, atol=1e-5)


def test_only_A_and_B_get_gradients():
    model = tiny_gpt()
    wrappers = L.add_lora(model, r=2, alpha=4)
    assert len(wrappers) == 2 * 7  # 4 attention + 3 SwiGLU projections per layer
    for w in wrappers:
        with torch.no_grad():
            w.B.normal_()
    x = torch.randint(0, 53, (2, 10))
    model(x, x)[1].backward()
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name
    counts = L.count_params(model)
    assert counts["trainable"] == sum(w.A.numel() + w.B.numel() for w in wrappers)


def test_new_rows_only_hook():
    model = tiny_gpt(vocab=20)
    L.add_lora(model, r=2)
    n = m.train_only_new_rows(model, n_base=15)
    assert n == 5 * 32 * 2
    x = torch.randint(0, 20, (2, 10))
    model(x, x)[1].backward()
    for w in (model.tok_emb.weight, model.lm_head.weight):
        assert w.grad[:15].abs().sum() == 0 and w.grad[15:].abs().sum() > 0


# ----------------------------------------------------------------------------- reward model losses
def test_bradley_terry_closed_form():
    good, bad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert O.bradley_terry_loss(good, bad).item() == pytest.approx(expected, rel=1e-6)
    # huge negative margins stay finite (logsigmoid, not log(sigmoid))
    assert O.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item() == pytest.approx(200.0)


def test_margin_ranking_matches_torch():
    good, bad = torch.randn(50), torch.randn(50)
    ours = O.margin_ranking_loss(good, bad, margin=0.5)
    assert ours.item() == pytest.approx(F.margin_ranking_loss(good, bad, torch.ones(50), margin=0.5).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["last", "match"])
def test_reward_model_reads_real_tokens_despite_padding(kind):
    t = tok()
    rm = m.RewardModel(tiny_gpt(), kind, d_key=4, seed=0)
    nn.init.normal_(rm.lin.weight)
    prompts, answers = ["Story: Pooh.\nAnswer:", "Story: Owl had a kite.\nAnswer:"], [" red\n", " Owl\n"]
    together = m.score(rm, t, prompts, answers)
    alone = torch.cat([m.score(rm, t, [p], [a]) for p, a in zip(prompts, answers)])
    assert torch.allclose(together, alone, atol=1e-5)
    # the body is frozen: only the head trains
    assert all(not p.requires_grad for p in rm.lm.parameters())
    assert m.RewardModel(tiny_gpt(), kind, d_key=4, seed=0).q.weight.equal(rm.q.weight)  # seeded init


def test_match_head_learns_what_a_last_token_head_cannot():
    """Pairs that differ only in whether the answer letter occurs in the prompt: the match head
    (an attention read over the prompt) learns it, the last-token linear head on the same frozen
    random body does not (the body never learned to copy)."""
    t = tok()
    letters = "abcdefghiklmnoprstuvwy"
    g = torch.Generator().manual_seed(0)
    pairs = []
    for _ in range(200):
        perm = torch.randperm(len(letters), generator=g).tolist()
        story = "".join(letters[i] for i in perm[:8])
        pairs.append({"task": "color", "prompt": f"Story: {story}.\nAnswer:", "chosen": " " + story[3],
                      "rejected": " " + letters[perm[12]]})
    body = tiny_gpt(vocab=t.vocab_size)
    acc = {}
    for kind in ("last", "match"):
        rm = m.RewardModel(body, kind, d_key=8, seed=0)
        feats = m.pair_features(rm, t, pairs[:120])
        m.train_reward_head(rm, feats, epochs=150, lr=3e-2)
        acc[kind] = m.rm_accuracy(rm, m.pair_features(rm, t, pairs[120:]), pairs[120:])["overall"]
    # a random 2-layer body keeps token identity only partly: the gap is the point, not the level
    assert acc["match"] >= 0.7 and acc["match"] > acc["last"] + 0.1, acc


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_update_through_the_rollout_graph_equals_a_fresh_forward(method):
    """The first epoch of an RL update backpropagates through the rollout's own forward
    (keep_graph) instead of repeating it: the updated weights must be bit-identical."""
    import copy

    t = tok()
    cfg = m.Config(rl_group=4, rl_epochs=2, max_answer_tokens=4, rl_lr=1e-2)
    prompts = [m.Example("color", "Story: Pooh had a red kite.\nQuestion: What color?\nAnswer:", " red", "s1"),
               m.Example("hero", "Story: Owl.\nQuestion: Who?\nAnswer:", " Owl", "s2")]
    ref = tiny_gpt(vocab=t.vocab_size, seed=1)
    rm = m.RewardModel(tiny_gpt(vocab=t.vocab_size, seed=2), "match", d_key=4, seed=0)
    nn.init.normal_(rm.lin.weight)
    after = []
    for keep in (False, True):
        policy = copy.deepcopy(ref)
        value_head = nn.Linear(policy.cfg.d_model, 1)
        nn.init.constant_(value_head.weight, 0.01)
        nn.init.constant_(value_head.bias, 0.1)
        params = list(policy.parameters()) + (list(value_head.parameters()) if method == "ppo" else [])
        opt = torch.optim.AdamW(params, lr=cfg.rl_lr)
        r = m.rollout(policy, ref, rm, t, prompts, cfg, torch.Generator().manual_seed(0), keep_graph=keep)
        assert (r.live is not None) == keep
        if method == "ppo":
            m.ppo_update(policy, value_head, r, opt, cfg, beta=0.1)
        else:
            m.grpo_update(policy, r, opt, cfg, beta=0.1)
        after.append([p.detach().clone() for p in params])
    assert any(not torch.equal(a, b) for a, b in zip(after[0], ref.parameters()))     # it did learn
    for a, b in zip(*after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_balanced_pairs_take_the_same_number_per_task():
    pairs = [{"task": tk} for tk in ["count"] * 10 + ["mood"] * 3 + ["hero"] * 5 + ["color"] * 4]
    out = m.balanced_pairs(pairs, 3)
    assert sorted(p["task"] for p in out) == sorted(["color", "hero", "mood", "count"] * 3)


def test_sanity_checks_report_length_bias(monkeypatch):
    """A reward that is just the answer's length must show up as a correlation of 1, and the
    corrupted answers that are longer than gold (repeated, gold + wrong) must beat gold."""
    monkeypatch.setattr(m, "score", lambda rm, tok_, prompts, answers: torch.tensor([float(len(a)) for a in answers]))
    pairs = [{"prompt": "Story: x.\nAnswer:", "chosen": " red", "rejected": " blue"},
             {"prompt": "Story: y.\nAnswer:", "chosen": " Owl", "rejected": " Pooh"}]
    s = m.sanity_checks(None, None, pairs)
    assert set(s["table"]) == set(m.CORRUPTIONS)
    assert s["length_corr"] == pytest.approx(1.0)
    assert s["table"]["repeated"]["gold_wins"] == 0.0 and s["table"]["empty"]["gold_wins"] == 1.0
    assert s["table"]["gold"]["gold_wins"] == 0.0  # never strictly better than itself
    assert m.CORRUPTIONS["typo"](" red", " blue") == " rea\n"


# ----------------------------------------------------------------------------- DPO
def test_dpo_loss_by_hand():
    pg, pb, rg, rb = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    # margin = beta * ((-1 - -2) - (-3 - -2.5)) = 0.5 * (1 + 0.5) = 0.75
    loss, margin = O.dpo_loss(pg, pb, rg, rb, beta=0.5)
    assert margin.item() == pytest.approx(0.75)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.75)), rel=1e-6)
    # policy == reference: loss is log 2 whatever the log-probs
    assert O.dpo_loss(pg, pb, pg, pb)[0].item() == pytest.approx(math.log(2), rel=1e-6)


def test_dpo_implicit_reward_by_hand():
    # beta * (log pi - log pi_ref): 0.5 * (-1 - -2) = 0.5 and 0.5 * (-3 - -2.5) = -0.25
    r = O.dpo_implicit_reward(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.5]), beta=0.5)
    assert r.tolist() == pytest.approx([0.5, -0.25])
    # the DPO margin is exactly chosen's implicit reward minus rejected's
    pg, pb, rg, rb = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    assert O.dpo_loss(pg, pb, rg, rb, beta=0.5)[1].item() == pytest.approx(0.5 - -0.25)


def test_dpo_log_ratios_see_both_answers_fall():
    """The failure the log exists to show: margin up, yet chosen and rejected both lose probability."""
    ref_good, ref_bad = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -2.0])
    good, bad = ref_good - torch.tensor([1.0, 2.0]), ref_bad - torch.tensor([4.0, 1.0])
    d = m.dpo_log_ratios(good, bad, ref_good, ref_bad)
    assert d["chosen"] == pytest.approx(-1.5) and d["rejected"] == pytest.approx(-2.5)
    assert d["margin"] == pytest.approx(1.0)
    assert d["accuracy"] == pytest.approx(0.5)   # pair 1: -1 > -4 right; pair 2: -2 > -1 wrong


def test_dpo_batch_logps_sum_the_answer_and_its_newline():
    """Summed log p over the answer tokens *and* the newline that ends them, prompt masked: by hand."""
    t, model = tok(), tiny_gpt()
    pair = {"prompt": "Story: Owl.\nAnswer:", "chosen": " Owl", "rejected": " Roo"}
    good, bad = m.dpo_batch_logps(model, t, [pair])
    for got, answer in ((good, " Owl\n"), (bad, " Roo\n")):
        ids = t.encode(pair["prompt"] + answer)
        logp = model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
        n = len(pair["prompt"])
        by_hand = sum(logp[i - 1, ids[i]].item() for i in range(n, len(ids)))   # exactly len(answer) terms
        assert got.item() == pytest.approx(by_hand, rel=1e-5)


# ----------------------------------------------------------------------------- PPO pieces
def test_ppo_clip_by_hand():
    logp_old = torch.zeros(1, 4)
    logp_new = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))
    adv = torch.tensor([[1.0, -1.0, 2.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    # token 0: ratio 1.5, A=1 -> min(1.5, 1.2) = 1.2;  token 1: ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8
    # token 2: ratio 1.1, A=2 -> 2.2 (inside the clip);  token 3: masked out
    loss, clipped = O.ppo_clip_loss(logp_new, logp_old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, rel=1e-5)
    assert clipped.item() == pytest.approx(2 / 3)


def test_ppo_token_rewards_by_hand():
    """Every answer token pays beta * (log pi - log pi_ref); the score lands on the last answer
    token of each row (rows are right-padded, so row 1 ends early); beta = 0 leaves only the score."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    score = torch.tensor([2.0, -1.0])
    r = O.ppo_token_rewards(score, logp, logp_ref, mask, beta=0.5)
    expected = torch.tensor([[-0.25, 0.5, 2.0], [-0.5, 1.0 - 1.0, 0.0]])
    assert torch.allclose(r, expected)
    # summed over a row: score - beta * (sampled KL of the answer)
    assert torch.allclose(r.sum(1), score - 0.5 * ((logp - logp_ref) * mask).sum(1))
    r0 = O.ppo_token_rewards(score, logp, logp_ref, mask, beta=0.0)
    assert torch.allclose(r0, torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))


def test_whiten_uses_only_answer_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, -50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = O.whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(real, (torch.tensor([1.0, 2, 3, 4]) - 2.5) / torch.tensor([1.0, 2, 3, 4]).std(unbiased=False))
    assert (w[~mask.bool()] == 0).all()   # padding gets no advantage


def test_top_answers_ranks_by_frequency():
    ex = m.Example("color", "Story: x.\nAnswer:", " red")
    r = m.Rollout(x=None, y=None, mask=None, answers=[" red\n", " reed\n", " reed\n", " blue\n"], examples=[ex] * 4,
                  reward=torch.tensor([1.0, 2.0, 3.0, -1.0]), logp_old=None, logp_ref=None)
    top = m.top_answers(r, k=2)
    assert top[0] == {"answer": " reed\n", "share": 0.5, "mean_reward": 2.5, "valid": 0.0}
    assert top[1]["answer"] in (" red\n", " blue\n") and top[1]["valid"] == 1.0


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    gamma, lam = 0.9, 0.8
    d2 = 1.0 + gamma * 0 - 0.7            # last real token: the next value is 0 (episode over)
    d1 = 0.0 + gamma * 0.7 - 0.6
    d0 = 0.0 + gamma * 0.6 - 0.5
    a2 = d2
    a1 = d1 + gamma * lam * a2
    a0 = d0 + gamma * lam * a1
    adv, ret = O.gae(rewards, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0], rel=1e-5)
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], rel=1e-5)
    # gamma = lam = 1: every advantage is the final reward minus the value (Monte Carlo)
    adv1, _ = O.gae(rewards, values, mask, 1.0, 1.0)
    assert adv1[0, :3].tolist() == pytest.approx([0.5, 0.4, 0.3], rel=1e-5)


def test_kl_estimates_by_hand_and_unbiased():
    lp, lq = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    est = O.kl_estimates(lp, lq)
    assert est["k1"].item() == pytest.approx(math.log(2))
    assert est["k3"].item() == pytest.approx(0.5 - 1 - math.log(0.5))
    # Monte Carlo: samples from p, both estimators average to the exact KL(p || q)
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    s = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = O.kl_estimates(p.log()[s], q.log()[s])
    exact = (p * (p / q).log()).sum().item()
    assert est["k1"].mean().item() == pytest.approx(exact, abs=0.01)
    assert est["k3"].mean().item() == pytest.approx(exact, abs=0.01)
    assert (est["k3"] >= 0).all()


def test_grpo_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 5.0]])
    a = O.grpo_advantages(r)
    std0 = math.sqrt(4 * 0.25 / 3)     # unbiased std of [1, 0, 0, 1]
    assert a[0].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0], rel=1e-5)
    std1 = math.sqrt((3 * 0.75 ** 2 + 2.25 ** 2) / 3)
    assert a[1].tolist() == pytest.approx([-0.75 / std1] * 3 + [2.25 / std1], rel=1e-5)
    assert O.grpo_advantages(torch.ones(1, 4)).abs().max() == 0  # all equal: nothing to learn


# ----------------------------------------------------------------------------- extras: classification
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_classifier_head_shape_and_padding(pooling):
    t = tok()
    clf = X.Classifier(tiny_gpt(vocab=t.vocab_size), 3, pooling, seed=0).eval()
    assert isinstance(clf.body.lm_head, nn.Identity)  # the LM head is gone, the head reads hidden states
    texts = ["Pooh hugged the red kite.", "Owl lost it.", "Roo hid the blue drum near the river."]
    with torch.no_grad():
        together = clf(*X.encode_texts(t, texts))
        alone = torch.cat([clf(*X.encode_texts(t, [s])) for s in texts])
    assert together.shape == (3, 3)
    assert torch.allclose(together, alone, atol=1e-5)  # right padding never reaches the pooled state


def test_fresh_head_is_at_chance():
    """A freshly initialised head knows nothing: near-uniform predictions, loss ~ ln 3."""
    t = tok()
    clf = X.Classifier(tiny_gpt(vocab=t.vocab_size), 3, "last", seed=0).eval()
    g = torch.Generator().manual_seed(0)
    letters = "abcdefghiklmnoprstuvwy "
    texts = ["".join(letters[i] for i in torch.randint(len(letters), (20,), generator=g).tolist()) for _ in range(60)]
    y = torch.arange(60) % 3
    with torch.no_grad():
        logits = clf(*X.encode_texts(t, texts))
    assert F.cross_entropy(logits, y).item() == pytest.approx(math.log(3), abs=0.1)
    assert logits.softmax(-1).max().item() < 0.45


def test_bow_logistic_regression_separates_a_separable_toy():
    """Label = which of three keywords a document contains, among random filler words: linearly
    separable in word counts, so the converged L2-regularised fit must get (nearly) all of it,
    on training and on fresh documents."""
    g = torch.Generator().manual_seed(0)
    filler = [f"filler{c}{d}" for c in "abcdefgh" for d in "xyz"]   # words carrying no label
    keys = ["happyword", "sadword", "sleepyword"]

    def docs(n):
        out, labels = [], []
        for _ in range(n):
            lab = int(torch.randint(3, (1,), generator=g))
            words = [filler[i] for i in torch.randint(len(filler), (6,), generator=g).tolist()] + [keys[lab]]
            out.append(" ".join(words[i] for i in torch.randperm(7, generator=g).tolist()))
            labels.append(lab)
        return out, torch.tensor(labels)
    tr, y_tr = docs(150)
    te, y_te = docs(100)
    vocab = X.bow_vocab(tr)
    assert set(keys) <= set(vocab)
    lin, fit = X.fit_logreg(X.bow_counts(tr, vocab), y_tr, 3, l2=1e-3)
    assert fit["train_accuracy"] == 1.0 and fit["grad_norm"] < 1e-3
    assert X.accuracy(lin(X.bow_counts(te, vocab)), y_te) >= 0.98
    assert X.bow_counts(["Sadword, sadword zzz."], vocab)[0, vocab.index("sadword")] == 2  # counts, case-folded


def test_mood_examples_drop_the_opening_and_keep_test_disjoint():
    from shared import corpus
    wood = corpus.HundredAcreWood()
    train = X.mood_examples(wood, 40, 1, 150)
    test = X.mood_examples(wood, 40, 2, 150, avoid={t for t, _ in train})
    assert not {t for t, _ in train} & {t for t, _ in test}
    for text, label in train + test:
        assert "day," not in text and not any(mood in text for mood in corpus.MOODS)  # the label is not stated
        verb = text.rsplit("In the evening, ", 1)[1].split()[1]
        assert verb in corpus.ENDING_VERBS[corpus.MOODS[label]]  # ... but the ending verb implies it


# ----------------------------------------------------------------------------- extras: curriculum
def test_curriculum_order_sorts_by_key_and_keeps_the_examples():
    g = torch.Generator().manual_seed(0)
    examples = [f"ex{i}" for i in range(50)] + ["ex3"]    # a repeat: the multiset must be kept
    keys = torch.rand(51, generator=g).tolist()
    keys[7] = keys[8]                                      # a tie
    by = dict(zip(range(51), keys))
    for order in X.ORDERS:
        out = X.curriculum_order(examples, keys, order, seed=1)
        assert sorted(out) == sorted(examples)
    easy = X.curriculum_order(list(range(51)), keys, "easy → hard", 0)
    hard = X.curriculum_order(list(range(51)), keys, "hard → easy", 0)
    assert [by[i] for i in easy] == sorted(keys)
    assert [by[i] for i in hard] == sorted(keys, reverse=True)
    shuffled = X.curriculum_order(list(range(51)), keys, "shuffled", 1)
    assert shuffled == X.curriculum_order(list(range(51)), keys, "shuffled", 1) != list(range(51))
    assert X.difficulty_of(easy, list(range(51)), keys) == sorted(keys)
    with pytest.raises(ValueError):
        X.curriculum_order(examples, keys, "sideways", 0)


def test_answer_scores_agree_with_the_chapters_exact_match():
    t = tok()
    model = tiny_gpt(vocab=t.vocab_size)
    exs = [m.Example(task, f"Story: {c} had a kite.\nQuestion: Who?\nAnswer:", f" {c}")
           for task, c in (("hero", "Owl"), ("hero", "Roo"), ("color", "red"))]
    got = X.answer_scores(m, model, t, exs, batch=2)
    ref = m.exact_match(model, t, exs)
    assert got["overall"] == ref["overall"] and got["per_task"] == ref["per_task"]
    with torch.no_grad():  # NLL by hand: -sum log p over the answer tokens (and the newline)
        by_hand = []
        for ex in exs:
            x, y = m.sft_batch(t, [ex])
            by_hand.append(-O.token_logprobs(model(x), y).sum().item())
    assert got["nll"] == pytest.approx(sum(by_hand) / 3, rel=1e-5)
    assert got["nll_per_task"]["color"] == pytest.approx(by_hand[2], rel=1e-5)


def test_sft_in_order_feeds_the_batches_in_order(monkeypatch):
    """The curriculum only means something if SFT really sees the examples in the given order."""
    t = tok()
    exs = [m.Example("hero", f"Story: {c}.\nAnswer:", f" {c}") for c in ("Owl", "Roo", "Pooh", "Kanga")]
    seen = []
    real = m.sft_batch
    monkeypatch.setattr(m, "sft_batch", lambda tk, batch, masked=True: seen.append([e.answer for e in batch]) or real(tk, batch, masked))
    cfg = m.Config(batch=2)
    m.sft(tiny_gpt(vocab=t.vocab_size), t, exs, cfg, lr=1e-3, steps=2, seed=0, desc="t", in_order=True)
    assert seen == [[" Owl", " Roo"], [" Pooh", " Kanga"]]


# ----------------------------------------------------------------------------- the scripts
def is_share_of(value: float, n: int) -> bool:
    """`value` is k/n for a whole k (float32 means are good to ~1e-7)."""
    return n > 0 and 0 <= value <= 1 and abs(value * n - round(value * n)) < 1e-4


def test_reward_length_correlation_is_measured(monkeypatch):
    """sanity_checks' length correlation on stand-in reward models whose reward is the answer's length
    (r = +1) or minus it (r = -1); and with the latter the gold answer beats the longer corruptions."""
    pairs = [{"prompt": "Q?", "chosen": " red", "rejected": " blue"},
             {"prompt": "Q?", "chosen": " Pooh", "rejected": " Owl"}]
    for sign in (1.0, -1.0):
        monkeypatch.setattr(m, "score", lambda rm, tk, prompts, answers: torch.tensor([sign * len(a) for a in answers]))
        r = m.sanity_checks(None, None, pairs)
        assert r["length_corr"] == pytest.approx(sign, abs=1e-6) and r["n_prompts"] == 2
    assert r["table"]["repeated"]["gold_wins"] == 1.0 and r["table"]["empty"]["gold_wins"] == 0.0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ch12")
    r = run_script(CHAPTER, "main.py", "--quick", "--threads", "1", "--out", out, "--checkpoints", out / "ck")
    assert r.returncode == 0, r.stderr[-2000:]
    return out, json.loads((out / "results" / f"{CHAPTER}.json").read_text())


def test_quick_run_results(quick_run):
    out, res = quick_run
    h = res["headline"]
    n_test, n_pairs = res["data"]["test_examples"], res["data"]["pairs_test"]
    for k, detail, n in (("sft_exact_match_before", res["sft"]["before"], n_test),
                         ("sft_exact_match_after", res["sft"]["after"], n_test),
                         ("lora_exact_match", res["lora"]["accuracy"], n_test),
                         ("reward_model_accuracy", res["reward_model"]["accuracy"], n_pairs)):
        assert h[k] == detail["overall"]
        assert is_share_of(h[k], n)   # right answers (or rightly ranked pairs) / all of them
    assert res["lora"]["merge_max_abs_diff"] < 1e-4
    assert 0 < h["lora_trainable_share"] < 0.5
    assert set(res["rl"]["curves"]) == {"PPO", "PPO, no KL", "GRPO", "DPO"}
    assert res["rl"]["final"]["SFT"]["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
    assert len(res["rl"]["curves"]["PPO"]) == res["config"]["rl_updates"] + 1   # the start, then after each update
    for v in res["rl"]["final"].values():
        assert v["top_answers"] and sum(a["share"] for a in v["top_answers"]) <= 1.0 + 1e-9
    assert len(res["sft"]["losses"]) == res["config"]["sft_steps"]
    assert list((out / "plots" / CHAPTER).glob("*.png"))
    rm = res["reward_model"]
    assert set(rm["variants"]) == {"match, BT", "last token, BT", "match, margin"}
    assert set(rm["sanity"]["table"]) == set(m.CORRUPTIONS)
    assert rm["sanity"]["n_prompts"] > 0 and set(rm["sanity"]["table"]["gold"]) == {"mean_reward", "gold_wins"}
    assert len(rm["losses"]) == res["config"]["rm_epochs"]
    dpo = res["rl"]["dpo"]
    assert [p["step"] for p in dpo["log"]] == list(range(res["config"]["dpo_steps"]))
    assert dpo["log"][0]["chosen"] == pytest.approx(0.0, abs=1e-4)   # step 0: the policy is still the reference
    assert dpo["log"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert is_share_of(dpo["heldout"]["accuracy"], n_pairs) and dpo["n_heldout"] == n_pairs
    assert (out / "plots" / CHAPTER / "dpo_logratios.png").exists()


def test_visualize_redraws(quick_run):
    out, res = quick_run
    assert "extras" not in res  # the default path is unchanged without --extras
    for png in (out / "plots" / CHAPTER).glob("*.png"):
        png.unlink()
    r = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    pngs = {p.name for p in (out / "plots" / CHAPTER).glob("*.png")}
    assert len(pngs) >= 4 and not any(n.startswith("extras") for n in pngs)


def test_quick_run_with_extras(tmp_path):
    r = run_script(CHAPTER, "main.py", "--quick", "--extras", "--threads", "1", "--out", tmp_path,
                   "--checkpoints", tmp_path / "ck")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "results" / f"{CHAPTER}.json").read_text())
    x = res["extras"]
    acc = x["classification"]["accuracy"]
    assert set(acc) == {"chance (majority class)", "BoW logistic regression", "head only (last token)",
                        "head only (mean pool)", "full fine-tune (last token)"}
    assert all(is_share_of(v, x["classification"]["n_test"]) for v in acc.values())
    assert len(x["classification"]["full"]["losses"]) == x["config"]["cls_steps"]
    cur = x["curriculum"]
    assert set(cur["runs"]) == set(X.ORDERS)
    for runs in cur["runs"].values():
        assert len(runs) == x["config"]["cur_seeds"]
        for run_ in runs:
            assert len(run_["losses"]) == x["config"]["cur_steps"] and is_share_of(run_["overall"], x["config"]["n_cur_test"])
    easy = cur["runs"]["easy → hard"][0]["batch_difficulty"]
    assert easy == sorted(easy)
    assert cur["runs"]["hard → easy"][0]["batch_difficulty"] == pytest.approx(easy[::-1], rel=1e-9)
    for clock in ("cpu_s", "wall_s"):   # the total is its two parts
        assert x[clock]["total"] == pytest.approx(x[clock]["classification"] + x[clock]["curriculum"], rel=1e-9)
    pngs = {p.name for p in (tmp_path / "plots" / CHAPTER).glob("*.png")}
    assert {"extras_classification.png", "extras_curriculum.png"} <= pngs


def test_bad_input_exits_2(tmp_path):
    r = run_script(CHAPTER, "main.py", "--quick", "--lora-rank", "0", "--out", tmp_path)
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if line.strip()] == ["error: --lora-rank must be at least 1, got 0"]


def test_bad_rl_lr_exits_2(tmp_path):
    r = run_script(CHAPTER, "main.py", "--quick", "--rl-lr", "0", "--out", tmp_path)
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if line.strip()] == ["error: --rl-lr must be between 0 and 1, got 0.0"]


def test_bad_dpo_lr_exits_2(tmp_path):
    r = run_script(CHAPTER, "main.py", "--quick", "--dpo-lr", "1.5", "--out", tmp_path)
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if line.strip()] == ["error: --dpo-lr must be between 0 and 1, got 1.5"]


def test_bad_rl_updates_exits_2_before_any_work(tmp_path):
    r = run_script(CHAPTER, "main.py", "--quick", "--rl-updates", "0", "--out", tmp_path)
    assert r.returncode == 2
    assert [line for line in r.stderr.splitlines() if line.strip()] == ["error: --rl-updates must be at least 1, got 0"]
    assert not (tmp_path / "results").exists()
