"""Part 3 of chapter 13 (`main.py --extras`): measuring the at-scale tricks of at_scale.py.

Each function returns a plain dict for the results JSON; main.py saves it and visualize.py draws it.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import at_scale as at
from shared import bench
from shared.corpus import HundredAcreWood
from shared.data import TokenData
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer


def _model(vocab, n_layer, d_model, n_head, seq_len, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                         pos="rope"))


def grad_accumulation(data: TokenData, vocab: int) -> dict:
    model = _model(vocab, 2, 64, 4, 64)
    x, y = data.get_batch("train", 16, 64, torch.Generator().manual_seed(0))
    big = at.accumulated_grads(model, x, y, 1)
    out = {}
    for k in (2, 4, 8):
        acc = at.accumulated_grads(model, x, y, k)
        out[str(k)] = max((a - b).abs().max().item() for a, b in zip(big, acc))
    return {"max_abs_grad_diff_by_k": out, "batch": 16}


def checkpointing(data: TokenData, vocab: int, size=(4, 128, 4), batch=8, seq_len=256) -> dict:
    """Peak memory and step time of one training step, with and without activation checkpointing."""
    model = _model(vocab, *size, seq_len)
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
    """fp32 vs bf16 autocast on this CPU: step time, and the loss difference."""
    model = _model(vocab, *size, seq_len)
    x, y = data.get_batch("train", batch, seq_len, torch.Generator().manual_seed(2))
    out = {}
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                loss = model(x, y)[1]
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = model(x, y)[1].item()
        out[name] = {"step_s": bench.time_fn(step, warmup=1, repeat=3), "loss": loss}
    a = torch.randn(1024, 1024)
    out["matmul_gflops"] = {}
    for name, t in (("fp32", a), ("bf16", a.bfloat16())):
        s = bench.time_fn(lambda: t @ t, warmup=1, repeat=5)
        out["matmul_gflops"][name] = 2 * 1024**3 / s / 1e9
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    out["cpu_bf16_units"] = {f: f in flags.split() for f in ("avx512_bf16", "amx_bf16")}
    return out


def _train_loop(model, opt, data, steps, batch, seq_len, seed, desc) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True):
        x, y = data.get_batch("train", batch, seq_len, gen, aligned=True)
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def galore_vs_adamw(data: TokenData, tok, stories, steps: int, size=(2, 96, 4), rank=16, batch=8, seq_len=256) -> dict:
    out = {}
    for name in ("AdamW", f"GaLore rank {rank}"):
        model = _model(tok.vocab_size, *size, seq_len)
        if name == "AdamW":
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        else:
            opt = at.GaLoreAdamW(model.parameters(), lr=3e-3, rank=rank, update_every=50, scale=1.0)
        t0 = time.perf_counter()
        losses = _train_loop(model, opt, data, steps, batch, seq_len, 5, name)
        out[name] = {"train_loss": losses, "wall_s": time.perf_counter() - t0,
                     "optimizer_state_bytes": at.optimizer_state_bytes(opt),
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    out["params"] = sum(p.numel() for p in _model(tok.vocab_size, *size, seq_len).parameters())
    out["size"], out["rank"] = list(size), rank
    return out


def duplicates(tok, stories, steps: int, size=(2, 64, 4), batch=8, seq_len=256, unique_fraction=0.05) -> dict:
    """Same token budget, same model: fresh stories vs a corpus where each story appears
    1/unique_fraction times. Then dedup (exact + MinHash) the repeated corpus."""
    wood = HundredAcreWood()
    fresh = [s.text for s in wood.stories(6000, seed=11)]
    n_unique = int(len(fresh) * unique_fraction)
    repeated = [fresh[i % n_unique] for i in range(len(fresh))]
    rng = np.random.default_rng(0)
    repeated = [repeated[i] for i in rng.permutation(len(repeated))]
    out = {"documents": len(fresh), "unique_in_repeated": n_unique}
    for name, docs in (("fresh stories", fresh), ("each story x%d" % round(1 / unique_fraction), repeated)):
        data = TokenData.from_text("".join(docs), tok, doc_separator="\n", cache=False)
        model = _model(tok.vocab_size, *size, seq_len)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        losses = _train_loop(model, opt, data, steps, batch, seq_len, 6, name)
        out[name] = {"train_loss": losses,
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    kept, stats = at.dedup(repeated[:1500], threshold=0.8)
    out["dedup_on_first_1500_of_repeated"] = stats
    return out


def run_all(run, steps: int) -> dict:
    run.estimate(seconds=run.pick(quick=20, default=75, full=400), what="part 3 (bf16 on a CPU is the slow bit)")
    wood = HundredAcreWood()
    text = wood.text(600_000, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    stories = wood.stories(64, seed=run.seed + 777)
    res = {"grad_accumulation": grad_accumulation(data, tok.vocab_size)}
    print(f"  grad accumulation: max |g_accum - g_big| by k: {res['grad_accumulation']['max_abs_grad_diff_by_k']}")
    res["checkpointing"] = checkpointing(data, tok.vocab_size)
    c = res["checkpointing"]
    print(f"  checkpointing: peak {c['plain']['peak_memory_bytes'] / 2**20:.0f} -> "
          f"{c['checkpointed']['peak_memory_bytes'] / 2**20:.0f} MiB, step {c['plain']['step_s']:.2f} -> "
          f"{c['checkpointed']['step_s']:.2f} s")
    res["precision"] = precision(data, tok.vocab_size)
    pr = res["precision"]
    print(f"  precision: fp32 step {pr['fp32']['step_s']:.2f} s, bf16 autocast {pr['bf16 autocast']['step_s']:.2f} s; "
          f"matmul GFLOP/s {pr['matmul_gflops']}; bf16 units {pr['cpu_bf16_units']}")
    res["galore"] = galore_vs_adamw(data, tok, stories, steps)
    g = res["galore"]
    print("  GaLore vs AdamW: " + ", ".join(f"{k}: eval {v['eval_loss']:.3f}, state {v['optimizer_state_bytes'] / 2**20:.2f} MiB"
                                            for k, v in g.items() if isinstance(v, dict)))
    res["duplicates"] = duplicates(tok, stories, steps)
    d = res["duplicates"]
    print("  duplicates: " + ", ".join(f"{k}: eval {v['eval_loss']:.3f}" for k, v in d.items() if isinstance(v, dict)
                                       and "eval_loss" in v) + f"; dedup {d['dedup_on_first_1500_of_repeated']}")
    return res
