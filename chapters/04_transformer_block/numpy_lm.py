"""04b · A transformer language model in NumPy alone: every forward and backward by hand.

    cfg = NumpyLMConfig(vocab_size=40, tie_weights=True)     # the head reuses the token embedding
    params = init_params(cfg, np.random.default_rng(0))
    loss, grads = loss_and_grads(params, cfg, x, y)          # x, y: (B, T) int arrays

    add_lora(params, cfg, rng)                                # low-rank A, B on q/k/v/o
    loss, grads = loss_and_grads(params, cfg, x, y, trainable=lora_names(params))  # the base stays frozen

Training (AdamW, warm-up + cosine, clipping, sampling, save/load) is in numpy_train.py.

Each layer is a pair of functions: `*_forward(...) -> (out, cache)` keeps what the
backward pass will need; `*_backward(dout, cache) -> grads` applies the chain rule to
it. Weights use PyTorch's layout (a Linear's W is (out, in), y = x W^T + b), so a PyTorch
twin with the same numbers is one `torch.tensor(...)` away; the tests check every
gradient against autograd in float64.

No torch import anywhere in this file: NumPy only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class NumpyLMConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    lora_rank: int = 4
    lora_alpha: float = 8.0     # LoRA output is scaled by alpha / rank
    dtype: str = "float64"
    eps: float = 1e-5           # LayerNorm
    tie_weights: bool = False   # True: the output head is the token embedding (logits = x E^T), one matrix fewer

    @property
    def d_ff(self) -> int:
        return 4 * self.d_model

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head


PROJECTIONS = ("q", "k", "v", "o")


# ----------------------------------------------------------------------------- parameters
def init_params(cfg: NumpyLMConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """GPT-2 style: N(0, 0.02) matrices, residual projections scaled by 1/sqrt(2L), zero
    biases, unit LayerNorm gains."""
    if cfg.d_model % cfg.n_head:
        raise ValueError(f"d_model={cfg.d_model} is not divisible by n_head={cfg.n_head}")
    dt = np.dtype(cfg.dtype)
    d, f = cfg.d_model, cfg.d_ff

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(dt)

    p = {"tok_emb": normal(cfg.vocab_size, d), "pos_emb": normal(cfg.block_size, d)}
    resid_std = 0.02 / math.sqrt(2 * cfg.n_layer)
    for i in range(cfg.n_layer):
        h = f"h{i}."
        p[h + "ln1.g"], p[h + "ln1.b"] = np.ones(d, dt), np.zeros(d, dt)
        for name in PROJECTIONS:
            p[h + f"attn.{name}.w"] = normal(d, d, std=resid_std if name == "o" else 0.02)
            p[h + f"attn.{name}.b"] = np.zeros(d, dt)
        p[h + "ln2.g"], p[h + "ln2.b"] = np.ones(d, dt), np.zeros(d, dt)
        p[h + "mlp.up.w"], p[h + "mlp.up.b"] = normal(f, d), np.zeros(f, dt)
        p[h + "mlp.down.w"], p[h + "mlp.down.b"] = normal(d, f, std=resid_std), np.zeros(d, dt)
    p["ln_f.g"], p["ln_f.b"] = np.ones(d, dt), np.zeros(d, dt)
    if not cfg.tie_weights:
        p["head.w"] = normal(cfg.vocab_size, d)
    return p


def parameter_count(cfg: NumpyLMConfig) -> int:
    """What init_params allocates, counted without allocating (so d = 4096 costs nothing)."""
    d, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    per_layer = 4 * d + 4 * (d * d + d) + (f * d + f) + (d * f + d)   # 2 norms, q/k/v/o, up, down
    head = 0 if cfg.tie_weights else v * d
    return v * d + cfg.block_size * d + cfg.n_layer * per_layer + 2 * d + head


def lora_parameter_count(cfg: NumpyLMConfig) -> int:
    """A (r x d) and B (d x r) on each of the four attention projections of every layer."""
    return cfg.n_layer * len(PROJECTIONS) * 2 * cfg.lora_rank * cfg.d_model


def add_lora(params: dict, cfg: NumpyLMConfig, rng: np.random.Generator, b_std: float = 0.0) -> dict:
    """Attach A (rank x in) and B (out x rank) to every attention projection. B starts at
    zero (b_std=0), so the adapted model starts exactly where the base model is."""
    dt, r, d = np.dtype(cfg.dtype), cfg.lora_rank, cfg.d_model
    for i in range(cfg.n_layer):
        for name in PROJECTIONS:
            key = f"h{i}.attn.{name}"
            params[key + ".lora_A"] = (rng.standard_normal((r, d)) / math.sqrt(d)).astype(dt)
            params[key + ".lora_B"] = (rng.standard_normal((d, r)) * b_std).astype(dt)
    return params


def lora_names(params: dict) -> list[str]:
    return [k for k in params if k.endswith((".lora_A", ".lora_B"))]


def merge_lora(params: dict, cfg: NumpyLMConfig) -> dict:
    """W + (alpha/r) B A folded into each base weight: the deployable model, no adapters."""
    merged = {k: v.copy() for k, v in params.items() if not k.endswith((".lora_A", ".lora_B"))}
    scale = cfg.lora_alpha / cfg.lora_rank
    for k in lora_names(params):
        if k.endswith(".lora_A"):
            base = k[: -len(".lora_A")]
            merged[base + ".w"] += scale * params[base + ".lora_B"] @ params[k]
    return merged


def num_params(params: dict, names=None) -> int:
    return int(sum(params[k].size for k in (names if names is not None else params)))


# ----------------------------------------------------------------------------- layers
def embedding_forward(ids, table):
    return table[ids], (ids, table.shape)


def embedding_backward(dout, cache):
    ids, shape = cache
    dtable = np.zeros(shape, dtype=dout.dtype)
    np.add.at(dtable, ids, dout)  # a row used twice gets both gradients (plain indexing would keep one)
    return dtable


def linear_forward(x, w, b, lora=None, scale=1.0):
    """y = x W^T + b (+ scale * (x A^T) B^T when `lora` = (A, B))."""
    y = x @ w.T + b
    xa = None
    if lora is not None:
        a, bb = lora
        xa = x @ a.T
        y = y + scale * (xa @ bb.T)
    return y, (x, w, lora, xa, scale)


def linear_backward(dout, cache, need_weight_grads: bool = True):
    """Returns dx and a dict with w, b (and A, B) gradients. Frozen weights skip theirs."""
    x, w, lora, xa, scale = cache
    x2, d2 = x.reshape(-1, x.shape[-1]), dout.reshape(-1, dout.shape[-1])
    dx = dout @ w
    grads = {}
    if need_weight_grads:
        grads["w"], grads["b"] = d2.T @ x2, d2.sum(axis=0)
    if lora is not None:
        a, bb = lora
        dxa = scale * (dout @ bb)                           # gradient reaching x A^T
        grads["lora_B"] = scale * d2.T @ xa.reshape(-1, xa.shape[-1])
        grads["lora_A"] = dxa.reshape(-1, dxa.shape[-1]).T @ x2
        dx = dx + dxa @ a
    return dx, grads


def layernorm_forward(x, g, b, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(x.var(axis=-1, keepdims=True) + eps)
    xhat = (x - mu) * rstd
    return xhat * g + b, (xhat, rstd, g)


def layernorm_backward(dout, cache):
    xhat, rstd, g = cache
    dg = (dout * xhat).reshape(-1, xhat.shape[-1]).sum(axis=0)
    db = dout.reshape(-1, dout.shape[-1]).sum(axis=0)
    dxhat = dout * g
    # xhat depends on x through the mean and the variance too: subtract those two paths
    dx = rstd * (dxhat - dxhat.mean(axis=-1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))
    return dx, dg, db


_GELU_C = math.sqrt(2.0 / math.pi)


def gelu_forward(x):
    """GPT-2's tanh GELU (NumPy has no erf): 0.5 x (1 + tanh(c (x + 0.044715 x^3)))."""
    t = np.tanh(_GELU_C * (x + 0.044715 * x * x * x))  # x*x*x: cheaper than a power
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_backward(dout, cache):
    x, t = cache
    dt_dx = (1.0 - t * t) * _GELU_C * (1.0 + 3 * 0.044715 * x * x)
    return dout * (0.5 * (1.0 + t) + 0.5 * x * dt_dx)


