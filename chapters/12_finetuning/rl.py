"""12 · RL from the SFT policy: PPO, GRPO and DPO, against a learned reward model or a checkable rule.

The pieces, each a few lines of tensor math checked by hand in the tests:

    kl_estimates        k1 = log p - log q and k3 = (q/p) - 1 - log(q/p)   (Schulman's estimators)
    ppo_token_rewards   -beta * k1 at every answer token, + the reward on the last one
    whiten              (A - mean) / std over the answer tokens only
    gae                 generalised advantage estimation over the tokens of an answer
    ppo_clip_loss       -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A)
    grpo_advantages     (r - mean of its group) / std of its group: no value head needed
    dpo_implicit_reward beta * (log pi(answer) - log pi_ref(answer))
    dpo_loss            -log sigmoid(beta * (policy log-ratio margin - reference log-ratio margin))

and the loops: `rollout` (sample, score, log-probs), `ppo_update`, `grpo_update`, `run_rl`, `run_dpo`.

The reward is a function `reward_fn(examples, answers) -> (N,) tensor`. Two kinds:
  * a learned proxy: the reward model's score (`reward_model.score`), which can be gamed;
  * a verifiable rule: `rule_reward` (1 for the exact answer + newline, 0 otherwise), which
    cannot, because the corpus knows every answer (RL with verifiable rewards, as in DeepSeek-R1).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from reward_model import forward_with_hidden
from sft import END, IGNORE, Example, batch_sampler, exact_match, optimise, pad_batch, sft_example, token_logprobs
from shared import corpus
from shared.model import GPT

ANSWER_POOLS = {"color": corpus.COLORS, "hero": corpus.CHARACTERS, "mood": corpus.MOODS,
                "object": corpus.OBJECTS, "where": corpus.PLACES, "count": [str(i) for i in range(1, 12)]}


@dataclass(frozen=True)
class RLConfig:
    updates: int = 24
    prompts: int = 2              # prompts per update
    group: int = 8                # sampled answers per prompt (GRPO's group; PPO uses the same batch)
    epochs: int = 2               # optimisation passes over each sampled batch
    lr: float = 2e-4
    clip: float = 0.2
    max_answer_tokens: int = 10
    eval_every: int = 4           # held-out greedy exact match every this many updates


# ----------------------------------------------------------------------------- the math
def kl_estimates(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimates of KL(policy || reference) from tokens *sampled from the policy*.
    With ratio = p_ref / p_policy:  k1 = -log ratio (unbiased, can be negative per token),
    k3 = ratio - 1 - log ratio (unbiased too, and never negative: what GRPO uses)."""
    log_ratio = logp_ref - logp
    return {"k1": -log_ratio, "k3": log_ratio.exp() - 1 - log_ratio}


