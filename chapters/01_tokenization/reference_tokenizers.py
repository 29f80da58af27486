"""The libraries we check the hand-written BPE against: Hugging Face `tokenizers` (Rust)
trained on the same text, and tiktoken (Rust) running *our* merges."""
from __future__ import annotations

import json

from bpe import ENDOFTEXT, GPT4_PATTERN


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
