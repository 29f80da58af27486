"""12 · Fine-tuning: from a model that continues stories to one that answers questions, and
then to one that prefers the answers a reward says are good.

The base model (shared.zoo "wood-llama") only knows how to continue Hundred Acre Wood
stories. In one chapter we:

  1. grow its character vocabulary for the new symbols a Q&A format needs ('?', ':', 'W', digits);
  2. supervised fine-tuning (SFT) on story/question/answer triples of six task types, with the
     loss masked to the answer tokens: exact match on held-out questions, per task, before/after;
  3. the same with LoRA (frozen weights + a rank-r update): trainable vs total parameters,
     merged == unmerged, accuracy against full fine-tuning;
  4. a reward model (the SFT model + a scalar head) trained with the Bradley-Terry loss on
     preference pairs (true answer vs a plausible wrong one): held-out pairwise accuracy;
  5. RL against that reward: PPO (value head, KL penalty, clipped objective), GRPO (group-
     relative advantages, no value head), and DPO (no reward model, no sampling) from the same
     SFT policy: reward against KL on one plot, and PPO with the KL penalty removed, the
     setting in which a policy is free to chase the reward model instead of the truth.

    uv run chapters/12_finetuning/main.py [--quick|--full] [--threads 1] [--extras]

`--extras` also runs two optional experiments (extras.py): mood classification with a
classification head (head only vs full fine-tune vs a bag-of-words baseline), and SFT with
its examples ordered easy -> hard, shuffled, or hard -> easy.
"""
from __future__ import annotations

import copy
import itertools
import math
import sys
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from tqdm.auto import tqdm

import lora as lora_lib
import objectives as obj
from shared import cli, corpus, tokenizer, zoo
from shared.errors import WorkbookError
from shared.model import GPT
from shared.train import TrainConfig, estimate_seconds

CHAPTER = "12_finetuning"
RM_TASKS = ("color", "hero", "mood", "count")        # the tasks preference_pairs covers
ANSWER_POOLS = {"color": corpus.COLORS, "hero": corpus.CHARACTERS, "mood": corpus.MOODS,
                "count": [str(i) for i in range(1, 12)]}


@dataclass
class Config:
    max_prompt_chars: int = 200   # keep prompts short (stories with few middle sentences): CPU time
    n_train: int = 2000           # instruction examples to draw batches from
    n_test: int = 96              # held-out examples / pairs / RL prompts
    batch: int = 8
    sft_steps: int = 60
    sft_lr: float = 3e-3
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_lr: float = 6e-3         # LoRA usually wants a higher rate than full fine-tuning
    n_rm_train: int = 512         # preference pairs whose (frozen-body) features train the reward head
    n_rm_test: int = 96           # held-out pairs, the same number per task
    rm_epochs: int = 40           # passes of the head over the cached features
    rm_lr: float = 3e-3
    rm_d_key: int = 8             # width of the match head's query/key
    dpo_steps: int = 30
    dpo_beta: float = 0.3         # under AdamW beta barely changes the step, only when the sigmoid saturates
    dpo_lr: float = 3e-5          # 3e-4 pushed the chosen answers down with the rejected, by nats (notes.md's sweep)
    rl_updates: int = 24
    rl_prompts: int = 2           # prompts per update
    rl_group: int = 8             # sampled answers per prompt (GRPO's group; PPO uses the same batch)
    rl_epochs: int = 2            # optimisation passes over each sampled batch
    rl_lr: float = 2e-4           # 3e-4 with 8 samples per update moved the policy ~5 nats in 8 updates
    kl_beta: float = 0.3          # per nat of KL, in units of the reward model's (unit) std
    clip: float = 0.2
    max_answer_tokens: int = 10
    probe_every: int = 4          # DPO: measure reward/KL on fresh samples every this many steps
    n_rl_eval: int = 24           # held-out prompts for the final RL comparison
    eval_group: int = 4           # samples per held-out prompt: more prompts, fewer samples each


def presets(run) -> Config:
    return Config(
        max_prompt_chars=run.pick(quick=170, default=200, full=260),
        n_train=run.pick(quick=200, default=2000, full=20000),
        n_test=run.pick(quick=16, default=64, full=512),
        batch=run.pick(quick=4, default=8, full=32),
        sft_steps=run.pick(quick=4, default=80, full=1500),
        n_rm_train=run.pick(quick=32, default=512, full=4000),
        n_rm_test=run.pick(quick=16, default=96, full=512),
        rm_epochs=run.pick(quick=3, default=40, full=40),
        dpo_steps=run.pick(quick=2, default=16, full=300),
        rl_updates=run.pick(quick=2, default=24, full=100),
        rl_prompts=run.pick(quick=1, default=2, full=8),
        rl_group=run.pick(quick=4, default=8, full=8),
        probe_every=run.pick(quick=1, default=4, full=10),
        n_rl_eval=run.pick(quick=4, default=24, full=128),
    )


# ============================================================================= 1. data + a bigger vocabulary
class GrownCharTokenizer(tokenizer.CharTokenizer):
    """The base model's characters keep their ids; characters it never saw are appended at the
    end. (`CharTokenizer.__init__` sorts its characters, and re-sorting would scramble every id
    the base model learned, so this one sets them itself.)"""

    def __init__(self, base_chars: str, new_chars: str):
        self.chars = base_chars + new_chars
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.n_base = len(base_chars)