def ppo_token_rewards(score: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """InstructGPT's per-token reward: every answer token pays beta * (log pi - log pi_ref), the
    k1 KL estimate, and the last answer token also gets the score. Summed over an answer this is
    score - beta * (sampled KL of the whole answer). beta = 0 leaves only the score."""
    rewards = -beta * kl_estimates(logp, logp_ref)["k1"] * mask
    last = mask.long().cumsum(1).argmax(1)  # the first position holding the row's final count = its last answer token
    rewards[torch.arange(len(rewards)), last] += score
    return rewards


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries only (padding would drag both towards 0); 0 elsewhere."""
    m = mask.to(x.dtype)
    mean = (x * m).sum() / m.sum()
    std = (((x - mean) ** 2 * m).sum() / m.sum()).sqrt()
    return (x - mean) / (std + eps) * m


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along each row's answer tokens:
    delta_t = r_t + gamma V_{t+1} - V_t (V after the last token is 0), A_t = delta_t + gamma lam A_{t+1}.
    Returns (advantages, returns = A + V). Rows are right-padded, so a row's tokens are a prefix."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t].to(rewards.dtype)
        a = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv
        adv[:, t] = a * m
        next_value, next_adv = values[:, t] * m, a * m   # a padded position passes nothing back
    return adv, (adv + values) * mask


def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate (Schulman et al. 2017), averaged over answer tokens. Returns (loss,
    fraction of tokens where the clip was active)."""
    ratio = (logp_new - logp_old).exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    per_token = -torch.minimum(unclipped, clipped)
    m = mask.to(per_token.dtype)
    clipped_frac = ((unclipped != clipped).to(m.dtype) * m).sum() / m.sum()
    return (per_token * m).sum() / m.sum(), clipped_frac.detach()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (n_prompts, G) rewards; each answer's advantage is its reward
    standardised within its own group, the group mean being the baseline a value head would learn."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (n-1), as in the paper's code
    return (rewards - mean) / (std + eps)


def dpo_implicit_reward(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """beta * log(pi / pi_ref) from summed answer log-probs: 0 for every answer at the start."""
    return beta * (policy_logp - ref_logp)


def dpo_loss(policy_good: torch.Tensor, policy_bad: torch.Tensor, ref_good: torch.Tensor, ref_bad: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023): the Bradley-Terry loss of the implicit rewards, so no reward
    model and no sampling. Returns (loss, implicit reward margin per pair)."""
    margin = dpo_implicit_reward(policy_good, ref_good, beta) - dpo_implicit_reward(policy_bad, ref_bad, beta)
    return -F.logsigmoid(margin).mean(), margin.detach()


# ----------------------------------------------------------------------------- rewards
def answer_ok(ex: Example, answer: str) -> tuple[bool, bool]:
    """(correct, valid): valid = finished with a newline and one of the task's possible answers."""
    finished = answer.endswith(END)
    text = answer.removesuffix(END).strip()
    return finished and text == ex.answer.strip(), finished and text in ANSWER_POOLS.get(ex.task, [text])


def rule_reward(examples: list[Example], answers: list[str]) -> torch.Tensor:
    """The verifiable reward: 1 for exactly the gold answer followed by the newline, else 0.
    Nothing to game: the only way up is to be right."""
    return torch.tensor([float(answer_ok(e, a)[0]) for e, a in zip(examples, answers)])


# ----------------------------------------------------------------------------- sampling
@dataclass
class Rollout:
    x: torch.Tensor           # (N, T) prompt+answer inputs
    y: torch.Tensor           # labels: answer tokens only, IGNORE elsewhere
    mask: torch.Tensor        # y != IGNORE
    answers: list[str]
    examples: list[Example]
    reward: torch.Tensor      # (N,) the reward being optimised
    logp_old: torch.Tensor    # (N, T) policy log-probs when sampled
    logp_ref: torch.Tensor    # (N, T) reference (SFT) log-probs
    live: tuple | None = None  # (logits, hidden) of that forward, graph kept, for the update's first epoch


@torch.no_grad()
def rollout(policy: GPT, ref: GPT, reward_fn, tok, prompts: list[Example], rc: RLConfig, g: torch.Generator,
            group: int | None = None, keep_graph: bool = False) -> Rollout:
    """Sample `group` answers per prompt (temperature 1), cut each at its first newline, score
    them and take policy and reference log-probs. With `keep_graph` the policy's forward keeps its
    autograd graph, so the update's first epoch backpropagates through it (one forward fewer)."""
    policy.eval()
    answers, examples = [], []
    for ex in prompts:
        idx = torch.tensor([tok.encode(ex.prompt)])   # the prompt is run once, then sampled `group` times
        out = policy.generate(idx, rc.max_answer_tokens, temperature=1.0, generator=g, stop_token=tok.stoi[END],
                              num_samples=group or rc.group)
        for row in out[:, idx.shape[1]:].tolist():
            text = tok.decode(row)
            answers.append(text[:text.index(END) + 1] if END in text else text)
            examples.append(ex)
    rows, labels = zip(*(sft_example(tok.encode(e.prompt), tok.encode(a)) for e, a in zip(examples, answers)))
    x, y = pad_batch(list(rows), list(labels), pad_id=tok.stoi[END])
    live = None
    if keep_graph:
        with torch.enable_grad():
            live = forward_with_hidden(policy, x)
    logits = live[0].detach() if live else policy(x)
    return Rollout(x, y, y != IGNORE, answers, examples, reward_fn(examples, answers),
                   token_logprobs(logits, y), token_logprobs(ref(x), y), live)


def rollout_stats(r: Rollout) -> dict:
    kl = kl_estimates(r.logp_old, r.logp_ref)["k1"] * r.mask
    ok = [answer_ok(e, a) for e, a in zip(r.examples, r.answers)]
    return {"reward": r.reward.mean().item(), "kl": kl.sum(1).mean().item(),  # KL of whole answers, nats
            "accuracy": sum(c for c, _ in ok) / len(ok), "validity": sum(v for _, v in ok) / len(ok),
            "answer_len": sum(len(a) for a in r.answers) / len(r.answers)}


def top_answers(r: Rollout, k: int = 5) -> list[dict]:
    """The most frequent sampled answers with their mean reward and whether they are well-formed:
    where a policy that games the reward model shows what it found."""
    groups: dict[str, list[tuple[float, bool]]] = {}
    for e, a, rw in zip(r.examples, r.answers, r.reward.tolist()):
        groups.setdefault(a, []).append((rw, answer_ok(e, a)[1]))
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:k]
    return [{"answer": a, "share": len(v) / len(r.answers), "mean_reward": sum(x for x, _ in v) / len(v),
             "valid": sum(ok for _, ok in v) / len(v)} for a, v in ranked]


def compare(policies: dict, ref: GPT, reward_fn, tok, prompts: list[Example], rc: RLConfig, seed: int,
            group: int) -> dict:
    """Every policy on the same held-out prompts with the same random numbers: `group` samples per
    prompt (reward, KL to `ref`, accuracy, validity, commonest answers, a few samples) and greedy exact match."""
    out = {}
    for name, pol in policies.items():
        r = rollout(pol, ref, reward_fn, tok, prompts, rc, torch.Generator().manual_seed(seed), group=group)
        samples = [{"question": e.prompt.removesuffix("\nAnswer:"), "gold": e.answer.strip(), "answer": a}
                   for e, a in list(zip(r.examples, r.answers))[::group][:6]]
        out[name] = v = {**rollout_stats(r), "exact_match": exact_match(pol, tok, prompts)["overall"],
                         "top_answers": top_answers(r), "samples": samples}
        print(f"{name:>14}: reward {v['reward']:+.2f}  KL {v['kl']:.3f} nats  sampled accuracy {v['accuracy']:.1%}  "
              f"valid {v['validity']:.1%}  greedy {v['exact_match']:.1%}")
    return out


# ----------------------------------------------------------------------------- updates
def ppo_update(policy: GPT, value_head: nn.Linear, r: Rollout, opt, rc: RLConfig, beta: float) -> dict:
    """PPO as in InstructGPT, at the scale of one answer: per-token rewards, GAE with a value head
    (a linear probe on detached features), then `epochs` passes of clipped objective + value loss."""
    with torch.no_grad():
        _, h = r.live or forward_with_hidden(policy, r.x)
        values = value_head(h.detach()).squeeze(-1) * r.mask
        rewards = ppo_token_rewards(r.reward, r.logp_old, r.logp_ref, r.mask, beta)
        adv, returns = gae(rewards, values, r.mask, gamma=1.0, lam=0.95)
        adv = whiten(adv, r.mask)   # the step size stops depending on the reward's scale
        m = r.mask.float()
    policy.train()
    for epoch in range(rc.epochs):
        logits, h = r.live if epoch == 0 and r.live else forward_with_hidden(policy, r.x)
        pg, clipped = ppo_clip_loss(token_logprobs(logits, r.y), r.logp_old, adv, r.mask, rc.clip)
        v_loss = (((value_head(h.detach()).squeeze(-1) - returns) ** 2) * m).sum() / m.sum()
        (pg + 0.5 * v_loss).backward()
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_head.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"pg_loss": pg.item(), "value_loss": v_loss.item(), "clipped": clipped.item()}


