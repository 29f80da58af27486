"""Small named reference models, trained on demand and cached in models/checkpoints.

    bundle = zoo.load("wood-llama", run)        # trains once (~1 min on 2 CPU cores), then loads
    bundle.model, bundle.tokenizer, bundle.data, bundle.history

A cached model is keyed by a hash of everything that defines it (corpus, tokenizer,
model and training config, preset, seed), so changing any of them trains a new one.
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


def _spec(entry: Entry, preset: str, seed: int) -> tuple[GPTConfig | None, TrainConfig, int, str]:
    size, sched, n_chars = SIZES[preset]
    tcfg = TrainConfig(**sched, seed=seed, aligned=entry.corpus == "wood")
    blob = json.dumps({"entry": entry.__dict__, "size": size, "train": tcfg.to_dict(), "n_chars": n_chars,
                       "seed": seed}, sort_keys=True)
    return size, tcfg, n_chars, hashlib.sha1(blob.encode()).hexdigest()[:10]


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
    size, tcfg, n_chars, key = _spec(entry, preset, seed)
    text = load_text(entry.corpus, n_chars=n_chars, seed=seed)
    tok = tokenizers.build(entry.tokenizer, text, vocab_size=entry.vocab_size or 1024)
    data = TokenData.from_text(text, tok, doc_separator="\n" if entry.corpus == "wood" else None)
    path = checkpoints / f"zoo-{name}-{preset}-{key}.safetensors"
    tok_path = path.with_suffix(".tokenizer.json")
    if path.exists() and tok_path.exists():
        model, meta = load_model(path, device)
        return Bundle(model.eval(), tokenizers.load(tok_path), data, entry, path, meta)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **size, **entry.shape))
    print(f"zoo: training {name} ({preset}, {model.num_params() / 1e6:.2f}M params) once; cached at {path}")
    print(f"estimate: ~{estimate_seconds(model, tcfg, device):.0f} s to train on {torch.device(device).type}")
    history = train(model, data, tcfg, device, desc=f"zoo {name}", progress=progress)
    checkpoints.mkdir(parents=True, exist_ok=True)
    tok.save(tok_path)
    meta = {"history": history, "zoo": name, "preset": preset, "seed": seed}
    save_model(model, path, **meta)
    return Bundle(model.eval(), tok, data, entry, path, meta)