def grow_vocab(model: GPT, new_rows: int, seed: int) -> GPT:
    """A copy of `model` with `new_rows` extra embedding and output rows. New rows start at the
    mean of the old ones (plus a little noise so they differ): a new token then looks like an
    'average' token instead of a random vector that would dominate its first forward passes."""
    cfg = copy.deepcopy(model.cfg)
    cfg.vocab_size += new_rows
    grown = GPT(cfg)
    state = model.state_dict()
    g = torch.Generator().manual_seed(seed)
    for key in ("tok_emb.weight", "lm_head.weight"):
        old = state[key]
        extra = old.mean(0, keepdim=True) + 0.01 * old.std() * torch.randn(new_rows, old.shape[1], generator=g)
        state[key] = torch.cat([old, extra.to(old.dtype)])
    grown.load_state_dict(state)
    return grown


@dataclass
class Example:
    task: str
    prompt: str
    answer: str       # " red" (the corpus' response, leading space included)
    story: str = ""


def draw_examples(wood, n: int, seed: int, max_chars: int, tasks=None, avoid=frozenset()) -> list[Example]:
    """`n` instruction examples with prompts of at most `max_chars` characters, none about a
    story in `avoid` (so held-out questions are about stories never trained on)."""
    out, batch_seed = [], seed
    while len(out) < n:
        # wood.instruction_examples(4 * n), drawn lazily: stop generating stories once n are kept
        for ex in itertools.islice(wood.iter_instruction_examples(seed=batch_seed), 4 * n):
            if len(ex["prompt"]) <= max_chars and ex["story"] not in avoid and (tasks is None or ex["task"] in tasks):
                out.append(Example(ex["task"], ex["prompt"], ex["response"], ex["story"]))
                if len(out) == n:
                    break
        batch_seed += 7919
    return out


def draw_pairs(wood, n: int, seed: int, max_chars: int, avoid=frozenset()) -> list[dict]:
    out, batch_seed = [], seed
    while len(out) < n:
        # wood.preference_pairs(4 * n), drawn lazily: stop generating stories once n pairs are kept
        for p in itertools.islice(wood.iter_preference_pairs(16 * n, seed=batch_seed), 4 * n):
            story = p["prompt"].split("\n")[0].removeprefix("Story: ")
            if len(p["prompt"]) <= max_chars and story not in avoid:
                out.append(p)
                if len(out) == n:
                    break
        batch_seed += 7919
    return out


# ============================================================================= 2. masked SFT batches + exact match
END = "\n"  # an answer ends with a newline: the model learns when to stop


