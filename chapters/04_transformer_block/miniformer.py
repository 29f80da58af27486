"""A transformer block assembled by hand, with switches that break it.

    block = TransformerBlock(cfg, layer_idx=0)        # LayerNorm -> attention -> + ; LayerNorm -> FFN -> +
    model = MiniFormer(cfg)                           # n of them on top of shared.model.GPT's embeddings
    model.set_breaks(Breaks(swap_qk=True))            # ... and now it is broken

Parameter names are the ones `shared.model.Block` uses (attn_norm, attn.q_proj, ...,
mlp.up_proj, mlp.down_proj), so the same state dict loads into either and the two must
compute the same function. The shared one is the fast one (fused SDPA); this one writes
every step out so that each step can be switched off.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, KVCache

REMOVALS = ("keep", "identity", "zeros")
NOISE_SCALES = ("whole", "varying")


@dataclass(frozen=True)
class Breaks:
    """What to break in every block. The default breaks nothing."""

    swap_qk: bool = False      # queries play keys and keys play queries: scores[i, j] = k_i . q_j
    noise_q: float = 0.0       # add Gaussian noise of this many standard deviations (of the tensor itself)
    noise_k: float = 0.0
    noise_v: float = 0.0
    noise_of: str = "whole"    # whole: std of the whole tensor | varying: std around each feature's mean over tokens
    q: str = "keep"            # keep | identity (q = the normed input itself) | zeros
    k: str = "keep"
    v: str = "keep"
    residual: bool = True      # False: x = f(norm(x)) instead of x + f(norm(x))
    layernorm: bool = True     # False: every LayerNorm (also the final one) passes x through untouched

    def __post_init__(self):
        for name in ("q", "k", "v"):
            if getattr(self, name) not in REMOVALS:
                raise WorkbookError(f"Breaks.{name}={getattr(self, name)!r}; choose one of {', '.join(REMOVALS)}")
        if self.noise_of not in NOISE_SCALES:
            raise WorkbookError(f"Breaks.noise_of={self.noise_of!r}; choose one of {', '.join(NOISE_SCALES)}")
        for name in ("noise_q", "noise_k", "noise_v"):
            if getattr(self, name) < 0:
                raise WorkbookError(f"Breaks.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def intact(self) -> bool:
        return self == Breaks()

    def describe(self) -> str:
        changed = [f"{f.name}={getattr(self, f.name)}" for f in fields(self)
                   if getattr(self, f.name) != f.default]
        return ", ".join(changed) or "intact"


# ----------------------------------------------------------------------------- the pieces
class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * weight (+ bias), over the feature axis.

    Why: the residual stream's scale drifts from layer to layer; normalising what each
    sub-layer reads keeps its inputs at unit scale whatever the depth."""

    def __init__(self, d_model: int, eps: float = 1e-5, bias: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model)) if bias else None
        self.bypass = False  # the "remove LayerNorm" switch

    def forward(self, x):
        if self.bypass:
            return x
        mean = x.mean(dim=-1, keepdim=True)
        var = (x - mean).pow(2).mean(dim=-1, keepdim=True)  # biased variance, as torch's LayerNorm
        y = (x - mean) * torch.rsqrt(var + self.eps) * self.weight
        return y if self.bias is None else y + self.bias


def gelu(x):
    """The exact GELU: x * Phi(x), Phi the standard normal CDF."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class FeedForward(nn.Module):
    """Per position: widen to d_ff, GELU, project back. Where most of the parameters live."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x):
        return self.down_proj(gelu(self.up_proj(x)))


class CausalSelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head), causal) V per head, written out so each of Q, K, V
    can be swapped, corrupted or removed."""

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head, self.layer_idx = cfg.n_head, layer_idx
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.breaks = Breaks()
        self.noise_gen = torch.Generator()  # reseeded by MiniFormer.set_breaks: same seed, same noise
        self.record = False                  # keep the attention weights of the next forward
        self.weights = None

    def forward(self, x, cache: KVCache | None = None, pos0: int = 0):
        q, k, v = (self.project(x, getattr(self, f"{n}_proj"), n) for n in ("q", "k", "v"))
        if self.breaks.swap_qk:
            q, k = k, q
        q, k, v = (rearrange(z, "b t (h d) -> b h t d", h=self.n_head) for z in (q, k, v))
        if cache is not None:  # generation: keys/values of earlier tokens come from the cache
            k, v = cache.update(self.layer_idx, k, v)
        y = self.attend(q, k, v, pos0)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))

    def project(self, x, linear: nn.Linear, which: str):
        """Q, K or V for input x, with that tensor's breaks applied."""
        mode, noise = getattr(self.breaks, which), getattr(self.breaks, f"noise_{which}")
        if mode == "zeros":
            return torch.zeros_like(x)
        z = x if mode == "identity" else linear(x)
        if noise:
            eps = torch.randn(z.shape, generator=self.noise_gen, dtype=z.dtype).to(z.device)
            z = z + noise * noise_unit(z.detach(), self.breaks.noise_of) * eps
        return z

    def attend(self, q, k, v, pos0: int):
        t, s = q.shape[2], k.shape[2]
        if not self.record and pos0 == 0 and s == t:
            # the same function as below, fused: it never materialises the (T, T) score matrix,
            # which makes training ~2x faster on a CPU (tests check the two agree)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        # query i (at absolute position pos0 + i) may look at keys 0 .. pos0 + i
        allowed = torch.arange(s, device=q.device)[None, :] <= torch.arange(pos0, pos0 + t, device=q.device)[:, None]
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        if self.record:
            self.weights = weights.detach()
        return weights @ v


