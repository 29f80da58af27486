"""The Hundred Acre Wood: exact entropy, validity checking, derived tasks; data loading."""
import math
import random

import numpy as np
import pytest

from shared import corpus
from shared.corpus import CHARACTERS, HundredAcreWood, english_text, tokens_per_story
from shared.data import TokenData, load_text
from shared.errors import WorkbookError
from shared.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, build

WOOD = HundredAcreWood()

# ----------------------------------------------------------------------------- the floor, counted by hand
# Everything below is counted from the word lists alone, never from the floor code: every choice in
# the grammar is uniform, so a sentence's bits are log2 of how many sentences its template can make.
N_CHAR = len(CHARACTERS)
CHOICES = {"opening": len(corpus.MOODS) * N_CHAR * len(corpus.COLORS) * len(corpus.OBJECTS),
           "walk": N_CHAR * len(corpus.WALK_VERBS) * len(corpus.PLACES),
           "say": len(corpus.GREETINGS) * N_CHAR * (N_CHAR - 1),     # the speaker is not the one greeted
           "meet": N_CHAR * (N_CHAR - 1) * len(corpus.PLACES),       # nor is the one met
           "home": N_CHAR}                                    # the home follows from who goes there


def choice_bits(story) -> float:
    """-log2 p(story) from the choices the story made: the opening, per middle sentence its template
    and its words, a continue decision after each middle sentence but the last, the stop, the verb."""
    bits = math.log2(CHOICES["opening"])
    for s in story.middle:
        bits += math.log2(len(corpus.MIDDLE_TEMPLATES)) + math.log2(CHOICES[s.kind])
    bits += -(len(story.middle) - 1) * math.log2(corpus.P_CONTINUE) - math.log2(1 - corpus.P_CONTINUE)
    return bits + math.log2(len(corpus.ENDING_VERBS[story.mood]))


def mean_len(words) -> float:
    return sum(map(len, words)) / len(words)


def blank_len(template: str) -> float:
    return len(template.replace("{}", ""))


def closed_form_floor() -> dict:
    """The exact entropy of the story stream, from the word lists: bits per story and the expected
    characters per story (by linearity of expectation: the template's fixed characters plus the mean
    length of each word it fills in)."""
    p = corpus.P_CONTINUE
    mean_middles = 1 / (1 - p)                       # 1 + Geometric(1 - p) middle sentences
    h_middle = math.log2(len(corpus.MIDDLE_TEMPLATES)) + sum(math.log2(CHOICES[k]) for k in corpus.MIDDLE_TEMPLATES) / 4
    h_stop = -(p * math.log2(p) + (1 - p) * math.log2(1 - p))
    h_ending = sum(math.log2(len(corpus.ENDING_VERBS[m])) for m in corpus.MOODS) / len(corpus.MOODS)
    bits = math.log2(CHOICES["opening"]) + mean_middles * (h_middle + h_stop) + h_ending
    c = mean_len(CHARACTERS)
    color_object = mean_len(corpus.COLORS) + mean_len(corpus.OBJECTS)
    len_opening = blank_len("On a {} day, {} had a {} {}.") + mean_len(corpus.MOODS) + c + color_object
    len_middle = (blank_len("{} {} to the {}.") + c + mean_len(corpus.WALK_VERBS) + mean_len(corpus.PLACES)
                  + blank_len('"{}, {}," said {}.') + mean_len(corpus.GREETINGS) + 2 * c
                  + blank_len("{} met {} near the {}.") + 2 * c + mean_len(corpus.PLACES)
                  + mean_len([f"{who} went home to the {corpus.HOMES[who]}." for who in CHARACTERS])) / 4
    verb = sum(mean_len(corpus.ENDING_VERBS[m]) for m in corpus.MOODS) / len(corpus.MOODS)
    len_ending = blank_len("In the evening, {} {} the {} {}.") + c + verb + color_object
    # a space between each pair of sentences, and the newline that ends the story
    chars = len_opening + mean_middles * len_middle + len_ending + (mean_middles + 1) + 1
    return {"bits_opening": math.log2(CHOICES["opening"]), "bits_middle_sentence": h_middle,
            "bits_stop_decision": h_stop, "bits_ending": h_ending, "mean_middle_sentences": mean_middles,
            "bits_per_story": bits, "chars_per_story": chars, "bits_per_char": bits / chars,
            "nats_per_char": bits / chars * math.log(2)}


