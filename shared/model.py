"""One decoder-only transformer with the switches the chapters flip.

    cfg = GPTConfig(vocab_size=65, n_layer=4, n_head=4, d_model=128, pos="rope", norm="rmsnorm",
                    activation="swiglu")          # a tiny Llama
    model = GPT(cfg)
    logits = model(idx)                             # (B, T, vocab)
    logits, loss = model(idx, targets)              # targets == -100 are ignored
    out = model.generate(idx, 100, temperature=0.8, top_k=20)

Parameter names mirror Hugging Face Llama (q_proj/k_proj/v_proj/o_proj, gate/up/down_proj,
rotate-half RoPE), so `shared.hf` converts a Llama-style config to `LlamaForCausalLM`
and back with identical logits; a GPT-2-style config converts to `GPT2LMHeadModel`.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError

POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "swiglu")
ATTENTIONS = ("sdpa", "explicit", "flash")


@dataclass
class GPTConfig:
    vocab_size: int = 256
    block_size: int = 256            # longest sequence trained on; the learned position table's size
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None     # None: = n_head (MHA); 1: MQA; in between: GQA
    d_model: int = 128
    d_ff: int | None = None          # None: 4*d_model (8/3*d_model rounded up to 32 for SwiGLU)
    pos: str = "learned"
    rope_theta: float = 10000.0
    norm: str = "layernorm"
    norm_position: str = "pre"       # pre: x + f(norm(x));  post: norm(x + f(x)) (the 2017 original)
    norm_eps: float = 1e-5
    activation: str = "gelu"
    attn_impl: str = "sdpa"
    window: int | None = None        # sliding window: each token attends to itself and window-1 before it
    n_experts: int = 0               # 0: dense feed-forward; >0: mixture of experts
    expert_top_k: int = 2
    moe_aux_weight: float = 0.01     # Switch-style load-balancing loss weight
    bias: bool = False
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None:
            self.d_ff = 32 * math.ceil(8 * self.d_model / 3 / 32) if self.activation == "swiglu" else 4 * self.d_model
        for name, value, allowed in (("pos", self.pos, POSITIONS), ("norm", self.norm, NORMS),
                                     ("activation", self.activation, ACTIVATIONS),
                                     ("attn_impl", self.attn_impl, ATTENTIONS),
                                     ("norm_position", self.norm_position, ("pre", "post"))):
            if value not in allowed:
                raise WorkbookError(f"GPTConfig.{name}={value!r}; choose one of {', '.join(allowed)}")
        if self.d_model % self.n_head:
            raise WorkbookError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise WorkbookError(f"n_head={self.n_head} is not a multiple of n_kv_head={self.n_kv_head}")
        if self.pos == "rope" and self.head_dim % 2:
            raise WorkbookError(f"RoPE needs an even head_dim, got {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------- positions
def sinusoidal_table(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """The 2017 table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    angles = positions.float()[:, None] * inv_freq[None, :]
    table = torch.zeros(len(positions), dim, device=positions.device)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return table


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """cos/sin for rotate-half RoPE (the Llama/HF layout): dims i and i + head_dim/2 form a pair."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (i, i + d/2) pair of x (..., T, d) by angle position * freq_i."""
    return x * cos.to(x.dtype) + rotate_half(x) * sin.to(x.dtype)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Head h's penalty per token of distance: a geometric sequence starting at 2^(-8/n)
    (Press et al. 2022); for non-powers of two, interleave the next power's slopes."""
    def power_of_2(n):
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_head).is_integer():
        return torch.tensor(power_of_2(n_head))
    closest = 2 ** math.floor(math.log2(n_head))
    return torch.tensor(power_of_2(closest) + power_of_2(2 * closest)[0::2][: n_head - closest])


