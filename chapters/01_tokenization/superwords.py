"""Superword merges: a second BPE phase that may cross the pre-tokenizer's word edges.

Ordinary BPE never merges across pre-token boundaries, so " of" and " the" stay two tokens
however often they meet. BoundlessBPE (Schmidt et al., 2025) lifts that rule for words that
are already whole tokens. Our simplified version runs in two phases:

  phase 1  ordinary BPE to `base` tokens (our `BPE`, truncated);
  phase 2  look at runs of consecutive pre-tokens that phase 1 encodes as ONE token each
           (a "phrase" like [" of", " the", " same"]) and run BPE over those runs, with the
           whole-word tokens as symbols. A merge makes a superword such as " of the".

A pre-token holding a line break never joins a phrase, so a superword never spans lines.
Phase 2 reuses `learn_merges` unchanged: phrases are just "words" whose symbols are tokens.
Encoding applies phase 1, then phase-2 merges in the order they were learned (minbpe-style:
lowest merge rank first), inside each phrase.
"""
from __future__ import annotations

from collections import Counter

from bpe import BPE, learn_merges, split_specials


def superword_branches(text: str, tok: BPE, bases: list[int], steps: int = 4) -> list[dict]:
    """From a BPE of `base` tokens, spend the rest of the budget (up to tok's vocab) on
    superwords instead of more ordinary merges; bytes/token along the way."""
    n_bytes = len(text.encode("utf-8"))
    out = []
    for base_size in bases:
        base = tok.truncated(base_size)
        sw = SuperwordBPE.train(text, base, tok.vocab_size - base_size, progress=True)
        n_super = sw.vocab_size - base.vocab_size  # fewer if the text ran out of phrases
        ks = sorted({round(n_super * i / steps) for i in range(steps + 1)})
        out.append({"base": base_size, "totals": [base_size + k for k in ks],
                    "bytes_per_token": [n_bytes / len(sw.truncated(k).encode(text)) for k in ks],
                    "examples": [sw.token_bytes(z).decode("utf-8", "replace") for _, _, z in sw.merges[:40]],
                    "model": sw})
    return out


class SuperwordBPE:
    def __init__(self, base: BPE, merges, merge_counts=None):
        self.base = base
        self.merges = [tuple(m) for m in merges]
        self.merge_counts = list(merge_counts or [])
        # superword ids continue after the base vocabulary *and* its special tokens
        self.vocab = list(base.vocab) + [s.encode("utf-8") for s in base.special_tokens]
        for a, b, z in self.merges:
            if z == len(self.vocab):
                self.vocab.append(self.vocab[a] + self.vocab[b])
        self.rank = {(a, b): (i, z) for i, (a, b, z) in enumerate(self.merges)}
        self._cache: dict[tuple, list[int]] = {}

    @classmethod
    def train(cls, text: str, base: BPE, n_superwords: int, progress: bool = False) -> SuperwordBPE:
        phrases = Counter()
        for run in _phrases(text, base):
            if len(run) > 1:
                phrases[tuple(run)] += 1
        vocab = list(base.vocab) + [s.encode("utf-8") for s in base.special_tokens]
        merges, counts, _ = learn_merges(phrases, vocab, n_superwords, progress=progress, desc="superword merges")
        return cls(base, merges, counts)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def special_ids(self) -> dict[int, str]:
        return self.base.special_ids

    def truncated(self, n_superwords: int) -> SuperwordBPE:
        """The first `n_superwords` superwords (merges form a sequence, as in phase 1)."""
        first = len(self.base.vocab) + len(self.base.special_tokens)
        if n_superwords >= len(self.vocab) - first:  # asked for all we have (or more)
            return self
        last = first + n_superwords - 1  # the id of the last superword kept
        cut = 0 if n_superwords == 0 else next(i + 1 for i, m in enumerate(self.merges) if m[2] == last)
        return SuperwordBPE(self.base, self.merges[:cut], self.merge_counts[:cut])

    def encode(self, text: str) -> list[int]:
        ids = []
        for kind, item in _units(text, self.base):
            ids.extend(self._merge_phrase(tuple(item)) if kind == "phrase" else item)
        return ids

    def _merge_phrase(self, phrase: tuple) -> list[int]:
        cached = self._cache.get(phrase)
        if cached is not None:
            return cached
        ids = list(phrase)
        while len(ids) > 1:
            ranked = [self.rank[p] for p in zip(ids, ids[1:]) if p in self.rank]
            if not ranked:
                break
            first, _ = min(ranked)  # the earliest-learned merge present goes first
            a, b, z = self.merges[first]
            ids = _merge(ids, a, b, z)
        self._cache[phrase] = ids
        return ids

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        return self.vocab[i]

    def is_superword(self, i: int) -> bool:
        return i >= len(self.base.vocab) + len(self.base.special_tokens)


def _merge(ids, a, b, z):
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(z)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _units(text: str, base: BPE):
    """Yield ("phrase", [ids]) for runs of whole-token pre-tokens and ("ids", [ids]) for the
    rest (multi-token words, words with a line break, special tokens), in text order."""
    run: list[int] = []
    for piece in split_specials(text, base.special_tokens) if base.special_tokens else [text]:
        if piece in base.special_tokens:
            if run:
                yield "phrase", run
                run = []
            yield "ids", [base.special_tokens[piece]]
            continue
        for word in base._pat.findall(piece):
            ids = base.encode_word(word.encode("utf-8"))
            if len(ids) == 1 and "\n" not in word and "\r" not in word:
                run.append(ids[0])
            else:
                if run:
                    yield "phrase", run
                    run = []
                yield "ids", ids
    if run:
        yield "phrase", run


def _phrases(text: str, base: BPE):
    for kind, item in _units(text, base):
        if kind == "phrase":
            yield item
