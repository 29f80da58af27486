"""12 · A reward model: the SFT model's body, frozen, plus a small head trained on preference pairs.

    bradley_terry_loss  -log sigmoid(r_good - r_bad)      the reward model's loss (InstructGPT's)
    margin_ranking_loss max(0, m - (r_good - r_bad))       the older hinge alternative
    RewardModel         kind="last": a linear head on the last token's state (the textbook head)
                        kind="match": + one attention read from the answer word back over the prompt
    pair_features       the frozen body's states for every pair, computed once
    train_reward_head   full passes of AdamW over those cached features (only the head learns)
    rm_accuracy         share of held-out pairs ranked the right way round, per task
    sanity_checks       the reward of gold against corrupted versions of it: the blind spots RL can find

Why the match head: a pair differs only in whether the answer is the word the story used, so a
reward model must compare the answer with the story. A small body that never learned to copy
holds no "this word was in the story" state at the end of the answer for a linear head to read.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from sft import END, pad_batch
from shared.model import GPT

RM_TASKS = ("color", "hero", "mood", "count")        # the tasks the corpus' preference pairs cover


# ----------------------------------------------------------------------------- the losses
def bradley_terry_loss(r_good: torch.Tensor, r_bad: torch.Tensor) -> torch.Tensor:
    """-log P(good beats bad) under Bradley-Terry: P = sigmoid(r_good - r_bad).
    logsigmoid is the stable way to write log(sigmoid(.)) for large negative margins."""
    return -F.logsigmoid(r_good - r_bad).mean()


def margin_ranking_loss(r_good: torch.Tensor, r_bad: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Hinge: zero loss (and zero gradient) once good beats bad by `margin`; BT never stops pushing."""
    return F.relu(margin - (r_good - r_bad)).mean()


