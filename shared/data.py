"""Text in, token batches out.

`load_text(source)` understands:
  wood              the Hundred Acre Wood generator (default; no files needed)
  english           natural English that ships with Python (pydoc_data topics, ~465 KB)
  path/to/file.txt  a local text file, or a folder of .txt/.md files
  hf:NAME[:SPLIT[:COLUMN]]   a Hugging Face `datasets` dataset from local files or the HF cache
                    (offline: HF_DATASETS_OFFLINE=1 is set, nothing is downloaded)
  https://...       a URL, downloaded once into data/raw/ (only when you ask for one)

`TokenData` holds train/val token arrays (saved under data/processed/) and samples batches.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared import paths
from shared.corpus import HundredAcreWood, english_text
from shared.errors import WorkbookError
from shared.files import atomic_path, atomic_write_bytes


def load_text(source: str = "wood", n_chars: int = 2_000_000, seed: int = 0) -> str:
    if source == "wood":
        return HundredAcreWood().text(n_chars, seed=seed)
    if source == "english":
        return english_text()
    if source.startswith("hf:"):
        return _load_hf(source[3:])
    if source.startswith(("http://", "https://")):
        return _load_url(source)
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".md"} and p.is_file())
        if not files:
            raise WorkbookError(f"folder {path} holds no .txt or .md files")
        text = "\n\n".join(decode_text(p.read_bytes(), str(p)) for p in files)
    elif path.is_file():
        text = decode_text(path.read_bytes(), str(path))
    else:
        raise WorkbookError(f"text source {source!r} is not 'wood', 'english', hf:NAME, a URL, or an existing file/folder")
    if not text.strip():
        raise WorkbookError(f"text source {source!r} is empty")
    warn_if_large(text)
    return text


# Tokenizing and holding a text costs roughly this many bytes of memory per character (the str, the
# int64 ids while encoding, the saved int32 arrays): measured ~28 on a 50 MB text.
BYTES_PER_CHAR = 28
LARGE_TEXT_BYTES = 2**30


def warn_if_large(text: str) -> None:
    need = len(text) * BYTES_PER_CHAR
    if need > LARGE_TEXT_BYTES / 4:
        print(f"note: {len(text) / 1e6:.0f} M characters of text: expect ~{need / 2**30:.1f} GiB of memory "
              "to tokenize and hold it (pass a smaller file, or a folder of fewer files, to use less)")


def decode_text(data: bytes, name: str) -> str:
    """Bytes of a text file -> str, saying so when it is not UTF-8 and refusing what is not text.

    UTF-8 is tried first (with or without a byte-order mark); a file that is not valid UTF-8 is
    most often Windows' cp1252 or Latin-1, which decode any byte sequence, so they are a fallback
    we announce rather than a silent guess. NUL bytes mean a binary file (an image, a model, a
    zip): training on that would only teach the model noise."""
    if b"\x00" in data[:1 << 20] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise WorkbookError(f"{name} looks like a binary file (it contains NUL bytes), not text: pass a .txt file")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        fallback = "cp1252"
        try:
            text = data.decode(fallback)
        except UnicodeDecodeError:
            fallback, text = "latin-1", data.decode("latin-1")
        print(f"note: {name} is not UTF-8 (first bad byte at offset {e.start}); read it as {fallback}. "
              "If its accents look wrong, convert it: iconv -f <its encoding> -t utf-8")
        return text


def _load_hf(spec: str) -> str:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # never download behind the user's back
    name, split, column = (spec.split(":") + ["train", "text"])[:3]
    try:
        from datasets import load_dataset

        ds = load_dataset(name, split=split)
    except Exception as e:  # datasets raises many types; one clear line is what matters
        raise WorkbookError(f"cannot load HF dataset {name!r} split {split!r} offline: {type(e).__name__}: {e}") from e
    if column not in ds.column_names:
        raise WorkbookError(f"HF dataset {name!r} has no column {column!r} (columns: {ds.column_names})")
    return "\n\n".join(str(x) for x in ds[column])


def _load_url(url: str) -> str:
    dest = paths.DATA_RAW / ("url-" + hashlib.sha1(url.encode()).hexdigest()[:16] + ".txt")
    if not dest.exists():
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                kind = r.headers.get_content_type()
                data = r.read()
        except Exception as e:
            raise WorkbookError(f"cannot download {url}: {e}") from e
        if kind != "text/plain" and not kind.startswith("text/markdown"):
            raise WorkbookError(f"{url} is {kind}, not plain text: a web page's HTML would train the model on "
                                "markup. Link to the raw .txt file (e.g. Project Gutenberg's 'Plain Text UTF-8')")
        decode_text(data, url)  # refuses binaries before anything is cached
        atomic_write_bytes(dest, data)
    return decode_text(dest.read_bytes(), url)


@dataclass
class TokenData:
    """Train/val token ids plus a batch sampler."""

    train: np.ndarray
    val: np.ndarray
    boundaries: dict | None = None  # split -> array of indices where documents start (optional)

    @classmethod
    def from_text(cls, text: str, tokenizer, val_fraction: float = 0.1, doc_separator: str | None = None,
                  cache: bool = True) -> TokenData:
        """Tokenize `text` (cached under data/processed by content + tokenizer) and split the
        last `val_fraction` off for validation. With `doc_separator` (e.g. "\\n" for the
        Hundred Acre Wood) the positions right after each separator are remembered, so
        windows can start at document starts (`aligned=True`)."""
        if not text:
            raise WorkbookError("cannot make token data from empty text")
        ids = _cached_encode(text, tokenizer) if cache else np.array(tokenizer.encode(text), dtype=np.int32)
        n_val = max(1, int(len(ids) * val_fraction))
        if len(ids) - n_val < 2:
            raise WorkbookError(f"text too short: {len(ids)} tokens")
        data = cls(ids[:-n_val], ids[-n_val:])
        if doc_separator is not None:
            sep = tokenizer.encode(doc_separator)
            if len(sep) != 1:
                raise WorkbookError(f"document separator {doc_separator!r} is not a single token")
            data.boundaries = {s: np.flatnonzero(arr == sep[0]) for s, arr in (("train", data.train), ("val", data.val))}
        return data

    def get_batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator | None = None,
                  aligned: bool = False, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: x = ids[i:i+T], y = ids[i+1:i+T+1]. `aligned` starts every window
        at a document separator, so each predicted token has its document's full history.

        A window needs T+1 tokens, so with n tokens the valid starts are 0 .. n-T-1 (n-T of
        them, all equally likely); the last one ends exactly on the split's last token."""
        arr = self.train if split == "train" else self.val
        if len(arr) < seq_len + 1:
            raise WorkbookError(f"{split} split has {len(arr)} tokens, fewer than seq_len+1 = {seq_len + 1}")
        n_starts = len(arr) - seq_len  # starts 0 .. n-T-1
        if aligned:
            starts = self.boundaries[split] if self.boundaries else None
            if starts is None:
                raise WorkbookError("aligned batches need TokenData.from_text(..., doc_separator=...)")
            starts = starts[starts < n_starts]
            if len(starts) == 0:
                raise WorkbookError(f"no document in the {split} split starts early enough for a window of "
                                    f"{seq_len + 1} tokens: use a shorter seq_len or aligned=False")
            ix = starts[torch.randint(len(starts), (batch_size,), generator=generator).numpy()]
        else:
            ix = torch.randint(n_starts, (batch_size,), generator=generator).numpy()
        x = np.stack([arr[i:i + seq_len] for i in ix]).astype(np.int64)
        y = np.stack([arr[i + 1:i + seq_len + 1] for i in ix]).astype(np.int64)
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if torch.device(device).type != "cpu":
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return x, y


def _cached_encode(text: str, tokenizer) -> np.ndarray:
    h = hashlib.sha1(text.encode())
    h.update(tokenizer.fingerprint().encode())
    path = paths.DATA_PROCESSED / "tokens" / f"{tokenizer.kind}-{h.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    ids = np.array(tokenizer.encode(text), dtype=np.int32)
    with atomic_path(path, keep_suffix=True) as tmp:  # two runs at once each write their own file
        np.save(tmp, ids)
    return ids
