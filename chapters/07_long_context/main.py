"""07 · Long context: what looking far back costs, and what it buys.

Attention compares every query with every key, so a sequence of T tokens makes a T x T
matrix of scores: time and memory grow as T^2. This chapter

  1. writes attention out in full and *tiled* (FlashAttention's online softmax, block by
     block over K/V in plain PyTorch) and checks that both give the same numbers;
  2. measures time and memory against sequence length: full attention, a sliding window
     that is only a mask (costs the same!), and tiled attention that skips the blocks it
     cannot see (causal: half the work; a window: linear in T);
  3. trades compute for memory in training with activation checkpointing;
  4. trains a full-attention and a sliding-window char model on the Hundred Acre Wood and
     draws their loss at every context length against the exact floor for that context,
     and how many bits they spend on the story's ending, whose hero, colour, object and
     mood were fixed in the opening; then loss against position on natural English;
  5. on a GPU, runs the tiled forward pass as a Triton kernel next to SDPA's flash
     backend and flash-attn, in TFLOP/s.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from shared import bench, cli, stacks
from shared.corpus import HundredAcreWood, english_text
from shared.data import TokenData, load_text
from shared.errors import StackMissing, WorkbookError
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, estimate_seconds, train
from tiled_attention import (
    LargestTensor,
    attention_flops,
    attention_mask,
    full_attention,
    online_softmax,
    tiled_attention,
)


@dataclass
class Sizes:
    """Everything the presets change. Defaults are the 2-core-CPU run (~2 minutes idle)."""
    # attention benchmarks: one sequence of `bench_heads` heads of `bench_dim` dims
    bench_heads: int = 2
    bench_dim: int = 64
    bench_lengths: tuple = (256, 512, 1024, 2048, 4096)   # every method
    memory_lengths: tuple = (8192, 16384)                  # tiled methods only, memory only (full would need GBs)
    bench_window: int = 256
    block: int = 128                                       # tile size of the PyTorch tiled attention
    # activation checkpointing: one training step of a deeper GPT
    ckpt_layers: int = 6
    ckpt_seq: int = 512
    ckpt_batch: int = 4
    # the char models (Llama-shaped: RoPE, RMSNorm, SwiGLU)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 64
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 125                                       # 3 models: keeps the default under 3 minutes on 2 idle cores
    lr: float = 2e-3                                       # 3e-3 spiked early and left the full model behind
    window: int = 32                                       # the sliding-window model's window
    n_chars: int = 1_000_000
    eval_windows: int = 128                                # random windows for loss vs position
    ending_stories: int = 64                               # x 13 contexts: the biggest evaluation cost
    # the GPU part
    gpu_lengths: tuple = (1024, 2048, 4096, 8192, 16384)
    gpu_heads: int = 16
    gpu_head_dim: int = 64
    gpu_tokens: int = 16384                                # batch * T kept constant across lengths


PRESETS = {
    "quick": Sizes(bench_lengths=(128, 256, 512), memory_lengths=(1024,), bench_window=64, block=64,
                   ckpt_layers=2, ckpt_seq=128, ckpt_batch=2, n_layer=2, d_model=32, seq_len=64, batch_size=8,
                   steps=12, window=16, n_chars=60_000, eval_windows=16, ending_stories=8,
                   gpu_lengths=(512, 1024), gpu_heads=4),
    "default": Sizes(),
    "full": Sizes(bench_lengths=(512, 1024, 2048, 4096, 8192), memory_lengths=(16384, 32768), bench_window=512,
                  ckpt_layers=8, ckpt_seq=1024, ckpt_batch=8, n_layer=6, n_head=8, d_model=256, seq_len=512,
                  batch_size=32, steps=3000, lr=1e-3, window=64, n_chars=10_000_000, eval_windows=1024,
                  ending_stories=512, gpu_lengths=(1024, 2048, 4096, 8192, 16384, 32768), gpu_head_dim=128),
}


# ============================================================================ 1. the same numbers
def check_tiled_matches_full(blocks=((16, 16), (32, 8), (7, 13), (64, 64)), seed: int = 0) -> list[dict]:
    """Tiled attention == full attention == torch's SDPA, to float32 rounding, for causal,
    non-causal and windowed masks, block sizes that divide T and ones that don't, and more
    keys than queries (S > T, as when new tokens attend to a cache)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t, s in ((96, 96), (40, 96)):
        q, k, v = (torch.randn(2, 3, n, 32, generator=g) for n in (t, s, s))
        for causal, window in ((False, None), (True, None), (True, 24)):
            ref = full_attention(q, k, v, causal, window)
            mask = attention_mask(t, s, causal, window) if causal else None
            sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            worst = max((tiled_attention(q, k, v, causal, window, bq, bk) - ref).abs().max().item() for bq, bk in blocks)
            rows.append({"T": t, "S": s, "mask": "window" if window else "causal" if causal else "none",
                         "max |tiled - full|": worst, "max |full - SDPA|": (ref - sdpa).abs().max().item()})
    return rows


