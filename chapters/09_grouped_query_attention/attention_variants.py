"""The pieces of chapter 09: turning multi-head attention into grouped-query attention,
and a (simplified) multi-head latent attention layer that caches one small vector per token.

Everything here plugs into the shared `GPT`: a GQA model is just a `GPTConfig` with fewer
K/V heads, and `LatentAttention` replaces `block.attn` (same call signature).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, apply_rope, rope_cos_sin


# ----------------------------------------------------------------------------- MHA -> GQA
def mean_pool_heads(weight: torch.Tensor, n_head: int, groups: int) -> torch.Tensor:
    """Rows of a K or V projection, (n_head * head_dim, d), averaged within each group of
    n_head/groups consecutive heads: (groups * head_dim, d). Ainslie et al. (2023) found
    mean-pooling the checkpoint's heads the best starting point for GQA."""
    if n_head % groups:
        raise WorkbookError(f"{n_head} heads cannot be split into {groups} equal groups")
    heads = rearrange(weight, "(g per hd) d -> g per hd d", g=groups, per=n_head // groups)
    return rearrange(heads.mean(dim=1), "g hd d -> (g hd) d")


def to_gqa(model: GPT, groups: int) -> GPT:
    """A copy of an MHA model with `groups` K/V heads (groups == heads: an exact copy;
    groups == 1: multi-query attention). Query heads stay; K/V heads are mean-pooled."""
    cfg = model.cfg
    if cfg.n_kv_head != cfg.n_head:
        raise WorkbookError("to_gqa starts from a multi-head model (n_kv_head == n_head)")
    if groups < 1 or cfg.n_head % groups:
        raise WorkbookError(f"{cfg.n_head} heads cannot be split into {groups} equal groups")
    new = GPT(GPTConfig(**{**cfg.to_dict(), "n_kv_head": groups}))
    state = model.state_dict()
    for name, w in state.items():
        if name.endswith(("attn.k_proj.weight", "attn.v_proj.weight")):
            state[name] = mean_pool_heads(w, cfg.n_head, groups)
    new.load_state_dict(state)
    return new.to(next(model.parameters()).device).eval()


def kv_cache_bytes(n_layer: int, kv_heads: int, head_dim: int, tokens: int, bytes_per: int = 4, batch: int = 1) -> int:
    """The formula: keys and values (2) for every layer, K/V head, head dimension and token."""
    return 2 * n_layer * kv_heads * head_dim * tokens * bytes_per * batch


# ----------------------------------------------------------------------------- MLA
class LatentCache:
    """Per layer, one latent vector c_t (d_latent numbers) per token instead of K and V rows."""

    def __init__(self, n_layer: int, batch: int, max_len: int, d_latent: int, dtype=torch.float32, device="cpu"):
        self.c = torch.zeros(n_layer, batch, max_len, d_latent, dtype=dtype, device=device)
        self.pos = 0  # the shared GPT advances this after each forward

    def update(self, layer: int, c: torch.Tensor) -> torch.Tensor:
        t = c.shape[1]
        self.c[layer, :, self.pos:self.pos + t] = c
        return self.c[layer, :, :self.pos + t]

    @property
    def nbytes(self) -> int:
        return self.c.nbytes


class LatentAttention(nn.Module):
    """Multi-head latent attention, simplified from DeepSeek-V2 (2024).

    K and V are not projected from x directly but from a shared low-rank latent
    c = x W_down (d_latent numbers per token), through per-head up-projections:
    k = RoPE(c W_uk), v = c W_uv. Only c is cached. Simplification: DeepSeek-V2 keeps RoPE
    off the latent path (a small separate RoPE key) so that W_uk can be folded into the
    query at decode time; here RoPE is applied after the up-projection, so keys are
    recomputed from the cached latents at every step (less memory, more compute)."""

    def __init__(self, cfg: GPTConfig, layer_idx: int, d_latent: int):
        super().__init__()
        self.cfg, self.layer_idx, self.d_latent = cfg, layer_idx, d_latent
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=False)
        self.kv_down = nn.Linear(cfg.d_model, d_latent, bias=False)
        self.k_up = nn.Linear(d_latent, cfg.n_kv_head * hd, bias=False)
        self.v_up = nn.Linear(d_latent, cfg.n_kv_head * hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=False)

    @classmethod
    def from_attention(cls, attn: nn.Module, d_latent: int) -> LatentAttention:
        """Factor an existing layer's stacked [W_k; W_v] by truncated SVD:
        [W_k; W_v] ≈ (U_r S_r) V_rᵀ, so W_down = V_rᵀ and [W_uk; W_uv] = U_r S_r.
        With d_latent = rank([W_k; W_v]) (at most d_model) this is exact."""
        cfg = attn.cfg
        new = cls(cfg, attn.layer_idx, d_latent)
        with torch.no_grad():
            stacked = torch.cat([attn.k_proj.weight, attn.v_proj.weight], dim=0).double()
            U, S, Vh = torch.linalg.svd(stacked, full_matrices=False)
            up = (U[:, :d_latent] * S[:d_latent]).float()
            new.kv_down.weight.copy_(Vh[:d_latent].float())
            k_rows = attn.k_proj.weight.shape[0]
            new.k_up.weight.copy_(up[:k_rows])
            new.v_up.weight.copy_(up[k_rows:])
            new.q_proj.weight.copy_(attn.q_proj.weight)
            new.o_proj.weight.copy_(attn.o_proj.weight)
        return new.to(attn.q_proj.weight.device)

    def forward(self, x, rope=None, alibi=None, cache: LatentCache | None = None, pos0: int = 0):
        cfg = self.cfg
        if cfg.pos not in ("rope", "none") or cfg.window is not None:
            raise WorkbookError("LatentAttention supports RoPE or no positions, without a window")
        c = self.kv_down(x)                                         # (B, T, d_latent): all we cache
        if cache is not None:
            c = cache.update(self.layer_idx, c)                     # (B, S, d_latent)
        t, s = x.shape[1], c.shape[1]
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=cfg.n_head)
        k = rearrange(self.k_up(c), "b s (h d) -> b h s d", h=cfg.n_kv_head)
        v = rearrange(self.v_up(c), "b s (h d) -> b h s d", h=cfg.n_kv_head)
        if cfg.pos == "rope":
            q = apply_rope(q, *rope)
            k = apply_rope(k, *rope_cos_sin(torch.arange(s, device=x.device), cfg.head_dim, cfg.rope_theta))
        gqa = cfg.n_kv_head != cfg.n_head
        if s == t:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:  # queries are the last t positions: each sees every key up to itself
            mask = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(diagonal=s - t)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))


