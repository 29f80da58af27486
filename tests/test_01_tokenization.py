"""Chapter 01 (tokenization): byte-level BPE from scratch, the naive loop first and the fast
trainer checked against it, HF tokenizers and tiktoken; superwords, entropy patching,
embeddings, and the scripts. Tests import the idea modules, never main.py."""
from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
import torch

from shared.corpus import english_text
from shared.errors import WorkbookError

from workbook_testing import assert_exit_2, load_chapter_module, results_of, run_quick, run_script

CH = "01_tokenization"

bpe_mod = load_chapter_module(CH, "bpe")
BPE, ENDOFTEXT = bpe_mod.BPE, bpe_mod.ENDOFTEXT
naive_mod = load_chapter_module(CH, "bpe_naive")
reference = load_chapter_module(CH, "reference_tokenizers")
superwords = load_chapter_module(CH, "superwords")
patching = load_chapter_module(CH, "entropy_patching")
embeddings = load_chapter_module(CH, "word_embeddings")

# seeded "random Unicode": ASCII, Latin accents, combining marks, Greek, Cyrillic, CJK, Hangul,
# Devanagari, emoji (incl. ZWJ sequences and skin tones), whitespace of all kinds, digits
ALPHABET = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]{}<>|-_=+*/\\@#$%^&~`")
            + list("éèêëñüöäßçøåœ") + ["e\u0301", "a\u0308", "\u0327", "\u20dd"] + list("αβγδΩπλМосква")
            + list("東京蜂蜜食べる한국어हिन्दी") + ["🐻", "🍯", "👩‍👩‍👧", "👍🏽", "🇬🇧"]
            + [" ", "  ", "\n", "\n\n", "\t", "\r\n", "\u00a0", "\u3000"] + ["'s", "'ll", " the", "123456"])


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


@pytest.fixture(scope="module")
def corpus() -> str:
    rng = random.Random(1)
    text = english_text()[:30_000]
    return text + "".join(random_text(rng, 40) + ENDOFTEXT for _ in range(40))


@pytest.fixture(scope="module")
def tok(corpus) -> BPE:
    return BPE.train(corpus, 600)


# ----------------------------------------------------------------------------- BPE basics
def test_roundtrip_random_unicode_is_byte_exact(tok):
    rng = random.Random(0)
    for _ in range(300):
        s = random_text(rng, rng.randint(0, 80))
        ids = tok.encode(s)
        assert tok.decode_bytes(ids) == s.encode("utf-8")
        assert tok.decode(ids) == s
        assert all(0 <= i < tok.vocab_size for i in ids)


def test_vocab_size_and_learned_tokens(tok):
    assert tok.vocab_size == 600
    assert len(tok.vocab) == 599 and tok.special_tokens == {ENDOFTEXT: 599}
    assert b" the" in tok.rank  # English's most frequent word is learned at vocab 600
    # compression: fewer tokens than bytes on text like the training text
    sample = english_text()[40_000:45_000]
    assert len(tok.encode(sample)) < 0.6 * len(sample.encode())


def test_special_tokens_never_split_or_merged(tok, corpus):
    text = f"{ENDOFTEXT}Pooh{ENDOFTEXT}{ENDOFTEXT} honey<|endoftext|>x<|endoftext"
    eot = tok.special_tokens[ENDOFTEXT]
    assert eot == 599
    ids = tok.encode(text)
    # exactly one id per complete special, and the text around it encoded on its own
    assert ids == [eot, *tok.encode("Pooh"), eot, eot, *tok.encode(" honey"), eot, *tok.encode("x<|endoftext")]
    assert ids.count(eot) == 4 and eot not in tok.encode("x<|endoftext")  # an incomplete one is text
    assert tok.decode(ids) == text
    # training text held 40 specials between words: no learned token swallowed one
    assert not any(b"<|endoftext|>" in t for t in tok.vocab)
    # encode_ordinary treats it as plain text, several tokens
    assert len(tok.encode_ordinary(ENDOFTEXT)) > 1
    assert 599 not in tok.encode_ordinary(corpus[-500:])


