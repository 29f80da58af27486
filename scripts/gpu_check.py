"""Run the workbook's GPU paths once, each check time-boxed, and keep every number (issue 22).

    PYTHONUNBUFFERED=1 PYTHONPATH=. python3 scripts/gpu_check.py --out $OUT --budget-s 330   # on the GPU
    uv run python scripts/gpu_check.py --dry-run --out /tmp/gpu-dry                          # CPU, tiny sizes

The GPU machine has its own python3 with torch, triton and transformers but no package registry, so
nothing here uses uv. Wheels carried in `.whl/` (bitsandbytes, deepspeed and its pure-Python
dependencies, threadpoolctl, ...) are unpacked into a temporary folder and put on the path first.

Each check runs in a child process of its own (`--check NAME`), so a time box is a real kill, and a
CUDA error in one check (a bad Triton launch poisons the whole CUDA context) cannot sink the next.
A check writes `<out>/<name>.json` as it goes (status "running" plus whatever it measured so far),
so a check killed by its time box still leaves its partial numbers; the runner then stamps the
final status: ok, failed (with the reason) or skipped (with the reason). `<out>/gpu_check.log` holds
everything the checks printed, `<out>/summary.json` one line per check.

Checks, in priority order (the runner skips the rest when the overall budget is nearly spent):
environment, 07 Triton attention vs SDPA-flash, 04 MiniFormer in bf16 (tokens/s, MFU, gap to the
floor), 06 KV-cache speed-up, 09 decode speed and cache bytes per variant, 14 bitsandbytes on CUDA,
15 workbook vs HF generate by batch size, and the suite's gpu-marked tests.

To see that a failing check does not stop the others: GPU_CHECK_FAIL=ch07_long_context makes that
check raise at its start; GPU_CHECK_HANG=NAME makes it sleep until its time box kills it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # `import shared` without PYTHONPATH=. too

MIN_START_S = 20      # never start a check with less than this left of the overall budget
KILL_MARGIN_S = 5     # a check's box ends this long before the overall budget does
LOG_NAME = "gpu_check.log"


# ============================================================================ the context a check gets
@dataclass
class Context:
    """What a check needs: where to write, how big to go, how long it has. `result` is the JSON
    the check fills in; `save()` writes it now, so a later kill keeps what is there."""
    name: str
    device: object          # torch.device
    tiny: bool              # CPU dry-run sizes
    out: Path
    work: Path              # scratch (zoo checkpoints, HF exports): not part of the output
    seed: int
    deadline: float         # time.time() when the runner kills this check
    started: float = field(default_factory=time.perf_counter)
    result: dict = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return self.out / f"{self.name}.json"

    def seconds_left(self) -> float:
        return self.deadline - time.time()

    def save(self) -> None:
        write_json(self.path, self.result)

    def run(self, chapter: str, preset: str):
        """A shared.cli.Run for calling a chapter's functions (zoo.load, run.pick, run.estimate)."""
        from shared import cli

        return cli.Run(chapter=chapter, preset=preset, device=self.device, seed=self.seed,
                       out=self.work / "chapters", checkpoints=self.work / "checkpoints",
                       args=argparse.Namespace(text=None, threads=None))


class Skip(Exception):
    """Raised by a check that cannot run here (e.g. bitsandbytes does not import): status skipped."""


def write_json(path: Path, obj) -> None:
    """Atomic (temp file + rename): the runner never reads half a file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(plain(obj), indent=1))
    os.replace(tmp, path)


def plain(obj):
    """JSON-safe: NaN/inf -> None, tensors and numpy numbers -> Python numbers, paths -> str."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if hasattr(obj, "tolist"):
        return plain(obj.tolist())
    return str(obj)


def load_chapter(chapter: str, module: str = "main"):
    """A chapter's module, imported by path the way the tests do (tests/workbook_testing.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from workbook_testing import load_chapter_module

    return load_chapter_module(chapter, module)


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ============================================================================ 0. environment
OPTIONAL_MODULES = ["numpy", "regex", "threadpoolctl", "bitsandbytes", "deepspeed", "hjson", "pydantic", "ninja",
                    "cpuinfo", "msgpack", "gguf", "datasets", "flash_attn", "vllm", "tensorboard"]


def check_environment(ctx: Context) -> None:
    """Versions, which optional packages are importable, that every shared/ module imports on this
    Python/torch, and the device's matmul peak (bf16 on CUDA)."""
    import importlib
    import importlib.metadata
    import importlib.util
    import platform

    import torch

    from shared import bench

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    r = ctx.result
    r["python"] = platform.python_version()
    r["torch"] = torch.__version__
    r["cuda_available"] = torch.cuda.is_available()
    r["device_name"] = device_name(ctx.device)
    if ctx.device.type == "cuda":
        r["capability"] = list(torch.cuda.get_device_capability(ctx.device))
        r["memory_GiB"] = torch.cuda.get_device_properties(ctx.device).total_memory / 2**30
    r["versions"] = {d: version(d) for d in ("triton", "transformers", "accelerate", "bitsandbytes", "deepspeed",
                                             "threadpoolctl", "tokenizers", "safetensors", "numpy", "pytest")}
    r["importable"] = {m: importlib.util.find_spec(m) is not None for m in OPTIONAL_MODULES}
    r["wheels_installed"] = [w for w in os.environ.get("GPU_CHECK_WHEELS", "").split(",") if w]
    failures = {}
    for path in sorted((REPO / "shared").glob("*.py")):
        try:
            importlib.import_module(f"shared.{path.stem}")
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            failures[path.stem] = f"{type(e).__name__}: {e}"
    r["shared_import_failures"] = failures
    ctx.save()
    r["matmul_peak_TFLOPs"] = bench.matmul_peak_flops(ctx.device, n=256 if ctx.tiny else None) / 1e12
    r["headline"] = {"device": r["device_name"], "torch": r["torch"], "python": r["python"],
                     "matmul_peak_TFLOPs": round(r["matmul_peak_TFLOPs"], 2)}
    if failures:
        raise RuntimeError(f"shared modules failed to import: {failures}")