def to_mla(model: GPT, d_latent: int) -> GPT:
    """A copy of `model` whose every attention layer caches a d_latent latent (SVD init)."""
    new = GPT(GPTConfig(**model.cfg.to_dict()))
    new.load_state_dict(model.state_dict())
    for block in new.blocks:
        block.attn = LatentAttention.from_attention(block.attn, d_latent)
    return new.to(next(model.parameters()).device).eval()


@torch.no_grad()
def greedy_decode_mla(model: GPT, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding with a latent cache (the shared `generate` knows only K/V caches)."""
    d_latent = model.blocks[0].attn.d_latent
    cache = LatentCache(model.cfg.n_layer, prompt.shape[0], prompt.shape[1] + new_tokens, d_latent,
                        device=prompt.device)
    logits = model(prompt, cache=cache)[:, -1]
    out = [prompt]
    for _ in range(new_tokens):
        nxt = logits.argmax(dim=-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, cache=cache)[:, -1]
    return torch.cat(out, dim=1)


def latent_bytes_per_token(n_layer: int, d_latent: int, bytes_per: int = 4) -> int:
    return n_layer * d_latent * bytes_per


def effective_rank(weight: torch.Tensor, energy: float = 0.99) -> int:
    """How many singular values hold `energy` of the squared Frobenius norm."""
    s = torch.linalg.svdvals(weight.double())
    cum = (s ** 2).cumsum(0) / (s ** 2).sum()
    return int((cum < energy).sum().item()) + 1

