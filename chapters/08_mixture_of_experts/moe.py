"""A mixture-of-experts feed-forward layer, written out piece by piece.

    layer = MoELayer(gpt_cfg, MoESettings(capacity_factor=1.25, aux_weight=0.01, z_weight=1e-3))
    y = layer(x)                       # (B, T, d) -> (B, T, d), like the dense MLP it replaces
    layer.aux_loss                     # aux_weight * balance + z_weight * z: add it to the loss

The pieces, each a small function so the tests can check it on numbers worked out by hand:

    route()               router logits -> softmax probabilities -> the k best experts and
                          their probabilities renormalised to sum to 1
    expert_capacity()     how many token slots each expert has in this batch
    capacity_keep_mask()  which (token, choice) pairs fit: first choices queue before second choices
    load_balancing_loss() Switch Transformer: E * sum_e f_e * P_e   (1.0 when perfectly balanced)
    router_z_loss()       ST-MoE: mean over tokens of logsumexp(router logits)^2

Parameter names match `shared.model.MoE` (router, experts.i.up_proj, ...), so the two load
each other's weights and give the same output when capacity is unlimited.

    moe_gpt(cfg, settings)                  every block's MLP is a MoELayer
    moe_gpt(cfg, settings, dense_layers=1)  the hybrid: the first block keeps a dense MLP
                                            (k x expert width: the same work per token)

Left out: expert parallelism (experts on other devices, tokens moved by all-to-all; see
deepspeed_moe.py), grouped GEMMs, and noisy or learned-bias routing.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from shared.errors import WorkbookError
from shared.model import GPT, MLP, GPTConfig


@dataclass
class MoESettings:
    """What the chapter adds on top of GPTConfig's n_experts / expert_top_k."""
    capacity_factor: float | None = None  # None: unlimited, no token is ever dropped
    aux_weight: float = 0.01              # load-balancing loss weight (Switch uses 0.01)
    z_weight: float = 0.0                 # router z-loss weight (ST-MoE uses 0.001)
    renormalise: bool = True              # mix with top-k probs rescaled to sum to 1 (Mixtral) or raw (Switch)

    def __post_init__(self):
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise WorkbookError(f"capacity_factor must be positive (or None for unlimited), got {self.capacity_factor}")
        if self.aux_weight < 0 or self.z_weight < 0:
            raise WorkbookError("aux_weight and z_weight must be >= 0")


# ----------------------------------------------------------------------------- gating
def route(logits: torch.Tensor, k: int, renormalise: bool = True):
    """(N, E) router logits -> probs (N, E), top_p (N, k) mixing weights, top_i (N, k) expert ids.

    Renormalising makes the k mixing weights sum to 1, so the layer's output has the same
    scale whatever k is (Mixtral does this). Switch (k=1) mixes with the raw probability
    instead: renormalised, a lone weight is always 1 and the router would get no gradient
    from the language-model loss."""
    if not 1 <= k <= logits.shape[-1]:
        raise WorkbookError(f"top_k={k} must be between 1 and the number of experts ({logits.shape[-1]})")
    probs = logits.float().softmax(dim=-1)
    top_p, top_i = probs.topk(k, dim=-1)
    return probs, (top_p / top_p.sum(dim=-1, keepdim=True) if renormalise else top_p), top_i


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float | None) -> int:
    """Slots per expert: capacity_factor x the perfectly balanced share, n_tokens * k / E.
    Unlimited capacity is n_tokens (an expert can't receive a token twice)."""
    if capacity_factor is None:
        return n_tokens
    return math.ceil(capacity_factor * n_tokens * k / n_experts)


def capacity_keep_mask(top_i: torch.Tensor, n_experts: int, capacity: int) -> torch.Tensor:
    """(N, k) bool: does this (token, choice) get a slot in its expert?

    Every expert serves its queue first-come first-served, and all first choices queue
    before any second choice (GShard/DeepSpeed order), so a token loses its *second* expert
    before another token loses its first."""
    k = top_i.shape[1]
    order = rearrange(top_i, "n k -> (k n)")                 # choice-major: all 1st picks, then 2nd
    onehot = F.one_hot(order, n_experts)                     # (k*N, E)
    position = (onehot.cumsum(dim=0) - 1) * onehot           # place in the chosen expert's queue
    fits = position.sum(dim=-1) < capacity
    return rearrange(fits, "(k n) -> n k", k=k)


def expert_fractions(top_i: torch.Tensor, n_experts: int) -> torch.Tensor:
    """f_e: the share of the N*k routing decisions that went to expert e (sums to 1)."""
    counts = torch.bincount(top_i.flatten(), minlength=n_experts).float()
    return counts / top_i.numel()