# ============================================================================ 1. chapter 07
# Sizes the chapters' presets use, copied here because a chapter's main.py runs its whole lesson
# when imported (the notebook-style layout): the checks import only the chapters' helper modules.
# Keep in step with chapters/07_long_context/main.py (`full`: 16 heads x 128 dims, batch x T = 16k).
CH07_BENCH = {"gpu": dict(gpu_lengths=(1024, 2048, 4096, 8192, 16384), gpu_heads=16, gpu_head_dim=128,
                          gpu_tokens=16384),
              "tiny": dict(gpu_lengths=(64,), gpu_heads=2, gpu_head_dim=16, gpu_tokens=64)}


def check_ch07(ctx: Context) -> None:
    """The Triton kernel against full attention (max |error| per dtype/mask/odd shape), then the
    chapter's GPU benchmark per length: the kernel vs SDPA's flash backend, and peak memory."""
    if ctx.device.type != "cuda":
        os.environ["TRITON_INTERPRET"] = "1"   # Triton's CPU interpreter: read before triton is imported
    from types import SimpleNamespace

    import torch

    gpu_bench = load_chapter("07_long_context", "gpu_bench")
    r = ctx.result
    r["device_name"] = device_name(ctx.device)
    r["kernel_check"] = kernel_errors(gpu_bench, ctx)
    bad = [row for row in r["kernel_check"] if not row["ok"]]
    worst = {}
    for row in r["kernel_check"]:
        worst[row["dtype"]] = max(worst.get(row["dtype"], 0.0), row["max_abs_err"])
    r["worst_error_by_dtype"] = worst
    ctx.save()

    sizes = CH07_BENCH["tiny" if ctx.tiny else "gpu"]
    r["bench_config"] = {**sizes, "dtype": "bfloat16"}
    r["bench_rows"] = []
    for t in sizes["gpu_lengths"]:   # one length at a time, saved after each: a kill keeps the lengths done
        try:
            r["bench_rows"] += gpu_bench.benchmark(ctx.device, SimpleNamespace(**{**sizes, "gpu_lengths": (t,)}),
                                                   ctx.seed)
        except Exception as e:  # noqa: BLE001 - e.g. a Triton compile error at one size: keep the others
            r["bench_rows"].append({"T": t, "error": f"{type(e).__name__}: {str(e)[:300]}"})
        r["vs_sdpa_flash"] = triton_vs_sdpa(r["bench_rows"])
        ctx.save()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    long = [row for row in r["vs_sdpa_flash"] if row["T"] >= 4096 and row.get("ratio") is not None]
    r["goal"] = "triton >= 50% of SDPA-flash throughput at T >= 4096"
    r["goal_met"] = bool(long) and all(row["ratio"] >= 0.5 for row in long)
    r["headline"] = {"worst_err": {k: f"{v:.1e}" for k, v in worst.items()},
                     "ratio_vs_sdpa_flash": {f"{row['T']}{'c' if row['causal'] else ''}": round(row["ratio"], 2)
                                             for row in r["vs_sdpa_flash"] if row.get("ratio") is not None}}
    if bad:
        raise AssertionError(f"{len(bad)} kernel cases off tolerance, first: {bad[0]}")


def kernel_errors(gpu_bench, ctx: Context) -> list[dict]:
    """Max |triton - full attention in fp32| on lengths that are not multiples of the tiles,
    causal, windowed and unmasked, with more keys than queries too. bf16 on the GPU; the CPU
    interpreter has no bf16 (numpy), so the dry-run checks fp16 in its place."""
    import torch

    half = (torch.float16, 3e-3) if ctx.tiny else (torch.bfloat16, 3e-2)
    shapes = [(45, 70, 16)] if ctx.tiny else [(200, 200, 64), (77, 333, 128), (1000, 1000, 64), (1, 513, 64),
                                              (129, 1031, 128)]
    g = torch.Generator(device=ctx.device).manual_seed(ctx.seed)
    rows = []
    for dtype, tol in ((torch.float32, 1e-4), half):
        for t, s, d in shapes:
            q = torch.randn(2, 4, t, d, device=ctx.device, generator=g).to(dtype)
            k, v = (torch.randn(2, 4, s, d, device=ctx.device, generator=g).to(dtype) for _ in range(2))
            for causal, window in ((False, None), (True, None), (True, 50)):
                ref = gpu_bench.full_attention(q.float(), k.float(), v.float(), causal, window)
                out = gpu_bench.triton_attention(q, k, v, causal, window)
                err = (out.float() - ref).abs().max().item()
                rows.append({"dtype": str(dtype).replace("torch.", ""), "T": t, "S": s, "d": d,
                             "mask": "window 50" if window else "causal" if causal else "none",
                             "max_abs_err": err, "tolerance": tol, "ok": err <= tol})
    return rows