# ----------------------------------------------------------------------------- the model
def forward_with_hidden(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the final-norm hidden states (the features the LM head reads)."""
    store = {}
    handle = model.norm_f.register_forward_hook(lambda m, i, o: store.__setitem__("h", o))
    try:
        logits = model(idx)
    finally:
        handle.remove()
    return logits, store["h"]


class RewardModel(nn.Module):
    """The SFT model's body, frozen, + a small reward head.

    kind="last": a linear head on the hidden state of the last token (InstructGPT's recipe).
    kind="match": the same linear read of the answer word, plus one attention read: the state at
    the answer word's last character is a query, every prompt position a key, and
    logsumexp(q . k / sqrt(d_key)) says "this word occurs in the story".
    The body is frozen, so its features are computed once and only the head trains."""

    def __init__(self, lm: GPT, kind: str = "match", d_key: int = 8, seed: int = 0):
        super().__init__()
        self.lm, self.kind, self.d_key, self.seed = lm.eval(), kind, d_key, seed
        for p in self.lm.parameters():
            p.requires_grad_(False)
        d = lm.cfg.d_model
        self.lin = nn.Linear(d, 1)
        nn.init.zeros_(self.lin.weight)
        nn.init.zeros_(self.lin.bias)
        self.q = nn.Linear(d, d_key, bias=False)
        self.k = nn.Linear(d, d_key, bias=False)
        self.w_match = nn.Parameter(torch.ones(()))
        # forward() reports (r - mean) / std over the training answers (set by `normalise`): BT fixes
        # rewards only up to a shift and scale, and a unit scale makes PPO's KL weight mean something
        self.register_buffer("r_mean", torch.zeros(()))
        self.register_buffer("r_std", torch.ones(()))
        g = torch.Generator().manual_seed(seed)  # explicit: the same seed gives the same head, cached zoo or not
        with torch.no_grad():
            for lin in (self.q, self.k):
                lin.weight.uniform_(-d ** -0.5, d ** -0.5, generator=g)

    @torch.no_grad()
    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return forward_with_hidden(self.lm, idx)[1]

    def head(self, h: torch.Tensor, n: torch.Tensor, n_prompt: torch.Tensor) -> torch.Tensor:
        """h: (B, T, d) body states; n: real lengths; n_prompt: prompt lengths (all right-padded)."""
        rows = torch.arange(len(h))
        if self.kind == "last":
            return self.lin(h[rows, n - 1]).squeeze(-1)
        word = h[rows, n - 2]      # the answer's last character (the one before the newline)
        scores = torch.einsum("bk,btk->bt", self.q(word), self.k(h)) / self.q.out_features ** 0.5
        in_prompt = torch.arange(h.shape[1])[None] < (n_prompt - 1)[:, None]  # story + question, not 'Answer:'
        match = torch.logsumexp(scores.masked_fill(~in_prompt, float("-inf")), dim=1)
        return self.w_match * match + self.lin(word).squeeze(-1)

    def forward(self, idx: torch.Tensor, n: torch.Tensor, n_prompt: torch.Tensor) -> torch.Tensor:
        return (self.head(self.features(idx), n, n_prompt) - self.r_mean) / self.r_std

    @torch.no_grad()
    def normalise(self, feats: list[tuple]) -> None:
        r = torch.cat([self.head(*f) for f in feats])
        self.r_mean.copy_(r.mean())
        self.r_std.copy_(r.std().clamp(min=1e-6))


def rm_inputs(tok, prompts: list[str], answers: list[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = [tok.encode(p + a) for p, a in zip(prompts, answers)]
    x, _ = pad_batch(ids, ids, pad_id=tok.stoi[END])
    return x, torch.tensor([len(i) for i in ids]), torch.tensor([len(p) for p in prompts])


def score(rm: RewardModel, tok, prompts: list[str], answers: list[str]) -> torch.Tensor:
    return rm(*rm_inputs(tok, prompts, answers))


# ----------------------------------------------------------------------------- training on cached features
def pair_texts(pairs: list[dict]) -> tuple[list[str], list[str]]:
    prompts = [p["prompt"] for p in pairs]
    return prompts + prompts, [p["chosen"] + END for p in pairs] + [p["rejected"] + END for p in pairs]


def pair_features(rm: RewardModel, tok, pairs: list[dict], batch: int = 32) -> list[tuple]:
    """The frozen body's states for every pair, once: (h, n, n_prompt) per chunk, chosen rows
    first, then rejected."""
    out = []
    for i in tqdm(range(0, len(pairs), batch), desc="reward model features", leave=False):
        x, n, n_prompt = rm_inputs(tok, *pair_texts(pairs[i:i + batch]))
        out.append((rm.features(x), n, n_prompt))
    return out


@torch.no_grad()
def rm_accuracy(rm, feats: list[tuple], pairs: list[dict]) -> dict:
    wins: dict[str, list[bool]] = {}
    k = 0
    for h, n, n_prompt in feats:
        good, bad = rm.head(h, n, n_prompt).chunk(2)
        for w in (good > bad).tolist():
            wins.setdefault(pairs[k]["task"], []).append(w)
            k += 1
    per_task = {t: sum(v) / len(v) for t, v in sorted(wins.items())}
    return {"overall": sum(sum(v) for v in wins.values()) / k, "per_task": per_task,
            "balanced": sum(per_task.values()) / len(per_task)}  # every task weighted the same


def train_reward_head(rm: RewardModel, feats: list[tuple], epochs: int, lr: float, loss: str = "bt") -> list[float]:
    """Full passes over the cached features: one AdamW step per chunk of pairs."""
    loss_of = bradley_terry_loss if loss == "bt" else margin_ranking_loss
    params = [p for n, p in rm.named_parameters() if not n.startswith("lm.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    losses = []
    for _ in tqdm(range(epochs), desc=f"reward head ({loss}, {rm.kind})", leave=False):
        total = 0.0
        for h, n, n_prompt in feats:
            batch_loss = loss_of(*rm.head(h, n, n_prompt).chunk(2))
            opt.zero_grad(set_to_none=True)
            batch_loss.backward()
            opt.step()
            total += batch_loss.item()
        losses.append(total / len(feats))
    return losses


HEADS = (("match, BT", "match", "bt"), ("last token, BT", "last", "bt"), ("match, margin", "match", "margin"))


def compare_heads(rm: RewardModel, feats_train, pairs_train, feats_test, pairs_test, epochs: int, lr: float) -> dict:
    """Train every head of HEADS on the same cached features (`rm` itself becomes the match/BT one)."""
    variants = {}
    for name, kind, loss in HEADS:
        head = rm if name == "match, BT" else RewardModel(rm.lm, kind, rm.d_key, rm.seed)
        curve = train_reward_head(head, feats_train, epochs, lr, loss)
        variants[name] = {"accuracy": rm_accuracy(head, feats_test, pairs_test), "losses": curve,
                          "train_accuracy": rm_accuracy(head, feats_train, pairs_train)["overall"]}
        print(f"  {name:>15}: held-out {variants[name]['accuracy']['overall']:.1%} "
              f"(train {variants[name]['train_accuracy']:.1%})")
    return variants


def balanced_pairs(pairs: list[dict], per_task: int) -> list[dict]:
    """The same number of held-out pairs from every task: a constant-answer task cannot
    inflate the average."""
    out = []
    for t in RM_TASKS:
        out += [p for p in pairs if p["task"] == t][:per_task]
    return out


# ----------------------------------------------------------------------------- what it (should not) like
CORRUPTIONS = {  # each applied to the gold answer
    "gold": lambda a, wrong: a + END,
    "wrong answer": lambda a, wrong: wrong + END,
    "no newline": lambda a, wrong: a,
    "typo": lambda a, wrong: a[:-1] + ("a" if a[-1] != "a" else "e") + END,  # last letter changed
    "repeated": lambda a, wrong: a + a + END,
    "gold + wrong": lambda a, wrong: a + wrong + END,
    "empty": lambda a, wrong: END,
}


@torch.no_grad()
def sanity_checks(rm: RewardModel, tok, pairs: list[dict], score_fn=None) -> dict:
    """Mean reward of the gold answer and of corrupted versions of it, on held-out prompts, and
    how reward correlates with answer length over all of them (a length bias would make RL
    grow answers). `score_fn(prompts, answers)` replaces the reward model (the tests use it)."""
    score_fn = score_fn or (lambda prompts, answers: score(rm, tok, prompts, answers))
    prompts = [p["prompt"] for p in pairs]
    rewards, lengths = {}, []
    for name, corrupt in CORRUPTIONS.items():
        answers = [corrupt(p["chosen"], p["rejected"]) for p in pairs]
        rewards[name] = score_fn(prompts, answers)
        lengths.append(torch.tensor([float(len(a)) for a in answers]))
    gold = rewards["gold"]
    table = {name: {"mean_reward": r.mean().item(), "gold_wins": (gold > r).float().mean().item()}
             for name, r in rewards.items()}
    r_all, len_all = torch.cat(list(rewards.values())), torch.cat(lengths)
    corr = torch.corrcoef(torch.stack([r_all, len_all]))[0, 1].item()
    return {"table": table, "length_corr": corr, "n_prompts": len(pairs)}
