"""Byte-level BPE, written out: pre-tokenize, count, merge the most frequent pair, repeat.

    tok = BPE.train(text, vocab_size=4096)        # 256 bytes + learned tokens + <|endoftext|>
    ids = tok.encode("Oh bother<|endoftext|>")    # the special token is always one id
    assert tok.decode(ids) == "Oh bother<|endoftext|>"
    enc = tok.to_tiktoken()                       # the same vocabulary, run by tiktoken's Rust core
    ids = tok.encode_iterable(open("big.txt"))    # the same ids, lazily, a chunk of text at a time
    twin = BPE.from_vocab_merges(tok.vocab, tok.merges, special_tokens={"<|endoftext|>": 100257})

Three ideas keep it both correct and fast:

1. Pre-tokenization. A regex (GPT-4's) cuts text into "words" (" the", "123", "\\n\\n", ...)
   and merges never cross a word's edge. Then the corpus is just a bag of distinct words with
   counts: 465 KB of English is 99k words but only ~6.6k distinct ones.
2. Incremental pair counts. After merging (a, b) -> z only words that contained (a, b) change,
   so we subtract their old pairs and add their new ones, instead of recounting everything.
   An index pair -> {words that may contain it} finds those words.
3. A lazy max-heap of (-count, pair). Counts of existing pairs only ever go down, so a heap
   entry is an upper bound; a popped entry whose count is stale is pushed back with the true
   count. Ties break on the smaller pair of ids, so training is deterministic.

Encoding follows tiktoken exactly (so the ids match it, see the tests): inside a word, merge
the adjacent pair whose *concatenated bytes* have the lowest id, leftmost first, until no
adjacent pair forms a vocabulary entry.
"""
from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import regex
from tqdm.auto import tqdm

from shared.errors import WorkbookError
from shared.tokenizer import last_newline_before_text, stream_chunks

# GPT-4's (cl100k) split: contractions, letter runs with one optional leading non-letter,
# numbers of at most 3 digits, punctuation runs, newlines, and whitespace that leaves its
# last space to the next word (so " the" is a word, not " " + "the").
GPT4_PATTERN = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
                r"""|\s*[\r\n]|\s+(?!\S)|\s+""")
ENDOFTEXT = "<|endoftext|>"


# ----------------------------------------------------------------------------- training
def pretokenize(text: str, pattern: str, special_tokens) -> Counter:
    """Distinct pre-token words (as tuples of byte values) and how often each occurs.
    Special tokens are cut out first: they are never part of a word, so never merged."""
    pieces = split_specials(text, special_tokens) if special_tokens else [text]
    special = set(special_tokens)
    pat = regex.compile(pattern)
    counts = Counter()
    for piece in pieces:
        if piece not in special:
            counts.update(pat.findall(piece))
    return Counter({tuple(w.encode("utf-8")): n for w, n in counts.items()})


def split_specials(text: str, special_tokens) -> list[str]:
    """"a<|endoftext|>b" -> ["a", "<|endoftext|>", "b"] (longest special first)."""
    alternation = "|".join(regex.escape(s) for s in sorted(special_tokens, key=len, reverse=True))
    return [p for p in regex.split(f"({alternation})", text) if p]


