"""shared.data.TokenData.get_batch: every valid window can be drawn, none out of range."""
import numpy as np
import pytest
import torch

from shared.data import TokenData
from shared.errors import WorkbookError


def positions(n: int) -> TokenData:
    """Token i is the number i, so a window's first token says where it starts."""
    return TokenData(train=np.arange(n, dtype=np.int32), val=np.arange(1000, 1000 + n, dtype=np.int32))


def drawn_starts(data: TokenData, split: str, seq_len: int, draws: int = 4000, aligned: bool = False) -> set:
    x, y = data.get_batch(split, draws, seq_len, torch.Generator().manual_seed(0), aligned=aligned)
    assert torch.equal(y, x + 1)                                   # y is x shifted by one token
    offset = 0 if split == "train" else 1000
    return set((x[:, 0] - offset).tolist())


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_valid_start_is_drawn_and_none_out_of_range(split):
    """12 tokens, T = 4: a window needs 5 tokens, so starts 0..7 are valid (7 ends on the last
    token) and 4000 draws see each of the 8 (missing one has probability ~8 * (7/8)^4000)."""
    n, seq_len = 12, 4
    assert drawn_starts(positions(n), split, seq_len) == set(range(n - seq_len))


def test_a_split_of_exactly_seq_len_plus_one_tokens_has_one_window():
    d = positions(5)
    x, y = d.get_batch("train", 3, 4, torch.Generator().manual_seed(0))
    assert x.tolist() == [[0, 1, 2, 3]] * 3 and y.tolist() == [[1, 2, 3, 4]] * 3
    with pytest.raises(WorkbookError, match="fewer than seq_len"):
        d.get_batch("train", 1, 5)


def test_aligned_windows_start_at_every_boundary_that_fits():
    """Boundaries at 0, 3, 7 (= n-T-1, the last valid start) and 8 (too late for a window)."""
    d = positions(12)
    d.boundaries = {"train": np.array([0, 3, 7, 8]), "val": np.array([8])}
    assert drawn_starts(d, "train", 4, aligned=True) == {0, 3, 7}
    with pytest.raises(WorkbookError, match="starts early enough"):
        d.get_batch("val", 1, 4, aligned=True)
    d.boundaries = None
    with pytest.raises(WorkbookError, match="doc_separator"):
        d.get_batch("train", 1, 4, aligned=True)


# ----------------------------------------------------------------------------- --text sources
def test_latin1_text_is_read_and_announced(tmp_path, capsys):
    f = tmp_path / "old.txt"
    f.write_bytes("Café au lait, naïve façade — déjà vu.\n".encode("cp1252"))
    from shared.data import load_text

    text = load_text(str(f))
    assert text.startswith("Café au lait, naïve façade") and "�" not in text
    assert "is not UTF-8" in capsys.readouterr().out


def test_utf8_text_is_read_silently(tmp_path, capsys):
    from shared.data import load_text

    f = tmp_path / "new.txt"
    f.write_text("Ελλάδα, 東京, naïve\n", encoding="utf-8")
    assert load_text(str(f)) == "Ελλάδα, 東京, naïve\n" and capsys.readouterr().out == ""


def test_a_binary_file_is_refused(tmp_path):
    from shared.data import load_text

    f = tmp_path / "model.bin"
    f.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(WorkbookError, match="binary file"):
        load_text(str(f))


def test_a_url_that_returns_html_is_refused_and_not_cached(tmp_path, monkeypatch):
    import email.message
    import io

    from shared import data

    class Reply(io.BytesIO):
        def __init__(self, body, kind):
            super().__init__(body)
            self.headers = email.message.Message()
            self.headers["Content-Type"] = kind

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

    monkeypatch.setattr(data.paths, "DATA_RAW", tmp_path)
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: Reply(b"<html><body>hi</body></html>", "text/html; charset=utf-8"))
    with pytest.raises(WorkbookError, match="text/html, not plain text"):
        data.load_text("https://example.org/book")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(data.urllib.request, "urlopen",
                        lambda url, timeout: Reply(b"Once upon a time.\n", "text/plain; charset=utf-8"))
    assert data.load_text("https://example.org/book.txt") == "Once upon a time.\n"


def test_a_large_text_prints_its_memory_estimate(capsys):
    from shared.data import BYTES_PER_CHAR, LARGE_TEXT_BYTES, warn_if_large

    warn_if_large("x" * 1000)
    assert capsys.readouterr().out == ""
    warn_if_large("x" * (LARGE_TEXT_BYTES // BYTES_PER_CHAR))
    assert "GiB of memory" in capsys.readouterr().out


def test_two_runs_writing_one_token_cache_at_once_both_succeed(tmp_path):
    """Two processes tokenizing the same text into the same cache file (two chapter runs at once)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\nfrom pathlib import Path\nfrom shared import data, paths\n"
            "from shared.tokenizer import CharTokenizer\n"
            "paths.DATA_PROCESSED = Path(sys.argv[1])\n"
            "text = ('abcdefgh ' * 400_000)[: int(sys.argv[2])]\n"
            "for _ in range(3):\n"
            "    ids = data._cached_encode(text, CharTokenizer.from_text(text))\n"
            "    assert len(ids) == len(text)\n")
    for size in (3_000_000, 3_000_001):
        procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(size)], stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        errors = [p.communicate(timeout=300)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
    assert not [p for p in (tmp_path / "tokens").iterdir() if p.name.startswith(".")]
