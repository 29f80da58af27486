"""Part 3 of chapter 13 (`main.py --extras`): measuring the at-scale tricks of at_scale.py.

Each function returns a plain dict for the results JSON; main.py saves it and visualize.py draws it.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import at_scale as at
from shared import bench
from shared.corpus import HundredAcreWood, english_text
from shared.data import TokenData
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, train


def _model(vocab, n_layer, d_model, n_head, seq_len, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                         pos="rope"))


def grad_accumulation(data: TokenData, vocab: int) -> dict:
    model = _model(vocab, 2, 64, 4, 64)
    x, y = data.get_batch("train", 16, 64, torch.Generator().manual_seed(0))
    big = at.accumulated_grads(model, x, y, 1)
    out = {}
    for k in (2, 4, 8):
        acc = at.accumulated_grads(model, x, y, k)
        out[str(k)] = max((a - b).abs().max().item() for a, b in zip(big, acc))
    return {"max_abs_grad_diff_by_k": out, "batch": 16}


def checkpointing(data: TokenData, vocab: int, size=(4, 128, 4), batch=8, seq_len=256) -> dict:
    """Peak memory and step time of one training step, with and without activation checkpointing."""
    model = _model(vocab, *size, seq_len)
    x, y = data.get_batch("train", batch, seq_len, torch.Generator().manual_seed(1))
    rows = {}
    for ckpt in (False, True):
        def step():
            at.forward_loss(model, x, y, checkpointed=ckpt).backward()
            model.zero_grad(set_to_none=True)
        step()  # warm-up outside the measurement
        with bench.peak_memory("cpu") as mem:
            step()
        rows["checkpointed" if ckpt else "plain"] = {"peak_memory_bytes": mem.bytes,
                                                     "step_s": bench.time_fn(step, warmup=0, repeat=3)}
    return {"size": list(size), "batch": batch, "seq_len": seq_len, **rows}


def precision(data: TokenData, vocab: int, size=(4, 128, 4), batch=8, seq_len=256) -> dict:
    """fp32 vs bf16 autocast on this CPU: step time, and the loss difference."""
    model = _model(vocab, *size, seq_len)
    x, y = data.get_batch("train", batch, seq_len, torch.Generator().manual_seed(2))
    out = {}
    for name, dtype in (("fp32", None), ("bf16 autocast", torch.bfloat16)):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
                loss = model(x, y)[1]
            loss.backward()
            model.zero_grad(set_to_none=True)
            return loss
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = model(x, y)[1].item()
        out[name] = {"step_s": bench.time_fn(step, warmup=1, repeat=3), "loss": loss}
    a = torch.randn(1024, 1024)
    out["matmul_gflops"] = {}
    for name, t in (("fp32", a), ("bf16", a.bfloat16())):
        s = bench.time_fn(lambda: t @ t, warmup=1, repeat=5)
        out["matmul_gflops"][name] = 2 * 1024**3 / s / 1e9
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    out["cpu_bf16_units"] = {f: f in flags.split() for f in ("avx512_bf16", "amx_bf16")}
    return out


def _train_loop(model, opt, data, steps, batch, seq_len, seed, desc) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True):
        x, y = data.get_batch("train", batch, seq_len, gen, aligned=True)
        loss = model(x, y)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def galore_vs_adamw(data: TokenData, tok, stories, steps: int, size=(2, 96, 4), rank=16, batch=8, seq_len=256) -> dict:
    out = {}
    for name in ("AdamW", f"GaLore rank {rank}"):
        model = _model(tok.vocab_size, *size, seq_len)
        if name == "AdamW":
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        else:
            opt = at.GaLoreAdamW(model.parameters(), lr=3e-3, rank=rank, update_every=50, scale=1.0)
        t0 = time.perf_counter()
        losses = _train_loop(model, opt, data, steps, batch, seq_len, 5, name)
        out[name] = {"train_loss": losses, "wall_s": time.perf_counter() - t0,
                     "optimizer_state_bytes": at.optimizer_state_bytes(opt),
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    out["params"] = sum(p.numel() for p in _model(tok.vocab_size, *size, seq_len).parameters())
    out["size"], out["rank"] = list(size), rank
    return out


def duplicates(tok, stories, steps: int, size=(2, 64, 4), batch=8, seq_len=256, unique_fraction=0.05) -> dict:
    """Same token budget, same model: fresh stories vs a corpus where each story appears
    1/unique_fraction times. Then dedup (exact + MinHash) the repeated corpus."""
    wood = HundredAcreWood()
    fresh = [s.text for s in wood.stories(6000, seed=11)]
    n_unique = int(len(fresh) * unique_fraction)
    repeated = [fresh[i % n_unique] for i in range(len(fresh))]
    rng = np.random.default_rng(0)
    repeated = [repeated[i] for i in rng.permutation(len(repeated))]
    out = {"documents": len(fresh), "unique_in_repeated": n_unique}
    for name, docs in (("fresh stories", fresh), ("each story x%d" % round(1 / unique_fraction), repeated)):
        data = TokenData.from_text("".join(docs), tok, doc_separator="\n", cache=False)
        model = _model(tok.vocab_size, *size, seq_len)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        losses = _train_loop(model, opt, data, steps, batch, seq_len, 6, name)
        out[name] = {"train_loss": losses,
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    kept, stats = at.dedup(repeated[:1500], threshold=0.8)
    out["dedup_on_first_1500_of_repeated"] = stats
    return out


# ------------------------------------------------------------------------------ synthetic vs real data
class MixedData:
    """Training batches with an exact fraction of rows from `wood` and the rest from `english`
    (a running count, so 10% means 10% of all rows so far, not 10% on average)."""

    def __init__(self, wood: TokenData, english: TokenData, wood_fraction: float):
        self.wood, self.english, self.wood_fraction = wood, english, wood_fraction
        self.rows = self.wood_rows = 0

    def get_batch(self, split, batch_size, seq_len, generator=None, aligned=False, device="cpu"):
        if split != "train":  # shared.train's own end-of-run evaluation: the wood's val split
            return self.wood.get_batch(split, batch_size, seq_len, generator, device=device)
        n_wood = round((self.rows + batch_size) * self.wood_fraction) - self.wood_rows
        self.rows, self.wood_rows = self.rows + batch_size, self.wood_rows + n_wood
        parts = [d.get_batch("train", n, seq_len, generator, device=device)
                 for d, n in ((self.wood, n_wood), (self.english, batch_size - n_wood)) if n]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@torch.no_grad()
def window_loss(model, data: TokenData, batches: int, batch: int, seq_len: int, seed: int = 0) -> float:
    """Mean nats/char on fixed random windows of `data`'s val split (the same windows every call)."""
    was = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    losses = [model(*data.get_batch("val", batch, seq_len, g))[1].item() for _ in range(batches)]
    model.train(was)
    return float(np.mean(losses))