def merge_word(word: tuple, a: int, b: int, z: int) -> tuple:
    """Replace every (a, b) in `word`, left to right, by z."""
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == a and word[i + 1] == b:
            out.append(z)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def learn_merges(word_counts: dict, vocab: list[bytes], n_new: int, progress: bool = False,
                 desc: str = "BPE merges", byte_order=None) -> tuple[list[tuple[int, int, int]], list[int], list[bytes]]:
    """The BPE training loop over distinct `words` (tuples of ids) with their counts.

    Grows `vocab` (id -> bytes) by `n_new` tokens and returns (merges, counts, vocab): merge i
    joined pair (a, b) into id z after (a, b) occurred counts[i] times. If the joined bytes are
    already a token (two roads to the same string), z reuses that id and the vocab does not grow.
    Stops early when no pair occurs any more.

    Ties (equal counts) go to the smaller pair of ids. `byte_order` optionally re-ranks the
    256 byte ids for that comparison only (HF ranks bytes by their printable stand-ins)."""
    vocab = list(vocab)
    key = list(byte_order) if byte_order is not None else list(range(256))
    id_of = {b: i for i, b in enumerate(vocab)}
    words = [tuple(w) for w in word_counts]
    freqs = [word_counts[w] for w in word_counts]
    target = len(vocab) + n_new

    counts: dict[tuple[int, int], int] = defaultdict(int)   # pair -> occurrences in the corpus
    where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> words that may contain it
    for w, (word, f) in enumerate(zip(words, freqs)):
        for pair in zip(word, word[1:]):
            counts[pair] += f
            where[pair].add(w)
    tie = lambda p: (key[p[0]] if p[0] < 256 else p[0], key[p[1]] if p[1] < 256 else p[1])  # noqa: E731
    heap = [(-c, tie(pair), pair) for pair, c in counts.items()]
    heapq.heapify(heap)

    merges, merge_counts = [], []
    bar = tqdm(total=n_new, desc=desc, disable=None if progress else True, leave=False, mininterval=0.5)
    while len(vocab) < target and heap:
        neg, order, pair = heapq.heappop(heap)
        c = counts.get(pair, 0)
        if c != -neg:                 # stale entry: the pair lost occurrences since it was pushed
            if 0 < c < -neg:
                heapq.heappush(heap, (-c, order, pair))
            continue                  # (c > -neg: a fresher, bigger entry is already in the heap)
        a, b = pair
        joined = vocab[a] + vocab[b]
        z = id_of.get(joined)
        if z is None:
            z = id_of[joined] = len(vocab)
            vocab.append(joined)
            bar.update(1)
        merges.append((a, b, z))
        merge_counts.append(c)

        delta: dict[tuple[int, int], int] = defaultdict(int)
        for w in where.pop(pair):
            old = words[w]
            new = merge_word(old, a, b, z)
            if len(new) == len(old):  # a stale index entry: this word no longer has (a, b)
                continue
            f = freqs[w]
            for p in zip(old, old[1:]):
                delta[p] -= f
            for p in zip(new, new[1:]):
                delta[p] += f
                where[p].add(w)
            words[w] = new
        for p, d in delta.items():
            if d == 0:
                continue
            c = counts[p] + d
            if c:
                counts[p] = c
            else:
                del counts[p]
            if d > 0:  # new pairs (they contain z): their first heap entry
                heapq.heappush(heap, (-c, tie(p), p))
    bar.close()
    return merges, merge_counts, vocab


def naive_learn_merges(word_counts: dict, vocab: list[bytes], n_new: int, byte_order=None):
    """Reference for the tests: recount every pair from scratch before each merge.
    Same tie-break (highest count, then smallest pair) and same id reuse as `learn_merges`."""
    vocab = list(vocab)
    key = list(byte_order) if byte_order is not None else list(range(256))
    id_of = {b: i for i, b in enumerate(vocab)}
    words = {tuple(w): c for w, c in word_counts.items()}
    merges, merge_counts = [], []
    target = len(vocab) + n_new
    while len(vocab) < target:
        counts = Counter()
        for word, f in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], *(key[i] if i < 256 else i for i in p)))
        a, b = pair
        joined = vocab[a] + vocab[b]
        z = id_of.get(joined)
        if z is None:
            z = id_of[joined] = len(vocab)
            vocab.append(joined)
        merges.append((a, b, z))
        merge_counts.append(counts[pair])
        merged = Counter()
        for word, f in words.items():
            merged[merge_word(word, a, b, z)] += f
        words = merged
    return merges, merge_counts, vocab


def special_token_ids(special_tokens, n_tokens: int) -> dict[str, int]:
    """{name: id}. Names alone get the ids right after the `n_tokens` learned tokens, in order
    (so they never outrank a merge); a mapping {name: id} keeps the caller's ids (say, 100257
    to line up with another tokenizer), which must lie past the learned tokens and differ."""
    if isinstance(special_tokens, Mapping):
        ids = {str(s): int(i) for s, i in special_tokens.items()}
    else:
        ids = {s: n_tokens + i for i, s in enumerate(special_tokens)}
    for s, i in ids.items():
        if i < n_tokens:
            raise WorkbookError(f"special token {s!r} has id {i}, a learned token's id: "
                                f"special ids must be >= {n_tokens}")
    if len(set(ids.values())) < len(ids):
        raise WorkbookError(f"special tokens share an id: {ids}")
    return ids


def check_vocab_size(vocab_size: int, n_special: int) -> None:
    if vocab_size < 256 + n_special:
        raise WorkbookError(f"vocab size {vocab_size} is too small: byte-level BPE needs at least "
                            f"{256 + n_special} (256 bytes + {n_special} special token{'s' * (n_special != 1)})")


