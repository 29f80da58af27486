"""15 · Stacks: one trained model carried into several inference stacks, checked to compute the same
function, then raced on the same prompts.

  1. the zoo's Llama-shaped `wood-llama`, its prompts, and its Hugging Face export;
  2. for each stack (plain PyTorch with the workbook KV cache as the reference, Hugging Face
     transformers' `generate()`, DeepSpeed inference, llama.cpp on a GGUF file, vLLM on a CUDA GPU):
     import cost, load time, peak memory, logit parity with PyTorch, then time to first token,
     per-token latency and tokens/s over a batch-size sweep and a prompt-length sweep. A stack this
     machine cannot run is one `skipped:` line naming the command that enables it;
  3. a GPT-2-shaped Hugging Face folder loaded into the workbook model, logits matched.

`--chat` serves a model as a streaming chat page on 127.0.0.1 instead (chat.py).
Read `engines.py` first (one adapter per stack), then `stack_bench.py` (porting, parity, timing),
then this file. Run it whole with `uv run chapters/15_stacks/main.py`, or cell by cell (# %%).
"""
# %% Setup: the experiment's knobs, one Config per preset
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared import cli, stacks, zoo
from shared.errors import StackMissing, WorkbookError, self_check
from stack_bench import STACK_KEY, STACKS, bench_stack, export_hf, gpt2_parity, reference_tokens

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)   # the real 124M layout


@dataclass(frozen=True)
class Config:
    model: str = "wood-llama"                 # the zoo model every stack runs (Llama-shaped, for llama.cpp)
    stacks: tuple = STACKS                    # PyTorch always runs first: it is the reference
    batch_sizes: tuple = (1, 4, 16, 64)       # throughput sweep, at the middle prompt length
    contexts: tuple = (16, 64, 192)           # prompt-length sweep, at batch 1
    new_tokens: int = 32                      # generated per measurement
    repeats: int = 3                          # timed runs per point (after one warm-up); the median is kept
    gpt2_layout: dict = field(default_factory=lambda: {**GPT2_SMALL, "n_embd": 192})


PRESETS = {
    "quick": Config(batch_sizes=(1, 4), contexts=(8, 32), new_tokens=8, repeats=1,
                    gpt2_layout=dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128)),
    "default": Config(),
    "full": Config(batch_sizes=(1, 8, 32, 128, 256), contexts=(64, 256, 768), new_tokens=128, repeats=5,
                   gpt2_layout=GPT2_SMALL),
}
PARITY_TOL = {"hf": 1e-4, "deepspeed": 1e-4, "llama.cpp": 1e-3}   # max |Δlogit| to PyTorch (float32)

run = cli.start(
    PRESETS,
    cli.flag("--model", help="zoo model to port (Llama-shaped for llama.cpp)"),
    cli.flag("--stacks", type=cli.names_from(STACKS), help=f"comma list from {', '.join(STACKS)}"),
    cli.flag("--batch-sizes", type=cli.int_list, help="batch-size sweep, e.g. 1,4,16,64"),
    cli.flag("--contexts", type=cli.int_list, help="prompt-length sweep, e.g. 16,64,192"),
    cli.flag("--new-tokens", type=cli.in_range(2, 100_000, int),
             help="tokens generated per measurement (>= 2: the first is TTFT, the rest decode)"),
    cli.flag("--gpt2", type=Path, help="a local Hugging Face GPT-2 folder to load and check (never downloaded)"),
    cli.flag("--chat", action="store_true", help="serve a streaming chat page instead of benchmarking"),
    cli.flag("--chat-model", help="zoo model name or local HF folder for --chat (default: --model)"),
    cli.flag("--port", type=cli.in_range(0, 65535, int), help="--chat port on 127.0.0.1 (default 8015; 0: any)"),
)
cfg = run.cfg
if run.args.gpt2 is not None and not (run.args.gpt2 / "config.json").exists():
    raise WorkbookError(f"--gpt2 {run.args.gpt2} is not a Hugging Face model folder (no config.json)")


