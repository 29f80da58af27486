"""Chapter 12 · Fine-tuning: answer-only label masking, LoRA (merged == unmerged, only A and B
learn, its share in closed form), the reward/DPO/PPO/GRPO objectives against values worked out
by hand, the verifiable rule reward, the teacher-forced exact match against real greedy
decoding, and every part of main.py end to end."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.model import GPT, GPTConfig

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CHAPTER = "12_finetuning"
S = load_chapter_module(CHAPTER, "sft")
L = load_chapter_module(CHAPTER, "lora")
RM = load_chapter_module(CHAPTER, "reward_model")
R = load_chapter_module(CHAPTER, "rl")


pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py


def tiny_gpt(vocab=53, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, n_layer=2, n_head=2, d_model=32, block_size=64, pos="rope",
                         norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)).eval()


def tok():
    base = "\n \",.EGHIKLOPRTabcdefghiklmnoprstuvwy"
    return S.GrownCharTokenizer(base, "0123456789:?AQSW")


# ----------------------------------------------------------------------------- SFT masking
def test_sft_labels_mask_the_prompt():
    x, y = S.sft_example([10, 11, 12], [20, 21])
    assert x == [10, 11, 12, 20]
    assert y == [S.IGNORE, S.IGNORE, 20, 21]  # predicting 11 and 12 is not scored; 20 and 21 are


def test_sft_batch_scores_exactly_the_answer_and_end():
    t = tok()
    exs = [S.Example("color", "Story: Pooh.\nQuestion: What?\nAnswer:", " red"),
           S.Example("hero", "Story: Owl.\nQuestion: Who?\nAnswer:", " Owl")]
    x, y = S.sft_batch(t, exs)
    for row_x, row_y, ex in zip(x, y, exs):
        scored = row_y[row_y != S.IGNORE].tolist()
        assert t.decode(scored) == ex.answer + "\n"
        n = len(ex.prompt) + len(ex.answer) + 1 - 1
        assert t.decode(row_x[:n].tolist()) == (ex.prompt + ex.answer + "\n")[:-1]  # inputs: everything but the last
    # the masked loss is the mean cross-entropy over answer positions only, by hand
    model = tiny_gpt()
    logits, loss = model(x, y)
    logp = logits.log_softmax(-1)
    picks = [-logp[b, t_, y[b, t_]] for b in range(2) for t_ in range(y.shape[1]) if y[b, t_] != S.IGNORE]
    assert loss.item() == pytest.approx(torch.stack(picks).mean().item(), rel=1e-5)


def test_unmasked_variant_scores_the_prompt_too():
    t = tok()
    ex = S.Example("hero", "Story: Owl.\nAnswer:", " Owl")
    _, y = S.sft_batch(t, [ex], masked=False)
    assert (y != S.IGNORE).sum().item() == len(ex.prompt) + len(ex.answer)


def test_token_logprobs_zero_on_ignored():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, S.IGNORE, 4], [S.IGNORE, S.IGNORE, 0]])
    lp = S.token_logprobs(logits, labels)
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
    monkeypatch.setattr(S, "END", text[3])
    assert S.exact_match(model, t, [S.Example("x", prompt, text[:3])])["overall"] == 1.0
    wrong = ("a" if text[0] != "a" else "b") + text[1:3]
    assert S.exact_match(model, t, [S.Example("x", prompt, wrong)])["overall"] == 0.0
    too_short = text[:2]  # stopping one token early is not an exact match either
    assert S.exact_match(model, t, [S.Example("x", prompt, too_short)])["overall"] == 0.0


# ----------------------------------------------------------------------------- vocabulary growth
def test_grown_vocab_keeps_old_ids_and_old_logits():
    t = tok()
    base = tiny_gpt(vocab=t.n_base)
    grown = S.grow_vocab(base, t.vocab_size - t.n_base, seed=0).eval()
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
    n = S.train_only_new_rows(model, n_base=15)
    assert n == 5 * 32 * 2
    x = torch.randint(0, 20, (2, 10))
    model(x, x)[1].backward()
    for w in (model.tok_emb.weight, model.lm_head.weight):
        assert w.grad[:15].abs().sum() == 0 and w.grad[15:].abs().sum() > 0


# ----------------------------------------------------------------------------- reward model losses
def test_bradley_terry_closed_form():
    good, bad = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(2))) / 2
    assert RM.bradley_terry_loss(good, bad).item() == pytest.approx(expected, rel=1e-6)
    # huge negative margins stay finite (logsigmoid, not log(sigmoid))
    assert RM.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([200.0])).item() == pytest.approx(200.0)


def test_margin_ranking_matches_torch():
    good, bad = torch.randn(50), torch.randn(50)
    ours = RM.margin_ranking_loss(good, bad, margin=0.5)
    assert ours.item() == pytest.approx(F.margin_ranking_loss(good, bad, torch.ones(50), margin=0.5).item(), rel=1e-6)


@pytest.mark.parametrize("kind", ["last", "match"])
def test_reward_model_reads_real_tokens_despite_padding(kind):
    t = tok()
    rm = RM.RewardModel(tiny_gpt(), kind, d_key=4, seed=0)
    nn.init.normal_(rm.lin.weight)
    prompts, answers = ["Story: Pooh.\nAnswer:", "Story: Owl had a kite.\nAnswer:"], [" red\n", " Owl\n"]
    together = RM.score(rm, t, prompts, answers)
    alone = torch.cat([RM.score(rm, t, [p], [a]) for p, a in zip(prompts, answers)])
    assert torch.allclose(together, alone, atol=1e-5)
    # the body is frozen: only the head trains
    assert all(not p.requires_grad for p in rm.lm.parameters())
    assert RM.RewardModel(tiny_gpt(), kind, d_key=4, seed=0).q.weight.equal(rm.q.weight)  # seeded init


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
        rm = RM.RewardModel(body, kind, d_key=8, seed=0)
        feats = RM.pair_features(rm, t, pairs[:120])
        RM.train_reward_head(rm, feats, epochs=150, lr=3e-2)
        acc[kind] = RM.rm_accuracy(rm, RM.pair_features(rm, t, pairs[120:]), pairs[120:])["overall"]
    # a random 2-layer body keeps token identity only partly: the gap is the point, not the level
    assert acc["match"] >= 0.7 and acc["match"] > acc["last"] + 0.1, acc


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_update_through_the_rollout_graph_equals_a_fresh_forward(method):
    """The first epoch of an RL update backpropagates through the rollout's own forward
    (keep_graph) instead of repeating it: the updated weights must be bit-identical."""
    import copy

    t = tok()
    rc = R.RLConfig(group=4, epochs=2, max_answer_tokens=4, lr=1e-2)
    prompts = [S.Example("color", "Story: Pooh had a red kite.\nQuestion: What color?\nAnswer:", " red", "s1"),
               S.Example("hero", "Story: Owl.\nQuestion: Who?\nAnswer:", " Owl", "s2")]
    ref = tiny_gpt(vocab=t.vocab_size, seed=1)
    rm = RM.RewardModel(tiny_gpt(vocab=t.vocab_size, seed=2), "match", d_key=4, seed=0)
    nn.init.normal_(rm.lin.weight)

    def reward_fn(examples, answers):
        return RM.score(rm, t, [e.prompt for e in examples], answers)
    after = []
    for keep in (False, True):
        policy = copy.deepcopy(ref)
        value_head = nn.Linear(policy.cfg.d_model, 1)
        nn.init.constant_(value_head.weight, 0.01)
        nn.init.constant_(value_head.bias, 0.1)
        params = list(policy.parameters()) + (list(value_head.parameters()) if method == "ppo" else [])
        opt = torch.optim.AdamW(params, lr=rc.lr)
        r = R.rollout(policy, ref, reward_fn, t, prompts, rc, torch.Generator().manual_seed(0), keep_graph=keep)
        assert (r.live is not None) == keep
        if method == "ppo":
            R.ppo_update(policy, value_head, r, opt, rc, beta=0.1)
        else:
            R.grpo_update(policy, r, opt, rc, beta=0.1)
        after.append([p.detach().clone() for p in params])
    assert any(not torch.equal(a, b) for a, b in zip(after[0], ref.parameters()))     # it did learn
    for a, b in zip(*after):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_balanced_pairs_take_the_same_number_per_task():
    pairs = [{"task": tk} for tk in ["count"] * 10 + ["mood"] * 3 + ["hero"] * 5 + ["color"] * 4]
    out = RM.balanced_pairs(pairs, 3)
    assert sorted(p["task"] for p in out) == sorted(["color", "hero", "mood", "count"] * 3)


def test_sanity_checks_report_length_bias():
    """A reward that is just the answer's length must show up as a correlation of 1, and the
    corrupted answers that are longer than gold (repeated, gold + wrong) must beat gold."""
    pairs = [{"prompt": "Story: x.\nAnswer:", "chosen": " red", "rejected": " blue"},
             {"prompt": "Story: y.\nAnswer:", "chosen": " Owl", "rejected": " Pooh"}]
    s = RM.sanity_checks(None, None, pairs, score_fn=lambda prompts, ans: torch.tensor([float(len(a)) for a in ans]))
    assert set(s["table"]) == set(RM.CORRUPTIONS)
    assert s["length_corr"] == pytest.approx(1.0)
    assert s["table"]["repeated"]["gold_wins"] == 0.0 and s["table"]["empty"]["gold_wins"] == 1.0
    assert s["table"]["gold"]["gold_wins"] == 0.0  # never strictly better than itself
    assert RM.CORRUPTIONS["typo"](" red", " blue") == " rea\n"
    neg = RM.sanity_checks(None, None, pairs, score_fn=lambda prompts, ans: torch.tensor([-float(len(a)) for a in ans]))
    assert neg["length_corr"] == pytest.approx(-1.0, abs=1e-6) and neg["n_prompts"] == 2
    assert neg["table"]["repeated"]["gold_wins"] == 1.0 and neg["table"]["empty"]["gold_wins"] == 0.0


# ----------------------------------------------------------------------------- DPO
def test_dpo_loss_by_hand():
    pg, pb, rg, rb = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    # margin = beta * ((-1 - -2) - (-3 - -2.5)) = 0.5 * (1 + 0.5) = 0.75
    loss, margin = R.dpo_loss(pg, pb, rg, rb, beta=0.5)
    assert margin.item() == pytest.approx(0.75)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-0.75)), rel=1e-6)
    # policy == reference: loss is log 2 whatever the log-probs
    assert R.dpo_loss(pg, pb, pg, pb)[0].item() == pytest.approx(math.log(2), rel=1e-6)


def test_dpo_implicit_reward_by_hand():
    # beta * (log pi - log pi_ref): 0.5 * (-1 - -2) = 0.5 and 0.5 * (-3 - -2.5) = -0.25
    r = R.dpo_implicit_reward(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.5]), beta=0.5)
    assert r.tolist() == pytest.approx([0.5, -0.25])
    # the DPO margin is exactly chosen's implicit reward minus rejected's
    pg, pb, rg, rb = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.5])
    assert R.dpo_loss(pg, pb, rg, rb, beta=0.5)[1].item() == pytest.approx(0.5 - -0.25)


def test_dpo_log_ratios_see_both_answers_fall():
    """The failure the log exists to show: margin up, yet chosen and rejected both lose probability."""
    ref_good, ref_bad = torch.tensor([-2.0, -1.0]), torch.tensor([-3.0, -2.0])
    good, bad = ref_good - torch.tensor([1.0, 2.0]), ref_bad - torch.tensor([4.0, 1.0])
    d = R.dpo_log_ratios(good, bad, ref_good, ref_bad)
    assert d["chosen"] == pytest.approx(-1.5) and d["rejected"] == pytest.approx(-2.5)
    assert d["margin"] == pytest.approx(1.0)
    assert d["accuracy"] == pytest.approx(0.5)   # pair 1: -1 > -4 right; pair 2: -2 > -1 wrong


def test_dpo_batch_logps_sum_the_answer_and_its_newline():
    """Summed log p over the answer tokens *and* the newline that ends them, prompt masked: by hand."""
    t, model = tok(), tiny_gpt()
    pair = {"prompt": "Story: Owl.\nAnswer:", "chosen": " Owl", "rejected": " Roo"}
    good, bad = R.dpo_batch_logps(model, t, [pair])
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
    loss, clipped = R.ppo_clip_loss(logp_new, logp_old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx(-(1.2 - 0.8 + 2.2) / 3, rel=1e-5)
    assert clipped.item() == pytest.approx(2 / 3)


def test_ppo_token_rewards_by_hand():
    """Every answer token pays beta * (log pi - log pi_ref); the score lands on the last answer
    token of each row (rows are right-padded, so row 1 ends early); beta = 0 leaves only the score."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]])
    logp_ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    score = torch.tensor([2.0, -1.0])
    r = R.ppo_token_rewards(score, logp, logp_ref, mask, beta=0.5)
    expected = torch.tensor([[-0.25, 0.5, 2.0], [-0.5, 1.0 - 1.0, 0.0]])
    assert torch.allclose(r, expected)
    # summed over a row: score - beta * (sampled KL of the answer)
    assert torch.allclose(r.sum(1), score - 0.5 * ((logp - logp_ref) * mask).sum(1))
    r0 = R.ppo_token_rewards(score, logp, logp_ref, mask, beta=0.0)
    assert torch.allclose(r0, torch.tensor([[0.0, 0.0, 2.0], [0.0, -1.0, 0.0]]))