# ============================================================================ 2. cost vs length
def attention_methods(window: int, block: int) -> dict:
    """name -> f(q, k, v). The two 'full' ones build the whole T x T matrix; the two 'tiled'
    ones never hold more than one block x block tile; SDPA is torch's fused kernel."""
    return {
        "full (T x T scores)": lambda q, k, v: full_attention(q, k, v, causal=True),
        f"full + window {window} mask": lambda q, k, v: full_attention(q, k, v, causal=True, window=window),
        "SDPA (torch fused)": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        "tiled (online softmax)": lambda q, k, v: tiled_attention(q, k, v, True, None, block, block),
        f"tiled + window {window}": lambda q, k, v: tiled_attention(q, k, v, True, window, block, block),
    }


@torch.no_grad()
def measure_scaling(sz: Sizes, device, seed: int) -> list[dict]:
    """Time, peak memory and largest intermediate tensor of each attention method, per T."""
    methods = attention_methods(sz.bench_window, sz.block)
    jobs = [(name, t) for t in sz.bench_lengths for name in methods]
    jobs += [(name, t) for t in sz.memory_lengths for name in methods if name.startswith("tiled")]
    rows = []
    for name, t in tqdm(jobs, desc="attention cost vs T", leave=False):
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, sz.bench_heads, t, sz.bench_dim, generator=g).to(device) for _ in range(3))
        fn = methods[name]
        with LargestTensor() as lt:            # deterministic: how big is the biggest tensor made?
            fn(q, k, v)
        with bench.peak_memory(device) as mem:  # measured: how much did memory actually grow?
            fn(q, k, v)
        timed = t in sz.bench_lengths
        seconds = bench.time_fn(lambda: fn(q, k, v), device, warmup=1, repeat=3) if timed else None
        window = sz.bench_window if "window" in name else None
        opaque = name.startswith("SDPA")       # a fused C++ kernel: its insides are invisible to Python
        rows.append({"method": name, "T": t, "seconds": seconds, "peak_bytes": mem.bytes,
                     "largest_tensor_bytes": None if opaque else lt.bytes, "flops": attention_flops(1, sz.bench_heads, t, t, sz.bench_dim,
                                                                                 True, window)})
    return rows


