"""The training loop every chapter uses.

    history = train(model, data, TrainConfig(steps=600, batch_size=32, seq_len=256), device,
                    checkpoint="models/checkpoints/run.safetensors")

AdamW with warm-up then cosine decay, gradient clipping (global norm) and accumulation, periodic
evaluation on fixed validation batches, bf16 autocast on CUDA (fp32 elsewhere: on
CPUs without bf16 matmul units it is several times slower), atomic checkpoints with
the optimizer and RNG states so a resumed run continues exactly, and tokens/s + MFU
(model FLOPs utilisation against the measured matmul peak of the device). With
`log_dir=...` the same numbers also go to TensorBoard (when it is installed).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from shared import bench, stacks
from shared.checkpoint import load_training_state, save_training_state
from shared.data import TokenData
from shared.errors import StackMissing, WorkbookError
from shared.model import GPT


@dataclass
class TrainConfig:
    steps: int = 200
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1        # cosine decays to lr * min_lr_ratio
    warmup: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0           # 0 disables
    grad_accum: int = 1              # micro-batches per optimizer step
    eval_every: int = 50             # 0: only at the end
    eval_batches: int = 8
    eval_from_position: int = 0      # score only positions >= this (long-context floors)
    aligned: bool = False            # windows start at document starts
    checkpoint_every: int = 0        # 0: only at the end (when a checkpoint path is given)
    amp: str = "auto"                # auto: bf16 autocast on CUDA, fp32 elsewhere | bf16 | fp32
    seed: int = 0                    # data order

    def to_dict(self) -> dict:
        return asdict(self)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to exactly cfg.lr at step warmup-1, then cosine down to lr * min_lr_ratio.
    Written so rounding cannot overshoot: lr * ((s+1)/w) is exactly lr at s+1 = w, where
    lr * (s+1) / w is not always (3e-3 * 3 / 3 != 3e-3), and the cosine part starts at
    exactly 1 and only falls, so the peak is cfg.lr and the lr never rises after it."""
    if step < cfg.warmup:
        return cfg.lr * ((step + 1) / cfg.warmup)
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # 1 -> 0
    return cfg.lr * (1 - (1 - cfg.min_lr_ratio) * (1 - cosine))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only (not on norms' gains or biases), as in GPT-2/nanoGPT."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))


def clip_grad_norm(parameters, max_norm: float) -> torch.Tensor:
    """Scale every gradient by one factor so that their *global* L2 norm (all gradients seen
    as one long vector) is at most `max_norm`; returns the norm before clipping. Parameters
    without a gradient (unused this step, or frozen) are skipped. One shared factor keeps the
    update's direction; clipping each tensor on its own would bend it.
    Same numbers as torch.nn.utils.clip_grad_norm_ (written out here because it is the lesson)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    norms = torch.stack([torch.linalg.vector_norm(g.detach()).to(device) for g in grads])
    total = torch.linalg.vector_norm(norms)
    # the 1e-6 keeps a zero norm finite; clamping at 1 means gradients under the limit stay as they are
    scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.detach().mul_(scale.to(g.device))
    return total


def autocast(device: torch.device, cfg: TrainConfig):
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)


def loss_on(model: GPT, x: torch.Tensor, y: torch.Tensor, from_position: int = 0) -> torch.Tensor:
    if from_position:
        y = y.clone()
        y[:, :from_position] = -100  # not scored
    return model(x, y)[1]


def optimizer_step(model: GPT, opt: torch.optim.Optimizer, data: TokenData, cfg: TrainConfig,
                   data_gen: torch.Generator, lr: float, device, step: int = 0) -> float:
    """One optimizer step at learning rate `lr`: `grad_accum` micro-batches of training windows,
    backward, a check that the loss is finite, gradient clipping, AdamW. Returns the step's mean
    loss. `train` calls it on its warm-up + cosine schedule; a chapter with a schedule of its own
    (13: warm-up/stable/decay with forked cooldowns) calls it directly."""
    device = torch.device(device)
    for group in opt.param_groups:
        group["lr"] = lr
    total = 0.0
    for _ in range(cfg.grad_accum):
        x, y = data.get_batch("train", cfg.batch_size, cfg.seq_len, data_gen, aligned=cfg.aligned, device=device)
        with autocast(device, cfg):
            loss = loss_on(model, x, y)
        (loss / cfg.grad_accum).backward()
        total += loss.item() / cfg.grad_accum
    if not math.isfinite(total):
        raise WorkbookError(f"loss became {total} at step {step} (lr {lr:.2e}): training diverged")
    if cfg.grad_clip:
        clip_grad_norm(model.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return total


@torch.no_grad()
def evaluate(model: GPT, data: TokenData, cfg: TrainConfig, device, batches: int | None = None) -> float:
    """Mean validation loss (nats/token) over fixed batches: the same windows every call."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(cfg.seed + 10_000)
    losses = []
    for _ in range(batches or cfg.eval_batches):
        x, y = data.get_batch("val", cfg.batch_size, cfg.seq_len, g, aligned=cfg.aligned, device=device)
        with autocast(torch.device(device), cfg):
            losses.append(loss_on(model, x, y, cfg.eval_from_position).item())
    model.train(was_training)
    return sum(losses) / len(losses)


_TENSORBOARD_SKIP_PRINTED = False


def summary_writer(log_dir):
    """A TensorBoard SummaryWriter for `log_dir`, or None. Without the tensorboard package it
    prints the one skipped line (once per process) naming the command that enables it."""
    global _TENSORBOARD_SKIP_PRINTED
    if log_dir is None:
        return None
    try:
        stacks.require("tensorboard")
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard itself
    except (StackMissing, ImportError) as e:
        if not _TENSORBOARD_SKIP_PRINTED:
            err = e if isinstance(e, StackMissing) else StackMissing("tensorboard", str(e), stacks.STACKS["tensorboard"].enable)
            stacks.skipped(err, f"TensorBoard logging to {log_dir}")
            _TENSORBOARD_SKIP_PRINTED = True
        return None
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(log_dir))