def test_whiten_uses_only_answer_tokens():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 99.0, -50.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    w = R.whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().abs() < 1e-6 and real.pow(2).mean().sqrt() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(real, (torch.tensor([1.0, 2, 3, 4]) - 2.5) / torch.tensor([1.0, 2, 3, 4]).std(unbiased=False))
    assert (w[~mask.bool()] == 0).all()   # padding gets no advantage


def test_top_answers_ranks_by_frequency():
    ex = S.Example("color", "Story: x.\nAnswer:", " red")
    r = R.Rollout(x=None, y=None, mask=None, answers=[" red\n", " reed\n", " reed\n", " blue\n"], examples=[ex] * 4,
                  reward=torch.tensor([1.0, 2.0, 3.0, -1.0]), logp_old=None, logp_ref=None)
    top = R.top_answers(r, k=2)
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
    adv, ret = R.gae(rewards, values, mask, gamma, lam)
    assert adv[0].tolist() == pytest.approx([a0, a1, a2, 0.0], rel=1e-5)
    assert ret[0, :3].tolist() == pytest.approx([a0 + 0.5, a1 + 0.6, a2 + 0.7], rel=1e-5)
    # gamma = lam = 1: every advantage is the final reward minus the value (Monte Carlo)
    adv1, _ = R.gae(rewards, values, mask, 1.0, 1.0)
    assert adv1[0, :3].tolist() == pytest.approx([0.5, 0.4, 0.3], rel=1e-5)


