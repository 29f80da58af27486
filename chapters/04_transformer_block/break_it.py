"""Break the block one part at a time and measure what the part was worth.

    BREAKS                                   # (name, what it does, Breaks(...)) for the trained model
    noise_sweep(model, tok, stories, ...)    # Q, K, V each drowned in more and more noise
    qkv_spread(model, idx)                   # how much of Q, K, V is one mean vector every token shares
    SCRATCH                                  # the breaks a model must *learn* with, from step 0

Two different questions: an inference-time break asks what the trained weights rely on; a break
present from the first step asks whether the network can learn without the part at all (swap Q and
K from scratch, and W_q and W_k simply learn each other's job).
"""
from __future__ import annotations

import torch

from miniformer import Breaks
from shared.evaluate import story_loss

# Every break measured on the trained model: (name, what it does, the switches).
BREAKS = [
    ("intact", "nothing broken", Breaks()),
    ("swap Q<->K", "queries play keys and keys play queries", Breaks(swap_qk=True)),
    ("noise Q", "Q + N(0, std(Q)^2)", Breaks(noise_q=1.0)),
    ("noise K", "K + N(0, std(K)^2)", Breaks(noise_k=1.0)),
    ("noise V", "V + N(0, std(V)^2)", Breaks(noise_v=1.0)),
    ("Q = x", "query = the normed input (W_q = I)", Breaks(q="identity")),
    ("K = x", "key = the normed input (W_k = I)", Breaks(k="identity")),
    ("V = x", "value = the normed input (W_v = I)", Breaks(v="identity")),
    ("Q = 0", "all scores 0: uniform attention over the past", Breaks(q="zeros")),
    ("K = 0", "all scores 0: uniform attention over the past", Breaks(k="zeros")),
    ("V = 0", "attention outputs nothing", Breaks(v="zeros")),
    ("no residual", "x = f(norm(x)) instead of x + f(norm(x))", Breaks(residual=False)),
    ("no LayerNorm", "every LayerNorm passes x through", Breaks(layernorm=False)),
]

# Trained from scratch with the break in place: can the network learn without the part?
SCRATCH = [("intact", Breaks()), ("swap Q<->K", Breaks(swap_qk=True)), ("Q = 0", Breaks(q="zeros")),
           ("V = 0", Breaks(v="zeros")), ("no residual", Breaks(residual=False)),
           ("no LayerNorm", Breaks(layernorm=False))]


@torch.no_grad()
def noise_sweep(model, tok, stories, device, levels, noise_of: str = "whole", seed: int = 0) -> list[dict]:
    """Story loss with noise of each size on one of Q, K, V (every block), the others intact."""
    rows = []
    for which in ("q", "k", "v"):
        for level in levels:
            model.set_breaks(Breaks(**{f"noise_{which}": level, "noise_of": noise_of}), noise_seed=seed)
            rows.append({"tensor": which.upper(), "noise": level, "noise_of": noise_of,
                         "story_loss": story_loss(model, tok, stories, device)["model_nats_per_char"]})
    model.set_breaks(Breaks())
    return rows


@torch.no_grad()
def qkv_spread(model, idx: torch.Tensor) -> list[dict]:
    """Per block and tensor: the whole tensor's std, the std of what varies from token to token
    (around each feature's mean), and the share of the tensor's energy in its mean vector.

    Adding one vector c to every key changes every score q.k_j by the same q.c, which the softmax
    ignores; so a trained model is free to carry a large mean in K at no cost. Adding c to every
    query changes q.k_j by c.k_j, different for every key: Q has no such free direction."""
    rows = []
    streams = model.residual_stream(idx)
    for layer, block in enumerate(model.blocks):
        a = block.attn_norm(streams[layer])
        for name, proj in (("Q", block.attn.q_proj), ("K", block.attn.k_proj), ("V", block.attn.v_proj)):
            z = proj(a).reshape(-1, a.shape[-1])
            mean = z.mean(dim=0)
            rows.append({"layer": layer, "tensor": name, "std_whole": float(z.std()),
                         "std_varying": float(z.var(dim=0).mean().sqrt()),
                         "mean_energy_share": float(mean.pow(2).sum() / z.pow(2).sum(dim=1).mean())})
    return rows
