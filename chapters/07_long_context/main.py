"""07 · Long context: what looking far back costs, and what it buys.

Attention compares every query with every key, so T tokens make a T x T matrix of scores: time
and memory grow as T². This chapter writes attention out in full and *tiled* (FlashAttention's
online softmax, block by block over K/V, in plain PyTorch) and checks they agree; measures time
and memory against T (a sliding window that is only a mask costs the same as full attention;
tiles that are skipped, not masked, make it linear); trades compute for training memory with
activation checkpointing. Then what context buys: on a key-value recall task whose best possible
loss is known exactly for every context length, one small model trained on 32-token and on
128-token sequences and a sliding-window one, evaluated out to 1024 tokens. On a GPU the tiled
forward also runs as a Triton kernel next to SDPA's flash backend and flash-attn.

Read `tiled_attention.py` first (full, online softmax, tiled), then `key_value_recall.py` (the
task and its floor), `attention_cost.py` and `recomputation.py`, then this file. Run it whole with
`uv run chapters/07_long_context/main.py`, or cell by cell (# %%) in VS Code / PyCharm / Jupyter.
"""
# %% Setup: the experiment's knobs, one Config per preset
from dataclasses import dataclass

import torch

from attention_cost import measure_scaling, tiled_vs_full
from key_value_recall import KeyValueRecall, answer_loss_by_context, band
from recomputation import measure_checkpointing
from shared import cli, stacks
from shared.errors import StackMissing, self_check
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, estimate_seconds, train
from tiled_attention import online_softmax


@dataclass(frozen=True)
class Config:
    # 1-2. attention cost: one sequence of bench_heads heads x bench_dim dims
    bench_heads: int = 2
    bench_dim: int = 64
    bench_lengths: tuple = (256, 512, 1024, 2048, 4096)   # every method, timed
    memory_lengths: tuple = (8192, 16384)                  # tiled methods only, memory only
    bench_window: int = 256
    block: int = 128                                       # tile size of the PyTorch tiled attention
    # 3. activation checkpointing: one training step of a deeper GPT
    ckpt_layers: int = 6
    ckpt_seq: int = 512
    ckpt_batch: int = 4
    # 4. what context buys: key-value recall (key_value_recall.py)
    keys: int = 16
    values: int = 8
    short_len: int = 32                                    # "trained on short sequences"
    long_len: int = 128                                    # ... and on 4x longer ones
    window: int = 16                                       # the sliding-window model's window
    eval_len: int = 1024                                   # evaluated out to 8x the longer length
    eval_sequences: int = 1024
    steps: int = 300
    tokens_per_step: int = 4096                            # batch = this / length: same tokens for every model
    lr: float = 1e-2                                       # high, but this one-layer model likes it
    n_layer: int = 1                                       # one layer is enough to recall (one head that matches)
    n_head: int = 4
    d_model: int = 64
    # 5. the GPU part (gpu_bench.py; scripts/gpu_check.py copies these)
    gpu_lengths: tuple = (1024, 2048, 4096, 8192, 16384)
    gpu_heads: int = 16
    gpu_head_dim: int = 64
    gpu_tokens: int = 16384                                # batch x T kept constant across lengths


PRESETS = {
    "quick": Config(bench_lengths=(128, 256, 512), memory_lengths=(1024,), bench_window=64, block=64,
                    ckpt_layers=2, ckpt_seq=128, ckpt_batch=2, short_len=16, long_len=32, window=8,
                    eval_len=128, eval_sequences=32, steps=30, tokens_per_step=1024,
                    gpu_lengths=(512, 1024), gpu_heads=4),
    "default": Config(),
    "full": Config(bench_lengths=(512, 1024, 2048, 4096, 8192), memory_lengths=(16384, 32768), bench_window=512,
                   ckpt_layers=8, ckpt_seq=1024, ckpt_batch=8, keys=64, values=16, short_len=128, long_len=512,
                   window=64, eval_len=4096, eval_sequences=1024, steps=2000, tokens_per_step=32768, lr=3e-3,
                   n_layer=2, n_head=8, d_model=256, gpu_lengths=(1024, 2048, 4096, 8192, 16384, 32768),
                   gpu_head_dim=128),
}