def quiet_libraries() -> None:
    """transformers' progress bars and DeepSpeed's INFO lines would bury the lesson's output."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


quiet_libraries()
if run.args.chat:   # the chat page instead of the benchmark; Ctrl+C ends it
    import chat

    chat.serve_forever(chat.load_chat_model(run.args.chat_model or cfg.model, run),
                       port=8015 if run.args.port is None else run.args.port)
    raise SystemExit(0)

# %% 1. The model every stack runs, the prompts, and its Hugging Face export
with run.section("1. The model, its prompts, its Hugging Face folder"):
    bundle = zoo.load(cfg.model, run)
    model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
    max_len = max(cfg.contexts) + cfg.new_tokens
    if max_len > model.cfg.block_size and model.cfg.pos == "learned":
        raise WorkbookError(f"longest context + new tokens = {max_len} exceeds block_size={model.cfg.block_size}")
    base_ctx = cfg.contexts[len(cfg.contexts) // 2]     # the batch sweep's prompt length
    g = torch.Generator().manual_seed(run.seed)
    prompts = {"batch": {b: bundle.data.get_batch("val", b, base_ctx, g)[0] for b in cfg.batch_sizes},
               "context": {c: bundle.data.get_batch("val", 1, c, g)[0] for c in cfg.contexts},
               "parity": bundle.data.get_batch("val", 1, max(cfg.contexts), g)[0],
               "warm": bundle.data.get_batch("val", 1, base_ctx, g)[0]}
    folder = export_hf(model, run.checkpoints / run.chapter / f"{cfg.model}-{run.preset}-hf")
    model.to(run.device)
    names = ["pytorch"] + [s for s in cfg.stacks if s != "pytorch"]
    live = [n for n in names if n in ("pytorch", "hf") or stacks.available(STACK_KEY.get(n, n))]
    points = len(cfg.batch_sizes) + len(cfg.contexts)
    step_s = 4e-3   # a decode step of a tiny model: mostly Python and dispatch
    run.estimate(len(live) * (points * (cfg.repeats + 1) * cfg.new_tokens * step_s + 20),
                 what=f"{len(live)} runnable stacks x {points} sweep points")
    print(f"{cfg.model}: {model.num_params():,} parameters, exported to {folder}")

# %% 2. Port, check and time each stack (PyTorch first: every other stack is compared with it)
with run.section("2. Port, check and time each stack"):
    rows, skipped, reference, ref_tokens = [], [], None, None
    for name in names:
        try:
            row, engine = bench_stack(name, model, tok, run.device, folder, prompts, cfg.new_tokens, cfg.repeats,
                                      max_len, reference, ref_tokens, threads=torch.get_num_threads())
        except StackMissing as e:
            line = stacks.skipped(e, what=name)
            skipped.append({"stack": name, "why": e.why, "enable": e.enable, "line": line})
            continue
        if name == "pytorch":
            reference, ref_tokens = engine, reference_tokens(row)
        diff = row["parity"]["max_abs_logit_diff"]
        if name in PARITY_TOL and diff is not None:
            self_check(diff < PARITY_TOL[name], f"{name}'s logits differ from PyTorch's by {diff:.2e} "
                                                f"(> {PARITY_TOL[name]:g}): the port is wrong")
        print(f"  {name:>10}: load {row['load_s']:.2f} s, peak +{row['peak_mem_mb']:.0f} MB, "
              f"max|Δlogit| vs PyTorch {diff if diff is None else f'{diff:.2e}'}", flush=True)
        if row.get("kernel_injection", "ok") != "ok":
            print(f"skipped: deepspeed kernel injection — {row['kernel_injection']}")
        rows.append(row)

# %% 3. GPT-2 weights in the workbook model
with run.section("3. A GPT-2 folder in the workbook model"):
    with tempfile.TemporaryDirectory(prefix="ch15-") as scratch:
        gpt2 = gpt2_parity(cfg.gpt2_layout, run.seed, Path(scratch), run.args.gpt2)
    self_check(gpt2["max_abs_logit_diff"] < 1e-4 * max(1.0, gpt2["logit_scale"]),
               f"the workbook GPT-2 differs from GPT2LMHeadModel by {gpt2['max_abs_logit_diff']:.2e}")
    print(f"GPT-2 layout ({gpt2['params'] / 1e6:.1f}M params): max|Δlogit| vs GPT2LMHeadModel "
          f"{gpt2['max_abs_logit_diff']:.2e}, greedy tokens equal: {gpt2['greedy_tokens_equal']}")

# %% Results -> notes.md -> plots
run.finish({"model": {"name": cfg.model, "params": model.num_params(), **model.cfg.to_dict()},
            "base_context": base_ctx, "stacks": rows, "skipped": skipped, "gpt2": gpt2})