def test_save_load_equality(tok, tmp_path):
    path = tmp_path / "bpe.json"
    tok.save(path)
    back = BPE.load(path)
    assert back == tok
    assert back.vocab == tok.vocab and back.special_tokens == tok.special_tokens
    s = random_text(random.Random(3), 200) + ENDOFTEXT + "Owl"
    assert back.encode(s) == tok.encode(s)
    (tmp_path / "bad.json").write_text('{"kind": "something else"}')
    with pytest.raises(WorkbookError):
        BPE.load(tmp_path / "bad.json")


def test_truncation_equals_training_at_the_smaller_size(corpus, tok):
    small = BPE.train(corpus, 400)
    assert tok.truncated(400) == small
    assert tok.truncated(400).vocab_size == 400
    assert tok.truncated(257).merges == []


# ----------------------------------------------------------------------------- naive first, then fast
@pytest.mark.parametrize("n_chars, vocab", [(3000, 300), (12_000, 420)])
def test_naive_loop_and_fast_trainer_learn_identical_merges(corpus, n_chars, vocab):
    text = corpus[:n_chars]
    naive, fast = naive_mod.NaiveBPE.train(text, vocab), BPE.train(text, vocab)
    assert len(fast.merges) == vocab - 257
    assert naive.merge_list() == fast.merges and naive.merge_counts == fast.merge_counts
    assert [naive.vocab[i] for i in range(len(naive.vocab))] == fast.vocab


@pytest.mark.parametrize("seed", range(6))
def test_naive_and_fast_agree_on_tie_heavy_random_text(seed):
    # a tiny alphabet makes many pairs tie: both must break ties on the smaller pair of ids
    rng = random.Random(seed)
    text = "".join(rng.choice("aab \n.") for _ in range(400))
    naive, fast = naive_mod.NaiveBPE.train(text, 330, special_tokens=()), BPE.train(text, 330, special_tokens=())
    assert naive.merge_list() == fast.merges and naive.merge_counts == fast.merge_counts


def test_naive_encoder_gives_the_fast_encoders_ids(tok):
    naive = naive_mod.NaiveBPE.from_merge_list(tok.merges)
    rng = random.Random(11)
    texts = [english_text()[40_000:52_000], f"a{ENDOFTEXT}b {ENDOFTEXT}\n", "12345678901", ""]
    texts += [random_text(rng, rng.randint(1, 100)) for _ in range(100)]
    for s in texts:
        assert naive.encode(s) == tok.encode(s), repr(s)
        assert naive.decode(naive.encode(s)) == s


def test_merges_in_order_draw_the_encoders_ids(tok):
    for word in ["the function", " tokenization", " the", "Python"]:
        fired, ids = naive_mod.merges_in_order(word.encode(), tok.merges)
        assert ids == tok.encode(word) and len(ids) < len(word.encode()), word
        assert [m for m in tok.merges if m in fired] == fired   # in the order they were learned


def test_naive_train_rejects_small_vocab_and_empty_text():
    with pytest.raises(WorkbookError, match="too small"):
        naive_mod.NaiveBPE.train("hello", 256)
    with pytest.raises(WorkbookError, match="empty"):
        naive_mod.NaiveBPE.train("", 300)


def test_quoted_speed_rows_carry_the_quoted_figure():
    row = reference.encode_speed("naive", 300, lambda s: list(s.encode()), "abc " * 100, 1, quoted="minbpe")
    assert row["quoted_tokens_per_s"] == 35_000 and row["tokens"] == 400 and row["tokens_per_s"] > 0
    assert reference.encode_speed("x", 256, lambda s: [1], "a", 1)["quoted_tokens_per_s"] is None


# ----------------------------------------------------------------------------- against references
def _random_word_counts(seed: int) -> Counter:
    rng = random.Random(seed)
    # a small alphabet makes many pairs tie, which exercises the tie-break
    return Counter({tuple(rng.choice(b"abcde ") for _ in range(rng.randint(1, 10))): rng.randint(1, 6)
                    for _ in range(rng.randint(3, 40))})


@pytest.mark.parametrize("seed", range(12))
def test_incremental_counts_match_naive_full_recount(seed):
    words = _random_word_counts(seed)
    base = [bytes([i]) for i in range(256)]
    fast = bpe_mod.learn_merges(words, base, 40)
    slow = bpe_mod.naive_learn_merges(words, base, 40)
    assert fast[0] == slow[0] and fast[1] == slow[1] and fast[2] == slow[2]
    order = reference.hf_byte_order()
    assert bpe_mod.learn_merges(words, base, 40, byte_order=order)[0] == \
        bpe_mod.naive_learn_merges(words, base, 40, byte_order=order)[0]