def grpo_update(policy: GPT, r: Rollout, opt, rc: RLConfig, beta: float) -> dict:
    """GRPO: one scalar advantage per answer, standardised within its prompt's group; the same
    clipped ratio as PPO; the KL to the reference is a loss term (k3 estimator), not a reward."""
    adv = grpo_advantages(r.reward.view(-1, rc.group)).view(-1)[:, None] * r.mask
    policy.train()
    for epoch in range(rc.epochs):
        logp = token_logprobs(r.live[0] if epoch == 0 and r.live else policy(r.x), r.y)
        pg, clipped = ppo_clip_loss(logp, r.logp_old, adv, r.mask, rc.clip)
        kl = (kl_estimates(logp, r.logp_ref)["k3"] * r.mask).sum() / r.mask.sum()
        (pg + beta * kl).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"pg_loss": pg.item(), "kl_term": kl.item(), "clipped": clipped.item()}


def run_rl(method: str, sft_model: GPT, reward_fn, tok, prompts: list[Example], rc: RLConfig, seed: int,
           beta: float, heldout: list[Example] = ()) -> tuple[GPT, list[dict]]:
    """`updates` rounds of sample -> score -> update from the SFT policy. Each curve point is the
    batch's reward, KL, accuracy and validity before its update; every `eval_every` updates also
    the greedy exact match on `heldout` (one teacher-forced pass: cheap)."""
    policy, ref = copy.deepcopy(sft_model), sft_model.eval()
    value_head = nn.Linear(policy.cfg.d_model, 1)
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    params = list(policy.parameters()) + (list(value_head.parameters()) if method == "ppo" else [])
    opt = torch.optim.AdamW(params, lr=rc.lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    draw = batch_sampler(prompts, rc.prompts, seed + 1)
    curve = []
    for step in tqdm(range(rc.updates + 1), desc=f"{method} beta={beta}", leave=False):
        r = rollout(policy, ref, reward_fn, tok, draw(), rc, g, keep_graph=step < rc.updates)
        curve.append({"step": step, **rollout_stats(r)})  # measured before this batch's update
        if heldout and (step % rc.eval_every == 0 or step == rc.updates):
            curve[-1]["heldout_exact_match"] = exact_match(policy, tok, list(heldout))["overall"]
        if step == rc.updates:
            break
        extra = (ppo_update(policy, value_head, r, opt, rc, beta) if method == "ppo"
                 else grpo_update(policy, r, opt, rc, beta))
        curve[-1].update(extra)
    return policy.eval(), curve


# ----------------------------------------------------------------------------- DPO
def dpo_batch_logps(model: GPT, tok, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p of each pair's chosen and rejected answer, newline included; prompt masked."""
    prompts = [p["prompt"] for p in pairs]
    answers = [p["chosen"] + END for p in pairs] + [p["rejected"] + END for p in pairs]
    rows, labels = zip(*(sft_example(tok.encode(pr), tok.encode(a)) for pr, a in zip(prompts + prompts, answers)))
    x, y = pad_batch(list(rows), list(labels), pad_id=tok.stoi[END])
    logp = token_logprobs(model(x), y).sum(1)
    return logp[:len(pairs)], logp[len(pairs):]


def dpo_log_ratios(good, bad, ref_good, ref_bad) -> dict:
    """Mean log pi/pi_ref (nats per answer) of the chosen and of the rejected answers, and the share
    of pairs the implicit reward ranks right: *how* the DPO margin grew (chosen up, or both down)."""
    chosen, rejected = good - ref_good, bad - ref_bad
    return {"chosen": chosen.mean().item(), "rejected": rejected.mean().item(),
            "margin": (chosen - rejected).mean().item(), "accuracy": (chosen > rejected).float().mean().item()}


@torch.no_grad()
def dpo_heldout(policy: GPT, tok, pairs: list[dict], ref_good, ref_bad, batch: int = 48) -> dict:
    """`dpo_log_ratios` on held-out pairs (reference log-probs computed once by the caller)."""
    policy.eval()
    out = [dpo_batch_logps(policy, tok, pairs[i:i + batch]) for i in range(0, len(pairs), batch)]
    good, bad = torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])
    return {**dpo_log_ratios(good, bad, ref_good, ref_bad), "logp_accuracy": (good > bad).float().mean().item()}


