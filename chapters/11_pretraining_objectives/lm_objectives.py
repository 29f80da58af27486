"""Three pretraining objectives on one transformer: the attention masks, BERT's 80/10/10
corruption, the model that takes a mask, one training batch per objective, and the training
loop they share (same initial weights, same windows: only the mask and the targets differ).

    mask = causal_mask(T) | bidirectional_mask(T) | prefix_mask(T, prefix_len)  # True = may attend
    model = MaskedLM(GPTConfig(...))          # shared GPT weights, attention told which mask to use
    logits = model(idx, mask)                 # mask: (T, T) or (B, T, T)
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from shared import bench
from shared.data import TokenData
from shared.errors import WorkbookError
from shared.model import GPT, Attention, GPTConfig
from shared.train import TrainConfig, lr_at, make_optimizer

OBJECTIVES = ("mlm", "clm", "prefix")
MASK_TOKEN = "[MASK]"


# ----------------------------------------------------------------------------- tokens
class WordTokenizer:
    """One token per word (with its leading space, as GPT-2 does) or punctuation mark, plus
    [MASK]. Whole words make "mask 15% of tokens" and "fill in the blank" mean the same thing
    for all three models; concatenating the tokens gives back the text exactly."""

    kind = "word"
    PATTERN = re.compile(r" ?[A-Za-z]+| ?[^A-Za-z\s]|\n")

    def __init__(self, words: list[str]):
        self.words = sorted(set(words)) + [MASK_TOKEN]
        self.stoi = {w: i for i, w in enumerate(self.words)}
        self.mask_id = self.stoi[MASK_TOKEN]

    @classmethod
    def from_text(cls, text: str) -> WordTokenizer:
        pieces = cls.PATTERN.findall(text)
        if "".join(pieces) != text:
            raise WorkbookError("the word tokenizer only handles letters, punctuation, single spaces and newlines")
        return cls(pieces)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    def split(self, text: str) -> list[str]:
        return self.PATTERN.findall(text)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[w] for w in self.split(text)]
        except KeyError as e:
            raise WorkbookError(f"word {e.args[0]!r} is not in this tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.words[int(i)] for i in ids)

    def fingerprint(self) -> str:  # shared.data caches token arrays under this
        return "word:" + hashlib.sha1(json.dumps(self.words).encode()).hexdigest()[:12]

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"kind": "word", "words": self.words[:-1]}))


# ----------------------------------------------------------------------------- masks
def causal_mask(t: int) -> torch.Tensor:
    """GPT: position i sees positions 0..i."""
    return torch.ones(t, t, dtype=torch.bool).tril()


def bidirectional_mask(t: int) -> torch.Tensor:
    """BERT: every position sees every position (the [MASK]s hide the answers instead)."""
    return torch.ones(t, t, dtype=torch.bool)


def prefix_mask(t: int, prefix_len) -> torch.Tensor:
    """Prefix LM (UniLM, T5's prefix-LM, GLM): the first `prefix_len` positions see each other
    both ways; every later position sees the whole prefix and the suffix up to itself.
    `prefix_len` may be an int (one (T, T) mask) or a (B,) tensor (one mask per row)."""
    q = torch.arange(t)[:, None]
    k = torch.arange(t)[None, :]
    if isinstance(prefix_len, int):
        return (k <= q) | (k < prefix_len)
    prefix_len = torch.as_tensor(prefix_len)
    return (k <= q)[None] | (k[None] < prefix_len[:, None, None])


# ----------------------------------------------------------------------------- BERT corruption
def bert_corrupt(idx: torch.Tensor, mask_id: int, n_real: int, generator: torch.Generator,
                 p_select: float = 0.15, p_mask: float = 0.8, p_random: float = 0.1):
    """BERT's recipe: pick each token with probability 15% as a prediction target; of those,
    80% become [MASK], 10% a random real token, 10% stay as they are (so the model cannot
    assume an unmasked token is always the truth). Returns (inputs, targets, how) with
    targets = -100 where nothing is predicted and how in {0: untouched, 1: [MASK], 2: random, 3: kept}."""
    selected = torch.rand(idx.shape, generator=generator) < p_select
    u = torch.rand(idx.shape, generator=generator)
    to_mask = selected & (u < p_mask)
    to_random = selected & (u >= p_mask) & (u < p_mask + p_random)
    inputs = idx.clone()
    inputs[to_mask] = mask_id
    inputs[to_random] = torch.randint(n_real, idx.shape, generator=generator)[to_random]
    targets = torch.where(selected, idx, torch.full_like(idx, -100))
    how = torch.zeros_like(idx)
    how[to_mask], how[to_random], how[selected & ~to_mask & ~to_random] = 1, 2, 3
    return inputs, targets, how


# ----------------------------------------------------------------------------- the model
class MaskedAttention(Attention):
    """shared.model's attention (same weights, same names) with the mask passed in instead of
    always causal: `mask` is boolean (T, T) or (B, T, T), True where a query may read a key."""

    def forward(self, x, mask=None):
        cfg = self.cfg
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=cfg.n_head)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
        if mask.dim() == 3:
            mask = mask[:, None]  # one mask per row, shared by the heads
        if self.record:
            self.weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).masked_fill(~mask, float("-inf")).softmax(-1)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))


def masked_blocks(cfg: GPTConfig) -> torch.nn.ModuleList:
    """shared.model Blocks whose attention takes the mask as an argument."""
    from shared.model import Block

    blocks = torch.nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
    for i, block in enumerate(blocks):
        attn = MaskedAttention(cfg, i)
        attn.load_state_dict(block.attn.state_dict())
        block.attn = attn
    return blocks


class MaskedLM(GPT):
    """The shared GPT with its attention mask as an input. The mask is the ONLY difference
    between BERT, GPT and a prefix LM here: same embeddings, blocks, head, parameter count."""

    def __init__(self, cfg: GPTConfig):
        if cfg.pos != "learned":
            raise WorkbookError("MaskedLM uses learned positions (set GPTConfig.pos='learned')")
        super().__init__(cfg)  # builds and initialises everything, then we swap each attention
        for i, block in enumerate(self.blocks):
            attn = MaskedAttention(cfg, i)
            attn.load_state_dict(block.attn.state_dict())
            block.attn = attn

    def forward(self, idx: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor | None = None):
        b, t = idx.shape
        if t > self.cfg.block_size:
            raise WorkbookError(f"sequence of {t} tokens is longer than block_size={self.cfg.block_size}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        mask = mask.to(idx.device)
        for block in self.blocks:
            x = block(x, mask=mask)
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------- one batch per objective
def objective_batch(objective: str, x: torch.Tensor, y: torch.Tensor, mask_id: int, n_real: int,
                    generator: torch.Generator, mask_rate: float = 0.15):
    """(inputs, mask, targets) for one training batch of windows x with next tokens y.

    mlm:    corrupt `mask_rate` of x (BERT: 15%), bidirectional mask, predict the originals there.
    clm:    x as is, causal mask, predict y everywhere.
    prefix: a random split s per row; x[:s] is read both ways and not scored; position i >= s-1
            predicts y[i] (the first suffix token is predicted from the whole prefix)."""
    b, t = x.shape
    if objective == "mlm":
        inputs, targets, _ = bert_corrupt(x, mask_id, n_real, generator, p_select=mask_rate)
        return inputs, bidirectional_mask(t), targets
    if objective == "clm":
        return x, causal_mask(t), y
    if objective == "prefix":
        s = torch.randint(1, t, (b,), generator=generator)
        targets = y.clone()
        targets[torch.arange(t)[None, :] < (s[:, None] - 1)] = -100
        return x, prefix_mask(t, s), targets
    raise WorkbookError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


# ----------------------------------------------------------------------------- training
def train_objective(objective: str, cfg: GPTConfig, data: TokenData, tok: WordTokenizer, tcfg: TrainConfig,
                    device, seed: int, mask_rate: float = 0.15) -> tuple[MaskedLM, dict]:
    """Same initial weights (seeded) and same windows (same data generator seed) for every
    objective: only the mask and the choice of targets differ."""
    torch.manual_seed(seed)
    model = MaskedLM(cfg).to(device).train()
    opt = make_optimizer(model, tcfg)
    data_gen = torch.Generator().manual_seed(tcfg.seed)
    corrupt_gen = torch.Generator().manual_seed(tcfg.seed + 1)
    history = {"step": [], "train_loss": [], "val": []}
    n_real = tok.vocab_size - 1  # random replacements are real tokens, never [MASK]
    for step in tqdm(range(tcfg.steps), desc=f"train {objective}", leave=False, dynamic_ncols=True):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg)
        x, y = data.get_batch("train", tcfg.batch_size, tcfg.seq_len, data_gen, aligned=True)
        inputs, mask, targets = objective_batch(objective, x, y, tok.mask_id, n_real, corrupt_gen, mask_rate)
        _, loss = model(inputs.to(device), mask, targets.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history["step"].append(step + 1)
        history["train_loss"].append(loss.item())
        if (step + 1) % tcfg.eval_every == 0 or step + 1 == tcfg.steps:
            history["val"].append({"step": step + 1,
                                   "loss": val_loss(model, objective, data, tok, tcfg, device, mask_rate)})
    return model.eval(), history


@torch.no_grad()
def val_loss(model, objective, data, tok, tcfg, device, mask_rate: float = 0.15) -> float:
    """An objective's own loss on fixed validation windows (not comparable across objectives)."""
    was = model.training
    model.eval()
    g, cg = torch.Generator().manual_seed(10_000), torch.Generator().manual_seed(10_001)
    losses = []
    for _ in range(tcfg.eval_batches):
        x, y = data.get_batch("val", tcfg.batch_size, tcfg.seq_len, g, aligned=True)
        inputs, mask, targets = objective_batch(objective, x, y, tok.mask_id, tok.vocab_size - 1, cg, mask_rate)
        losses.append(model(inputs.to(device), mask, targets.to(device))[1].item())
    model.train(was)
    return sum(losses) / len(losses)


def seconds_per_step(cfg: GPTConfig, data: TokenData, tok: WordTokenizer, tcfg: TrainConfig, device) -> float:
    """Tiny models are bound by per-step overhead, not FLOPs: time two real steps on a throwaway model."""
    model = MaskedLM(cfg).to(device).train()
    opt = make_optimizer(model, tcfg)
    g = torch.Generator().manual_seed(123)

    def step():
        x, y = data.get_batch("train", tcfg.batch_size, tcfg.seq_len, g, aligned=True)
        inputs, mask, targets = objective_batch("clm", x, y, tok.mask_id, tok.vocab_size - 1, g)
        model(inputs.to(device), mask, targets.to(device))[1].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return bench.time_fn(step, device, warmup=1, repeat=2)
