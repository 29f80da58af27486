"""12 · LoRA (Hu et al. 2021): fine-tune a frozen weight W through a low-rank update.

    y = x W^T + (alpha / r) * x A^T B^T        A: (r, in), B: (out, r), B starts at zero

So at step 0 the model is exactly the pretrained one, and the update B @ A has rank <= r:
r * (in + out) trainable numbers instead of in * out. After training, W + (alpha/r) B A
can be folded into one matrix (`merge`), and inference costs nothing extra.

How many fewer numbers? For one d_in x d_out matrix the share is r (d_in + d_out) / (d_in d_out),
which for a square d x d matrix is 2r / d: it shrinks as the model widens (`lora_share`). The
often-quoted "10,000x fewer" (GPT-3, d = 12288, r = 4 on W_q and W_v only) is that ratio times the
share of a block's weights that get an adapter at all (`lora_share_table`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    """Wraps an nn.Linear: its weight (and bias) frozen, plus trainable A and B."""

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))  # zero: training starts at the base model
        # A like nn.Linear's default (Kaiming-uniform): gradients reach B from step one
        bound = 1 / math.sqrt(base.in_features)
        with torch.no_grad():
            self.A.uniform_(-bound, bound, generator=generator)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        # (x A^T) B^T: two thin matmuls, never the full (out, in) update
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return self.B @ self.A * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into W: same outputs, no extra matmuls at inference."""
        if not self.merged:
            self.base.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta_weight()
            self.merged = False


TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0, targets=TARGETS, seed: int = 0) -> list[LoRALinear]:
    """Freeze every parameter of `model`, then swap each nn.Linear whose name ends in one of
    `targets` for a LoRALinear. Returns the wrappers (their A, B are the only trainable weights)."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    wrapped = []
    for _, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear) and child_name in targets:
                lora = LoRALinear(child, r, alpha, g)
                setattr(module, child_name, lora)
                wrapped.append(lora)
    return wrapped


def merge_all(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.merge()


@torch.no_grad()
def merge_and_compare(model: nn.Module, x: torch.Tensor) -> float:
    """Fold every adapter into its weight (`merge_all`); the largest logit change that caused,
    which should be float rounding only: the merged model is the same function, with no adapter cost."""
    before = model(x)
    merge_all(model)
    return (model(x) - before).abs().max().item()


def unmerge_all(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.unmerge()


def lora_params(d_in: int, d_out: int, r: int) -> int:
    """Trainable numbers of one adapter: A is (r, d_in), B is (d_out, r)."""
    return r * (d_in + d_out)


def lora_share(d_in: int, d_out: int, r: int) -> float:
    """Adapter numbers / the matrix's own numbers: 2r / d for a square d x d matrix."""
    return lora_params(d_in, d_out, r) / (d_in * d_out)


def lora_share_table(widths=(128, 768, 4096, 12288), ranks=(1, 8, 64), adapted_share: float = 1.0) -> list[dict]:
    """Closed-form trainable share for square d x d projections at each width and rank, and the
    'N x fewer' it amounts to. `adapted_share` is the fraction of the block's weights that carry an
    adapter (1 = every projection; GPT-3's LoRA adapted W_q and W_v, 2 of its 12 d^2, = 1/6)."""
    rows = []
    for d in widths:
        for r in ranks:
            if r < d:
                share = lora_share(d, d, r) * adapted_share
                rows.append({"d": d, "rank": r, "trainable_share": share, "times_fewer": 1 / share})
    return rows


def count_params(model: nn.Module) -> dict:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_share": trainable / total}