def triton_vs_sdpa(rows: list[dict]) -> list[dict]:
    """Per (T, causal): the kernel's and SDPA-flash's ms and TFLOP/s, their ratio, and peak memory
    of every method (memory vs length)."""
    table = {}
    for row in rows:
        if "ms" not in row:
            continue
        entry = table.setdefault((row["T"], row["causal"]), {"T": row["T"], "causal": row["causal"]})
        entry[f"peak_MiB {row['method']}"] = row["peak_MiB"]
        if row["method"] == "triton (this chapter)":
            entry["triton_ms"], entry["triton_TFLOPs"] = row["ms"], row["TFLOP/s"]
        elif row["method"] == "SDPA flash backend":
            entry["sdpa_flash_ms"], entry["sdpa_flash_TFLOPs"] = row["ms"], row["TFLOP/s"]
    for entry in table.values():
        if "triton_ms" in entry and "sdpa_flash_ms" in entry:
            entry["ratio"] = entry["sdpa_flash_ms"] / entry["triton_ms"]   # same FLOPs: throughput ratio
    return sorted(table.values(), key=lambda e: (e["T"], e["causal"]))


# ============================================================================ 2. chapter 04
# Keep in step with chapters/04_transformer_block/main.py's `full` and `quick` presets.
CH04_SIZES = {
    "gpu": dict(n_chars=20_000_000, model=dict(n_layer=6, n_head=8, d_model=256), final_stories=1024,
                train=dict(steps=3000, batch_size=64, seq_len=256, lr=2e-3, warmup=100)),
    "tiny": dict(n_chars=60_000, model=dict(n_layer=2, n_head=2, d_model=32), final_stories=16,
                 train=dict(steps=12, batch_size=4, seq_len=128, lr=3e-3, warmup=3)),
}


