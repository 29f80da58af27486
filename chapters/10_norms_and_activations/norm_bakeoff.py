"""Training otherwise identical small models that differ in one switch: the norm (LayerNorm or
RMSNorm), where it sits (pre or post the residual add) or the MLP's activation.

    recipe = BAKE_OFF[0]                                  # GPT-2's block: pre-norm LayerNorm + GELU
    out = train_probed(recipe, scale, data, vocab_size, device, seed, clip=1.0, snapshot_steps=(50, 150))
    out["final_val"], out["record"]                       # the loss, and what the probe saw on the way

Every model goes through `shared.train` with a `probes.Probe` attached, so the gradients and
activations inside are recorded while it trains. A run whose loss becomes nan/inf is a result
("diverged"), not a crash; one that ends no better than a letter-frequency model is "stuck".
The functions that summarise a record (gradient per block, per depth) live here too, so the
report, the claims and the plots all read the same numbers.

What this leaves out: more than a couple of seeds, and the scale at which the papers compared
these choices (converged, far larger models): a ranking measured here is a ranking of short runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probes import Probe
from shared.data import TokenData
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, train

STUCK_MARGIN = 0.1   # nats/char: ending within this of the letter-frequency model = learned nothing about order


@dataclass(frozen=True)
class Recipe:
    """One architectural choice; everything else about the model stays identical."""
    name: str
    norm: str = "layernorm"
    norm_position: str = "pre"
    activation: str = "gelu"


BAKE_OFF = [  # GPT-2's block first, then one switch at a time, then Llama's pair, then the 2017 block
    Recipe("LayerNorm + GELU (GPT-2)"),
    Recipe("LayerNorm + ReLU", activation="relu"),
    Recipe("LayerNorm + SiLU", activation="silu"),
    Recipe("LayerNorm + SwiGLU", activation="swiglu"),
    Recipe("RMSNorm + GELU", norm="rmsnorm"),
    Recipe("RMSNorm + SwiGLU (Llama)", norm="rmsnorm", activation="swiglu"),
    Recipe("post-norm LayerNorm + GELU (2017)", norm_position="post"),
]


@dataclass(frozen=True)
class Scale:
    """The size and training budget of one model."""
    n_layer: int
    d_model: int
    n_head: int
    seq_len: int
    batch_size: int
    steps: int
    lr: float
    warmup: int


def model_config(recipe: Recipe, scale: Scale, vocab_size: int) -> GPTConfig:
    # RoPE: no learned position table, so whole stories up to the training window can be scored
    return GPTConfig(vocab_size=vocab_size, block_size=scale.seq_len, n_layer=scale.n_layer, n_head=scale.n_head,
                     d_model=scale.d_model, pos="rope", norm=recipe.norm, norm_position=recipe.norm_position,
                     activation=recipe.activation)


def train_config(scale: Scale, seed: int, clip: float) -> TrainConfig:
    return TrainConfig(steps=scale.steps, batch_size=scale.batch_size, seq_len=scale.seq_len, lr=scale.lr,
                       warmup=scale.warmup, grad_clip=clip, eval_every=max(2, scale.steps // 5), eval_batches=4,
                       aligned=True, seed=seed)


def unigram_entropy(ids: np.ndarray, vocab_size: int) -> float:
    """nats/char of a model that knows only how often each letter appears: the 'learned nothing
    about order' line. A run that ends there is stuck."""
    p = np.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def verdict(final_val: float | None, diverged: bool, unigram: float) -> str:
    """trains | stuck (no better than letter frequencies) | diverged (loss became inf/nan)."""
    if diverged:
        return "diverged"
    return "stuck" if final_val > unigram - STUCK_MARGIN else "trains"


def train_probed(recipe: Recipe, scale: Scale, data: TokenData, vocab_size: int, device, seed: int, clip: float,
                 snapshot_steps: tuple = (), desc: str = "train", sample_seed: int = 7) -> dict:
    """Train one model with the probe attached; a divergence is a result, not a crash."""
    torch.manual_seed(seed)   # identical initial weights wherever the shapes agree
    model = GPT(model_config(recipe, scale, vocab_size))
    # the probe's fixed batch is the same for every model, whatever its seed
    sample, _ = data.get_batch("val", 4, scale.seq_len, torch.Generator().manual_seed(sample_seed), aligned=True,
                               device=device)
    probe = Probe(model, sample, seed=sample_seed)
    probe.snapshot_steps = snapshot_steps
    if snapshot_steps:
        probe.snapshot(0)
    history, diverged = None, False
    try:
        history = train(model, data, train_config(scale, seed, clip), device, desc=desc, on_step=probe.on_step,
                        measure_peak=False)
    except WorkbookError as e:
        if "diverged" not in str(e):
            raise
        diverged = True
    record = probe.close()
    return {"model": model, "record": record, "diverged": diverged,
            "final_val": None if diverged else history["val"][-1]["loss"],
            "val": [] if diverged else history["val"], "params": model.num_params(),
            "seconds": None if diverged else history["compute_time_s"],
            "diverged_at_step": len(record["loss"]) + 1 if diverged else None}


# ----------------------------------------------------------------------------- reading a record
def early_steps(record: dict) -> int:
    """How many of the first steps count as 'the start of training': a quarter of the run, at most 10."""
    return max(1, min(10, len(record["param_grad_norm"]) // 4))


def early_gradients(record: dict) -> dict:
    """Mean over the first steps of ‖dL/dx‖ down the residual stream (depth 0 = embeddings .. L)
    and of each block's weight-gradient norm: where the gradient goes when training starts."""
    n = early_steps(record)
    return {"resid": np.mean(record["resid_grad_norm"][:n], axis=0).tolist(),
            "blocks": np.mean(record["param_grad_norm"][:n], axis=0).tolist()}


def late_over_early(record: dict) -> float:
    """Total weight-gradient norm over the second half of training / over the first steps: near 0
    means the gradient died away (a stuck model gets no signal), near or above 1 that it kept flowing."""
    g = np.asarray(record["param_grad_norm"]).sum(axis=1)
    n = early_steps(record)
    return float(g[len(g) // 2:].mean() / g[:n].mean())


def seed_spread(values: list[float | None]) -> float | None:
    """max - min of one recipe's final losses over its seeds: the noise any ranking has to beat."""
    ok = [v for v in values if v is not None]
    return max(ok) - min(ok) if len(ok) >= 2 else None


# ----------------------------------------------------------------------------- reading the results
def recipe_runs(results: dict, name: str) -> list[dict]:
    """Every seed's row of one bake-off recipe."""
    return [b for b in results["bake_off"] if b["recipe"] == name]


def recipe_mean(results: dict, name: str, key: str = "final_val_nats_per_char") -> float:
    """Mean over seeds of one recipe's `key` (nan if any seed diverged)."""
    values = [b.get(key) for b in recipe_runs(results, name)]
    return float("nan") if any(v is None for v in values) else float(np.mean(values))


def cell(results: dict, position: str, warm: bool, lr: float) -> dict:
    """One cell of the pre/post-norm sweep."""
    return next(c for c in results["sweep"]
                if c["position"] == position and bool(c["warmup"]) == warm and c["lr"] == lr)


def featured(results: dict, position: str, warm: bool) -> dict:
    """The cell at the featured learning rate (where post-norm without warm-up first fails)."""
    return cell(results, position, warm, results["feature_lr"])