def synthetic_vs_real(steps: int, wood_fractions=(0.0, 0.25, 0.5, 0.75, 0.9, 1.0), size=(2, 48, 4), batch=8,
                      seq_len=128, lr=3e-3, n_evals=6, eval_batches=4, wood_chars=600_000, seed=0, log_dir=None) -> dict:
    """The same model trained on natural English (Python's own help text), on the Hundred Acre
    Wood, and on mixes, each scored on held-out English AND held-out wood along the way.
    One character tokenizer, built from the union of both texts, serves every run."""
    english = english_text()
    wood = HundredAcreWood().text(wood_chars, seed=seed + 21)
    tok = CharTokenizer.from_text(english + wood)
    # both val splits are the last 10% of their text: windows the model never trained on
    en_data = TokenData.from_text(english, tok, cache=False)
    wood_data = TokenData.from_text(wood, tok, cache=False)
    wanted = sorted({int(round(s)) for s in np.linspace(steps / n_evals, steps, n_evals)})
    out = {"runs": {}, "eval_steps": wanted, "vocab_size": tok.vocab_size, "size": list(size), "batch": batch,
           "seq_len": seq_len, "steps": steps, "lr": lr, "english_chars": len(english), "wood_chars": len(wood)}
    t0, c0 = time.perf_counter(), time.process_time()
    for f in wood_fractions:
        model = _model(tok.vocab_size, *size, seq_len, seed=seed)
        curve = {"step": [], "english": [], "wood": []}

        def on_step(step, _loss, model=model, curve=curve):
            if step in wanted:
                curve["step"].append(step)
                curve["english"].append(window_loss(model, en_data, eval_batches, batch, seq_len, seed=1))
                curve["wood"].append(window_loss(model, wood_data, eval_batches, batch, seq_len, seed=2))

        cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=10, eval_every=0,
                          eval_batches=1, seed=seed + 3)
        name = f"{round(100 * f)}% wood"
        hist = train(model, MixedData(wood_data, en_data, f), cfg, desc=name, progress=True, on_step=on_step,
                     measure_peak=False, log_dir=None if log_dir is None else Path(log_dir) / f"mix_{round(100 * f)}pct_wood")
        out["runs"][name] = {"wood_fraction": f, "curve": curve, "train_loss": hist["train_loss"],
                             "final": {"english": curve["english"][-1], "wood": curve["wood"][-1]}}
    out["wall_s"], out["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return out


# ------------------------------------------------------------------------------ noise injection
TYPO_KINDS = ("swap", "drop", "replace")


def add_typos(text: str, p: float, seed: int = 0, kinds=TYPO_KINDS, alphabet: str | None = None) -> str:
    """Character typos: each character (newlines excepted, they separate documents) is hit with
    probability p, and a hit is one of `kinds`: swap with the next character, drop it, or
    replace it by a different letter of `alphabet` (default: the letters of `text`)."""
    if p <= 0:
        return text
    rng = np.random.default_rng(seed)
    letters = sorted(set(alphabet if alphabet is not None else (c for c in text if c.isalpha())))
    n = len(text)
    hit = rng.random(n) < p
    op = rng.integers(len(kinds), size=n)
    pick = rng.integers(max(1, len(letters) - 1), size=n)
    out, i = [], 0
    while i < n:
        c = text[i]
        if c == "\n" or not hit[i]:
            out.append(c)
            i += 1
            continue
        kind = kinds[op[i]]
        if kind == "drop":
            i += 1
        elif kind == "replace":
            others = [x for x in letters if x != c] if c in letters else letters
            out.append(others[pick[i] % len(others)])
            i += 1
        elif i + 1 < n and text[i + 1] != "\n":  # swap
            out += [text[i + 1], c]
            i += 2
        else:  # nothing to swap with: unchanged
            out.append(c)
            i += 1
    return "".join(out)


_SENTENCE_END = re.compile(r"(?<=[.!?]) ")


def sentences(line: str) -> list[str]:
    """A line (one story) cut into sentences: after '.', '!' or '?' followed by a space."""
    return _SENTENCE_END.split(line)


def shuffle_words(text: str, p: float, seed: int = 0) -> str:
    """Each sentence, with probability p, gets its (space-separated) words in a random order.
    Words keep their punctuation; sentence and line boundaries stay where they were."""
    if p <= 0:
        return text
    rng = np.random.default_rng(seed)
    lines = []
    for line in text.split("\n"):
        sents = sentences(line)
        for j, s in enumerate(sents):
            if rng.random() < p:
                words = s.split(" ")
                sents[j] = " ".join(words[k] for k in rng.permutation(len(words)))
        lines.append(" ".join(sents))
    return "\n".join(lines)


def make_noisy(kind: str, text: str, p: float, seed: int, alphabet: str | None = None) -> str:
    return {"clean": lambda: text, "typos": lambda: add_typos(text, p, seed, alphabet=alphabet),
            "word shuffle": lambda: shuffle_words(text, p, seed)}[kind]()


@torch.no_grad()
def texts_loss(model, tok, texts: list[str], max_len: int) -> float:
    """nats/char of `texts` scored whole (each after a newline), like shared.evaluate.story_loss."""
    model.eval()
    nats, chars = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok.encode("\n" + t)])
        nats += torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:], reduction="sum").item()
        chars += len(t)
    model.train()
    return nats / max(chars, 1)


