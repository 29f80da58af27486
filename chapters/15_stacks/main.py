"""15 · Stacks: one model, five ways to run it, measured side by side.

The same trained Hundred Acre Wood model is ported to every inference stack this machine has,
proven identical where the maths should be identical, then raced:

  1. plain PyTorch: the workbook GPT with its KV cache (the reference);
  2. Hugging Face transformers: shared.hf.save_pretrained -> AutoModelForCausalLM.from_pretrained,
     logits compared number by number, decoded by the real `model.generate`;
  3. DeepSpeed inference: deepspeed.init_inference on the CPU accelerator (kernel injection is
     tried too; where it cannot run, the library's own error is the skip line);
  4. llama.cpp: the model written as GGUF and run by llama-cpp-python;
  5. vLLM and ExLlamaV2 on a CUDA GPU when installed (otherwise one skip line each).

For each stack: import cost, load time, peak memory (RSS on CPU, allocated VRAM on CUDA), time to
first token, per-token latency and tokens/s over a batch-size sweep and a context-length sweep.
Then a GPT-2-shaped workbook model loads a Hugging Face GPT-2 folder and matches
GPT2LMHeadModel's logits. `--chat` serves any workbook model or local HF folder as a streaming
chat page on 127.0.0.1 instead.
"""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import engines
from shared import bench, cli, hf, paths, stacks, zoo
from shared.errors import StackMissing, WorkbookError
from shared.model import GPT

CHAPTER = "15_stacks"
STACKS = ("pytorch", "hf", "deepspeed", "llama.cpp", "vllm", "exllamav2")
MB = 2**20


# ============================================================================ measuring one generation
def measure(engine: engines.Engine, prompt: torch.Tensor, n_new: int, repeats: int) -> dict:
    """One untimed warm-up, then `repeats` generations; medians of time-to-first-token and
    total time. per-token latency = the decode phase only: (total - ttft) / (n_new - 1)."""
    engine.generate(prompt, n_new)
    runs = [engine.generate(prompt, n_new) for _ in range(repeats)]
    ttft = statistics.median(r.ttft_s for r in runs)
    total = statistics.median(r.total_s for r in runs)
    b = prompt.shape[0]
    return {"batch": b, "context": prompt.shape[1], "n_new": n_new,
            "ttft_ms": 1e3 * ttft,
            "per_token_ms": 1e3 * (total - ttft) / max(1, n_new - 1),
            "tokens_per_s": b * n_new / total,
            "tokens": runs[-1].tokens}


IMPORT_PROBE = """
import time
def current_rss_bytes():  # like shared.bench's, without importing torch
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
{prelude}
rss0, t0 = current_rss_bytes(), time.perf_counter()
{statement}
print(time.perf_counter() - t0, current_rss_bytes() - rss0)
"""


# what a user's script would import (transformers is lazy: `import transformers` alone loads little)
IMPORTS = {"pytorch": "import torch", "hf": "from transformers import AutoModelForCausalLM, LlamaForCausalLM",
           "deepspeed": "import deepspeed", "llama.cpp": "from llama_cpp import Llama", "vllm": "from vllm import LLM",
           "exllamav2": "import exllamav2"}


def import_cost(stack: str) -> dict:
    """Seconds and resident memory that importing a stack adds to a fresh Python process that
    already has torch (torch's own row: a process without it). A fresh process per stack, so
    the numbers do not depend on which stacks this process imported first."""
    prelude = "" if stack == "pytorch" else "import torch"
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")}
    r = subprocess.run([sys.executable, "-c", IMPORT_PROBE.format(prelude=prelude, statement=IMPORTS[stack])],
                       capture_output=True, text=True, cwd=paths.REPO_ROOT, env=env, timeout=300)
    try:
        seconds, rss = map(float, r.stdout.strip().splitlines()[-1].split())
    except (ValueError, IndexError):
        return {"import_s": None, "import_rss_mb": None}
    return {"import_s": seconds, "import_rss_mb": rss / MB}


# ============================================================================ porting the model
def export_hf(model: GPT, folder: Path) -> Path:
    """The workbook model as a Hugging Face folder (config.json + model.safetensors)."""
    return hf.save_pretrained(model.cpu(), folder)


