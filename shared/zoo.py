"""Small named reference models, trained on demand and cached in models/checkpoints.

    bundle = zoo.load("wood-llama", run)        # trains once (~1 min on 2 CPU cores), then loads
    bundle.model, bundle.tokenizer, bundle.data, bundle.history

A cached model is keyed by a hash of everything that defines it (corpus, tokenizer, the
full model config with its defaults, the full training config, preset, seed), so changing
any of them, even a default in GPTConfig or TrainConfig, trains a new one. A file is only
trusted after its stored configs are compared with the expected ones: a stale or foreign
checkpoint under the right name is an error, never a model labelled as the zoo's.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shared import tokenizer as tokenizers
from shared.checkpoint import load_model, save_model
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.model import GPT, GPTConfig
from shared.train import TrainConfig, estimate_seconds, train

LLAMA = dict(pos="rope", norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False)
GPT2 = dict(pos="learned", norm="layernorm", activation="gelu_tanh", bias=True, tie_embeddings=True)

# per preset: (model size, training schedule, characters of text)
SIZES = {
    "quick": (dict(n_layer=2, n_head=4, d_model=64, block_size=128),
              dict(steps=30, batch_size=8, seq_len=128, lr=3e-3, warmup=5, eval_every=0, eval_batches=2), 200_000),
    "default": (dict(n_layer=4, n_head=8, d_model=128, block_size=256),
                dict(steps=300, batch_size=16, seq_len=256, lr=3e-3, warmup=30, eval_every=100, eval_batches=4), 2_000_000),
    "full": (dict(n_layer=8, n_head=8, d_model=512, block_size=1024),
             dict(steps=5000, batch_size=32, seq_len=1024, lr=1e-3, warmup=200, eval_every=500, eval_batches=16), 20_000_000),
}


@dataclass(frozen=True)
class Entry:
    name: str
    corpus: str            # wood | english
    tokenizer: str         # char | bpe
    shape: dict            # GPTConfig switches (Llama- or GPT-2-style)
    vocab_size: int = 0    # BPE only
    about: str = ""


ZOO = {e.name: e for e in [
    Entry("wood-llama", "wood", "char", LLAMA, about="Llama-shaped char model of the Hundred Acre Wood (RoPE, RMSNorm, SwiGLU, MHA)"),
    Entry("wood-gpt2", "wood", "char", GPT2, about="GPT-2-shaped char model of the Hundred Acre Wood (learned positions, LayerNorm)"),
    Entry("english-llama", "english", "bpe", LLAMA, vocab_size=1024, about="Llama-shaped BPE-1024 model of Python's help text"),
]}


@dataclass
class Bundle:
    model: GPT
    tokenizer: object
    data: TokenData
    entry: Entry
    path: Path
    meta: dict = field(default_factory=dict)

    @property
    def history(self) -> dict:
        return self.meta.get("history", {})


def configs(entry: Entry, preset: str, seed: int, vocab_size: int) -> tuple[GPTConfig, TrainConfig]:
    size, sched, _ = SIZES[preset]
    return (GPTConfig(vocab_size=vocab_size, **size, **entry.shape),
            TrainConfig(**sched, seed=seed, aligned=entry.corpus == "wood"))


def cache_key(entry: Entry, cfg: GPTConfig, tcfg: TrainConfig, n_chars: int, seed: int, tok) -> str:
    """Hash of the *whole* configs (to_dict holds every default), not just what SIZES sets."""
    blob = json.dumps({"entry": entry.__dict__, "model": cfg.to_dict(), "train": tcfg.to_dict(), "n_chars": n_chars,
                       "seed": seed, "tokenizer": tok.fingerprint()}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def _as_stored(d: dict) -> dict:
    return json.loads(json.dumps(d))   # what a dict reads back as from checkpoint metadata (tuples -> lists)


def check_cached(meta: dict, tok_loaded, expected: dict, tok, path: Path) -> None:
    """Refuse a cached file whose stored configs are not the expected ones. We raise rather than
    retrain: a file under the zoo's name with other contents was put there by someone (a copied
    checkpoint, an edit by hand), and silently overwriting it could destroy their work."""
    diff = [k for k, v in expected.items() if meta.get(k) != v]
    for sub in ("model_config", "train_config"):
        if sub in diff and isinstance(meta.get(sub), dict):
            diff += [f"{sub}.{k} {meta[sub].get(k)!r} vs {v!r}" for k, v in expected[sub].items()
                     if meta[sub].get(k) != v]
            diff.remove(sub)
    if tok_loaded.fingerprint() != tok.fingerprint():
        diff.append("tokenizer")
    if diff:
        raise WorkbookError(f"{path} is not the expected zoo model (differs in {', '.join(diff[:4])}); "
                            f"delete it and {path.with_suffix('.tokenizer.json').name} to retrain")


def load(name: str, run=None, preset: str | None = None, seed: int | None = None, device=None,
         checkpoints: Path | None = None, progress: bool = True) -> Bundle:
    """Load zoo model `name` for the run's preset (training and caching it on first use)."""
    if name not in ZOO:
        raise WorkbookError(f"no zoo model {name!r}; choose one of {', '.join(ZOO)}")
    entry = ZOO[name]
    preset = preset or (run.preset if run else "default")
    seed = seed if seed is not None else (run.seed if run else 0)
    device = device or (run.device if run else torch.device("cpu"))
    checkpoints = Path(checkpoints or (run.checkpoints if run else __import__("shared.paths").paths.CHECKPOINTS))
    n_chars = SIZES[preset][2]
    text = load_text(entry.corpus, n_chars=n_chars, seed=seed)
    tok = tokenizers.build(entry.tokenizer, text, vocab_size=entry.vocab_size or 1024)
    data = TokenData.from_text(text, tok, doc_separator="\n" if entry.corpus == "wood" else None)
    cfg, tcfg = configs(entry, preset, seed, tok.vocab_size)
    key = cache_key(entry, cfg, tcfg, n_chars, seed, tok)
    path = checkpoints / f"zoo-{name}-{preset}-{key}.safetensors"
    tok_path = path.with_suffix(".tokenizer.json")
    expected = _as_stored({"zoo": name, "preset": preset, "seed": seed, "zoo_key": key,
                           "model_config": cfg.to_dict(), "train_config": tcfg.to_dict()})
    if path.exists() and tok_path.exists():
        model, meta = load_model(path, device)
        tok_loaded = tokenizers.load(tok_path)
        check_cached(meta, tok_loaded, expected, tok, path)
        return Bundle(model.eval(), tok_loaded, data, entry, path, meta)
    torch.manual_seed(seed)
    model = GPT(cfg)
    print(f"zoo: training {name} ({preset}, {model.num_params() / 1e6:.2f}M params) once; cached at {path}")
    print(f"estimate: ~{estimate_seconds(model, tcfg, device):.0f} s to train on {torch.device(device).type}")
    history = train(model, data, tcfg, device, desc=f"zoo {name}", progress=progress)
    checkpoints.mkdir(parents=True, exist_ok=True)
    tok.save(tok_path)
    meta = {"history": history, "zoo": name, "preset": preset, "seed": seed, "zoo_key": key,
            "train_config": tcfg.to_dict()}
    save_model(model, path, **meta)   # save_model stores model_config itself
    meta["model_config"] = cfg.to_dict()   # so a fresh bundle's meta reads like a cached one's
    return Bundle(model.eval(), tok, data, entry, path, meta)