def test_incremental_matches_naive_on_real_text_and_when_ids_are_reused():
    words = bpe_mod.pretokenize(english_text()[:5000], bpe_mod.GPT4_PATTERN, (ENDOFTEXT,))
    base = [bytes([i]) for i in range(256)]
    assert bpe_mod.learn_merges(words, base, 120)[:2] == bpe_mod.naive_learn_merges(words, base, 120)[:2]
    # a vocab that already holds "ab" and "abc": merging (a, b) and (ab, c) must reuse their ids
    seeded = base + [b"ab", b"abc"]
    words = Counter({tuple(b"abc"): 5, tuple(b"abd"): 2})
    fast, slow = bpe_mod.learn_merges(words, seeded, 2), bpe_mod.naive_learn_merges(words, seeded, 2)
    assert fast == slow
    a, b, c, d = b"abcd"
    # (a,b) -> "ab" (id 256, reused), (ab,c) -> "abc" (257, reused), (ab,d) -> "abd" (new: 258),
    # then no pairs are left, so training stops one token short
    assert fast[0] == [(a, b, 256), (256, c, 257), (256, d, 258)] and fast[1] == [7, 5, 2]
    assert fast[2] == seeded + [b"abd"]


def test_same_merges_as_hf_when_ties_break_the_same_way(corpus):
    text = corpus[:20_000]
    hf = reference.train_hf(text, 500)
    ours = BPE.train(text, 500, byte_order=reference.hf_byte_order())
    agree = reference.merge_agreement(reference.our_merges(ours), reference.hf_merges(hf))
    assert agree["merges"] == 243 and agree["same_position"] == 243
    # with our plain tie-break the sets still agree almost entirely
    plain = reference.merge_agreement(reference.our_merges(BPE.train(text, 500)), reference.hf_merges(hf))
    assert plain["shared_set_frac"] > 0.95


def test_tiktoken_ids_identical_to_ours(tok):
    enc = tok.to_tiktoken()
    rng = random.Random(7)
    texts = [random_text(rng, rng.randint(1, 120)) for _ in range(200)]
    texts += [english_text()[50_000:60_000], f"a{ENDOFTEXT}b {ENDOFTEXT}\n", "   \n\n  x  ", "12345678901"]
    for s in texts:
        assert enc.encode(s, allowed_special="all") == tok.encode(s), repr(s)
    assert enc.decode(tok.encode(texts[-4])) == texts[-4]


# ----------------------------------------------------------------------------- errors
def test_errors_on_small_vocab_and_empty_text():
    with pytest.raises(WorkbookError, match="too small"):
        BPE.train("hello world", 256)  # 256 bytes + <|endoftext|> need 257
    with pytest.raises(WorkbookError, match="too small"):
        BPE.train("hello world", 100)
    with pytest.raises(WorkbookError, match="empty"):
        BPE.train("", 300)
    assert BPE.train("hello world", 257).vocab_size == 257


@pytest.mark.parametrize("args, message", [
    (["--vocab-size", "100"], "--vocab-size: expected a number in [257, 65536], got '100'"),
    (["--vocab-size", "4k"], "got '4k'"),
    (["--seed", "-1"], "--seed"),
])
def test_cli_bad_flags_exit_2_with_one_line(args, message, tmp_path):
    assert_exit_2(CH, "main.py", ["--quick", *args], message, tmp_path)


def test_cli_empty_or_tiny_text_exits_2_with_one_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_exit_2(CH, "main.py", ["--quick", "--text", str(empty)], "empty", tmp_path)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("Pooh and Piglet. " * 20)
    assert_exit_2(CH, "main.py", ["--quick", "--text", str(tiny)], "needs at least 4000", tmp_path)