def noise_unit(z: torch.Tensor, of: str = "whole") -> torch.Tensor:
    """The size one unit of noise has: the std of the whole tensor, or ("varying") the RMS of each
    feature's std over the tokens, which leaves out a mean vector that every token shares."""
    if of == "whole":
        return z.std()
    flat = z.reshape(-1, z.shape[-1])
    return flat.var(dim=0).mean().sqrt()


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x)).

    The residual `x +` is what makes depth trainable: each block only adds a correction to
    a stream that flows straight from the embedding to the head (and gradients flow straight back)."""

    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.attn_norm = LayerNorm(cfg.d_model, cfg.norm_eps, cfg.bias)
        self.attn = CausalSelfAttention(cfg, layer_idx)
        self.mlp_norm = LayerNorm(cfg.d_model, cfg.norm_eps, cfg.bias)
        self.mlp = FeedForward(cfg)
        self.residual = True
        self.skipped = False  # "remove this layer": the block passes the stream through untouched

    def forward(self, x, cache: KVCache | None = None, pos0: int = 0):
        if self.skipped:
            if cache is not None:  # keep the cache's bookkeeping: this layer stores nothing useful
                self.attn(self.attn_norm(x), cache=cache, pos0=pos0)
            return x
        a = self.attn(self.attn_norm(x), cache=cache, pos0=pos0)
        x = x + a if self.residual else a
        m = self.mlp(self.mlp_norm(x))
        return x + m if self.residual else m


# ----------------------------------------------------------------------------- the model
def check_config(cfg: GPTConfig) -> None:
    """MiniFormer builds only the 2018 GPT shape: learned positions, LayerNorm, GELU, pre-norm, MHA."""
    wanted = {"pos": "learned", "norm": "layernorm", "activation": "gelu", "norm_position": "pre",
              "n_kv_head": cfg.n_head, "n_experts": 0, "window": None, "dropout": 0.0}
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise WorkbookError(f"MiniFormer needs GPTConfig.{name}={value!r}, got {getattr(cfg, name)!r}")


class MiniFormer(GPT):
    """shared.model.GPT's embeddings, head and generate(), with our blocks inside.

    Subclassing GPT keeps the state dict, `train()`, `story_loss()` and KV-cached
    `generate()` all working unchanged; only the blocks and the final norm are ours."""

    def __init__(self, cfg: GPTConfig):
        check_config(cfg)
        super().__init__(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layer))
        self.norm_f = LayerNorm(cfg.d_model, cfg.norm_eps, cfg.bias)
        self.apply(self._init_weights)  # the same scheme GPT uses, applied to the new modules
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))
        self.breaks = Breaks()

    def set_breaks(self, breaks: Breaks, noise_seed: int = 0) -> MiniFormer:
        """Apply `breaks` to every block (Breaks() repairs everything)."""
        self.breaks = breaks
        for block in self.blocks:
            block.residual = breaks.residual
            block.attn.breaks = breaks
            block.attn.noise_gen.manual_seed(noise_seed + block.attn.layer_idx)
        for m in self.modules():
            if isinstance(m, LayerNorm):
                m.bypass = not breaks.layernorm
        return self

    def skip_layers(self, layers=()) -> MiniFormer:
        """Remove the blocks numbered in `layers` (an empty tuple puts them all back)."""
        for i, block in enumerate(self.blocks):
            block.skipped = i in set(layers)
        return self

    @torch.no_grad()
    def residual_stream(self, idx: torch.Tensor) -> list[torch.Tensor]:
        """The stream after the embedding and after each block: n_layer + 1 tensors (B, T, C)."""
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device))
        streams = [x]
        for block in self.blocks:
            x = block(x)
            streams.append(x)
        return streams

    @classmethod
    def from_gpt(cls, gpt: GPT) -> MiniFormer:
        """Our model with a trained shared GPT's weights."""
        model = cls(gpt.cfg)
        model.load_state_dict(gpt.state_dict())
        return model.to(next(gpt.parameters()).device)