def export_gguf(model: GPT, tok, path: Path) -> Path:
    """The workbook model as an F32 GGUF file for llama.cpp, with the shared writer
    (llama.cpp tensor names, Q/K rows permuted to its RoPE layout, the tokenizer inside)."""
    from shared import gguf_export

    return Path(gguf_export.export(model.cpu(), tok, path, "f32")["path"])


def build_engine(name: str, model: GPT, tok, run, folder: Path, max_len: int) -> engines.Engine:
    """Import the stack (StackMissing if it cannot), port the model into it, return the adapter."""
    if name == "pytorch":
        return engines.PyTorchEngine(model, run.device)
    if name == "hf":
        return engines.HFEngine(folder, run.device)
    if name == "deepspeed":
        ds = stacks.require("deepspeed")
        return engines.DeepSpeedEngine(_clone(model, run.device), run.device, ds)
    if name == "llama.cpp":
        stacks.require("llama-cpp")
        try:
            gguf = export_gguf(model, tok, folder.parent / f"{folder.name}.gguf")
        except ImportError as e:
            raise StackMissing("llama.cpp", f"no GGUF writer ({e})", "chapter 14's shared/gguf_export.py") from e
        model.to(run.device)
        return engines.LlamaCppEngine(gguf, n_ctx=max_len, threads=torch.get_num_threads())
    if name == "vllm":
        stacks.require("vllm")
        return engines.VLLMEngine(folder, max_len)
    if name == "exllamav2":
        stacks.require("exllamav2")
        raise StackMissing("exllamav2", "installed, but ExLlamaV2 runs EXL2/fp16 Llama folders with a SentencePiece "
                           "or HF tokenizer; the char-level workbook models have neither",
                           "run it on an english-llama export with a tokenizer.json")
    raise WorkbookError(f"unknown stack {name!r}; choose from {', '.join(STACKS)}")


def _clone(model: GPT, device) -> GPT:
    """A separate copy, so a stack that rewrites modules in place cannot touch the reference."""
    copy = GPT(model.cfg)
    copy.load_state_dict(model.state_dict())
    return copy.to(device).eval()


# ============================================================================ parity
def parity(engine: engines.Engine, reference: engines.Engine, ids: torch.Tensor) -> dict:
    """Largest |logit difference| to the PyTorch reference on one sequence, and whether the
    argmax (the greedy next token) agrees at every position."""
    try:
        mine = engine.logits(ids)
    except NotImplementedError as e:
        return {"max_abs_logit_diff": None, "argmax_agree": None, "note": str(e)}
    ref = reference.logits(ids)
    return {"max_abs_logit_diff": (mine - ref).abs().max().item(),
            "argmax_agree": (mine.argmax(-1) == ref.argmax(-1)).float().mean().item()}


# ============================================================================ one stack end to end
def bench_stack(name: str, model: GPT, tok, run, folder: Path, prompts: dict, cfg: dict,
                reference: engines.Engine | None, ref_tokens: dict | None) -> tuple[dict, engines.Engine]:
    """Import cost, port + load (peak memory), parity with PyTorch, then both sweeps."""
    row: dict = {"stack": name}
    stacks_key = {"llama.cpp": "llama-cpp"}.get(name, name)
    if stacks_key in stacks.STACKS and not stacks.available(stacks_key):
        stacks.require(stacks_key)  # raises StackMissing with the enabling command
    row.update(import_cost(name))
    max_len = max(cfg["contexts"]) + cfg["n_new"]
    warm = prompts["warm"]
    gc.collect()
    with bench.peak_memory(run.device) as mem:
        t0 = time.perf_counter()
        engine = build_engine(name, model, tok, run, folder, max_len)
        row["load_s"] = time.perf_counter() - t0
        engine.generate(warm, cfg["n_new"])   # first generation: allocations, lazy init, caches
    row["peak_mem_mb"], row["mem_kind"] = mem.bytes / MB, mem.kind
    row["parity"] = parity(engine, reference or engine, prompts["parity"])
    sweeps = {"batch_sweep": [], "context_sweep": []}
    todo = [("batch_sweep", b, p) for b, p in prompts["batch"].items()] + \
           [("context_sweep", c, p) for c, p in prompts["context"].items()]
    for kind, key, prompt in tqdm(todo, desc=f"{name:>10}", leave=False):
        if engine.max_batch is not None and prompt.shape[0] > engine.max_batch:
            sweeps[kind].append({"batch": prompt.shape[0], "context": prompt.shape[1], "skipped":
                                 f"{name}'s Python API decodes one sequence at a time"})
            continue
        m = measure(engine, prompt, cfg["n_new"], cfg["repeats"])
        tokens = m.pop("tokens")
        if ref_tokens is not None and (kind, key) in ref_tokens:   # same greedy tokens as PyTorch?
            m["same_tokens_as_pytorch"] = (tokens == ref_tokens[(kind, key)]).float().mean().item()
        elif name == "pytorch":
            m["tokens"] = tokens
        sweeps[kind].append(m)
    row.update(sweeps)
    if name == "deepspeed":   # DeepSpeed's real speed-up: fused kernels swapped into the HF model
        err = engines.try_kernel_injection(stacks.require("deepspeed"), engines.HFEngine(folder, run.device).model)
        row["kernel_injection"] = "ok" if err is None else f"failed on {run.device.type}: {err}"
    if name != "pytorch":
        engine.close()
    return row, engine