def run_dpo(sft_model: GPT, probe_fn, tok, pairs: list[dict], prompts: list[Example], rc: RLConfig, seed: int,
            steps: int, batch: int, lr: float, beta: float, probe_every: int) -> tuple[GPT, list[dict], list[dict]]:
    """DPO on the preference pairs directly; `probe_fn` (the learned reward) only *measures* the
    policy every `probe_every` steps on fresh samples, so its curve sits beside PPO's. Returns the
    policy, the probe curve and the per-step log of loss and chosen/rejected log-ratios."""
    policy, ref = copy.deepcopy(sft_model), sft_model.eval()
    draw = batch_sampler(pairs, batch, seed)
    draw_prompts = batch_sampler(prompts, rc.prompts, seed + 1)
    g = torch.Generator().manual_seed(seed)
    curve, log = [], []

    def probe(step):
        curve.append({"step": step, **rollout_stats(rollout(policy, ref, probe_fn, tok, draw_prompts(), rc, g))})
        policy.train()

    def loss_fn(step):
        if step % probe_every == 0:
            probe(step)
        chunk = draw()
        with torch.no_grad():
            ref_good, ref_bad = dpo_batch_logps(ref, tok, chunk)
        good, bad = dpo_batch_logps(policy, tok, chunk)
        loss, _ = dpo_loss(good, bad, ref_good, ref_bad, beta)
        ratios = dpo_log_ratios(good.detach(), bad.detach(), ref_good, ref_bad)
        log.append({"step": step, "loss": loss.item(), **ratios})
        return loss
    policy.train()
    optimise(policy.parameters(), loss_fn, steps, lr, "dpo")
    probe(steps)
    return policy.eval(), curve, log
