"""AWQ (Lin et al. 2023, arXiv:2306.00978): activation-aware weight quantization.

A few input channels of each linear carry much larger activations than the rest. Their
weights matter more: an error there is multiplied by a big x. AWQ scales those weight
columns UP by s before rounding (so they get relatively finer steps) and the activations
DOWN by s (folded into the previous op, so the float model is unchanged):

    y = W x = (W diag(s)) (diag(s)^-1 x),      s = mean|x|^alpha,  alpha searched on a grid

Two searches per transformer block, both on calibration text, both as in the paper's code:

1. scales. The linears that read the same input share one s, and alpha is chosen by the
   error of the whole module they feed, with only those linears quantized: q/k/v by the
   attention output (softmax and RoPE included), gate/up by the MLP output, o_proj and
   down_proj by their own output. alpha = 0 is plain round-to-nearest (RTN), so on the
   calibration data the search can only help. Where the 1/s goes (exact in float):
       q/k/v   <- attention RMSNorm weight      gate/up <- MLP RMSNorm weight
       o_proj  <- rows of v_proj (MHA only)     down    <- rows of up_proj
2. clipping. Rounding spends the grid on [min, max]; one stray weight stretches it for the
   whole group. For every (output row, group) shrink the range to max|w| * (1 - i/20),
   i < 10, and keep the shrink with the smallest error of that group's partial dot product
   on calibration inputs. Shrink 0 is no clipping, so a group's error never goes up. q and
   k are not clipped (the paper's code skips them: their error passes through a softmax).
   Clipping changes the float weights; that is the point (they are rounded afterwards).

`awq_layout.py` writes the result in the AutoAWQ file layout.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from einops import einsum, rearrange

from quantizers import QuantSpec, _grouped, quant_dequant

# (group name, linears sharing one input, the module whose output judges the scales, where 1/s is folded)
GROUPS = (("qkv", ("attn.q_proj", "attn.k_proj", "attn.v_proj"), "attn", "attn_norm"),
          ("o", ("attn.o_proj",), "attn.o_proj", "attn.v_proj"),
          ("gate_up", ("mlp.gate_proj", "mlp.up_proj"), "mlp", "mlp_norm"),
          ("down", ("mlp.down_proj",), "mlp.down_proj", "mlp.up_proj"))
NO_CLIP = ("attn.q_proj", "attn.k_proj")


def run_hooked(model, batches: list[torch.Tensor], hooks) -> None:
    """Run the calibration batches through `model` so its hooks record what they see; the
    hooks are removed afterwards, even if the forward fails."""
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def collect_inputs(model, batches: list[torch.Tensor], max_rows: int = 4096) -> dict[str, torch.Tensor]:
    """The input activations of every block linear on calibration tokens: {name: (rows, in)}."""
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and ".blocks." in f".{name}":
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.setdefault(name, []).append(
                    rearrange(inp[0].detach().float(), "b t d -> (b t) d"))))
    run_hooked(model, batches, hooks)
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, xs in seen.items():
        x = torch.cat(xs)
        if len(x) > max_rows:  # a fixed random subset keeps the search cheap
            x = x[torch.randperm(len(x), generator=g)[:max_rows]]
        out[name] = x
    return out


@torch.no_grad()
def block_inputs(model, batches: list[torch.Tensor]) -> tuple[list[torch.Tensor], dict]:
    """What every block receives on the calibration batches: the residual stream (B, T, d) per
    block and the keyword arguments (RoPE tables) the model passes it. Whole sequences are kept
    because the attention output (the judge of q/k/v's scales) needs them."""
    seen: dict[int, list[torch.Tensor]] = {}
    kwargs = {}

    def grab(i):
        def hook(mod, args, kw):
            seen.setdefault(i, []).append(args[0].detach())
            kwargs.update(kw)
        return hook

    hooks = [b.register_forward_pre_hook(grab(i), with_kwargs=True) for i, b in enumerate(model.blocks)]
    run_hooked(model, batches, hooks)
    return [torch.cat(seen[i]) for i in range(len(model.blocks))], kwargs


@torch.no_grad()
def linear_inputs(block, x: torch.Tensor, kwargs: dict) -> dict[str, torch.Tensor]:
    """The input of each linear of one block (B, T, in), from one forward of the block."""
    seen, hooks = {}, []
    for name, m in block.named_modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, inp[0])))
    try:
        block(x, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def awq_scales(act: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|x|^alpha per input channel, normalised so max(s) * min(s) = 1 (only ratios matter)."""
    s = act.pow(alpha).clamp(min=1e-4)
    return s / (s.max() * s.min()).sqrt()


@torch.no_grad()
def search_scale(judge, linears: list[nn.Linear], x: torch.Tensor, spec: QuantSpec, grid: int = 20,
                 **kwargs) -> tuple[torch.Tensor, float, list[float]]:
    """Grid search alpha in [0, 1): for each alpha, round W diag(s) of every linear in `linears`,
    undo s, run `judge` (the module those linears feed) on x and measure the MSE against its
    float output. Returns the best s, its alpha and the error curve (alpha = 0 is RTN).
    The linears' weights are restored before returning."""
    target = judge(x, **kwargs)
    act = x.abs().reshape(-1, x.shape[-1]).float().mean(dim=0)
    originals = [lin.weight.detach().clone() for lin in linears]
    best, curve = None, []
    try:
        for i in range(grid):
            alpha = i / grid
            s = awq_scales(act, alpha)
            for lin, w in zip(linears, originals):
                lin.weight.copy_(quant_dequant(w * s, spec) / s)   # = what x/s meets after rounding W s
            err = (judge(x, **kwargs) - target).float().pow(2).mean().item()
            curve.append(err)
            if best is None or err < best[1]:
                best = (s, err, alpha)
    finally:
        for lin, w in zip(linears, originals):
            lin.weight.copy_(w)
    return best[0], best[2], curve


def output_error(weights: list[torch.Tensor], x: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> float:
    """Mean squared error of the outputs of plain linears when W diag(s) is rounded and x divided by s."""
    err = 0.0
    for w in weights:
        w_hat = quant_dequant(w * s, spec) / s
        err += ((x @ (w_hat - w).T) ** 2).mean().item()
    return err


@torch.no_grad()
def search_clip(w: torch.Tensor, x: torch.Tensor, spec: QuantSpec, grid: int = 20, max_shrink: float = 0.5,
                n_tokens: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every (output row, group): the clipping range max|w| * (1 - i/grid), i < max_shrink * grid,
    whose rounded weights give the smallest MSE of that group's partial dot products w_g . x_g
    over calibration tokens. Returns (best range (rows, groups), its error, the unclipped error)."""
    x = x.reshape(-1, x.shape[-1])
    x = x[torch.linspace(0, len(x) - 1, min(n_tokens, len(x))).long()].float()   # evenly spread tokens
    wg = _grouped(w.float(), spec.group)                                      # (rows, groups, g)
    xg = rearrange(x, "t (n g) -> t n g", n=wg.shape[1])
    target = einsum(xg, wg, "t n g, o n g -> o n t")
    org_max = wg.abs().amax(dim=-1, keepdim=True)
    best_max, best_err, rtn_err = org_max.clone(), None, None
    for i in range(max(1, int(max_shrink * grid))):
        m = org_max * (1 - i / grid)
        q = _grouped(quant_dequant(torch.maximum(torch.minimum(wg, m), -m).reshape(w.shape), spec), spec.group)
        err = (einsum(xg, q, "t n g, o n g -> o n t") - target).pow(2).mean(dim=-1, keepdim=True)
        if best_err is None:
            best_err, rtn_err = err, err.clone()
        better = err < best_err
        best_err, best_max = torch.where(better, err, best_err), torch.where(better, m, best_max)
    return best_max[..., 0], best_err[..., 0], rtn_err[..., 0]


def clip_(lin: nn.Linear, max_val: torch.Tensor, spec: QuantSpec) -> None:
    """Clamp each (row, group) of lin.weight to [-max_val, max_val] in place."""
    wg = _grouped(lin.weight.data, spec.group)
    m = max_val[..., None].to(wg.dtype)
    lin.weight.data.copy_(torch.maximum(torch.minimum(wg, m), -m).reshape(lin.weight.shape))


@torch.no_grad()
def apply_awq(model, batches: list[torch.Tensor], spec: QuantSpec, grid: int = 20, clip: bool = True):
    """A float copy of `model` with AWQ's scales folded in (same function, rescaled weights) and,
    with clip=True, its weights clipped; quantizing that copy with plain RTN gives AWQ.
    Every block is searched on the inputs the FLOAT model gives it (as in the paper's code).
    Returns the copy and a report per scale group / clipped linear."""
    out = copy.deepcopy(model).eval()
    xs, kwargs = block_inputs(out, batches)
    scale_report, clip_report = [], []
    for i, (block, x) in enumerate(zip(out.blocks, xs)):
        feats = linear_inputs(block, x, kwargs)
        for group, names, judge, fold_into in GROUPS:
            names = [n for n in names if _has(block, n)]
            if not names or not _has(block, fold_into):
                continue      # e.g. a GELU MLP has no gate_proj, a LayerNorm/post-norm block differs
            if group == "o" and block.attn.cfg.n_kv_head != block.attn.cfg.n_head:
                continue      # with GQA a v_proj row feeds several heads: no per-channel fold
            lins = [block.get_submodule(n) for n in names]
            kw = kwargs if judge == "attn" else {}
            s, alpha, curve = search_scale(block.get_submodule(judge), lins, feats[names[0]], spec, grid, **kw)
            for m in lins:
                m.weight.mul_(s)                          # columns up
            prev = block.get_submodule(fold_into)
            if isinstance(prev, nn.Linear):
                prev.weight.div_(s[:, None])              # rows of the producer down
            else:
                prev.weight.div_(s)                       # the RMSNorm gain down
            scale_report.append({"layer": i, "group": group, "alpha": alpha, "rtn_error": curve[0],
                                 "awq_error": min(curve), "curve": curve})
        if clip:
            feats = linear_inputs(block, x, kwargs)       # the inputs the scaled linears now see (x / s)
            for name, lin in block.named_modules():
                if isinstance(lin, nn.Linear) and name not in NO_CLIP:
                    max_val, err, rtn_err = search_clip(lin.weight, feats[name], spec, grid)
                    shrink = 1 - max_val / _grouped(lin.weight, spec.group).abs().amax(-1).clamp(min=1e-12)
                    clip_(lin, max_val, spec)
                    clip_report.append({"layer": i, "linear": name, "rtn_error": float(rtn_err.mean()),
                                        "clip_error": float(err.mean()), "mean_shrink": float(shrink.mean())})
    return out, {"scales": scale_report, "clip": clip_report}


def _has(block, name: str) -> bool:
    try:
        block.get_submodule(name)
        return True
    except AttributeError:
        return False