# ----------------------------------------------------------------------------- superwords
def test_superwords_cross_word_boundaries_and_roundtrip(corpus, tok):
    text = english_text()[:30_000]
    base = tok.truncated(450)
    sw = superwords.SuperwordBPE.train(text, base, 150)
    assert sw.vocab_size == 600
    pat = bpe_mod.regex.compile(bpe_mod.GPT4_PATTERN)
    crossing = [t for t in sw.vocab[base.vocab_size:] if len(pat.findall(t.decode("utf-8", "replace"))) >= 2]
    assert len(crossing) > 100  # nearly every superword spans two or more pre-tokens
    assert b" of the" in sw.vocab
    rng = random.Random(5)
    for s in [text[:3000], random_text(rng, 300), f"one{ENDOFTEXT} of the"]:
        assert sw.decode(sw.encode(s)) == s
    # each superword replaces two or more tokens: fewer tokens than the base BPE (~5% here)
    assert len(sw.encode(text)) < 0.97 * len(base.encode(text))
    assert sw.truncated(0).encode(text) == base.encode(text)
    assert len(sw.truncated(50).encode(text)) > len(sw.encode(text))


@pytest.mark.slow
def test_superwords_beat_more_bpe_merges_at_4096_on_english():
    text = english_text()
    full = BPE.train(text, 4096)
    sw = superwords.SuperwordBPE.train(text, full.truncated(3072), 1024)
    assert sw.vocab_size == 4096
    assert len(sw.encode(text)) < 0.95 * len(full.encode(text))


# ----------------------------------------------------------------------------- entropy patching
def test_patch_rules_on_known_entropies():
    h = np.array([8.0, 1, 1, 5, 1, 1, 1, 6, 6, 0.5])
    starts = patching.patch_starts(h, 4.0)
    assert starts.tolist() == [True, False, False, True, False, False, False, True, True, False]
    assert patching.patch_lengths(starts).tolist() == [3, 4, 1, 2]
    mono = patching.patch_starts(h, 3.0, rule="monotonic")
    assert np.flatnonzero(mono).tolist() == [0, 3, 7]  # the second 6 is no jump
    rng = np.random.default_rng(0)
    h = rng.exponential(2.0, 5000)
    for target in (2.0, 4.0, 6.0):
        theta = patching.threshold_for_mean(h, target)
        assert abs(patching.patch_lengths(patching.patch_starts(h, theta)).mean() - target) < 0.2


def test_patch_boundaries_land_on_a_planted_random_span():
    regular = ("Pooh walked to the river and Piglet met Owl near the old oak. " * 60).encode()
    model = patching.NgramEntropy(regular, order=3)
    noise = bytes(random.Random(0).randrange(256) for _ in range(48))
    text = regular[:900] + noise + regular[:600]
    starts = patching.patch_starts(model(text), threshold=4.0)
    lo, hi = 900, 900 + len(noise)
    # once the context is all noise (3 bytes in) every byte is its own patch ...
    assert starts[lo + 3:hi].all()
    # ... while the regular text, which the model knows, is cut rarely
    outside = np.concatenate([starts[10:lo], starts[hi + 3:]])
    assert outside.mean() < 0.05
    assert starts[lo:hi].mean() > 10 * outside.mean()


class _HashModel(torch.nn.Module):
    """Uniform next byte after '#', certain after anything else: H = 8 bits vs 0 bits."""

    def forward(self, idx):
        logits = torch.full((*idx.shape, 256), -1e4)
        logits[..., 0] = 0.0
        logits[idx == ord("#")] = 0.0
        return logits


def test_byte_entropies_align_every_byte_with_its_prediction():
    rng = random.Random(2)
    data = bytes(rng.choice(b"ab#") for _ in range(1000))
    h = patching.byte_entropies(_HashModel(), data, block=64, batch_size=7)
    assert h[0] == 8.0
    after_hash = np.array([data[t - 1] == ord("#") for t in range(1, len(data))])
    assert np.allclose(h[1:][after_hash], 8.0, atol=1e-3)
    assert np.allclose(h[1:][~after_hash], 0.0, atol=1e-3)
    short = patching.byte_entropies(_HashModel(), b"#ab", block=64)
    assert np.allclose(short, [8.0, 8.0, 0.0], atol=1e-3)


