"""Fair tests of three models trained on three different objectives: their training losses
answer different questions, so we ask all of them the same ones, on held-out stories, next to
exact ceilings and floors from the Hundred Acre Wood grammar (shared.corpus).

1. Fill in the blank: one word of a story hidden; each model picks among the words of its
   category. The Bayes-optimal accuracy is exact: score every filled-in story with the grammar.
2. The suffix after the opening: next-token loss on the rest of a story given its first
   sentence (causal vs prefix LM), next to the exact floor -ln p(rest | opening).
3. Generations (causal and prefix LM continue an opening) and the masked LM's fill-ins.

    blanks = make_blanks(stories, tok, seed, max_len)
    rows = fill_in_the_blank({"mlm": m1, "clm": m2}, blanks, tok, wood, device)
    table = summarize_blanks(rows, ["mlm", "clm"])
"""
from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lm_objectives import WordTokenizer, bert_corrupt, bidirectional_mask, causal_mask, prefix_mask
from shared.corpus import CATEGORIES, HundredAcreWood
from shared.model import sample_logits


def objective_of(name: str) -> str:
    """Model names are an objective, optionally with a variant: "mlm", "clm", "prefix", "mlm_30"."""
    return name.split("_")[0]


# ----------------------------------------------------------------------------- 1. fill in the blank
def blank_categories() -> dict[str, list[str]]:
    """Single-token words a blank can hide, grouped by category (the candidates a model picks among)."""
    cats: dict[str, list[str]] = {}
    for word, cat in CATEGORIES.items():
        if " " not in word and cat != "home":
            cats.setdefault(cat, []).append(word)
    return cats


def make_blanks(stories, tok: WordTokenizer, seed: int, max_len: int) -> list[dict]:
    """One blank per story (stories longer than max_len tokens are skipped): a random word from a
    category with single-token members; `where` says which sentence it sits in."""
    cats, rng, out = blank_categories(), random.Random(seed), []
    blankable = {w for words in cats.values() for w in words}
    for st in stories:
        pieces = tok.split("\n" + st.text)
        if len(pieces) > max_len:
            continue
        spots = [i for i, p in enumerate(pieces) if p.strip() in blankable]
        if not spots:
            continue
        i = rng.choice(spots)
        word, space = pieces[i].strip(), " " if pieces[i].startswith(" ") else ""
        cands = [space + w for w in cats[CATEGORIES[word]] if space + w in tok.stoi]
        n_before = sum(p.endswith(".") for p in pieces[:i])   # sentence ends before the blank
        where = "opening" if n_before == 0 else "ending" if n_before == len(st.sentences) - 1 else "middle"
        out.append({"pieces": pieces, "pos": i, "answer": pieces[i], "candidates": cands,
                    "category": CATEGORIES[word], "where": where})
    return out


@torch.no_grad()
def candidate_scores(model, objective: str, blank: dict, tok: WordTokenizer, device) -> torch.Tensor:
    """A score per candidate: higher = the model prefers it.

    mlm:    [MASK] at the blank, read the model's log-probability of each candidate there.
    clm:    the log-likelihood of the whole story with the candidate filled in (the tokens
            before the blank are the same for every candidate, so only the rest is summed).
    prefix: the tokens before the blank are the (bidirectional) prefix; score the candidate
            and everything after it, causally."""
    ids = torch.tensor(tok.encode("".join(blank["pieces"])))
    i, cand_ids = blank["pos"], torch.tensor([tok.stoi[c] for c in blank["candidates"]])
    if objective == "mlm":
        x = ids.clone()
        x[i] = tok.mask_id
        logits = model(x[None].to(device), bidirectional_mask(len(x)))[0, i]
        return logits.log_softmax(-1)[cand_ids.to(device)].cpu()
    seqs = ids.repeat(len(cand_ids), 1)
    seqs[:, i] = cand_ids
    x, y = seqs[:, :-1], seqs[:, 1:]
    t = x.shape[1]
    mask = causal_mask(t) if objective == "clm" else prefix_mask(t, i)
    logp = model(x.to(device), mask).log_softmax(-1).gather(-1, y.to(device)[..., None])[..., 0]
    return logp[:, i - 1:].sum(-1).cpu()  # position i-1 predicts the blank


def oracle_accuracy(blank: dict, wood: HundredAcreWood) -> float:
    """The best any model can do: the grammar's exact posterior over the candidates. With ties
    the Bayes-optimal guesser picks one of the tied at random, so it scores 1/#tied."""
    probs = []
    for c in blank["candidates"]:
        text = "".join(blank["pieces"][1:blank["pos"]] + [c] + blank["pieces"][blank["pos"] + 1:])
        story = wood.parse_story(text)
        probs.append(0.0 if story is None else 2.0 ** story.log2_prob())
    best = max(probs)
    tied = [c for c, p in zip(blank["candidates"], probs) if p >= best * (1 - 1e-9)]
    return (blank["answer"] in tied) / len(tied)