def noise_injection(text: str, tok, stories, steps: int, levels=(("typos", 0.03), ("typos", 0.1),
                    ("word shuffle", 0.3), ("word shuffle", 1.0)), size=(2, 48, 4), batch=4, seq_len=256,
                    lr=1e-2, seed=0, log_dir=None) -> dict:
    """Train on wood text with typos / shuffled words; score on clean AND equally noisy held-out stories."""
    kept = [st for st in stories if len(st.text) + 1 <= seq_len]   # whole stories, the newline as context
    clean = [st.text for st in kept]
    floor = sum(-st.log2_prob() for st in kept) * math.log(2) / sum(len(t) for t in clean)
    out = {"runs": [], "floor_nats_per_char": floor, "eval_stories": len(kept), "size": list(size), "batch": batch,
           "seq_len": seq_len, "steps": steps, "lr": lr}
    letters = "".join(sorted({c for c in text if c.isalpha()}))   # typos draw from the wood's own letters
    t0, c0 = time.perf_counter(), time.process_time()
    for kind, p in (("clean", 0.0), *levels):
        train_text = make_noisy(kind, text, p, seed + 5, letters)
        data = TokenData.from_text(train_text, tok, doc_separator="\n", cache=False)
        model = _model(tok.vocab_size, *size, seq_len, seed=seed)
        cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=10, eval_every=0,
                          eval_batches=1, aligned=True, seed=seed + 4)
        name = "clean" if kind == "clean" else f"{kind} p={p:g}"
        hist = train(model, data, cfg, desc=name, on_step=None, measure_peak=False,
                     log_dir=None if log_dir is None else Path(log_dir) / ("noise_" + name.replace(" ", "_").replace("=", "")))
        noisy = [make_noisy(kind, t, p, seed + 99 + i, letters) for i, t in enumerate(clean)]
        out["runs"].append({"name": name, "kind": kind, "p": p, "train_loss": hist["train_loss"],
                            "clean_eval": texts_loss(model, tok, clean, seq_len),
                            "noisy_eval": texts_loss(model, tok, noisy, seq_len),
                            "train_chars": len(train_text)})
    out["wall_s"], out["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    return out


def run_all(run, steps: int, mix_steps: int | None = None, noise_steps: int | None = None, log_dir=None) -> dict:
    run.estimate(seconds=run.pick(quick=30, default=165, full=900),
                 what="part 3 (bf16 on a CPU is the slow bit; the data experiments train 11 small models)")
    wood = HundredAcreWood()
    text = wood.text(600_000, seed=run.seed)
    tok = CharTokenizer.from_text(text)
    data = TokenData.from_text(text, tok, doc_separator="\n")
    stories = wood.stories(64, seed=run.seed + 777)
    res = {"grad_accumulation": grad_accumulation(data, tok.vocab_size)}
    print(f"  grad accumulation: max |g_accum - g_big| by k: {res['grad_accumulation']['max_abs_grad_diff_by_k']}")
    res["checkpointing"] = checkpointing(data, tok.vocab_size)
    c = res["checkpointing"]
    print(f"  checkpointing: peak {c['plain']['peak_memory_bytes'] / 2**20:.0f} -> "
          f"{c['checkpointed']['peak_memory_bytes'] / 2**20:.0f} MiB, step {c['plain']['step_s']:.2f} -> "
          f"{c['checkpointed']['step_s']:.2f} s")
    res["precision"] = precision(data, tok.vocab_size)
    pr = res["precision"]
    print(f"  precision: fp32 step {pr['fp32']['step_s']:.2f} s, bf16 autocast {pr['bf16 autocast']['step_s']:.2f} s; "
          f"matmul GFLOP/s {pr['matmul_gflops']}; bf16 units {pr['cpu_bf16_units']}")
    res["galore"] = galore_vs_adamw(data, tok, stories, steps)
    g = res["galore"]
    print("  GaLore vs AdamW: " + ", ".join(f"{k}: eval {v['eval_loss']:.3f}, state {v['optimizer_state_bytes'] / 2**20:.2f} MiB"
                                            for k, v in g.items() if isinstance(v, dict)))
    res["duplicates"] = duplicates(tok, stories, steps)
    d = res["duplicates"]
    print("  duplicates: " + ", ".join(f"{k}: eval {v['eval_loss']:.3f}" for k, v in d.items() if isinstance(v, dict)
                                       and "eval_loss" in v) + f"; dedup {d['dedup_on_first_1500_of_repeated']}")
    res["synthetic_vs_real"] = synthetic_vs_real(mix_steps or steps, seed=run.seed, log_dir=log_dir)
    sv = res["synthetic_vs_real"]
    print("  synthetic vs real (final nats/char on English / wood): " + ", ".join(
        f"{k}: {v['final']['english']:.3f} / {v['final']['wood']:.3f}" for k, v in sv["runs"].items())
        + f"  [{sv['cpu_s']:.0f} CPU s]")
    res["noise"] = noise_injection(text, tok, stories, noise_steps or steps, seed=run.seed, log_dir=log_dir)
    nz = res["noise"]
    print(f"  noise (clean / noisy held-out nats/char; floor {nz['floor_nats_per_char']:.3f}): " + ", ".join(
        f"{r['name']}: {r['clean_eval']:.3f} / {r['noisy_eval']:.3f}" for r in nz["runs"]) + f"  [{nz['cpu_s']:.0f} CPU s]")
    return res
