"""12 · Supervised fine-tuning (SFT) with the loss on the answer only.

A base model continues stories. To make it answer questions we show it examples

    Story: Pooh found a red balloon ...\nQ: What colour was the balloon?\nAnswer: red\n

and train it like any language model, next token by next token, but score only the answer:
the labels of the prompt are IGNORE (-100), so the gradient teaches "answer the question",
not "re-learn the story text". Read in this order:

    GrownCharTokenizer, grow_vocab   new characters ('?', ':', digits) get new rows; old ids keep theirs
    sft_example, pad_batch           (inputs, labels) with the prompt masked; right-padded batches
    exact_match                      greedy decoding == gold answer, scored in one teacher-forced pass
    optimise, train_sft              AdamW with warm-up + cosine decay over random batches
    train_only_new_rows              LoRA's companion: only the new vocabulary rows learn
    SFTRecipe, question_first        the measured recipe: the question BEFORE the story
    sft_curve, held_out_task, forgetting    the chapter's SFT experiments

Why the question first: a causal model reads left to right. With the question after the story,
every story position is computed before the model knows what will be asked, and the answer
position must find the colour (or name, or mood) by attention alone. With the question first,
the story is read knowing what to look for (main.py --part sft --story-first trains the other way).
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, replace

import torch
from tqdm.auto import tqdm

from shared import tokenizer
from shared.errors import WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT

IGNORE = -100  # torch's cross_entropy ignore_index: a label the loss skips
END = "\n"     # an answer ends with a newline: the model learns when to stop


# ============================================================================= masked examples
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
    for i, (r, lab) in enumerate(zip(rows, labels)):
        x[i, :len(r)] = torch.tensor(r)
        y[i, :len(lab)] = torch.tensor(lab)
    return x, y


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, T) log p(label_t | tokens before it); 0 where the label is IGNORE."""
    mask = labels != IGNORE
    logp = logits.float().log_softmax(dim=-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return logp * mask


# ============================================================================= a bigger vocabulary
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


# ============================================================================= data
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
    """`n` preference pairs (prompt, chosen, rejected) with prompts of at most `max_chars`
    characters, none about a story in `avoid`."""
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


# ============================================================================= batches + exact match
def encode_sft(tok, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    return sft_example(tok.encode(prompt), tok.encode(answer + END))


def sft_batch(tok, examples: list[Example], masked: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    rows, labels = [], []
    for ex in examples:
        x, y = encode_sft(tok, ex.prompt, ex.answer)
        if not masked:  # the 'what to break' variant: learn the prompt too
            y = tok.encode(ex.prompt + ex.answer + END)[1:]
        rows.append(x)
        labels.append(y)
    return pad_batch(rows, labels, pad_id=tok.stoi[END])


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
        scored = y != IGNORE
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
    return tok.decode(out).split(END)[0]


# ============================================================================= one small optimisation loop
def lr_scale(step: int, steps: int, warmup_frac: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    warmup = max(1, int(warmup_frac * steps))
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def optimise(params, loss_fn, steps: int, lr: float, desc: str, warmup_frac: float = 0.1) -> list[float]:
    """AdamW with linear warm-up and cosine decay; `loss_fn(step)` draws its own batch and
    returns the loss. No weight decay: a few dozen steps from a good start."""
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True)
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = lr * lr_scale(step, steps, warmup_frac)
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


def train_sft(model: GPT, tok, train: list[Example], *, steps: int, batch: int, lr: float, seed: int, desc: str,
              masked: bool = True, in_order: bool = False) -> list[float]:
    """Random batches from `train`; with in_order=True, batch k is train[k*batch:(k+1)*batch]
    instead (the curriculum extra, where the order of the examples is the experiment)."""
    model.train()
    draw = batch_sampler(train, batch, seed)

    def loss_fn(step):
        chunk = train[step * batch:(step + 1) * batch] if in_order else draw()
        x, y = sft_batch(tok, chunk, masked)
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


# ============================================================================= the recipe and its experiments
@dataclass(frozen=True)
class SFTRecipe:
    """The default recipe: ~100 s of training on two threads."""
    steps: int = 800
    batch: int = 8
    lr: float = 2.5e-3
    max_prompt_chars: int = 200   # stories of one middle sentence: short sequences, cheap steps
    question_first: bool = True   # "Question: ...\nStory: ...\nAnswer:" instead of story first
    n_train: int = 4000
    n_test: int = 192


def question_of(ex: Example) -> str:
    """The question alone, from a story-first or a question-first prompt."""
    if ex.prompt.startswith("Question: "):
        return ex.prompt.split("\n")[0].removeprefix("Question: ")
    return ex.prompt.split("\nQuestion: ")[-1].removesuffix("\nAnswer:")


def question_first(ex: Example) -> Example:
    """The same example with the question moved before the story."""
    if ex.prompt.startswith("Question: "):
        return ex
    return replace(ex, prompt=f"Question: {question_of(ex)}\nStory: {ex.story}\nAnswer:")


def in_format(prompt: str) -> str:
    """A corpus prompt (story first) in the question-first format."""
    story = prompt.split("\n")[0].removeprefix("Story: ")
    return question_first(Example("", prompt, "", story)).prompt


def draw_split(wood, recipe: SFTRecipe, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, test) in the recipe's format; no test story occurs in train."""
    train = draw_examples(wood, recipe.n_train, seed * 1000 + 1, recipe.max_prompt_chars)
    test = draw_examples(wood, recipe.n_test, seed * 1000 + 2, recipe.max_prompt_chars,
                         avoid=frozenset(e.story for e in train))
    if recipe.question_first:
        train, test = [question_first(e) for e in train], [question_first(e) for e in test]
    return train, test


def sft_curve(model: GPT, tok, train: list[Example], test: list[Example], recipe: SFTRecipe, seed: int,
              every: int = 50, masked: bool = True, desc: str = "SFT") -> dict:
    """Train `model` in place with the recipe; held-out exact match every `every` steps.
    Returns {"steps", "overall", "per_task": {task: [...]}, "losses"} (curves start at step 0)."""
    curve = {"steps": [], "overall": [], "per_task": {}}

    def probe(step):
        em = exact_match(model, tok, test)
        curve["steps"].append(step)
        curve["overall"].append(em["overall"])
        for task, v in em["per_task"].items():
            curve["per_task"].setdefault(task, []).append(v)
        model.train()

    draw = batch_sampler(train, recipe.batch, seed)

    def loss_fn(step):
        if step % every == 0:
            probe(step)
        x, y = sft_batch(tok, draw(), masked)
        return model(x, y)[1]
    model.train()
    curve["losses"] = optimise(model.parameters(), loss_fn, recipe.steps, recipe.lr, desc)
    probe(recipe.steps)
    model.eval()
    return curve


def held_out_task(grown: GPT, tok, train: list[Example], test: list[Example], recipe: SFTRecipe, seed: int,
                  task: str = "where") -> dict:
    """Instruction-tune on every task but `task`, then ask `task`'s held-out questions: does
    answering five kinds of question transfer to a sixth never trained on?"""
    if task not in {e.task for e in test}:
        raise WorkbookError(f"no held-out questions of task {task!r}; choose one of {sorted({e.task for e in test})}")
    model = copy.deepcopy(grown)
    before = exact_match(model, tok, test)
    others = [e for e in train if e.task != task]
    train_sft(model, tok, others, steps=recipe.steps, batch=recipe.batch, lr=recipe.lr, seed=seed,
              desc=f"SFT without {task}")
    after = exact_match(model.eval(), tok, test)
    return {"task": task, "before": before["per_task"][task], "after": after["per_task"][task],
            "others_after": {t: v for t, v in after["per_task"].items() if t != task},
            "answers": [greedy_answer(model, tok, e.prompt) for e in test if e.task == task][:8],
            "gold": [e.answer for e in test if e.task == task][:8]}


def forgetting(models: dict[str, GPT], tok, stories) -> dict:
    """Held-out story loss (nats/char) of each model next to the exact floor: does teaching
    the model to answer questions make it worse at what it knew, continuing stories?"""
    return {name: story_loss(model.eval(), tok, stories) for name, model in models.items()}
