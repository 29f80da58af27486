"""Train short, test long: the measurements behind the chapter's question, "what happens past
the length a model was trained on?"

    build_model                   a shared GPT with one positional scheme (or the sinusoidal table
                                  at the token embeddings' scale, "sinusoidal_small")
    loss_by_position              cross-entropy at every position of long windows
    attention_entropy_by_position how spread out attention is at every query position
    bands                         mean loss inside / beyond the training length
    similarity_vs_distance        what position alone tells a query about a key Δ tokens away

Training itself is `shared.train.train`; `main.py` runs it once per scheme on the same data.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange

import positions as P
from position_checks import SCHEMES
from shared.model import GPT, GPTConfig, attention_weights

# The shared model adds the sinusoidal table at its natural amplitude (rms 1/sqrt(2) ~ 0.71) to
# token embeddings initialised at std 0.02: position is ~35x louder than token identity.
# "sinusoidal_small" is the same fixed formula scaled to rms 0.02, the token embeddings' own
# init scale (the 2017 paper fixes the same mismatch by multiplying the embeddings by sqrt(d)).
VARIANTS = SCHEMES + ("sinusoidal_small",)
SMALL_RMS = 0.02


def build_model(scheme: str, vocab_size: int, train_len: int, eval_len: int, n_layer: int, n_head: int,
                d_model: int) -> GPT:
    """A GPT trained at `train_len` with `scheme` (one of VARIANTS)."""
    pos = "learned" if scheme == "sinusoidal_small" else scheme
    cfg = GPTConfig(vocab_size=vocab_size, block_size=train_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                    pos=pos)
    if scheme != "sinusoidal_small":
        return GPT(cfg)
    # a learned-position model whose table is the sinusoidal one at rms SMALL_RMS, frozen: rows exist up
    # to eval_len because the formula defines them, but training only ever sees rows 0..train_len-1
    cfg.block_size = eval_len
    m = GPT(cfg)
    with torch.no_grad():
        table = P.sinusoidal(eval_len, d_model)
        m.pos_emb.weight.copy_(table * SMALL_RMS / table.pow(2).mean().sqrt())
    m.pos_emb.weight.requires_grad_(False)  # fixed, like the real sinusoidal scheme
    return m


@torch.no_grad()
def loss_by_position(model: GPT, x: torch.Tensor, y: torch.Tensor, batch: int = 32) -> list[float]:
    """Cross-entropy (nats) at every position, averaged over the windows x, y (N, T): T numbers."""
    model.eval()
    total = torch.zeros(x.shape[1])
    for i in range(0, len(x), batch):
        logits = model(x[i:i + batch]).float()
        nll = F.cross_entropy(rearrange(logits, "b t v -> b v t"), y[i:i + batch], reduction="none")
        total += nll.sum(0).cpu()
    return (total / len(x)).tolist()


@torch.no_grad()
def attention_entropy_by_position(model: GPT, x: torch.Tensor) -> list[float]:
    """Entropy (nats) of each query's attention distribution, averaged over layers, heads and the
    windows x (N, T). Sharp, local attention is low; attention smeared evenly over everything
    visible is ln(position + 1)."""
    per_window = []
    for window in x:
        w = attention_weights(model, window[None])                        # (layers, heads, T, T)
        per_window.append(-(w * w.clamp_min(1e-12).log()).sum(-1).mean(dim=(0, 1)))
    return torch.stack(per_window).mean(0).tolist()


def bands(loss: list[float], train_len: int, eval_len: int) -> dict:
    """Mean loss over position ranges: in range (0..train_len-1), beyond it, and whole windows."""
    t = torch.tensor(loss)
    out = {"in_range": t[:train_len].mean().item()}
    if len(t) > train_len:
        out["beyond"] = t[train_len:].mean().item()
        for length in (2 * train_len, eval_len):
            if length <= len(t):
                out[f"whole_{length}"] = t[:length].mean().item()
    return out


def similarity_vs_distance(n: int, d_model: int, n_head: int, learned_table: torch.Tensor | None) -> dict:
    """How much a query at position p 'likes' a key Δ tokens away, from position information alone,
    for Δ = 0 .. n-1: sinusoidal PE(p)·PE(p+Δ) (normalised, averaged over p), RoPE's q·(R_Δ q) for
    random unit q, the learned table's row cosine, and ALiBi's slopes (its bias is -m·Δ)."""
    d = torch.arange(n)
    pe = P.sinusoidal(2 * n, d_model)
    sin_sim = torch.stack([(pe[:n] * pe[k:k + n]).sum(-1).mean() for k in range(n)]) / (d_model / 2)
    head_dim = d_model // n_head
    q = F.normalize(torch.randn(512, head_dim, generator=torch.Generator().manual_seed(4)), dim=-1)
    rot = P.rope(q[:, None, :].expand(512, n, head_dim), d)          # the same q placed at positions 0..n-1
    rope_sim = (rot[:, :1] * rot).sum(-1).mean(0)                    # q at 0 vs q at Δ (only Δ matters)
    out = {"distance": d.tolist(), "sinusoidal": sin_sim.tolist(), "rope": rope_sim.tolist(),
           "alibi_slopes": P.alibi_slopes(n_head).tolist()}
    if learned_table is not None:
        t = F.normalize(learned_table.float(), dim=-1)
        rows = len(t)
        out["learned"] = [(t[:rows - k] * t[k:]).sum(-1).mean().item() for k in range(rows)]
    return out