def test_kl_estimates_by_hand_and_unbiased():
    lp, lq = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    est = R.kl_estimates(lp, lq)
    assert est["k1"].item() == pytest.approx(math.log(2))
    assert est["k3"].item() == pytest.approx(0.5 - 1 - math.log(0.5))
    # Monte Carlo: samples from p, both estimators average to the exact KL(p || q)
    g = torch.Generator().manual_seed(0)
    p, q = torch.tensor([0.6, 0.3, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    s = torch.multinomial(p, 200_000, replacement=True, generator=g)
    est = R.kl_estimates(p.log()[s], q.log()[s])
    exact = (p * (p / q).log()).sum().item()
    assert est["k1"].mean().item() == pytest.approx(exact, abs=0.01)
    assert est["k3"].mean().item() == pytest.approx(exact, abs=0.01)
    assert (est["k3"] >= 0).all()


def test_grpo_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 5.0]])
    a = R.grpo_advantages(r)
    std0 = math.sqrt(4 * 0.25 / 3)     # unbiased std of [1, 0, 0, 1]
    assert a[0].tolist() == pytest.approx([0.5 / std0, -0.5 / std0, -0.5 / std0, 0.5 / std0], rel=1e-5)
    std1 = math.sqrt((3 * 0.75 ** 2 + 2.25 ** 2) / 3)
    assert a[1].tolist() == pytest.approx([-0.75 / std1] * 3 + [2.25 / std1], rel=1e-5)
    assert R.grpo_advantages(torch.ones(1, 4)).abs().max() == 0  # all equal: nothing to learn




