"""Porting one model into each stack, checking the port, and timing it the same way everywhere.

    folder = export_hf(model, path)                      # config.json + model.safetensors (HF Llama names)
    engine = build_engine("hf", model, tok, device, folder, max_len, threads)
    parity(engine, reference, ids)                       # max |Δlogit| to PyTorch, argmax agreement
    measure(engine, prompt, n_new, repeats)              # TTFT, per-token latency, tokens/s
    row = bench_stack("hf", ...)                         # all of the above for one stack, both sweeps

Read `engines.py` first (one adapter per stack, all with `logits` and `generate`). The timing rule
is the same for every stack: one untimed warm-up, then the median of `repeats` runs; per-token
latency is the decode phase only, (total - TTFT) / (n_new - 1).
"""
from __future__ import annotations

import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import engines
from shared import bench, hf, paths, stacks
from shared.errors import StackMissing, WorkbookError
from shared.model import GPT

STACKS = ("pytorch", "hf", "deepspeed", "llama.cpp", "vllm")
STACK_KEY = {"llama.cpp": "llama-cpp"}   # the chapter's name -> shared.stacks' name
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
           "deepspeed": "import deepspeed", "llama.cpp": "from llama_cpp import Llama",
           "vllm": "from vllm import LLMEngine"}


def import_cost(stack: str) -> dict:
    """Seconds and resident memory that importing a stack adds to a fresh Python process that
    already has torch (torch's own row: a fresh process without it). A fresh process per stack,
    so the numbers do not depend on which stacks this process imported first."""
    prelude = "" if stack == "pytorch" else "import torch"
    accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    env = {**os.environ, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", accelerator)}
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


def clone(model: GPT, device) -> GPT:
    """A separate copy, so a stack that rewrites modules in place cannot touch the reference."""
    copy = GPT(model.cfg)
    copy.load_state_dict(model.state_dict())
    return copy.to(device).eval()


def build_engine(name: str, model: GPT, tok, device: torch.device, folder: Path, max_len: int,
                 threads: int = 1) -> engines.Engine:
    """Import the stack (StackMissing if it cannot), port the model into it, return the adapter."""
    if name == "pytorch":
        return engines.PyTorchEngine(model, device)
    if name == "hf":
        return engines.HFEngine(folder, device)
    if name == "deepspeed":
        return engines.DeepSpeedEngine(clone(model, device), device, stacks.require("deepspeed"))
    if name == "llama.cpp":
        stacks.require("llama-cpp")
        try:
            gguf = export_gguf(model, tok, folder.parent / f"{folder.name}.gguf")
        except ImportError as e:   # the `gguf` writer package, not llama.cpp itself
            raise StackMissing("llama.cpp", f"no GGUF writer ({e})", "uv sync --extra llama") from e
        model.to(device)
        return engines.LlamaCppEngine(gguf, n_ctx=max_len, threads=threads)
    if name == "vllm":
        stacks.require("vllm")
        return engines.VLLMEngine(folder, max_len)
    raise WorkbookError(f"unknown stack {name!r}; choose from {', '.join(STACKS)}")


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
def bench_stack(name: str, model: GPT, tok, device: torch.device, folder: Path, prompts: dict, n_new: int,
                repeats: int, max_len: int, reference: engines.Engine | None = None,
                ref_tokens: dict | None = None, threads: int = 1) -> tuple[dict, engines.Engine]:
    """Import cost, port + load (peak memory), parity with PyTorch, then both sweeps.
    `prompts`: {"warm": ids, "parity": ids, "batch": {B: ids}, "context": {T: ids}}.
    Raises StackMissing (before any work) if the stack cannot run here."""
    key = STACK_KEY.get(name, name)
    if key in stacks.STACKS and not stacks.available(key):
        stacks.require(key)   # raises StackMissing with the enabling command
    row: dict = {"stack": name, **import_cost(name)}
    gc.collect()
    with bench.peak_memory(device) as mem:
        t0 = time.perf_counter()
        engine = build_engine(name, model, tok, device, folder, max_len, threads)
        row["load_s"] = time.perf_counter() - t0
        engine.generate(prompts["warm"], n_new)   # first generation: allocations, lazy init, caches
    row["peak_mem_mb"], row["mem_kind"] = mem.bytes / MB, mem.kind
    row["parity"] = parity(engine, reference or engine, prompts["parity"])
    row["batch_sweep"], row["context_sweep"] = [], []
    todo = [("batch_sweep", b, p) for b, p in prompts["batch"].items()] + \
           [("context_sweep", c, p) for c, p in prompts["context"].items()]
    for kind, size, prompt in tqdm(todo, desc=f"{name:>10}", leave=False):
        if engine.max_batch is not None and prompt.shape[0] > engine.max_batch:
            row[kind].append({"batch": prompt.shape[0], "context": prompt.shape[1],
                              "skipped": f"{name}'s Python API decodes one sequence at a time"})
            continue
        m = measure(engine, prompt, n_new, repeats)
        tokens = m.pop("tokens")
        if ref_tokens is not None and (kind, size) in ref_tokens:   # the same greedy tokens as PyTorch?
            m["same_tokens_as_pytorch"] = (tokens == ref_tokens[(kind, size)]).float().mean().item()
        else:
            m["tokens"] = tokens   # the reference's own tokens, for the stacks after it
        row[kind].append(m)
    if name == "deepspeed":   # DeepSpeed's real speed-up: fused kernels swapped into the HF model
        err = engines.try_kernel_injection(stacks.require("deepspeed"), engines.HFEngine(folder, device).model)
        row["kernel_injection"] = "ok" if err is None else f"failed on {device.type}: {err}"
    if name != "pytorch":
        engine.close()
    return row, engine


def reference_tokens(row: dict) -> dict:
    """{(sweep, batch or context): tokens} from the PyTorch row (removed from it: not for the JSON)."""
    return {(kind, m["batch"] if kind == "batch_sweep" else m["context"]): m.pop("tokens")
            for kind in ("batch_sweep", "context_sweep") for m in row[kind]}


# ============================================================================ GPT-2
@torch.no_grad()
def gpt2_parity(layout: dict, seed: int, scratch: Path, folder: Path | None = None) -> dict:
    """Load a GPT-2 folder into the workbook GPT (shared.hf.load_pretrained) and compare its
    logits and greedy tokens with GPT2LMHeadModel's on the same ids. Without `folder`, a randomly
    initialised GPT2LMHeadModel of `layout` is saved first (HF's own initialiser, not ours)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if folder is None:
        torch.manual_seed(seed)
        folder = scratch / "gpt2-random"
        # no BOS/EOS: GPT-2's id 50256 does not exist in the small vocabularies of --quick
        GPT2LMHeadModel(GPT2Config(**layout, bos_token_id=None, eos_token_id=None)).eval().save_pretrained(folder)
        source = "random init (HF's own initialiser), layout " + ", ".join(f"{k}={v}" for k, v in layout.items())
    else:
        source = str(folder)
    ref = GPT2LMHeadModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32).eval()
    ours = hf.load_pretrained(folder)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ref.config.vocab_size, (2, min(64, ref.config.n_positions)), generator=g)
    a, b = ours(ids), ref(ids).logits
    greedy_ours = ours.generate(ids[:1, :8], 16, temperature=0)
    greedy_ref = ref.generate(ids[:1, :8], max_new_tokens=16, min_new_tokens=16, do_sample=False,
                              pad_token_id=0, eos_token_id=None)
    return {"source": source, "params": ours.num_params(), "n_layer": ours.cfg.n_layer, "d_model": ours.cfg.d_model,
            "vocab_size": ours.cfg.vocab_size, "max_abs_logit_diff": (a - b).abs().max().item(),
            "logit_scale": b.abs().max().item(), "greedy_tokens_equal": bool(torch.equal(greedy_ours, greedy_ref))}