# ============================================================================ 3. recomputation
class Checkpointed(nn.Module):
    """A block whose forward keeps no activations for backward: only its input is kept, and
    backward runs the block's forward a second time to get them back (Chen et al. 2016)."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x, **kwargs):
        return checkpoint(self.block, x, use_reentrant=False, **kwargs)


@contextmanager
def activation_checkpointing(model: GPT):
    """Inside the `with`, every block of `model` is checkpointed (same parameters)."""
    plain = model.blocks
    model.blocks = nn.ModuleList(Checkpointed(b) for b in plain)
    try:
        yield model
    finally:
        model.blocks = plain


def training_step(model: GPT, x: torch.Tensor, y: torch.Tensor) -> float:
    model.zero_grad(set_to_none=True)
    loss = model(x, y)[1]
    loss.backward()
    return loss.item()


def measure_checkpointing(sz: Sizes, vocab: int, device, seed: int) -> dict:
    """Peak memory and time of one training step, plain and with every block checkpointed,
    and the largest gradient difference between the two (recomputing is exact)."""
    torch.manual_seed(seed)
    model = GPT(char_config(sz, vocab, n_layer=sz.ckpt_layers, block_size=sz.ckpt_seq)).to(device)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(vocab, (sz.ckpt_batch, sz.ckpt_seq), generator=g).to(device)
    y = torch.randint(vocab, (sz.ckpt_batch, sz.ckpt_seq), generator=g).to(device)
    out = {"layers": sz.ckpt_layers, "seq_len": sz.ckpt_seq, "batch": sz.ckpt_batch, "params": model.num_params()}
    grads = {}
    for mode in ("plain", "checkpointed"):
        ctx = activation_checkpointing(model) if mode == "checkpointed" else _nothing()
        with ctx:
            training_step(model, x, y)                                   # warm-up (allocates grads)
            with bench.peak_memory(device) as mem:
                training_step(model, x, y)
            seconds = bench.time_fn(lambda: training_step(model, x, y), device, warmup=0, repeat=3)
            grads[mode] = [p.grad.detach().clone() for p in model.parameters()]
        out[mode] = {"peak_bytes": mem.bytes, "seconds": seconds}
    out["max_grad_diff"] = max((a - b).abs().max().item() for a, b in zip(grads["plain"], grads["checkpointed"]))
    return out


@contextmanager
def _nothing():
    yield


# ============================================================================ 4. what context buys
def char_config(sz: Sizes, vocab: int, window: int | None = None, **overrides) -> GPTConfig:
    shape = dict(vocab_size=vocab, n_layer=sz.n_layer, n_head=sz.n_head, d_model=sz.d_model, block_size=sz.seq_len,
                 pos="rope", norm="rmsnorm", activation="swiglu", window=window)
    return GPTConfig(**{**shape, **overrides})


def train_char_model(name: str, data: TokenData, vocab: int, sz: Sizes, run, window: int | None = None) -> tuple:
    """Train on *random* windows (not aligned to story starts): we score every position of
    random windows later, so the model must be used to starting mid-story."""
    torch.manual_seed(run.seed)
    model = GPT(char_config(sz, vocab, window))
    tcfg = TrainConfig(steps=sz.steps, batch_size=sz.batch_size, seq_len=sz.seq_len, lr=sz.lr,
                       warmup=max(1, sz.steps // 8), eval_every=max(1, sz.steps // 3), eval_batches=4,
                       aligned=False, seed=run.seed)
    history = train(model, data, tcfg, run.device, desc=name, measure_peak=False)
    print(f"{name}: final val loss {history['val'][-1]['loss']:.4f} nats/char, "
          f"{history['tokens_per_s']:,.0f} tokens/s")
    return model.eval(), history


@torch.no_grad()
def loss_by_position(model: GPT, ids: np.ndarray, length: int, n_windows: int, device, seed: int,
                     batch: int = 16) -> dict:
    """Mean loss (nats) at each position of `n_windows` random windows of `length` tokens:
    the prediction at position p has p+1 tokens of context."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(ids) - length - 1, (n_windows,), generator=g).numpy()
    total = torch.zeros(length, dtype=torch.float64)
    total_sq = torch.zeros(length, dtype=torch.float64)
    for i in range(0, n_windows, batch):
        rows = np.stack([ids[s:s + length + 1] for s in starts[i:i + batch]]).astype(np.int64)
        xy = torch.from_numpy(rows).to(device)
        logits = model(xy[:, :-1]).float()
        nll = F.cross_entropy(logits.transpose(1, 2), xy[:, 1:], reduction="none").double().cpu()  # (b, length)
        total += nll.sum(0)
        total_sq += (nll ** 2).sum(0)
    mean = total / n_windows
    std = (total_sq / n_windows - mean ** 2).clamp(min=0).sqrt()
    return {"context": list(range(1, length + 1)), "loss": mean.tolist(), "stderr": (std / math.sqrt(n_windows)).tolist()}


ENDING_PREFIX = "In the evening, "   # the ending sentence starts so; the hero's name comes next


