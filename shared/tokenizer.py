"""Tokenizers for the chapters after 01 (which builds BPE by hand).

All three share one small interface: `encode(str) -> list[int]`, `decode(ids) -> str`,
`vocab_size`, `save(path)` / `load(path)`, and `encode_iterable(lines)`: ids one at a time from
an iterable of strings (a file object, a generator), the same ids `encode` gives for the joined
text, holding only a small chunk of the text in memory at a time. The BPE is HF `tokenizers` (fast, Rust)
trained on the chosen text and cached under data/processed/tokenizers/.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from shared import paths
from shared.errors import WorkbookError
from shared.files import atomic_path


@runtime_checkable
class Tokenizer(Protocol):
    """What every tokenizer in the book offers, so `tok: Tokenizer` can be annotated across chapters
    (CharTokenizer, ByteTokenizer and BPETokenizer here; chapter 01's BPE has the same shape)."""

    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def encode_iterable(self, lines: Iterable[str]) -> Iterator[int]: ...

    def token_str(self, i: int) -> str: ...

    def fingerprint(self) -> str: ...

    def save(self, path: Path) -> None: ...


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

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """One id per character, so any split of the text encodes the same: piece by piece."""
        for text in texts:
            yield from self.encode(text)

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

    def encode_iterable(self, texts: Iterable[str]) -> Iterator[int]:
        """Each piece is whole characters, so its UTF-8 bytes are the text's bytes: piece by piece."""
        for text in texts:
            yield from text.encode("utf-8")

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

    def encode_iterable(self, texts: Iterable[str], chunk_chars: int = 1 << 14) -> Iterator[int]:
        r"""`encode("".join(texts))`, lazily: the stream is regrouped into chunks of about
        `chunk_chars` characters that end just before a newline followed by a visible character,
        and each chunk is encoded on its own.

        Why such a cut cannot change the ids: merges never cross a pre-token, so only the
        pre-tokenizer's split could change, and GPT-2's split regex ('s|'t|...| ?\p{L}+| ?\p{N}+|
        ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+) puts a boundary there in the whole text too: a newline
        only ever sits in an all-whitespace piece, and a whitespace run before a visible character
        ends as "run minus its last character" (\s+(?!\S)) then that character alone (\s+). Cut
        before the newline, the first chunk ends with the same "run minus one" (now at the end
        of the text, where (?!\S) holds too) and the next chunk starts with the same lone
        newline. Cutting *after* the newline would not be safe: " \n" would become one piece.
        A visible first character that starts a special token is not a cut either (specials are
        cut out before pre-tokenizing, so the newline would end its piece there)."""
        self._check_streamable()
        avoid = "".join({t.content[:1] for t in self.tok.get_added_tokens_decoder().values()})
        for chunk in stream_chunks(texts, lambda text: last_newline_before_text(text, avoid), chunk_chars):
            yield from self.tok.encode(chunk).ids

    def _check_streamable(self) -> None:
        """The cut rule above is proven for the pipeline `train` builds: no normalizer and a
        ByteLevel pre-tokenizer (GPT-2 regex, no prefix space, which would add a space per chunk)."""
        cfg = json.loads(self.tok.to_str())
        pre = cfg.get("pre_tokenizer") or {}
        if (cfg.get("normalizer") or pre.get("type") != "ByteLevel" or pre.get("add_prefix_space")
                or not pre.get("use_regex", True)):
            raise WorkbookError("encode_iterable supports the workbook's own byte-level BPE only "
                                "(this tokenizer has another normalizer or pre-tokenizer): use encode(text)")

    def decode(self, ids) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))

    def token_str(self, i: int) -> str:
        return self.tok.decode([i])

    def fingerprint(self) -> str:
        return "bpe:" + hashlib.sha1(self.tok.to_str().encode()).hexdigest()[:12]


def last_newline_before_text(text: str, avoid: str = "") -> int:
    r"""Index of the last newline in `text` (not at index 0) that is followed by a visible
    character not in `avoid`, or -1. "Visible" = printable and not whitespace (letters, marks,
    digits, punctuation, symbols): no Unicode whitespace is among them, so any regex's \S agrees."""
    p = text.rfind("\n")
    while p > 0:
        nxt = text[p + 1:p + 2]
        if nxt and nxt.isprintable() and not nxt.isspace() and nxt not in avoid:
            return p
        p = text.rfind("\n", 0, p)
    return -1


def stream_chunks(texts: Iterable[str], last_cut: Callable[[str], int], chunk_chars: int) -> Iterator[str]:
    """Regroup a stream of strings into chunks that end where `last_cut(text)` says a cut is
    safe (a position i > 0 where encoding text[:i] and text[i:] apart gives the ids of text
    whole; <= 0: none yet), looking for a cut once `chunk_chars` characters are buffered.
    What follows the cut waits for more input, so memory holds about one chunk, plus any
    stretch with no safe cut."""
    buffer: list[str] = []
    size, need = 0, chunk_chars
    for text in texts:
        buffer.append(text)
        size += len(text)
        if size < need:
            continue
        joined = "".join(buffer)
        cut = last_cut(joined)
        if cut <= 0:             # no safe cut yet: read on (doubling, so a long stretch costs O(n), not O(n^2))
            buffer, need = [joined], 2 * size
            continue
        yield joined[:cut]
        rest = joined[cut:]
        buffer, size, need = [rest], len(rest), chunk_chars
    if size:
        yield "".join(buffer)


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
    with atomic_path(path) as tmp:  # unique temporary name: two runs at once never share it
        tok.save(tmp)
    return tok
