"""Saving and loading models and training state as single safetensors files.

One file holds the weights, (optionally) the optimizer moments and RNG states as tensors,
and the configs, step and loss history as JSON in the file's metadata. Files are written
to a temporary name and renamed, so an interrupted save never clobbers a good checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared.errors import WorkbookError
from shared.files import atomic_path
from shared.model import GPT, GPTConfig


def _atomic_save(tensors: dict, metadata: dict, path: Path) -> None:
    with atomic_path(path) as tmp:  # a killed save leaves the old checkpoint, never half a new one
        # clone: safetensors refuses tensors that share memory (tied embeddings)
        save_file({k: v.detach().contiguous().cpu().clone() for k, v in tensors.items()}, tmp,
                  metadata={k: json.dumps(v) for k, v in metadata.items()})


def read(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a workbook checkpoint, or one clear error."""
    path = Path(path)
    if not path.exists():
        raise WorkbookError(f"checkpoint {path} does not exist")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            raw = f.metadata() or {}
        meta = {k: json.loads(v) for k, v in raw.items()}
    except (SafetensorError, json.JSONDecodeError, OSError, ValueError) as e:
        raise WorkbookError(f"checkpoint {path} is corrupt or not a workbook checkpoint ({e})") from e
    if "model_config" not in meta:
        raise WorkbookError(f"checkpoint {path} has no model_config: not a workbook checkpoint")
    return tensors, meta


def save_model(model: GPT, path: Path, **extra) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    _atomic_save(tensors, {"model_config": model.cfg.to_dict(), **extra}, path)


def load_model(path: Path, device="cpu") -> tuple[GPT, dict]:
    tensors, meta = read(path)
    model = GPT(GPTConfig(**meta["model_config"]))
    _load_weights(model, tensors, path)
    return model.to(device), meta


def _load_weights(model: GPT, tensors: dict, path) -> None:
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise WorkbookError(f"checkpoint {path} does not fit this model: {str(e).splitlines()[0]}") from e


def check_config(meta: dict, model: GPT, path) -> None:
    saved = meta["model_config"]
    now = model.cfg.to_dict()
    diff = [f"{k} {saved.get(k)!r} vs {now.get(k)!r}" for k in now if saved.get(k) != now.get(k)]
    if diff:
        raise WorkbookError(f"checkpoint {path} was made for a different model config ({'; '.join(diff)})")


def save_training_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer, rng: dict, meta: dict) -> None:
    """Weights + AdamW moments + RNG states + metadata (step, history, configs)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{pid}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    for name, state in rng.items():
        tensors[f"rng.{name}"] = state
    _atomic_save(tensors, {"model_config": model.cfg.to_dict(), "param_groups": _tag_tuples(opt["param_groups"]),
                           **meta}, path)


def load_training_state(path: Path, model: GPT, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore weights and optimizer in place; returns (rng states, metadata)."""
    tensors, meta = read(path)
    check_config(meta, model, path)
    _load_weights(model, tensors, path)
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    try:
        optimizer.load_state_dict({"state": state, "param_groups": _untag_tuples(meta["param_groups"])})
    except (ValueError, KeyError) as e:
        raise WorkbookError(f"checkpoint {path}: optimizer state does not fit ({e})") from e
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    return rng, meta


# JSON has lists but no tuples, so AdamW's betas=(0.9, 0.95) would come back as [0.9, 0.95]: the
# resumed optimizer would differ from the one that was saved (and from a fresh one). Tuples are
# written as {"__tuple__": [...]} and turned back on load. (Floats and ints keep their JSON types.)
_TUPLE = "__tuple__"


def _tag_tuples(value):
    if isinstance(value, tuple):
        return {_TUPLE: [_tag_tuples(v) for v in value]}
    if isinstance(value, list):
        return [_tag_tuples(v) for v in value]
    if isinstance(value, dict):
        return {k: _tag_tuples(v) for k, v in value.items()}
    return value


def _untag_tuples(value):
    if isinstance(value, dict):
        if set(value) == {_TUPLE}:
            return tuple(_untag_tuples(v) for v in value[_TUPLE])
        return {k: _untag_tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_untag_tuples(v) for v in value]
    return value