# ----------------------------------------------------------------------------- embeddings
def test_onehot_times_matrix_is_a_row_lookup_and_models_count_params():
    cfg = embeddings.EmbedConfig(n_ctx=3, d_embed=8, hidden=32)
    V = 50
    onehot, learned = embeddings.OneHotMLP(V, cfg), embeddings.EmbeddingMLP(V, cfg)
    assert embeddings.input_params(onehot) == 3 * V * 32 + 32
    assert embeddings.input_params(learned) == V * 8 + 3 * 8 * 32 + 32
    x = torch.randint(V, (5, 3))
    # the one-hot model's first layer equals a lookup in its weight columns
    W = onehot.inp.weight.T.reshape(3, V, 32)
    manual = W[0][x[:, 0]] + W[1][x[:, 1]] + W[2][x[:, 2]] + onehot.inp.bias
    flat = torch.nn.functional.one_hot(x, V).float().flatten(1)
    assert torch.allclose(onehot.inp(flat), manual, atol=1e-5)


def test_category_similarity_and_vocab():
    sim = np.array([[1, .9, .1], [.9, 1, .0], [.1, .0, 1]])
    cs = embeddings.category_similarity(sim, ["a", "a", "b"])
    assert cs["within"] == pytest.approx(0.9) and cs["across"] == pytest.approx(0.05)
    from shared.corpus import CATEGORIES, HundredAcreWood

    vocab = embeddings.WordVocab(HundredAcreWood().text(20_000))
    assert "honey pot" in vocab.stoi and "Oh bother" in vocab.stoi
    assert sum(w in vocab.stoi for w in CATEGORIES) >= 0.9 * len(CATEGORIES)


