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