def encode_sft(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    return obj.sft_example(tok.encode(prompt), tok.encode(answer + END))


def sft_batch(tok, examples: list[Example], masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for ex in examples:
        x, y = encode_sft(tok, ex.prompt, ex.answer)
        if not masked:  # the 'what to break' variant: learn the prompt too
            y = tok.encode(ex.prompt + ex.answer + END)[1:]
        rows.append(x)
        labels.append(y)
    return obj.pad_batch(rows, labels, pad_id=tok.stoi[END])


@torch.no_grad()
def exact_match(model: GPT, tok, examples: list[Example], batch: int = 32) -> dict:
    """Greedy decoding reproduces the answer exactly iff, at every answer position, the gold
    token is the argmax given the gold prefix (which is what greedy would have produced so
    far). So one teacher-forced forward pass scores a whole batch: no token-by-token loop."""
    model.eval()
    hits: dict[str, list[bool]] = {}
    for i in range(0, len(examples), batch):
        chunk = examples[i:i + batch]
        x, y = sft_batch(tok, chunk)
        pred = model(x).argmax(-1)
        scored = y != obj.IGNORE
        ok = ((pred == y) | ~scored).all(dim=1)
        for ex, good in zip(chunk, ok.tolist()):
            hits.setdefault(ex.task, []).append(good)
    per_task = {t: sum(v) / len(v) for t, v in sorted(hits.items())}
    overall = sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values())
    return {"overall": overall, "per_task": per_task}


@torch.no_grad()
def greedy_answer(model: GPT, tok, prompt: str, max_new: int = 24) -> str:
    idx = torch.tensor([tok.encode(prompt)])
    out = model.generate(idx, max_new, temperature=0, stop_token=tok.stoi[END])[0, idx.shape[1]:].tolist()
    text = tok.decode(out)
    return text.split(END)[0]


# ============================================================================= 3. one small optimisation loop
def optimise(params, loss_fn, steps: int, lr: float, desc: str, warmup_frac: float = 0.1) -> list[float]:
    """AdamW with linear warm-up and cosine decay; `loss_fn(step)` draws its own batch and
    returns (loss, extras dict). No weight decay: a few dozen steps from a good start."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, int(warmup_frac * steps))
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True)
    for step in bar:
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        loss = loss_fn(step)
        if not torch.isfinite(loss):
            raise WorkbookError(f"{desc}: loss became {loss.item()} at step {step}; lower the learning rate")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    return losses


def batch_sampler(items: list, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda: [items[i] for i in torch.randint(len(items), (batch,), generator=g).tolist()]


def sft(model: GPT, tok, train: list[Example], cfg: Config, lr: float, steps: int, seed: int, desc: str,
        masked: bool = True, in_order: bool = False) -> list[float]:
    """Random batches from `train`; with in_order=True, batch k is train[k*batch:(k+1)*batch]
    instead (the curriculum extra, where the order of the examples is the experiment)."""
    model.train()
    draw = batch_sampler(train, cfg.batch, seed)

    def loss_fn(step):
        batch = train[step * cfg.batch:(step + 1) * cfg.batch] if in_order else draw()
        x, y = sft_batch(tok, batch, masked)
        return model(x, y)[1]
    return optimise(model.parameters(), loss_fn, steps, lr, desc)


def train_only_new_rows(model: GPT, n_base: int) -> int:
    """LoRA freezes the embedding and the output layer, but the rows of the *new* characters
    were never trained at all: let them learn (PEFT calls this trainable token indices). A
    gradient hook zeroes the old rows' gradient; with weight decay 0, AdamW leaves them as is."""
    n = 0
    for weight in (model.tok_emb.weight, model.lm_head.weight):
        weight.requires_grad_(True)
        mask = torch.zeros_like(weight)
        mask[n_base:] = 1
        weight.register_hook(lambda grad, mask=mask: grad * mask)
        n += int(mask[:, 0].sum().item()) * weight.shape[1]
    return n


# ============================================================================= 4. reward model
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
    logsumexp(q . k / sqrt(d_key)) says "this word occurs in the story". Why a match: the
    pairs differ only in whether the answer is the word the story used, and this body never
    learned to copy (the chapter measures it: its own log p(answer) ranks the pairs at chance),
    so no state at the end of the answer holds that fact for a linear head to read.
    The body is frozen, so its features are computed once and only the head trains."""

    def __init__(self, lm: GPT, kind: str = "match", d_key: int = 8, seed: int = 0):
        super().__init__()
        self.lm, self.kind = lm.eval(), kind
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
    x, _ = obj.pad_batch(ids, ids, pad_id=tok.stoi[END])
    return x, torch.tensor([len(i) for i in ids]), torch.tensor([len(p) for p in prompts])


def score(rm: RewardModel, tok, prompts: list[str], answers: list[str]) -> torch.Tensor:
    return rm(*rm_inputs(tok, prompts, answers))


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
    loss_of = obj.bradley_terry_loss if loss == "bt" else obj.margin_ranking_loss
    params = [p for n, p in rm.named_parameters() if not n.startswith("lm.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    losses = []
    for _ in tqdm(range(epochs), desc=f"reward head ({loss}, {rm.kind})", leave=False):
        total = 0.0
        for h, n, n_prompt in feats:
            l = loss_of(*rm.head(h, n, n_prompt).chunk(2))
            opt.zero_grad(set_to_none=True)
            l.backward()
            opt.step()
            total += l.item()
        losses.append(total / len(feats))
    return losses


def balanced_pairs(pairs: list[dict], per_task: int) -> list[dict]:
    """The same number of held-out pairs from every task: a constant-answer task (count) cannot
    inflate the average."""
    out = []
    for t in RM_TASKS:
        out += [p for p in pairs if p["task"] == t][:per_task]
    return out


CORRUPTIONS = {  # what a reward model should (not) like, each applied to the gold answer
    "gold": lambda a, wrong: a + END,
    "wrong answer": lambda a, wrong: wrong + END,
    "no newline": lambda a, wrong: a,
    "typo": lambda a, wrong: a[:-1] + ("a" if a[-1] != "a" else "e") + END,  # last letter changed
    "repeated": lambda a, wrong: a + a + END,
    "gold + wrong": lambda a, wrong: a + wrong + END,
    "empty": lambda a, wrong: END,
}


@torch.no_grad()
def sanity_checks(rm: RewardModel, tok, pairs: list[dict]) -> dict:
    """Mean reward of the gold answer and of corrupted versions of it, on held-out prompts, and
    how reward correlates with answer length over all of them (a length bias would make RL
    grow answers)."""
    prompts = [p["prompt"] for p in pairs]
    rewards, lengths = {}, []
    for name, corrupt in CORRUPTIONS.items():
        answers = [corrupt(p["chosen"], p["rejected"]) for p in pairs]
        r = score(rm, tok, prompts, answers)
        rewards[name] = r
        lengths.append(torch.tensor([float(len(a)) for a in answers]))
    gold = rewards["gold"]
    table = {name: {"mean_reward": r.mean().item(), "gold_wins": (gold > r).float().mean().item()}
             for name, r in rewards.items()}
    r_all, len_all = torch.cat(list(rewards.values())), torch.cat(lengths)
    corr = torch.corrcoef(torch.stack([r_all, len_all]))[0, 1].item()
    return {"table": table, "length_corr": corr, "n_prompts": len(pairs)}


# ============================================================================= 5. RL: rollouts, PPO, GRPO, DPO
@dataclass
class Rollout:
    x: torch.Tensor           # (N, T) prompt+answer inputs
    y: torch.Tensor           # labels: answer tokens only, IGNORE elsewhere
    mask: torch.Tensor        # y != IGNORE
    answers: list[str]
    examples: list[Example]
    reward: torch.Tensor      # (N,) reward model score
    logp_old: torch.Tensor    # (N, T) policy log-probs when sampled
    logp_ref: torch.Tensor    # (N, T) reference (SFT) log-probs
    live: tuple | None = None  # (logits, hidden) of that forward, graph kept, for the update's first epoch


def answer_ok(ex: Example, answer: str) -> tuple[bool, bool]:
    """(correct, valid): valid = finished with a newline and is one of the task's possible answers."""
    finished = answer.endswith(END)
    text = answer.removesuffix(END).strip()
    return finished and text == ex.answer.strip(), finished and text in ANSWER_POOLS.get(ex.task, [text])


@torch.no_grad()
def rollout(policy: GPT, ref: GPT, rm: RewardModel, tok, prompts: list[Example], cfg: Config,
            g: torch.Generator, group: int | None = None, keep_graph: bool = False) -> Rollout:
    """Sample `group` (default `rl_group`) answers per prompt (temperature 1), cut each at its
    first newline, and score them: reward model, policy and reference log-probs. With
    `keep_graph` the policy's forward keeps its autograd graph: the update's first epoch sees
    the very same policy and batch, so it backpropagates through this forward instead of
    repeating it (same numbers, one forward pass fewer per update)."""
    policy.eval()
    answers, examples = [], []
    for ex in prompts:
        idx = torch.tensor([tok.encode(ex.prompt)])   # the prompt is run once, then sampled `group` times
        out = policy.generate(idx, cfg.max_answer_tokens, temperature=1.0, generator=g, stop_token=tok.stoi[END],
                              num_samples=group or cfg.rl_group)
        for row in out[:, idx.shape[1]:].tolist():
            text = tok.decode(row)
            answers.append(text[:text.index(END) + 1] if END in text else text)
            examples.append(ex)
    rows, labels = zip(*(obj.sft_example(tok.encode(e.prompt), tok.encode(a)) for e, a in zip(examples, answers)))
    x, y = obj.pad_batch(list(rows), list(labels), pad_id=tok.stoi[END])
    reward = score(rm, tok, [e.prompt for e in examples], answers)
    live = None
    if keep_graph:
        with torch.enable_grad():
            live = forward_with_hidden(policy, x)
    logits = live[0].detach() if live else policy(x)
    return Rollout(x, y, y != obj.IGNORE, answers, examples, reward,
                   obj.token_logprobs(logits, y), obj.token_logprobs(ref(x), y), live)


def rollout_stats(r: Rollout) -> dict:
    kl = obj.kl_estimates(r.logp_old, r.logp_ref)["k1"] * r.mask
    ok = [answer_ok(e, a) for e, a in zip(r.examples, r.answers)]
    return {"reward": r.reward.mean().item(), "kl": kl.sum(1).mean().item(),  # KL of whole answers, nats
            "accuracy": sum(c for c, _ in ok) / len(ok), "validity": sum(v for _, v in ok) / len(ok),
            "answer_len": sum(len(a) for a in r.answers) / len(r.answers)}


def top_answers(r: Rollout, k: int = 5) -> list[dict]:
    """The policy's most frequent sampled answers with their mean reward and whether they are
    well-formed: where a policy that games the reward model shows what it found."""
    groups: dict[str, list[tuple[float, bool]]] = {}
    for e, a, rw in zip(r.examples, r.answers, r.reward.tolist()):
        groups.setdefault(a, []).append((rw, answer_ok(e, a)[1]))
    ranked = sorted(groups.items(), key=lambda kv: -len(kv[1]))[:k]
    return [{"answer": a, "share": len(v) / len(r.answers), "mean_reward": sum(x for x, _ in v) / len(v),
             "valid": sum(ok for _, ok in v) / len(v)} for a, v in ranked]


def ppo_update(policy: GPT, value_head: nn.Linear, r: Rollout, opt, cfg: Config, beta: float) -> dict:
    """PPO as in InstructGPT, at the scale of one answer: per-token reward -beta * KL estimate,
    plus the reward model's score on the last answer token; GAE with a value head; then
    `rl_epochs` passes of the clipped objective + value regression on this batch."""
    with torch.no_grad():
        _, h = r.live or forward_with_hidden(policy, r.x)
        values = value_head(h.detach()).squeeze(-1) * r.mask
        rewards = obj.ppo_token_rewards(r.reward, r.logp_old, r.logp_ref, r.mask, beta)
        adv, returns = obj.gae(rewards, values, r.mask, gamma=1.0, lam=0.95)
        adv = obj.whiten(adv, r.mask)   # the step size stops depending on the reward's scale
        m = r.mask.float()
    policy.train()
    for epoch in range(cfg.rl_epochs):
        logits, h = r.live if epoch == 0 and r.live else forward_with_hidden(policy, r.x)
        logp = obj.token_logprobs(logits, r.y)
        pg, clipped = obj.ppo_clip_loss(logp, r.logp_old, adv, r.mask, cfg.clip)
        # the critic reads detached features: a linear probe, so value errors never bend the policy
        v = value_head(h.detach()).squeeze(-1)
        v_loss = (((v - returns) ** 2) * m).sum() / m.sum()
        (pg + 0.5 * v_loss).backward()
        torch.nn.utils.clip_grad_norm_(list(policy.parameters()) + list(value_head.parameters()), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"pg_loss": pg.item(), "value_loss": v_loss.item(), "clipped": clipped.item()}


def grpo_update(policy: GPT, r: Rollout, opt, cfg: Config, beta: float) -> dict:
    """GRPO: one scalar advantage per answer, standardised within its prompt's group; the same
    clipped ratio as PPO; the KL to the reference is a loss term (k3 estimator), not a reward."""
    adv_seq = obj.grpo_advantages(r.reward.view(-1, cfg.rl_group)).view(-1)
    adv = adv_seq[:, None] * r.mask
    policy.train()
    for epoch in range(cfg.rl_epochs):
        logp = obj.token_logprobs(r.live[0] if epoch == 0 and r.live else policy(r.x), r.y)
        pg, clipped = obj.ppo_clip_loss(logp, r.logp_old, adv, r.mask, cfg.clip)
        kl = (obj.kl_estimates(logp, r.logp_ref)["k3"] * r.mask).sum() / r.mask.sum()
        (pg + beta * kl).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"pg_loss": pg.item(), "kl_term": kl.item(), "clipped": clipped.item()}


