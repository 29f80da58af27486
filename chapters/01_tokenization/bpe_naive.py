"""Byte-level BPE the simple way first: count every adjacent pair, merge the most frequent, repeat.

This is the whole algorithm (Sennrich et al. 2016, in the shape of Karpathy's minbpe), with no
cleverness at all:

    chunks = [list(word.encode("utf-8")) for word in regex.findall(GPT4_PATTERN, text)]
    until the vocabulary is full:
        count every adjacent pair (a, b) in every chunk
        take the most frequent pair (ties: the smaller pair of ids)
        give it a new id z and replace every (a, b) in every chunk by z

It is slow because each merge rereads the whole text. `bpe.py` learns exactly the same merges
(the tests and every run check it) much faster: it counts each distinct word once, and after a
merge it updates only the words that held the merged pair. Read this file first, then `bpe.py`.

Encoding is minbpe's loop too: inside each chunk, apply the learned merge that came first among
the adjacent pairs, until no adjacent pair is a learned merge. (`bpe.py` encodes the way tiktoken
does, by the rank of the joined bytes; on these vocabularies the two give the same ids, tested.)
"""
from __future__ import annotations

from collections import Counter

import regex

from bpe import ENDOFTEXT, GPT4_PATTERN, check_vocab_size, split_specials
from shared.errors import WorkbookError


def pair_counts(chunks: list[list[int]]) -> Counter:
    """How often each adjacent pair of ids occurs, over all chunks."""
    counts = Counter()
    for ids in chunks:
        counts.update(zip(ids, ids[1:]))
    return counts


def merge(ids: list[int], pair: tuple[int, int], z: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, left to right, by `z`."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(z)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def chunks_of(text: str, pattern: str, special_tokens) -> list[str]:
    """The pre-tokenizer: cut out special tokens, then split the rest with the regex.
    Merges never cross a chunk's edge."""
    pieces = split_specials(text, special_tokens) if special_tokens else [text]
    return [w for piece in pieces if piece not in special_tokens for w in regex.findall(pattern, piece)]


class NaiveBPE:
    """A BPE trained by the simple loop: `merges` {(a, b): z} in the order learned, `vocab` id -> bytes."""

    def __init__(self, merges: dict, vocab: dict, counts: list[int], pattern: str, special_tokens):
        self.merges, self.vocab, self.merge_counts, self.pattern = merges, vocab, counts, pattern
        self.order = {pair: i for i, pair in enumerate(merges)}   # which merge came first
        self.special_tokens = {s: len(vocab) + i for i, s in enumerate(special_tokens)}

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT4_PATTERN, special_tokens=(ENDOFTEXT,)) -> NaiveBPE:
        check_vocab_size(vocab_size, len(special_tokens))
        if not text:
            raise WorkbookError("cannot train BPE on empty text")
        chunks = [list(w.encode("utf-8")) for w in chunks_of(text, pattern, special_tokens)]
        vocab = {i: bytes([i]) for i in range(256)}
        id_of = {b: i for i, b in vocab.items()}
        merges, counts = {}, []
        while len(vocab) < vocab_size - len(special_tokens):
            stats = pair_counts(chunks)
            if not stats:                                          # every chunk is one token: nothing left
                break
            pair = min(stats, key=lambda p: (-stats[p], p))        # most frequent; ties: smaller ids
            joined = vocab[pair[0]] + vocab[pair[1]]
            z = id_of.setdefault(joined, len(vocab))               # the same bytes reached another way keep their id
            vocab[z] = joined
            merges[pair] = z
            counts.append(stats[pair])
            chunks = [merge(ids, pair, z) for ids in chunks]
        return cls(merges, vocab, counts, pattern, special_tokens)

    @classmethod
    def from_merge_list(cls, merges, pattern: str = GPT4_PATTERN, special_tokens=(ENDOFTEXT,)) -> NaiveBPE:
        """The naive encoder over another tokenizer's (a, b, z) merges (say `bpe.BPE.merges`)."""
        vocab = {i: bytes([i]) for i in range(256)}
        for a, b, z in merges:
            vocab[z] = vocab[a] + vocab[b]
        return cls({(a, b): z for a, b, z in merges}, vocab, [], pattern, special_tokens)

    def merge_list(self) -> list[tuple[int, int, int]]:
        """The merges as (a, b, z) triples in order: the form `bpe.BPE.merges` has."""
        return [(a, b, z) for (a, b), z in self.merges.items()]

    def encode(self, text: str) -> list[int]:
        ids = []
        pieces = split_specials(text, self.special_tokens) if self.special_tokens else [text]
        for piece in pieces:
            if piece in self.special_tokens:
                ids.append(self.special_tokens[piece])
                continue
            for chunk in regex.findall(self.pattern, piece):
                ids.extend(self.encode_chunk(chunk.encode("utf-8")))
        return ids

    def encode_chunk(self, data: bytes) -> list[int]:
        ids = list(data)
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.order.get(p, float("inf")))
            if pair not in self.merges:                            # no adjacent pair was ever merged
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids: list[int]) -> str:
        special = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        return b"".join(special.get(i) or self.vocab[i] for i in ids).decode("utf-8", errors="replace")


def merges_in_order(data: bytes, merges) -> tuple[list[tuple[int, int, int]], list[int]]:
    """Apply (a, b, z) merges in the order learned to one short text's bytes: the merges that
    changed it, and the ids at the end (what the pipeline diagram draws, step by step)."""
    ids, fired = list(data), []
    for a, b, z in merges:
        merged = merge(ids, (a, b), z)
        if merged != ids:
            fired.append((a, b, z))
            ids = merged
    return fired, ids
