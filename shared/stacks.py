"""Optional stacks in one place. A chapter asks for a stack and either gets the imported
module or a `StackMissing` that names what is missing and the exact command that
enables it; `skipped()` prints that as one line and the chapter carries on with its CPU path.

    try:
        flash_attn = stacks.require("flash-attn")
    except StackMissing as e:
        stacks.skipped(e)
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass

import torch

from shared.errors import StackMissing


@dataclass(frozen=True)
class Stack:
    module: str
    needs_cuda: bool
    enable: str


STACKS: dict[str, Stack] = {
    "cuda": Stack("torch", True, "run on a machine with an NVIDIA GPU (the PyPI torch wheel is a CUDA build)"),
    "flash-attn": Stack("flash_attn", True, "uv sync --extra gpu   (Linux + CUDA GPU; compiles flash-attn)"),
    "vllm": Stack("vllm", True, "uv sync --extra gpu   (Linux + CUDA GPU)"),
    "triton": Stack("triton", True, "a CUDA GPU (triton comes with torch on Linux)"),
    "deepspeed": Stack("deepspeed", False, "uv sync   (deepspeed is a base dependency)"),
    "bitsandbytes": Stack("bitsandbytes", False, "uv sync   (bitsandbytes is a base dependency)"),
    "llama-cpp": Stack("llama_cpp", False, "uv sync --extra llama   (builds llama.cpp from source, ~5 min on 2 cores)"),
    "autoawq": Stack("awq", True, "uv pip install autoawq   (CUDA GPU only)"),
    "tensorboard": Stack("tensorboard", False, "uv sync --extra tensorboard"),
}


def check(name: str) -> str | None:
    """None if `name` is usable here, else the reason it is not."""
    stack = STACKS[name]
    if stack.needs_cuda and not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    if importlib.util.find_spec(stack.module) is None:
        return f"python package '{stack.module}' is not installed"
    return None


def available(name: str) -> bool:
    return check(name) is None


def require(name: str):
    """Import and return the stack's module, or raise StackMissing with the fix."""
    why = check(name)
    if why is None:
        if name == "deepspeed":  # let DeepSpeed pick the CPU accelerator without a GPU
            os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        try:
            return importlib.import_module(STACKS[name].module)
        except Exception as e:  # installed but broken (ABI mismatch, missing .so, ...)
            why = f"'{STACKS[name].module}' is installed but failed to import: {type(e).__name__}: {e}"
    raise StackMissing(name, why, STACKS[name].enable)


def skipped(err: StackMissing, what: str | None = None) -> str:
    """Print (and return) the single line a chapter shows when it skips a stack."""
    line = f"skipped: {what or err.stack} — {err.why}; enable with: {err.enable}"
    print(line, file=sys.stdout, flush=True)
    return line


def report() -> dict[str, str]:
    """Which stacks this machine has: {name: 'ok' | reason}."""
    return {name: (check(name) or "ok") for name in STACKS}