# ----------------------------------------------------------------------------- KV cache
class KVCache:
    """Keys and values of every layer for the tokens seen so far, preallocated for
    `max_len` tokens: (layers, batch, kv_heads, max_len, head_dim) each for K and V."""

    def __init__(self, cfg: GPTConfig, batch_size: int, max_len: int, device="cpu", dtype=torch.float32):
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.max_len = max_len
        self.pos = 0  # tokens stored so far

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        t = k.shape[2]
        if self.pos + t > self.max_len:
            raise WorkbookError(f"KV cache full: {self.pos}+{t} tokens > max_len={self.max_len}")
        self.k[layer, :, :, self.pos:self.pos + t] = k
        self.v[layer, :, :, self.pos:self.pos + t] = v
        return self.k[layer, :, :, :self.pos + t], self.v[layer, :, :, :self.pos + t]

    def repeat(self, n: int) -> KVCache:
        """Each batch row n times over (row i becomes rows i*n .. i*n+n-1): a prompt prefilled
        once then serves n sampled continuations."""
        self.k, self.v = self.k.repeat_interleave(n, dim=1), self.v.repeat_interleave(n, dim=1)
        return self

    @property
    def nbytes(self) -> int:
        """Bytes of the whole preallocated cache: 2 x layers x batch x kv_heads x max_len x head_dim x dtype."""
        return self.k.nbytes + self.v.nbytes