def softmax(z, axis=-1):
    z = z - z.max(axis=axis, keepdims=True)  # same result, no overflow
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def split_heads(x, n_head):     # (B, T, H*D) -> (B, H, T, D)
    b, t, c = x.shape
    return x.reshape(b, t, n_head, c // n_head).transpose(0, 2, 1, 3)


def merge_heads(x):             # (B, H, T, D) -> (B, T, H*D)
    b, h, t, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * d)


def attention_core_forward(q, k, v):
    """Causal softmax(q k^T / sqrt(d)) v on (B, H, T, D) tensors."""
    t, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale
    future = np.triu(np.ones((t, t), dtype=bool), k=1)
    scores = np.where(future, -np.inf, scores)
    probs = softmax(scores)
    return probs @ v, (q, k, v, probs, scale)


def attention_core_backward(dout, cache):
    q, k, v, probs, scale = cache
    dv = probs.transpose(0, 1, 3, 2) @ dout
    dprobs = dout @ v.transpose(0, 1, 3, 2)
    # softmax backward, row by row: dS = P * (dP - sum_j dP_j P_j); masked entries have P = 0
    dscores = probs * (dprobs - (dprobs * probs).sum(axis=-1, keepdims=True)) * scale
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    return dq, dk, dv


def attention_forward(x, p, prefix, cfg):
    """Multi-head causal self-attention with (optional) LoRA on q, k, v, o."""
    scale = cfg.lora_alpha / cfg.lora_rank if cfg.lora_rank else 1.0
    caches, heads = {}, {}
    for name in ("q", "k", "v"):
        y, caches[name] = linear_forward(x, p[f"{prefix}{name}.w"], p[f"{prefix}{name}.b"], _lora(p, prefix + name),
                                         scale)
        heads[name] = split_heads(y, cfg.n_head)
    y, caches["core"] = attention_core_forward(heads["q"], heads["k"], heads["v"])
    out, caches["o"] = linear_forward(merge_heads(y), p[prefix + "o.w"], p[prefix + "o.b"], _lora(p, prefix + "o"),
                                      scale)
    return out, caches


