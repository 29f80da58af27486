"""What the training data does to a model: duplicates, synthetic vs real text, and noise.

- duplicates: the same model and token budget on fresh stories vs a corpus where each story
  appears many times (then exact + MinHash dedup from at_scale.py finds the copies);
- synthetic vs real: the Hundred Acre Wood (a grammar: synthetic, cheap, low-entropy) against
  natural English (Python's own help text), and mixes with an exact share of each
  (`MixedData`), every model scored on held-out windows of BOTH texts;
- noise injection: typos (`add_typos`) and shuffled words (`shuffle_words`), as a full design:
  every model (trained clean or trained noisy) is scored on clean AND on noisy held-out stories,
  next to the exact floor of the clean stories. Only the cross tells "noise makes the model
  robust to noise" apart from "noise makes the model worse".

Every function returns a plain dict for the results JSON. Tiny models and short runs: read the
large gaps, not the third decimal.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import torch

import at_scale as at
from shared.corpus import HundredAcreWood, english_text
from shared.data import TokenData
from shared.evaluate import story_loss
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer
from shared.train import TrainConfig, train


def small_gpt(vocab: int, n_layer: int, d_model: int, n_head: int, seq_len: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=seq_len, n_layer=n_layer, n_head=n_head, d_model=d_model,
                         pos="rope"))


def _fit(model, data, steps, batch, seq_len, lr, seed, desc, log_dir=None) -> list[float]:
    cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=10, eval_every=0,
                      eval_batches=1, aligned=True, seed=seed)
    return train(model, data, cfg, desc=desc, measure_peak=False, log_dir=log_dir)["train_loss"]


# ------------------------------------------------------------------------------ duplicates
def duplicates(tok, stories, steps: int, size=(2, 64, 4), batch=8, seq_len=256, unique_fraction=0.05,
               n_docs=6000) -> dict:
    """Same token budget, same model: fresh stories vs a corpus where each story appears
    1/unique_fraction times, scored on unseen stories. Then dedup (exact + MinHash) the repeated corpus."""
    fresh = [s.text for s in HundredAcreWood().stories(n_docs, seed=11)]
    n_unique = int(len(fresh) * unique_fraction)
    repeated = [fresh[i % n_unique] for i in range(len(fresh))]
    repeated = [repeated[i] for i in np.random.default_rng(0).permutation(len(repeated))]
    out = {"documents": len(fresh), "unique_in_repeated": n_unique, "size": list(size), "steps": steps}
    for name, docs in (("fresh stories", fresh), (f"each story x{round(1 / unique_fraction)}", repeated)):
        data = TokenData.from_text("".join(docs), tok, doc_separator="\n", cache=False)
        model = small_gpt(tok.vocab_size, *size, seq_len)
        losses = _fit(model, data, steps, batch, seq_len, 3e-3, 6, name)
        out[name] = {"train_loss": losses,
                     "eval_loss": story_loss(model, tok, stories, max_len=seq_len)["model_nats_per_char"]}
    kept, stats = at.dedup(repeated[:1500], threshold=0.8)
    out["dedup_on_first_1500_of_repeated"] = {**stats, "distinct_texts": len(set(repeated[:1500]))}
    return out


# ------------------------------------------------------------------------------ synthetic vs real
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
                      seq_len=128, lr=3e-3, n_evals=6, eval_batches=4, wood_chars=600_000, seed=0,
                      log_dir: Path | None = None) -> dict:
    """The same model trained on natural English, on the Hundred Acre Wood, and on mixes, each
    scored on held-out English AND held-out wood along the way. One character tokenizer, built
    from the union of both texts, serves every run (so the losses are comparable nats/char)."""
    english = english_text()
    wood = HundredAcreWood().text(wood_chars, seed=seed + 21)
    tok = CharTokenizer.from_text(english + wood)
    # both val splits are the last 10% of their text: windows the model never trained on
    en_data = TokenData.from_text(english, tok, cache=False)
    wood_data = TokenData.from_text(wood, tok, cache=False)
    wanted = sorted({int(round(s)) for s in np.linspace(steps / n_evals, steps, n_evals)})
    out = {"runs": {}, "eval_steps": wanted, "vocab_size": tok.vocab_size, "size": list(size), "batch": batch,
           "seq_len": seq_len, "steps": steps, "lr": lr, "english_chars": len(english), "wood_chars": len(wood)}
    c0 = time.process_time()
    for f in wood_fractions:
        model = small_gpt(tok.vocab_size, *size, seq_len, seed=seed)
        curve = {"step": [], "english": [], "wood": []}

        def on_step(step, _loss, model=model, curve=curve):
            if step in wanted:
                curve["step"].append(step)
                curve["english"].append(window_loss(model, en_data, eval_batches, batch, seq_len, seed=1))
                curve["wood"].append(window_loss(model, wood_data, eval_batches, batch, seq_len, seed=2))

        cfg = TrainConfig(steps=steps, batch_size=batch, seq_len=seq_len, lr=lr, warmup=10, eval_every=0,
                          eval_batches=1, seed=seed + 3)
        name = f"{round(100 * f)}% wood"
        hist = train(model, MixedData(wood_data, en_data, f), cfg, desc=name, on_step=on_step, measure_peak=False,
                     log_dir=None if log_dir is None else Path(log_dir) / f"mix_{round(100 * f)}pct_wood")
        out["runs"][name] = {"wood_fraction": f, "curve": curve, "train_loss": hist["train_loss"],
                             "final": {"english": curve["english"][-1], "wood": curve["wood"][-1]}}
    out["cpu_s"] = time.process_time() - c0
    return out


# ------------------------------------------------------------------------------ noise
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


def noise_name(kind: str, p: float) -> str:
    return "clean" if kind == "clean" else f"{kind} p={p:g}"


@torch.no_grad()
def texts_loss(model, tok, texts: list[str], max_len: int) -> float:
    """nats/char of `texts` scored whole (each after a newline), like shared.evaluate.story_loss."""
    model.eval()
    nats, chars = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok.encode("\n" + t)[: max_len + 1]])
        nats += torch.nn.functional.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:], reduction="sum").item()
        chars += ids.shape[1] - 1
    model.train()
    return nats / max(chars, 1)


def noise_injection(text: str, tok, stories, steps: int, noises=(("typos", 0.1), ("word shuffle", 1.0)),
                    size=(2, 48, 4), batch=4, seq_len=256, lr=1e-2, seed=0, log_dir: Path | None = None) -> dict:
    """Train one model on clean wood text and one per noise; score EVERY model on clean held-out
    stories and on the same stories under EVERY noise. `cells` is the 2x2 design of the first
    noise: (trained clean | trained noisy) x (scored clean | scored noisy)."""
    kept = [st for st in stories if len(st.text) + 1 <= seq_len]   # whole stories, the newline as context
    clean = [st.text for st in kept]
    floor = sum(-st.log2_prob() for st in kept) * math.log(2) / sum(len(t) for t in clean)
    letters = "".join(sorted({c for c in text if c.isalpha()}))   # typos draw from the wood's own letters
    conditions = [("clean", 0.0), *noises]
    held_out = {noise_name(k, p): [make_noisy(k, t, p, seed + 99 + i, letters) for i, t in enumerate(clean)]
                for k, p in conditions}
    out = {"runs": [], "floor_nats_per_char": floor, "eval_stories": len(kept), "size": list(size), "batch": batch,
           "seq_len": seq_len, "steps": steps, "lr": lr, "scored_on": list(held_out)}
    c0 = time.process_time()
    for kind, p in conditions:
        name = noise_name(kind, p)
        data = TokenData.from_text(make_noisy(kind, text, p, seed + 5, letters), tok, doc_separator="\n", cache=False)
        model = small_gpt(tok.vocab_size, *size, seq_len, seed=seed)
        folder = None if log_dir is None else Path(log_dir) / ("noise_" + name.replace(" ", "_").replace("=", ""))
        losses = _fit(model, data, steps, batch, seq_len, lr, seed + 4, f"trained on {name}", folder)
        out["runs"].append({"name": name, "kind": kind, "p": p, "train_loss": losses,
                            "scored": {k: texts_loss(model, tok, v, seq_len) for k, v in held_out.items()}})
    out["cells"] = noise_cells(out, noise_name(*noises[0]))
    out["cpu_s"] = time.process_time() - c0
    return out


def noise_cells(nz: dict, noisy: str) -> list[dict]:
    """The 2x2 design for one noise: four cells (trained on, scored on, nats/char, gap to the clean floor)."""
    runs = {r["name"]: r for r in nz["runs"]}
    return [{"trained_on": t, "scored_on": s, "nats_per_char": runs[t]["scored"][s],
             "minus_clean_floor": runs[t]["scored"][s] - nz["floor_nats_per_char"]}
            for t in ("clean", noisy) for s in ("clean", noisy)]