# ----------------------------------------------------------------------------- verifiable rewards
def test_rule_reward_is_exact_match_with_the_newline():
    ex = S.Example("color", "Story: x.\nAnswer:", " red")
    answers = [" red\n", " red", " redd\n", " blue\n", "red\n", " red\n\n"[:-1]]
    assert R.rule_reward([ex] * len(answers), answers).tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    assert R.answer_ok(ex, " blue\n") == (False, True)       # wrong but well-formed
    assert R.answer_ok(ex, " redd\n") == (False, False)      # a misspelling is neither


def test_grpo_on_a_rule_reward_moves_only_groups_with_a_spread():
    """All-wrong (or all-right) groups carry no signal; in a mixed group the right answers get a
    positive advantage and the wrong ones a negative one, of the sizes worked out by hand."""
    ex = S.Example("hero", "Story: x.\nAnswer:", " Owl")
    answers = [" Owl\n", " Roo\n", " Roo\n", " Roo\n"] + [" Roo\n"] * 4
    adv = R.grpo_advantages(R.rule_reward([ex] * 8, answers).view(2, 4))
    std = math.sqrt((0.75 ** 2 + 3 * 0.25 ** 2) / 3)
    assert adv[0].tolist() == pytest.approx([0.75 / std] + [-0.25 / std] * 3, rel=1e-5)
    assert adv[1].abs().max() == 0


