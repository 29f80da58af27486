"""shared.evaluate: whole-story scoring against the exact floor."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from shared import corpus
from shared.corpus import HundredAcreWood
from shared.evaluate import story_loss, story_nats
from shared.model import GPT, GPTConfig
from shared.tokenizer import CharTokenizer


def choice_nats(story) -> float:
    """-ln p(story) counted from the choices the story made, every one uniform over the word lists:
    the opening's words, each middle sentence's template and words, a continue (p = 0.75) after
    every middle sentence but the last, the stop, and one of its mood's ending verbs."""
    n = len(corpus.CHARACTERS)
    choices = {"walk": n * len(corpus.WALK_VERBS) * len(corpus.PLACES),
               "say": len(corpus.GREETINGS) * n * (n - 1), "meet": n * (n - 1) * len(corpus.PLACES), "home": n}
    ways = len(corpus.MOODS) * n * len(corpus.COLORS) * len(corpus.OBJECTS)   # the opening
    ways *= math.prod(4 * choices[s.kind] for s in story.middle)
    bits = math.log2(ways) - (len(story.middle) - 1) * math.log2(0.75) + math.log2(4)
    return (bits + math.log2(len(corpus.ENDING_VERBS[story.mood]))) * math.log(2)


@pytest.fixture(scope="module")
def setup():
    stories = HundredAcreWood().stories(12, seed=5)
    tok = CharTokenizer.from_text("\n" + "".join(st.text for st in stories))
    torch.manual_seed(0)
    # a context that some stories overflow, so skipping is exercised too
    block = sorted(len(st.text) + 1 for st in stories)[8]
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=32, block_size=block)).eval()
    return stories, tok, model


def test_story_nats_equals_scoring_each_story_alone(setup):
    stories, tok, model = setup
    nats, kept = story_nats(model, tok, stories, batch_size=5)   # batches with right-padding
    assert 0 < len(kept) < len(stories) and len(nats) == len(kept)
    for n, i in zip(nats.tolist(), kept):
        ids = torch.tensor(tok.encode("\n" + stories[i].text))
        with torch.no_grad():
            alone = F.cross_entropy(model(ids[None, :-1])[0], ids[1:], reduction="sum").item()
        assert n == pytest.approx(alone, rel=1e-5)   # padding changes nothing for the real tokens


def test_story_loss_sums_story_nats_and_the_exact_floor(setup):
    stories, tok, model = setup
    nats, kept = story_nats(model, tok, stories)
    r = story_loss(model, tok, stories)
    chars = sum(len(stories[i].text) for i in kept)
    assert r["stories"] == len(kept) and r["skipped_too_long"] == len(stories) - len(kept) and r["chars"] == chars
    assert r["model_nats_per_char"] == pytest.approx(float(nats.sum()) / chars, rel=1e-12)
    floor = sum(choice_nats(stories[i]) for i in kept) / chars
    assert r["floor_nats_per_char"] == pytest.approx(floor, rel=1e-12)
    assert r["gap_nats_per_char"] == pytest.approx(r["model_nats_per_char"] - floor, rel=1e-9)


def test_a_story_that_exactly_fits_the_context_is_scored():
    """A story of T characters is fed as T inputs (its newline first): it fits a context of T tokens
    exactly, and one character more does not."""
    stories = HundredAcreWood().stories(60, seed=9)
    tok = CharTokenizer.from_text("\n" + "".join(st.text for st in stories))
    lengths = [len(st.text) for st in stories]
    block = min(n for n in lengths if n + 1 in lengths and n > 150)   # a story of `block` and one of block + 1
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, n_layer=1, n_head=2, d_model=16, block_size=block)).eval()
    nats, kept = story_nats(model, tok, stories, batch_size=8)
    assert kept == [i for i, n in enumerate(lengths) if n <= block]
    r = story_loss(model, tok, stories)
    assert r["stories"] == len(kept) and r["skipped_too_long"] == sum(n > block for n in lengths)
    # and with an explicit max_len the same edge: max_len inputs fit
    assert story_nats(model, tok, stories, max_len=block - 1)[1] == [i for i, n in enumerate(lengths) if n < block]