# ============================================================================ GPT-2
GPT2_SIZES = {  # (n_layer, n_head, d_model, vocab, block): 124M is the real GPT-2 small layout
    "quick": dict(n_layer=2, n_head=4, n_embd=64, vocab_size=512, n_positions=128),
    "default": dict(n_layer=12, n_head=12, n_embd=192, vocab_size=50257, n_positions=1024),
    "full": dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024),
}


@torch.no_grad()
def gpt2_parity(run, folder: Path | None, scratch: Path) -> dict:
    """Load a GPT-2 folder into the workbook GPT (shared.hf.load_pretrained) and compare its
    logits with GPT2LMHeadModel's on the same tokens. Without --gpt2, a randomly initialised
    GPT2LMHeadModel of the preset's layout is saved first (HF's own init, not ours)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if folder is None:
        torch.manual_seed(run.seed)
        folder = scratch / "gpt2-random"
        # no BOS/EOS: GPT-2's id 50256 does not exist in the small vocabularies of --quick
        GPT2LMHeadModel(GPT2Config(**run.pick(**GPT2_SIZES), bos_token_id=None, eos_token_id=None)).eval() \
            .save_pretrained(folder)
        source = "random init (HF's own initialiser), layout " + ", ".join(f"{k}={v}" for k, v in run.pick(**GPT2_SIZES).items())
    else:
        source = str(folder)
    ref = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    ours = hf.load_pretrained(folder)
    g = torch.Generator().manual_seed(run.seed)
    ids = torch.randint(0, ref.config.vocab_size, (2, min(64, ref.config.n_positions)), generator=g)
    a, b = ours(ids), ref(ids).logits
    greedy_ours = ours.generate(ids[:1, :8], 16, temperature=0)
    greedy_ref = ref.generate(ids[:1, :8], max_new_tokens=16, min_new_tokens=16, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    return {"source": source, "params": ours.num_params(), "n_layer": ours.cfg.n_layer, "d_model": ours.cfg.d_model,
            "vocab_size": ours.cfg.vocab_size, "max_abs_logit_diff": (a - b).abs().max().item(),
            "logit_scale": b.abs().max().item(), "greedy_tokens_equal": bool(torch.equal(greedy_ours, greedy_ref))}


# ============================================================================ the lesson
def quiet_libraries() -> None:
    """transformers' progress bars and DeepSpeed's INFO lines would bury the lesson's output."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


