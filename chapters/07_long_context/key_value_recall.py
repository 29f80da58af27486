"""A task where context is everything and the best possible loss is known exactly, for chapter 07.

Every sequence has its own secret table: each of `keys` keys is bound to one of `values`
values, drawn afresh per sequence (so nothing can be memorised across sequences). The
sequence asks and answers, over and over:

    k3  k3=v5  k0  k0=v2  k3  k3=v5  k7  k7=v1  ...

A key token `k` is drawn uniformly; the next token is the fact `k=v` for that key (one token
each: `keys * values` fact tokens). Only the facts are scored: a key is pure chance (ln keys
nats whatever you know), the fact is where context pays. A model that can see the key's last
fact knows the answer (0 nats); one that cannot has ln(values) nats to pay. So with `c`
tokens of context, which hold c // 2 earlier facts, each of them the same key with chance 1/keys,

    floor(c) = ln(values) * (1 - 1/keys) ** (c // 2)        nats per answer, exactly

It falls smoothly with context (about halving every 1.4 * keys tokens), so "how much context can
this model use?" is read straight off a loss curve: a model that uses only its last W tokens
sits at floor(W) however long the sequence. What it leaves out, next to natural text: no
grammar, no spelling, no short-range structure at all; one layer and one head that matches the
key can solve it. That is the trade: a lesson about context that a tiny model learns in seconds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from shared.errors import WorkbookError

NOT_SCORED = -100   # cross_entropy's ignore_index: the key tokens carry no lesson


@dataclass(frozen=True)
class KeyValueRecall:
    keys: int = 16
    values: int = 8

    def __post_init__(self):
        if self.keys < 2 or self.values < 2:
            raise WorkbookError(f"key-value recall needs >= 2 keys and >= 2 values, got {self.keys} and {self.values}")

    @property
    def vocab_size(self) -> int:
        return self.keys + self.keys * self.values          # key tokens, then one token per fact

    def fact_token(self, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return self.keys + key * self.values + value

    def sample(self, n: int, length: int, generator: torch.Generator) -> torch.Tensor:
        """(n, length) token ids: key, fact, key, fact, ... each row with its own random table."""
        pairs = length // 2 + 1
        asked = torch.randint(self.keys, (n, pairs), generator=generator)
        table = torch.randint(self.values, (n, self.keys), generator=generator)   # the row's secret
        facts = self.fact_token(asked, table.gather(1, asked))
        return torch.stack([asked, facts], dim=2).reshape(n, 2 * pairs)[:, :length]

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                  aligned: bool = False, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Fresh sequences every call, in the shape `shared.train.train` expects of its data
        (inputs, next-token targets); targets that are keys are not scored. `split` and
        `aligned` mean nothing here: every sequence is new, so there is nothing to hold out."""
        tokens = self.sample(batch_size, seq_len + 1, generator)
        x, y = tokens[:, :-1], tokens[:, 1:].clone()
        y[:, 1::2] = NOT_SCORED                   # y[:, i] is token i+1: odd i -> an even (key) position
        return x.to(device), y.to(device)

    def floor(self, context: int) -> float:
        """Best possible nats on an answer seen with `context` tokens before it (exact)."""
        return math.log(self.values) * (1 - 1 / self.keys) ** (context // 2)

    def context_worth(self, loss: float) -> float:
        """The floor read backwards: how many tokens of context a perfect model needs to do as
        well as `loss`. A model that uses only its last W tokens is worth about W here."""
        if loss >= math.log(self.values):
            return 0.0
        return 2 * math.log(max(loss, 1e-12) / math.log(self.values)) / math.log(1 - 1 / self.keys)


def keys_last_seen(tokens: torch.Tensor, task: KeyValueRecall) -> np.ndarray:
    """(n, answers): for each answer, how many facts back its key's last fact is (inf: never
    before). An answer is knowable with c tokens of context iff this is <= c // 2."""
    facts = tokens[:, 1::2].cpu().numpy()
    keys = (facts - task.keys) // task.values
    last = np.full((len(keys), task.keys), -np.inf)      # fact index where each key was last answered
    gaps = np.empty(keys.shape)
    rows = np.arange(len(keys))
    for a in range(keys.shape[1]):
        gaps[:, a] = a - last[rows, keys[:, a]]
        last[rows, keys[:, a]] = a
    return gaps


@torch.no_grad()
def answer_loss_by_context(model, task: KeyValueRecall, length: int, n_sequences: int, device, seed: int,
                           window: int | None = None, batch: int = 32) -> dict:
    """Mean loss on every answer of `n_sequences` fresh sequences of `length` tokens, by how many
    tokens of context the answer had (the answer at position p sees the p tokens before it), next
    to two floors for what the model can see (all of it, or its last `window` tokens):
    `floor`, the exact expectation, and `floor_seen`, the best possible loss on these very
    sequences (0 where the key's fact is in view, ln(values) where it is not), which takes out
    the luck of the draw when a model is compared with it."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = torch.zeros(length, dtype=torch.float64)
    seen = np.zeros(length // 2)
    for start in range(0, n_sequences, batch):
        tokens = task.sample(min(batch, n_sequences - start), length + 1, g)
        logits = model(tokens[:, :-1].to(device)).float()
        nll = F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:].to(device), reduction="none")   # (b, length)
        total += nll.double().sum(0).cpu()
        gaps = keys_last_seen(tokens, task)[:, :length // 2]
        reach = np.arange(length // 2) if window is None else np.full(length // 2, window // 2)
        seen += (gaps > np.minimum(reach, np.arange(length // 2))).sum(0) * math.log(task.values)
    answers = np.arange(0, length, 2)             # logits at i predict token i+1: answers sit at odd tokens
    context = (answers + 1).tolist()
    view = [c if window is None else min(c, window) for c in context]
    return {"context": context, "loss": (total[answers] / n_sequences).tolist(),
            "floor": [task.floor(c) for c in view], "floor_seen": (seen / n_sequences).tolist(),
            "sequences": n_sequences}


def band(by_context: dict, lo: int, hi: int) -> dict:
    """Means over the answers whose context is in [lo, hi): loss, exact floor, floor on these
    sequences, and `gap` = loss - floor_seen (what the model leaves on the table)."""
    rows = [i for i, c in enumerate(by_context["context"]) if lo <= c < hi]
    if not rows:
        raise ValueError(f"no answer with context in [{lo}, {hi})")
    out = {key: sum(by_context[key][i] for i in rows) / len(rows) for key in ("loss", "floor", "floor_seen")}
    return {**out, "gap": out["loss"] - out["floor_seen"], "answers": len(rows)}
