"""Measuring the tricks of at_scale.py, and the two habits every long run needs.

- gradient accumulation, activation checkpointing, bf16 vs fp32 on this CPU, GaLore vs AdamW:
  each measured on a small model (the mechanisms themselves are in at_scale.py);
- checkpoint and resume: a run stopped halfway (as if the machine died), then resumed from its
  checkpoint in a fresh model object, must produce the uninterrupted run's losses EXACTLY.
  That needs more than the weights: shared.train saves the AdamW moments, the step (so the
  learning-rate schedule continues where it was) and the RNG states (so the data order does);
- early stopping on validation loss: train in chunks, score a fixed validation set after each,
  keep the best weights, stop after `patience` chunks without improvement. The chunks are
  themselves stop-and-resume from a checkpoint, so the loop is the resume lesson put to work.

Every function returns a plain dict for the results JSON.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

import at_scale as at
from shared import bench
from shared.data import TokenData
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, evaluate, train


def small_gpt(vocab: int, n_layer: int, d_model: int, n_head: int, seq_len: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                         pos="rope"))


# ------------------------------------------------------------------------------ the tricks, measured
def grad_accumulation(data: TokenData, vocab: int, batch: int = 16) -> dict:
    """max |gradient of k accumulated micro-batches - gradient of the whole batch| for k = 2, 4, 8."""
    model = small_gpt(vocab, 2, 64, 4, 64)
    x, y = data.get_batch("train", batch, 64, torch.Generator().manual_seed(0))
    big = at.accumulated_grads(model, x, y, 1)
    diffs = {str(k): max((a - b).abs().max().item() for a, b in zip(big, at.accumulated_grads(model, x, y, k)))
             for k in (2, 4, 8)}
    return {"max_abs_grad_diff_by_k": diffs, "batch": batch}


def checkpointing(data: TokenData, vocab: int, size=(4, 128, 4), batch=8, seq_len=256) -> dict:
    """Peak memory and step time of one training step, with and without activation checkpointing."""
    model = small_gpt(vocab, *size, seq_len)
    x, y = data.get_batch("train", batch, seq_len, torch.Generator().manual_seed(1))
    rows = {}
    for ckpt in (False, True):
        def step():
            at.forward_loss(model, x, y, checkpointed=ckpt).backward()
            model.zero_grad(set_to_none=True)
        step()  # warm-up outside the measurement
        with bench.peak_memory("cpu") as mem:
            step()
        rows["checkpointed" if ckpt else "plain"] = {"peak_memory_bytes": mem.bytes,
                                                     "step_s": bench.time_fn(step, warmup=0, repeat=3)}
    return {"size": list(size), "batch": batch, "seq_len": seq_len, **rows}


def precision(data: TokenData, vocab: int, size=(4, 128, 4), batch=8, seq_len=256) -> dict:
    """fp32 vs bf16 autocast on this CPU: step time, loss, matmul GFLOP/s, and whether it has bf16 units."""
    model = small_gpt(vocab, *size, seq_len)
    x, y = data.get_batch("train", batch, seq_len, torch.Generator().manual_seed(2))
    out = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x, y)[1]
            loss.backward()
            model.zero_grad(set_to_none=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(x, y)[1].item()
        out[name] = {"step_s": bench.time_fn(step, warmup=1, repeat=3), "loss": loss}
    a = torch.randn(1024, 1024)
    out["matmul_gflops"] = {name: 2 * 1024**3 / bench.time_fn(lambda t=t: t @ t, warmup=1, repeat=5) / 1e9
                            for name, t in (("fp32", a), ("bf16", a.bfloat16()))}
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    out["cpu_bf16_units"] = {f: f in flags for f in ("avx512_bf16", "amx_bf16")}
    return out


def galore_vs_adamw(data: TokenData, tok, stories, steps: int, size=(2, 96, 4), rank=16, batch=8,
                    seq_len=256) -> dict:
    """The same model and batches under AdamW and under GaLore: loss curve, state bytes, held-out loss."""
    out = {"params": sum(p.numel() for p in small_gpt(tok.vocab_size, *size, seq_len).parameters()),
           "size": list(size), "rank": rank}
    for name in ("AdamW", f"GaLore rank {rank}"):
        model = small_gpt(tok.vocab_size, *size, seq_len)
        opt = (torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0) if name == "AdamW"
               else at.GaLoreAdamW(model.parameters(), lr=3e-3, rank=rank, update_every=50, scale=1.0))
        gen, losses, t0 = torch.Generator().manual_seed(5), [], time.perf_counter()
        for _ in range(steps):
            loss = model(*data.get_batch("train", batch, seq_len, gen, aligned=True))[1]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        out[name] = {"train_loss": losses, "wall_s": time.perf_counter() - t0,
                     "optimizer_state_bytes": at.optimizer_state_bytes(opt),
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    return out


# ------------------------------------------------------------------------------ checkpoint and resume
def interrupted_and_resumed(data: TokenData, vocab: int, cfg: TrainConfig, stop_at: int, folder: Path,
                            size=(2, 64, 4), seed: int = 0, device="cpu") -> dict:
    """Train `cfg.steps` steps in one go; then train again, stop at `stop_at` (the checkpoint is
    written), and finish in a NEW model object built with other random weights, resuming from the
    checkpoint. Returns both loss curves and their largest difference (0: resumed exactly)."""
    # the uninterrupted run also measures throughput: tokens/s and MFU against the matmul peak probed
    # before and after it (shared.train keeps the best probe, so MFU is never above 100%)
    whole = train(small_gpt(vocab, *size, cfg.seq_len, seed), data, cfg, device, desc="uninterrupted")
    ckpt = Path(folder) / "interrupted.safetensors"
    first = train(small_gpt(vocab, *size, cfg.seq_len, seed), data, cfg, device, checkpoint=ckpt, stop_at=stop_at,
                  desc="until the 'crash'", measure_peak=False)
    fresh = small_gpt(vocab, *size, cfg.seq_len, seed + 1)        # a new process: other weights until loaded
    resumed = train(fresh, data, cfg, device, checkpoint=ckpt, resume=True, desc="resumed", measure_peak=False)
    a, b = whole["train_loss"], resumed["train_loss"]
    val = lambda h: [v["loss"] for v in h["val"]]   # noqa: E731  (one-line accessor)
    return {"steps": cfg.steps, "stop_at": stop_at, "size": list(size), "uninterrupted": a, "resumed": b,
            "before_stop": first["train_loss"], "checkpoint_bytes": ckpt.stat().st_size,
            "max_abs_loss_diff": max(abs(x - y) for x, y in zip(a, b)) if len(a) == len(b) else float("inf"),
            "val_uninterrupted": val(whole), "val_resumed": val(resumed), "tokens_per_s": whole["tokens_per_s"],
            "mfu": whole["mfu"], "peak_flops": whole["peak_flops"]}


# ------------------------------------------------------------------------------ early stopping
def early_stopping(data: TokenData, vocab: int, cfg: TrainConfig, check_every: int, patience: int, folder: Path,
                   size=(2, 64, 4), val_batches: int = 8, seed: int = 0, device="cpu") -> dict:
    """Train in chunks of `check_every` steps (stop, checkpoint, resume: exact, as above), score the
    fixed validation batches after each, remember the best weights. Early stopping would stop
    after `patience` chunks without a new best; the run goes on to the end anyway, so the results
    also show what the remaining steps would have done to the validation loss."""
    model = small_gpt(vocab, *size, cfg.seq_len, seed)
    ckpt = Path(folder) / "early_stopping.safetensors"
    curve, best, best_state, stop, since_best = [], float("inf"), None, None, 0
    for end in range(check_every, cfg.steps + 1, check_every):
        hist = train(model, data, cfg, device, checkpoint=ckpt, resume=True, stop_at=end, desc=f"steps to {end}",
                     measure_peak=False)
        val = evaluate(model, data, cfg, device, batches=val_batches)
        curve.append({"step": end, "val_loss": val, "train_loss": sum(hist["train_loss"][-check_every:]) / check_every})
        if val < best:
            best, best_state, since_best = val, copy.deepcopy(model.state_dict()), 0
        else:
            since_best += 1
        if stop is None and since_best >= patience:
            stop = end                                   # where early stopping ends the run
    best_step = min(curve, key=lambda c: c["val_loss"])["step"]
    model.load_state_dict(best_state)                    # what early stopping hands back: the best weights
    return {"curve": curve, "check_every": check_every, "patience": patience, "steps": cfg.steps,
            "size": list(size), "best_step": best_step, "best_val": best, "stopped_at": stop,
            "final_val": curve[-1]["val_loss"], "restored_val": evaluate(model, data, cfg, device, batches=val_batches),
            "train_chars": int(len(data.train)), "val_chars": int(len(data.val))}