def check_ch04(ctx: Context) -> None:
    """The --full MiniFormer trained with shared.train (bf16 autocast on CUDA) for as many of the
    preset's steps as fit the box: tokens/s, MFU against the bf16 matmul peak measured in this
    process, and the story-loss gap to the exact entropy floor at the step it reached."""
    import copy

    import torch

    from shared.corpus import HundredAcreWood
    from shared.data import TokenData, load_text
    from shared.evaluate import story_loss
    from shared.model import GPTConfig
    from shared.tokenizer import CharTokenizer
    from shared.train import TrainConfig, train

    miniformer = load_chapter("04_transformer_block", "miniformer")
    sz = CH04_SIZES["tiny" if ctx.tiny else "gpu"]
    text = load_text("wood", n_chars=sz["n_chars"], seed=ctx.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    stories = HundredAcreWood().stories(sz["final_stories"], seed=ctx.seed + 1)   # held out, as main.py does
    torch.manual_seed(ctx.seed)
    model = miniformer.MiniFormer(GPTConfig(vocab_size=tok.vocab_size, block_size=256, **sz["model"]))
    tcfg = TrainConfig(aligned=True, eval_every=0, eval_batches=2, seed=ctx.seed, **sz["train"])
    r = ctx.result
    r.update(device_name=device_name(ctx.device), model_config=sz["model"], train_config=tcfg.to_dict(),
             params=model.num_params(), amp="bf16 autocast" if ctx.device.type == "cuda" else "fp32")

    # how many of the preset's steps fit: time a short probe on a copy, keep ~25 s for the rest
    step_s = seconds_per_step(copy.deepcopy(model), data, tcfg, ctx.device, probe_steps=4 if ctx.tiny else 30)
    train_s = max(1.0, min(ctx.seconds_left() - 25, 5 if ctx.tiny else 45))
    stop = max(1, min(tcfg.steps, int(train_s / step_s)))
    r.update(probe_seconds_per_step=step_s, steps_planned=tcfg.steps, steps_done=stop)
    ctx.save()
    # the dry-run skips the ~seconds-long CPU matmul peak: no MFU there
    hist = train(model, data, tcfg, ctx.device, stop_at=stop, desc="MiniFormer", progress=False,
                 measure_peak=not ctx.tiny)
    final = story_loss(model, tok, stories, ctx.device)
    r.update(tokens_per_s=hist["tokens_per_s"], mfu=hist["mfu"], peak_TFLOPs=hist["peak_flops"] / 1e12,
             flops_per_token=hist["flops_per_token"], compute_time_s=hist["compute_time_s"],
             train_loss_last=hist["train_loss"][-1], story_loss=final, gap_to_floor=final["gap_nats_per_char"],
             goal="MFU >= 40% of the bf16 matmul peak", goal_met=hist["mfu"] >= 0.4)
    r["headline"] = {"steps": f"{stop}/{tcfg.steps}", "tokens_per_s": round(hist["tokens_per_s"]),
                     "mfu": round(hist["mfu"], 4) if math.isfinite(hist["mfu"]) else None,
                     "gap": round(final["gap_nats_per_char"], 4)}


def seconds_per_step(model, data, tcfg, device, probe_steps: int) -> float:
    """Wall time per step over the second half of a short run (the first steps pay for
    CUDA/cuBLAS start-up)."""
    import dataclasses

    from shared.train import train

    stamps = []
    train(model, data, dataclasses.replace(tcfg, steps=probe_steps, warmup=1), device, progress=False,
          measure_peak=False, on_step=lambda step, loss: stamps.append(time.perf_counter()))
    half = len(stamps) // 2
    return (stamps[-1] - stamps[half]) / max(1, len(stamps) - 1 - half)


# ============================================================================ 3a. chapter 06
def check_ch06(ctx: Context) -> None:
    """Greedy decoding with and without the chapter's hand-written cache (kvcache.py), and with
    shared generate's cache, at 1k and 4k new tokens on the device."""
    import torch

    from shared import bench, zoo

    kc = load_chapter("06_kv_cache", "kvcache")
    bundle = zoo.load("wood-llama", ctx.run("06_kv_cache", "quick" if ctx.tiny else "default"), progress=False)
    torch.set_grad_enabled(False)
    model, tok, dev = bundle.model.float().eval().to(ctx.device), bundle.tokenizer, ctx.device
    prompt = torch.tensor([tok.encode("\nOn a happy day, ")], device=dev)
    p = prompt.shape[1]
    r = ctx.result
    r.update(device_name=device_name(dev), model=model.cfg.to_dict(), prompt_tokens=p, rows=[])
    ctx.save()
    def timed(generate):
        """One run, timed: after the short warm-up below, a run of 1000+ tokens is its own warm-up."""
        t0 = time.perf_counter()
        ids = generate()
        bench.sync(dev)
        return ids, time.perf_counter() - t0

    for warm_up in (lambda: kc.generate_uncached(model, prompt, 16), lambda: model.generate(prompt, 16, temperature=0),
                    lambda: kc.generate_cached(model, prompt, 16, kc.FullCache(model.cfg, 1, p + 16, device=dev))):
        warm_up()
    for n in ([20, 60] if ctx.tiny else [1000, 4000]):
        hand, t_cached = timed(lambda: kc.generate_cached(model, prompt, n, kc.FullCache(model.cfg, 1, p + n,
                                                                                         device=dev)))
        _, t_shared = timed(lambda: model.generate(prompt, n, temperature=0))
        uncached, t_uncached = timed(lambda: kc.generate_uncached(model, prompt, n))
        r["rows"].append({"new_tokens": n, "uncached_s": t_uncached, "cached_s": t_cached,
                          "shared_generate_cached_s": t_shared, "speedup": t_uncached / t_cached,
                          "cached_ms_per_token": 1e3 * t_cached / n, "uncached_ms_per_token": 1e3 * t_uncached / n,
                          # token positions pushed through the model: uncached ~ n^2/2, cached ~ n
                          "token_pass_ratio": (n * p + n * (n - 1) // 2) / (p + n - 1),
                          "same_tokens_cached_uncached": (hand == uncached).float().mean().item()})
        ctx.save()
    r["headline"] = {f"speedup_{row['new_tokens']}": round(row["speedup"], 1) for row in r["rows"]}


# ============================================================================ 3b. chapter 09
def check_ch09(ctx: Context) -> None:
    """Decode tokens/s, peak memory and measured cache bytes for MHA -> GQA -> MQA and the
    latent-attention variants of the zoo model (attention_variants.py), next to the formula."""
    import torch

    from shared import bench, zoo
    from shared.model import GPTConfig, KVCache

    av = load_chapter("09_grouped_query_attention", "attention_variants")
    bundle = zoo.load("wood-llama", ctx.run("09_grouped_query_attention", "quick" if ctx.tiny else "default"),
                      progress=False)
    torch.set_grad_enabled(False)
    mha, dev = bundle.model.float().eval().to(ctx.device), ctx.device
    cfg = mha.cfg
    new_tokens = 16 if ctx.tiny else 128        # chapter 09's default preset: 128 tokens after 64 / 1024
    lengths = [32] if ctx.tiny else [64, 1024]
    val = torch.as_tensor(bundle.data.val[:max(lengths)].astype("int64"))
    r = ctx.result
    r.update(device_name=device_name(dev), model=cfg.to_dict(), new_tokens=new_tokens, rows=[])

    def decode_tokens_per_s(generate) -> float:
        """time(n tokens) - time(1 token) removes the prefill, as chapter 09 measures it."""
        t_n = bench.time_fn(lambda: generate(new_tokens), dev, warmup=1, repeat=3)
        t_1 = bench.time_fn(lambda: generate(1), dev, warmup=1, repeat=3)
        return (new_tokens - 1) / max(t_n - t_1, 1e-9)

    variants = [("MHA" if g == cfg.n_head else "MQA" if g == 1 else f"GQA {g} KV heads", g, None)
                for g in range(cfg.n_head, 0, -1) if cfg.n_head % g == 0]
    variants += [(f"MLA d_latent {d}", None, d) for d in (cfg.d_model // 8, cfg.d_model // 4, cfg.d_model // 2)]
    for name, kv_heads, d_latent in variants:
        model = av.to_gqa(mha, kv_heads) if d_latent is None else av.to_mla(mha, d_latent)
        for length in lengths:
            prompt = val[:length][None].to(dev)
            total = length + new_tokens
            if d_latent is None:
                generate = lambda n: model.generate(prompt, n, temperature=0)
                cache = KVCache(GPTConfig(**{**cfg.to_dict(), "n_kv_head": kv_heads}), 1, total, device=dev)
                formula = av.kv_cache_bytes(cfg.n_layer, kv_heads, cfg.head_dim, total)
            else:
                generate = lambda n: av.greedy_decode_mla(model, prompt, n)
                cache = av.LatentCache(cfg.n_layer, 1, total, d_latent, device=dev)
                formula = av.latent_bytes_per_token(cfg.n_layer, d_latent) * total
            with bench.peak_memory(dev) as mem:
                generate(new_tokens)
            r["rows"].append({"variant": name, "prompt_tokens": length,
                              "decode_tokens_per_s": decode_tokens_per_s(generate),
                              "cache_bytes_measured": cache.nbytes, "cache_bytes_formula": formula,
                              "peak_bytes": mem.bytes, "peak_kind": mem.kind})
            del cache
        ctx.save()
    mismatch = [row for row in r["rows"] if row["cache_bytes_measured"] != row["cache_bytes_formula"]]
    r["headline"] = {f"{row['variant']} @{row['prompt_tokens']}": round(row["decode_tokens_per_s"])
                     for row in r["rows"]}
    if mismatch:
        raise AssertionError(f"measured cache bytes differ from the formula: {mismatch[0]}")


# ============================================================================ 4. chapter 14
def check_ch14(ctx: Context) -> None:
    """bitsandbytes int8 (with and without outliers), NF4 and FP4 layers in the block linears
    chapter 14 quantizes (quantizers.py), on the device: story loss next to fp32 and fp16, bits per
    weight, and bytes the model takes on the device."""
    import copy
    import logging

    import torch

    from shared import stacks, zoo
    from shared.corpus import HundredAcreWood
    from shared.errors import StackMissing
    from shared.evaluate import story_loss

    try:
        bnb = stacks.require("bitsandbytes")
    except StackMissing as e:
        raise Skip(f"bitsandbytes: {e.why} (carry its wheel in .whl/)") from e
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    quantizers = load_chapter("14_quantization", "quantizers")
    bundle = zoo.load("wood-llama", ctx.run("14_quantization", "quick" if ctx.tiny else "default"), progress=False)
    torch.set_grad_enabled(False)
    base, tok, dev = bundle.model.float().eval().cpu(), bundle.tokenizer, ctx.device
    stories = HundredAcreWood().stories(30 if ctx.tiny else 256, seed=ctx.seed + 14_014)
    r = ctx.result
    r.update(device_name=device_name(dev), model=base.cfg.to_dict(), stories=len(stories), rows=[])
    variants = [("fp32", lambda: copy.deepcopy(base)), ("fp16", lambda: copy.deepcopy(base).half())]
    variants += [(f"bitsandbytes {kind}", lambda kind=kind: bnb_model(bnb, quantizers, base, kind))
                 for kind in ("int8", "int8+outliers", "nf4", "fp4")]
    for name, make in variants:
        try:
            model, bytes_on_device = to_device_counting(make(), dev)
            row = {"method": name, "nats_per_char": story_loss(model, tok, stories, dev)["model_nats_per_char"],
                   "bytes_on_device": bytes_on_device, "param_bytes": stored_bytes(model),
                   "bits_per_weight": linear_bits(quantizers, base, model)}
        except Exception as e:  # noqa: BLE001 - one layer type failing must not hide the others
            row = {"method": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        r["rows"].append(row)
        ctx.save()
    ref = {row["method"]: row for row in r["rows"] if "nats_per_char" in row}
    for row in r["rows"]:
        if "nats_per_char" in row and "fp16" in ref:
            row["vs_fp16_nats_per_char"] = row["nats_per_char"] - ref["fp16"]["nats_per_char"]
            row["memory_vs_fp16"] = row["param_bytes"] / ref["fp16"]["param_bytes"]
    errors = [row for row in r["rows"] if "error" in row]
    r["headline"] = {row["method"].replace("bitsandbytes ", ""): round(row["vs_fp16_nats_per_char"], 4)
                     for row in r["rows"] if "vs_fp16_nats_per_char" in row}
    if errors:
        raise RuntimeError(f"{len(errors)} variants failed, first: {errors[0]}")


def bnb_model(bnb, quantizers, model, kind: str):
    """A copy with bitsandbytes layers in place of the block linears, as chapter 14 builds them:
    LLM.int8 (outlier threshold 6 or none) or 4-bit NF4/FP4 (blocks of 64, one absmax each).
    The weights are quantized when the model moves to its device."""
    import copy

    import torch

    def make(lin, _):
        w = lin.weight.data.clone()
        if kind.startswith("int8"):
            layer = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=False, has_fp16_weights=False,
                                        threshold=6.0 if kind == "int8+outliers" else 0.0)
            layer.weight = bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=False, quant_type=kind,
                                      compute_dtype=torch.float32)
            layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type=kind)
        return layer

    return quantizers.replace_linears(copy.deepcopy(model).cpu(), make).eval()


def to_device_counting(model, device):
    """Move a model to the device; on CUDA also return how many bytes that allocated."""
    import torch

    if device.type != "cuda":
        return model.to(device), None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    model = model.to(device)
    torch.cuda.synchronize(device)
    return model, torch.cuda.memory_allocated(device) - before


def stored_bytes(module) -> int:
    """Bytes of a module's parameters and buffers as stored (int8 codes, packed 4-bit, fp16, ...),
    plus bitsandbytes' quantization constants, which live outside the parameters."""
    total = sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))
    for m in module.modules():
        weight = getattr(m, "weight", None)
        state, row_scale = getattr(weight, "quant_state", None), getattr(weight, "SCB", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
        if row_scale is not None:
            total += row_scale.numel() * row_scale.element_size()
    return total


def linear_bits(quantizers, base, model) -> float:
    """Stored bits per weight of the block linears chapter 14 quantizes (codes + constants)."""
    names = [name for name, _ in quantizers.quantizable(base)]
    weights = sum(lin.weight.numel() for _, lin in quantizers.quantizable(base))
    return 8 * sum(stored_bytes(model.get_submodule(name)) for name in names) / weights


# ============================================================================ 5. chapter 15
def check_ch15(ctx: Context) -> None:
    """The chapter's engines (engines.py): the workbook generate with its KV cache (the reference),
    HF `generate` on the exported folder, and DeepSpeed inference when it imports: tokens/s, time
    to first token and per-token latency by batch size, and whether the greedy tokens agree."""
    import torch

    from shared import hf, stacks, zoo
    from shared.errors import StackMissing

    engines = load_chapter("15_stacks", "engines")
    quiet_libraries()
    bundle = zoo.load("wood-llama", ctx.run("15_stacks", "quick" if ctx.tiny else "default"), progress=False)
    model, dev = bundle.model.eval(), ctx.device
    batch_sizes = [1, 4] if ctx.tiny else [1, 4, 16, 64]
    context, n_new, repeats = (32, 8, 1) if ctx.tiny else (64, 32, 3)    # chapter 15's default preset
    g = torch.Generator().manual_seed(ctx.seed)
    prompts = {b: bundle.data.get_batch("val", b, context, g)[0] for b in batch_sizes}
    folder = hf.save_pretrained(model.cpu(), ctx.work / "ch15-hf")
    model.to(dev)
    r = ctx.result
    r.update(device_name=device_name(dev), context=context, n_new=n_new, repeats=repeats, stacks=[], skipped=[])

    def pytorch():
        return engines.PyTorchEngine(model, dev)

    def hf_engine():
        return engines.HFEngine(folder, dev)

    def deepspeed():
        ds = stacks.require("deepspeed")
        clone = type(model)(model.cfg)
        clone.load_state_dict(model.state_dict())
        return engines.DeepSpeedEngine(clone.to(dev).eval(), dev, ds)

    builders = [("pytorch", pytorch), ("hf", hf_engine)] + ([] if ctx.tiny else [("deepspeed", deepspeed)])
    reference = {}
    for name, build in builders:   # deepspeed last: its start-up is the least predictable
        row = {"stack": name}
        try:
            t0 = time.perf_counter()
            engine = build()
            row["load_s"] = time.perf_counter() - t0
            for b in batch_sizes:
                m = measure_generation(engine, prompts[b], n_new, repeats)
                tokens = m.pop("tokens")
                if name == "pytorch":
                    reference[b] = tokens
                elif b in reference:
                    m["same_tokens_as_pytorch"] = (tokens == reference[b]).float().mean().item()
                row.setdefault("batch_sweep", []).append(m)
                ctx.save()
            engine.close()
        except StackMissing as e:
            r["skipped"].append(f"{name}: {e.why}")
            continue
        except Exception as e:  # noqa: BLE001 - keep the stacks that did run
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        r["stacks"].append(row)
        ctx.save()
    r["tokens_per_s_by_batch"] = [{"stack": row["stack"], **{f"B={m['batch']}": m["tokens_per_s"]
                                                             for m in row.get("batch_sweep", [])}}
                                  for row in r["stacks"]]
    r["headline"] = {row["stack"]: {k: round(v) for k, v in row.items() if k.startswith("B=")}
                     for row in r["tokens_per_s_by_batch"]}
    errors = [row for row in r["stacks"] if "error" in row]
    if errors:
        raise RuntimeError(f"stack {errors[0]['stack']} failed: {errors[0]['error']}")


def measure_generation(engine, prompt, n_new: int, repeats: int) -> dict:
    """One untimed warm-up, then medians over `repeats` generations (as chapter 15 measures):
    time to first token, per-token latency of the decode phase, tokens/s over the batch."""
    import statistics

    engine.generate(prompt, n_new)
    runs = [engine.generate(prompt, n_new) for _ in range(repeats)]
    ttft = statistics.median(g.ttft_s for g in runs)
    total = statistics.median(g.total_s for g in runs)
    return {"batch": prompt.shape[0], "context": prompt.shape[1], "n_new": n_new, "ttft_ms": 1e3 * ttft,
            "per_token_ms": 1e3 * (total - ttft) / max(1, n_new - 1),
            "tokens_per_s": prompt.shape[0] * n_new / total, "tokens": runs[-1].tokens}


def quiet_libraries() -> None:
    """transformers' progress bars and DeepSpeed's INFO lines would bury the log."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)


# ============================================================================ 6. the gpu-marked tests
def check_pytest_gpu(ctx: Context) -> None:
    """`pytest -m gpu` on the test files that hold gpu-marked tests (collecting the others would
    only spend the box), one process, with its own timeout inside the box."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text())
    r = ctx.result
    r["files"] = files
    if not files:
        raise Skip("no gpu-marked tests in tests/")
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-n", "0", "-p", "no:cacheprovider",
           "--junitxml", str(ctx.out / "pytest_gpu.xml"), *files]
    r["command"] = " ".join(cmd[1:])
    ctx.save()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=max(5, ctx.seconds_left() - 3))
    print(proc.stdout[-6000:] + proc.stderr[-3000:])
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    summary = lines[-1] if lines else ""
    r.update(returncode=proc.returncode, summary=summary,
             counts={kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                                            summary)})
    r["headline"] = {"pytest": summary}
    if proc.returncode not in (0, 5):   # 5: nothing collected
        raise RuntimeError(f"pytest exited {proc.returncode}: {summary}")