# ----------------------------------------------------------------------------- the scripts
EXPECTED_PLOTS = ["bpe_pipeline", "naive_vs_fast", "vocab_vs_compression", "merge_frequency", "throughput",
                  "token_boundaries",
                  "embedding_similarity", "embedding_pca", "embedding_training", "patch_lengths",
                  "patch_compression", "entropy_patches"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    return run_quick(CH, tmp_path_factory.mktemp("ch01"))


def test_main_quick_end_to_end(quick_run):
    out, proc = quick_run
    r = results_of(out, CH)
    for key in ("headline", "naive_vs_fast", "throughput", "vocab_sweep", "merge_counts", "superwords",
                "patching", "samples", "embeddings", "agreement", "checks", "pipeline", "meta", "config"):
        assert key in r, key
    h = r["headline"]
    assert h["tiktoken_ids_identical"] is True and r["checks"]["roundtrip_exact"] is True
    assert r["checks"]["naive_encoder_ids_identical"] is True
    assert r["naive_vs_fast"]["identical_merges"] is True and r["naive_vs_fast"]["speedup"] > 1
    assert h["merges_same_rank_as_hf_with_hf_ties"] == 1.0
    assert h["vocab_size"] == 512 and h["bytes_per_token_bpe"] > 1.5
    names = [row["name"] for row in r["throughput"]]
    assert names[0].startswith("bytes") and len(names) == 5                 # the baseline row first
    assert len({row["tokens"] for row in r["throughput"][1:4]}) == 1         # naive == ours == tiktoken
    assert {row["quoted_as"] for row in r["throughput"]} == {None, "minbpe", "tiktoken", "hf"}
    assert r["pipeline"]["ids"] and len(r["pipeline"]["merges"]) > 0
    assert set(r["meta"]["sections"]) and all(t["cpu_s"] >= 0 for t in r["meta"]["sections"].values())
    assert r["vocab_sweep"]["ours"] == sorted(r["vocab_sweep"]["ours"])    # more vocab, more bytes/token
    assert len(r["merge_counts"]) == 255
    assert r["embeddings"]["onehot_matmul_equals_lookup"] is True
    assert set(r["embeddings"]["models"]) == {"one-hot", "learned"}
    for name in EXPECTED_PLOTS:
        assert (out / "plots" / CH / f"{name}.png").stat().st_size > 5000, name
    page = (out / "plots" / CH / "token_boundaries.html").read_text()
    assert page.startswith("<!doctype html>") and "🐻" in page and "title=" in page
    assert (out / "ck" / CH / "bpe512.json").exists()


def test_visualize_redraws_from_json_alone(quick_run):
    out, _ = quick_run
    plots = out / "plots" / CH
    for png in plots.glob("*.png"):
        png.unlink()
    proc = run_script(CH, "visualize.py", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in EXPECTED_PLOTS:
        assert (plots / f"{name}.png").exists(), name


def test_visualize_without_results_is_one_clear_error(tmp_path):
    assert_exit_2(CH, "visualize.py", ["--quick"], "run the chapter's main.py", tmp_path)


def test_figures_fit_the_readme_width(quick_run):
    from PIL import Image

    out, _ = quick_run
    for name in EXPECTED_PLOTS:
        with Image.open(out / "plots" / CH / f"{name}.png") as im:
            assert im.width <= 1400, (name, im.width)


# ----------------------------------------------------------------------------- streaming, (vocab, merges), special ids
def test_bpe_encode_iterable_equals_encode_of_the_whole_text(tok):
    rng = random.Random(7)
    texts = ["Pooh.\nOwl\n\n  \nsat.\r\n\n" + ENDOFTEXT + "\nTigger  \n 12345\n"]
    texts += [random_text(rng, rng.randint(0, 100)) for _ in range(150)]
    for s in texts:
        whole = tok.encode(s)
        for chunk_chars in (1, 5, 1 << 14):
            assert list(tok.encode_iterable(s.splitlines(keepends=True), chunk_chars=chunk_chars)) == whole
        assert list(tok.encode_iterable(iter(s), chunk_chars=3)) == whole   # one character at a time


def test_bpe_encode_iterable_is_lazy(tok):
    """A file-like stream of 100k lines: the first 50 ids need only the first chunk of it."""
    lines = english_text()[:20_000].splitlines(keepends=True)
    seen = [0]

    def stream():
        for _ in range(100_000 // len(lines) + 1):
            for line in lines:
                seen[0] += 1
                yield line

    first = [i for _, i in zip(range(50), tok.encode_iterable(stream()))]
    assert first == tok.encode("".join(lines))[:50]
    assert seen[0] < len(lines)


def test_bpe_from_vocab_merges_encodes_like_the_original(tok):
    twin = BPE.from_vocab_merges(tok.vocab, tok.merges)
    minbpe_style = BPE.from_vocab_merges(dict(enumerate(tok.vocab)), {(a, b): z for a, b, z in tok.merges})
    assert twin == tok and minbpe_style == tok and twin.vocab_size == tok.vocab_size
    rng = random.Random(8)
    for _ in range(100):
        s = random_text(rng, 80) + ENDOFTEXT + random_text(rng, 20)
        assert twin.encode(s) == tok.encode(s) == minbpe_style.encode(s)
    with pytest.raises(WorkbookError, match="first difference at id 598"):
        BPE.from_vocab_merges(tok.vocab[:-1] + [b"zz"], tok.merges)
    with pytest.raises(WorkbookError, match="does not fit"):
        BPE.from_vocab_merges(tok.vocab, [(300, 1, 256)])


def test_bpe_save_load_keeps_caller_chosen_special_ids(tok, tmp_path):
    import json

    specials = {ENDOFTEXT: 1000, "<|pad|>": 700}
    custom = BPE.from_vocab_merges(tok.vocab, tok.merges, special_tokens=specials)
    text = "Pooh" + ENDOFTEXT + "<|pad|>honey"
    ids = custom.encode(text)
    assert [i for i in ids if i >= len(tok.vocab)] == [1000, 700]
    assert custom.decode(ids) == text and custom.vocab_size == 1001
    custom.save(tmp_path / "custom.json")
    back = BPE.load(tmp_path / "custom.json")
    assert back.special_tokens == specials and back == custom and back.encode(text) == ids
    assert custom.to_tiktoken().encode(text, allowed_special="all") == ids
    with pytest.raises(WorkbookError, match="learned token"):
        BPE(tok.merges, special_tokens={ENDOFTEXT: 300})
    # a version-1 file (names only) still loads, with the ids right after the learned tokens
    (tmp_path / "v1.json").write_text(json.dumps({"kind": "pooh-bpe", "version": 1, "pattern": tok.pattern,
                                                  "special_tokens": [ENDOFTEXT], "merges": tok.merges}))
    assert BPE.load(tmp_path / "v1.json").special_tokens == {ENDOFTEXT: 599}