def parse_ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise WorkbookError(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise WorkbookError(f"{flag} needs numbers >= 1, got {text!r}")
    return values


def main(argv=None):
    p = cli.parser(CHAPTER, __doc__)
    p.add_argument("--model", default="wood-llama", help="zoo model to port (a Llama-shaped one for llama.cpp)")
    p.add_argument("--stacks", default=",".join(STACKS), help=f"comma list from {', '.join(STACKS)}")
    p.add_argument("--batch-sizes", default=None, help="batch-size sweep, e.g. 1,4,16,64 (default: per preset)")
    p.add_argument("--contexts", default=None, help="prompt-length sweep, e.g. 16,64,224 (default: per preset)")
    p.add_argument("--new-tokens", type=int, default=None, help="tokens generated per measurement")
    p.add_argument("--gpt2", type=Path, default=None, help="a local Hugging Face GPT-2 folder to load and check")
    p.add_argument("--chat", action="store_true", help="serve a streaming chat page instead of benchmarking")
    p.add_argument("--chat-model", default=None, help="zoo model name or local HF folder for --chat (default --model)")
    p.add_argument("--port", type=int, default=8015, help="--chat port on 127.0.0.1 (0: any free port)")
    run = cli.setup(p, argv)
    args = run.args

    if not 0 <= args.port <= 65535:
        raise WorkbookError(f"--port {args.port} is not a TCP port (0-65535; 0 picks a free one)")
    if args.chat:
        import chat

        quiet_libraries()
        return chat.serve_forever(chat.load_chat_model(args.chat_model or args.model, run), port=args.port)

    names = [s.strip() for s in args.stacks.split(",") if s.strip()]
    unknown = [s for s in names if s not in STACKS]
    if unknown or not names:
        raise WorkbookError(f"unknown stack(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(STACKS)}")
    if "pytorch" not in names:
        names.insert(0, "pytorch")   # the reference every other stack is compared with
    cfg = {"batch_sizes": parse_ints(args.batch_sizes, "--batch-sizes") if args.batch_sizes else run.pick(
               quick=[1, 4], default=[1, 4, 16, 64], full=[1, 8, 32, 128, 256]),
           "contexts": parse_ints(args.contexts, "--contexts") if args.contexts else run.pick(
               quick=[8, 32], default=[16, 64, 192], full=[64, 256, 768]),
           "n_new": args.new_tokens or run.pick(quick=8, default=32, full=128),
           "repeats": run.pick(quick=1, default=3, full=5)}
    if cfg["n_new"] < 2:
        raise WorkbookError("--new-tokens must be at least 2 (one for time-to-first-token, the rest for decode)")
    if args.gpt2 is not None and not (args.gpt2 / "config.json").exists():
        raise WorkbookError(f"--gpt2 {args.gpt2} is not a Hugging Face model folder (no config.json)")

    # -- the model every stack runs -------------------------------------------------------------
    quiet_libraries()
    bundle = zoo.load(args.model, run)
    model, tok = bundle.model.to(run.device).eval(), bundle.tokenizer
    base_ctx = cfg["contexts"][len(cfg["contexts"]) // 2]
    if max(cfg["contexts"]) + cfg["n_new"] > model.cfg.block_size and model.cfg.pos == "learned":
        raise WorkbookError(f"longest context + new tokens exceeds block_size={model.cfg.block_size}")
    g = torch.Generator().manual_seed(run.seed)
    prompts = {"batch": {b: bundle.data.get_batch("val", b, base_ctx, g)[0] for b in cfg["batch_sizes"]},
               "context": {c: bundle.data.get_batch("val", 1, c, g)[0] for c in cfg["contexts"]},
               "parity": bundle.data.get_batch("val", 1, max(cfg["contexts"]), g)[0]}
    prompts["warm"] = bundle.data.get_batch("val", 1, base_ctx, g)[0]   # untimed first generation
    points = len(cfg["batch_sizes"]) + len(cfg["contexts"])
    step_s = 4e-3 * run.pick(quick=1, default=1, full=0.5)   # a decode step of a tiny model: mostly Python
    live = [n for n in names if n in ("pytorch", "hf") or stacks.available({"llama.cpp": "llama-cpp"}.get(n, n))]
    run.estimate(seconds=len(live) * points * (cfg["repeats"] + 1) * cfg["n_new"] * step_s + 20 * len(live),
                 what=f"{len(live)} runnable stacks x {points} sweep points")

    folder = export_hf(model, run.checkpoints / CHAPTER / f"{args.model}-{run.preset}-hf")
    model.to(run.device)
    rows, skipped, reference, ref_tokens = [], [], None, None
    for name in names:
        try:
            row, engine = bench_stack(name, model, tok, run, folder, prompts, cfg, reference, ref_tokens)
        except StackMissing as e:
            skipped.append(stacks.skipped(e, what=name))
            continue
        if name == "pytorch":
            reference = engine
            ref_tokens = {(kind, m["batch"] if kind == "batch_sweep" else m["context"]): m.pop("tokens")
                          for kind in ("batch_sweep", "context_sweep") for m in row[kind]}
        print(f"  {name:>10}: load {row['load_s']:.2f} s, peak +{row['peak_mem_mb']:.0f} MB, "
              f"parity max|Δlogit| {row['parity']['max_abs_logit_diff']}", flush=True)
        if row.get("kernel_injection", "ok") != "ok":
            skipped.append(f"skipped: deepspeed kernel injection — {row['kernel_injection']}")
            print(skipped[-1])
        rows.append(row)

    with tempfile.TemporaryDirectory(prefix="ch15-") as scratch:
        gpt2 = gpt2_parity(run, args.gpt2, Path(scratch))
    print(f"GPT-2 layout ({gpt2['params'] / 1e6:.1f}M params): max|Δlogit| vs GPT2LMHeadModel "
          f"{gpt2['max_abs_logit_diff']:.2e}, greedy tokens equal: {gpt2['greedy_tokens_equal']}")

    # -- results -------------------------------------------------------------------------------
    def at(row, kind, key, field):
        for m in row[kind]:
            if m.get("batch" if kind == "batch_sweep" else "context") == key and field in m:
                return m[field]
        return None

    b1 = {r["stack"]: at(r, "batch_sweep", 1, "tokens_per_s") for r in rows}
    bmax = max(cfg["batch_sizes"])
    headline = {"model": args.model, "params": model.num_params(), "stacks_run": [r["stack"] for r in rows],
                "stacks_skipped": len(skipped),
                **{f"{r['stack']}_max_abs_logit_diff": r["parity"]["max_abs_logit_diff"] for r in rows if r["stack"] != "pytorch"},
                **{f"{s}_tokens_per_s_b1": v for s, v in b1.items()},
                "fastest_b1": max((s for s in b1 if b1[s]), key=lambda s: b1[s], default=None),
                f"pytorch_tokens_per_s_b{bmax}": at(rows[0], "batch_sweep", bmax, "tokens_per_s"),
                "gpt2_max_abs_logit_diff": gpt2["max_abs_logit_diff"]}
    run.save_results({"headline": headline, "config": cfg, "base_context": base_ctx,
                      "model": {"name": args.model, "params": model.num_params(), **model.cfg.to_dict()},
                      "stacks": rows, "skipped": skipped, "gpt2": gpt2})
    run.record_notes(notes_markdown(rows, skipped, gpt2, cfg, base_ctx))
    import visualize

    visualize.draw(run.results_path, run.plots_dir, run.animations_dir)


def notes_markdown(rows, skipped, gpt2, cfg, base_ctx) -> str:
    summary = []
    for r in rows:
        b1 = next((m for m in r["context_sweep"] if m["context"] == base_ctx and "tokens_per_s" in m), {})
        summary.append({"stack": r["stack"], "import s": r["import_s"], "import MB": r["import_rss_mb"],
                        "load s": r["load_s"], "peak MB (load+1st gen)": r["peak_mem_mb"],
                        "max abs Δlogit": r["parity"]["max_abs_logit_diff"],
                        f"TTFT ms (B=1, ctx {base_ctx})": b1.get("ttft_ms"), "per-token ms": b1.get("per_token_ms"),
                        "tokens/s (B=1)": b1.get("tokens_per_s")})
    batch = [{"stack": r["stack"], **{f"B={m['batch']}": m.get("tokens_per_s", "n/a") for m in r["batch_sweep"]}}
             for r in rows]
    ctx = [{"stack": r["stack"], **{f"ctx {m['context']}": m.get("ttft_ms", "n/a") for m in r["context_sweep"]}}
           for r in rows]
    lines = ["### Stacks (greedy decoding, %d new tokens, median of %d)" % (cfg["n_new"], cfg["repeats"]),
             cli.markdown_table(summary, ".3g"),
             f"\n### Tokens/s by batch size (context {base_ctx})", cli.markdown_table(batch, ".4g"),
             "\n### Time to first token (ms) by context length (batch 1)", cli.markdown_table(ctx, ".3g"),
             "\n### GPT-2 parity", cli.markdown_table([{k: gpt2[k] for k in ("source", "params", "max_abs_logit_diff",
                                                                            "greedy_tokens_equal")}], ".3g"),
             "\n### Skipped", "\n".join(f"- {s}" for s in skipped) or "- none"]
    return "\n".join(lines)


if __name__ == "__main__":
    cli.run_main(main)