def _rng_states(data_gen: torch.Generator, device: torch.device) -> dict:
    states = {"torch": torch.get_rng_state(), "data": data_gen.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def train(model: GPT, data: TokenData, cfg: TrainConfig, device="cpu", checkpoint: Path | None = None,
          resume: bool = False, stop_at: int | None = None, desc: str = "train", progress: bool = True,
          on_step: Callable[[int, float], None] | None = None, measure_peak: bool = True,
          log_dir: str | Path | None = None) -> dict:
    """Train in place and return the history dict (losses, lr, tokens/s, MFU).

    `checkpoint`: file to save to (every `checkpoint_every` steps and at the end);
    `resume=True` continues from it exactly if it exists. `stop_at` ends early at that
    step (as if interrupted), still saving a checkpoint. `on_step(step, loss)` is called
    after every optimizer step (e.g. to snapshot samples). `log_dir`: also write the scalars
    loss/train, loss/val, lr and tokens_per_s (x-axis: optimizer step) for TensorBoard there;
    without the tensorboard package one line says so and training runs unchanged."""
    device = torch.device(device)
    model.to(device).train()
    opt = make_optimizer(model, cfg)
    data_gen = torch.Generator().manual_seed(cfg.seed)
    history = {"step": [], "train_loss": [], "lr": [], "val": [], "config": cfg.to_dict()}
    start, compute_time = 0, 0.0
    if checkpoint is not None and resume and Path(checkpoint).exists():
        rng, meta = load_training_state(checkpoint, model, opt)
        if meta.get("train_config") != cfg.to_dict():
            raise WorkbookError(f"checkpoint {checkpoint} was made with a different TrainConfig; "
                                "delete it or use the same settings to resume")
        start, history, compute_time = meta["step"], meta["history"], meta.get("compute_time", 0.0)
        torch.set_rng_state(rng["torch"])
        data_gen.set_state(rng["data"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)

    def save(step):
        if checkpoint is not None:
            save_training_state(checkpoint, model, opt, _rng_states(data_gen, device),
                                {"step": step, "history": history, "train_config": cfg.to_dict(),
                                 "compute_time": compute_time})

    peak_before = bench.matmul_peak_flops(device) if measure_peak else float("nan")
    flops_per_token = model.flops_per_token(cfg.seq_len)
    tokens_per_step = cfg.batch_size * cfg.seq_len * cfg.grad_accum
    end = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    writer = summary_writer(log_dir)
    bar = tqdm(range(start, end), desc=desc, disable=not progress, dynamic_ncols=True, leave=False)
    for step in bar:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg)
        total = optimizer_step(model, opt, data, cfg, data_gen, lr, device, step)
        bench.sync(device)
        compute_time += time.perf_counter() - t0
        history["step"].append(step + 1)
        history["train_loss"].append(total)
        history["lr"].append(lr)
        if on_step is not None:
            on_step(step + 1, total)
        last = step + 1 == cfg.steps
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or last:
            history["val"].append({"step": step + 1, "loss": evaluate(model, data, cfg, device)})
        tok_s = tokens_per_step * len(history["step"]) / max(compute_time, 1e-9)
        if writer is not None:
            writer.add_scalar("loss/train", total, step + 1)
            writer.add_scalar("lr", lr, step + 1)
            writer.add_scalar("tokens_per_s", tok_s, step + 1)
            if history["val"] and history["val"][-1]["step"] == step + 1:
                writer.add_scalar("loss/val", history["val"][-1]["loss"], step + 1)
        bar.set_postfix(loss=f"{total:.3f}", tok_s=f"{tok_s:,.0f}")
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and not last:
            save(step + 1)
    bar.close()
    if writer is not None:
        writer.close()
    steps_done = len(history["step"])
    history["compute_time_s"] = compute_time
    history["tokens_per_s"] = tokens_per_step * steps_done / max(compute_time, 1e-9)
    history["flops_per_token"] = flops_per_token
    history.update(model_flops_utilization(history["tokens_per_s"] * flops_per_token, peak_before, device)
                   if measure_peak else {"peak_flops": float("nan"), "mfu": float("nan")})
    save(end)
    return history


def model_flops_utilization(achieved: float, peak_before: float, device) -> dict:
    """MFU = the loop's achieved FLOP/s over the device's matmul peak, with the peak probed
    before the run (`peak_before`) and again now, keeping the best: one probe on a busy machine
    can read low (another process held the cores for that second), and then the training loop
    "beats" the peak and MFU comes out above 100%. When the loop did outrun the first probe,
    one line says so; if it outran both probes the loop's own rate is the best peak we saw
    (MFU 100%): MFU is never reported above 1."""
    peak_after = bench.matmul_peak_flops(device)
    peak = max(peak_before, peak_after, achieved)
    if achieved > peak_before:
        print(f"note: the machine was busy: the matmul peak probe moved ({peak_before / 1e9:,.1f} GFLOP/s before "
              f"training, {peak_after / 1e9:,.1f} after, training itself reached {achieved / 1e9:,.1f}); "
              f"MFU is against the best of the three, {peak / 1e9:,.1f} GFLOP/s")
    return {"peak_flops": peak, "peak_flops_probes": [peak_before, peak_after], "mfu": achieved / peak}


def estimate_seconds(model: GPT, cfg: TrainConfig, device="cpu", mfu: float = 0.5) -> float:
    """Rough wall time of `train` assuming `mfu` of the device's matmul peak (an estimate to
    print before starting, not a measurement)."""
    flops = model.flops_per_token(cfg.seq_len) * cfg.batch_size * cfg.seq_len * cfg.grad_accum * cfg.steps
    evals = (cfg.steps // cfg.eval_every if cfg.eval_every else 1) * cfg.eval_batches * cfg.batch_size * cfg.seq_len
    flops += model.flops_per_token(cfg.seq_len) / 3 * evals
    return flops / (PEAK_GUESS.get(torch.device(device).type, 1e11) * mfu)


# Order-of-magnitude matmul peaks for estimates only (real runs measure theirs).
PEAK_GUESS = {"cpu": 1.5e11, "cuda": 3e14, "mps": 5e12}


def estimate_memory(model: GPT, cfg: TrainConfig) -> float:
    """Bytes: fp32 weights + grads + two AdamW moments, plus activations (~ 34·T·d + 5·h·T² bytes
    per layer and sequence in fp32, after Korthikanti et al. 2022, scaled by 2 for fp32)."""
    c = model.cfg
    params = model.num_params() * 4 * 4
    acts = cfg.batch_size * c.n_layer * (34 * cfg.seq_len * c.d_model + 5 * c.n_head * cfg.seq_len ** 2) * 2
    logits = cfg.batch_size * cfg.seq_len * c.vocab_size * 4 * 3
    return params + acts + logits
