"""The Hundred Acre Wood: exact entropy, validity checking, derived tasks; data loading."""
import math
import random

import numpy as np
import pytest

from shared.corpus import CHARACTERS, HundredAcreWood, english_text, tokens_per_story
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, build

WOOD = HundredAcreWood()


def test_computed_entropy_matches_empirical_estimate():
    """Analytic bits/char vs the mean -log2 p of 20k sampled stories (unbiased MC estimate)."""
    stories = WOOD.stories(20_000, seed=7)
    bits = np.array([-s.log2_prob() for s in stories])
    chars = np.array([len(s.text) for s in stories])
    ent = WOOD.entropy()
    se = bits.std() / math.sqrt(len(bits))
    assert abs(bits.mean() - ent["bits_per_story"]) < 4 * se
    assert chars.mean() == pytest.approx(ent["chars_per_story"], rel=0.01)
    assert bits.mean() / chars.mean() == pytest.approx(ent["bits_per_char"], rel=0.01)
    assert ent["nats_per_char"] == pytest.approx(ent["bits_per_char"] * math.log(2))


def test_sampled_frequencies_match_the_enumerated_probabilities():
    rng = random.Random(0)
    counts = {}
    for _ in range(40_000):
        s = WOOD._middle(rng)
        counts[s.kind] = counts.get(s.kind, 0) + 1
    for kind in ("walk", "say", "meet", "home"):
        assert counts[kind] / 40_000 == pytest.approx(0.25, abs=0.01)


def test_every_generated_story_is_valid_and_parses_back():
    stories = WOOD.stories(500, seed=1)
    for st in stories:
        parsed = WOOD.parse_story(st.text)
        assert parsed is not None and parsed.log2_prob() == pytest.approx(st.log2_prob())
    report = WOOD.check("".join(s.text for s in stories))
    assert report["sentence_validity"] == 1.0 and report["story_validity"] == 1.0


def test_checker_rejects_broken_text():
    st = WOOD.stories(1, seed=2)[0]
    hero = st.opening.get("hero")
    other = next(c for c in CHARACTERS if c != hero)
    wrong_ending = st.text.replace(f"evening, {hero}", f"evening, {other}")
    assert WOOD.parse_story(wrong_ending) is None  # the ending contradicts the opening
    assert WOOD.check("Pooh flew to the moon. Piglet went home to the beech tree.\n")["valid_sentences"] == 1
    assert WOOD.check("")["sentences"] == 0


def test_floor_vs_context_decreases_to_the_entropy_rate():
    f = WOOD.floor_vs_context([16, 64, 256, 4096], n_stories=3000)
    rate = WOOD.entropy()["nats_per_char"]
    floors = f["nats_per_char"]
    assert floors == sorted(floors, reverse=True)
    assert floors[-1] == pytest.approx(rate, rel=1e-3)
    # with no view of the opening every long-range fact is paid again: log2(6)-1 + 3*3 bits per story
    assert floors[0] == pytest.approx(rate + (math.log2(6) - 1 + 9) * math.log(2) / WOOD.entropy()["chars_per_story"],
                                      rel=1e-3)


def test_derived_tasks_state_true_answers():
    st = WOOD.stories(1, seed=5)[0]
    qa = {q["task"]: q["answer"] for q in WOOD.qa_pairs(st)}
    assert qa["color"] == st.opening.get("color") and qa["hero"] == st.opening.get("hero")
    assert qa["count"] == str(len(st.middle))
    for p in WOOD.preference_pairs(50, seed=1):
        assert p["chosen"] != p["rejected"] and p["chosen"].strip() in p["prompt"] or p["task"] == "count"
    edges = WOOD.hierarchy()
    assert ("Hundred Acre Wood", "honey tree") in edges and ("honey tree", "Pooh") in edges


def test_lazy_examples_and_pairs_are_the_listed_ones():
    """The lazy generators draw stories only as far as a caller reads; what they yield is what the
    lists hold: instruction_examples(n) is their first n, preference_pairs(n) the pairs of the
    first 4n examples (a prefix of a longer draw)."""
    examples = WOOD.instruction_examples(40, seed=2)
    assert len(examples) == 40 and examples[:25] == WOOD.instruction_examples(25, seed=2)
    pairs = WOOD.preference_pairs(10, seed=2)
    in_pool = [e for e in examples if e["task"] in ("color", "hero", "mood", "count")]
    assert [p["prompt"] for p in pairs] == [e["prompt"] for e in in_pool][:10]
    longer = WOOD.preference_pairs(20, seed=2)
    assert longer[:len(pairs)] == pairs


def test_per_token_floor_uses_the_same_bits():
    stories = WOOD.stories(300, seed=3)
    tok = CharTokenizer.from_text("".join(s.text for s in stories))
    per_char = WOOD.nats_per_token(tokens_per_story(tok.encode, stories))
    assert per_char == pytest.approx(WOOD.entropy()["nats_per_char"], rel=0.03)


def test_english_ships_with_python():
    text = english_text()
    assert len(text) > 400_000 and "lambda" in text


def test_load_text_sources(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world")
    (tmp_path / "b.md").write_text("second file")
    assert load_text(str(f)) == "hello world"
    assert "second file" in load_text(str(tmp_path))
    with pytest.raises(WorkbookError, match="not 'wood'"):
        load_text(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  ")
    with pytest.raises(WorkbookError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))


def test_tokenizers_round_trip_and_errors(tmp_path):
    text = WOOD.text(5000, seed=0)
    for tok in (CharTokenizer.from_text(text), ByteTokenizer(), BPETokenizer.train(text, 300)):
        assert tok.decode(tok.encode(text)) == text
    with pytest.raises(WorkbookError, match="too small"):
        BPETokenizer.train(text, 100)
    with pytest.raises(WorkbookError, match="not in this char"):
        CharTokenizer.from_text("abc").encode("abd")
    bpe = build("bpe", text, vocab_size=300, cache_dir=tmp_path)
    assert build("bpe", text, vocab_size=300, cache_dir=tmp_path).encode(text) == bpe.encode(text)


def test_aligned_batches_start_at_story_starts():
    import torch

    text = WOOD.text(20_000, seed=0)
    tok = CharTokenizer.from_text(text)
    d = TokenData.from_text(text, tok, doc_separator="\n", cache=False)
    x, y = d.get_batch("train", 16, 64, torch.Generator().manual_seed(0), aligned=True)
    assert all(tok.decode(row[:4].tolist()).startswith("\nOn ") for row in x)
    assert torch.equal(x[:, 1:], y[:, :-1])