def test_ppo_rule_reward_lands_on_the_last_answer_token():
    ex = S.Example("hero", "Story: x.\nAnswer:", " Owl")
    score = R.rule_reward([ex, ex], [" Owl\n", " Roo\n"])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    r = R.ppo_token_rewards(score, torch.zeros(2, 5), torch.zeros(2, 5), mask, beta=0.3)
    assert r.tolist() == [[0, 0, 0, 0, 1.0], [0, 0, 0, 0, 0]]


# ----------------------------------------------------------------------------- LoRA's share, closed form
def test_lora_share_closed_form_matches_the_wrapped_model():
    model = tiny_gpt()
    wrappers = L.add_lora(model, r=2, alpha=4)
    counted = sum(w.A.numel() + w.B.numel() for w in wrappers)
    by_formula = sum(L.lora_params(w.base.in_features, w.base.out_features, 2) for w in wrappers)
    assert counted == by_formula
    assert L.lora_share(4096, 4096, 16) == pytest.approx(2 * 16 / 4096)
    rows = L.lora_share_table(widths=(64, 4096), ranks=(1, 8))
    assert [r["times_fewer"] for r in rows] == pytest.approx([32, 4, 2048, 256])
    gpt3 = L.lora_share_table(widths=(12288,), ranks=(4,), adapted_share=2 / 12)[0]
    assert gpt3["times_fewer"] == pytest.approx(12288 / 8 * 6)   # ~9,200x: the often-quoted "10,000x"


# ----------------------------------------------------------------------------- the scripts, part by part
def is_share_of(value: float, n: int) -> bool:
    """`value` is k/n for a whole k (float32 means are good to ~1e-7)."""
    return n > 0 and 0 <= value <= 1 and abs(value * n - round(value * n)) < 1e-4


