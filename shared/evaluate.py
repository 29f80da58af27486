"""Loss against the exact floor, on the very same text.

For a Hundred Acre Wood story the generator knows p(story), so a perfect model's loss on
that story is exactly -ln p(story). `story_loss` scores a model on whole stories (each fed
after a newline, so the model sees the story from its first character) and returns the
model's nats per character next to that perfect-model value for the same stories. No
expectation or sampling error is involved in the comparison: same characters, same count.
"""
from __future__ import annotations

import math

import torch

from shared.corpus import Story


@torch.no_grad()
def story_nats(model, tokenizer, stories: list[Story], device="cpu", batch_size: int = 32,
               max_len: int | None = None, logits_fn=None) -> tuple[torch.Tensor, list[int]]:
    """The model's summed nats on each story that fits its context (float64, one per kept
    story), and the indices of those stories. Per-story numbers let two models be compared
    story by story (a paired comparison); `story_loss` sums them. `logits_fn(x)` replaces
    `model(x)` for a batch of padded ids, e.g. to read keys and values through a special cache."""
    model.eval()
    max_len = max_len or model.cfg.block_size
    seqs, kept = [], []
    for i, st in enumerate(stories):
        ids = tokenizer.encode("\n" + st.text)  # the newline is context, the story is scored
        if len(ids) <= max_len + 1:
            seqs.append(ids)
            kept.append(i)
    nats = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        width = max(len(s) for s in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, s in enumerate(chunk):
            x[r, :len(s) - 1] = torch.tensor(s[:-1])
            y[r, :len(s) - 1] = torch.tensor(s[1:])
        logits = (logits_fn or model)(x.to(device)).float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.to(device), ignore_index=-100,
                                                reduction="none")
        nats.append(nll.sum(dim=1).double().cpu())
    return (torch.cat(nats) if nats else torch.zeros(0, dtype=torch.float64)), kept


def story_loss(model, tokenizer, stories: list[Story], device="cpu", batch_size: int = 32,
               max_len: int | None = None) -> dict:
    """Model loss (nats/char) on `stories` and the exact floor on the same stories.
    Stories that don't fit the model's context are skipped (and counted)."""
    nats, idx = story_nats(model, tokenizer, stories, device, batch_size, max_len)
    kept = [stories[i] for i in idx]
    total_nats = float(nats.sum())
    chars = sum(len(st.text) for st in kept)
    floor = sum(-st.log2_prob() for st in kept) * math.log(2)
    return {"model_nats_per_char": total_nats / max(chars, 1), "floor_nats_per_char": floor / max(chars, 1),
            "gap_nats_per_char": (total_nats - floor) / max(chars, 1), "stories": len(kept),
            "skipped_too_long": len(stories) - len(kept), "chars": chars}
