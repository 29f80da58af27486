"""The hand-built block against the shared one: the same weights must give the same function.

    block_vs_shared(seed=0)              # TransformerBlock vs shared.model.Block, with and without biases
    miniformer_vs_gpt(vocab, 4, 128)     # a whole MiniFormer vs shared.model.GPT holding the same weights

Random, non-trivial weights (gains and biases too), so LayerNorm's affine part is tested; the
written-out softmax(QK^T/sqrt(d))V path is compared with the fused one as well.
"""
from __future__ import annotations

import torch

from miniformer import MiniFormer, TransformerBlock
from shared.model import GPT, Block, GPTConfig


@torch.no_grad()
def block_vs_shared(d_model: int = 64, n_head: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for bias in (False, True):
        cfg = GPTConfig(d_model=d_model, n_head=n_head, bias=bias)
        ours, theirs = TransformerBlock(cfg, 0), Block(cfg, 0)
        for p in ours.parameters():   # vectors around 1 (gains), matrices around 0
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 1 else 0.1) + (1.0 if p.dim() == 1 else 0.0))
        theirs.load_state_dict(ours.state_dict())   # same parameter names, so this just works
        x = torch.randn(4, 48, d_model, generator=g)
        fused = ours(x)
        ours.attn.record = True                     # forces the written-out path
        explicit = ours(x)
        out[f"bias={bias}"] = {"max_abs_diff_vs_shared": (fused - theirs(x)).abs().max().item(),
                               "max_abs_diff_explicit_vs_fused": (explicit - fused).abs().max().item()}
    return out


@torch.no_grad()
def miniformer_vs_gpt(vocab_size: int, n_layer: int, d_model: int, n_head: int = 4, seed: int = 0) -> float:
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(vocab_size=vocab_size, block_size=256, n_layer=n_layer, n_head=n_head, d_model=d_model))
    ours = MiniFormer.from_gpt(gpt)
    idx = torch.randint(vocab_size, (2, 200), generator=torch.Generator().manual_seed(seed))
    return (ours(idx) - gpt(idx)).abs().max().item()