def fill_in_the_blank(models: dict, blanks: list[dict], tok, wood, device) -> list[dict]:
    """One row per blank: where it sits, chance, the oracle, and 1/0 per model (right or not)."""
    rows = []
    for b in tqdm(blanks, desc="fill in the blank", leave=False, dynamic_ncols=True):
        row = {"where": b["where"], "category": b["category"], "oracle": oracle_accuracy(b, wood),
               "chance": 1 / len(b["candidates"])}
        for name, model in models.items():
            scores = candidate_scores(model, objective_of(name), b, tok, device)
            row[name] = float(b["candidates"][int(scores.argmax())] == b["answer"])
        rows.append(row)
    return rows


def summarize_blanks(rows: list[dict], names: list[str]) -> dict:
    """Mean accuracy per blank position (opening / middle / ending / all) for chance, models, oracle."""
    cols = ["chance", *names, "oracle"]
    table = []
    for where in ("opening", "middle", "ending", "all"):
        sub = [r for r in rows if where == "all" or r["where"] == where]
        if sub:
            table.append({"blank in": where, "n": len(sub), **{c: sum(r[c] for r in sub) / len(sub) for c in cols}})
    return {"table": table, "n": len(rows)}


# ----------------------------------------------------------------------------- 2. suffix loss
@torch.no_grad()
def suffix_loss(model, objective: str, stories, tok, device, max_len: int, batch_size: int = 32) -> dict:
    """Nats per token on everything after the opening sentence, given the opening. For the
    causal LM the opening is read left to right; for the prefix LM both ways. The floor is
    exact: -ln p(story) + ln p(opening) = -ln p(rest | opening) under the grammar."""
    items = []
    for st in stories:
        ids = tok.encode("\n" + st.text)
        if len(ids) <= max_len + 1:
            items.append((ids, len(tok.encode("\n" + st.opening.text)), st))
    nats, tokens, floor = 0.0, 0, 0.0
    for j in range(0, len(items), batch_size):
        chunk = items[j:j + batch_size]
        width = max(len(ids) for ids, _, _ in chunk) - 1
        x = torch.zeros(len(chunk), width, dtype=torch.long)  # right padding: no real token can see it
        y = torch.full((len(chunk), width), -100, dtype=torch.long)
        for r, (ids, s, _) in enumerate(chunk):
            x[r, :len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, s - 1:len(ids) - 1] = torch.tensor(ids[s:])
        s = torch.tensor([s for _, s, _ in chunk])
        mask = causal_mask(width) if objective == "clm" else prefix_mask(width, s)
        logits = model(x.to(device), mask)
        nats += F.cross_entropy(logits.flatten(0, 1), y.to(device).flatten(), ignore_index=-100, reduction="sum").item()
        tokens += int((y != -100).sum())
        floor += sum((-st.log2_prob() + math.log2(st.opening.prob)) * math.log(2) for _, _, st in chunk)
    return {"nats_per_token": nats / tokens, "floor_nats_per_token": floor / tokens, "stories": len(items),
            "tokens": tokens}


# ----------------------------------------------------------------------------- 3. generations and fill-ins
@torch.no_grad()
def continue_stories(model, objective: str, prompts: list[list[int]], tok, device, gen: torch.Generator,
                     max_len: int, temperature: float = 1.0) -> list[str]:
    """Sample until the newline (or max_len tokens). Prompts of equal length go as one batch; the
    mask is rebuilt every step (causal, or bidirectional over the prompt for the prefix LM). No KV
    cache: a bidirectional prefix cannot be cached as the causal one can (it is short here anyway)."""
    newline = tok.stoi["\n"]
    out = [""] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for k, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(k)
    for n, rows in by_len.items():
        x = torch.tensor([prompts[k] for k in rows], device=device)
        done = torch.zeros(len(rows), dtype=torch.bool, device=device)
        while x.shape[1] < max_len and not bool(done.all()):
            t = x.shape[1]
            mask = causal_mask(t) if objective == "clm" else prefix_mask(t, n)
            nxt = sample_logits(model(x, mask)[:, -1], temperature, generator=gen)
            nxt[done] = newline
            x = torch.cat([x, nxt], dim=1)
            done |= nxt[:, 0] == newline
        for r, k in enumerate(rows):
            out[k] = tok.decode(x[r, n:].tolist()).split("\n")[0]
    return out


@torch.no_grad()
def mlm_fill(model, text: str, tok, gen: torch.Generator, device) -> dict:
    """BERT's party trick: mask 15% of a held-out story's words and show its top guesses."""
    ids = torch.tensor(tok.encode(text))
    inputs, targets, _ = bert_corrupt(ids[None], tok.mask_id, tok.vocab_size - 1, gen, p_mask=1.0, p_random=0.0)
    guesses = model(inputs.to(device), bidirectional_mask(len(ids)))[0].argmax(-1).cpu()
    chosen = targets[0] != -100
    pieces = tok.split(text)

    def show(words: list[str]) -> str:  # keep each blank's leading space outside the brackets
        return "".join(p[:len(p) - len(p.lstrip())] + f"[{words[k]}]" if chosen[k] else p
                       for k, p in enumerate(pieces))

    return {"original": text, "masked": show(["MASK"] * len(pieces)),
            "filled": show([tok.words[int(g)].strip() for g in guesses]),
            "blanks": int(chosen.sum()), "right": int(((guesses == ids) & chosen).sum())}