# ----------------------------------------------------------------------------- layers
def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
    return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        hd = cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_head * hd, bias=cfg.bias)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.bias)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_head * hd, bias=cfg.bias)
        self.o_proj = nn.Linear(cfg.n_head * hd, cfg.d_model, bias=cfg.bias)
        self.record = False        # set True to keep the attention weights of the next forward
        self.weights = None        # (B, heads, T, S) when recorded
        self.flash = None
        if cfg.attn_impl == "flash":
            from shared import stacks

            self.flash = stacks.require("flash-attn")  # raises StackMissing with the install command

    def forward(self, x, rope=None, alibi=None, cache: KVCache | None = None, pos0: int = 0):
        cfg = self.cfg
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=cfg.n_head)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = self.attend(q, k, v, alibi, pos0)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))

    def mask(self, t: int, s: int, pos0: int, device) -> torch.Tensor | None:
        """Boolean (t, s): query at position pos0+i may see key j. None when nothing is hidden."""
        if s == t and pos0 == 0 and self.cfg.window is None:
            return torch.ones(t, s, dtype=torch.bool, device=device).tril()
        qpos = torch.arange(pos0, pos0 + t, device=device)[:, None]
        kpos = torch.arange(s, device=device)[None, :]
        allowed = kpos <= qpos
        if self.cfg.window is not None:
            allowed &= (qpos - kpos) < self.cfg.window
        return allowed

    def attend(self, q, k, v, alibi, pos0):
        cfg = self.cfg
        t, s = q.shape[2], k.shape[2]
        dropout = cfg.dropout if self.training else 0.0
        if self.flash is not None and q.is_cuda and not self.record and pos0 == 0 and s == t:
            dt = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
            window = (-1, -1) if cfg.window is None else (cfg.window - 1, 0)
            y = self.flash.flash_attn_func(*(rearrange(z, "b h t d -> b t h d").to(dt) for z in (q, k, v)),
                                           dropout_p=dropout, causal=True, window_size=window,
                                           alibi_slopes=None if alibi is None else alibi[0].float())
            return rearrange(y, "b t h d -> b h t d").to(q.dtype)
        bias = None
        if alibi is not None:  # -slope * distance, added to the scores
            slopes, qpos, kpos = alibi
            bias = -slopes[:, None, None] * (qpos[:, None] - kpos[None, :]).clamp(min=0)
        if cfg.attn_impl == "explicit" or self.record:
            return self._explicit(q, k, v, self.mask(t, s, pos0, q.device), bias, dropout)
        # SDPA: the fused kernels; is_causal is its fastest path when no extra mask is needed
        causal_only = bias is None and cfg.window is None and pos0 == 0 and s == t
        if causal_only:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout,
                                                  enable_gqa=cfg.n_kv_head != cfg.n_head)
        m = self.mask(t, s, pos0, q.device)
        attn_mask = torch.zeros(t, s, device=q.device, dtype=q.dtype).masked_fill(~m, float("-inf"))
        if bias is not None:
            attn_mask = attn_mask + bias.to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout,
                                              enable_gqa=cfg.n_kv_head != cfg.n_head)

    def _explicit(self, q, k, v, mask, bias, dropout):
        """softmax(QK^T / sqrt(d) + bias, masked) V, written out (and recordable)."""
        group = self.cfg.n_head // self.cfg.n_kv_head
        if group > 1:  # each K/V head serves `group` consecutive query heads
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if bias is not None:
            scores = scores + bias
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.softmax(dim=-1)
        if self.record:
            self.weights = weights.detach()
        if dropout:
            weights = F.dropout(weights, dropout)
        return weights @ v


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.activation = cfg.activation
        if cfg.activation == "swiglu":
            self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * self.up_proj(x)
        elif self.activation == "gelu_tanh":
            h = F.gelu(self.up_proj(x), approximate="tanh")
        else:
            h = {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[self.activation](self.up_proj(x))
        return self.dropout(self.down_proj(h))


class MoE(nn.Module):
    """Top-k mixture of experts: a router scores the experts per token, the k best run,
    their outputs are mixed by the renormalised router probabilities. `aux_loss` is the
    Switch Transformer load-balancing term, E * sum_e f_e * P_e (1.0 when perfectly balanced)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.top_k = cfg.expert_top_k
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.aux_loss = torch.tensor(0.0)
        self.last_choice = None  # (tokens, k) expert ids of the last forward, for analysis

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        probs = self.router(flat).softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        top_p = top_p / top_p.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (top_i == e).nonzero(as_tuple=True)
            if len(rows):
                out.index_add_(0, rows, expert(flat[rows]) * top_p[rows, slot, None])
        n_exp = len(self.experts)
        frac = torch.zeros(n_exp, device=x.device).scatter_add_(0, top_i.flatten(), torch.ones(top_i.numel(), device=x.device))
        self.aux_loss = n_exp * (frac / top_i.numel() * probs.mean(dim=0)).sum()
        self.last_choice = top_i.detach()
        return out.reshape(shape)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer_idx: int):
        super().__init__()
        self.post_norm = cfg.norm_position == "post"
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, layer_idx)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MoE(cfg) if cfg.n_experts else MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, **attn_kwargs):
        if self.post_norm:
            x = self.attn_norm(x + self.resid_dropout(self.attn(x, **attn_kwargs)))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.resid_dropout(self.attn(self.attn_norm(x), **attn_kwargs))
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- the model
class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.pos == "learned":
            self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        # post-norm blocks end in a norm already; pre-norm needs one before the head
        self.norm_f = make_norm(cfg) if cfg.norm_position == "pre" else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        if cfg.pos == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2L)
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    # -- bookkeeping -------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.tok_emb.weight.numel() + (self.pos_emb.weight.numel() if self.cfg.pos == "learned" else 0)
            if not self.cfg.tie_embeddings:
                n -= self.lm_head.weight.numel()
        return n

    def matmul_params(self) -> int:
        """Weights that take part in a matmul per token (embedding lookups don't; of the
        experts only top_k of n_experts run)."""
        n = 0
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                w = m.weight.numel()
                if ".experts." in name:
                    w = w * self.cfg.expert_top_k / self.cfg.n_experts
                n += w
        return int(n)

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·d·T."""
        c = self.cfg
        return 6 * self.matmul_params() + 12 * c.n_layer * c.n_head * c.head_dim * seq_len

    # -- forward -----------------------------------------------------------------
    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None):
        b, t = idx.shape
        pos0 = cache.pos if cache is not None else 0
        positions = torch.arange(pos0, pos0 + t, device=idx.device)
        x = self.tok_emb(idx)
        if self.cfg.pos == "learned":
            if pos0 + t > self.cfg.block_size:
                raise WorkbookError(f"sequence of {pos0 + t} tokens is longer than the learned position table "
                                    f"(block_size={self.cfg.block_size}); use a shorter input or pos='rope'/'alibi'")
            x = x + self.pos_emb(positions)
        elif self.cfg.pos == "sinusoidal":
            x = x + sinusoidal_table(positions, self.cfg.d_model).to(x.dtype)
        x = self.drop(x)
        kw = {"cache": cache, "pos0": pos0}
        if self.cfg.pos == "rope":
            kw["rope"] = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta)
        elif self.cfg.pos == "alibi":
            kw["alibi"] = (self.alibi_slopes, positions, torch.arange(pos0 + t, device=idx.device))
        for block in self.blocks:
            x = block(x, **kw)
        if cache is not None:
            cache.pos += t
        logits = self.lm_head(self.norm_f(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
        if self.cfg.n_experts:
            loss = loss + self.cfg.moe_aux_weight * self.aux_loss()
        return logits, loss

    def aux_loss(self) -> torch.Tensor:
        return sum(b.mlp.aux_loss for b in self.blocks if hasattr(b.mlp, "aux_loss"))  # any MoE-like mlp

    # -- generation --------------------------------------------------------------
    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, use_cache: bool = True, generator: torch.Generator | None = None,
                 stop_token: int | None = None, num_samples: int = 1) -> torch.Tensor:
        """Autoregressive sampling. With `use_cache` each step feeds one token and reuses the
        stored keys/values; without it each step re-runs the whole (cropped) sequence.
        `num_samples` continuations of each prompt row (rows i*n .. i*n+n-1 of the output belong
        to prompt i); with the cache the prompt is run once and its keys/values copied n times."""
        was_training = self.training
        self.eval()
        limit = self.cfg.block_size if self.cfg.pos == "learned" else None
        cache = None
        if use_cache:
            total = idx.shape[1] + max_new_tokens
            if limit is not None and total > limit:
                raise WorkbookError(f"prompt+new tokens = {total} exceeds block_size={limit} of a learned-position model")
            p = next(self.parameters())
            cache = KVCache(self.cfg, idx.shape[0], total, device=idx.device, dtype=p.dtype)
            logits = self(idx, cache=cache)[:, -1]
            if num_samples > 1:
                cache.repeat(num_samples)
                logits = logits.repeat_interleave(num_samples, dim=0)
        idx = idx.repeat_interleave(num_samples, dim=0) if num_samples > 1 else idx
        for i in range(max_new_tokens):
            if not use_cache:
                context = idx if limit is None else idx[:, -limit:]
                logits = self(context)[:, -1]
            nxt = sample_logits(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, nxt], dim=1)
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
            if use_cache and i < max_new_tokens - 1:
                logits = self(nxt, cache=cache)[:, -1]
        self.train(was_training)
        return idx


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row from (B, vocab) logits. temperature 0 means greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cum - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest prefix reaching top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def attention_weights(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Every layer's attention weights for one sequence: (layers, heads, T, T), rows summing to 1.

    Runs one forward with each block's written-out softmax(QK^T/sqrt(d))V path recording its
    weights (the fused kernels never materialise them), then switches recording off again, so
    the model is left exactly as it was."""
    if idx.dim() == 1:
        idx = idx[None]
    if idx.shape[0] != 1:
        raise ValueError(f"attention_weights takes one sequence, got a batch of {idx.shape[0]}")
    was_training = model.training
    model.eval()
    try:
        for block in model.blocks:
            block.attn.record = True
        model(idx)
        return torch.stack([block.attn.weights[0] for block in model.blocks]).float().cpu()
    finally:
        for block in model.blocks:
            block.attn.record, block.attn.weights = False, None
        model.train(was_training)
