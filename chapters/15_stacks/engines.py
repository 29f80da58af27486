"""One small adapter per inference stack, all with the same two verbs.

    engine.logits(ids)              -> (T, vocab) float32 logits of one sequence (for parity checks)
    engine.generate(prompt, n_new)  -> Generation(tokens (B, n_new), ttft_s, total_s)

Every adapter decodes greedily (temperature 0) so all stacks must produce the same tokens,
and every adapter times itself the same way: the clock starts before the prompt goes in,
"first token" is when the first new token id exists on the host, "total" when the last does.
Nothing here is simulated: an adapter either drives the real library or is never built
(`shared.stacks.require` raises StackMissing and the chapter prints one skip line).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shared import bench
from shared.model import GPT, KVCache


@dataclass
class Generation:
    tokens: torch.Tensor   # (B, n_new) token ids
    ttft_s: float          # prompt in -> first new token out (prefill + one sample)
    total_s: float         # prompt in -> last new token out


class Engine:
    name = "base"
    max_batch: int | None = None   # None: any batch size; 1: the API decodes one sequence at a time

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate(self, prompt: torch.Tensor, n_new: int) -> Generation:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the stack holds (models, caches, C++ contexts)."""


# ============================================================================ plain PyTorch
class PyTorchEngine(Engine):
    """The workbook GPT with its KV cache: prefill the prompt once, then one token per step.
    `forward` is the callable that runs the model, so DeepSpeed can reuse this loop."""

    name = "pytorch"

    def __init__(self, model: GPT, device: torch.device, forward=None):
        self.model, self.device = model.eval(), torch.device(device)
        self.forward = forward or self.model

    @torch.no_grad()
    def logits(self, ids):
        return self.forward(ids.to(self.device))[0].float().cpu()

    @torch.no_grad()
    def generate(self, prompt, n_new):
        prompt = prompt.to(self.device)
        b, t = prompt.shape
        p = next(self.model.parameters())
        cache = KVCache(self.model.cfg, b, t + n_new, device=self.device, dtype=p.dtype)
        bench.sync(self.device)
        t0 = time.perf_counter()
        nxt = self.forward(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
        out = [nxt.cpu()]          # .cpu() waits for the GPU: the token really exists now
        ttft = time.perf_counter() - t0
        for _ in range(n_new - 1):
            nxt = self.forward(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
            out.append(nxt.cpu())
        return Generation(torch.cat(out, 1), ttft, time.perf_counter() - t0)


# ============================================================================ Hugging Face
class _TimingStreamer:
    """transformers calls put() once with the prompt, then once per generated step."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


class HFEngine(Engine):
    """AutoModelForCausalLM.from_pretrained on the exported folder, decoding with the real
    `model.generate` (its own KV cache, logits processors and stopping criteria)."""

    name = "hf"

    def __init__(self, folder: Path, device: torch.device):
        from transformers import AutoModelForCausalLM

        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                          dtype=torch.float32).to(self.device).eval()

    @torch.no_grad()
    def logits(self, ids):
        return self.model(ids.to(self.device)).logits[0].float().cpu()

    @torch.no_grad()
    def generate(self, prompt, n_new):
        prompt = prompt.to(self.device)
        streamer = _TimingStreamer()
        bench.sync(self.device)
        t0 = time.perf_counter()
        # min_new_tokens = max_new_tokens: the tiny models have no EOS, every stack makes n_new tokens
        out = self.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                  min_new_tokens=n_new, do_sample=False, streamer=streamer,
                                  pad_token_id=0, eos_token_id=None)
        total = time.perf_counter() - t0
        # times[0] is the prompt being handed to the streamer, times[1] the first new token
        return Generation(out[:, prompt.shape[1]:].cpu(), streamer.times[1] - t0, total)


# ============================================================================ DeepSpeed
class DeepSpeedEngine(PyTorchEngine):
    """deepspeed.init_inference wraps the workbook model in an InferenceEngine. On CPU there
    are no fused kernels to inject (kernel injection raises; the chapter records why), so
    this measures what the wrapper itself costs; on a GPU with kernel injection it is where
    DeepSpeed's fused attention/MLP kernels and tensor parallelism come in."""

    name = "deepspeed"

    def __init__(self, model: GPT, device: torch.device, deepspeed):
        engine = deepspeed.init_inference(model, dtype=next(model.parameters()).dtype,
                                          replace_with_kernel_inject=False)
        super().__init__(engine.module, device, forward=engine)
        self.ds_engine = engine


def try_kernel_injection(deepspeed, hf_model) -> str | None:
    """DeepSpeed's headline feature: swap HF layers for its fused kernels. None if it worked,
    else the real error in one line (it needs a GPU build of DeepSpeed's ops)."""
    try:
        deepspeed.init_inference(hf_model, dtype=torch.float32, replace_with_kernel_inject=True)
        return None
    except Exception as e:  # the library's own error, reported verbatim
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


# ============================================================================ llama.cpp
class LlamaCppEngine(Engine):
    """llama-cpp-python on a GGUF file: llama.cpp's C++ forward pass with its own KV cache,
    threads and sampler. Its Python API decodes one sequence at a time (max_batch = 1)."""

    name = "llama.cpp"
    max_batch = 1

    def __init__(self, gguf_path: Path, n_ctx: int, threads: int):
        from shared import gguf_export

        # float32 K/V cache (llama.cpp defaults to f16) so an F32 GGUF can match PyTorch closely
        self.llm = gguf_export.load_llama_cpp(gguf_path, n_ctx=n_ctx, n_threads=threads, f32_cache=True)

    def logits(self, ids):
        from shared import gguf_export

        return torch.from_numpy(gguf_export.llama_cpp_logits(self.llm, ids[0].tolist()))

    def generate(self, prompt, n_new):
        self.llm.reset()  # forget the previous run: no prefix-cache hit flatters the prefill
        t0 = time.perf_counter()
        ttft, out = 0.0, []
        for tok in self.llm.generate(prompt[0].tolist(), temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            if not out:
                ttft = time.perf_counter() - t0
            out.append(tok)
            if len(out) == n_new:
                break
        return Generation(torch.tensor([out]), ttft, time.perf_counter() - t0)

    def close(self):
        self.llm.close() if hasattr(self.llm, "close") else None
        del self.llm


# ============================================================================ vLLM (GPU)
def vllm_reported_ttft(metrics) -> float | None:
    """vLLM's own time to first token for one request, from `RequestOutput.metrics`; None if absent.

    In the pinned vLLM (0.32, the V1 engine) `metrics` is a `RequestStateStats`, or None whenever the
    engine does not log stats (the offline `LLM` class turns them off by default). Its times come from
    two clocks: `arrival_time` is the frontend's wall clock (time.time()), while `queued_ts`,
    `scheduled_ts`, `first_token_ts` and `last_token_ts` are the engine core's monotonic clock. A
    latency must stay within one clock: `first_token_latency` (vLLM subtracts two wall-clock times),
    else first_token_ts - queued_ts (two monotonic ones). Never first_token_ts - arrival_time. There is
    no `first_token_time` field: that was V0's `RequestMetrics`, and reading it gives nothing."""
    if metrics is None:
        return None
    if metrics.first_token_latency > 0:
        return metrics.first_token_latency
    if metrics.first_token_ts > 0 and metrics.queued_ts > 0:
        return metrics.first_token_ts - metrics.queued_ts
    return None


@dataclass
class StepTiming:
    first_token_s: list[float]   # per request: clock start -> end of the first step that returned a token for it
    total_s: float               # clock start -> every request finished
    outputs: list                # the final RequestOutput of each request, in prompt order


def stream_requests(engine, prompts: list[list[int]], params, clock=time.perf_counter) -> StepTiming:
    """Feed every prompt to a vLLM `LLMEngine` and call `step()` until all requests finish, timing
    each request on one monotonic clock (ours): the clock starts just before the first
    `add_request`; a request's first token exists at the end of the first `step()` whose output for it
    holds a token id. `step()` runs one scheduler iteration (prefill or decode for the whole running
    batch) and returns the requests that made progress, so this is the streaming view a server has."""
    names = [f"r{i}" for i in range(len(prompts))]
    t0 = clock()
    for name, ids in zip(names, prompts):
        engine.add_request(name, {"prompt_token_ids": ids}, params)
    first, final = {}, {}
    while engine.has_unfinished_requests():
        outputs = engine.step()
        now = clock()
        for out in outputs:
            if out.request_id not in first and len(out.outputs[0].token_ids) > 0:
                first[out.request_id] = now - t0
            if out.finished:
                final[out.request_id] = out
    total = clock() - t0
    lost = [n for n in names if n not in first or n not in final]
    if lost:
        raise RuntimeError(f"vLLM finished without a token or a final output for requests {lost}")
    return StepTiming([first[n] for n in names], total, [final[n] for n in names])


class VLLMEngine(Engine):
    """vLLM's `LLMEngine` on the exported HF folder, fed token ids (the workbook models have no HF
    tokenizer). vLLM owns the batching (continuous batching, paged KV cache): the whole batch goes in
    as separate requests and its scheduler decides what runs together. Timed with a step loop
    (`stream_requests`) because the offline `LLM.generate` returns only when everything is done.
    Written against the pinned vLLM 0.32 API and tested on recorded shapes only: it has never run on a
    GPU (none has been lent to this project yet)."""

    name = "vllm"

    def __init__(self, folder: Path, max_len: int):
        from vllm import EngineArgs, LLMEngine

        args = EngineArgs(model=str(folder), skip_tokenizer_init=True, dtype="float32", max_model_len=max_len,
                          gpu_memory_utilization=0.5, enforce_eager=True, seed=0,
                          enable_prefix_caching=False,   # a repeated prompt must not skip its prefill
                          disable_log_stats=False)       # so RequestOutput.metrics is filled (a cross-check)
        self.engine = LLMEngine.from_engine_args(args)
        self.reported_ttft_s: list[float | None] = []   # vLLM's own view, per generate() call

    def logits(self, ids):
        raise NotImplementedError("vLLM returns log-probs of sampled tokens, not full logits")

    def generate(self, prompt, n_new):
        from vllm import SamplingParams

        params = SamplingParams(temperature=0.0, max_tokens=n_new, min_tokens=n_new, ignore_eos=True,
                                detokenize=False)
        timing = stream_requests(self.engine, [row.tolist() for row in prompt], params)
        reported = [vllm_reported_ttft(out.metrics) for out in timing.outputs]
        self.reported_ttft_s.append(max(reported) if None not in reported else None)
        tokens = torch.tensor([list(out.outputs[0].token_ids) for out in timing.outputs])
        # every sequence of the batch has its first token: the same moment PyTorchEngine measures
        return Generation(tokens, max(timing.first_token_s), timing.total_s)

    def close(self):
        del self.engine
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
