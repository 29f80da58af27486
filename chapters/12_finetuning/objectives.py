"""12 · The objectives of fine-tuning, each a few lines of tensor math.

Everything here works on small tensors and is checked in the tests against values worked
out by hand (or by torch's own functions):

    sft_example         ids + labels with the prompt masked to -100: only answer tokens are learned
    token_logprobs      log p(label) at every scored position (0 where the label is -100)
    bradley_terry_loss  -log sigmoid(r_good - r_bad)           the reward model's loss
    margin_ranking_loss max(0, m - (r_good - r_bad))            the older hinge alternative
    dpo_implicit_reward beta * (log pi(answer) - log pi_ref(answer)): the reward DPO's policy defines
    dpo_loss            -log sigmoid(beta * (policy log-ratio margin - reference log-ratio margin))
    kl_estimates        k1 = log p - log q and k3 = (q/p) - 1 - log(q/p)   (Schulman's estimators)
    ppo_token_rewards   -beta * k1 at every answer token, + the reward model's score on the last one
    whiten              (A - mean) / std over the answer tokens only
    gae                 generalised advantage estimation over the tokens of an answer
    ppo_clip_loss       -min(ratio * A, clip(ratio, 1-eps, 1+eps) * A)
    grpo_advantages     (r - mean of its group) / std of its group: no value head needed
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # torch's cross_entropy ignore_index: a label the loss skips


# ----------------------------------------------------------------------------- SFT
def sft_example(prompt_ids: list[int], answer_ids: list[int]) -> tuple[list[int], list[int]]:
    """(inputs, labels) for next-token training where only the answer is scored.

    The model still *reads* the prompt (it is in the inputs), but predicting the prompt is
    not the job we are teaching, so those labels are IGNORE. Without the mask most of the
    gradient would go to re-learning the story text the base model already knows."""
    ids = prompt_ids + answer_ids
    inputs, labels = ids[:-1], ids[1:]
    n_prompt_labels = len(prompt_ids) - 1  # labels[i] is token i+1: the first answer token is labels[len(prompt)-1]
    labels = [IGNORE] * n_prompt_labels + labels[n_prompt_labels:]
    return inputs, labels


def pad_batch(rows: list[list[int]], labels: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest row. Padding sits *after* the real tokens, so a causal model's
    real positions never see it, and its labels are IGNORE so it costs no loss."""
    T = max(len(r) for r in rows)
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    for i, (r, l) in enumerate(zip(rows, labels)):
        x[i, :len(r)] = torch.tensor(r)
        y[i, :len(l)] = torch.tensor(l)
    return x, y


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(label_t | tokens before it); 0 where the label is IGNORE."""
    mask = labels != IGNORE
    logp = logits.float().log_softmax(dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask


# ----------------------------------------------------------------------------- reward model
def bradley_terry_loss(r_good: torch.Tensor, r_bad: torch.Tensor) -> torch.Tensor:
    """-log P(good beats bad) under Bradley-Terry: P = sigmoid(r_good - r_bad).
    logsigmoid is the stable way to write log(sigmoid(.)) for large negative margins."""
    return -F.logsigmoid(r_good - r_bad).mean()


def margin_ranking_loss(r_good: torch.Tensor, r_bad: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hinge: zero loss (and zero gradient) once good beats bad by `margin`; BT never stops pushing."""
    return F.relu(margin - (r_good - r_bad)).mean()


# ----------------------------------------------------------------------------- DPO
def dpo_implicit_reward(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """The reward a DPO policy implies for an answer: beta * log(pi / pi_ref), from summed answer
    log-probs. It is 0 for every answer at the start (pi = pi_ref), and the loss only sees the
    difference between chosen and rejected, so *both* may go negative: the margin grows while the
    policy moves probability to answers that are in neither column."""
    return beta * (policy_logp - ref_logp)


def dpo_loss(policy_good: torch.Tensor, policy_bad: torch.Tensor, ref_good: torch.Tensor, ref_bad: torch.Tensor,
             beta: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Direct Preference Optimisation (Rafailov et al. 2023). Arguments are summed answer
    log-probs. The policy's implicit reward is beta * log(pi / pi_ref); the loss is the
    Bradley-Terry loss of those implicit rewards, so no reward model and no sampling.
    Returns (loss, implicit reward margin per pair)."""
    margin = dpo_implicit_reward(policy_good, ref_good, beta) - dpo_implicit_reward(policy_bad, ref_bad, beta)
    return -F.logsigmoid(margin).mean(), margin.detach()


# ----------------------------------------------------------------------------- RL pieces
def kl_estimates(logp: torch.Tensor, logp_ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token estimates of KL(policy || reference) from tokens *sampled from the policy*.
    With ratio = p_ref / p_policy:  k1 = -log ratio (unbiased, can be negative per token),
    k3 = ratio - 1 - log ratio (unbiased too, and never negative: what GRPO uses)."""
    log_ratio = logp_ref - logp
    return {"k1": -log_ratio, "k3": log_ratio.exp() - 1 - log_ratio}


def ppo_token_rewards(score: torch.Tensor, logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """InstructGPT's per-token reward: every answer token pays beta * (log pi - log pi_ref), the
    k1 KL estimate, and the last answer token also gets the reward model's score. Summed over an
    answer this is score - beta * (sampled KL of the whole answer): the objective PPO maximises.
    beta = 0 leaves only the score, and nothing holds the policy near the reference."""
    rewards = -beta * kl_estimates(logp, logp_ref)["k1"] * mask
    last = mask.long().cumsum(1).argmax(1)  # the first position holding the row's final count = its last answer token
    rewards[torch.arange(len(rewards)), last] += score
    return rewards


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries only (padding would drag both towards 0); 0 elsewhere.
    Whitened advantages make the step size independent of the reward's scale, and subtracting
    the mean is a batch baseline: below-average answers are pushed down, not merely up less."""
    m = mask.to(x.dtype)
    mean = (x * m).sum() / m.sum()
    std = (((x - mean) ** 2 * m).sum() / m.sum()).sqrt()
    return (x - mean) / (std + eps) * m


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) along each row's answer tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t  (V after the last token is 0: the episode ends)
    A_t = delta_t + gamma * lam * A_{t+1}.  Returns (advantages, returns = A + V).
    `mask` marks the answer tokens; rows are right-padded, so a row's tokens are a prefix."""
    B, T = rewards.shape
    adv = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        a = delta + gamma * lam * next_adv
        adv[:, t] = a * m
        # a padded position passes nothing back: the episode ended before it
        next_value = values[:, t] * m
        next_adv = a * m
    return adv, (adv + values) * mask


def ppo_clip_loss(logp_new: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                  clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """The clipped surrogate (Schulman et al. 2017), averaged over answer tokens.
    Taking the min means a step never gains by pushing the ratio past 1 +- clip.
    Returns (loss, fraction of tokens where the clip was active)."""
    ratio = (logp_new - logp_old).exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip, 1 + clip) * adv
    per_token = -torch.minimum(unclipped, clipped)
    m = mask.to(per_token.dtype)
    clipped_frac = ((unclipped != clipped).to(m.dtype) * m).sum() / m.sum()
    return (per_token * m).sum() / m.sum(), clipped_frac.detach()


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024): (n_prompts, G) rewards of G answers to each prompt. Each
    answer's advantage is its reward standardised within its own group: the group mean is
    the baseline a value head would otherwise have to learn."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)  # unbiased (n-1), as in the paper's code
    return (rewards - mean) / (std + eps)
