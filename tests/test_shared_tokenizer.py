"""shared.tokenizer: encode_iterable streams the ids encode gives the whole text, lazily."""
import itertools
import random
import tracemalloc

import pytest

from shared.data import load_text
from shared.errors import WorkbookError
from shared.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer

# pieces that stress the BPE pre-tokenizer at line ends: whitespace runs before and after
# newlines, CRLF, punctuation, contractions, digits, non-ASCII whitespace, emoji, the special token
PIECES = (list("abcXYZ019.,'!?-\"") + ["'s", "'ll", " ", "  ", "\n", "\n\n", " \n", "\t", "\r\n", "\u00a0", "\u3000",
                                        "é", "東京", "🐻", "<|endoftext|>", "123456", " the", ".\n"])


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(n))


@pytest.fixture(scope="module")
def tokenizers():
    """A BPE trained on the stress pieces, so it learns tokens such as " \\n" and "\\n\\n" whose
    pre-token boundaries a careless cut would move (and a char tokenizer that knows them all)."""
    text = random_text(random.Random(5), 20_000) + load_text("wood", 20_000, seed=1)
    return {"char": CharTokenizer.from_text(text), "byte": ByteTokenizer(), "bpe": BPETokenizer.train(text, 600)}


def lines_of(text: str) -> list[str]:
    return text.splitlines(keepends=True)


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_iterable_equals_encode_of_the_whole_text(tokenizers, kind):
    tok = tokenizers[kind]
    rng = random.Random(0)
    for _ in range(150):
        text = random_text(rng, rng.randint(0, 120))
        whole = tok.encode(text)
        assert list(tok.encode_iterable(lines_of(text))) == whole
        assert list(tok.encode_iterable(iter(text))) == whole             # one character at a time
        if kind == "bpe":                                                  # cuts at every safe newline
            for chunk_chars in (1, 7):
                assert list(tok.encode_iterable(lines_of(text), chunk_chars=chunk_chars)) == whole
                assert list(tok.encode_iterable(iter(text), chunk_chars=chunk_chars)) == whole


def test_bpe_stream_is_not_line_by_line_encoding(tokenizers):
    """The reason for the cut rule: encoding each line alone gives other ids on this text
    (" \\n" and "\\n\\n" become one pre-token where the whole text has two)."""
    tok = tokenizers["bpe"]
    text = "Pooh  \nsat.\n\n\nOwl 12\r\nflew \n<|endoftext|>\n Tigger"
    per_line = [i for line in lines_of(text) for i in tok.encode(line)]
    assert per_line != tok.encode(text)
    assert list(tok.encode_iterable(lines_of(text), chunk_chars=1)) == tok.encode(text)


def counting_lines(base: list[str], repeats: int, seen: list):
    for line in itertools.chain.from_iterable(itertools.repeat(base, repeats)):
        seen[0] += 1
        yield line


@pytest.fixture(scope="module")
def wood_lines():
    return lines_of(load_text("wood", 40_000, seed=2))


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_iterable_is_lazy(tokenizers, wood_lines, kind):
    """The first ids come after reading a chunk of the stream, not all of it."""
    seen = [0]
    ids = tokenizers[kind].encode_iterable(counting_lines(wood_lines, 1000, seen))
    first = list(itertools.islice(ids, 100))
    assert len(first) == 100
    assert seen[0] < 2 * len(wood_lines), f"read {seen[0]} of {1000 * len(wood_lines)} lines for 100 ids"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_encode_iterable_memory_stays_small_on_a_large_stream(tokenizers, wood_lines, kind):
    """~400 k characters streamed through: Python's peak allocation stays under 300 kB (measured
    190 kB for BPE, 10 kB for char), where the joined text alone is 400 kB and encoding it whole
    peaked at ~4 MB. The ids are counted and summed, not kept, then checked against encode."""
    tok, repeats = tokenizers[kind], 10
    seen = [0]
    tracemalloc.start()
    try:
        count = total = 0
        for i in tok.encode_iterable(counting_lines(wood_lines, repeats, seen)):
            count += 1
            total += i
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = "".join(wood_lines) * repeats
    assert seen[0] == repeats * len(wood_lines) and len(text) > 400_000
    assert peak < 300_000, f"peak {peak / 1e6:.2f} MB while streaming {len(text) / 1e6:.1f} M characters"
    whole = tok.encode(text)
    assert (count, total) == (len(whole), sum(whole))


def test_bpe_stream_refuses_a_pipeline_it_cannot_cut_safely(tokenizers):
    from tokenizers import Tokenizer, pre_tokenizers

    tok = Tokenizer.from_str(tokenizers["bpe"].tok.to_str())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # a space at every chunk start
    with pytest.raises(WorkbookError, match="use encode"):
        next(BPETokenizer(tok).encode_iterable(["Pooh\n", "Owl\n"]))


def test_every_tokenizer_satisfies_the_protocol():
    from shared.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer

    text = "Pooh went to the river. Piglet went home.\n" * 40
    for tok in (CharTokenizer.from_text(text), ByteTokenizer(), BPETokenizer.train(text, 300)):
        assert isinstance(tok, Tokenizer), type(tok).__name__
        assert tok.decode(tok.encode("Pooh went home.\n")) == "Pooh went home.\n"
    assert not isinstance(object(), Tokenizer)