def attention_backward(dout, caches, prefix, cfg, trainable=None):
    grads = {}
    dy, g = linear_backward(dout, caches["o"], _wants(trainable, prefix + "o"))
    grads.update({f"{prefix}o.{k}": v for k, v in g.items()})
    dq, dk, dv = attention_core_backward(split_heads(dy, cfg.n_head), caches["core"])
    dx = 0.0
    for name, dh in (("q", dq), ("k", dk), ("v", dv)):
        d_in, g = linear_backward(merge_heads(dh), caches[name], _wants(trainable, prefix + name))
        grads.update({f"{prefix}{name}.{k}": v for k, v in g.items()})
        dx = dx + d_in  # x fed all three projections: their gradients add up
    return dx, grads


def _lora(p, key):
    return (p[key + ".lora_A"], p[key + ".lora_B"]) if key + ".lora_A" in p else None


def _wants(trainable, key):
    return trainable is None or key + ".w" in trainable


def log_softmax(z, axis=-1):
    """z - logsumexp(z), computed without ever forming a probability: log(softmax(z)) underflows
    to log(0) = -inf once a logit trails the max by ~100 (float32) or ~750 (float64)."""
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def cross_entropy_forward(logits, targets):
    """Mean -log softmax(logits)[target] over all positions, via log-sum-exp (finite for any
    finite logits, however large)."""
    logp = log_softmax(logits)
    n = targets.size
    picked = logp.reshape(-1, logp.shape[-1])[np.arange(n), targets.reshape(-1)]
    return float(-picked.mean()), (np.exp(logp), targets)


def cross_entropy_backward(cache):
    probs, targets = cache
    dlogits = probs.copy()
    flat = dlogits.reshape(-1, dlogits.shape[-1])
    flat[np.arange(targets.size), targets.reshape(-1)] -= 1.0  # softmax - one_hot
    return dlogits / targets.size