# ============================================================================ the runner
CHECKS = [  # (name, check, time box on the GPU in seconds), in priority order
    ("environment", check_environment, 30),
    ("ch07_long_context", check_ch07, 110),
    ("ch04_transformer_block", check_ch04, 75),
    ("ch06_kv_cache", check_ch06, 70),
    ("ch09_grouped_query_attention", check_ch09, 45),
    ("ch14_quantization", check_ch14, 45),
    ("ch15_stacks", check_ch15, 75),
    ("pytest_gpu", check_pytest_gpu, 60),
]
NAMES = [name for name, _, _ in CHECKS]


def run_one(args) -> int:
    """Child mode: run one check in this process and write its JSON (even when it fails)."""
    import torch

    fn = {name: f for name, f, _ in CHECKS}[args.check]
    ctx = Context(args.check, torch.device(args.device), args.tiny, args.out, args.work, args.seed, args.deadline)
    ctx.result.update(check=args.check, status="running", device=args.device, tiny=args.tiny,
                      box_s=round(args.deadline - time.time(), 1), torch=torch.__version__,
                      python=sys.version.split()[0], cuda_available=torch.cuda.is_available(),
                      date=time.strftime("%Y-%m-%d %H:%M:%S"))
    ctx.save()
    try:
        if args.check in os.environ.get("GPU_CHECK_FAIL", "").split(","):
            raise RuntimeError("failure injected by GPU_CHECK_FAIL")
        if args.check in os.environ.get("GPU_CHECK_HANG", "").split(","):
            time.sleep(10**6)
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda, but torch sees no CUDA GPU")
        if args.device == "cpu":
            torch.set_num_threads(1)   # the CPU dry-run shares its cores: one thread is the fast choice
        fn(ctx)
        ctx.result.update(status="ok")
    except Skip as e:
        ctx.result.update(status="skipped", reason=str(e))
    except Exception as e:  # noqa: BLE001 - the JSON must say what went wrong
        ctx.result.update(status="failed", reason=f"{type(e).__name__}: {str(e)[:1000]}",
                          traceback=traceback.format_exc()[-4000:])
        traceback.print_exc()
    ctx.result["seconds"] = time.perf_counter() - ctx.started
    ctx.save()
    return 0 if ctx.result["status"] != "failed" else 1