# ----------------------------------------------------------------------------- the tokenizer
class BPE:
    """A trained byte-level BPE: id -> bytes for 256 bytes + learned tokens, then specials.

    `special_tokens`: names (their ids follow the learned tokens) or a mapping {name: id}."""

    def __init__(self, merges, pattern: str = GPT4_PATTERN, special_tokens=(ENDOFTEXT,), merge_counts=None):
        self.merges = [tuple(int(i) for i in m) for m in merges]
        self.merge_counts = list(merge_counts or [])
        self.pattern = pattern
        self._pat = regex.compile(pattern)
        self.vocab = build_vocab(self.merges)
        self.rank = {tok: i for i, tok in enumerate(self.vocab)}  # bytes -> id (= merge priority)
        # specials come after every learned token (or where the caller put them), so they never outrank a merge
        self.special_tokens = special_token_ids(special_tokens, len(self.vocab))
        self.special_ids = {i: s for s, i in self.special_tokens.items()}
        self._cache: dict[bytes, list[int]] = {}

    @classmethod
    def from_vocab_merges(cls, vocab, merges, pattern: str = GPT4_PATTERN, special_tokens=(ENDOFTEXT,),
                          merge_counts=None) -> BPE:
        """A BPE from an explicit (vocab, merges) pair: another BPE's `(tok.vocab, tok.merges)`,
        or minbpe's dicts. `vocab`: id -> bytes, a list or a dict over ids 0..n-1 whose first
        256 are the single bytes in order (an id is also the token's merge rank, as in tiktoken).
        `merges`: (a, b, z) triples in merge order, or a dict {(a, b): z} in merge order.
        The merges must build exactly `vocab`, or one clear error says where they part."""
        if isinstance(vocab, Mapping):
            if sorted(vocab) != list(range(len(vocab))):
                raise WorkbookError(f"vocab ids must be 0..{len(vocab) - 1} without gaps")
            vocab = [vocab[i] for i in range(len(vocab))]
        vocab = [bytes(t) for t in vocab]
        if isinstance(merges, Mapping):
            merges = [(a, b, z) for (a, b), z in merges.items()]
        tok = cls(merges, pattern, special_tokens, merge_counts)
        if tok.vocab != vocab:
            i = next((i for i, (x, y) in enumerate(zip(tok.vocab, vocab)) if x != y), min(len(tok.vocab), len(vocab)))
            raise WorkbookError(f"the merges build {len(tok.vocab)} tokens but vocab has {len(vocab)}; first "
                                f"difference at id {i}: merges give {tok.vocab[i:i + 1]}, vocab has {vocab[i:i + 1]}")
        return tok

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT4_PATTERN,
              special_tokens=(ENDOFTEXT,), progress: bool = False, byte_order=None) -> BPE:
        check_vocab_size(vocab_size, len(special_tokens))
        n_new = vocab_size - 256 - len(special_tokens)
        if not text:
            raise WorkbookError("cannot train BPE on empty text")
        words = pretokenize(text, pattern, special_tokens)
        base = [bytes([i]) for i in range(256)]
        merges, counts, _ = learn_merges(words, base, n_new, progress=progress, byte_order=byte_order)
        return cls(merges, pattern, special_tokens, counts)

    @property
    def vocab_size(self) -> int:
        """Rows an embedding table needs: one past the largest id (learned or special)."""
        return max([len(self.vocab)] + [i + 1 for i in self.special_tokens.values()])

    def truncated(self, vocab_size: int) -> BPE:
        """The tokenizer training would have given at a smaller vocab: BPE merges form a
        sequence, so its first k tokens *are* the vocab-(256+k) tokenizer. (As in training,
        the special tokens get the ids right after the kept tokens.)"""
        n_tokens = vocab_size - len(self.special_tokens)
        if not 256 <= n_tokens <= len(self.vocab):
            raise WorkbookError(f"cannot truncate a {self.vocab_size}-token BPE to {vocab_size}")
        # training stops right after the merge that creates token n_tokens - 1
        cut = 0 if n_tokens == 256 else next(i + 1 for i, m in enumerate(self.merges) if m[2] == n_tokens - 1)
        return BPE(self.merges[:cut], self.pattern, tuple(self.special_tokens), self.merge_counts[:cut])

    # -- encoding ------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Text -> ids. Special tokens in the text become their single id."""
        if not self.special_tokens:
            return self.encode_ordinary(text)
        ids = []
        for piece in split_specials(text, self.special_tokens):
            special = self.special_tokens.get(piece)
            ids.extend([special] if special is not None else self.encode_ordinary(piece))
        return ids

    def encode_iterable(self, texts: Iterable[str], chunk_chars: int = 1 << 14) -> Iterator[int]:
        r"""`encode("".join(texts))`, lazily, for a file object or any stream of strings: the
        stream is regrouped into chunks of about `chunk_chars` characters that end right
        *after* a newline followed by a visible character, and each chunk is encoded alone.

        Why that cut cannot change the ids: merges stay inside pre-tokens, and with GPT-4's
        pattern a newline followed by a visible character always ends a piece of the whole
        text. A newline sits only in whitespace pieces (\s*[\r\n], \s+(?!\S), \s+) or at the
        end of a punctuation piece ( ?[^\s\p{L}\p{N}]++[\r\n]*), never before a visible
        character inside one piece. At the end of a chunk that piece comes out the same: its
        greedy runs stop there either way, and the one alternative that looks past it,
        \s+(?!\S), is never tried on a run ending in a newline (\s*[\r\n] comes first and
        matches). Specials are cut out first and hold no newline here. Cutting *before* the
        newline would not be safe: "Pooh.\n" is the pieces "Pooh" ".\n", not "Pooh" "." "\n"."""
        if self.pattern != GPT4_PATTERN:
            raise WorkbookError("encode_iterable knows where GPT-4's pattern can be cut, not this tokenizer's "
                                "pattern: use encode(text)")
        if any("\n" in s for s in self.special_tokens):
            raise WorkbookError("encode_iterable cuts at newlines, and a special token here holds one: use encode(text)")
        for chunk in stream_chunks(texts, _cut_after_newline, chunk_chars):
            yield from self.encode(chunk)

    def encode_ordinary(self, text: str) -> list[int]:
        """Text -> ids, treating special-token strings as plain text."""
        ids = []
        for word in self._pat.findall(text):
            ids.extend(self.encode_word(word.encode("utf-8")))
        return ids

    def encode_word(self, word: bytes) -> list[int]:
        cached = self._cache.get(word)
        if cached is None:
            cached = self._cache[word] = self._bpe(word)
        return cached

    def _bpe(self, word: bytes) -> list[int]:
        rank = self.rank
        whole = rank.get(word)
        if whole is not None:     # the common case, and a shortcut tiktoken takes too
            return [whole]
        parts = [word[i:i + 1] for i in range(len(word))]
        while len(parts) > 1:
            best, best_i = None, -1
            for i in range(len(parts) - 1):
                r = rank.get(parts[i] + parts[i + 1])
                if r is not None and (best is None or r < best):
                    best, best_i = r, i
            if best is None:
                break
            parts[best_i:best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        return [rank[p] for p in parts]

    def clear_cache(self) -> None:
        self._cache.clear()

    # -- decoding ------------------------------------------------------------------
    def token_bytes(self, i: int) -> bytes:
        if i in self.special_ids:
            return self.special_ids[i].encode("utf-8")
        return self.vocab[i]

    def decode_bytes(self, ids) -> bytes:
        return b"".join(self.token_bytes(i) for i in ids)

    def decode(self, ids) -> str:
        # a slice of ids may end inside a multi-byte character; show that as U+FFFD
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # -- interop -------------------------------------------------------------------
    def to_tiktoken(self, name: str = "pooh-bpe"):
        """The same vocabulary as a tiktoken Encoding: rank = id, so ids must agree."""
        import tiktoken

        return tiktoken.Encoding(name, pat_str=self.pattern, mergeable_ranks=dict(self.rank),
                                 special_tokens=dict(self.special_tokens))

    def save(self, path: Path) -> None:
        # version 2 keeps each special token's id (version 1 kept names only, so ids a caller
        # chose came back renumbered after the learned tokens)
        data = {"kind": "pooh-bpe", "version": 2, "pattern": self.pattern,
                "special_tokens": dict(self.special_tokens), "merges": [list(m) for m in self.merges],
                "merge_counts": self.merge_counts}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path) -> BPE:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise WorkbookError(f"cannot read BPE file {path}: {e}") from e
        if data.get("kind") != "pooh-bpe":
            raise WorkbookError(f"{path} is not a workbook BPE file (kind={data.get('kind')!r})")
        specials = data["special_tokens"]  # version 1: a list of names; version 2: {name: id}
        return cls(data["merges"], data["pattern"], specials if isinstance(specials, dict) else tuple(specials),
                   data.get("merge_counts"))

    def __eq__(self, other) -> bool:
        return (isinstance(other, BPE) and self.merges == other.merges and self.pattern == other.pattern
                and self.special_tokens == other.special_tokens)


def build_vocab(merges) -> list[bytes]:
    """id -> bytes: the 256 bytes, then one token per merge that makes a new string (a merge
    whose string already exists reuses that id). A merge that does not fit is one clear error."""
    vocab = [bytes([i]) for i in range(256)]
    for n, (a, b, z) in enumerate(merges):
        fits = 0 <= a < len(vocab) and 0 <= b < len(vocab) and 0 <= z <= len(vocab)
        if fits and z < len(vocab):
            fits = vocab[z] == vocab[a] + vocab[b]
        if not fits:
            raise WorkbookError(f"merge {n} ({a}, {b}) -> {z} does not fit the {len(vocab)} tokens made before it")
        if z == len(vocab):
            vocab.append(vocab[a] + vocab[b])
    return vocab


def _cut_after_newline(text: str) -> int:
    p = last_newline_before_text(text)
    return p + 1 if p > 0 else -1