def load_balancing_loss(probs: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """Switch Transformer eq. 4: E * sum_e f_e * P_e, with P_e the mean router probability.

    f_e (a count) has no gradient; P_e carries it, pushing probability away from busy experts.
    Balanced routing (f_e = P_e = 1/E) gives exactly 1; everything on expert e gives E * P_e."""
    n_experts = probs.shape[-1]
    return n_experts * (expert_fractions(top_i, n_experts) * probs.mean(dim=0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE: mean_tokens logsumexp(logits)^2. Keeps router logits small, so the softmax
    (and bf16 round-off inside it) stays well behaved; it does not care which expert wins."""
    return logits.float().logsumexp(dim=-1).pow(2).mean()


# The README's worked example: four tokens, four experts, numbers chosen so the arithmetic shows.
WORKED_LOGITS = [[2.0, 1.0, 0.0, -1.0],     # expert 0 then 1
                 [2.0, 0.0, 1.0, -1.0],     # expert 0 then 2
                 [2.0, 1.5, 0.0, 0.0],      # expert 0 then 1: but expert 0 is full by now
                 [0.0, 0.5, 1.0, 3.0]]      # expert 3 then 2


def worked_example(k: int = 2, capacity_factor: float = 1.0) -> dict:
    """Every step of the layer on WORKED_LOGITS: probabilities, top-k, capacity, kept pairs, losses."""
    logits = torch.tensor(WORKED_LOGITS)
    probs, top_p, top_i = route(logits, k)
    cap = expert_capacity(len(logits), logits.shape[1], k, capacity_factor)
    keep = capacity_keep_mask(top_i, logits.shape[1], cap)
    return {"logits": logits.tolist(), "probs": probs.tolist(), "top_i": top_i.tolist(), "top_p": top_p.tolist(),
            "capacity_factor": capacity_factor, "capacity": cap, "keep": keep.tolist(),
            "balance_loss": load_balancing_loss(probs, top_i).item(), "z_loss": router_z_loss(logits).item()}


# ----------------------------------------------------------------------------- the layer
class MoELayer(nn.Module):
    """Top-k routed experts with a capacity limit; a drop-in replacement for a block's MLP.

    A token whose choice does not fit its expert gets nothing from that expert: the layer adds
    0 for it, and the block's residual connection carries the token through unchanged."""

    def __init__(self, cfg: GPTConfig, settings: MoESettings | None = None):
        super().__init__()
        if cfg.n_experts < 1:
            raise WorkbookError("MoELayer needs GPTConfig(n_experts >= 1)")
        self.n_experts, self.top_k = cfg.n_experts, cfg.expert_top_k
        self.settings = settings or MoESettings()
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.n_experts))
        self.aux_loss = torch.tensor(0.0)   # what shared.model.GPT adds to the loss
        self.stats: dict = {}               # detached routing facts of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.settings
        flat = rearrange(x, "b t d -> (b t) d")
        logits = self.router(flat)
        probs, top_p, top_i = route(logits, self.top_k, s.renormalise)
        capacity = expert_capacity(len(flat), self.n_experts, self.top_k, s.capacity_factor)
        keep = capacity_keep_mask(top_i, self.n_experts, capacity)

        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = ((top_i == e) & keep).nonzero(as_tuple=True)  # tokens this expert serves
            if len(rows):
                weighted = expert(flat[rows]) * top_p[rows, slot, None]
                out.index_add_(0, rows, weighted.to(out.dtype))  # autocast may hand back bf16

        balance, z = load_balancing_loss(probs, top_i), router_z_loss(logits)
        self.aux_loss = s.aux_weight * balance + s.z_weight * z
        self.stats = {"top_i": top_i.detach(), "keep": keep.detach(), "capacity": capacity,
                      "balance_loss": balance.detach(), "z_loss": z.detach()}
        return rearrange(out, "(b t) d -> b t d", b=x.shape[0])


def moe_gpt(cfg: GPTConfig, settings: MoESettings, dense_layers: int = 0) -> GPT:
    """A shared GPT whose block MLPs are our MoELayer, except the first `dense_layers` blocks,
    which keep a dense MLP `expert_top_k * d_ff` wide: the same feed-forward work per token as
    the k experts a token visits (DeepSeek-V3 keeps its first 3 layers dense this way).

    Built as the shared MoE GPT first (so the weights get the shared init), then each
    block's MoE is swapped for ours with the very same weights. The layers own their loss
    weights, so the GPT's moe_aux_weight is set to 1: loss = CE + sum of layer.aux_loss."""
    if cfg.n_experts < 1:
        raise WorkbookError("moe_gpt needs GPTConfig(n_experts >= 1)")
    if not 0 <= dense_layers < cfg.n_layer:
        raise WorkbookError(f"dense_layers={dense_layers} must leave at least one of {cfg.n_layer} layers MoE")
    cfg = GPTConfig(**{**cfg.to_dict(), "moe_aux_weight": 1.0})
    model = GPT(cfg)
    dense_cfg = GPTConfig(**{**cfg.to_dict(), "d_ff": cfg.expert_top_k * cfg.d_ff, "n_experts": 0})
    for i, block in enumerate(model.blocks):
        if i < dense_layers:
            block.mlp = MLP(dense_cfg)
            block.mlp.apply(GPT._init_weights)   # the shared init, as GPT(dense_cfg) would give
            nn.init.normal_(block.mlp.down_proj.weight, std=0.02 / math.sqrt(2 * cfg.n_layer))
            continue
        ours = MoELayer(cfg, settings)
        ours.load_state_dict(block.mlp.state_dict())
        block.mlp = ours
    return model


def moe_layers(model: nn.Module) -> list[MoELayer]:
    return [b.mlp for b in model.blocks if isinstance(b.mlp, MoELayer)]


def set_capacity(model: nn.Module, capacity_factor: float | None) -> None:
    for layer in moe_layers(model):
        layer.settings = dataclasses.replace(layer.settings, capacity_factor=capacity_factor)