def test_hand_counted_choices_are_the_grammars_sentences():
    """The counts above are the number of sentences the corpus enumerates of each kind, each
    equally likely: so log2(count) is each sentence's information."""
    for kind in ("walk", "say", "meet", "home"):
        of_kind = [s for s in WOOD.middles if s.kind == kind]
        assert len(of_kind) == CHOICES[kind]
        each = 1 / (len(corpus.MIDDLE_TEMPLATES) * CHOICES[kind])
        assert [s.prob for s in of_kind] == pytest.approx([each] * len(of_kind), rel=1e-12)
    assert len(WOOD.openings) == CHOICES["opening"]


def test_floor_parts_equal_their_closed_forms():
    """Each part of the "exact" floor against its closed form (e.g. the opening: log2 of its 1536
    choices, 10.585 bits); a 1% error in any part, or in the characters per story, fails."""
    ent, exact = WOOD.entropy(), closed_form_floor()
    assert exact["bits_opening"] == pytest.approx(math.log2(3 * 8 * 8 * 8), rel=1e-15)   # hand-checked
    for key, value in exact.items():
        assert ent[key] == pytest.approx(value, rel=1e-12), key


def test_story_log_prob_is_the_sum_of_its_choices():
    """log2 p(story) against an independent count of the choices each story made."""
    stories = WOOD.stories(300, seed=11)
    assert {s.kind for st in stories for s in st.middle} == set(corpus.MIDDLE_TEMPLATES)   # every template seen
    assert len({len(st.middle) for st in stories}) > 5
    for st in stories:
        assert -st.log2_prob() == pytest.approx(choice_bits(st), rel=1e-12)


def test_computed_entropy_matches_empirical_estimate():
    """Analytic bits/char vs sum(-log2 p) / sum(chars) over 20k sampled stories: the ratio estimate,
    whose standard error (0.13%) is small enough that a 1% error in the floor fails."""
    stories = WOOD.stories(20_000, seed=7)
    bits = np.array([-s.log2_prob() for s in stories])
    chars = np.array([len(s.text) for s in stories])
    ent = WOOD.entropy()
    rate = bits.sum() / chars.sum()
    se = (bits - rate * chars).std() / math.sqrt(len(bits)) / chars.mean()   # delta method
    assert 3 * se < 0.005 * rate            # so the check below is tighter than half a percent
    assert abs(rate - ent["bits_per_char"]) < 3 * se
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
        assert parsed == st   # the same opening, middle sentences and ending
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
    contexts = [16, 64, 200, 4096]
    f = WOOD.floor_vs_context(contexts, n_stories=3000)
    exact = closed_form_floor()
    rate = exact["nats_per_char"]
    floors = f["nats_per_char"]
    assert floors == sorted(floors, reverse=True)
    assert floors[-1] == pytest.approx(rate, rel=1e-12)
    # with no view of the opening every long-range fact is paid again: the ending verb without its
    # mood (log2 of all 6 verbs, less the 1 bit it costs given the mood), the hero, colour and object
    extra_bits = (math.log2(sum(map(len, corpus.ENDING_VERBS.values()))) - exact["bits_ending"]
                  + math.log2(N_CHAR) + math.log2(len(corpus.COLORS)) + math.log2(len(corpus.OBJECTS)))
    assert floors[0] == pytest.approx(rate + extra_bits * math.log(2) / exact["chars_per_story"], rel=1e-12)
    # in between: the hero is lost when more than c characters separate it from the ending's hero
    hero_gaps = []
    for st in WOOD.stories(3000, seed=1):
        hero = st.opening.get("hero")
        src_end = st.text.index(hero) + len(hero)
        tgt = st.text.rindex("In the evening, ") + len("In the evening, ")
        hero_gaps.append(tgt - src_end)
    p_lost = float(np.mean(np.array(hero_gaps) > 200))
    assert 0.05 < p_lost < 0.95 and f["p_lost"]["hero"][2] == p_lost


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
    """Per token = the story's exact bits over its tokens: per character for a character tokenizer."""
    stories = WOOD.stories(300, seed=3)
    tok = CharTokenizer.from_text("".join(s.text for s in stories))
    per_story = tokens_per_story(tok.encode, stories)
    assert per_story == pytest.approx(np.mean([len(s.text) for s in stories]), rel=1e-15)
    bits = closed_form_floor()["bits_per_story"]
    assert WOOD.nats_per_token(per_story) == pytest.approx(bits * math.log(2) / per_story, rel=1e-12)
    assert WOOD.nats_per_token(2.0) == pytest.approx(bits * math.log(2) / 2, rel=1e-12)


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
    # bytes: any text, non-ASCII included (2-, 3- and 4-byte UTF-8 characters), byte for byte
    worldly = "naïve 🐻 東京"
    assert ByteTokenizer().encode(worldly) == list(worldly.encode("utf-8")) and len(worldly.encode("utf-8")) == 18
    assert ByteTokenizer().decode(ByteTokenizer().encode(worldly)) == worldly
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
