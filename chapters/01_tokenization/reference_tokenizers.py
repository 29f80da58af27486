"""The libraries we check the hand-written BPE against: Hugging Face `tokenizers` (Rust)
trained on the same text, and tiktoken (Rust) running *our* merges; and how fast each encodes.

The speed figures people quote (tiktoken ~50k, minbpe ~35k, HF ~25k tokens/s "in one popular
guide") are order-of-magnitude folklore: the hardware, text and vocabulary behind them are not
stated. `QUOTED_TOKENS_PER_S` keeps them so the chapter can print them beside what this machine
measures on one text, one vocabulary and one thread.
"""
from __future__ import annotations

import json

from bpe import BPE, ENDOFTEXT, GPT4_PATTERN
from shared import bench

# tokens/s as quoted "in one popular guide", keyed by the engine each figure is about
QUOTED_TOKENS_PER_S = {"tiktoken": 50_000, "minbpe": 35_000, "hf": 25_000}


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-ins for bytes: HF byte-level BPE stores tokens as strings,
    so each byte gets a visible character (printable ASCII/Latin-1 map to themselves, the
    rest — space, newline, control bytes — to U+0100 onwards; a space shows as 'Ġ')."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_byte_order() -> list[int]:
    """Where HF puts each byte in its id space: its alphabet is sorted by stand-in character,
    so ' ' (shown as 'Ġ', U+0120) comes after every printable byte. Passing this to
    `BPE.train(byte_order=...)` makes our ties break the way HF's do."""
    table = byte_to_unicode()
    by_char = sorted(range(256), key=lambda b: ord(table[b]))
    order = [0] * 256
    for rank, b in enumerate(by_char):
        order[b] = rank
    return order


def train_hf(text: str, vocab_size: int, pattern: str = GPT4_PATTERN, special_tokens=(ENDOFTEXT,)):
    """HF byte-level BPE on the same pre-tokens as ours: split with the same regex, then map
    bytes to GPT-2's stand-in characters (ByteLevel with its own regex switched off)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def hf_merges(tok) -> list[tuple[bytes, bytes]]:
    """HF's learned merges as pairs of raw bytes, in the order it learned them."""
    back = {c: b for b, c in byte_to_unicode().items()}
    merges = json.loads(tok.to_str())["model"]["merges"]
    as_bytes = lambda s: bytes(back[c] for c in s)  # noqa: E731
    return [(as_bytes(a), as_bytes(b)) for a, b in (m if isinstance(m, list) else m.split(" ") for m in merges)]


def our_merges(bpe) -> list[tuple[bytes, bytes]]:
    return [(bpe.vocab[a], bpe.vocab[b]) for a, b, _ in bpe.merges]


def merge_agreement(ours: list, theirs: list) -> dict:
    """How alike two merge lists are: the common prefix (identical training so far), the
    share of positions that match, and the share of merges both learned at any position."""
    n = min(len(ours), len(theirs))
    prefix = next((i for i in range(n) if ours[i] != theirs[i]), n)
    same_position = sum(ours[i] == theirs[i] for i in range(n))
    shared = len(set(ours) & set(theirs))
    return {"merges": n, "common_prefix": prefix, "same_position": same_position,
            "same_position_frac": same_position / max(n, 1), "shared_set": shared,
            "shared_set_frac": shared / max(n, 1)}


def compare_merges(text: str, vocab_size: int, ours: BPE, hf) -> dict:
    """Do we learn the same merges as HF? Counts are identical by construction; only ties
    (two pairs with the same count) can be broken differently. HF breaks them on its own
    ids, in which a space ('Ġ') sorts after every printable byte. Re-train with HF's byte
    order and every merge should match."""
    theirs = hf_merges(hf)
    default = merge_agreement(our_merges(ours), theirs)
    hf_order = merge_agreement(our_merges(BPE.train(text, vocab_size, byte_order=hf_byte_order())), theirs)
    first_tie = default["common_prefix"]
    example = None
    if first_tie < default["merges"]:
        a, b = our_merges(ours)[first_tie], theirs[first_tie]
        example = {"rank": first_tie, "count": ours.merge_counts[first_tie],
                   "ours": [x.decode("utf-8", "replace") for x in a], "hf": [x.decode("utf-8", "replace") for x in b]}
    return {"default_ties": default, "hf_ties": hf_order, "first_difference": example}


def tiktoken_agrees(tok: BPE, texts: list[str]) -> dict:
    """tiktoken built from our vocabulary (rank = id) must produce our ids exactly."""
    enc = tok.to_tiktoken()
    same = all(enc.encode(t, allowed_special="all") == tok.encode(t) for t in texts)
    roundtrip = all(tok.decode(tok.encode(t)) == t for t in texts)
    return {"ids_identical": same, "roundtrip_exact": roundtrip, "texts_checked": len(texts)}


def encode_speed(name: str, vocab: int, encode, text: str, repeat: int, quoted: str | None = None) -> dict:
    """Encode the whole text: tokens/s and MB/s, the median of `repeat` calls after one
    warm-up (`repeat=1`: one call, no warm-up, for the slow pure-Python engine)."""
    n_bytes, n_tokens = len(text.encode("utf-8")), len(encode(text))
    seconds = bench.time_fn(lambda: encode(text), warmup=0 if repeat == 1 else 1, repeat=repeat)
    return {"name": name, "vocab": vocab, "tokens": n_tokens, "bytes_per_token": n_bytes / n_tokens,
            "seconds": seconds, "tokens_per_s": n_tokens / seconds, "mb_per_s": n_bytes / seconds / 1e6,
            "quoted_as": quoted, "quoted_tokens_per_s": QUOTED_TOKENS_PER_S.get(quoted)}


def vocab_sweep(text: str, tok: BPE, sizes: list[int]) -> dict:
    """Bytes per token at several vocab sizes. BPE merges form a sequence, so the first k
    merges of our big tokenizer ARE the smaller tokenizer (no retraining); tiktoken runs
    them, since its ids equal ours. HF is trained afresh at each size as a cross-check."""
    n_bytes = len(text.encode("utf-8"))
    ours = [n_bytes / len(tok.truncated(v).to_tiktoken().encode(text, allowed_special="all")) for v in sizes]
    hf = [n_bytes / len(train_hf(text, v).encode(text).ids) for v in sizes]
    return {"sizes": sizes, "ours": ours, "hf": hf, "bytes": 1.0}
