"""What each layer adds, two ways.

    ReadOut(model, after=2)        # the model cut after block 2: stream -> final norm -> head
    model.skip_layers([1])         # (miniformer) block 1 removed, the others as trained

Reading out the residual stream early (the "logit lens", nostalgebraist 2020) asks how much of
the final prediction is already in the stream after k blocks; removing one block asks how much
the other blocks depend on it. Both are scored with `shared.evaluate.story_loss`, next to the
exact floor on the same stories.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.evaluate import story_loss


class ReadOut(nn.Module):
    """The first `after` blocks of a trained MiniFormer, then its own final norm and head."""

    def __init__(self, model, after: int):
        super().__init__()
        self.model, self.after, self.cfg = model, after, model.cfg

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.model.residual_stream(idx)[self.after]
        return self.model.lm_head(self.model.norm_f(x))


def read_out_losses(model, tok, stories, device) -> list[dict]:
    """nats/char when decoding from the stream after 0 (the embedding alone) .. n_layer blocks."""
    rows = []
    for after in range(model.cfg.n_layer + 1):
        r = story_loss(ReadOut(model, after), tok, stories, device)
        rows.append({"after_blocks": after, "nats_per_char": r["model_nats_per_char"],
                     "gap": r["gap_nats_per_char"]})
    return rows


def removal_losses(model, tok, stories, device) -> list[dict]:
    """nats/char with each block removed in turn (the stream skips it), the rest as trained."""
    rows = []
    for layer in range(model.cfg.n_layer):
        model.skip_layers([layer])
        r = story_loss(model, tok, stories, device)
        rows.append({"removed": layer, "nats_per_char": r["model_nats_per_char"], "gap": r["gap_nats_per_char"]})
    model.skip_layers([])
    return rows
