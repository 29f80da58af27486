"""The KV cache, by hand.

A decoder predicts token n+1 from tokens 0..n. Its only cross-token step is attention, and
attention needs, from every earlier token, just two vectors per layer: its key and its value.
Those never change once computed (a token's K and V depend only on the tokens before it), so
a generator can keep them and, per new token, compute ONE new row of K and V per layer instead
of re-running the whole prefix.

This file writes that out on top of the weights of a `shared.model.GPT` (Llama-style: RoPE,
pre-norm), so every line of the cache logic is visible:

    FullCache     every row ever computed, preallocated, one row appended per step
                  (quantized_kvcache.QuantizedCache stores the same rows in 8 or 4 bits)
    RollingCache  a fixed ring of W rows for a sliding-window model (Mistral's rolling buffer);
                  with n_sink > 0 the first rows are pinned (StreamingLLM's attention sinks)
    forward       one pass through the model, with or without a cache
    generate_cached / generate_uncached   the two decode loops the chapter races
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig, apply_rope, rope_cos_sin, sample_logits


# ----------------------------------------------------------------------------- the formula
def cache_bytes(n_layer: int, n_kv_head: int, head_dim: int, tokens: int, bytes_per_value: int = 4,
                batch: int = 1) -> int:
    """K and V (the 2), for every layer, every K/V head, every token: the whole memory story."""
    return 2 * n_layer * n_kv_head * head_dim * tokens * bytes_per_value * batch


# ----------------------------------------------------------------------------- the caches
class FullCache:
    """Keys and values of every token so far, per layer: (B, kv_heads, max_len, head_dim),
    preallocated so that 'append' is a write into the next free row (no reallocation)."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device="cpu", dtype=torch.float32):
        shape = (batch, cfg.n_kv_head, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.window = cfg.window   # a sliding-window model still masks; it just stores too much
        self.max_len = max_len
        self.length = 0            # tokens stored so far (rows filled)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Append this step's rows; return every stored key/value and the mask for the new queries."""
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise WorkbookError(f"cache full: {self.length}+{t} tokens > max_len={self.max_len}")
        end = self.length + t
        self.write(layer, slice(self.length, end), k, v)
        keys, values = self.read(layer, end)
        if t == 1 and self.window is None:   # one newest query sees every stored key: nothing to mask
            return keys, values, None
        queries = torch.arange(self.length, end, device=k.device)
        return keys, values, visible(queries, torch.arange(end, device=k.device), self.window)

    def write(self, layer: int, rows: slice, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store this step's rows (a quantized cache overrides this and `read`)."""
        self.k[layer][:, :, rows] = k
        self.v[layer][:, :, rows] = v

    def read(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every stored key and value of `layer`, rows 0..end-1 (views: nothing is copied)."""
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, t: int) -> None:
        self.length += t

    def positions(self) -> list[int]:
        """Text position held by each row (for the hit/miss pictures)."""
        return list(range(self.length))

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)


def check_ring(size: int, n_sink: int) -> None:
    """A ring needs at least one rolling row besides its sinks."""
    if not 0 <= n_sink < size:
        raise WorkbookError(f"the rolling cache needs 0 <= sinks < cache size, got sinks={n_sink}, size={size}")


class RollingCache:
    """A fixed-size cache of `size` rows per layer for a model that only looks `size` tokens back.

    Token p goes to row p % size, overwriting the token that just fell out of the window:
    memory stays constant however long the generation runs. With `n_sink` > 0 the first
    `n_sink` rows are pinned to tokens 0..n_sink-1 (attention sinks) and the remaining
    `size - n_sink` rows roll.

    Where do the sinks sit? Keys are stored already rotated by RoPE at their text position.
    StreamingLLM gives positions *inside the cache*: the sinks sit right before the oldest
    rolling row. RoPE rotations add up (R(a) R(b) = R(a+b)), so moving a stored sink key from
    position s to s + shift is one more rotation by `shift`: cheap, and only n_sink rows.
    `sink_positions="text"` skips that and leaves sinks ever further behind (the naive way).
    """

    def __init__(self, cfg: GPTConfig, batch: int, size: int, n_sink: int = 0, sink_positions: str = "cache",
                 device="cpu", dtype=torch.float32):
        check_ring(size, n_sink)
        if sink_positions not in ("cache", "text"):
            raise WorkbookError(f"sink_positions={sink_positions!r}; choose 'cache' or 'text'")
        shape = (batch, cfg.n_kv_head, size, cfg.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layer)]
        self.size, self.n_sink, self.n_recent = size, n_sink, size - n_sink
        self.sink_positions = sink_positions
        self.head_dim, self.rope_theta = cfg.head_dim, cfg.rope_theta
        self.slot_pos = [-1] * size   # text position held by each row (-1: empty)
        self.length = 0

    def slot(self, p: int) -> int:
        """The row token p is written to: sinks keep their own rows, the rest take turns."""
        return p if p < self.n_sink else self.n_sink + (p - self.n_sink) % self.n_recent

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if k.shape[2] != 1:  # a chunk could overwrite rows its own earlier queries still need
            raise WorkbookError("RollingCache takes one token per step; feed the prompt token by token")
        p = self.length
        row = self.slot(p)
        self.k[layer][:, :, row] = k[:, :, 0]
        self.v[layer][:, :, row] = v[:, :, 0]
        filled = min(p + 1, self.size)   # rows fill in order 0, 1, 2, ... until the ring wraps
        keys, values = self.k[layer][:, :, :filled], self.v[layer][:, :, :filled]
        shift = self.sink_shift(p)
        if shift:
            cos, sin = rope_cos_sin(torch.tensor([shift], device=k.device), self.head_dim, self.rope_theta)
            keys = torch.cat([apply_rope(keys[:, :, :self.n_sink], cos, sin), keys[:, :, self.n_sink:]], dim=2)
        return keys, values, None   # no mask: the ring holds exactly what the query may see

    def sink_shift(self, p: int) -> int:
        """How far to move the sinks so they sit just before the oldest rolling row (0 until the ring wraps)."""
        if not self.n_sink or self.sink_positions == "text":
            return 0
        oldest = max(self.n_sink, p - self.n_recent + 1)
        return oldest - self.n_sink

    def advance(self, t: int) -> None:
        self.slot_pos[self.slot(self.length)] = self.length
        self.length += t

    def positions(self) -> list[int]:
        return list(self.slot_pos)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.k + self.v)


def visible(queries: torch.Tensor, keys: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean (t, s): the query at text position queries[i] may see the key at keys[j]."""
    allowed = keys[None, :] <= queries[:, None]
    if window is not None:
        allowed &= (queries[:, None] - keys[None, :]) < window
    return allowed


# ----------------------------------------------------------------------------- the forward pass
def check_model(cfg: GPTConfig) -> None:
    """This hand-written pass covers the Llama shape the chapter uses."""
    if cfg.pos != "rope" or cfg.norm_position != "pre" or cfg.n_experts:
        raise WorkbookError("kvcache.forward handles pre-norm RoPE models without experts "
                            f"(got pos={cfg.pos}, norm_position={cfg.norm_position}, n_experts={cfg.n_experts})")


def attention(block, x: torch.Tensor, layer: int, rope, cache, mask: torch.Tensor | None) -> torch.Tensor:
    """One attention layer. Without a cache, K and V come from x alone; with one, this step's
    rows are stored and attention reads every row the cache holds."""
    attn, cfg = block.attn, block.attn.cfg
    q = rearrange(attn.q_proj(x), "b t (h d) -> b h t d", h=cfg.n_head)
    k = rearrange(attn.k_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    v = rearrange(attn.v_proj(x), "b t (h d) -> b h t d", h=cfg.n_kv_head)
    q, k = apply_rope(q, *rope), apply_rope(k, *rope)   # keys are cached *after* rotation
    if cache is not None:
        k, v, mask = cache.update(layer, k, v)          # the K/V rows of every token so far
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=cfg.n_kv_head != cfg.n_head)
    return attn.o_proj(rearrange(y, "b h t d -> b t (h d)"))


def forward(model: GPT, idx: torch.Tensor, cache=None, last_only: bool = True) -> torch.Tensor:
    """Logits for `idx` (B, T). With a cache, idx holds only the NEW tokens and positions
    continue from cache.length; `last_only` skips the head for positions nobody samples from."""
    cfg = model.cfg
    check_model(cfg)
    t = idx.shape[1]
    pos0 = cache.length if cache is not None else 0
    positions = torch.arange(pos0, pos0 + t, device=idx.device)
    rope = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
    mask = None if cache is not None else visible(positions, positions, cfg.window)
    x = model.tok_emb(idx)
    for layer, block in enumerate(model.blocks):
        x = x + attention(block, block.attn_norm(x), layer, rope, cache, mask)
        x = x + block.mlp(block.mlp_norm(x))
    if cache is not None:
        cache.advance(t)
    if last_only:
        x = x[:, -1:]
    return model.lm_head(model.norm_f(x))


# ----------------------------------------------------------------------------- the decode loops
@dataclass
class Sampling:
    temperature: float = 0.0          # 0: greedy, the setting where cached == uncached is exact
    top_k: int | None = None
    generator: torch.Generator | None = None

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        return sample_logits(logits[:, -1], self.temperature, self.top_k, None, self.generator)


@torch.no_grad()
def generate_uncached(model: GPT, prompt: torch.Tensor, n_new: int, sampling: Sampling | None = None,
                      on_step=None) -> torch.Tensor:
    """Every step re-runs the WHOLE sequence: step i processes prompt + i tokens."""
    sampling, idx = sampling or Sampling(), prompt
    model.eval()
    for i in range(n_new):
        nxt = sampling.pick(forward(model, idx))
        idx = torch.cat([idx, nxt], dim=1)
        if on_step:
            on_step(i)
    return idx


@torch.no_grad()
def generate_cached(model: GPT, prompt: torch.Tensor, n_new: int, cache, sampling: Sampling | None = None,
                    on_step=None, prefill_chunk: bool = True) -> torch.Tensor:
    """Prefill: run the prompt once, storing its K/V. Then every step feeds ONE token, which
    adds one row per layer to the cache and reads the rest."""
    sampling = sampling or Sampling()
    model.eval()
    if prefill_chunk:
        logits = forward(model, prompt, cache)
    else:  # rolling caches take one token at a time
        for j in range(prompt.shape[1]):
            logits = forward(model, prompt[:, j:j + 1], cache)
    idx = prompt
    for i in range(n_new):
        nxt = sampling.pick(logits)
        idx = torch.cat([idx, nxt], dim=1)
        if i < n_new - 1:   # the last token's K/V would only matter for a token we never make
            logits = forward(model, nxt, cache)
        if on_step:
            on_step(i)
    return idx


@torch.no_grad()
def stream_logprobs(model: GPT, ids: torch.Tensor, cache) -> torch.Tensor:
    """Feed a long text (1, T) one token at a time through `cache`; return the log-probability
    of every next token (T-1,). This is how a chatbot 'reads' an endless conversation."""
    model.eval()
    out = []
    for j in range(ids.shape[1] - 1):
        logits = forward(model, ids[:, j:j + 1], cache)[0, -1]
        out.append(logits.float().log_softmax(-1)[ids[0, j + 1]])
    return torch.stack(out)
