"""Tokenizers for the chapters after 01 (which builds BPE by hand).

All three share one small interface: `encode(str) -> list[int]`, `decode(ids) -> str`,
`vocab_size`, `save(path)` / `load(path)`. The BPE is HF `tokenizers` (fast, Rust)
trained on the chosen text and cached under data/processed/tokenizers/.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shared import paths
from shared.errors import WorkbookError


class CharTokenizer:
    """One id per distinct character of the training text (plus nothing else: a
    character it never saw is an error, not a silent <unk>)."""

    kind = "char"

    def __init__(self, chars: str):
        self.chars = "".join(sorted(set(chars)))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        if not text:
            raise WorkbookError("cannot build a character tokenizer from empty text")
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise WorkbookError(f"character {e.args[0]!r} is not in this char tokenizer's vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"kind": "char", "chars": self.chars}))

    def token_str(self, i: int) -> str:
        return self.chars[i]

    def fingerprint(self) -> str:
        return "char:" + hashlib.sha1(self.chars.encode()).hexdigest()[:12]


class ByteTokenizer:
    """UTF-8 bytes: 256 ids, any text, no training."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"kind": "byte"}))

    def token_str(self, i: int) -> str:
        return bytes([i]).decode("latin-1")

    def fingerprint(self) -> str:
        return "byte"


class BPETokenizer:
    """Byte-level BPE from HF `tokenizers` (the library GPT-2-style models use)."""

    kind = "bpe"

    def __init__(self, tok):
        self.tok = tok

    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=("<|endoftext|>",)) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(special_tokens):
            raise WorkbookError(f"BPE vocab_size {vocab_size} is too small: byte-level BPE needs at least "
                                f"{256 + len(special_tokens)} (256 bytes + special tokens)")
        if not text:
            raise WorkbookError("cannot train BPE on empty text")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        tok.train_from_iterator(_chunks(text), trainer=trainer, length=None)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    def token_str(self, i: int) -> str:
        return self.tok.decode([i])

    def fingerprint(self) -> str:
        return "bpe:" + hashlib.sha1(self.tok.to_str().encode()).hexdigest()[:12]


def _chunks(text: str, size: int = 1 << 16):
    for i in range(0, len(text), size):
        yield text[i:i + size]


def load(path: Path):
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise WorkbookError(f"cannot read tokenizer {path}: {e}") from e
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"])
    if data.get("kind") == "byte":
        return ByteTokenizer()
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_file(str(path)))


def build(kind: str, text: str, vocab_size: int = 1024, cache_dir: Path | None = None):
    """A tokenizer of `kind` ('char' | 'byte' | 'bpe') for `text`, cached by content hash."""
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind != "bpe":
        raise WorkbookError(f"unknown tokenizer kind {kind!r} (choose char, byte or bpe)")
    cache_dir = Path(cache_dir or paths.DATA_PROCESSED / "tokenizers")
    key = hashlib.sha1(f"{vocab_size}:".encode() + text.encode()).hexdigest()[:12]
    path = cache_dir / f"bpe{vocab_size}-{key}.json"
    if path.exists():
        return load(path)
    tok = BPETokenizer.train(text, vocab_size)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tok.save(tmp)
    tmp.replace(path)
    return tok
