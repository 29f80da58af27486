"""Watching the experts: how a trained (or training) MoE model uses them.

    train_watching(model, data, tcfg, ...)  train, snapshotting the routing of a fixed probe batch
                                       and the validation cross-entropy as it goes
    val_cross_entropy(model, ...)      validation loss WITHOUT the router losses (fair across models)
    routing_snapshot(model, probe)     per MoE layer: share of routing decisions per expert, the
                                       share dropped by the capacity limit, the two router losses
    busiest_load(fractions)            the busiest expert's load / the balanced load (1 = balanced,
                                       E/k at most: every token sends one of its k picks there)
    capacity_sweep(model, ...)         validation loss and dropped share at other capacity factors
    category_table(model, tok, text)   first-choice expert per Hundred Acre Wood word category
    active_params(model)               the parameters one token's forward pass actually multiplies

Nothing here changes how a model routes: `routing_snapshot` and `category_table` run it in eval
mode and put the training mode and capacity back as they found them.
"""
from __future__ import annotations

import dataclasses
import re

import torch
import torch.nn.functional as F

from moe import expert_fractions, moe_layers, set_capacity
from shared.corpus import CATEGORIES
from shared.data import TokenData
from shared.model import GPT
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, train

OTHER_WORD, NOT_A_WORD = "other word", "space/punct."


# ----------------------------------------------------------------------------- routing
@torch.no_grad()
def routing_snapshot(model: GPT, probe: torch.Tensor) -> list[dict]:
    """Per MoE layer, on the probe batch: the share of routing decisions each expert got (all k
    picks), the share of first choices, the share of decisions dropped, and the router losses."""
    was_training = model.training
    model.eval()
    model(probe)
    model.train(was_training)
    snaps = []
    for layer in moe_layers(model):
        s = layer.stats
        snaps.append({"fractions": expert_fractions(s["top_i"], layer.n_experts).tolist(),
                      "first_choice": expert_fractions(s["top_i"][:, :1], layer.n_experts).tolist(),
                      "dropped": 1 - s["keep"].float().mean().item(),
                      "balance_loss": s["balance_loss"].item(), "z_loss": s["z_loss"].item()})
    return snaps


def busiest_load(fractions: list[float]) -> float:
    """E x the largest share: how many times its fair share the busiest expert carries."""
    return len(fractions) * max(fractions)


def worst_layer_load(snapshot: list[dict]) -> float:
    return max(busiest_load(layer["fractions"]) for layer in snapshot)


@torch.no_grad()
def val_cross_entropy(model: GPT, data: TokenData, tcfg: TrainConfig, device, batches: int) -> float:
    """Mean validation cross-entropy (nats/char) on the same fixed windows as shared.train.evaluate,
    but WITHOUT the router losses that model(x, y) adds to its loss: the number that compares a MoE
    model trained with the balancing loss fairly against one trained without it (or a dense one)."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(tcfg.seed + 10_000)
    total = 0.0
    for _ in range(batches):
        x, y = data.get_batch("val", tcfg.batch_size, tcfg.seq_len, gen, aligned=tcfg.aligned, device=device)
        total += F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten()).item()
    model.train(was_training)
    return total / batches


def train_watching(model: GPT, data: TokenData, tcfg: TrainConfig, device, probe: torch.Tensor | None,
                   every: int, desc: str, progress: bool = True) -> dict:
    """shared.train.train, plus a routing snapshot of `probe` at step 0 and every `every` steps, and
    the validation cross-entropy (`val_cross_entropy`) every `tcfg.eval_every` steps and at the end."""
    snapshots, val = [], []

    def on_step(step, _loss):
        if probe is not None and step % every == 0:
            snapshots.append({"step": step, "layers": routing_snapshot(model, probe)})
        if (tcfg.eval_every and step % tcfg.eval_every == 0) or step == tcfg.steps:
            val.append({"step": step, "loss": val_cross_entropy(model, data, tcfg, device, tcfg.eval_batches)})

    if probe is not None:
        on_step(0, None)
    quiet = dataclasses.replace(tcfg, eval_every=0, eval_batches=1)   # train's own eval would add the router losses
    hist = train(model, data, quiet, device, desc=desc, on_step=on_step, measure_peak=False, progress=progress)
    return {"step": hist["step"], "train_loss": hist["train_loss"], "val": val, "final_val": val[-1]["loss"],
            "tokens_per_s": hist["tokens_per_s"], "flops_per_token": hist["flops_per_token"],
            "snapshots": snapshots}


# ----------------------------------------------------------------------------- capacity
@torch.no_grad()
def capacity_sweep(model: GPT, data: TokenData, tcfg: TrainConfig, probe: torch.Tensor, factors, device) -> list:
    """Validation cross-entropy and dropped share when the trained model runs at other capacity
    factors (None: unlimited). The model's own capacity is put back afterwards."""
    trained_at = moe_layers(model)[0].settings.capacity_factor
    rows = []
    for cf in [*factors, None]:
        set_capacity(model, cf)
        snap = routing_snapshot(model, probe)
        rows.append({"capacity_factor": cf, "val_loss": val_cross_entropy(model, data, tcfg, device, tcfg.eval_batches),
                     "dropped": sum(s["dropped"] for s in snap) / len(snap)})
    set_capacity(model, trained_at)
    return rows