PARTS = ("sft", "format", "lora", "transfer", "rlhf", "rlvr", "extras")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Every part in order into one results file (the later parts reuse the sft part's policy)."""
    out = tmp_path_factory.mktemp("ch12")
    logs = {part: run_quick(CHAPTER, out, "--part", part)[1].stdout for part in PARTS}
    return out, results_of(out, CHAPTER), logs


def test_quick_sft_and_lora_parts(quick_run):
    _, res, logs = quick_run
    n_test = res["data"]["test_examples"]
    for acc in (res["sft"]["before"], res["sft"]["after"], res["lora"]["accuracy"], res["format"]["continuation"]):
        assert is_share_of(acc["overall"], n_test)
    assert res["lora"]["merge_max_abs_diff"] < 1e-4
    steps = res["parts"]["sft"]["config"]["sft_steps"]
    assert len(res["sft"]["losses"]) == len(res["format"]["continuation_losses"]) == steps
    assert res["sft"]["curve"]["steps"][0] == 0 and res["sft"]["curve"]["steps"][-1] == steps
    assert res["sft"]["curve"]["overall"][-1] == pytest.approx(res["sft"]["after"]["overall"])
    assert set(res["forgetting"]) == {"before SFT", "SFT, full", f"SFT, LoRA r={res['lora']['rank']}"}
    assert res["transfer"]["task"] not in res["transfer"]["others_after"]
    assert not any("no saved SFT policy" in logs[p] for p in PARTS[1:])   # they reused the sft part's policy


def test_quick_rl_parts(quick_run):
    _, res, _ = quick_run
    assert tuple(res["parts"]) == PARTS   # every part kept in the one file
    assert set(res["rl"]["curves"]) == {"PPO", "PPO, no KL", "GRPO", "DPO"}
    assert set(res["rlvr"]["curves"]) == {"GRPO, rule", "PPO, rule"}
    for part in ("rl", "rlvr"):
        final = res[part]["final"]
        assert final["SFT"]["kl"] == pytest.approx(0.0, abs=1e-5)  # the reference against itself
        for name, curve in res[part]["curves"].items():
            if name != "DPO":
                assert len(curve) == res["rl_config"]["updates"] + 1
                assert "heldout_exact_match" in curve[0] and "heldout_exact_match" in curve[-1]
    rule = res["rlvr"]["final"]
    for v in rule.values():   # the rule reward is the sampled accuracy, by definition
        assert v["reward"] == pytest.approx(v["accuracy"])
    dpo = res["rl"]["dpo"]
    assert dpo["log"][0]["chosen"] == pytest.approx(0.0, abs=1e-4)   # step 0: the policy is still the reference
    assert dpo["log"][0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert set(res["reward_model"]["variants"]) == {"match, BT", "last token, BT", "match, margin"}


def test_visualize_redraws(quick_run):
    out, _, _ = quick_run
    plots = out / "plots" / CHAPTER
    for png in plots.glob("*.png"):
        png.unlink()
    proc = run_script(CHAPTER, "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    drawn = {p.name for p in plots.glob("*.png")}
    assert {"pipeline.png", "sft_lora.png", "lora_share.png", "forgetting_transfer.png", "reward_model.png",
            "reward_vs_kl.png",
            "dpo_logratios.png", "extras_domain.png", "extras_classification.png", "extras_curriculum.png"} <= drawn


@pytest.mark.parametrize("args, message", [
    (["--lora-rank", "0"], "--lora-rank"), (["--rl-lr", "0"], "--rl-lr"), (["--dpo-lr", "1.5"], "--dpo-lr"),
    (["--rl-updates", "0"], "--rl-updates"), (["--part", "ppo"], "--part"), (["--kl-beta", "-1"], "--kl-beta")])
def test_bad_input_exits_2(args, message, tmp_path):
    assert_exit_2(CHAPTER, "main.py", ["--quick", *args], message, tmp_path)