def install_wheels(wheel_dir: Path, target: Path, log, python: str = sys.executable) -> list[str]:
    """Unpack carried wheels into `target` with `python -m pip` (no index, no dependencies: nothing
    can be fetched on the GPU machine) and put it on the path of this process and of every check."""
    wheels = sorted(wheel_dir.glob("*.whl")) if wheel_dir.is_dir() else []
    if not wheels:
        return []
    cmd = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(target),
           *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    log(f"wheels: {' '.join(w.name for w in wheels)} -> {target} (pip exit {proc.returncode})")
    if proc.returncode != 0:
        log(proc.stdout[-2000:] + proc.stderr[-2000:])
        return []
    sys.path.insert(1, str(target))
    return [w.name for w in wheels]


def stamp(out: Path, name: str, status: str, reason: str, seconds: float | None = None) -> dict:
    """The final word on a check's JSON: keep what the check measured, set status and reason."""
    path = out / f"{name}.json"
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        result = {"check": name}
    result.update(status=status, reason=reason)
    if seconds is not None:
        result["seconds"] = seconds
    write_json(path, result)
    return result


def run_child(name: str, box: float, args, env: dict, log_file) -> dict:
    """Run one check as a child process in its own session (so a kill takes its children too)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--check", name, "--out", str(args.out),
           "--device", args.device, "--work", str(args.work), "--seed", str(args.seed),
           "--deadline", str(time.time() + box)]
    if args.tiny:
        cmd.append("--tiny")
    log_file.write(f"\n===== {name} (time box {box:.0f} s) =====\n")
    log_file.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        proc.wait(timeout=box)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return stamp(args.out, name, "failed", f"time box of {box:.0f} s exceeded (partial numbers kept)",
                     time.perf_counter() - t0)
    result = json.loads((args.out / f"{name}.json").read_text()) if (args.out / f"{name}.json").exists() else {}
    if result.get("status") in ("ok", "failed", "skipped"):
        return result
    return stamp(args.out, name, "failed", f"check process exited {proc.returncode} without a status "
                 f"(crash? see {LOG_NAME})", time.perf_counter() - t0)


def run_all(args) -> int:
    """Runner mode: wheels, then every check in priority order within the overall budget."""
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.out / LOG_NAME, "a", buffering=1) as log_file:
        def log(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")

        only = set(args.only.split(",")) if args.only else set(NAMES)
        unknown = only - set(NAMES)
        if unknown:
            log(f"error: unknown check(s) {', '.join(sorted(unknown))}; choose from {', '.join(NAMES)}")
            return 2
        log(f"gpu_check: device {args.device}{' (tiny)' if args.tiny else ''}, budget {args.budget_s:.0f} s, "
            f"out {args.out}")
        wheels = install_wheels(args.wheels, args.work / "site", log)
        env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1", "GPU_CHECK_WHEELS": ",".join(wheels),
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), str(args.work / "site") if wheels else "",
                                                          os.environ.get("PYTHONPATH", "")) if p)}
        summary = []
        for name, _, box in CHECKS:
            left = args.budget_s - (time.perf_counter() - started)
            box = min(box, args.max_check_s or box, left - KILL_MARGIN_S)
            t0 = time.perf_counter()
            if name not in only:
                result = stamp_new(args.out, name, "skipped", "not selected by --only")
            elif left < MIN_START_S:
                result = stamp_new(args.out, name, "skipped", f"overall budget nearly spent ({left:.0f} s left)")
            elif name != "environment" and no_device(summary, args.device):
                result = stamp_new(args.out, name, "skipped", "the environment check found no CUDA device")
            else:
                result = run_child(name, box, args, env, log_file)
            seconds = time.perf_counter() - t0   # wall time, the child's start-up included
            headline = json.dumps(result.get("headline", {}))[:300]
            reason = f" — {result.get('reason')}" if result.get("reason") else ""
            log(f"{name:<30} {result['status']:<8} {seconds:6.1f} s  {headline}{reason[:300]}")
            summary.append({"check": name, "status": result["status"], "seconds": seconds,
                            "reason": result.get("reason"), "headline": result.get("headline"),
                            "cuda_available": result.get("cuda_available")})
        total = time.perf_counter() - started
        write_json(args.out / "summary.json", {"device": args.device, "tiny": args.tiny, "budget_s": args.budget_s,
                                               "total_s": total, "wheels": wheels, "checks": summary})
        failed = [s["check"] for s in summary if s["status"] == "failed"]
        log(f"gpu_check: {total:.0f} s, {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
        return 1 if failed else 0


def stamp_new(out: Path, name: str, status: str, reason: str) -> dict:
    """A check that never started still gets its JSON (so every check has one)."""
    write_json(out / f"{name}.json", {"check": name, "status": status, "reason": reason, "seconds": 0.0})
    return {"check": name, "status": status, "reason": reason, "seconds": 0.0}


def no_device(summary: list[dict], device: str) -> bool:
    env = next((s for s in summary if s["check"] == "environment"), None)
    return device == "cuda" and env is not None and env.get("cuda_available") is False


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON files and the log ($OUT)")
    p.add_argument("--budget-s", type=float, default=330, help="overall seconds for all checks (default 330)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (the dry-run's)")
    p.add_argument("--dry-run", action="store_true", help="--device cpu --tiny: every check end to end in < 1 min")
    p.add_argument("--only", default=None, help=f"comma list of checks to run (others: skipped): {','.join(NAMES)}")
    p.add_argument("--max-check-s", type=float, default=None, help="cap every check's time box (a short rerun)")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl", help="folder of carried wheels (default .whl/)")
    p.add_argument("--work", type=Path, default=Path("/tmp/gpu_check_work"), help="scratch: checkpoints, wheels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", choices=NAMES, default=None, help=argparse.SUPPRESS)   # child mode
    p.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)   # time.time() of the kill
    args = p.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    if args.deadline is None:
        args.deadline = time.time() + 60
    args.out, args.work = args.out.resolve(), args.work.resolve()
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    return run_one(args) if args.check else run_all(args)


if __name__ == "__main__":
    sys.exit(main())