# ----------------------------------------------------------------------------- the model
def forward(params, cfg, ids):
    """Logits (B, T, vocab) and everything backward() needs."""
    t = ids.shape[1]
    if t > cfg.block_size:
        raise ValueError(f"sequence of {t} tokens is longer than block_size={cfg.block_size}")
    tok, c_tok = embedding_forward(ids, params["tok_emb"])
    x = tok + params["pos_emb"][:t]
    caches = {"tok": c_tok, "t": t, "layers": []}
    for i in range(cfg.n_layer):
        h, lc = f"h{i}.", {}
        a_in, lc["ln1"] = layernorm_forward(x, params[h + "ln1.g"], params[h + "ln1.b"], cfg.eps)
        a, lc["attn"] = attention_forward(a_in, params, h + "attn.", cfg)
        x = x + a                                   # residual
        m_in, lc["ln2"] = layernorm_forward(x, params[h + "ln2.g"], params[h + "ln2.b"], cfg.eps)
        u, lc["up"] = linear_forward(m_in, params[h + "mlp.up.w"], params[h + "mlp.up.b"])
        u, lc["gelu"] = gelu_forward(u)
        m, lc["down"] = linear_forward(u, params[h + "mlp.down.w"], params[h + "mlp.down.b"])
        x = x + m                                   # residual
        caches["layers"].append(lc)
    xf, caches["ln_f"] = layernorm_forward(x, params["ln_f.g"], params["ln_f.b"], cfg.eps)
    logits, caches["head"] = linear_forward(xf, head_weight(params, cfg), 0.0)
    return logits, caches


def head_weight(params, cfg):
    """The output matrix: its own, or (tied) the token embedding read backwards."""
    return params["tok_emb"] if cfg.tie_weights else params["head.w"]


def backward(dlogits, caches, params, cfg, trainable=None):
    """Gradients of the loss for every parameter (only `trainable` ones when given; the
    backward pass still has to travel through frozen layers to reach the adapters)."""
    grads = {}
    want = (lambda k: True) if trainable is None else (lambda k: k in trainable)
    head = "tok_emb" if cfg.tie_weights else "head.w"
    dxf, g = linear_backward(dlogits, caches["head"], want(head))
    head_grad = g.get("w")
    dx, grads["ln_f.g"], grads["ln_f.b"] = layernorm_backward(dxf, caches["ln_f"])
    for i in reversed(range(cfg.n_layer)):
        h, lc = f"h{i}.", caches["layers"][i]
        du, g = linear_backward(dx, lc["down"], want(h + "mlp.down.w"))   # dx flows on through the residual...
        grads.update({h + "mlp.down." + k: v for k, v in g.items()})
        du = gelu_backward(du, lc["gelu"])
        dm_in, g = linear_backward(du, lc["up"], want(h + "mlp.up.w"))
        grads.update({h + "mlp.up." + k: v for k, v in g.items()})
        d_ln, grads[h + "ln2.g"], grads[h + "ln2.b"] = layernorm_backward(dm_in, lc["ln2"])
        dx = dx + d_ln                                                    # ...and gains the branch's gradient
        da_in, g = attention_backward(dx, lc["attn"], h + "attn.", cfg, trainable)
        grads.update(g)
        d_ln, grads[h + "ln1.g"], grads[h + "ln1.b"] = layernorm_backward(da_in, lc["ln1"])
        dx = dx + d_ln
    grads["pos_emb"] = np.zeros_like(params["pos_emb"])
    grads["pos_emb"][: caches["t"]] = dx.sum(axis=0)
    grads["tok_emb"] = embedding_backward(dx, caches["tok"])
    if head_grad is not None:   # tied: the one matrix gets the gradient of both of its uses
        grads[head] = grads[head] + head_grad if cfg.tie_weights else head_grad
    return grads if trainable is None else {k: v for k, v in grads.items() if k in trainable}


def loss_and_grads(params, cfg, x, y, trainable=None):
    logits, caches = forward(params, cfg, x)
    loss, ce = cross_entropy_forward(logits, y)
    return loss, backward(cross_entropy_backward(ce), caches, params, cfg, trainable)


def loss_only(params, cfg, x, y) -> float:
    return cross_entropy_forward(forward(params, cfg, x)[0], y)[0]