# ----------------------------------------------------------------------------- word categories
def char_categories(text: str) -> list[str]:
    """The Hundred Acre Wood category of the word each character belongs to. Phrases are
    matched longest first ("honey tree" is a home before "honey" could be anything)."""
    labels = [NOT_A_WORD if not c.isalpha() else OTHER_WORD for c in text]
    taken = [False] * len(text)
    for phrase in sorted(CATEGORIES, key=len, reverse=True):
        for m in re.finditer(rf"\b{re.escape(phrase)}\b", text):
            if not any(taken[m.start():m.end()]):
                for i in range(m.start(), m.end()):
                    if text[i] != " ":
                        labels[i] = CATEGORIES[phrase]
                    taken[i] = True
    return labels


@torch.no_grad()
def category_table(model: GPT, tok: CharTokenizer, text: str, device, seq_len: int) -> dict:
    """Route `text` in windows of seq_len; count each character's FIRST-choice expert by category
    (at unlimited capacity: we want the router's choice, not what capacity allowed)."""
    labels = char_categories(text)
    cats = sorted(set(CATEGORIES.values())) + [OTHER_WORD, NOT_A_WORD]
    ids = torch.tensor(tok.encode(text))
    n = len(ids) // seq_len * seq_len
    was_training = model.training
    model.eval()
    layers = moe_layers(model)
    trained_at = layers[0].settings.capacity_factor
    set_capacity(model, None)
    per_layer = [torch.zeros(len(cats), layer.n_experts) for layer in layers]
    for start in range(0, n, seq_len * 16):
        x = ids[start:min(n, start + seq_len * 16)].view(-1, seq_len).to(device)
        model(x)
        rows = torch.tensor([cats.index(c) for c in labels[start:start + x.numel()]])
        for table, layer in zip(per_layer, layers):
            choice = layer.stats["top_i"][:, 0].cpu()
            table.index_put_((rows, choice), torch.ones(len(rows)), accumulate=True)
    set_capacity(model, trained_at)
    model.train(was_training)
    return {"categories": cats, "chars_per_category": per_layer[0].sum(dim=1).tolist(),
            "tables": [(t / t.sum(dim=1, keepdim=True).clamp(min=1)).tolist() for t in per_layer]}


# ----------------------------------------------------------------------------- cost
def active_params(model: GPT) -> int:
    """Parameters a token actually touches: all of them minus the experts it skips (the
    embedding table counts once: a lookup, but tied to the output head, a matmul)."""
    cfg = model.cfg
    expert = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    skipped = expert * (1 - cfg.expert_top_k / cfg.n_experts) if cfg.n_experts else 0
    return int(model.num_params() - skipped)
