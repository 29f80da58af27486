"""Are the hand-written schemes in `positions.py` the ones the workbook's model trains with?

Three kinds of check, each a number that should be float rounding:

    check_encodings         each scheme's function against shared.model's (and two closed forms)
    check_against_model     layer 0's attention weights of a shared GPT, rebuilt from positions.py alone
    rope_relative_check     RoPE's point: one (q, k) pair placed at many absolute positions gives
                            one score per offset m - n

and two facts about position that are not about any one scheme: a learned table refuses a
sequence longer than itself (`learned_table_error`), and a model without positions is blind
to the order of its prefix only when it has a single layer (`shuffle_sensitivity`).
"""
from __future__ import annotations

import math

import torch
from einops import rearrange

import positions as P
from shared import model as shared_model
from shared.errors import SelfCheckError, WorkbookError
from shared.model import GPT, GPTConfig

SCHEMES = ("learned", "sinusoidal", "rope", "alibi", "none")   # GPTConfig.pos values


def check_encodings(head_dim: int, d_model: int, n_positions: int) -> dict:
    """Each hand-written scheme against the shared model's function (max |difference|)."""
    pos = torch.arange(n_positions)
    x = torch.randn(2, 3, n_positions, head_dim, generator=torch.Generator().manual_seed(0))
    cos, sin = shared_model.rope_cos_sin(pos, head_dim)
    half = P.interleaved_to_half
    sinusoidal = P.sinusoidal(n_positions, d_model)
    return {
        "sinusoidal_vs_shared": (sinusoidal - shared_model.sinusoidal_table(pos, d_model)).abs().max().item(),
        "rope_vs_shared_apply_rope": (P.rope(x, pos) - shared_model.apply_rope(x, cos, sin)).abs().max().item(),
        "rope_interleaved_vs_rotate_half": (half(P.rope_interleaved(x, pos)) - P.rope(half(x), pos)).abs().max().item(),
        "alibi_slopes_vs_shared": max((P.alibi_slopes(n) - shared_model.alibi_slopes(n)).abs().max().item()
                                      for n in range(1, 33)),
        "alibi_slopes_8_heads_vs_2^-k": (P.alibi_slopes(8) - 2.0 ** -torch.arange(1, 9)).abs().max().item(),
        "sinusoidal_closed_form_p5_dim2": abs(P.sinusoidal(6, d_model)[5, 2].item()
                                              - math.sin(5 / 10000 ** (2 / d_model))),
    }


def rope_relative_check(head_dim: int, offsets=(0, 3, 17), starts=(0, 10, 100, 1000)) -> dict:
    """After rotating q to position m + offset and k to position m, q·k depends on the offset only:
    for each offset, the same q, k placed at several absolute positions m give one score."""
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(head_dim, generator=g), torch.randn(head_dim, generator=g)
    spread = {}
    for off in offsets:
        scores = [float(P.rope(q[None], torch.tensor([m + off]))[0] @ P.rope(k[None], torch.tensor([m]))[0])
                  for m in starts]
        spread[f"offset_{off}"] = {"scores": scores, "max_minus_min": max(scores) - min(scores)}
    return spread


@torch.no_grad()
def hand_attention(model: GPT, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer 0's attention weights for one sequence idx (1, T), recomputed from positions.py, next to
    the weights the model itself computes (shared.model.attention_weights): two (heads, T, T)."""
    cfg, block = model.cfg, model.blocks[0]
    T = idx.shape[1]
    x = model.tok_emb(idx)
    if cfg.pos == "learned":
        x = x + P.learned_lookup(model.pos_emb.weight, torch.arange(T))
    elif cfg.pos == "sinusoidal":
        x = x + P.sinusoidal(T, cfg.d_model)
    h = block.attn_norm(x)
    q = rearrange(block.attn.q_proj(h), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(block.attn.k_proj(h), "b t (h d) -> b h t d", h=cfg.n_head)
    bias = None
    if cfg.pos == "rope":
        q, k = P.rope(q, torch.arange(T), cfg.rope_theta), P.rope(k, torch.arange(T), cfg.rope_theta)
    elif cfg.pos == "alibi":
        bias = P.alibi_bias(cfg.n_head, T)
    ours = P.causal_attention_weights(q, k, bias)[0]
    return ours, shared_model.attention_weights(model, idx)[0]


@torch.no_grad()
def check_against_model(vocab_size: int, seq_len: int) -> dict:
    """Plug each hand-written scheme into layer 0 of a random shared GPT: the same attention?"""
    out = {}
    for scheme in SCHEMES:
        torch.manual_seed(0)
        m = GPT(GPTConfig(vocab_size=vocab_size, block_size=seq_len, n_layer=1, n_head=4, d_model=32,
                          pos=scheme)).eval()
        for p in m.parameters():  # larger weights than the 0.02 init, so the scores are far from uniform
            p.mul_(20.0)
        idx = torch.randint(vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(2))
        ours, theirs = hand_attention(m, idx)
        out[scheme] = (ours - theirs).abs().max().item()
    return out


def learned_table_error(vocab_size: int, block_size: int) -> str:
    """A learned table has block_size rows; one token more and there is nothing to look up."""
    m = GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, d_model=16, pos="learned"))
    try:
        m(torch.zeros(1, block_size + 1, dtype=torch.long))
    except WorkbookError as e:
        return str(e)
    raise SelfCheckError("the learned-position model accepted a sequence longer than its table")


@torch.no_grad()
def shuffle_sensitivity(model: GPT, idx: torch.Tensor, n_shuffles: int = 8) -> float:
    """Largest change of the LAST position's log-probs when the tokens before it are shuffled.

    One attention layer with no positional encoding sees its prefix as a *set* (an average over
    it), so this is float rounding. From the second layer on, the causal mask leaks order: each
    earlier position averaged over a prefix of a different size, and the next layer can read that."""
    model.eval()
    g = torch.Generator().manual_seed(3)
    base = model(idx)[:, -1].log_softmax(-1)
    worst = 0.0
    for _ in range(n_shuffles):
        perm = torch.randperm(idx.shape[1] - 1, generator=g).to(idx.device)
        shuffled = torch.cat([idx[:, :-1][:, perm], idx[:, -1:]], dim=1)
        worst = max(worst, (model(shuffled)[:, -1].log_softmax(-1) - base).abs().max().item())
    return worst