def ending_cost(model: GPT, tok, stories, contexts, device) -> dict:
    """Bits the model spends on each story's ending after the words 'In the evening, '
    (hero, verb, colour, object), when it sees `c` characters before the ending sentence.

    Everything in that stretch is fixed by the opening except the verb (1 bit: one of two
    for the mood), so a perfect model pays 1 bit when the opening is in view, and the bits
    of every fact whose word has slid out of view: 3 each for hero, colour and object,
    log2(6) - 1 more for the verb when the mood is gone. That floor is exact per story."""
    stream = "".join(s.text for s in stories)
    ids = np.array(tok.encode(stream), dtype=np.int64)
    items, start = [], 0
    for st in stories:
        end_start = start + len(st.text) - 1 - len(st.ending.text)       # index of "In the evening"
        items.append((st, start, end_start, end_start + len(st.ending.text)))
        start += len(st.text)
    first = next(i for i, it in enumerate(items) if it[2] >= max(contexts))  # enough text before it
    items = items[first:]
    out = {"context": list(contexts), "model_bits": [], "floor_bits": [], "stories": len(items)}
    for c in contexts:
        model_bits, floor_bits = [], []
        windows = [ids[e0 - c:e1] for _, _, e0, e1 in items]
        for i in range(0, len(windows), 32):
            chunk = windows[i:i + 32]
            width = max(len(w) for w in chunk)
            x = torch.zeros(len(chunk), width, dtype=torch.long)
            for r, w in enumerate(chunk):                       # right-padding: causal, never seen
                x[r, :len(w)] = torch.from_numpy(w)
            logits = model(x[:, :-1].to(device)).float()
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:].to(device), reduction="none").cpu()
            for r, w in enumerate(chunk):
                first_scored = c + len(ENDING_PREFIX)            # window index of the hero's first char
                model_bits.append(nll[r, first_scored - 1:len(w) - 1].sum().item() / math.log(2))
        for st, s0, e0, _ in items:
            floor_bits.append(_ending_floor_bits(st, window_start=e0 - c, story_start=s0))
        out["model_bits"].append(float(np.mean(model_bits)))
        out["floor_bits"].append(float(np.mean(floor_bits)))
    return out


def _ending_floor_bits(story, window_start: int, story_start: int) -> float:
    """1 bit for the ending verb, plus each fact whose word in the opening lies wholly before
    the window (a fact counts as seen if any of its characters is in view: a lower bound)."""
    o = story.opening
    text = o.text                                          # "On a {mood} day, {hero} had a {color} {object}."
    mood_end = len("On a ") + len(o.get("mood"))
    hero_end = text.index(" had a ")
    color_end = hero_end + len(" had a ") + len(o.get("color"))
    object_end = len(text) - 1
    bits = 1.0
    for end, extra in ((mood_end, math.log2(6) - 1), (hero_end, 3.0), (color_end, 3.0), (object_end, 3.0)):
        if story_start + end <= window_start:               # its last character is out of view
            bits += extra
    return bits


# ============================================================================ 5. on a GPU
def gpu_part(run, sz: Sizes) -> dict:
    """The Triton kernel, checked against torch and timed against SDPA-flash and flash-attn."""
    try:
        stacks.require("triton")
    except StackMissing as e:
        return {"skipped": stacks.skipped(e, "the Triton attention kernel and GPU benchmark")}
    if run.device.type != "cuda":
        line = (f"skipped: the Triton attention kernel and GPU benchmark — this run is on {run.device.type}; "
                f"enable with: --device cuda")
        print(line, flush=True)
        return {"skipped": line}
    import gpu_bench  # imports triton: only now that CUDA is known to be here

    return gpu_bench.run_all(run.device, sz, seed=run.seed)