def run_rl(method: str, sft_model: GPT, rm: RewardModel, tok, prompts: list[Example], cfg: Config, seed: int,
           beta: float) -> tuple[GPT, list[dict]]:
    """`rl_updates` rounds of sample -> score -> update, from the SFT policy."""
    policy, ref = copy.deepcopy(sft_model), sft_model.eval()
    value_head = nn.Linear(policy.cfg.d_model, 1)
    nn.init.zeros_(value_head.weight)
    nn.init.zeros_(value_head.bias)
    params = list(policy.parameters()) + (list(value_head.parameters()) if method == "ppo" else [])
    opt = torch.optim.AdamW(params, lr=cfg.rl_lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    draw = batch_sampler(prompts, cfg.rl_prompts, seed + 1)
    curve = []
    for step in tqdm(range(cfg.rl_updates + 1), desc=f"{method} beta={beta}", leave=False):
        r = rollout(policy, ref, rm, tok, draw(), cfg, g, keep_graph=step < cfg.rl_updates)
        curve.append({"step": step, **rollout_stats(r)})  # measured before this batch's update
        if step == cfg.rl_updates:
            break
        extra = ppo_update(policy, value_head, r, opt, cfg, beta) if method == "ppo" else grpo_update(policy, r, opt, cfg, beta)
        curve[-1].update(extra)
    return policy.eval(), curve


def dpo_batch_logps(model: GPT, tok, pairs: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p of each pair's chosen and rejected answer, newline included (it is the token
    that ends the answer, and a policy that forgets to stop should pay for it); prompt masked."""
    prompts = [p["prompt"] for p in pairs]
    answers = [p["chosen"] + END for p in pairs] + [p["rejected"] + END for p in pairs]
    rows, labels = zip(*(obj.sft_example(tok.encode(pr), tok.encode(a)) for pr, a in zip(prompts + prompts, answers)))
    x, y = obj.pad_batch(list(rows), list(labels), pad_id=tok.stoi[END])
    logp = obj.token_logprobs(model(x), y).sum(1)
    return logp[:len(pairs)], logp[len(pairs):]


def dpo_log_ratios(good, bad, ref_good, ref_bad) -> dict:
    """Mean log pi/pi_ref (nats per answer) of the chosen and of the rejected answers, and the
    share of pairs the policy's implicit reward ranks right: the numbers that say *how* the DPO
    margin grew (chosen up, or both down with the rejected faster)."""
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


def run_dpo(sft_model: GPT, rm: RewardModel, tok, pairs: list[dict], prompts: list[Example], cfg: Config,
            seed: int) -> tuple[GPT, list[dict], list[dict]]:
    """DPO trains on the preference pairs directly; the reward model is used only to *measure*
    the policy (every `probe_every` steps, on fresh samples), so its curve sits on the PPO plot.
    Returns the policy, the probe curve and a per-step log of the training batch's loss and
    chosen/rejected log-ratios (measured before that step's update)."""
    # the reference is frozen: it runs in eval mode under no_grad, and only the copy's parameters
    # are handed to the optimiser
    policy, ref = copy.deepcopy(sft_model), sft_model.eval()
    draw = batch_sampler(pairs, cfg.batch, seed)
    draw_prompts = batch_sampler(prompts, cfg.rl_prompts, seed + 1)
    g = torch.Generator().manual_seed(seed)
    curve, log = [], []

    def probe(step):
        curve.append({"step": step, **rollout_stats(rollout(policy, ref, rm, tok, draw_prompts(), cfg, g))})
        policy.train()

    def loss_fn(step):
        if step % cfg.probe_every == 0:
            probe(step)
        batch = draw()
        with torch.no_grad():
            ref_good, ref_bad = dpo_batch_logps(ref, tok, batch)
        good, bad = dpo_batch_logps(policy, tok, batch)
        loss, _ = obj.dpo_loss(good, bad, ref_good, ref_bad, cfg.dpo_beta)
        log.append({"step": step, "loss": loss.item(), **dpo_log_ratios(good.detach(), bad.detach(), ref_good, ref_bad)})
        return loss
    policy.train()
    optimise(policy.parameters(), loss_fn, cfg.dpo_steps, cfg.dpo_lr, "dpo")
    probe(cfg.dpo_steps)
    return policy.eval(), curve, log


# ============================================================================= the lesson
def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--unmasked", action="store_true", help="what to break: SFT loss on prompt tokens too")
    p.add_argument("--lora-rank", type=int, default=8, help="rank r of the LoRA update")
    p.add_argument("--kl-beta", type=float, default=0.3, help="KL penalty weight for PPO/GRPO")
    p.add_argument("--rl-updates", type=int, default=None,
                   help="PPO/GRPO updates (DPO takes twice as many steps); default: the preset's")
    p.add_argument("--rl-lr", type=float, default=None, help="PPO/GRPO learning rate; default: the preset's")
    p.add_argument("--dpo-lr", type=float, default=None, help="DPO learning rate (what to break: 3e-4); default: the preset's")
    p.add_argument("--dpo-beta", type=float, default=None, help="DPO's beta; default: the preset's")
    p.add_argument("--extras", action="store_true",
                   help="also run the extras: mood classification fine-tuning and SFT curriculum ordering")
    run = cli.setup(p, argv)
    if run.args.lora_rank < 1:
        raise WorkbookError(f"--lora-rank must be at least 1, got {run.args.lora_rank}")
    if run.args.kl_beta < 0:
        raise WorkbookError(f"--kl-beta must be >= 0, got {run.args.kl_beta}")
    if run.args.rl_lr is not None and not 0 < run.args.rl_lr < 1:
        raise WorkbookError(f"--rl-lr must be between 0 and 1, got {run.args.rl_lr}")
    if run.args.dpo_lr is not None and not 0 < run.args.dpo_lr < 1:
        raise WorkbookError(f"--dpo-lr must be between 0 and 1, got {run.args.dpo_lr}")
    if run.args.dpo_beta is not None and run.args.dpo_beta <= 0:
        raise WorkbookError(f"--dpo-beta must be > 0, got {run.args.dpo_beta}")
    if run.args.rl_updates is not None and run.args.rl_updates < 1:
        raise WorkbookError(f"--rl-updates must be at least 1, got {run.args.rl_updates}")
    cfg = presets(run)
    cfg.lora_rank, cfg.kl_beta = run.args.lora_rank, run.args.kl_beta
    if run.args.rl_updates is not None:
        cfg.rl_updates, cfg.dpo_steps = run.args.rl_updates, 2 * run.args.rl_updates
    if run.args.rl_lr is not None:
        cfg.rl_lr = run.args.rl_lr
    cfg.dpo_lr = cfg.dpo_lr if run.args.dpo_lr is None else run.args.dpo_lr
    cfg.dpo_beta = cfg.dpo_beta if run.args.dpo_beta is None else run.args.dpo_beta
    cfg.lora_alpha = 2.0 * cfg.lora_rank
    seed = run.seed
    t_start = time.perf_counter()

    # ---- the base model and the data ------------------------------------------------------
    bundle = zoo.load("wood-llama", run)
    base = bundle.model.cpu().float().eval() if run.device.type == "cpu" else bundle.model.eval()
    wood = corpus.HundredAcreWood()
    train = draw_examples(wood, cfg.n_train, seed * 1000 + 1, cfg.max_prompt_chars)
    seen = frozenset(e.story for e in train)
    test = draw_examples(wood, cfg.n_test, seed * 1000 + 2, cfg.max_prompt_chars, avoid=seen)
    pairs_train = draw_pairs(wood, cfg.n_train, seed * 1000 + 3, cfg.max_prompt_chars)
    pairs_test = draw_pairs(wood, 3 * cfg.n_rm_test, seed * 1000 + 4, cfg.max_prompt_chars,
                            avoid=seen | {p["prompt"].split("\n")[0].removeprefix("Story: ") for p in pairs_train})
    pairs_test = balanced_pairs(pairs_test, cfg.n_rm_test // len(RM_TASKS))
    rl_prompts = draw_examples(wood, cfg.n_train, seed * 1000 + 5, cfg.max_prompt_chars, tasks=RM_TASKS)
    rl_test = [e for e in test if e.task in RM_TASKS][:cfg.n_rl_eval]

    base_chars = bundle.tokenizer.chars
    texts = [e.prompt + e.answer for e in train + test] + [p["prompt"] + p["chosen"] + p["rejected"] for p in pairs_train]
    new_chars = "".join(sorted((set("".join(texts)) | set("0123456789")) - set(base_chars)))
    tok = GrownCharTokenizer(base_chars, new_chars)
    grown = grow_vocab(base, len(new_chars), seed).eval()
    print(f"vocabulary: {len(base_chars)} base characters + {len(new_chars)} new ones {new_chars!r}")
    mean_len = sum(len(e.prompt) + len(e.answer) for e in train) / len(train)

    # rough cost, from FLOPs (an estimate printed before the slow part, not a measurement)
    T = int(mean_len)
    def est(steps, batch):
        return estimate_seconds(grown, TrainConfig(steps=steps, batch_size=batch, seq_len=T, eval_every=0, eval_batches=0))
    rl_batch = cfg.rl_prompts * cfg.rl_group
    seconds = (2 * est(cfg.sft_steps, cfg.batch) + est(cfg.n_rm_train // 3, 2) + est(cfg.dpo_steps, 3 * cfg.batch)
               + 3 * est(cfg.rl_updates, rl_batch * (cfg.rl_epochs + 2)))
    run.estimate(seconds=seconds, what="fine-tuning, reward model and RL")

    # ---- 2. SFT: full fine-tuning with the answer-only loss ---------------------------------
    timings, t0 = {}, time.perf_counter()
    before = exact_match(grown, tok, test)
    show = test[:3]
    shown = [{"task": e.task, "question": e.prompt.split("\n")[1], "gold": e.answer.strip(),
              "before": greedy_answer(grown, tok, e.prompt)} for e in show]
    sft_model = copy.deepcopy(grown)
    sft_losses = sft(sft_model, tok, train, cfg, cfg.sft_lr, cfg.sft_steps, seed, "SFT (full)", masked=not run.args.unmasked)
    sft_model.eval()
    after = exact_match(sft_model, tok, test)
    for s, e in zip(shown, show):
        s["after_sft"] = greedy_answer(sft_model, tok, e.prompt)
    timings["sft"] = time.perf_counter() - t0
    print(f"SFT exact match on {len(test)} held-out questions: {before['overall']:.1%} -> {after['overall']:.1%}")

    # ---- 3. LoRA ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    lora_model = copy.deepcopy(grown)
    wrappers = lora_lib.add_lora(lora_model, cfg.lora_rank, cfg.lora_alpha, seed=seed)
    n_lora = sum(w.A.numel() + w.B.numel() for w in wrappers)
    n_rows = train_only_new_rows(lora_model, tok.n_base)
    n_total = sum(p.numel() for p in lora_model.parameters())
    lora_losses = sft(lora_model, tok, train, cfg, cfg.lora_lr, cfg.sft_steps, seed, f"SFT (LoRA r={cfg.lora_rank})")
    lora_model.eval()
    lora_acc = exact_match(lora_model, tok, test)
    with torch.no_grad():
        x, _ = sft_batch(tok, test[:8])
        unmerged = lora_model(x)
        lora_lib.merge_all(lora_model)
        merged = lora_model(x)
    merge_diff = (merged - unmerged).abs().max().item()
    for s, e in zip(shown, show):
        s["after_lora"] = greedy_answer(lora_model, tok, e.prompt)
    print(f"LoRA r={cfg.lora_rank}: {n_lora + n_rows:,} trainable of {n_total:,} ({(n_lora + n_rows) / n_total:.1%}); "
          f"exact match {lora_acc['overall']:.1%} (full: {after['overall']:.1%}); merged vs unmerged max |diff| {merge_diff:.1e}")

    # ---- 4. reward model ---------------------------------------------------------------------
    timings["lora"], t0 = time.perf_counter() - t0, time.perf_counter()
    rm = RewardModel(copy.deepcopy(sft_model), "match", cfg.rm_d_key, seed)
    feats_train = pair_features(rm, tok, pairs_train[:cfg.n_rm_train])
    feats_test = pair_features(rm, tok, pairs_test)
    rm_losses = train_reward_head(rm, feats_train, cfg.rm_epochs, cfg.rm_lr, "bt")
    rm.normalise(feats_train)
    rm_acc = rm_accuracy(rm, feats_test, pairs_test)
    print(f"reward model (match head): held-out pairwise accuracy {rm_acc['overall']:.1%} on {len(pairs_test)} pairs "
          f"({', '.join(f'{t} {v:.0%}' for t, v in rm_acc['per_task'].items())})")
    # the same features, read other ways: why the match head, and Bradley-Terry vs a hinge
    variants = {}
    for name, kind, loss in (("last token, BT", "last", "bt"), ("match, margin", "match", "margin")):
        other = RewardModel(rm.lm, kind, cfg.rm_d_key, seed)
        curve = train_reward_head(other, feats_train, cfg.rm_epochs, cfg.rm_lr, loss)
        variants[name] = {"accuracy": rm_accuracy(other, feats_test, pairs_test),
                          "train_accuracy": rm_accuracy(other, feats_train, pairs_train)["overall"], "losses": curve}
    variants = {"match, BT": {"accuracy": rm_acc, "train_accuracy": rm_accuracy(rm, feats_train, pairs_train)["overall"],
                              "losses": rm_losses}, **variants}
    with torch.no_grad():  # does the SFT policy itself rank the pairs? (DPO's implicit reward starts here)
        sft_good, sft_bad = dpo_batch_logps(sft_model, tok, pairs_test)
    sft_logp_acc = (sft_good > sft_bad).float().mean().item()
    sanity = sanity_checks(rm, tok, pairs_test[::max(1, len(pairs_test) // 32)])
    for name, v in variants.items():
        print(f"  {name:>15}: held-out {v['accuracy']['overall']:.1%} (train {v['train_accuracy']:.1%})")
    print(f"  SFT log p(answer) ranks {sft_logp_acc:.1%} of the pairs right; reward vs answer length r = {sanity['length_corr']:+.2f}")
    del feats_train, feats_test
    for prm in rm.parameters():
        prm.requires_grad_(False)

    # ---- 5. RL from the SFT policy -------------------------------------------------------------
    timings["reward_model"], t0 = time.perf_counter() - t0, time.perf_counter()
    cpu0 = time.process_time()   # RL's own CPU seconds (all threads): the cost of the knobs below
    runs = {}
    policies = {}
    for name, method, beta in (("PPO", "ppo", cfg.kl_beta), ("PPO, no KL", "ppo", 0.0), ("GRPO", "grpo", cfg.kl_beta)):
        policies[name], runs[name] = run_rl(method, sft_model, rm, tok, rl_prompts, cfg, seed + 11, beta)
    policies["DPO"], runs["DPO"], dpo_log = run_dpo(sft_model, rm, tok, pairs_train, rl_prompts, cfg, seed + 11)
    # DPO's own measure, on the held-out pairs (the reference's log-probs are section 4's)
    dpo_held = dpo_heldout(policies["DPO"], tok, pairs_test, sft_good, sft_bad)

    timings["rl"], t0 = time.perf_counter() - t0, time.perf_counter()
    timings["rl_cpu"] = time.process_time() - cpu0
    # final measurements on the held-out RL prompts: fresh samples, same generator for all
    final = {}
    for name, pol in [("SFT", sft_model), *policies.items()]:
        g = torch.Generator().manual_seed(seed + 99)
        r = rollout(pol, sft_model, rm, tok, rl_test, cfg, g, group=cfg.eval_group)
        final[name] = {**rollout_stats(r), "exact_match": exact_match(pol, tok, rl_test)["overall"],
                       "top_answers": top_answers(r),
                       "samples": [{"question": e.prompt.split("\n")[1], "gold": e.answer.strip(), "answer": a}
                                   for e, a in list(zip(r.examples, r.answers))[::cfg.eval_group][:6]]}
        print(f"{name:>11}: reward {final[name]['reward']:+.2f}  KL {final[name]['kl']:.3f} nats  "
              f"sampled accuracy {final[name]['accuracy']:.1%}  valid {final[name]['validity']:.1%}")

    timings["final_eval"] = time.perf_counter() - t0
    elapsed_main = time.perf_counter() - t_start
    # ---- extras (--extras): run last, so the numbers above are the same with or without them ----
    extras = None
    if run.args.extras:
        import extras as extras_lib

        xc = extras_lib.presets(run)  # rough, from FLOPs: the curriculum's SFT runs + the classifier's steps
        run.estimate(seconds=est(3 * xc.cur_seeds * xc.cur_steps, cfg.batch) + est(xc.cls_steps, xc.cls_batch),
                     what="extras")
        extras = extras_lib.run_all(run, sys.modules[__name__], base, bundle.tokenizer, grown, tok, sft_model,
                                    wood, train, seen, cfg, seed)
        timings["extras"] = extras["wall_s"]["total"]
    # ---- results -----------------------------------------------------------------------------
    headline = {"sft_exact_match_before": before["overall"], "sft_exact_match_after": after["overall"],
                "lora_exact_match": lora_acc["overall"], "lora_trainable_share": (n_lora + n_rows) / n_total,
                "reward_model_accuracy": rm_acc["overall"],
                **{f"{k.lower().replace(', ', '_').replace(' ', '_')}_reward": v["reward"] for k, v in final.items()},
                **{f"{k.lower().replace(', ', '_').replace(' ', '_')}_accuracy": v["accuracy"] for k, v in final.items()}}
    results = {
        "headline": headline, "config": asdict(cfg), "unmasked": run.args.unmasked,
        "data": {"train_examples": len(train), "test_examples": len(test), "pairs_train": len(pairs_train),
                 "pairs_test": len(pairs_test), "mean_chars": mean_len, "new_chars": new_chars,
                 "base_vocab": len(base_chars)},
        "sft": {"before": before, "after": after, "losses": sft_losses, "examples": shown},
        "lora": {"accuracy": lora_acc, "losses": lora_losses, "rank": cfg.lora_rank, "alpha": cfg.lora_alpha,
                 "lora_params": n_lora, "new_row_params": n_rows, "total_params": n_total,
                 "full_params": sum(p.numel() for p in grown.parameters()), "merge_max_abs_diff": merge_diff},
        "reward_model": {"accuracy": rm_acc, "losses": rm_losses, "variants": variants,
                         "sft_logp_accuracy": sft_logp_acc, "sanity": sanity},
        "rl": {"curves": runs, "final": final, "kl_beta": cfg.kl_beta,
               "dpo": {"log": dpo_log, "heldout": dpo_held, "n_heldout": len(pairs_test), "lr": cfg.dpo_lr,
                       "beta": cfg.dpo_beta}},
        "elapsed_s": elapsed_main, "timings_s": timings,   # elapsed_s: the main part (extras: timings_s)
    }
    if extras is not None:
        results["extras"] = extras
    run.save_results(results)
    rows = [{"model": "base (no fine-tuning)", "exact match": before["overall"]},
            {"model": "SFT, full", "exact match": after["overall"], "trainable params": sum(p.numel() for p in grown.parameters())},
            {"model": f"SFT, LoRA r={cfg.lora_rank}", "exact match": lora_acc["overall"], "trainable params": n_lora + n_rows}]
    tasks = [{"task": t, "base": before["per_task"].get(t, float("nan")), "SFT full": after["per_task"][t],
              "LoRA": lora_acc["per_task"][t]} for t in after["per_task"]]
    rm_rows = [{"reward head": k, "held-out": v["accuracy"]["overall"], "train": v["train_accuracy"],
                **v["accuracy"]["per_task"]} for k, v in variants.items()]
    sanity_rows = [{"answer": k, "mean reward": v["mean_reward"], "gold wins": v["gold_wins"]}
                   for k, v in sanity["table"].items()]
    rl_rows = [{"policy": k, "RM reward": v["reward"], "KL to SFT (nats)": v["kl"], "sampled accuracy": v["accuracy"],
                "validity": v["validity"], "greedy exact match": v["exact_match"]} for k, v in final.items()]
    dpo_row = {"chosen log-ratio": dpo_held["chosen"], "rejected log-ratio": dpo_held["rejected"],
               "implicit reward ranks right": dpo_held["accuracy"], "log p ranks right (SFT: above)": dpo_held["logp_accuracy"]}
    top_rows = [{"policy": k, "most frequent sampled answers (share, mean RM reward, well-formed?)": "; ".join(
        f"{a['answer']!r} {a['share']:.2f}, {a['mean_reward']:+.2f}, {'yes' if a['valid'] == 1 else 'no' if a['valid'] == 0 else 'mixed'}"
        for a in v["top_answers"][:4]).replace("|", "/")} for k, v in final.items()]
    run.record_notes(
        f"Held-out exact match ({len(test)} questions, greedy decoding):\n\n{cli.markdown_table(rows)}\n\n"
        f"Per task:\n\n{cli.markdown_table(tasks)}\n\n"
        f"Reward model: frozen SFT body, heads trained on {cfg.n_rm_train} pairs, held-out pairwise accuracy on "
        f"{len(pairs_test)} pairs ({cfg.n_rm_test // len(RM_TASKS)} per task):\n\n{cli.markdown_table(rm_rows)}\n\n"
        f"The SFT model's own log p(answer) ranks {sft_logp_acc:.4g} of the held-out pairs the right way round.\n\n"
        f"Sanity checks of the match/BT reward model on {sanity['n_prompts']} held-out prompts (gold wins = share of "
        f"prompts where the gold answer scores higher than the variant):\n\n{cli.markdown_table(sanity_rows)}\n\n"
        f"Correlation of reward with answer length over all those answers: {sanity['length_corr']:+.3f}.\n\n"
        f"RL from the SFT policy ({cfg.rl_updates} updates of {rl_batch} samples at learning rate {cfg.rl_lr:g}, "
        f"KL weight {cfg.kl_beta:g} for PPO and GRPO; DPO {cfg.dpo_steps} steps of {cfg.batch} pairs), measured on "
        f"{len(rl_test)} held-out prompts x {cfg.eval_group} samples:\n\n"
        f"{cli.markdown_table(rl_rows)}\n\nWhat each policy says most often on those prompts (newlines shown as \\n):\n\n"
        f"{cli.markdown_table(top_rows)}\n\n"
        f"DPO (learning rate {cfg.dpo_lr:g}, beta {cfg.dpo_beta:g}) on the {len(pairs_test)} held-out preference pairs, "
        f"log pi/pi_ref per answer in nats:\n\n{cli.markdown_table([dpo_row])}\n\nRL cost: {timings['rl_cpu']:.0f} s CPU for the four runs "
        f"({timings['rl']:.0f} s wall), {timings['final_eval']:.0f} s wall for the final measurements.\n\nLoRA merged vs unmerged max |logit diff|: {merge_diff:.2e}. "
        f"Chapter wall time {results['elapsed_s']:.0f} s"
        + ("." if extras is None else f" (the extras are timed below).\n\n{extras_lib.notes_markdown(extras, cli.markdown_table)}"))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


if __name__ == "__main__":
    cli.run_main(main)