run = cli.start(PRESETS,
                cli.flag("--window", type=cli.positive_int, help="window of the sliding-window model (default 16)"),
                cli.flag("--block", type=cli.positive_int, help="tile size of the PyTorch tiled attention"),
                cli.flag("--steps", type=cli.positive_int, help="training steps of each recall model"))
cfg = run.cfg
task = KeyValueRecall(cfg.keys, cfg.values)
MODELS = {f"full, trained on {cfg.short_len}": (cfg.short_len, None),   # name -> (training length, window)
          f"window {cfg.window}, trained on {cfg.short_len}": (cfg.short_len, cfg.window),
          f"full, trained on {cfg.long_len}": (cfg.long_len, None)}


def recall_model(window) -> GPT:
    """A Llama-shaped model (RoPE, RMSNorm, SwiGLU); RoPE has no table, so it runs at any length."""
    return GPT(GPTConfig(vocab_size=task.vocab_size, block_size=cfg.long_len, n_layer=cfg.n_layer,
                         n_head=cfg.n_head, d_model=cfg.d_model, pos="rope", norm="rmsnorm", activation="swiglu",
                         window=window))


def train_config(length: int) -> TrainConfig:
    return TrainConfig(steps=cfg.steps, batch_size=cfg.tokens_per_step // length, seq_len=length, lr=cfg.lr,
                       warmup=max(1, cfg.steps // 10), eval_every=max(1, cfg.steps // 15), eval_batches=2,
                       seed=run.seed)


longest = max(cfg.bench_lengths)
run.estimate(4 * 5 * 4 * cfg.bench_heads * cfg.bench_dim * longest ** 2 / 3e10
             + sum(estimate_seconds(recall_model(w), train_config(t), run.device, mfu=0.05)
                   for t, w in MODELS.values()),
             memory_bytes=3 * cfg.bench_heads * longest ** 2 * 4, what="the whole chapter")

# %% 1. Online softmax, then tiled attention == full attention
with run.section("1. Online softmax; tiled attention == full attention"):
    demo = torch.randn(24, generator=torch.Generator().manual_seed(run.seed)) * 2
    trace = online_softmax(demo, block=6)
    softmax_error = (trace.softmax - demo.softmax(0)).abs().max().item()
    print(f"online softmax over 4 blocks of 6: running max {[round(m, 3) for m in trace.running_max]}, "
          f"running sum {[round(v, 3) for v in trace.running_sum]}; max |online - torch.softmax| = {softmax_error:.1e}")
    correctness = tiled_vs_full(seed=run.seed)
    worst = max(r["max |tiled - full|"] for r in correctness)
    self_check(softmax_error < 1e-6, f"online softmax differs from torch.softmax by {softmax_error:.1e}")
    self_check(worst < 1e-5, f"tiled attention differs from full attention by {worst:.2e} (> 1e-5)")
    print(f"tiled attention == full attention == SDPA (worst difference {worst:.1e}, float32)")

# %% 2. Time and memory against sequence length
with run.section("2. Attention cost vs sequence length"):
    scaling = measure_scaling(cfg.bench_lengths, cfg.memory_lengths, cfg.bench_heads, cfg.bench_dim,
                              cfg.bench_window, cfg.block, run.device, run.seed)
    for r in scaling:
        if r["T"] == longest:
            largest = "fused" if r["largest_tensor_bytes"] is None else f"{r['largest_tensor_bytes'] / 2**20:.1f} MiB"
            print(f"T={longest} {r['method']:>24}: {1e3 * r['seconds']:7.1f} ms, largest tensor {largest}")

# %% 3. Activation checkpointing: memory for compute
with run.section("3. Activation checkpointing"):
    torch.manual_seed(run.seed)
    deep = GPT(GPTConfig(vocab_size=64, n_layer=cfg.ckpt_layers, n_head=4, d_model=64, block_size=cfg.ckpt_seq,
                         pos="rope", norm="rmsnorm", activation="swiglu")).to(run.device)
    g = torch.Generator().manual_seed(run.seed)
    x, y = (torch.randint(64, (cfg.ckpt_batch, cfg.ckpt_seq), generator=g).to(run.device) for _ in range(2))
    ckpt = {"layers": cfg.ckpt_layers, "seq_len": cfg.ckpt_seq, "batch": cfg.ckpt_batch,
            **measure_checkpointing(deep, x, y, run.device)}
    self_check(ckpt["max_grad_diff"] < 1e-6, f"checkpointed gradients differ by {ckpt['max_grad_diff']:.1e}")
    print(f"checkpointing: peak {ckpt['plain']['peak_bytes'] / 2**20:.0f} -> "
          f"{ckpt['checkpointed']['peak_bytes'] / 2**20:.0f} MiB, step {ckpt['plain']['seconds']:.2f} -> "
          f"{ckpt['checkpointed']['seconds']:.2f} s, max gradient difference {ckpt['max_grad_diff']:.1e}")

# %% 4. What context buys: train short, train long, slide a window; evaluate far past the training length
with run.section("4. Key-value recall: loss vs context, against the exact floor"):
    print(f"task: {cfg.keys} keys x {cfg.values} values, a fresh table per sequence; floor "
          f"{task.floor(0):.3f} nats with no context, {task.floor(cfg.short_len):.3f} at {cfg.short_len} tokens, "
          f"{task.floor(cfg.long_len):.3f} at {cfg.long_len}")
    recall = {}
    for name, (length, window) in MODELS.items():
        torch.manual_seed(run.seed)
        model = recall_model(window)
        history = train(model, task, train_config(length), run.device, desc=name, measure_peak=False)
        by_context = answer_loss_by_context(model, task, cfg.eval_len, cfg.eval_sequences, run.device,
                                            seed=run.seed + 1, window=window)
        recall[name] = {"trained_len": length, "window": window, "by_context": by_context,
                        "history": {"step": history["step"], "train_loss": history["train_loss"],
                                    "val": history["val"], "tokens_per_s": history["tokens_per_s"]}}
        inside, far = band(by_context, 1, length + 1), band(by_context, cfg.eval_len // 2, cfg.eval_len + 1)
        print(f"{name}: {inside['loss']:.3f} nats per answer within its training length (best possible "
              f"{inside['floor_seen']:.3f}), {far['loss']:.3f} at {cfg.eval_len // 2}-{cfg.eval_len} tokens "
              f"(best possible {far['floor_seen']:.3f})")

# %% 5. On a GPU: the Triton kernel next to SDPA-flash and flash-attn
with run.section("5. GPU: the Triton kernel"):
    try:
        stacks.require("triton")
        if run.device.type != "cuda":
            raise StackMissing("triton", f"this run is on {run.device.type}", "--device cuda on a CUDA machine")
        import gpu_bench  # imports triton: only now that CUDA is known to be here

        gpu = gpu_bench.run_all(run.device, cfg, seed=run.seed)
    except StackMissing as e:
        gpu = {"skipped": stacks.skipped(e, "the Triton attention kernel and GPU benchmark")}

# %% Results -> notes.md -> plots
run.finish({"online_softmax": {"x": demo.tolist(), "block": 6, "running_max": trace.running_max,
                               "running_sum": trace.running_sum, "softmax": trace.softmax.tolist()},
            "correctness": correctness, "scaling": scaling, "checkpointing": ckpt,
            "recall": {"keys": cfg.keys, "values": cfg.values, "vocab_size": task.vocab_size, "models": recall},
            "gpu": gpu})