# ============================================================================ the lesson, in order
def main(argv=None):
    p = cli.parser("07_long_context", __doc__)
    p.add_argument("--window", type=int, default=None,
                   help="window of the sliding-window model (default: the preset's, 32 on the default run)")
    p.add_argument("--block", type=int, default=None, help="tile size of the PyTorch tiled attention")
    run = cli.setup(p, argv)
    sz = Sizes(**{**asdict(run.pick(PRESETS["quick"], PRESETS["default"], PRESETS["full"]))})
    if run.args.window is not None:
        sz.window = run.args.window
    if run.args.block is not None:
        sz.block = run.args.block
    if sz.window < 1 or sz.window > sz.seq_len:
        raise WorkbookError(f"--window {sz.window}: choose a window between 1 and the training length {sz.seq_len}")
    if sz.block < 1:
        raise WorkbookError(f"--block {sz.block}: a tile needs at least one row")
    device = run.device

    # -- 1. Online softmax, then tiled attention == full attention ------------------------
    demo_x = torch.randn(24, generator=torch.Generator().manual_seed(run.seed)) * 2
    trace = online_softmax(demo_x, block=6)
    print(f"online softmax over 4 blocks of 6: running max {[round(m, 3) for m in trace.running_max]}, "
          f"running sum {[round(v, 3) for v in trace.running_sum]}; "
          f"max |online - torch.softmax| = {(trace.softmax - demo_x.softmax(0)).abs().max().item():.1e}")
    correctness = check_tiled_matches_full(seed=run.seed)
    worst = max(r["max |tiled - full|"] for r in correctness)
    print(cli.markdown_table(correctness, ".1e"))
    if worst > 1e-5:
        raise AssertionError(f"tiled attention differs from full attention by {worst:.2e} (> 1e-5): a bug")
    print(f"tiled attention == full attention (worst difference {worst:.1e}, float32)")

    # -- 2. Time and memory against sequence length ---------------------------------------------
    longest = max(sz.bench_lengths)
    run.estimate(seconds=4 * 5 * 4 * sz.bench_heads * sz.bench_dim * longest ** 2 / 3e10,
                 memory_bytes=3 * sz.bench_heads * longest ** 2 * 4, what="attention cost vs T")
    scaling = measure_scaling(sz, device, run.seed)

    # -- 3. Activation checkpointing: memory for compute -----------------------------------------
    ckpt = measure_checkpointing(sz, vocab=64, device=device, seed=run.seed)
    print(f"checkpointing: peak {ckpt['plain']['peak_bytes'] / 2**20:.0f} -> "
          f"{ckpt['checkpointed']['peak_bytes'] / 2**20:.0f} MiB, step {ckpt['plain']['seconds']:.2f} -> "
          f"{ckpt['checkpointed']['seconds']:.2f} s, max grad difference {ckpt['max_grad_diff']:.1e}")

    # -- 4. What a longer context buys: Hundred Acre Wood, full vs sliding window ---------------
    wood = HundredAcreWood()
    text = load_text("wood", n_chars=sz.n_chars, seed=run.seed)
    eval_stories = wood.stories(max(40, 2 * sz.ending_stories), seed=run.seed + 1)
    tok = CharTokenizer.from_text(text + "".join(s.text for s in eval_stories))
    data = TokenData.from_text(text, tok, doc_separator="\n")
    probe = GPT(char_config(sz, tok.vocab_size))
    tcfg = TrainConfig(steps=sz.steps, batch_size=sz.batch_size, seq_len=sz.seq_len, eval_every=max(1, sz.steps // 3),
                       eval_batches=4)
    run.estimate(seconds=3 * estimate_seconds(probe, tcfg, device, mfu=0.15),
                 what="training three char models (wood full, wood window, English)")
    models, histories = {}, {}
    models["full"], histories["full"] = train_char_model("wood, full attention", data, tok.vocab_size, sz, run)
    models["window"], histories["window"] = train_char_model(f"wood, window {sz.window}", data, tok.vocab_size, sz,
                                                             run, window=sz.window)

    eval_len = 2 * sz.seq_len          # past the trained length: does the model extrapolate?
    floor = wood.floor_vs_context(list(range(1, eval_len + 1)))
    contexts = [c for c in (8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 448) if c + 64 <= eval_len]
    wood_eval = {}
    for name, model in tqdm(models.items(), desc="evaluating", leave=False):
        wood_eval[name] = {
            "by_position": loss_by_position(model, data.val, eval_len, sz.eval_windows, device, run.seed),
            "ending": ending_cost(model, tok, eval_stories, contexts, device),
            "stories": story_loss(model, tok, wood.stories(200, seed=run.seed + 2), device),
        }
        st = wood_eval[name]["stories"]
        print(f"{name}: whole stories {st['model_nats_per_char']:.4f} nats/char vs exact floor "
              f"{st['floor_nats_per_char']:.4f} (gap {st['gap_nats_per_char']:.4f}, {st['stories']} stories)")

    # -- 4b. Natural English: loss against position ----------------------------------------------
    eng_text = english_text()
    eng_tok = CharTokenizer.from_text(eng_text)
    eng_data = TokenData.from_text(eng_text, eng_tok)
    eng_model, eng_history = train_char_model("English, full attention", eng_data, eng_tok.vocab_size, sz, run)
    english = loss_by_position(eng_model, eng_data.val, eval_len, sz.eval_windows, device, run.seed)

    # -- 5. On a GPU: the Triton kernel -------------------------------------------------------------
    gpu = gpu_part(run, sz)

    # -- results -----------------------------------------------------------------------------------
    headline = _headline(scaling, ckpt, wood_eval, floor, histories, sz, worst, gpu)
    run.save_results({
        "headline": headline, "sizes": asdict(sz), "online_softmax": {"x": demo_x.tolist(), "block": 6,
                                                                        **{k: v for k, v in vars(trace).items()}},
        "correctness": correctness, "scaling": scaling, "checkpointing": ckpt,
        "floor": floor, "wood": wood_eval, "english": {"by_position": english},
        "histories": {"wood full": histories["full"], f"wood window {sz.window}": histories["window"],
                      "English full": eng_history},
        "gpu": gpu,
    })
    run.record_notes(_notes(headline, scaling, ckpt, wood_eval, sz, gpu))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def _headline(scaling, ckpt, wood_eval, floor, histories, sz, worst, gpu) -> dict:
    by = {(r["method"], r["T"]): r for r in scaling}
    t_max = max(sz.bench_lengths)
    mem_full = by[("full (T x T scores)", t_max)]["largest_tensor_bytes"]
    mem_tiled = by[("tiled (online softmax)", t_max)]["largest_tensor_bytes"]
    full_end, win_end = wood_eval["full"]["ending"], wood_eval["window"]["ending"]
    h = {
        "tiled_vs_full_max_abs_diff": worst,
        f"largest_tensor_MiB_full_T{t_max}": mem_full / 2**20,
        f"largest_tensor_MiB_tiled_T{t_max}": mem_tiled / 2**20,
        "checkpointing_peak_ratio": ckpt["checkpointed"]["peak_bytes"] / max(1, ckpt["plain"]["peak_bytes"]),
        "checkpointing_time_ratio": ckpt["checkpointed"]["seconds"] / ckpt["plain"]["seconds"],
        "full_val_loss": histories["full"]["val"][-1]["loss"],
        "window_val_loss": histories["window"]["val"][-1]["loss"],
        "full_story_gap_nats_per_char": wood_eval["full"]["stories"]["gap_nats_per_char"],
        "window_story_gap_nats_per_char": wood_eval["window"]["stories"]["gap_nats_per_char"],
        f"full_ending_bits_c{full_end['context'][-1]}": full_end["model_bits"][-1],
        f"window_ending_bits_c{win_end['context'][-1]}": win_end["model_bits"][-1],
        f"floor_ending_bits_c{full_end['context'][-1]}": full_end["floor_bits"][-1],
    }
    if "best_tflops" in gpu:
        h.update({f"gpu_{k}": v for k, v in gpu["best_tflops"].items()})
    return h


def _notes(headline, scaling, ckpt, wood_eval, sz, gpu) -> str:
    rows = [{"method": r["method"], "T": r["T"], "ms": None if r["seconds"] is None else round(1e3 * r["seconds"], 2),
             "peak MiB (measured)": round(r["peak_bytes"] / 2**20, 1),
             "largest tensor MiB": ("(fused kernel)" if r["largest_tensor_bytes"] is None
                                    else round(r["largest_tensor_bytes"] / 2**20, 2))} for r in scaling]
    ck = [{"step": m, "peak MiB": round(ckpt[m]["peak_bytes"] / 2**20, 1), "seconds": round(ckpt[m]["seconds"], 3)}
          for m in ("plain", "checkpointed")]
    ends = []
    for i, c in enumerate(wood_eval["full"]["ending"]["context"]):
        ends.append({"chars before ending": c, "floor bits": round(wood_eval["full"]["ending"]["floor_bits"][i], 2),
                     "full model bits": round(wood_eval["full"]["ending"]["model_bits"][i], 2),
                     f"window {sz.window} bits": round(wood_eval["window"]["ending"]["model_bits"][i], 2)})
    stories = [{"model": k, **{kk: round(v, 4) if isinstance(v, float) else v for kk, v in wood_eval[k]["stories"].items()}}
               for k in wood_eval]
    parts = ["### Headline", cli.markdown_table([{"metric": k, "value": v} for k, v in headline.items()]),
             "### Attention cost vs sequence length (one sequence, "
             f"{sz.bench_heads} heads x {sz.bench_dim} dims, float32)", cli.markdown_table(rows),
             f"### Activation checkpointing ({ckpt['layers']} layers, batch {ckpt['batch']} x {ckpt['seq_len']} tokens;"
             f" max gradient difference {ckpt['max_grad_diff']:.1e})", cli.markdown_table(ck),
             "### Whole stories: model vs exact floor (nats/char)", cli.markdown_table(stories),
             "### Bits spent on the ending (after 'In the evening, ') vs characters of context before it",
             cli.markdown_table(ends)]
    if "rows" in gpu:
        parts += ["### GPU attention forward", cli.markdown_table(gpu["rows"])]
    else:
        parts += [f"GPU part: {gpu.get('skipped', '')}"]
    return "\n\n".join(parts)


if __name__ == "__main__":
    cli.run_main(main)
